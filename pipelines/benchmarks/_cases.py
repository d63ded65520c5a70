"""The volumes benchmarks run on: the embedded scan and the development volumes.

Development volumes (the folder in the environment variable ``NR_BENCH_DATA``, by default
``shared/data`` beside the repository's folder) are prepared exactly as the curated SliceFixer data
(`data_curation.volume.load_clean_volume`): min-max normalised to [0, 1] and resampled to a
size^3 cube scanned in a 256 mm box, so that benchmark scans look like the training scans.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from data_curation.config import CurationConfig
from data_curation.volume import VolumeSource, dense_geometry, load_clean_volume
from nr.assets import embedded_volume
from nr.geometry import ConeBeamGeometry
from nr.io.resample import resample_cube

EMBEDDED = "embedded head phantom"


def data_dir() -> Path | None:
    """The development-volume folder, or None when it is absent."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    folder = Path(os.environ.get("NR_BENCH_DATA", default))
    return folder if (folder / "MANIFEST.json").is_file() else None


def volumes(size: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """{name: (size, size, size) float32 volume in [0, 1]}: the embedded scan first, then the
    development volumes (all, or those in `names`) when their folder exists. The development
    copy of the embedded scan (tigre_head_phantom) is skipped: it is the same volume."""
    cases = {EMBEDDED: resample_cube(embedded_volume(), size)}
    folder = data_dir()
    if folder is None:
        return cases
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    config = CurationConfig(views=(25,), size=size)
    for name, entry in manifest.items():
        if name == "tigre_head_phantom" or (names is not None and name not in names):
            continue
        source = VolumeSource(
            str(folder / entry["file"]), name, "", entry.get("anatomy", ""), entry.get("key")
        )
        cases[name] = load_clean_volume(source, config)
    return cases


def geometry(size: int, views: int) -> ConeBeamGeometry:
    """The scan of a benchmark volume: `views` angles over 360 degrees of a 256 mm box."""
    return dense_geometry((size,) * 3, CurationConfig(views=(views,), dense_views=views))


def split_volume(name: str, size: int) -> np.ndarray:
    """The (size, size, size) float32 volume in [0, 1] of the development volume `name` (a
    name of ``data_curation/splits.json``), from the development folder or its ``corpus``,
    prepared as `volumes` prepares them."""
    folder = data_dir()
    if folder is None:
        raise FileNotFoundError("the development volumes are absent (set NR_BENCH_DATA)")
    for path in (folder / f"{name}.npz", folder / "corpus" / f"{name}.npz"):
        if path.is_file():
            source = VolumeSource(str(path), name, "", "", None)
            return load_clean_volume(source, CurationConfig(views=(25,), size=size))
    raise FileNotFoundError(f"volume {name}: no {name}.npz in {folder} or its corpus")
