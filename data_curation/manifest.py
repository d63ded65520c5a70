"""The dataset's manifest.json: what was curated from what, and how to tell a volume is done.

Layout of a dataset folder::

    manifest.json                       this file (written atomically after every volume)
    shards/<volume_id>/<job>.safetensors  one shard per reconstruction (docs/curation.md)

The manifest is a JSON object::

    {"format": "nr-curation", "version": 1,
     "config": CurationConfig.to_dict() (resolved standard iteration counts included),
     "volumes": {volume_id: entry, ...},      # finished volumes only
     "failed": [{"source", "error"}, ...],   # inputs that could not be curated
     "counts": {"volumes", "shards", "pairs", "failed"}}

An entry holds the source path and its sha256, the anatomy and prompt, the
shapes, the volume's seed, the dense geometry and one record per shard (file,
sha256, pairs, views, view_ids, subset, representation, iterations, ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nr.io._files import atomic_file

MANIFEST = "manifest.json"
FORMAT = "nr-curation"
VERSION = 1
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def new_manifest(config: dict[str, Any]) -> dict[str, Any]:
    """An empty manifest for the resolved `config` (a `CurationConfig.to_dict()`)."""
    return {"format": FORMAT, "version": VERSION, "config": config, "volumes": {},
            "failed": [], "counts": {"volumes": 0, "shards": 0, "pairs": 0, "failed": 0}}


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of the dataset at `root`, or None when there is none yet.

    Raises:
        ValueError: the file is not a manifest of this format and version.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a curated-dataset manifest (format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')!r}, "
                         f"this reader knows {VERSION}")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Recount and write the manifest atomically (temporary file + rename)."""
    volumes = manifest["volumes"].values()
    manifest["counts"] = {
        "volumes": len(manifest["volumes"]),
        "shards": sum(len(v["shards"]) for v in volumes),
        "pairs": sum(s["pairs"] for v in volumes for s in v["shards"]),
        "failed": len(manifest["failed"]),
    }
    path = Path(root) / MANIFEST
    with atomic_file(path, ".json") as temporary:
        temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                             encoding="utf-8")


def is_finished(root: Path, entry: dict[str, Any] | None, source_sha256: str) -> bool:
    """True when `entry` describes this very file and every shard exists with its recorded hash."""
    if entry is None or entry.get("source_sha256") != source_sha256:
        return False
    for shard in entry["shards"]:
        path = Path(root) / shard["file"]
        if not path.is_file() or file_sha256(path) != shard["sha256"]:
            return False
    return True
