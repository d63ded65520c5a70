"""Reading a curated dataset: `PairDataset`, a torch Dataset of (artifact, clean) slice pairs.

    train = PairDataset("dataset", exclude=["vtk_headsq_ct_u16"])    # hold one volume out
    val = PairDataset("dataset", volumes=["vtk_headsq_ct_u16"])
    item = train[0]   # {"artifact": (1, H, W), "clean": (1, H, W), "biplanar": (2, V, U), ...}

Volumes are named by their ``volume_id`` ("<stem>-<hash8>"), their file stem
("<stem>") or their source file name. Slices are read lazily from the
safetensors shards (only the requested row is read from disk).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from data_curation.manifest import file_sha256, read_manifest


def _names(entry: dict[str, Any]) -> set[str]:
    """The names a volume answers to: its id, its file stem and its file name."""
    volume_id = entry["volume_id"]
    return {volume_id, volume_id.rsplit("-", 1)[0], Path(entry["source"]).name}


class PairDataset(torch.utils.data.Dataset):
    """(artifact, clean) slice pairs with their biplanar projections, prompt and provenance.

    Args:
        root: dataset folder (holding manifest.json).
        volumes: names of the volumes to use (None: all); unknown names are an error.
        exclude: names of volumes to hold out (e.g. for validation).
        axes: slice axes to use (None: all curated ones).
        representations: reconstructors to use (None: all).
        verify: check every shard's sha256 against the manifest first.

    Items are dicts:
        artifact: (1, H, W) float32 slice of the underfit reconstruction.
        clean: (1, H, W) float32 slice of the ground truth, in [0, 1].
        biplanar: (2, V, U) float32 projections nearest 0 and 90 degrees.
        prompt: the text prompt.
        volume_id, representation, subset, axis: str; views, iterations, index: int.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        volumes: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        axes: Sequence[str] | None = None,
        representations: Sequence[str] | None = None,
        verify: bool = False,
    ) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise FileNotFoundError(f"root: no manifest.json in {self.root}")
        entries = list(manifest["volumes"].values())
        known = set().union(*(_names(e) for e in entries)) if entries else set()
        for name, given in (("volumes", volumes or ()), ("exclude", exclude)):
            if isinstance(given, str):
                raise TypeError(f"{name}: expected a sequence of names, got the string {given!r}")
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{name}: unknown volumes {unknown}; the dataset has "
                                 f"{sorted(e['volume_id'] for e in entries)}")
        chosen = [e for e in entries
                  if (volumes is None or _names(e) & set(volumes)) and not _names(e) & set(exclude)]
        curated_axes = manifest["config"]["axes"]
        if axes is not None and not set(axes) <= set(curated_axes):
            raise ValueError(f"axes: expected a subset of the curated axes {curated_axes}, "
                             f"got {list(axes)}")
        self.axes = tuple(curated_axes if axes is None else axes)
        self.volume_ids = tuple(sorted(e["volume_id"] for e in chosen))
        self._shards: list[dict[str, Any]] = []
        self._index: list[tuple[int, str, int]] = []
        for entry in sorted(chosen, key=lambda e: e["volume_id"]):
            for shard in entry["shards"]:
                if representations is not None and shard["representation"] not in representations:
                    continue
                path = self.root / shard["file"]
                if verify and (not path.is_file() or file_sha256(path) != shard["sha256"]):
                    raise ValueError(f"root: shard {path} is missing or does not match its "
                                     "manifest hash")
                number = len(self._shards)
                self._shards.append({**shard, "path": str(path), "prompt": entry["prompt"],
                                     "volume_id": entry["volume_id"]})
                for axis in self.axes:
                    self._index.extend((number, axis, row)
                                       for row in range(shard["pairs_per_axis"][axis]))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not -len(self) <= item < len(self):
            raise IndexError(f"item: expected an index in [0, {len(self)}), got {item}")
        number, axis, row = self._index[item]
        shard = self._shards[number]
        with safe_open(shard["path"], framework="numpy") as handle:
            artifact = handle.get_slice(f"artifact_{axis}")[row : row + 1]
            clean = handle.get_slice(f"clean_{axis}")[row : row + 1]
            index = int(handle.get_slice(f"index_{axis}")[row : row + 1][0])
            iteration = (  # the row's state; datasets curated before states: the shard's
                int(handle.get_slice(f"iteration_{axis}")[row : row + 1][0])
                if f"iteration_{axis}" in handle.keys()
                else shard["iterations"]
            )
            biplanar = handle.get_tensor("biplanar")
        return {
            "artifact": torch.from_numpy(np.asarray(artifact, dtype=np.float32)),
            "clean": torch.from_numpy(np.asarray(clean, dtype=np.float32)),
            "biplanar": torch.from_numpy(biplanar),
            "prompt": shard["prompt"],
            "volume_id": shard["volume_id"],
            "representation": shard["representation"],
            "subset": shard["subset"],
            "views": shard["views"],
            "iterations": iteration,
            "axis": axis,
            "index": index,
        }
