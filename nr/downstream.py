"""A downstream check of reconstructions: a simple, stated segmentation scored with Dice and ASD.

Two structures, both by thresholds on the volume normalised with the ground
truth's range (so that the same thresholds apply to ground truth and
reconstructions), cleaned with connected components (scipy.ndimage):

* "dense": voxels above ``dense_threshold`` (bone, contrast, teeth), keeping
  connected components of at least ``min_voxels`` voxels;
* "air": voxels below ``air_threshold`` that are not connected to the volume's
  border (lungs, airways, sinuses: air inside the body), components of at
  least ``min_voxels``.

Dice and the average symmetric surface distance (mm) come from DeepMind's
``surface-distance`` library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import surface_distance
from scipy import ndimage


@dataclass(frozen=True)
class SegmentationConfig:
    """Thresholds (in the ground truth's normalised range [0, 1]) and the component filter."""

    dense_threshold: float = 0.6
    air_threshold: float = 0.15
    min_voxels: int = 50


def _large_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def segment(
    volume: np.ndarray, low: float, high: float, config: SegmentationConfig = SegmentationConfig()
) -> dict[str, np.ndarray]:
    """Masks {"dense", "air"} of a (Z, Y, X) volume normalised by (low, high)."""
    if volume.ndim != 3:
        raise ValueError(f"volume: expected (Z, Y, X), got shape {volume.shape}")
    if not high > low:
        raise ValueError(f"high: must exceed low ({low}), got {high}")
    normalised = (np.asarray(volume, dtype=np.float64) - low) / (high - low)
    dense = _large_components(normalised > config.dense_threshold, config.min_voxels)
    air = normalised < config.air_threshold
    labels, _ = ndimage.label(air)
    border = np.unique(
        np.concatenate(
            [labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]
        )
    )
    inner_air = air & ~np.isin(labels, border[border > 0])
    return {"dense": dense, "air": _large_components(inner_air, config.min_voxels)}


def score(
    mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Dice and average symmetric surface distance (mm; NaN when a mask is empty; Dice NaN
    too when both are: the structure is absent)."""
    in_gt, in_pred = bool(mask_gt.any()), bool(mask_pred.any())
    if not in_gt and not in_pred:
        # surface-distance returns its removed np.NaN alias here, which raises under NumPy 2.
        return {"dice": float("nan"), "asd_mm": float("nan")}
    dice = float(surface_distance.compute_dice_coefficient(mask_gt, mask_pred))
    if not (in_gt and in_pred):
        return {"dice": dice, "asd_mm": float("nan")}
    distances = surface_distance.compute_surface_distances(mask_gt, mask_pred, spacing)
    gt_to_pred, pred_to_gt = surface_distance.compute_average_surface_distance(distances)
    return {"dice": dice, "asd_mm": float((gt_to_pred + pred_to_gt) / 2)}


def compare(
    volume_gt: np.ndarray,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    config: SegmentationConfig = SegmentationConfig(),
) -> dict[str, dict[str, float]]:
    """Segment ground truth and reconstruction the same way and score each structure."""
    low, high = float(volume_gt.min()), float(volume_gt.max())
    masks_gt = segment(volume_gt, low, high, config)
    masks = segment(volume, low, high, config)
    return {name: score(masks_gt[name], masks[name], spacing) for name in masks_gt}
