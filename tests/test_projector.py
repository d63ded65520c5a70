"""The X-ray projector: adjointness, compiled kernel vs torch twin, gradients, views, bad input."""

import dataclasses

import numpy as np
import pytest
import torch

import nr.ops._projector_twin as twin
from nr._ext import compiled
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import backproject, project

HAS_COMPILED = compiled("ops") is not None and hasattr(compiled("ops"), "projector_forward")
needs_compiled = pytest.mark.skipif(
    not HAS_COMPILED, reason="nr.ops._C is not built (pip install --no-build-isolation -e .)"
)
BACKENDS = ["torch", pytest.param("compiled", marks=needs_compiled)]

BASE = dict(
    n_voxel=(6, 7, 8),
    d_voxel=(1.0, 1.0, 1.0),
    n_detector=(5, 9),
    d_detector=(1.6, 1.6),
    angles=np.linspace(0.1, 2 * np.pi + 0.1, 5, endpoint=False),
    dso=20.0,
    dsd=35.0,
)
VARIANTS = {
    "plain": {},
    "off_detector": dict(off_detector=(0.9, -1.3)),
    "off_origin": dict(off_origin=(0.6, -0.8, 1.1)),
    "non_cubic": dict(d_voxel=(1.4, 0.8, 1.1)),
    "cor": dict(cor=0.7),
    "rot_detector": dict(rot_detector=(0.12, -0.08, 0.2)),
    "everything": dict(
        off_detector=(0.9, -1.3),
        off_origin=(0.6, -0.8, 1.1),
        d_voxel=(1.4, 0.8, 1.1),
        cor=0.7,
        rot_detector=(0.12, -0.08, 0.2),
    ),
}
GEOMETRIES = {
    f"{mode}-{name}": ConeBeamGeometry(**{**BASE, **change, "mode": mode})
    for mode in ("cone", "parallel")
    for name, change in VARIANTS.items()
}
# Steep cone rays over a tall volume: the dominant axis is x or y for some rays, z for others.
GEOMETRIES["cone-steep"] = ConeBeamGeometry(
    **{**BASE, "n_voxel": (40, 7, 8), "n_detector": (9, 9), "off_detector": (35.0, 0.0)}
)


