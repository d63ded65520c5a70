"""RTK (the Reconstruction Toolkit, `pip install itk-rtk`) as the independent reference.

The project's `project`, `backproject`, `fdk` and `cgls` are compared with RTK's
JosephForwardProjectionImageFilter, JosephBackProjectionImageFilter (RTK's
transpose of its Joseph forward), FDKConeBeamReconstructionFilter (ramp
filter, no window) and ConjugateGradientConeBeamReconstructionFilter (Joseph pair,
no regularisation) on the same geometry, through `nr.ops.rtk` (the mapping:
`rtk_geometry`, `volume_image`, `projection_image`). Skipped when itk-rtk is absent
(it is in the "test" extra, so CI has it).

What the comparisons show (measured; float64 on both sides):
- geometry: RTK's source and pixel positions equal `geo.view_vectors()` to 1e-13 mm;
- forward: equal to rounding (1e-14 relative) for volumes that vanish on their two
  outermost voxel layers;
- back projection: equal to rounding on every voxel but the two outermost layers;
- FDK: equal to rounding on the voxels that every view sees on its detector;
- CG: equal to rounding when both solve on the voxels off the two outermost layers
  (RTK's support mask; the project's `conjugate_gradient`, the solver of `cgls`);
  unmasked (`cgls`), each solves with its own operator and the iterates differ by 1-2%
  inside those layers;
- SART: RTK's is a different iteration (shuffled views, ray-box weights), 3% apart.
The outer layers differ because the two Joseph forward models differ there (RTK clips
each ray to the box through the outermost voxel centres); each back projection is the
exact adjoint of its own forward (docs/projector.md, "Border voxels").
"""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d
from nr.ops.fdk import fdk
from nr.ops.iterative import CGLSConfig, SARTConfig, cgls, conjugate_gradient, sart
from nr.ops.projector import backproject, project
from nr.ops.rtk import (
    REMEDY,
    TO_RTK,
    border_distance,
    cgls_image,
    field_of_view,
    load_itk,
    projection_image,
    rtk_backproject,
    rtk_cgls,
    rtk_fdk,
    rtk_geometry,
    rtk_project,
    rtk_sart,
    set_threads,
    volume_from_image,
)
from nr.phantoms import shepp_logan_3d, voxelise

itk = pytest.importorskip("itk", reason=REMEDY)
# `itk.RTK` is loaded lazily, and loading it is slow (the `rtk` fixture): look for its
# wrapping without loading it here, so that collecting this module stays cheap.
if importlib.util.find_spec("itk.RTKPython") is None:
    pytest.skip(REMEDY, allow_module_level=True)
# Loading ITK's SWIG wrappings warns once per wrapped type under Python >= 3.11.
pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__:DeprecationWarning"
)

# Base scan: 60 mm source-isocentre, 100 mm source-detector.
SCAN = dict(dso=60.0, dsd=100.0)
GEOMETRIES = {
    # Cubic volume, square detector covering it, uniform full circle.
    "centred": ConeBeamGeometry(
        n_voxel=(24, 24, 24),
        d_voxel=(1.0, 1.0, 1.0),
        n_detector=(32, 32),
        d_detector=(2.0, 2.0),
        angles=np.linspace(0.0, 2 * np.pi, 16, endpoint=False),
        **SCAN,
    ),
    # Non-cubic grid and voxels, 24 x 32 detector, both offsets, 12 non-uniform angles.
    "offsets": ConeBeamGeometry(
        n_voxel=(20, 24, 28),
        d_voxel=(1.2, 0.9, 1.0),
        n_detector=(24, 32),
        d_detector=(1.6, 1.5),
        off_origin=(0.8, -1.1, 0.6),
        off_detector=(1.3, -2.1),
        angles=np.sort(np.random.default_rng(3).uniform(0.0, 2 * np.pi, 12)),
        **SCAN,
    ),
}
# Same with a centre-of-rotation shift (RTK: a source offset), for the projector only: RTK's
# FDK weighs a source offset slightly differently (measured: up to 5e-4 apart in the field
# of view, on values up to 1), which is not pinned here.
GEOMETRIES["cor"] = dataclasses.replace(GEOMETRIES["offsets"], cor=0.7)


