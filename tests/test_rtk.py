"""RTK (the Reconstruction Toolkit, `pip install itk-rtk`) as the independent reference.

The project's `project`, `backproject` and `fdk` are compared with RTK's
JosephForwardProjectionImageFilter, JosephBackProjectionImageFilter (RTK's
transpose of its Joseph forward) and FDKConeBeamReconstructionFilter (ramp
filter, no window) on the same geometry, mapped by `rtk_geometry`,
`volume_image` and `projection_image` below. Skipped when itk-rtk is absent
(it is in the "test" extra, so CI has it).

What the comparisons show (measured; float64 on both sides):
- geometry: RTK's source and pixel positions equal `geo.view_vectors()` to 1e-13 mm;
- forward: equal to rounding (1e-14 relative) for volumes that vanish on their two
  outermost voxel layers;
- back projection: equal to rounding on every voxel but the two outermost layers;
- FDK: equal to rounding on the voxels that every view sees on its detector.
The outer layers differ because the two Joseph forward models differ there (RTK clips
each ray to the box through the outermost voxel centres); each back projection is the
exact adjoint of its own forward (docs/projector.md, "Border voxels").
"""

import dataclasses
import importlib.util
import math

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d
from nr.ops.fdk import fdk
from nr.ops.projector import backproject, project
from nr.phantoms import shepp_logan_3d, voxelise

REMEDY = "RTK is not installed: pip install itk-rtk (it is in the test extra of setup.py)"
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
# x -> RTK's Z, y -> X, z -> Y: the permutation taking world vectors to RTK's frame.
TO_RTK = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


# ---------------------------------------------------------------- the mapping to RTK
def rtk_geometry(rtk, geo: ConeBeamGeometry):
    """RTK's ThreeDCircularProjectionGeometry for a cone-beam `geo`.

    Frames: RTK rotates about its y axis and puts the source at +Z at gantry angle 0;
    the project (TIGRE) rotates about z with the source at +x at angle 0. The map
    (x, y, z) -> (X, Y, Z) = (y, z, x) is a cyclic permutation, so a rotation: RTK's
    gantry rotation of +a about Y (Z towards X) is the project's rotation of +a about z
    (x towards y), and the gantry angle is `angle` in degrees. The detector's u axis
    (+y) becomes RTK's +X (its projection x axis) and v (+z) RTK's +Y, so RTK's
    ProjectionOffsetX/Y are off_u/off_v. TIGRE's COR moves source and detector by cor
    along the rotated y axis: RTK's SourceOffsetX = cor, and cor adds to
    ProjectionOffsetX (RTK's detector offset is measured from the isocentre).
    rot_detector (detector roll/pitch/yaw) and parallel mode are not mapped.

    Args:
        rtk: the `itk.RTK` module.
        geo: a cone-beam scan with rot_detector == 0.

    Returns:
        rtk.ThreeDCircularProjectionGeometry with one projection per angle of `geo`.
    """
    if geo.mode != "cone" or np.any(geo.rot_detector != 0):
        raise ValueError("rtk_geometry: only cone-beam geometries without rot_detector")
    out = rtk.ThreeDCircularProjectionGeometry.New()
    off_v, off_u = (float(o) for o in geo.off_detector)
    for angle in geo.angles:
        # AddProjection(sid, sdd, gantry, projOffsetX, projOffsetY, outOfPlane, inPlane,
        #               sourceOffsetX, sourceOffsetY)
        out.AddProjection(
            geo.dso, geo.dsd, math.degrees(angle), off_u + geo.cor, off_v, 0.0, 0.0, geo.cor, 0.0
        )
    return out


def _image(array: np.ndarray, origin, spacing):
    image = itk.image_from_array(np.ascontiguousarray(array))
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    return image


def volume_image(volume: np.ndarray, geo: ConeBeamGeometry):
    """The (Z, Y, X) volume of `geo` as an itk image in RTK's frame (identity direction).

    itk indexes an array (a, b, c) as (c, b, a) = (X, Y, Z); RTK's (X, Y, Z) is the
    project's (y, z, x), so the array is transposed to (x, z, y). Origin: the centre of
    voxel (0, 0, 0); spacing: the voxel sizes, both permuted the same way. Float32 or
    float64 as `volume` (itk.Image[itk.F, 3] or itk.Image[itk.D, 3]).
    """
    return _image(
        volume.transpose(2, 0, 1),
        TO_RTK @ geo.voxel_origin_xyz(),
        TO_RTK @ geo.voxel_size_xyz(),
    )


def volume_from_image(image) -> np.ndarray:
    """Inverse of `volume_image`: an RTK volume as the project's (Z, Y, X) array."""
    return itk.array_from_image(image).transpose(1, 2, 0).copy()


def projection_image(projections: np.ndarray, geo: ConeBeamGeometry):
    """(N, V, U) projections as RTK's projection stack (index (u, v, view)).

    The physical (x, y) of pixel (v, u) is its position on the detector relative to the
    detector origin, which RTK places at (ProjectionOffsetX, ProjectionOffsetY):
    ((u - n_u/2 + 0.5) d_u, (v - n_v/2 + 0.5) d_v), as `geo.view_vectors()` before the
    offsets. The third axis (view) has spacing 1 and origin 0.
    """
    n_v, n_u = (int(n) for n in geo.n_detector)
    d_v, d_u = (float(d) for d in geo.d_detector)
    origin = (-(n_u / 2 - 0.5) * d_u, -(n_v / 2 - 0.5) * d_v, 0.0)
    return _image(projections, origin, (d_u, d_v, 1.0))


# ---------------------------------------------------------------- RTK's operators
def _image_type(dtype):
    return itk.Image[itk.F if dtype == np.float32 else itk.D, 3]


