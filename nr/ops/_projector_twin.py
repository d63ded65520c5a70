"""Ray set-up shared by both backends, and the readable pure-torch twin of the projector.

The operator is Joseph's method (docs/projector.md). In voxel-index coordinates
(index 0 = centre of voxel 0 on each axis) a ray is ``start + t * b`` for
t in [0, 1]. Its *dominant axis* k maximises ``|b_k|``; the ray meets the
planes ``i_k = i`` (i = 0 .. n_k - 1) at ``t_i = (i - start_k) / b_k`` and the
volume there is interpolated bilinearly in the plane (zero outside the grid).
Each sample weighs ``w = |b in mm| / |b_k|``, the ray length per plane. Only
planes with t in [0, 1] count: ``ceil(min(start_k, end_k)) <= i <=
floor(max(start_k, end_k))``. The compiled kernel computes exactly these
weights; the adjoint scatters them.

Per dominant axis the volume is viewed as slabs ``(n_k, n_slow, n_fast)`` and
padded by one zero voxel on each in-plane side, so that every bilinear corner of
a sample with ``-1 <= c < n`` is a valid index.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nr.geometry import ConeBeamGeometry

# Per dominant world axis k (x=0, y=1, z=2): the in-plane (slow, fast) world axes and the
# permutation of a (Z, Y, X) array that puts k first, then slow, then fast.
IN_PLANE = {0: (2, 1), 1: (2, 0), 2: (1, 0)}
PERMUTE = {0: (2, 0, 1), 1: (1, 0, 2), 2: (0, 1, 2)}
INVERSE = {k: tuple(int(i) for i in np.argsort(p)) for k, p in PERMUTE.items()}
# Samples (ray x plane) processed per chunk of views by the twin: bounds its memory.
SAMPLES_PER_CHUNK = 1 << 18


def index_vectors(geo: ConeBeamGeometry, view_ids: np.ndarray) -> np.ndarray:
    """Per-view ray vectors of `geo` in voxel-index coordinates.

    Args:
        geo: the scan.
        view_ids: (N,) int64 indices of the views.

    Returns:
        (N, 4, 3) float64 ``[src, det, du, dv]`` as in ``geo.view_vectors()``
        with positions mapped by ``(p - voxel_origin) / voxel_size`` and
        directions by ``d / voxel_size`` (x, y, z order).
    """
    vectors = geo.view_vectors()[view_ids]
    origin, size = geo.voxel_origin_xyz(), geo.voxel_size_xyz()
    out = vectors / size
    out[:, 1] = (vectors[:, 1] - origin) / size
    if geo.mode == "cone":
        out[:, 0] = (vectors[:, 0] - origin) / size
    return out


def ray_parameters(
    vectors: torch.Tensor, n_v: int, n_u: int, parallel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start points and direction vectors of every ray, in voxel-index coordinates.

    Args:
        vectors: (N, 4, 3) float64 from `index_vectors`.
        n_v, n_u: detector rows and columns.
        parallel: parallel-beam mode (``src`` is then the ray direction).

    Returns:
        start, b: (N, V, U, 3) float64; the ray is ``start + t b``, t in [0, 1].
    """
    v = torch.arange(n_v, dtype=vectors.dtype, device=vectors.device)[:, None, None]
    u = torch.arange(n_u, dtype=vectors.dtype, device=vectors.device)[None, :, None]
    src, det, du, dv = (vectors[:, i, None, None, :] for i in range(4))
    pixel = det + u * du + v * dv
    if parallel:
        b = src.expand_as(pixel)
        return pixel - b, b
    return src.expand_as(pixel), pixel - src


class _Samples:
    """Gather indices and weights of the four bilinear corners of every sample of some rays.

    All rays share the dominant axis k; ``index[c]`` and ``weight[c]`` are (R, n_k) for
    corner c, indexing the flattened padded slabs of axis k.
    """

    def __init__(
        self,
        start: torch.Tensor,
        b: torch.Tensor,
        voxel_size: torch.Tensor,
        shape_xyz: tuple[int, int, int],
        k: int,
        dtype: torch.dtype,
    ) -> None:
        slow, fast = IN_PLANE[k]
        n_k, n_s, n_f = shape_xyz[k], shape_xyz[slow], shape_xyz[fast]
        planes = torch.arange(n_k, dtype=start.dtype, device=start.device)
        start_k, b_k = start[:, k : k + 1], b[:, k : k + 1]
        t = (planes - start_k) / b_k
        c_s = start[:, slow : slow + 1] + t * b[:, slow : slow + 1]
        c_f = start[:, fast : fast + 1] + t * b[:, fast : fast + 1]
        end_k = start_k + b_k
        lo = torch.ceil(torch.minimum(start_k, end_k))
        hi = torch.floor(torch.maximum(start_k, end_k))
        i_s, i_f = torch.floor(c_s), torch.floor(c_f)
        valid = (
            (planes >= lo)
            & (planes <= hi)
            & (i_s >= -1)
            & (i_s <= n_s - 1)
            & (i_f >= -1)
            & (i_f <= n_f - 1)
        )
        length = torch.linalg.vector_norm(b * voxel_size, dim=1, keepdim=True)
        w = torch.where(valid, length / b_k.abs(), torch.zeros_like(t)).to(dtype)
        f_s, f_f = (c_s - i_s).to(dtype), (c_f - i_f).to(dtype)
        # Padded slab index of the (i_s, i_f) corner; invalid samples point at 0 with weight 0.
        row = n_f + 2
        base = planes.long() * ((n_s + 2) * row) + (i_s.long() + 1) * row + (i_f.long() + 1)
        base = torch.where(valid, base, torch.zeros_like(base))
        self.index = (base, base + 1, base + row, base + row + 1)
        w_s0, w_s1 = w * (1 - f_s), w * f_s
        self.weight = (w_s0 * (1 - f_f), w_s0 * f_f, w_s1 * (1 - f_f), w_s1 * f_f)


