"""The fixed split of the development volumes (``splits.json``) and its enforcement.

Held-out volumes judge every prior (``python -m pipelines.benchmark heldout``); no training,
validation or curation command may use them. Volumes are named by file stem (the file name
before its first dot) or, in a curated dataset, by ``<stem>-<hash8>`` volume ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPLITS_FILE = Path(__file__).with_name("splits.json")


@dataclass(frozen=True)
class Splits:
    """Volume names of each part of the split.

    Attributes:
        heldout: never trained, validated or tuned on; the held-out benchmark's volumes.
        validation: model selection.
        train: training.
    """

    heldout: tuple[str, ...]
    validation: tuple[str, ...]
    train: tuple[str, ...]


def load_splits(path: str | os.PathLike = SPLITS_FILE) -> Splits:
    """The split written in `path` (default: the repository's ``splits.json``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    splits = Splits(*(tuple(data[part]) for part in ("heldout", "validation", "train")))
    names = splits.heldout + splits.validation + splits.train
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a volume is named in two parts of the split")
    return splits


def volume_name(item: str | os.PathLike) -> str:
    """The split name of a path, file name, stem or ``<stem>-<hash8>`` volume id."""
    name = Path(item).name.split(".")[0]
    stem, _, suffix = name.rpartition("-")
    if stem and len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix):
        return stem
    return name


def refuse_heldout(items: Iterable[str | os.PathLike], what: str) -> None:
    """Raise ValueError naming the held-out volumes among `items` (paths or names).

    Args:
        items: the volumes a training or curation command was given.
        what: the option or file they came from, for the message.
    """
    heldout = set(load_splits().heldout)
    found = sorted({str(item) for item in items if volume_name(item) in heldout})
    if found:
        raise ValueError(
            f"{what}: {found} belong to the held-out split ({SPLITS_FILE}), on which no prior "
            "may be trained or validated (leave them out)"
        )
