"""Image-quality metrics, defined once (R2-Gaussian's definitions, ANCHORS.md section 1).

* PSNR3D: ``10 log10(data_range^2 / MSE)`` over the whole volume, the
  prediction not clipped. Volumes are normalised to [0, 1] first, so
  ``data_range = 1``.
* SSIM: 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2
  with L = ``data_range`` passed explicitly (NAF/SAX-NeRF leave it implicit,
  which inflates their SSIM), valid-region mean (as scikit-image's crop).
* SSIM3D: the mean of per-slice 2D SSIMs along each of the three axes
  (slices whose ground truth is all zero are skipped), averaged over the axes.

All functions take torch tensors (or numpy arrays), are differentiable, and
return 0-dim tensors (per-image tensors for `ssim2d`).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim as _msssim_ssim

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project

WINDOW = 11
SIGMA = 1.5


def _as_tensor(name: str, value: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        value = value.float()
    return value


def _pair(pred, gt, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    pred, gt = _as_tensor("pred", pred), _as_tensor("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.ndim != ndim:
        raise ValueError(f"pred: expected {ndim} dimensions, got shape {tuple(pred.shape)}")
    return pred, gt.to(dtype=pred.dtype, device=pred.device)


def psnr3d(pred, gt, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of a (Z, Y, X) volume against its ground truth (no clipping)."""
    pred, gt = _pair(pred, gt, 3)
    mse = torch.mean((pred - gt) ** 2)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim2d(pred, gt, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image of a (B, H, W) batch; returns (B,). Images need H, W >= 11."""
    pred, gt = _pair(pred, gt, 3)
    if min(pred.shape[-2:]) < WINDOW:
        raise ValueError(
            f"pred: images must be at least {WINDOW}x{WINDOW}, got {tuple(pred.shape)}"
        )
    return _msssim_ssim(
        pred.unsqueeze(1),
        gt.unsqueeze(1),
        data_range=data_range,
        size_average=False,
        win_size=WINDOW,
        win_sigma=SIGMA,
    )


def ssim3d_axes(pred, gt, data_range: float = 1.0) -> torch.Tensor:
    """(3,) mean slice SSIM along axes z, y, x of (Z, Y, X) volumes (all-zero gt slices skipped)."""
    pred, gt = _pair(pred, gt, 3)
    per_axis = []
    for axis in range(3):
        p = pred.movedim(axis, 0)
        g = gt.movedim(axis, 0)
        keep = g.flatten(1).amax(dim=1) > 0
        if not bool(keep.any()):
            raise ValueError("gt: every slice is zero; SSIM is undefined")
        per_axis.append(ssim2d(p[keep], g[keep], data_range).mean())
    return torch.stack(per_axis)


def ssim3d(pred, gt, data_range: float = 1.0) -> torch.Tensor:
    """SSIM3D of (Z, Y, X) volumes: mean over the three axes of the mean slice SSIM."""
    return ssim3d_axes(pred, gt, data_range).mean()


def normalise(volume: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Affine map of [low, high] to [0, 1] (no clipping), e.g. with the ground truth's range."""
    if not high > low:
        raise ValueError(f"high: must exceed low ({low}), got {high}")
    return (volume - low) / (high - low)


def truth_scores(volume: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM3D of a (Z, Y, X) `volume` against `truth`, both normalised by the truth's
    range (R2-Gaussian's protocol, data range 1)."""
    with torch.no_grad():
        gt = torch.as_tensor(truth).float().cpu()
        low, high = float(gt.min()), float(gt.max())
        pred = normalise(torch.as_tensor(volume).float().cpu(), low, high)
        gt = normalise(gt, low, high)
        return {"psnr": float(psnr3d(pred, gt)), "ssim": float(ssim3d(pred, gt))}


def scan_quality(
    volume: torch.Tensor,
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    truth: torch.Tensor | None = None,
) -> dict[str, float]:
    """The relative data residual ``||A x - p|| / ||p||`` of a (Z, Y, X) `volume` on the
    (N, V, U) measured `projections` of the scan `geo` and, when `truth` is given, its
    `truth_scores`."""
    with torch.no_grad():
        residual = project(volume.float(), geo) - projections
        metrics = {"data_residual": float(residual.norm() / projections.norm())}
    if truth is not None:
        metrics.update(truth_scores(volume, truth))
    return metrics
