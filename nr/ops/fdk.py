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
sparse ones. Parallel beams measure the arcs on the doubled circle (angles modulo
pi: opposite rays coincide), so a 180-degree parallel scan (a synchrotron's) gets
``2 pi / N`` per view too instead of two huge weights on its first and last views.
Short cone-beam scans are not Parker-weighted (as TIGRE's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nr._ext import require_compiled, use_compiled
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import _view_ids, check_projections

FILTERS = ("ram_lak", "shepp_logan", "cosine", "hamming", "hann")
# Voxel samples (voxels x views) per backprojection chunk: bounds memory to ~200 MB in float32.
SAMPLES_PER_CHUNK = 1 << 22


def fdk(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    filter: str = "ram_lak",
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """FDK (cone mode) or FBP (parallel mode) reconstruction.

    Args:
        projections: (N, V, U) float32/float64 line integrals (dimensionless),
            N = len(view_ids) (all views of `geo` when None); any device.
        geo: the scan; lengths in mm.
        filter: window of the ramp filter, one of `FILTERS` (TIGRE's names).
        view_ids: (N,) indices into ``geo.angles`` of the rows of `projections`.
        backend: the backprojection's: "compiled" (the C++/OpenMP kernel, CPU tensors),
            "torch" (the twin, any device) or "auto" (compiled for CPU tensors when built).

    Returns:
        (Z, Y, X) attenuation per mm, projections' dtype and device. FDK of
        the projections of a phantom approximates the phantom (exactly, up to
        discretisation, for parallel beams and the central slice of cones).
    """
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    ids = _view_ids(view_ids, geo.n_views)
    check_projections(projections, geo, n_views=ids.size)
    compiled = use_compiled("ops", backend, projections)
    filtered = filter_projections(projections, geo, filter)
    # A parallel ray at angle a + pi is the ray at a reversed: arcs are measured on the
    # doubled circle (angles modulo pi), so that a 180-degree scan is weighted like a full one.
    doubling = 2.0 if geo.mode == "parallel" else 1.0
    weights = angular_weights(geo.angles[ids] * doubling)
    if compiled:
        return _compiled_backprojection(filtered, geo, ids, weights)
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


def _voxel_centres(geo: ConeBeamGeometry) -> list[np.ndarray]:
    """The voxel centres' x, y and z coordinates (mm): (X,), (Y,), (Z,) float64."""
    origin, size = geo.voxel_origin_xyz(), geo.voxel_size_xyz()
    n_z, n_y, n_x = geo.volume_shape
    return [origin[k] + np.arange(n) * size[k] for k, n in enumerate((n_x, n_y, n_z))]


def _compiled_backprojection(
    filtered: torch.Tensor, geo: ConeBeamGeometry, view_ids: np.ndarray, arcs: np.ndarray
) -> torch.Tensor:
    """`_weighted_backprojection` by the compiled kernel (CPU tensors)."""
    weighted = filtered * torch.as_tensor(arcs, dtype=filtered.dtype)[:, None, None]
    x, y, z = (torch.from_numpy(c) for c in _voxel_centres(geo))
    maps = torch.from_numpy(_projective_maps(geo, view_ids))
    return require_compiled("ops").fdk_backproject(weighted.contiguous(), maps, x, y, z)


def _weighted_backprojection(
    filtered: torch.Tensor, geo: ConeBeamGeometry, view_ids: np.ndarray, arcs: np.ndarray
) -> torch.Tensor:
    """Voxel-driven backprojection ``sum_i arcs_i * w_i(x) * filtered_i(u_i(x), v_i(x))``:
    the readable torch twin of the compiled kernel (nr/ops/csrc/fdk.cpp), on any device."""
    device, real = filtered.device, filtered.dtype
    n_z, n_y, n_x = geo.volume_shape
    n_v, n_u = filtered.shape[1:]
    pixel_maps = torch.as_tensor(_projective_maps(geo, view_ids), dtype=real, device=device)
    # grid_sample's coordinate (align_corners=False) of pixel index i is (2 i + 1) / n - 1.
    depth = pixel_maps[..., 2]
    maps = torch.stack(
        [
            (2 * pixel_maps[..., 0] + depth) / n_u - depth,
            (2 * pixel_maps[..., 1] + depth) / n_v - depth,
            depth,
        ],
        dim=-1,
    )
    weighted = filtered * torch.as_tensor(arcs, dtype=real, device=device)[:, None, None]
    x, y, z = (torch.as_tensor(c, dtype=real, device=device) for c in _voxel_centres(geo))
    volume = torch.zeros((n_z, n_y, n_x), dtype=real, device=device)
    slab = max(1, min(n_z, SAMPLES_PER_CHUNK // (n_y * n_x)))
    for z0 in range(0, n_z, slab):
        zs = z[z0 : z0 + slab]
        per_chunk = max(1, SAMPLES_PER_CHUNK // (zs.numel() * n_y * n_x))
        for v0 in range(0, view_ids.size, per_chunk):
            m = maps[v0 : v0 + per_chunk]  # (C, 4, 3)
            # (x, y, z, 1) @ m as a sum of an x part (C, 1, 1, X) and a (z, y) part (C, Zs, Y, 1).
            along_x = x[None, :, None] * m[:, None, 0]
            along_zy = (
                zs[None, :, None, None] * m[:, None, None, 2]
                + y[None, None, :, None] * m[:, None, None, 1]
                + m[:, None, None, 3]
            )
            mapped = along_x[:, None, None] + along_zy[:, :, :, None]  # (C, Zs, Y, X, 3)
            inverse_depth = 1.0 / mapped[..., 2]
            grid = mapped[..., :2] * inverse_depth[..., None]
            samples = F.grid_sample(
                weighted[v0 : v0 + per_chunk, None],
                grid.reshape(m.shape[0], -1, n_x, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            ).reshape(inverse_depth.shape)
            volume[z0 : z0 + zs.numel()] += (samples * inverse_depth**2).sum(0)
    return volume


def _projective_maps(geo: ConeBeamGeometry, view_ids: np.ndarray) -> np.ndarray:
    """Per view, the 4x3 matrix taking a voxel centre to detector pixel indices and weight.

    For a world point (x, y, z, 1) @ M = (p_u, p_v, d): the point projects onto
    the detector at pixel indices (p_u / d, p_v / d) (pixel centres at integers),
    and its FDK weight is ``1 / d^2``: in cone mode d is the voxel's depth along the
    central ray (the detector normal) divided by dso; in parallel mode d = 1.

    Returns:
        (N, 4, 3) float64.
    """
    maps = np.zeros((view_ids.size, 4, 3))
    for i, (src, det, du, dv) in enumerate(geo.view_vectors()[view_ids]):
        normal = np.cross(du, dv)
        if geo.mode == "cone":
            # The ray src + t (x - src) meets the detector plane at t = k / ((x - src) . normal).
            k = (det - src) @ normal
            depth = np.append(normal, -src @ normal)
            columns = []
            for axis in (du, dv):
                a = (src - det) @ axis
                columns.append(
                    np.append(a * normal + k * axis, -a * (src @ normal) - k * (src @ axis))
                )
            depth_scale = geo.dso * np.linalg.norm(normal) * np.sign(-k)
        else:
            # The ray x + s src (src: source-to-detector direction) meets the plane.
            columns = []
            for axis in (du, dv):
                ratio = (src @ axis) / (src @ normal)
                columns.append(
                    np.append(axis - ratio * normal, ratio * (det @ normal) - det @ axis)
                )
            depth = np.array([0.0, 0.0, 0.0, 1.0])
            depth_scale = 1.0
        # Pixel index = column / (depth |axis|^2).
        for c, axis in enumerate((du, dv)):
            maps[i, :, c] = columns[c] / (axis @ axis)
        maps[i, :, 2] = depth
        maps[i] /= depth_scale
    return maps
