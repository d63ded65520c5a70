"""Voxelization of 3D Gaussians on a box of voxels: compiled CPU kernel and torch twin.

Voxel value ``V(x) = sum_g rho_g exp(-1/2 d^T P_g d)`` with ``d = x - mean_g`` (world mm)
and ``P_g`` the precision (inverse covariance), summed only where ``d^T P_g d <= cutoff^2``.
The box is any regular grid: the whole volume of a geometry or a crop of it (3D TV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nr._ext import require_compiled, use_compiled
from nr.gaussians.rasterize import bounded_chunk, check_gaussian_tensors

TWIN_BLOCK = 1 << 22  # (voxel, Gaussian) pairs per step of the brute-force twin (bounds memory)


def _floats(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected 3 numbers (x, y, z), got {value!r}") from error
    if len(out) != 3 or not all(math.isfinite(x) for x in out):
        raise ValueError(f"{name}: expected 3 finite numbers (x, y, z), got {value!r}")
    return out


def _check(
    means: torch.Tensor,
    precisions: torch.Tensor,
    densities: torch.Tensor,
    origin: Sequence[float],
    spacing: Sequence[float],
    shape: Sequence[int],
    cutoff: float,
) -> tuple:
    tensors = (("means", means, 3), ("precisions", precisions, 6), ("densities", densities, None))
    check_gaussian_tensors(tensors, "G", cutoff)
    origin, spacing = _floats("origin", origin), _floats("spacing", spacing)
    if min(spacing) <= 0:
        raise ValueError(f"spacing: expected positive voxel sizes, got {spacing}")
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape: expected 3 positive ints (Z, Y, X), got {shape!r}")
    return origin, spacing, shape


def voxelize_torch(
    means: torch.Tensor,
    precisions: torch.Tensor,
    densities: torch.Tensor,
    origin: Sequence[float],
    spacing: Sequence[float],
    shape: Sequence[int],
    cutoff: float = 3.0,
) -> torch.Tensor:
    """Readable pure-torch twin of the compiled voxelizer (any device; autograd).

    Brute force over voxels x Gaussians, in chunks of Gaussians; each chunk is recomputed in
    the backward pass (`bounded_chunk`), so memory stays bounded under autograd too.
    Arguments and result as `voxelize`.
    """
    origin, spacing, shape = _check(means, precisions, densities, origin, spacing, shape, cutoff)
    axes = [
        origin[i] + torch.arange(shape[2 - i], dtype=means.dtype, device=means.device) * spacing[i]
        for i in range(3)
    ]  # voxel centres along x, y, z
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    centres = torch.stack([x, y, z], dim=-1).reshape(-1, 1, 3)  # (M, 1, 3)
    volume = means.new_zeros(centres.shape[0])
    chunk = max(1, TWIN_BLOCK // centres.shape[0])
    for start in range(0, means.shape[0], chunk):
        part = slice(start, start + chunk)
        volume = volume + bounded_chunk(
            _chunk_density, centres, means[part], precisions[part], densities[part], cutoff
        )
    return volume.reshape(shape)


def _chunk_density(
    centres: torch.Tensor,
    means: torch.Tensor,
    precisions: torch.Tensor,
    densities: torch.Tensor,
    cutoff: float,
) -> torch.Tensor:
    """(M,) density of g Gaussians at M voxel centres (M, 1, 3); means (g, 3), precisions (g, 6)."""
    d = centres - means[None]  # (M, g, 3)
    xx, xy, xz, yy, yz, zz = (precisions[None, :, i] for i in range(6))
    dx, dy, dz = d.unbind(-1)
    power = (
        xx * dx * dx
        + yy * dy * dy
        + zz * dz * dz
        + 2 * (xy * dx * dy + xz * dx * dz + yz * dy * dz)
    )
    inside = power <= cutoff * cutoff
    weight = torch.where(inside, torch.exp(-0.5 * power), torch.zeros_like(power))
    return (weight * densities[None]).sum(dim=1)


class _Voxelize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, precisions, densities, origin, spacing, shape, cutoff):  # noqa: D102
        ctx.save_for_backward(means, precisions, densities)
        ctx.grid = (origin, spacing, cutoff)
        return require_compiled("gaussians").voxelize_forward(
            means, precisions, densities, list(origin), list(spacing), list(shape), cutoff
        )

    @staticmethod
    def backward(ctx, grad_volume):  # noqa: D102
        means, precisions, densities = ctx.saved_tensors
        origin, spacing, cutoff = ctx.grid
        grads = require_compiled("gaussians").voxelize_backward(
            means,
            precisions,
            densities,
            grad_volume.contiguous(),
            list(origin),
            list(spacing),
            cutoff,
        )
        return (*grads, None, None, None, None)


def voxelize(
    means: torch.Tensor,
    precisions: torch.Tensor,
    densities: torch.Tensor,
    origin: Sequence[float],
    spacing: Sequence[float],
    shape: Sequence[int],
    cutoff: float = 3.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum Gaussian densities on a regular box of voxels (differentiable).

    Args:
        means: (G, 3) centres (x, y, z), mm.
        precisions: (G, 6) inverse covariances [xx, xy, xz, yy, yz, zz], mm^-2.
        densities: (G,) peak densities; 0 skips the Gaussian.
        origin: (x, y, z) centre of voxel (0, 0, 0) of the box, mm.
        spacing: (x, y, z) voxel size, mm.
        shape: (Z, Y, X) voxels of the box.
        cutoff: Gaussians contribute where their Mahalanobis distance is <= cutoff.
        backend: "auto", "compiled" or "torch" (see `nr._ext.use_compiled`).

    Returns:
        (Z, Y, X) volume, dtype of the inputs.
    """
    origin, spacing, shape = _check(means, precisions, densities, origin, spacing, shape, cutoff)
    if use_compiled("gaussians", backend, means, precisions, densities):
        return _Voxelize.apply(means, precisions, densities, origin, spacing, shape, float(cutoff))
    return voxelize_torch(means, precisions, densities, origin, spacing, shape, cutoff)
