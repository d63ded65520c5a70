"""Files shipped in the repository's `assets/` folder (default scan, trained checkpoints).

The folder is found next to the installed source tree (editable install, the
default set-up) or where the environment variable ``NR_ASSETS`` points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def assets_dir() -> Path:
    """The assets folder; raises FileNotFoundError with the remedy when it is missing."""
    folder = Path(os.environ.get("NR_ASSETS", Path(__file__).resolve().parents[1] / "assets"))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"assets folder not found at {folder}: install the toolkit from its source tree "
            "(`pip install --no-build-isolation -e .`) or set NR_ASSETS to the assets folder"
        )
    return folder


def asset_path(*parts: str) -> Path:
    """Path of a shipped asset, e.g. ``asset_path("slicefixer-compact")``; must exist."""
    path = assets_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"asset {'/'.join(parts)!r} is missing from {assets_dir()}")
    return path


def embedded_volume() -> np.ndarray:
    """The embedded default scan: TIGRE's head phantom, (128, 128, 128) float32 in [0, 1]."""
    with np.load(asset_path("head_phantom", "volume.npz")) as data:
        return data["volume"].astype(np.float32)
