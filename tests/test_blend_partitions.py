"""DiffusionBlend partitions: each slice owned exactly once, patch shapes, alternation."""

import pytest
import torch

from nr.priors.partitions import (
    adjacent_partition,
    jumping_partition,
    ownership_counts,
    partition_for_step,
)


@pytest.mark.parametrize("depth", [9, 10, 13, 17, 18, 26, 27, 64])
def test_jumping_partition_covers_each_slice_once(depth):
    patches = jumping_partition(depth)
    assert torch.equal(ownership_counts(patches, depth), torch.ones(depth, dtype=torch.long))
    for patch in patches:
        assert patch.gap == 3
        assert len(patch.indices) == 3
        assert all(0 <= i < depth for i in patch.indices)
        assert patch.indices[1] - patch.indices[0] == 3 and patch.indices[2] - patch.indices[1] == 3


def test_jumping_partition_is_blocks_of_nine():
    patches = jumping_partition(18)
    assert [p.indices for p in patches] == [
        (0, 3, 6),
        (1, 4, 7),
        (2, 5, 8),
        (9, 12, 15),
        (10, 13, 16),
        (11, 14, 17),
    ]
    assert all(all(p.owned) for p in patches)


def test_jumping_tail_block_is_clamped_and_assigned_once():
    patches = jumping_partition(11)
    tail = [p for p in patches if p.indices[0] >= 2 and p.indices != (2, 5, 8)]
    assert [p.indices for p in tail] == [(2 + m, 5 + m, 8 + m) for m in range(3) if m > 0]
    owned_tail = sorted(i for p in tail for i, o in zip(p.indices, p.owned, strict=True) if o)
    assert owned_tail == [9, 10]


@pytest.mark.parametrize("depth", [3, 4, 5, 9, 10, 11, 32])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_adjacent_partition_covers_each_slice_once(depth, offset):
    patches = adjacent_partition(depth, offset)
    assert torch.equal(ownership_counts(patches, depth), torch.ones(depth, dtype=torch.long))
    for patch in patches:
        assert patch.gap == 1
        assert list(patch.indices) == list(range(patch.indices[0], patch.indices[0] + 3))
        assert 0 <= patch.indices[0] and patch.indices[-1] < depth


def test_adjacent_partition_offset_shifts_patches():
    assert [p.indices for p in adjacent_partition(9, 0)] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    patches = adjacent_partition(9, 2)
    assert [p.indices for p in patches] == [(0, 1, 2), (2, 3, 4), (5, 6, 7), (6, 7, 8)]
    assert [p.owned for p in patches] == [
        (True, True, False),
        (True, True, True),
        (True, True, True),
        (False, False, True),
    ]


def test_partitions_alternate_jumping_and_random_offset_adjacent():
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for step in range(40):
        patches = partition_for_step(step, 20, generator)
        gaps = {p.gap for p in patches}
        assert gaps == ({3} if step % 2 == 0 else {1})
        assert torch.equal(ownership_counts(patches, 20), torch.ones(20, dtype=torch.long))
        if step % 2:
            offsets.add(patches[0].indices[0] if all(patches[0].owned) else sum(patches[0].owned))
    assert offsets == {0, 1, 2}


def test_adjacent_only_when_jump_gap_is_one():
    generator = torch.Generator().manual_seed(0)
    assert all(
        p.gap == 1 for s in range(4) for p in partition_for_step(s, 5, generator, jump_gap=1)
    )


def test_bad_partition_input_raises():
    with pytest.raises(ValueError, match="depth"):
        jumping_partition(8)
    with pytest.raises(ValueError, match="offset"):
        adjacent_partition(9, 3)
    with pytest.raises(TypeError, match="depth"):
        adjacent_partition(9.0, 0)
