"""Feldkamp-Davis-Kress (cone) and filtered backprojection (parallel), TIGRE's conventions.

    vol = fdk(projections, geo)            # (N, V, U) line integrals -> (Z, Y, X) per mm

Steps (docs/classical.md has the derivation of the scale):

1. Cone mode: cosine pre-weighting ``dsd / sqrt(dsd^2 + u^2 + v^2)``, (u, v)
   the pixel centre relative to the central ray (TIGRE's FDK.py).
2. Ramp filtering along u: the Ram-Lak kernel built in the spatial domain
   (``1/4`` at 0, ``-1/(pi n)^2`` at odd n), zero-padded to a power of two
   ``max(64, 2^ceil(log2(2 n_u)))``, FFT, times an optional window
   (shepp_logan, cosine, hamming, hann) - TIGRE's utilities/filtering.py.
3. Voxel-driven weighted backprojection: every voxel samples the filtered
   views bilinearly where its ray meets the detector, weighted by
   ``(dso / ((x - src) . c))^2`` in cone mode (c the unit central ray), by the
   view's angular weight, and by ``1 / (2 tau)`` with ``tau`` the pixel pitch
   at the rotation axis (``d_u dso / dsd`` in cone mode).

Angular weights: TIGRE scales every view by ``2 pi / N``; here each view
weighs the arc it covers on the circle (half the gaps to its neighbours), which
is ``2 pi / N`` for uniform full-circle sets and stays right for non-uniform
sparse ones. Short scans are not Parker-weighted (as TIGRE's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import _check_tensor, _view_ids

FILTERS = ("ram_lak", "shepp_logan", "cosine", "hamming", "hann")
# Voxel samples (voxels x views) per backprojection chunk: bounds memory to ~200 MB in float32.
SAMPLES_PER_CHUNK = 1 << 22


def fdk(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    filter: str = "ram_lak",
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """FDK (cone mode) or FBP (parallel mode) reconstruction.

    Args:
        projections: (N, V, U) float32/float64 line integrals (dimensionless),
            N = len(view_ids) (all views of `geo` when None); any device.
        geo: the scan; lengths in mm.
        filter: window of the ramp filter, one of `FILTERS` (TIGRE's names).
        view_ids: (N,) indices into ``geo.angles`` of the rows of `projections`.

    Returns:
        (Z, Y, X) attenuation per mm, projections' dtype and device. FDK of
        the projections of a phantom approximates the phantom (exactly, up to
        discretisation, for parallel beams and the central slice of cones).
    """
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    if not isinstance(projections, torch.Tensor):
        raise TypeError(
            f"projections: expected a torch.Tensor, got {type(projections).__name__}"
            " (wrap numpy arrays with torch.from_numpy)"
        )
    ids = _view_ids(view_ids, geo.n_views)
    n_v, n_u = (int(n) for n in geo.n_detector)
    _check_tensor("projections", projections, (ids.size, n_v, n_u))
    filtered = filter_projections(projections, geo, filter)
    weights = angular_weights(geo.angles[ids])
    return _weighted_backprojection(filtered, geo, ids, weights)


def ramp_filter(n_u: int, filter: str = "ram_lak") -> tuple[np.ndarray, int]:
    """Frequency response of the windowed ramp filter on the padded length (TIGRE's `filter`).

    Args:
        n_u: detector columns.
        filter: one of `FILTERS`.

    Returns:
        (response, length): (length // 2 + 1,) float64 real response for
        ``torch.fft.rfft`` of rows zero-padded to `length`; it is twice the DFT
        of the unit-spacing Ram-Lak kernel, times the window.
    """
    if filter not in FILTERS:
        raise ValueError(f"filter: expected one of {FILTERS}, got {filter!r}")
    length = max(64, 1 << math.ceil(math.log2(2 * n_u)))
    n = np.arange(-length // 2, length // 2)
    kernel = np.zeros(length)
    kernel[length // 2] = 0.25
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = 2.0 * np.abs(np.fft.fft(kernel))[: length // 2 + 1]
    w = 2 * np.pi * np.arange(response.size) / length
    if filter == "shepp_logan":
        response[1:] *= np.sin(w[1:] / 2) / (w[1:] / 2)
    elif filter == "cosine":
        response[1:] *= np.cos(w[1:] / 2)
    elif filter == "hamming":
        response[1:] *= 0.54 + 0.46 * np.cos(w[1:])
    elif filter == "hann":
        response[1:] *= (1 + np.cos(w[1:])) / 2
    return response, length


def filter_projections(
    projections: torch.Tensor, geo: ConeBeamGeometry, filter: str = "ram_lak"
) -> torch.Tensor:
    """Cosine-weight (cone mode) and ramp-filter projections along u.

    Args:
        projections: (N, V, U) line integrals.
        geo: the scan.
        filter: one of `FILTERS`.

    Returns:
        (N, V, U) filtered projections, including the ``1 / (2 tau)`` factor
        (tau: pixel pitch at the rotation axis) and TIGRE's factor 2 of the
        filter, so that ``sum_views angular_weight * backprojection`` is the
        reconstruction.
    """
    n_v, n_u = (int(n) for n in geo.n_detector)
    d_v, d_u = (float(d) for d in geo.d_detector)
    response, length = ramp_filter(n_u, filter)
    real = projections.dtype
    if geo.mode == "cone":
        off_v, off_u = (float(o) for o in geo.off_detector)
        u = (torch.arange(n_u, dtype=real, device=projections.device) - n_u / 2 + 0.5) * d_u + off_u
        v = (torch.arange(n_v, dtype=real, device=projections.device) - n_v / 2 + 0.5) * d_v + off_v
        cosine = geo.dsd / torch.sqrt(geo.dsd**2 + u[None, :] ** 2 + v[:, None] ** 2)
        projections = projections * cosine
        tau = d_u * geo.dso / geo.dsd
    else:
        tau = d_u
    spectrum = torch.fft.rfft(projections, n=length, dim=-1)
    response_t = torch.as_tensor(response / (4.0 * tau), dtype=real, device=projections.device)
    return torch.fft.irfft(spectrum * response_t, n=length, dim=-1)[..., :n_u]


def angular_weights(angles: np.ndarray) -> np.ndarray:
    """Arc of the circle each view covers: half the gaps to its angular neighbours.

    Args:
        angles: (N,) radians, any order, any range.

    Returns:
        (N,) float64 radians summing to 2 pi; ``2 pi / N`` for uniform sets.
    """
    wrapped = np.mod(np.asarray(angles, dtype=np.float64), 2 * np.pi)
    order = np.argsort(wrapped, kind="stable")
    ordered = wrapped[order]
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 2 * np.pi]))
    arcs = np.empty_like(wrapped)
    arcs[order] = (gaps + np.roll(gaps, 1)) / 2
    if wrapped.size == 1:
        arcs[:] = 2 * np.pi
    return arcs


def _weighted_backprojection(
    filtered: torch.Tensor, geo: ConeBeamGeometry, view_ids: np.ndarray, arcs: np.ndarray
) -> torch.Tensor:
    """Voxel-driven backprojection ``sum_i arcs_i * w_i(x) * filtered_i(u_i(x), v_i(x))``."""
    device, real = filtered.device, filtered.dtype
    n_z, n_y, n_x = geo.volume_shape
    n_v, n_u = filtered.shape[1:]
    vectors = torch.as_tensor(geo.view_vectors()[view_ids], dtype=torch.float64, device=device)
    arcs_t = torch.as_tensor(arcs, dtype=real, device=device)
    origin, size = geo.voxel_origin_xyz(), geo.voxel_size_xyz()
    axes = [
        torch.as_tensor(origin[k] + np.arange(n) * size[k], dtype=torch.float64, device=device)
        for k, n in enumerate((n_x, n_y, n_z))
    ]
    volume = torch.zeros((n_z, n_y, n_x), dtype=real, device=device)
    slab = max(1, min(n_z, SAMPLES_PER_CHUNK // (n_y * n_x)))
    for z0 in range(0, n_z, slab):
        z_axis = axes[2][z0 : z0 + slab]
        per_chunk = max(1, SAMPLES_PER_CHUNK // (z_axis.numel() * n_y * n_x))
        for v0 in range(0, view_ids.size, per_chunk):
            views = slice(v0, v0 + per_chunk)
            u, v, weight = _detector_coordinates(geo, vectors[views], axes[0], axes[1], z_axis)
            grid = torch.stack(((2 * u + 1) / n_u - 1, (2 * v + 1) / n_v - 1), dim=-1)
            grid = grid.reshape(u.shape[0], -1, n_x, 2).to(real)
            samples = F.grid_sample(
                filtered[views, None],
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            ).reshape(u.shape)
            weight = weight.to(real) * arcs_t[views, None, None, None]
            volume[z0 : z0 + z_axis.numel()] += (samples * weight).sum(dim=0)
    return volume


def _detector_coordinates(
    geo: ConeBeamGeometry,
    vectors: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fractional detector indices (u, v) where each voxel's ray meets each view, and its weight.

    Args:
        geo: the scan.
        vectors: (C, 4, 3) float64 ``[src, det, du, dv]`` world vectors of C views.
        x, y, z: (X,), (Y,), (Zs,) float64 voxel-centre coordinates, mm.

    Returns:
        u, v, weight: (C, Zs, Y, X) float64; weight is FDK's ``(dso / depth)^2``
        in cone mode and 1 in parallel mode.
    """
    src, det, du, dv = (vectors[:, i] for i in range(4))
    normal = torch.linalg.cross(du, dv)

    def dot(w: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """(voxel - point) . w for every view and voxel, as a broadcast sum of the axes."""
        offset = (point * w).sum(-1)[:, None, None, None]
        return (
            w[:, 0, None, None, None] * x[None, None, None, :]
            + w[:, 1, None, None, None] * y[None, None, :, None]
            + w[:, 2, None, None, None] * z[None, :, None, None]
            - offset
        )

    du2 = (du * du).sum(-1)[:, None, None, None]
    dv2 = (dv * dv).sum(-1)[:, None, None, None]
    if geo.mode == "cone":
        # Ray src + t (voxel - src) meets the detector plane at t = magnification.
        depth_n = dot(normal, src)
        t = ((det - src) * normal).sum(-1)[:, None, None, None] / depth_n
        base_u = ((src - det) * du).sum(-1)[:, None, None, None]
        base_v = ((src - det) * dv).sum(-1)[:, None, None, None]
        u = (base_u + t * dot(du, src)) / du2
        v = (base_v + t * dot(dv, src)) / dv2
        central = normal * torch.sign(((det - src) * normal).sum(-1, keepdim=True))
        central = central / torch.linalg.vector_norm(central, dim=-1, keepdim=True)
        weight = (geo.dso / dot(central, src)) ** 2
        return u, v, weight
    # Parallel: voxel + s * direction meets the plane; direction = src (source-to-detector).
    s = -dot(normal, det) / (src * normal).sum(-1)[:, None, None, None]
    u = (dot(du, det) + s * (src * du).sum(-1)[:, None, None, None]) / du2
    v = (dot(dv, det) + s * (src * dv).sum(-1)[:, None, None, None]) / dv2
    return u, v, torch.ones_like(u)
