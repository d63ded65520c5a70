"""RTK (the Reconstruction Toolkit, ``pip install itk-rtk``) on the project's geometry.

RTK is the independent CPU reference for the cone-beam operators (tests/test_rtk.py,
``python -m pipelines.benchmark rtk``). Optional: itk is imported inside the functions,
and a missing RTK raises an ImportError naming the remedy.

    sino = rtk_project(volume, geo)              # Joseph forward, (Z, Y, X) -> (N, V, U)
    vol = rtk_backproject(sino, geo)             # its transpose, (N, V, U) -> (Z, Y, X)
    vol = rtk_fdk(sino, geo)                     # FDK, plain ramp (no window)
    vol = rtk_cgls(sino, geo, n_iter=10)         # CG on the normal equations, Joseph pair
    vol = rtk_sart(sino, geo, n_iter=3)          # RTK's SART, Joseph pair

Arrays are numpy (float32 or float64, kept on output) in the project's layout: volumes
(Z, Y, X), projections (N, V, U). The ``*_image`` functions are the same operators on itk
images already in RTK's frame (`volume_image`, `projection_image`), for callers that
convert once and call many times (the benchmark). `border_distance` and `field_of_view`
give the voxels on which the two codes are comparable: RTK's Joseph clips each ray to the
box through the outermost voxel centres, so the operators differ on the two outermost voxel
layers (docs/projector.md, "Border voxels"), and outside the field of view each FDK
extrapolates the filtered views its own way.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings

import numpy as np

from nr.geometry import ConeBeamGeometry

REMEDY = "RTK is not installed: pip install itk-rtk (it is in the test extra of setup.py)"
# x -> RTK's Z, y -> X, z -> Y: the permutation taking world vectors to RTK's frame.
TO_RTK = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@functools.cache
def load_itk():
    """The `itk` module with `itk.RTK` loaded (15-20 s of CPU the first time in a process).

    Raises:
        ImportError: itk or its RTK wrapping is missing (the message names the remedy).
    """
    try:
        import itk
    except ImportError as error:
        raise ImportError(REMEDY) from error
    if importlib.util.find_spec("itk.RTKPython") is None:
        raise ImportError(REMEDY)
    with warnings.catch_warnings():
        # ITK's SWIG wrappings warn once per wrapped type under Python >= 3.11.
        warnings.filterwarnings("ignore", "builtin type .* has no __module__", DeprecationWarning)
        itk.RTK.ThreeDCircularProjectionGeometry.New()  # force the lazy loading now
    return itk


def set_threads(n: int) -> int:
    """Set ITK's global default number of threads (used by every filter created after).

    Args:
        n: threads, >= 1 (e.g. ``torch.get_num_threads()`` to match the project's kernels).

    Returns:
        The previous value, to restore it.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    threader = load_itk().MultiThreaderBase
    previous = int(threader.GetGlobalDefaultNumberOfThreads())
    threader.SetGlobalDefaultNumberOfThreads(n)
    return previous


# ---------------------------------------------------------------- the mapping to RTK
def rtk_geometry(geo: ConeBeamGeometry):
    """RTK's ThreeDCircularProjectionGeometry for a cone-beam `geo`.

    Frames: RTK rotates about its y axis and puts the source at +Z at gantry angle 0;
    the project (TIGRE) rotates about z with the source at +x at angle 0. The map
    (x, y, z) -> (X, Y, Z) = (y, z, x) (`TO_RTK`) is a cyclic permutation, so a rotation:
    RTK's gantry rotation of +a about Y (Z towards X) is the project's rotation of +a about
    z (x towards y), and the gantry angle is `angle` in degrees. The detector's u axis (+y)
    becomes RTK's +X (its projection x axis) and v (+z) RTK's +Y, so RTK's
    ProjectionOffsetX/Y are off_u/off_v. TIGRE's COR moves source and detector by cor along
    the rotated y axis: RTK's SourceOffsetX = cor, and cor adds to ProjectionOffsetX (RTK's
    detector offset is measured from the isocentre). rot_detector (detector roll/pitch/yaw)
    and parallel mode are not mapped.

    Args:
        geo: a cone-beam scan with rot_detector == 0.

    Returns:
        rtk.ThreeDCircularProjectionGeometry with one projection per angle of `geo`.
    """
    _check_geo(geo)
    rtk = load_itk().RTK
    out = rtk.ThreeDCircularProjectionGeometry.New()
    off_v, off_u = (float(o) for o in geo.off_detector)
    for angle in geo.angles:
        # AddProjection(sid, sdd, gantry, projOffsetX, projOffsetY, outOfPlane, inPlane,
        #               sourceOffsetX, sourceOffsetY)
        out.AddProjection(
            geo.dso, geo.dsd, math.degrees(angle), off_u + geo.cor, off_v, 0.0, 0.0, geo.cor, 0.0
        )
    return out


def volume_image(volume: np.ndarray, geo: ConeBeamGeometry):
    """The (Z, Y, X) volume of `geo` as an itk image in RTK's frame (identity direction).

    itk indexes an array (a, b, c) as (c, b, a) = (X, Y, Z); RTK's (X, Y, Z) is the
    project's (y, z, x), so the array is transposed to (x, z, y) (a copy). Origin: the
    centre of voxel (0, 0, 0); spacing: the voxel sizes, both permuted the same way.

    Args:
        volume: (Z, Y, X) float32 or float64 array, `geo.volume_shape`.
        geo: the scan.

    Returns:
        itk.Image[itk.F, 3] or itk.Image[itk.D, 3], as `volume`'s dtype.
    """
    _check_geo(geo)
    _check_array("volume", volume, geo.volume_shape)
    return _image(
        volume.transpose(2, 0, 1), TO_RTK @ geo.voxel_origin_xyz(), TO_RTK @ geo.voxel_size_xyz()
    )


def volume_from_image(image) -> np.ndarray:
    """Inverse of `volume_image`: an RTK volume as the project's (Z, Y, X) array (a copy)."""
    return load_itk().array_from_image(image).transpose(1, 2, 0).copy()


def projection_image(projections: np.ndarray, geo: ConeBeamGeometry):
    """(N, V, U) projections as RTK's projection stack (index (u, v, view)).

    The physical (x, y) of pixel (v, u) is its position on the detector relative to the
    detector origin, which RTK places at (ProjectionOffsetX, ProjectionOffsetY):
    ((u - n_u/2 + 0.5) d_u, (v - n_v/2 + 0.5) d_v), as `geo.view_vectors()` before the
    offsets. The third axis (view) has spacing 1 and origin 0.

    Args:
        projections: (N, V, U) float32 or float64 array, `geo.projection_shape`.
        geo: the scan.

    Returns:
        itk.Image[itk.F, 3] or itk.Image[itk.D, 3], as `projections`' dtype (a copy).
    """
    _check_geo(geo)
    _check_array("projections", projections, geo.projection_shape)
    n_v, n_u = (int(n) for n in geo.n_detector)
    d_v, d_u = (float(d) for d in geo.d_detector)
    origin = (-(n_u / 2 - 0.5) * d_u, -(n_v / 2 - 0.5) * d_v, 0.0)
    return _image(projections, origin, (d_u, d_v, 1.0))


def projection_from_image(image) -> np.ndarray:
    """Inverse of `projection_image`: an RTK projection stack as an (N, V, U) array (a copy)."""
    return load_itk().array_from_image(image).copy()


# ---------------------------------------------------------------- RTK's operators on images
def forward_image(volume, geo: ConeBeamGeometry, geometry=None):
    """RTK's JosephForwardProjectionImageFilter: `volume_image` -> `projection_image` layout.

    Args:
        volume: itk image from `volume_image`.
        geo: the scan.
        geometry: `rtk_geometry(geo)`, built here when None.

    Returns:
        The (N, V, U) projection stack as an itk image, the volume's pixel type.
    """
    _check_geo(geo)
    itk, dtype = load_itk(), _pixel_dtype(volume)
    image = _image_type(dtype)
    f = itk.RTK.JosephForwardProjectionImageFilter[image, image].New()
    f.SetInput(0, _blank_projections(geo, dtype))
    f.SetInput(1, volume)
    f.SetGeometry(rtk_geometry(geo) if geometry is None else geometry)
    f.Update()
    return f.GetOutput()


def back_image(projections, geo: ConeBeamGeometry, geometry=None):
    """RTK's JosephBackProjectionImageFilter (the transpose of its Joseph forward).

    Args:
        projections: itk image from `projection_image`.
        geo: the scan.
        geometry: `rtk_geometry(geo)`, built here when None.

    Returns:
        The (Z, Y, X) volume as an itk image in RTK's frame, the projections' pixel type.
    """
    _check_geo(geo)
    itk, dtype = load_itk(), _pixel_dtype(projections)
    image = _image_type(dtype)
    f = itk.RTK.JosephBackProjectionImageFilter[image, image].New()
    f.SetInput(0, _blank_volume(geo, dtype))
    f.SetInput(1, projections)
    f.SetGeometry(rtk_geometry(geo) if geometry is None else geometry)
    f.Update()
    return f.GetOutput()


def fdk_image(projections, geo: ConeBeamGeometry, geometry=None):
    """RTK's FDKConeBeamReconstructionFilter with the plain ramp (no Hann window, no
    truncation correction). Arguments and result as `back_image`."""
    _check_geo(geo)
    itk, dtype = load_itk(), _pixel_dtype(projections)
    f = itk.RTK.FDKConeBeamReconstructionFilter[_image_type(dtype)].New()
    f.SetInput(0, _blank_volume(geo, dtype))
    f.SetInput(1, projections)
    f.SetGeometry(rtk_geometry(geo) if geometry is None else geometry)
    f.GetRampFilter().SetTruncationCorrection(0.0)
    f.GetRampFilter().SetHannCutFrequency(0.0)
    f.Update()
    return f.GetOutput()


def cgls_image(projections, geo: ConeBeamGeometry, n_iter: int, *, support=None, geometry=None):
    """RTK's ConjugateGradientConeBeamReconstructionFilter as plain CGLS.

    Conjugate gradients on ``A^T A x = A^T p`` from zero, for exactly `n_iter` iterations,
    with RTK's Joseph forward and back projectors: no regularisation (Gamma = Tikhonov = 0),
    unit projection weights and the displaced-detector weighting disabled (it would reweigh
    the rows of an offset detector). With a support mask M, RTK solves
    ``M A^T A M x = M A^T p`` and returns ``M x``.

    Args:
        projections: itk image from `projection_image`.
        geo: the scan.
        n_iter: iterations (RTK does not stop early).
        support: None, or an itk image from `volume_image` of a 0/1 mask, same pixel type.
        geometry: `rtk_geometry(geo)`, built here when None.

    Returns:
        The (Z, Y, X) volume as an itk image in RTK's frame, the projections' pixel type.
    """
    _positive_int("n_iter", n_iter)
    _check_geo(geo)
    itk, dtype = load_itk(), _pixel_dtype(projections)
    f = itk.RTK.ConjugateGradientConeBeamReconstructionFilter[_image_type(dtype)].New()
    f.SetInputVolume(_blank_volume(geo, dtype))
    f.SetInputProjectionStack(projections)
    f.SetForwardProjectionFilter(type(f).ForwardProjectionType_FP_JOSEPH)
    f.SetBackProjectionFilter(type(f).BackProjectionType_BP_JOSEPH)
    f.SetGeometry(rtk_geometry(geo) if geometry is None else geometry)
    f.SetNumberOfIterations(n_iter)
    f.SetDisableDisplacedDetectorFilter(True)
    f.SetCudaConjugateGradient(False)
    if support is not None:
        f.SetSupportMask(support)
    f.Update()
    return f.GetOutput()


def sart_image(
    projections,
    geo: ConeBeamGeometry,
    n_iter: int,
    *,
    lmbda: float = 1.0,
    block_size: int = 1,
    nonneg: bool = True,
    geometry=None,
):
    """RTK's SARTConeBeamReconstructionFilter (SART; OS-SART for block_size > 1), Joseph pair.

    Not the same iteration as `nr.ops.sart`: RTK visits the views in a shuffled order
    (its own fixed seed), divides the residual by the ray's chord through the volume box
    (a ray-box intersection, not ``A 1``) and keeps lmbda constant (no lmbda_red).
    Arguments and result as `back_image`; lmbda, block_size and nonneg as `SARTConfig`.
    """
    _positive_int("n_iter", n_iter)
    _positive_int("block_size", block_size)
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not lmbda > 0:
        raise ValueError(f"lmbda: expected a positive number, got {lmbda!r}")
    _check_geo(geo)
    itk, dtype = load_itk(), _pixel_dtype(projections)
    image = _image_type(dtype)
    f = itk.RTK.SARTConeBeamReconstructionFilter[image, image].New()
    f.SetInput(0, _blank_volume(geo, dtype))
    f.SetInput(1, projections)
    f.SetForwardProjectionFilter(type(f).ForwardProjectionType_FP_JOSEPH)
    f.SetBackProjectionFilter(type(f).BackProjectionType_BP_JOSEPH)
    f.SetGeometry(rtk_geometry(geo) if geometry is None else geometry)
    f.SetNumberOfIterations(n_iter)
    f.SetNumberOfProjectionsPerSubset(block_size)
    f.SetLambda(float(lmbda))
    f.SetEnforcePositivity(bool(nonneg))
    f.SetDisableDisplacedDetectorFilter(True)
    f.Update()
    return f.GetOutput()


# ---------------------------------------------------------------- the same on arrays
def rtk_project(volume: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's Joseph forward projection: (Z, Y, X) -> (N, V, U), `volume`'s dtype."""
    return projection_from_image(forward_image(volume_image(volume, geo), geo))


def rtk_backproject(projections: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's Joseph back projection (the transpose of its forward): (N, V, U) -> (Z, Y, X)."""
    return volume_from_image(back_image(projection_image(projections, geo), geo))


def rtk_fdk(projections: np.ndarray, geo: ConeBeamGeometry) -> np.ndarray:
    """RTK's FDK, plain ramp (`fdk_image`): (N, V, U) -> (Z, Y, X), projections' dtype."""
    return volume_from_image(fdk_image(projection_image(projections, geo), geo))


def rtk_cgls(
    projections: np.ndarray,
    geo: ConeBeamGeometry,
    n_iter: int,
    *,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """RTK's CGLS (`cgls_image`): (N, V, U) -> (Z, Y, X), projections' dtype.

    `support`: None or a (Z, Y, X) bool mask; the solution is kept zero outside it.
    """
    mask = None
    if support is not None:
        if not isinstance(support, np.ndarray) or support.dtype != np.bool_:
            raise TypeError(f"support: expected a bool numpy array, got {_describe(support)}")
        mask = volume_image(support.astype(projections.dtype), geo)
    image = projection_image(projections, geo)
    return volume_from_image(cgls_image(image, geo, n_iter, support=mask))


def rtk_sart(
    projections: np.ndarray,
    geo: ConeBeamGeometry,
    n_iter: int,
    *,
    lmbda: float = 1.0,
    block_size: int = 1,
    nonneg: bool = True,
) -> np.ndarray:
    """RTK's SART (`sart_image`): (N, V, U) -> (Z, Y, X), projections' dtype."""
    image = projection_image(projections, geo)
    out = sart_image(image, geo, n_iter, lmbda=lmbda, block_size=block_size, nonneg=nonneg)
    return volume_from_image(out)


# ---------------------------------------------------------------- where the two agree
def border_distance(shape: tuple[int, int, int]) -> np.ndarray:
    """(Z, Y, X) int: each voxel's distance in voxels to the nearest face layer (0 on it).

    The project and RTK agree on the voxels at distance >= 2 (module docstring).
    """
    idx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.minimum.reduce([np.minimum(i, n - 1 - i) for i, n in zip(idx, shape, strict=True)])


def field_of_view(geo: ConeBeamGeometry) -> np.ndarray:
    """(Z, Y, X) bool: voxels whose centre projects inside the span of pixel centres in
    every view. Outside, FDK reads the filtered views beyond their outermost pixel
    centres, where each code extrapolates its own way (the project: bilinearly towards
    zero over half a pixel)."""
    _check_geo(geo)
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


# ---------------------------------------------------------------- helpers
def _check_geo(geo: object) -> None:
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    if geo.mode != "cone" or np.any(geo.rot_detector != 0):
        raise ValueError(
            f"geo: RTK is mapped for cone-beam geometries without rot_detector, got mode "
            f"{geo.mode!r} and rot_detector {geo.rot_detector.tolist()}"
        )


def _check_array(name: str, array: object, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array, got {type(array).__name__}"
            " (use tensor.numpy() for a CPU tensor)"
        )
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: values must be finite (found NaN or inf)")


def _describe(value: object) -> str:
    return f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _image(array: np.ndarray, origin, spacing):
    image = load_itk().image_from_array(np.ascontiguousarray(array))
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    return image


def _image_type(dtype: np.dtype):
    itk = load_itk()
    return itk.Image[itk.F if dtype == np.float32 else itk.D, 3]


def _pixel_dtype(image) -> np.dtype:
    """float32 or float64, the pixel type of an itk image from `volume_image` /
    `projection_image`."""
    itk = load_itk()
    for pixel, dtype in ((itk.F, np.float32), (itk.D, np.float64)):
        if isinstance(image, itk.Image[pixel, 3]):
            return np.dtype(dtype)
    raise TypeError(
        f"image: expected a 3-D itk image of float or double pixels (`volume_image`, "
        f"`projection_image`), got {type(image).__name__}"
    )


def _blank_volume(geo: ConeBeamGeometry, dtype: np.dtype):
    """A zero volume of `geo` in RTK's frame (`volume_image`'s layout)."""
    n = geo.volume_shape  # (Z, Y, X) -> itk size (X, Y, Z) of the (x, z, y) array
    return _constant(
        (n[1], n[0], n[2]), TO_RTK @ geo.voxel_origin_xyz(), TO_RTK @ geo.voxel_size_xyz(), dtype
    )


def _blank_projections(geo: ConeBeamGeometry, dtype: np.dtype):
    """A zero projection stack of `geo` (`projection_image`'s layout)."""
    n_v, n_u = (int(n) for n in geo.n_detector)
    d_v, d_u = (float(d) for d in geo.d_detector)
    origin = (-(n_u / 2 - 0.5) * d_u, -(n_v / 2 - 0.5) * d_v, 0.0)
    return _constant((n_u, n_v, geo.n_views), origin, (d_u, d_v, 1.0), dtype)


def _constant(size, origin, spacing, dtype: np.dtype):
    source = load_itk().RTK.ConstantImageSource[_image_type(dtype)].New()
    source.SetSize([int(v) for v in size])
    source.SetOrigin([float(v) for v in origin])
    source.SetSpacing([float(v) for v in spacing])
    source.SetConstant(0.0)
    source.Update()  # an output outlives its source only once it holds its pixels
    return source.GetOutput()
