import numpy as np
import pytest

from nr.downstream import SegmentationConfig, compare, segment


def _phantom():
    z, y, x = np.mgrid[:32, :32, :32] - 15.5
    body = (z**2 + y**2 + x**2 < 14**2) * 0.5
    bone = (np.abs(np.sqrt(z**2 + y**2 + x**2) - 12) < 1.5) * 0.5
    lung = (z**2 + (y - 3) ** 2 + x**2) < 5**2
    volume = body + bone
    volume[lung] = 0.0
    return volume


def test_segment_finds_dense_shell_and_inner_air():
    masks = segment(_phantom(), 0.0, 1.0)
    assert masks["dense"].sum() > 1000
    air = masks["air"]
    assert air[15, 18, 15] and not air[0, 0, 0]  # the lung is kept, outside air is not


def test_identical_volumes_score_perfectly_and_shifted_ones_do_not():
    gt = _phantom()
    same = compare(gt, gt, (1.0, 1.0, 1.0))
    assert same["dense"]["dice"] == pytest.approx(1.0) and same["dense"]["asd_mm"] == 0.0
    shifted = compare(gt, np.roll(gt, 2, axis=2), (1.0, 1.0, 1.0))
    assert shifted["air"]["dice"] < 0.9 and shifted["air"]["asd_mm"] > 0.5


def test_a_structure_absent_from_both_volumes_scores_nan():
    no_bone = _phantom() * (_phantom() < 0.6)
    no_bone[15, 15, 15] = 1.0  # the only dense voxel: a component below min_voxels
    scores = compare(no_bone, no_bone, (1.0, 1.0, 1.0))
    assert np.isnan(scores["dense"]["dice"]) and np.isnan(scores["dense"]["asd_mm"])
    assert scores["air"]["dice"] == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="high"):
        segment(_phantom(), 1.0, 1.0)
    with pytest.raises(ValueError, match="volume"):
        segment(np.zeros((4, 4)), 0.0, 1.0, SegmentationConfig())