def _blocks(
    vectors: torch.Tensor,
    n_det: tuple,
    parallel: bool,
    shape_xyz: tuple,
    voxel_size: torch.Tensor,
    dtype: torch.dtype,
):
    """Yield ``(flat ray ids, samples)`` over all rays, one dominant axis and a bounded block
    of samples at a time; flat ray id = view * V * U + v * U + u."""
    n_v, n_u = n_det
    rays_per_view = n_v * n_u
    views_per_chunk = max(1, SAMPLES_PER_CHUNK // (rays_per_view * 16))
    for first in range(0, vectors.shape[0], views_per_chunk):
        start, b = ray_parameters(vectors[first : first + views_per_chunk], n_v, n_u, parallel)
        start, b = start.reshape(-1, 3), b.reshape(-1, 3)
        dominant = b.abs().argmax(dim=1)
        for k in range(3):
            rays = torch.nonzero(dominant == k).squeeze(1)
            step = max(1, SAMPLES_PER_CHUNK // shape_xyz[k])
            for block in rays.split(step):
                samples = _Samples(start[block], b[block], voxel_size, shape_xyz, k, dtype)
                yield k, block + first * rays_per_view, samples


def _padded_slabs(volume: torch.Tensor, k: int) -> torch.Tensor:
    return F.pad(volume.permute(PERMUTE[k]), (1, 1, 1, 1)).reshape(-1)


def project_twin(
    volume: torch.Tensor, vectors: np.ndarray, voxel_size: np.ndarray, n_det: tuple, parallel: bool
) -> torch.Tensor:
    """Joseph forward projection in plain torch.

    Args:
        volume: (Z, Y, X) float32/float64 on any device.
        vectors: (N, 4, 3) float64 from `index_vectors`.
        voxel_size: (3,) voxel size along (x, y, z), mm.
        n_det: (V, U) detector shape.
        parallel: parallel-beam mode.

    Returns:
        (N, V, U) line integrals, volume's dtype and device.
    """
    device, dtype = volume.device, volume.dtype
    shape_xyz = tuple(volume.shape[::-1])
    vec = torch.as_tensor(vectors, dtype=torch.float64, device=device)
    size = torch.as_tensor(voxel_size, dtype=torch.float64, device=device)
    slabs = {}  # padded copies of the dominant axes that occur
    out = torch.zeros(vectors.shape[0] * n_det[0] * n_det[1], dtype=dtype, device=device)
    for k, rays, s in _blocks(vec, n_det, parallel, shape_xyz, size, dtype):
        if k not in slabs:
            slabs[k] = _padded_slabs(volume, k)
        total = sum(slabs[k][i] * w for i, w in zip(s.index, s.weight, strict=True))
        out[rays] = total.sum(dim=1)
    return out.reshape(-1, *n_det)


def backproject_twin(
    projections: torch.Tensor,
    vectors: np.ndarray,
    voxel_size: np.ndarray,
    shape_zyx: tuple,
    parallel: bool,
) -> torch.Tensor:
    """The exact adjoint of `project_twin`: scatter of the same weights.

    Args:
        projections: (N, V, U) float32/float64 on any device.
        vectors: (N, 4, 3) float64 from `index_vectors`.
        voxel_size: (3,) voxel size along (x, y, z), mm.
        shape_zyx: (Z, Y, X) volume shape.
        parallel: parallel-beam mode.

    Returns:
        (Z, Y, X) volume, projections' dtype and device.
    """
    device, dtype = projections.device, projections.dtype
    shape_xyz = tuple(shape_zyx[::-1])
    vec = torch.as_tensor(vectors, dtype=torch.float64, device=device)
    size = torch.as_tensor(voxel_size, dtype=torch.float64, device=device)
    padded = {}  # accumulators of the dominant axes that occur
    values = projections.reshape(-1)
    for k, rays, s in _blocks(vec, tuple(projections.shape[1:]), parallel, shape_xyz, size, dtype):
        if k not in padded:
            slow, fast = IN_PLANE[k]
            shape = (shape_xyz[k], shape_xyz[slow] + 2, shape_xyz[fast] + 2)
            padded[k] = torch.zeros(shape, dtype=dtype, device=device)
        target, value = padded[k].view(-1), values[rays][:, None]
        for i, w in zip(s.index, s.weight, strict=True):
            target.index_add_(0, i.reshape(-1), (w * value).reshape(-1))
    volume = torch.zeros(shape_zyx, dtype=dtype, device=device)
    for k, slabs in padded.items():
        volume += slabs[:, 1:-1, 1:-1].permute(INVERSE[k])
    return volume
