"""Losses of the training loop (R2-Gaussian's, ANCHORS.md section 1).

All take torch tensors, are differentiable and return 0-dim tensors. Inputs are
expected in normalised units (see `nr.train`): projections divided by a
projection scale, volumes by a volume scale, so that the weights
(``lambda_dssim`` 0.25, ``lambda_tv`` 0.05) mean what they mean in R2-Gaussian.
"""

from __future__ import annotations

import torch

from nr.metrics import ssim2d, ssim3d

PROJECTION_LOSSES = ("l1", "mse")


def _same_shape(pred: torch.Tensor, target: torch.Tensor, ndim: int) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("pred, target: expected torch.Tensors")
    if pred.shape != target.shape or pred.ndim != ndim:
        raise ValueError(
            f"pred, target: expected equal {ndim}-D shapes, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def projection_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute ("l1") or squared ("mse") error of (N, V, U) projections."""
    _same_shape(pred, target, 3)
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "mse":
        return ((pred - target) ** 2).mean()
    raise ValueError(f"kind: expected one of {PROJECTION_LOSSES}, got {kind!r}")


def dssim_loss(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """``1 - mean SSIM`` of (N, V, U) projections (each at least 11 x 11 pixels)."""
    _same_shape(pred, target, 3)
    return 1.0 - ssim2d(pred, target, data_range=data_range).mean()


def tv3d_loss(volume: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a (Z, Y, X) volume (crop), divided by its voxel count.

    R2-Gaussian's ``tv_3d_loss(reduction="mean")``: the sums of the absolute
    forward differences along the three axes, over ``Z * Y * X``.
    """
    if not isinstance(volume, torch.Tensor) or volume.ndim != 3:
        raise ValueError(
            f"volume: expected a (Z, Y, X) tensor, got {getattr(volume, 'shape', volume)}"
        )
    total = sum(volume.diff(dim=axis).abs().sum() for axis in range(3))
    return total / volume.numel()


def ssim3d_loss(volume: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM3D`` of normalised (Z, Y, X) volumes (data range 1): DiffNR's reference term."""
    _same_shape(volume, reference, 3)
    return 1.0 - ssim3d(volume, reference, data_range=1.0)