# ---------------------------------------------------------------- phantoms and masks
def smooth_phantom(geo: ConeBeamGeometry, dtype=np.float64) -> np.ndarray:
    """(Z, Y, X) smooth, asymmetric phantom (three Gaussian blobs times a cosine window)
    that is exactly zero on the two outermost voxel layers, where the two models differ."""
    axes = [np.arange(n) for n in geo.volume_shape]
    # t = +-1 halfway between layers 1 and 2 on each axis; |t| >= 1 on layers 0 and 1.
    t = [
        (a - (n - 1) / 2) / ((n - 1) / 2 - 1.5) for a, n in zip(axes, geo.volume_shape, strict=True)
    ]
    tz, ty, tx = np.meshgrid(*t, indexing="ij")
    window = np.prod(
        [np.where(np.abs(c) < 1, np.cos(np.pi * c / 2) ** 2, 0.0) for c in (tz, ty, tx)], axis=0
    )
    blobs = sum(
        h * np.exp(-((tz - cz) ** 2 + (ty - cy) ** 2 + (tx - cx) ** 2) / (2 * s**2))
        for h, (cz, cy, cx), s in [
            (1.0, (0.2, -0.3, 0.1), 0.35),
            (0.6, (-0.4, 0.35, -0.2), 0.25),
            (0.8, (0.0, 0.1, 0.5), 0.2),
        ]
    )
    return (window * blobs).astype(dtype)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def rtk():
    """`itk.RTK`, with ITK's thread pool at torch's thread count (1 per xdist worker).

    The first use of `itk.RTK` loads the ITK wrappings it depends on: 15-20 s of CPU on
    this machine, paid here once per process (`load_itk`); every test after it takes well
    under 1 s.
    """
    module = load_itk().RTK
    threads = set_threads(torch.get_num_threads())
    yield module
    set_threads(threads)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_geometry_mapping_puts_source_and_pixels_where_view_vectors_do(rtk, name):
    geo = GEOMETRIES[name]
    mapped = rtk_geometry(geo)
    n_v, n_u = (int(n) for n in geo.n_detector)
    d_v, d_u = (float(d) for d in geo.d_detector)
    for i, (src, det, du, dv) in enumerate(geo.view_vectors()):
        source = np.asarray(mapped.GetSourcePosition(i))[:3]
        np.testing.assert_allclose(source, TO_RTK @ src, rtol=0, atol=1e-9)
        to_fixed = itk.array_from_matrix(mapped.GetProjectionCoordinatesToFixedSystemMatrix(i))
        for v, u in [(0, 0), (0, n_u - 1), (n_v - 1, 0), (n_v // 2, n_u // 3)]:
            pixel = [(u - n_u / 2 + 0.5) * d_u, (v - n_v / 2 + 0.5) * d_v, 0.0, 1.0]
            expected = TO_RTK @ (det + u * du + v * dv)
            np.testing.assert_allclose((to_fixed @ pixel)[:3], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_forward_projection_matches_rtk(rtk, name, dtype, tol):
    # Measured: 3e-15 .. 5e-15 relative in float64, 8e-8 .. 9e-8 in float32 (RTK
    # accumulates in float there, the project in double).
    geo = GEOMETRIES[name]
    volume = smooth_phantom(geo, dtype)
    ours = project(torch.from_numpy(volume), geo).numpy()
    theirs = rtk_project(volume, geo)
    assert ours.max() > 1.0  # the rays do cross the phantom
    assert relative(ours, theirs) < tol


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_back_projection_matches_rtk_inside_the_two_outer_layers(rtk, name):
    # Measured: 7e-15 .. 8e-15 relative on the voxels at distance >= 2 from the faces.
    geo = GEOMETRIES[name]
    projections = np.random.default_rng(0).random(geo.projection_shape)
    ours = backproject(torch.from_numpy(projections), geo).numpy()
    theirs = rtk_backproject(projections, geo)
    interior = border_distance(geo.volume_shape) >= 2
    assert relative(ours[interior], theirs[interior]) < 1e-12


def test_border_layers_differ_because_the_forward_models_do_and_each_adjoint_is_exact(rtk):
    geo = GEOMETRIES["offsets"]
    rng = np.random.default_rng(1)
    x, y = rng.random(geo.volume_shape), rng.random(geo.projection_shape)
    ax, aty = project(torch.from_numpy(x), geo).numpy(), backproject(torch.from_numpy(y), geo)
    rtk_ax, rtk_aty = rtk_project(x, geo), rtk_backproject(y, geo)
    distance = border_distance(geo.volume_shape)
    # The back projections differ on the two outer layers only (measured over the three
    # geometries: 94-111% relative on layer 0, 0.43% on layer 1, 8e-15 beyond), and so do
    # the forward projections of volumes that are non-zero there (layer 0: 89-104%,
    # layer 1: 0.48-0.55%, beyond: 5e-15).
    aty = aty.numpy()
    assert relative(aty[distance == 0], rtk_aty[distance == 0]) > 0.1
    assert relative(aty[distance == 1], rtk_aty[distance == 1]) > 1e-3
    for layer, lower in [(0, 0.1), (1, 1e-3)]:
        shell = np.where(distance == layer, x, 0.0)
        gap = relative(project(torch.from_numpy(shell), geo).numpy(), rtk_project(shell, geo))
        assert gap > lower
    # Each back projection is the exact adjoint of its own forward (measured: 1e-16 for
    # both); pairing the project's forward with RTK's back projection is 8% off.
    scale = float(np.linalg.norm(ax) * np.linalg.norm(y))
    assert abs(np.sum(ax * y) - np.sum(x * aty)) / scale < 1e-12
    assert abs(np.sum(rtk_ax * y) - np.sum(x * rtk_aty)) / scale < 1e-12
    assert abs(np.sum(ax * y) - np.sum(x * rtk_aty)) / np.sum(ax * y) > 0.05


def test_constant_volume_along_an_axis_gives_the_whole_box_here_and_centre_to_centre_in_rtk(
    rtk,
):
    # The central ray of view 0 runs along x through a constant volume: the project
    # integrates the whole voxel boxes (n_x d_x, the exact chord), RTK's Joseph stops at
    # the outermost voxel centres ((n_x - 1) d_x).
    geo = ConeBeamGeometry(
        n_voxel=(6, 7, 8),
        d_voxel=(1.0, 1.0, 1.25),
        n_detector=(5, 5),
        d_detector=(1.0, 1.0),
        angles=[0.0],
        **SCAN,
    )
    volume = np.ones(geo.volume_shape)
    ours = project(torch.from_numpy(volume), geo).numpy()[0, 2, 2]
    theirs = rtk_project(volume, geo)[0, 2, 2]
    assert ours == pytest.approx(8 * 1.25, rel=1e-12)
    assert theirs == pytest.approx(7 * 1.25, rel=1e-12)


@pytest.mark.parametrize(
    "dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("name", ["centred", "offsets"])
def test_fdk_matches_rtk_in_the_field_of_view(rtk, name, dtype, tol):
    # Same cosine weights, ramp (TIGRE's and RTK's spatial-domain Ram-Lak kernels give the
    # same linear convolution whatever the padding), angular weights (half the gaps to the
    # neighbouring views, so non-uniform sets agree too) and back-projection weights.
    # Measured, max |difference| in the field of view (values up to 1): 3e-15 .. 1e-14
    # (float64), 6e-7 .. 8e-7 (float32). Over the whole volume: "centred" is all field of
    # view (PSNR 306 dB); in "offsets" 37% of the voxels are off the detector in some
    # view and differ by up to 0.12 (PSNR 43.4 dB in float64 and float32).
    geo = GEOMETRIES[name]
    phantom = voxelise(shepp_logan_3d(geo), geo, supersample=2, dtype=torch.float64)
    projections = project(phantom, geo).numpy().astype(dtype)
    ours = fdk(torch.from_numpy(projections), geo).numpy()
    theirs = rtk_fdk(projections, geo)
    inside = field_of_view(geo)
    assert inside.mean() > 0.5
    assert np.abs(ours - theirs)[inside].max() < tol
    whole = float(psnr3d(torch.from_numpy(ours), torch.from_numpy(theirs)))
    assert whole > 40.0
    # Hence the same distance from the phantom (measured: 0 and 0.022 dB apart).
    to_truth = [float(psnr3d(torch.from_numpy(r).double(), phantom)) for r in (ours, theirs)]
    assert abs(to_truth[0] - to_truth[1]) < 0.1


def _masked_cg(projections: np.ndarray, geo: ConeBeamGeometry, mask: np.ndarray, n_iter: int):
    """The project's CG (`conjugate_gradient`, the solver inside `cgls`) on RTK's
    support-mask problem ``M A^T A M x = M A^T p``, M = `mask`."""
    m = torch.from_numpy(mask.astype(projections.dtype))
    return conjugate_gradient(
        lambda v: m * backproject(project(m * v, geo), geo),
        m * backproject(torch.from_numpy(projections), geo),
        torch.zeros(geo.volume_shape, dtype=m.dtype),
        n_iter,
    ).numpy()


@pytest.mark.parametrize(
    "dtype, tol", [(np.float64, 1e-12), (np.float32, 5e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_cg_matches_rtk_to_rounding_off_the_two_outer_layers(rtk, name, dtype, tol):
    # Both are the same CG (RTK: r = b - Ax0, alpha = r.r / p.Ap, beta = r'.r' / r.r; no
    # preconditioning, no early stop). Restricted by a support mask to the voxels where the
    # two Joseph models agree, they agree to rounding (measured after 5 iterations:
    # 9e-15 .. 1e-14 relative in float64, 2e-6 .. 5e-6 in float32, where both keep float
    # iterates and the project takes its inner products in float64).
    geo = GEOMETRIES[name]
    projections = project(torch.from_numpy(smooth_phantom(geo, dtype)), geo).numpy()
    mask = border_distance(geo.volume_shape) >= 2
    ours = _masked_cg(projections, geo, mask, 5)
    theirs = rtk_cgls(projections, geo, 5, support=mask)
    assert relative(ours, theirs) < tol


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_cgls_is_within_two_percent_of_rtk_inside_the_two_outer_layers(rtk, name):
    # Unmasked, each CGLS uses its own forward model, and the two differ on the outer
    # layers (where the iterates are not zero): measured after 5 iterations, 0.9-1.5%
    # relative on the voxels at distance >= 2 (2.6-4.0% over the whole volume). A quarter-
    # pixel detector shift in RTK's geometry gives 8.7-12% (u) and 7.1-8.7% (v); smaller
    # errors (0.5 deg on every angle: 2.7-3.2%; DSD + 1%: 2.4-2.8%) are caught by the
    # masked comparison above, not here.
    geo = GEOMETRIES[name]
    phantom = smooth_phantom(geo)
    projections = project(torch.from_numpy(phantom), geo).numpy()
    interior = border_distance(geo.volume_shape) >= 2
    ours = cgls(torch.from_numpy(projections), geo, CGLSConfig(n_iter=5), progress=False).numpy()
    theirs = rtk_cgls(projections, geo, 5)
    assert relative(ours[interior], theirs[interior]) < 0.02
    shifted = dataclasses.replace(geo, off_detector=geo.off_detector + [0.0, geo.d_detector[1] / 4])
    wrong = cgls_image(projection_image(projections, geo), geo, 5, geometry=rtk_geometry(shifted))
    assert relative(ours[interior], volume_from_image(wrong)[interior]) > 0.05


def test_rtk_sart_runs_close_to_ours(rtk):
    # RTK's SART shuffles the views, normalises by the ray-box chord rather than A 1 and
    # keeps lmbda fixed, so it is a different iteration: measured after 3 sweeps, 3.2%
    # apart inside the two outer layers, both 3.5-3.6% from the phantom.
    geo = GEOMETRIES["centred"]
    phantom = smooth_phantom(geo)
    projections = project(torch.from_numpy(phantom), geo).numpy()
    interior = border_distance(geo.volume_shape) >= 2
    config = SARTConfig(n_iter=3, lmbda_red=1.0)
    ours = sart(torch.from_numpy(projections), geo, config, progress=False).numpy()
    theirs = rtk_sart(projections, geo, 3)
    assert relative(ours[interior], theirs[interior]) < 0.05
    assert relative(theirs, phantom) < 0.05


def test_bad_inputs_name_the_argument(rtk):
    geo = GEOMETRIES["centred"]
    with pytest.raises(TypeError, match="volume: expected a numpy array"):
        rtk_project(torch.zeros(geo.volume_shape), geo)
    with pytest.raises(TypeError, match="volume: expected float32 or float64"):
        rtk_project(np.zeros(geo.volume_shape, np.int32), geo)
    with pytest.raises(ValueError, match=r"projections: expected shape \(16, 32, 32\)"):
        rtk_backproject(np.zeros((3, 32, 32)), geo)
    with pytest.raises(ValueError, match="projections: values must be finite"):
        rtk_fdk(np.full(geo.projection_shape, np.nan), geo)
    with pytest.raises(ValueError, match="geo: RTK is mapped for cone-beam"):
        rtk_geometry(dataclasses.replace(geo, mode="parallel"))
    with pytest.raises(ValueError, match="n_iter: expected a positive int"):
        rtk_cgls(np.zeros(geo.projection_shape), geo, 0)
    with pytest.raises(TypeError, match="image: expected a 3-D itk image"):
        cgls_image(np.zeros(geo.projection_shape), geo, 1)
    with pytest.raises(TypeError, match="support: expected a bool numpy array"):
        rtk_cgls(np.zeros(geo.projection_shape), geo, 1, support=np.ones(geo.volume_shape))


def test_missing_rtk_raises_with_the_remedy(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ImportError, match="pip install itk-rtk"):
        load_itk.__wrapped__()