def rtk_project(rtk, volume: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's Joseph forward projection: (Z, Y, X) -> (N, V, U), volume's dtype."""
    image = _image_type(volume.dtype)
    f = rtk.JosephForwardProjectionImageFilter[image, image].New()
    f.SetInput(0, projection_image(np.zeros(geo.projection_shape, volume.dtype), geo))
    f.SetInput(1, volume_image(volume, geo))
    f.SetGeometry(rtk_geometry(rtk, geo))
    f.Update()
    return itk.array_from_image(f.GetOutput()).copy()


def rtk_backproject(rtk, projections: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's Joseph back projection (the transpose of its forward): (N, V, U) -> (Z, Y, X)."""
    image = _image_type(projections.dtype)
    f = rtk.JosephBackProjectionImageFilter[image, image].New()
    f.SetInput(0, volume_image(np.zeros(geo.volume_shape, projections.dtype), geo))
    f.SetInput(1, projection_image(projections, geo))
    f.SetGeometry(rtk_geometry(rtk, geo))
    f.Update()
    return volume_from_image(f.GetOutput())


def rtk_fdk(rtk, projections: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's FDK with the plain ramp (no Hann window, no truncation correction)."""
    image = _image_type(projections.dtype)
    f = rtk.FDKConeBeamReconstructionFilter[image].New()
    f.SetInput(0, volume_image(np.zeros(geo.volume_shape, projections.dtype), geo))
    f.SetInput(1, projection_image(projections, geo))
    f.SetGeometry(rtk_geometry(rtk, geo))
    f.GetRampFilter().SetTruncationCorrection(0.0)
    f.GetRampFilter().SetHannCutFrequency(0.0)
    f.Update()
    return volume_from_image(f.GetOutput())


# ---------------------------------------------------------------- phantoms and masks
def border_distance(shape) -> np.ndarray:
    """(Z, Y, X) int: each voxel's distance in voxels to the nearest face layer (0 on it)."""
    idx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.minimum.reduce([np.minimum(i, n - 1 - i) for i, n in zip(idx, shape, strict=True)])


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


def field_of_view(geo: ConeBeamGeometry) -> np.ndarray:
    """(Z, Y, X) bool: voxels whose centre projects inside the span of pixel centres in
    every view. Outside, FDK reads the filtered views beyond their outermost pixel
    centres, where each code extrapolates its own way (the project: bilinearly towards
    zero over half a pixel)."""
    z, y, x = np.meshgrid(*(geo.voxel_centres(a) for a in range(3)), indexing="ij")
    points = np.stack([x, y, z], axis=-1)
    n_v, n_u = (int(n) for n in geo.n_detector)
    inside = np.ones(geo.volume_shape, dtype=bool)
    for src, det, du, dv in geo.view_vectors():
        normal = np.cross(du, dv)
        ray = points - src
        hit = src + (((det - src) @ normal) / (ray @ normal))[..., None] * ray - det
        u, v = hit @ du / (du @ du), hit @ dv / (dv @ dv)
        inside &= (u >= 0) & (u <= n_u - 1) & (v >= 0) & (v <= n_v - 1)
    return inside


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def rtk():
    """`itk.RTK`, with ITK's thread pool at torch's thread count (1 per xdist worker).

    The first use of `itk.RTK` loads the ITK wrappings it depends on: 15-20 s of CPU on
    this machine, paid here once per process; every test after it takes well under 1 s.
    """
    module = itk.RTK
    module.ThreeDCircularProjectionGeometry.New()  # force the lazy loading now
    threads = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
    yield module
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_geometry_mapping_puts_source_and_pixels_where_view_vectors_do(rtk, name):
    geo = GEOMETRIES[name]
    mapped = rtk_geometry(rtk, geo)
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
    theirs = rtk_project(rtk, volume, geo)
    assert ours.max() > 1.0  # the rays do cross the phantom
    assert relative(ours, theirs) < tol


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_back_projection_matches_rtk_inside_the_two_outer_layers(rtk, name):
    # Measured: 7e-15 .. 8e-15 relative on the voxels at distance >= 2 from the faces.
    geo = GEOMETRIES[name]
    projections = np.random.default_rng(0).random(geo.projection_shape)
    ours = backproject(torch.from_numpy(projections), geo).numpy()
    theirs = rtk_backproject(rtk, projections, geo)
    interior = border_distance(geo.volume_shape) >= 2
    assert relative(ours[interior], theirs[interior]) < 1e-12


def test_border_layers_differ_because_the_forward_models_do_and_each_adjoint_is_exact(rtk):
    geo = GEOMETRIES["offsets"]
    rng = np.random.default_rng(1)
    x, y = rng.random(geo.volume_shape), rng.random(geo.projection_shape)
    ax, aty = project(torch.from_numpy(x), geo).numpy(), backproject(torch.from_numpy(y), geo)
    rtk_ax, rtk_aty = rtk_project(rtk, x, geo), rtk_backproject(rtk, y, geo)
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
        gap = relative(project(torch.from_numpy(shell), geo).numpy(), rtk_project(rtk, shell, geo))
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
    theirs = rtk_project(rtk, volume, geo)[0, 2, 2]
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
    theirs = rtk_fdk(rtk, projections, geo)
    inside = field_of_view(geo)
    assert inside.mean() > 0.5
    assert np.abs(ours - theirs)[inside].max() < tol
    whole = float(psnr3d(torch.from_numpy(ours), torch.from_numpy(theirs)))
    assert whole > 40.0
    # Hence the same distance from the phantom (measured: 0 and 0.022 dB apart).
    to_truth = [float(psnr3d(torch.from_numpy(r).double(), phantom)) for r in (ours, theirs)]
    assert abs(to_truth[0] - to_truth[1]) < 0.1
