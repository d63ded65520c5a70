"""FDK / FBP: accuracy on the analytic Shepp-Logan head, weights, filters, chunking, bad input."""

import dataclasses
import importlib

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d
from nr.ops.fdk import FILTERS, angular_weights, fdk, ramp_filter
from nr.phantoms import line_integrals, shepp_logan_3d, voxelise

# The module, not the function of the same name that nr.ops re-exports.
fdk_module = importlib.import_module("nr.ops.fdk")

# PSNR (dB, data range 1) of FDK against the 4x-supersampled phantom at 32^3 from 96 exact
# views (64^2 detector), measured when the test was written; the test allows 1 dB less.
MEASURED = {
    "cone": {"ram_lak": 29.3, "shepp_logan": 30.4, "cosine": 28.7, "hamming": 27.2, "hann": 26.6},
    "parallel": {
        "ram_lak": 28.3,
        "shepp_logan": 30.1,
        "cosine": 30.1,
        "hamming": 28.6,
        "hann": 28.0,
    },
}


def _geometry(mode: str, n_views: int = 96) -> ConeBeamGeometry:
    geo = ConeBeamGeometry.default(n_voxel=32, n_views=n_views, n_detector=64, mode=mode)
    if mode == "parallel":  # no magnification: a 320 mm detector covers the 256 mm volume
        geo = dataclasses.replace(geo, s_detector=(320.0, 320.0), d_detector=None)
    return geo


@pytest.fixture(scope="module", params=["cone", "parallel"])
def head(request):
    geo = _geometry(request.param)
    phantom = shepp_logan_3d(geo)
    return geo, line_integrals(phantom, geo).float(), voxelise(phantom, geo, supersample=4)


@pytest.mark.parametrize("filter", FILTERS)
def test_fdk_reconstructs_shepp_logan(head, filter):
    geo, projections, truth = head
    volume = fdk(projections, geo, filter)
    assert volume.shape == truth.shape and volume.dtype == torch.float32
    assert psnr3d(volume, truth).item() > MEASURED[geo.mode][filter] - 1.0
    # The scale: the reconstruction keeps the phantom's mass to 1%.
    assert volume.sum().item() == pytest.approx(truth.sum().item(), rel=0.01)


def test_angular_weights_cover_the_circle():
    np.testing.assert_allclose(
        angular_weights(np.linspace(0, 2 * np.pi, 8, endpoint=False)), np.pi / 4
    )
    weights = angular_weights(np.array([np.pi, 0.1, 0.0]))
    np.testing.assert_allclose(weights, [np.pi - 0.05, np.pi / 2, np.pi / 2 + 0.05])
    np.testing.assert_allclose(angular_weights(np.array([-np.pi, 0.1, 2 * np.pi])), weights)
    np.testing.assert_allclose(angular_weights(np.array([1.0])), [2 * np.pi])


def test_non_uniform_views_are_weighted_by_their_spacing():
    """48 uniform views plus 24 crowded into 60 degrees: as good as the 48 alone.

    With TIGRE's uniform 2 pi / N weights the same set gives 22.8 dB against 26.5 dB (measured).
    """
    uniform = _geometry("cone", n_views=48)
    crowded = uniform.with_angles(np.concatenate([uniform.angles, np.linspace(0.05, 1.05, 24)]))
    phantom = shepp_logan_3d(uniform)
    truth = voxelise(phantom, uniform, supersample=2)
    reference = psnr3d(fdk(line_integrals(phantom, uniform).float(), uniform), truth).item()
    volume = fdk(line_integrals(phantom, crowded).float(), crowded)
    assert psnr3d(volume, truth).item() > reference - 0.5


def test_ramp_filter_is_tigres_padded_ramp():
    response, length = ramp_filter(100)
    assert length == 256 and response.shape == (129,)
    k = np.arange(129)
    np.testing.assert_allclose(response[8:120], 2 * k[8:120] / length, atol=2e-3)
    assert ramp_filter(10)[1] == 64
    for name in FILTERS[1:]:
        windowed, _ = ramp_filter(100, name)
        assert np.all(windowed <= response + 1e-12)
    assert ramp_filter(100, "hann")[0][-1] == pytest.approx(0.0, abs=1e-12)


def test_view_ids_dtype_and_chunking_do_not_change_the_result(monkeypatch):
    geo = _geometry("cone", n_views=12)
    projections = line_integrals(shepp_logan_3d(geo), geo)
    ids = [1, 4, 7, 10]
    subset = fdk(projections[ids], geo, view_ids=ids)
    assert subset.dtype == torch.float64
    torch.testing.assert_close(subset, fdk(projections[ids], geo.subset(ids)))
    monkeypatch.setattr(fdk_module, "SAMPLES_PER_CHUNK", 5000)  # z-slabs of one slice, 1 view
    torch.testing.assert_close(fdk(projections[ids], geo, view_ids=ids, backend="torch"), subset)


# The compiled kernel's two paths: "columns" (p_u and the depth independent of z: a circular
# orbit with an upright detector) and "rows" (any geometry: here a tilted detector).
TWIN_GEOMETRIES = {
    "cone": ConeBeamGeometry(
        n_voxel=(12, 16, 20),
        d_voxel=(1.5, 1.0, 1.2),
        n_detector=(18, 24),
        d_detector=(2.0, 1.8),
        angles=np.sort(np.random.default_rng(0).uniform(0.0, 2 * np.pi, 9)),
        dso=60.0,
        dsd=100.0,
    ),
    "parallel": _geometry("parallel", n_views=7),
    "offsets": dataclasses.replace(
        ConeBeamGeometry.default(n_voxel=16, n_views=8, n_detector=20),
        off_origin=(9.0, -12.0, 5.0),
        off_detector=(7.0, -11.0),
        cor=3.0,
    ),
    "tilted": dataclasses.replace(
        ConeBeamGeometry.default(n_voxel=16, n_views=8, n_detector=20),
        rot_detector=(0.05, 0.1, 0.02),
    ),
}


@pytest.mark.parametrize("name", TWIN_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_backprojection_equals_torch_twin(name, dtype):
    geo = TWIN_GEOMETRIES[name]
    projections = line_integrals(shepp_logan_3d(geo), geo).to(dtype)
    ids = np.arange(0, geo.n_views, 2)
    for view_ids, rows in ((None, projections), (ids, projections[ids])):
        compiled = fdk(rows, geo, view_ids=view_ids, backend="compiled")
        twin = fdk(rows, geo, view_ids=view_ids, backend="torch")
        assert compiled.dtype == dtype and float(twin.abs().max()) > 0.1
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(compiled, twin, rtol=tol, atol=tol * float(twin.abs().max()))


def test_bad_inputs_raise():
    geo = _geometry("cone", n_views=4)
    projections = torch.zeros(geo.projection_shape)
    with pytest.raises(ValueError, match="filter"):
        fdk(projections, geo, "ramp")
    with pytest.raises(ValueError, match="projections"):
        fdk(projections[:3], geo)
    with pytest.raises(TypeError, match="projections"):
        fdk(projections.numpy(), geo)
    with pytest.raises(TypeError, match="float32 or float64"):
        fdk(projections.to(torch.int32), geo)
    with pytest.raises(ValueError, match="finite"):
        fdk(torch.full(geo.projection_shape, float("nan")), geo)
    with pytest.raises(ValueError, match="view_ids"):
        fdk(projections[:2], geo, view_ids=[0, 4])
    with pytest.raises(TypeError, match="geo"):
        fdk(projections, geo.to_dict())
    with pytest.raises(ValueError, match="backend"):
        fdk(projections, geo, backend="cuda")
