"""Multiresolution hash encoding (instant-NGP, as used by NAF) with a compiled CPU kernel.

    config = HashGridConfig()                  # NAF: 16 levels x 2 features, 2^19 rows, base 16
    encoding = HashGridEncoding(config)
    features = encoding(points)                # (N, 3) in [0, 1]^3 -> (N, 16 * 2)

Level ``l`` has ``R_l = floor(base_resolution * per_level_scale**l)`` cells per
axis, i.e. ``(R_l + 1)^3`` vertices, each holding ``features_per_level``
learned values. A level whose vertices fit in ``2**log2_hashmap_size`` rows is
stored densely (row ``ix + (R+1) (iy + (R+1) iz)``); finer levels share
``2**log2_hashmap_size`` rows through instant-NGP's spatial hash
``(ix * 1) xor (iy * 2654435761) xor (iz * 805459861)`` (uint32 arithmetic)
modulo the row count. A point's feature at a level is the trilinear
interpolation of the 8 vertices of its cell.

Points outside the unit cube are clamped to it (the encoding continues
constantly outside, and no gradient flows through the clamped coordinates);
a point on the upper border ``x == 1`` falls in the last cell with weight 1 on
its upper vertices.

Backends: ``"compiled"`` (``nr.fields._C``, C++/OpenMP, float32/float64 CPU
tensors; gradient with respect to the table only: points that require grad are
rejected), ``"torch"`` (`hash_encode_torch`, any device, differentiable with
respect to both), ``"auto"`` (compiled for CPU tensors when built).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nr._ext import require_compiled, use_compiled

PRIMES = (1, 2654435761, 805459861)
_UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashGridConfig:
    """Hash-grid layout. Defaults are NAF's (`config/*.yaml`, torch-ngp's encoder).

    Attributes:
        n_levels: number of resolution levels (NAF: 16).
        features_per_level: learned features per vertex (NAF: 2).
        log2_hashmap_size: rows per hashed level are ``2**log2_hashmap_size`` (NAF: 19).
        base_resolution: cells per axis of the coarsest level (NAF: 16).
        per_level_scale: growth of the resolution from one level to the next
            (NAF hard-codes 2, which makes its finest level 16 * 2^15 cells: far
            finer than any scan, so fine levels only add hashed noise; a scan of
            n voxels is served by a finest resolution of about 2-4 n).
        init_scale: table entries start uniform in [-init_scale, init_scale]
            (instant-NGP: 1e-4).
    """

    n_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0
    init_scale: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("n_levels", "features_per_level", "log2_hashmap_size", "base_resolution"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.log2_hashmap_size > 30:
            raise ValueError(f"log2_hashmap_size: expected <= 30, got {self.log2_hashmap_size}")
        if not math.isfinite(self.per_level_scale) or self.per_level_scale < 1.0:
            raise ValueError(f"per_level_scale: expected a number >= 1, got {self.per_level_scale}")
        if not math.isfinite(self.init_scale) or self.init_scale < 0:
            raise ValueError(f"init_scale: expected a number >= 0, got {self.init_scale}")

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def resolutions(self) -> list[int]:
        """Cells per axis of each level."""
        return [
            int(math.floor(self.base_resolution * self.per_level_scale**level + 1e-9))
            for level in range(self.n_levels)
        ]

    def offsets(self) -> list[int]:
        """First table row of each level, plus the total row count at the end."""
        offsets = [0]
        for resolution in self.resolutions():
            offsets.append(offsets[-1] + min(2**self.log2_hashmap_size, (resolution + 1) ** 3))
        return offsets


def _vertex_rows(vertex: torch.Tensor, resolution: int, size: int) -> torch.Tensor:
    """(N, 3) int64 vertex indices (x, y, z) of one level -> (N,) rows within the level."""
    side = resolution + 1
    if side**3 <= size:
        return vertex[:, 0] + side * (vertex[:, 1] + side * vertex[:, 2])
    hashed = (vertex[:, 0] * PRIMES[0]) & _UINT32
    hashed = hashed ^ ((vertex[:, 1] * PRIMES[1]) & _UINT32)
    hashed = hashed ^ ((vertex[:, 2] * PRIMES[2]) & _UINT32)
    return hashed % size


def hash_encode_torch(
    points: torch.Tensor, table: torch.Tensor, config: HashGridConfig
) -> torch.Tensor:
    """The readable twin of the compiled kernel (any device, fully differentiable).

    Args:
        points: (N, 3) coordinates (x, y, z); clamped to [0, 1].
        table: (E, F) with E = ``config.offsets()[-1]``, F = ``config.features_per_level``.
        config: the layout.

    Returns:
        (N, L, F) interpolated features per level.
    """
    x = points.clamp(0.0, 1.0)
    offsets = config.offsets()
    # (8, 3): bit d of corner c selects the upper vertex along axis d
    corners = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], device=x.device)
    upper = corners.bool()
    levels = []
    for level, resolution in enumerate(config.resolutions()):
        position = x * resolution
        cell = position.floor().clamp(max=resolution - 1)
        frac = position - cell
        vertices = cell.long()[:, None, :] + corners  # (N, 8, 3)
        w = torch.where(upper, frac[:, None, :], 1.0 - frac[:, None, :])  # (N, 8, 3)
        weights = w[..., 0] * w[..., 1] * w[..., 2]  # (N, 8)
        size = offsets[level + 1] - offsets[level]
        rows = _vertex_rows(vertices.reshape(-1, 3), resolution, size).reshape(-1, 8)
        level_table = table[offsets[level] : offsets[level + 1]]
        levels.append((weights[..., None] * level_table[rows]).sum(dim=1))  # (N, F)
    return torch.stack(levels, dim=1)


class _CompiledHashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, table, offsets, resolutions):
        ctx.save_for_backward(points, offsets, resolutions)
        ctx.n_rows = table.shape[0]
        out = require_compiled("fields").hash_encode_forward(points, table, offsets, resolutions)
        return out.permute(1, 0, 2)  # the kernel's level-major (L, N, F) as (N, L, F)

    @staticmethod
    def backward(ctx, grad_out):
        points, offsets, resolutions = ctx.saved_tensors
        grad_table = require_compiled("fields").hash_encode_backward(
            grad_out.permute(1, 0, 2).contiguous(), points, offsets, resolutions, ctx.n_rows
        )
        return None, grad_table, None, None


def hash_encode(
    points: torch.Tensor, table: torch.Tensor, config: HashGridConfig, backend: str = "auto"
) -> torch.Tensor:
    """Multiresolution hash encoding of points in the unit cube.

    Args:
        points: (N, 3) float (x, y, z), finite; clamped to [0, 1]^3.
        table: (E, F) float of the same dtype, E = ``config.offsets()[-1]``,
            F = ``config.features_per_level``.
        config: the level layout.
        backend: "auto", "compiled" (CPU; gradient w.r.t. `table` only) or "torch".

    Returns:
        (N, L, F) features; differentiable with respect to `table` (and to
        `points` on the torch backend).
    """
    if not isinstance(points, torch.Tensor) or not isinstance(table, torch.Tensor):
        raise TypeError("points and table: expected torch.Tensors")
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape (N, 3), got {tuple(points.shape)}")
    expected = (config.offsets()[-1], config.features_per_level)
    if tuple(table.shape) != expected:
        raise ValueError(f"table: expected shape {expected}, got {tuple(table.shape)}")
    if not table.is_floating_point() or points.dtype != table.dtype:
        raise TypeError(
            f"points, table: expected one float dtype, got {points.dtype}, {table.dtype}"
        )
    if points.device != table.device:
        raise ValueError(f"points, table: on different devices ({points.device}, {table.device})")
    if not torch.isfinite(points).all():
        raise ValueError("points: expected finite coordinates")
    if not use_compiled("fields", backend, points, table):
        return hash_encode_torch(points, table, config)
    if points.requires_grad:
        raise ValueError(
            "points: the compiled kernel gives no gradient w.r.t. points; detach them or use "
            "backend='torch'"
        )
    offsets = torch.tensor(config.offsets(), dtype=torch.int64)
    resolutions = torch.tensor(config.resolutions(), dtype=torch.int64)
    return _CompiledHashEncode.apply(points.contiguous(), table, offsets, resolutions)


class HashGridEncoding(nn.Module):
    """The learned table of a `HashGridConfig`; ``forward((N, 3)) -> (N, L * F)``.

    Args:
        config: the layout.
        backend: "auto", "compiled" or "torch" (see `hash_encode`).
        generator: RNG for the uniform initialisation (for reproducible models).
    """

    def __init__(
        self,
        config: HashGridConfig = HashGridConfig(),
        backend: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        rows = config.offsets()[-1]
        table = torch.rand(rows, config.features_per_level, generator=generator)
        self.table = nn.Parameter((table * 2.0 - 1.0) * config.init_scale)

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return hash_encode(points, self.table, self.config, self.backend).flatten(1)