def random_pair(geo, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(geo.volume_shape, generator=gen, dtype=dtype)
    y = torch.rand(geo.projection_shape, generator=gen, dtype=dtype)
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint(name, backend):
    geo = GEOMETRIES[name]
    x, y = random_pair(geo)
    ax, aty = project(x, geo, backend=backend), backproject(y, geo, backend=backend)
    assert ax.abs().max() > 1.0  # the rays do cross the volume
    gap = abs(float((ax * y).sum() - (x * aty).sum()))
    assert gap / float(ax.norm() * y.norm()) < 1e-5


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["cone-everything", "parallel-everything", "cone-steep"])
def test_compiled_equals_twin_forward_and_backward(name, dtype):
    geo = GEOMETRIES[name]
    x, y = random_pair(geo, dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    grads = {}
    for backend in ("torch", "compiled"):
        xv = x.clone().requires_grad_(True)
        yv = y.clone().requires_grad_(True)
        ax = project(xv, geo, backend=backend)
        aty = backproject(yv, geo, backend=backend)
        cot_p, cot_v = random_pair(geo, dtype, seed=1)[::-1]
        torch.autograd.backward([ax, aty], [cot_p, cot_v])
        grads[backend] = (ax.detach(), aty.detach(), xv.grad, yv.grad)
        assert ax.dtype == dtype and aty.dtype == dtype
    for twin_value, kernel_value in zip(grads["torch"], grads["compiled"], strict=True):
        torch.testing.assert_close(kernel_value, twin_value, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_gradcheck(mode, backend):
    geo = ConeBeamGeometry(
        **{**BASE, **VARIANTS["everything"], "n_voxel": (3, 4, 3), "n_detector": (3, 4)},
        mode=mode,
    )
    geo = geo.with_angles([0.3, 2.0])
    x, y = random_pair(geo)
    assert torch.autograd.gradcheck(
        lambda v: project(v, geo, backend=backend), (x.requires_grad_(True),)
    )
    assert torch.autograd.gradcheck(
        lambda p: backproject(p, geo, backend=backend), (y.requires_grad_(True),)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_project_is_backproject(backend):
    geo = GEOMETRIES["cone-everything"]
    x, y = random_pair(geo)
    x.requires_grad_(True)
    (project(x, geo, backend=backend) * y).sum().backward()
    torch.testing.assert_close(x.grad, backproject(y, geo, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_view_ids_select_views(mode, backend):
    geo = GEOMETRIES[f"{mode}-everything"]
    x, y = random_pair(geo)
    ids = [3, 0, 3]
    full = project(x, geo, backend=backend)
    torch.testing.assert_close(project(x, geo, ids, backend=backend), full[ids])
    torch.testing.assert_close(
        project(x, geo, torch.tensor([4, 1]), backend=backend),
        project(x, geo.subset([4, 1]), backend=backend),
    )
    padded = torch.zeros_like(y)
    padded.index_add_(0, torch.tensor(ids), y[:3])
    torch.testing.assert_close(
        backproject(y[:3], geo, ids, backend=backend), backproject(padded, geo, backend=backend)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_volume_gives_exact_chords(backend):
    # Rays along a grid axis through the interior of a constant cube cross n planes of
    # weight d_voxel each: Joseph's method is exact there.
    geo = ConeBeamGeometry(
        n_voxel=(8, 10, 12),
        d_voxel=(1.0, 0.5, 0.75),
        n_detector=(4, 4),
        d_detector=(1.0, 1.0),
        angles=[0.0, np.pi / 2],
        dso=40.0,
        dsd=60.0,
        mode="parallel",
    )
    proj = project(torch.full(geo.volume_shape, 0.5, dtype=torch.float64), geo, backend=backend)
    torch.testing.assert_close(proj[0], torch.full((4, 4), 0.5 * 9.0, dtype=torch.float64))
    torch.testing.assert_close(proj[1], torch.full((4, 4), 0.5 * 5.0, dtype=torch.float64))


def test_twin_chunking_does_not_change_the_result(monkeypatch):
    geo = GEOMETRIES["cone-everything"]
    x, y = random_pair(geo)
    ax, aty = project(x, geo, backend="torch"), backproject(y, geo, backend="torch")
    monkeypatch.setattr(twin, "SAMPLES_PER_CHUNK", 50)
    torch.testing.assert_close(project(x, geo, backend="torch"), ax)
    torch.testing.assert_close(backproject(y, geo, backend="torch"), aty)


def test_bad_inputs_raise_clear_errors():
    geo = GEOMETRIES["cone-plain"]
    x, y = random_pair(geo)
    with pytest.raises(ValueError, match="volume: expected shape"):
        project(x[:-1], geo)
    with pytest.raises(TypeError, match="volume: expected float32 or float64"):
        project(x.to(torch.int32), geo)
    with pytest.raises(TypeError, match="volume: expected a torch.Tensor"):
        project(x.numpy(), geo)
    with pytest.raises(ValueError, match="volume: values must be finite"):
        project(torch.where(x > 0.5, float("nan"), x), geo)
    with pytest.raises(ValueError, match="projections: expected shape"):
        backproject(y, geo, [0, 1])
    with pytest.raises(ValueError, match="projections: values must be finite"):
        backproject(y / 0.0 * 0.0, geo)
    with pytest.raises(ValueError, match="view_ids: expected indices"):
        project(x, geo, [0, 5])
    with pytest.raises(ValueError, match="view_ids: expected a non-empty 1-D"):
        project(x, geo, [0.5])
    with pytest.raises(ValueError, match="backend: expected one of"):
        project(x, geo, backend="cuda")
    with pytest.raises(TypeError, match="geo: expected a ConeBeamGeometry"):
        project(x, dataclasses.asdict(geo))


def test_tigre_backend_without_tigre_names_the_remedy():
    try:
        import tigre  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TIGRE is installed; this test covers its absence")
    geo = GEOMETRIES["cone-plain"]
    with pytest.raises(ImportError, match="TIGRE is not importable"):
        project(torch.zeros(geo.volume_shape), geo, backend="tigre")
