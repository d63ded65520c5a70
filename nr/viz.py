"""Pictures of volumes: montages of central slices along the three axes (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nr.io import atomic_file

AXES = ("axial (z)", "coronal (y)", "sagittal (x)")


def _numpy(volume) -> np.ndarray:
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volumes: expected (Z, Y, X) arrays, got shape {volume.shape}")
    return volume


def central_slices(volume) -> list[np.ndarray]:
    """The central axial, coronal and sagittal slices of a (Z, Y, X) volume.

    World +z (TIGRE's rotation axis; superior for patient volumes read by `nr.io`) points up
    in the coronal and sagittal views."""
    v = _numpy(volume)
    z, y, x = (n // 2 for n in v.shape)
    return [v[z], v[::-1, y, :], v[::-1, :, x]]


def save_montage(
    volumes: Mapping[str, object],
    path: str | Path,
    window: tuple[float, float] | None = None,
    captions: Mapping[str, str] | None = None,
) -> Path:
    """Write a PNG grid: one row per named (Z, Y, X) volume, columns axial/coronal/sagittal.

    Args:
        volumes: title -> volume; all share one grey window.
        path: output PNG (written atomically).
        window: (low, high) grey window; default the first volume's 0.5-99.5 percentiles.
        captions: optional title -> text shown under the row title (e.g. PSNR).
    """
    if not volumes:
        raise ValueError("volumes: expected at least one volume")
    arrays = {name: _numpy(v) for name, v in volumes.items()}
    if window is None:
        first = next(iter(arrays.values()))
        window = tuple(float(q) for q in np.percentile(first, [0.5, 99.5]))
        if window[1] <= window[0]:
            window = (float(first.min()), float(first.max()) + 1e-6)
    rows = len(arrays)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows + 0.3), squeeze=False)
    for row, (name, volume) in enumerate(arrays.items()):
        for col, image in enumerate(central_slices(volume)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(AXES[col], fontsize=9)
        label = name if not captions or name not in captions else f"{name}\n{captions[name]}"
        axes[row, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
