"""Partitions of a volume's z slices into k-slice patches (DiffusionBlend).

Two kinds, alternating step by step in the sampler:

* **jumping** (gap d, default k = 3, d = 3): blocks of k*d = 9 slices starting
  at b = 0, 9, 18, ...; block b holds the patches {b+m, b+m+3, b+m+6}, m = 0..2.
* **adjacent** (gap 1) with an offset s in {0, .., k-1}: patches [j, j+3) for
  j = s, s+3, s+6, ...; the s slices before the first patch form a head.

Each slice takes its epsilon from exactly one patch per step (no averaging).

Depths that are not multiples of 3 (adjacent) or 9 (jumping; it needs D >= 9): the incomplete
head or tail is covered by a full patch clamped inside the volume, i.e. the
patch [0, 3) for the head and [D-3, D) for the tail (adjacent), or the block
starting at D-9 (jumping). Such an edge patch overlaps its neighbour; the
overlapping slices are *owned* by the regular patch and only the new ones take
their epsilon from the edge patch ("overlapping but assigned once").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Patch:
    """k slice indices (increasing) with the gap between them and which of them it owns.

    Attributes:
        indices: z indices of the k slices, in order.
        owned: for each of the k slices, whether this patch assigns its epsilon.
        gap: slice gap (the model's conditioning).
    """

    indices: tuple[int, ...]
    owned: tuple[bool, ...]
    gap: int


def _check(depth: int, k: int, gap: int) -> None:
    for name, value in (("depth", depth), ("k", k), ("gap", gap)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if k < 1 or gap < 1:
        raise ValueError(f"k, gap: expected positive, got k={k}, gap={gap}")
    if depth < k:
        raise ValueError(f"depth: expected >= {k} slices for k={k} patches, got {depth}")


def _block(start: int, k: int, gap: int, first_new: int) -> list[Patch]:
    """The `gap` interleaved patches of the k*gap block at `start`, owning slices >= `first_new`."""
    patches = []
    for m in range(gap):
        indices = tuple(start + m + i * gap for i in range(k))
        patches.append(Patch(indices, tuple(i >= first_new for i in indices), gap))
    return patches


def jumping_partition(depth: int, k: int = 3, gap: int = 3) -> list[Patch]:
    """Blocks of k*gap slices, each split into `gap` patches of k slices `gap` apart.

    Args:
        depth: number of z slices D; at least k*gap (one full block).
        k: slices per patch.
        gap: slice gap inside a patch (> 1 for jumping; 1 gives the adjacent partition).

    Returns:
        The patches; every z in [0, D) is owned by exactly one.
    """
    _check(depth, k, gap)
    size = k * gap
    if depth < size:
        raise ValueError(
            f"depth: a jumping partition (k={k}, gap {gap}) needs >= {size} slices, "
            f"got {depth}; use jump_gap=1 (adjacent partitions only) for thinner "
            f"volumes"
        )
    patches: list[Patch] = []
    starts = list(range(0, depth - size + 1, size))
    for start in starts:
        patches += _block(start, k, gap, start)
    end = starts[-1] + size
    if end < depth:
        patches += _block(depth - size, k, gap, end)
    return [p for p in patches if any(p.owned)]


def adjacent_partition(depth: int, offset: int, k: int = 3) -> list[Patch]:
    """Patches [j, j+k) for j = offset, offset+k, ..., clamped at both ends.

    Args:
        depth: number of z slices D >= k.
        offset: s in [0, k): slices [0, s) form the head, covered by the patch
            [0, k) owning only them.
        k: slices per patch.

    Returns:
        The patches (gap 1); every z in [0, D) is owned by exactly one.
    """
    _check(depth, k, 1)
    if not isinstance(offset, int) or not 0 <= offset < k:
        raise ValueError(f"offset: expected an int in [0, {k}), got {offset!r}")
    patches: list[Patch] = []
    if offset:
        patches.append(Patch(tuple(range(k)), tuple(i < offset for i in range(k)), 1))
    j = offset
    while j + k <= depth:
        patches.append(Patch(tuple(range(j, j + k)), (True,) * k, 1))
        j += k
    if j < depth:
        indices = tuple(range(depth - k, depth))
        patches.append(Patch(indices, tuple(i >= j for i in indices), 1))
    return patches


def partition_for_step(
    step: int, depth: int, generator: torch.Generator, k: int = 3, jump_gap: int = 3
) -> list[Patch]:
    """The partition of sampler step `step` (0 = first): even steps jumping, odd steps adjacent.

    The release alternates starting with the jumping partition (its step 1,
    our step 0); the adjacent offset s is drawn uniformly from {0, .., k-1}
    with `generator` at each adjacent step. ``jump_gap == 1`` gives adjacent
    partitions at every step.
    """
    if step % 2 == 0 and jump_gap > 1:
        return jumping_partition(depth, k, jump_gap)
    offset = int(torch.randint(k, (1,), generator=generator))
    return adjacent_partition(depth, offset, k)


def ownership_counts(patches: list[Patch], depth: int) -> torch.Tensor:
    """(depth,) int64: how many patches own each slice (all ones for a valid partition)."""
    counts = torch.zeros(depth, dtype=torch.long)
    for patch in patches:
        for index, owned in zip(patch.indices, patch.owned, strict=True):
            counts[index] += int(owned)
    return counts
