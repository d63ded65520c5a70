"""Analytic ellipsoid phantoms: the 3D Shepp-Logan head, voxelisation, exact line integrals.

An ellipsoid phantom is a list of `Ellipsoid`s whose densities add up. Its
projections have a closed form (chord length through each ellipsoid times its
density), which makes it the reference for the projector's accuracy:

    ellipsoids = shepp_logan_3d(geo)
    volume = voxelise(ellipsoids, geo, supersample=4)     # (Z, Y, X)
    exact = line_integrals(ellipsoids, geo)                # (N, V, U)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops._projector_twin import ray_parameters

# The Kak-Slaney 3D head (Principles of Computerized Tomographic Imaging, p. 102) with Yu, Ye
# and Wang's contrast-enhanced densities (SPIE 5535, 2004), as in TIGRE's sl3d "yu-ye-wang":
# semi-axes (a, b, c), centre (x, y, z) in the unit box [-1, 1]^3, rotation about z (degrees),
# density. Sums of overlapping densities stay in [0, 1].
SHEPP_LOGAN_3D = (
    ((0.6900, 0.920, 0.900), (0.00, 0.000, 0.000), 0.0, 1.0),
    ((0.6624, 0.874, 0.880), (0.00, 0.000, 0.000), 0.0, -0.8),
    ((0.4100, 0.160, 0.210), (-0.22, 0.000, -0.250), 108.0, -0.2),
    ((0.3100, 0.110, 0.220), (0.22, 0.000, -0.250), 72.0, -0.2),
    ((0.2100, 0.250, 0.500), (0.00, 0.350, -0.250), 0.0, 0.2),
    ((0.0460, 0.046, 0.046), (0.00, 0.100, -0.250), 0.0, 0.2),
    ((0.0460, 0.023, 0.020), (-0.08, -0.650, -0.250), 0.0, 0.1),
    ((0.0460, 0.023, 0.020), (0.06, -0.650, -0.250), 90.0, 0.1),
    ((0.0560, 0.040, 0.100), (0.06, -0.105, 0.625), 90.0, 0.2),
    ((0.0560, 0.056, 0.100), (0.00, 0.100, 0.625), 0.0, -0.2),
)


@dataclass(frozen=True)
class Ellipsoid:
    """A solid ellipsoid of constant (additive) attenuation.

    Attributes:
        centre: (x, y, z) world position of the centre, mm.
        semi_axes: (a, b, c) semi-axis lengths, mm, along x, y, z before the rotation.
        density: attenuation added inside, per mm (may be negative).
        phi: rotation about +z, radians, counter-clockwise (x towards y).
    """

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    density: float
    phi: float = 0.0

    def __post_init__(self) -> None:
        for name in ("centre", "semi_axes"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (3,) or not np.all(np.isfinite(value)):
                raise ValueError(f"{name}: expected 3 finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.semi_axes) <= 0:
            raise ValueError(f"semi_axes: expected positive lengths, got {self.semi_axes}")
        for name in ("density", "phi"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 3) world points (or, with the centre removed, directions) to the frame
        where the ellipsoid is the unit ball: rotate by -phi, divide by the semi-axes."""
        c, s = math.cos(self.phi), math.sin(self.phi)
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        rotated = np.stack([c * x + s * y, -s * x + c * y, z], axis=-1)
        return rotated / np.asarray(self.semi_axes)


def shepp_logan_3d(geo: ConeBeamGeometry | None = None) -> list[Ellipsoid]:
    """The modified (Yu-Ye-Wang) 3D Shepp-Logan head, values in [0, 1].

    Args:
        geo: when given, the unit box [-1, 1]^3 is mapped onto the volume box of
            `geo` (centred on its off_origin; x and y scaled by the smaller of
            the two half-sizes so that rotated ellipses stay ellipses, z by the
            z half-size). When None, the phantom stays in the unit box.

    Returns:
        10 ellipsoids, densities per unit length of the box (per mm on `geo`).
    """
    scale, centre = np.ones(3), np.zeros(3)
    if geo is not None:
        half = geo.s_voxel[::-1] / 2  # (x, y, z)
        scale = np.array([min(half[0], half[1])] * 2 + [half[2]])
        centre = geo.off_origin[::-1]
    return [
        Ellipsoid(
            centre=tuple(centre + np.asarray(c) * scale),
            semi_axes=tuple(np.asarray(axes) * scale),
            density=density,
            phi=math.radians(degrees),
        )
        for axes, c, degrees, density in SHEPP_LOGAN_3D
    ]


