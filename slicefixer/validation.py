"""Validation of a SliceFixer during fine-tuning: slice PSNR/SSIM gains and sample grids.

Metrics are taken in the unit window space ([0, 1] = the model's intensity window), per slice at
the model's resolution, then averaged over slices: PSNR = 10 log10(1 / MSE) with data range 1,
SSIM = ``nr.metrics.ssim2d`` with data range 1. The baseline "artifact" is the artifact slice as
the model sees it (mapped into the window and clipped), so clipping alone never counts as a gain.
Groups: all slices, and per (representation, views) when the dataset's items carry them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from nr.io import atomic_file
from nr.metrics import ssim2d  # noqa: E402
from slicefixer.data import to_model_space, to_unit  # noqa: E402

METRICS = ("psnr_repaired", "ssim_repaired", "psnr_artifact", "ssim_artifact")


def slice_metrics(
    repaired: torch.Tensor, artifact: torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """repaired, artifact, clean: (B, 1, R, R) in [-1, 1] -> (B, 4) per-slice METRICS."""
    pred, base, ref = (to_unit(x[:, 0].float()) for x in (repaired, artifact, clean))
    columns = []
    for image in (pred, base):
        mse = ((image - ref) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        columns += [10.0 * torch.log10(1.0 / mse), ssim2d(image, ref, data_range=1.0)]
    return torch.stack([columns[0], columns[1], columns[2], columns[3]], dim=1)


def batch_metrics(
    model: Callable[..., torch.Tensor],
    batch: dict[str, Any],
    window: tuple[float, float],
    resolution: int,
    prompts: Callable[[Sequence[str]], list[str]],
) -> torch.Tensor:
    """(B, 4) per-slice METRICS of the model's repairs of a `collate_pairs` batch, its slices
    mapped through `window` to the model's `resolution`; `prompts` resolves the batch's."""
    images = to_model_space(batch["artifact"], window, resolution)
    target = to_model_space(batch["clean"], window, resolution)
    repaired = repair_batch(model, images, batch["biplanar"], prompts(batch["prompt"]))
    return slice_metrics(repaired, images, target)


def group_labels(batch: dict[str, Any]) -> list[str]:
    """'<representation>/<views> views' per item, or 'all' without that metadata."""
    if "representation" in batch and "views" in batch:
        return [
            f"{rep}/{views} views"
            for rep, views in zip(batch["representation"], batch["views"], strict=True)
        ]
    return ["all"] * len(batch["prompt"])


def summarise(values: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """values: (N, 4) per-slice METRICS, labels: N group names -> means, gains and counts."""

    def means(rows: torch.Tensor) -> dict[str, float]:
        result = {name: float(rows[:, i].mean()) for i, name in enumerate(METRICS)}
        result["psnr_gain"] = result["psnr_repaired"] - result["psnr_artifact"]
        result["ssim_gain"] = result["ssim_repaired"] - result["ssim_artifact"]
        result["slices"] = int(rows.shape[0])
        return result

    groups: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        groups[label].append(row)
    summary = means(values)
    if set(groups) != {"all"}:
        summary["groups"] = {label: means(values[rows]) for label, rows in sorted(groups.items())}
    return summary


def save_grid(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path: Path, title: str
) -> Path:
    """One row per sample: artifact | repaired | clean, (R, R) images in [-1, 1]; PNG, atomic."""
    figure, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        artifact, repaired, clean = (to_unit(x.float()).cpu() for x in images)
        ref = clean[None]
        for c, (name, image) in enumerate(
            (("artifact", artifact), ("repaired", repaired), ("clean", clean))
        ):
            axis = axes[r, c]
            axis.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if name != "clean":
                mse = float(((image - clean) ** 2).mean().clamp_min(1e-12))
                ssim = float(ssim2d(image[None], ref, data_range=1.0)[0])
                name = f"{name}\n{10 * torch.log10(torch.tensor(1 / mse)):.2f} dB, {ssim:.3f}"
            axis.set_title(name, fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, ".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
    return path


@torch.no_grad()
def repair_batch(
    model: Callable[..., torch.Tensor],
    images: torch.Tensor,
    xrays: torch.Tensor,
    prompts: Sequence[str],
) -> torch.Tensor:
    """The model's repair of (B, 1, R, R) images in eval mode (training mode restored after)."""
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        return model(images, xrays, list(prompts))
    finally:
        model.train(was_training)