def voxelise(
    ellipsoids: Sequence[Ellipsoid],
    geo: ConeBeamGeometry,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sample the phantom on the voxel grid of `geo`.

    Args:
        ellipsoids: the phantom.
        geo: gives the grid (n_voxel, d_voxel, off_origin).
        supersample: s >= 1; each voxel value is the mean over s^3 points on a
            regular sub-grid (s = 1: the value at the voxel centre). Larger s
            approaches the voxel average (partial-volume effect).
        dtype: float32 or float64.

    Returns:
        (Z, Y, X) tensor of attenuation, per mm, on the CPU.
    """
    _check_ellipsoids(ellipsoids)
    if not isinstance(supersample, int) or isinstance(supersample, bool) or supersample < 1:
        raise ValueError(f"supersample: expected an integer >= 1, got {supersample!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    z, y, x = (geo.voxel_centres(axis) for axis in range(3))
    grid = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1).transpose(2, 1, 0, 3)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    volume = np.zeros(geo.volume_shape)
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                points = grid + np.array([dx, dy, dz]) * geo.voxel_size_xyz()
                for e in ellipsoids:
                    local = e.to_local(points - np.asarray(e.centre))
                    volume += e.density * (np.einsum("...i,...i->...", local, local) <= 1.0)
    return torch.from_numpy(volume / supersample**3).to(dtype)


def line_integrals(
    ellipsoids: Sequence[Ellipsoid],
    geo: ConeBeamGeometry,
    view_ids: Sequence[int] | np.ndarray | None = None,
) -> torch.Tensor:
    """Exact line integrals of the phantom along the rays of `geo`.

    Each ray runs over the same segment as in `nr.ops.projector.project`
    (source to detector pixel); its integral is the sum over ellipsoids of
    density x length of the chord inside the ellipsoid.

    Args:
        ellipsoids: the phantom.
        geo: the scan (cone or parallel, every field).
        view_ids: (N,) indices into ``geo.angles``; all views when None.

    Returns:
        (N, V, U) float64 tensor on the CPU.
    """
    _check_ellipsoids(ellipsoids)
    ids = np.arange(geo.n_views) if view_ids is None else np.asarray(view_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= geo.n_views:
        raise ValueError(f"view_ids: expected indices in [0, {geo.n_views}), got {ids.tolist()}")
    n_v, n_u = (int(n) for n in geo.n_detector)
    vectors = torch.from_numpy(geo.view_vectors()[ids])
    start, b = (t.numpy() for t in ray_parameters(vectors, n_v, n_u, geo.mode == "parallel"))
    length = np.linalg.norm(b, axis=-1)
    total = np.zeros(start.shape[:-1])
    for e in ellipsoids:
        # |p + t q|^2 = 1 in the ellipsoid's unit-ball frame; the chord is the t-interval
        # of the roots, clipped to the ray segment t in [0, 1].
        p = e.to_local(start - np.asarray(e.centre))
        q = e.to_local(b)
        qq = np.einsum("...i,...i->...", q, q)
        pq = np.einsum("...i,...i->...", p, q)
        pp = np.einsum("...i,...i->...", p, p)
        disc = np.maximum(pq**2 - qq * (pp - 1.0), 0.0)
        root = np.sqrt(disc)
        t0 = np.clip((-pq - root) / qq, 0.0, 1.0)
        t1 = np.clip((-pq + root) / qq, 0.0, 1.0)
        total += e.density * (t1 - t0) * length
    return torch.from_numpy(total)


def _check_ellipsoids(ellipsoids: Sequence[Ellipsoid]) -> None:
    if not isinstance(ellipsoids, Sequence) or not ellipsoids:
        raise ValueError("ellipsoids: expected a non-empty sequence of Ellipsoid")
    for i, e in enumerate(ellipsoids):
        if not isinstance(e, Ellipsoid):
            raise TypeError(f"ellipsoids[{i}]: expected an Ellipsoid, got {type(e).__name__}")
