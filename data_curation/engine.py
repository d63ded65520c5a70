"""Curation of many volumes: a local process pool, or a Dask cluster.

    manifest = curate(["data/"], "dataset", CurationConfig(), workers=2)
    manifest = curate(files, "dataset", config, scheduler="tcp://host:8786")

The coordinator (this process) hashes the inputs, skips finished volumes,
hands the others to the engine one volume per task, and records each result in
the manifest as it arrives (atomically), so a crash loses at most the volumes
in progress. Workers write their shards themselves: with Dask the output
folder must be on a file system every worker sees at the same path.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from data_curation.config import CurationConfig
from data_curation.manifest import (
    file_sha256,
    is_finished,
    new_manifest,
    read_manifest,
    write_manifest,
)
from data_curation.reconstructors import get_reconstructor
from data_curation.splits import refuse_heldout
from data_curation.volume import VolumeSource, curate_volume
from nr.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, NUMPY_SUFFIXES

LOG = logging.getLogger("nr.curation")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES


def find_volumes(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into volume paths (sorted, duplicates removed).

    A folder contributes its files with a volume suffix (.nii, .nii.gz, .mhd,
    .mha, .nrrd, .nhdr, .npy, .npz), or is itself a DICOM series when it holds
    none of those.
    """
    if isinstance(inputs, (str, os.PathLike)) or not inputs:
        raise ValueError(f"volumes: expected a non-empty list of paths, got {inputs!r}")
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.iterdir()
                           if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
            found.extend(files or [item])
        else:
            found.append(item)
    return list(dict.fromkeys(found))


# How often a pool worker checks that its coordinator is alive (`exit_with_parent`).
PARENT_POLL_SECONDS = 1.0


def read_data_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """File name -> {"anatomy", "key"} from a data manifest: a JSON object of entries (the
    development volumes' MANIFEST.json) or a list of them (the corpus's), each with "file",
    optional "anatomy" (or "body_part") and "key"."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"manifest: cannot read {path} as JSON ({error})") from error
    if isinstance(data, list):
        data = {str(i): entry for i, entry in enumerate(data)}
    if not isinstance(data, dict):
        raise ValueError(f"manifest: expected a JSON object or list of entries in {path}")
    table = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise ValueError(f"manifest: entry {name!r} of {path} has no 'file'")
        anatomy = entry.get("anatomy", entry.get("body_part"))
        table[entry["file"]] = {"anatomy": anatomy, "key": entry.get("key")}
    return table


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_config(config: CurationConfig) -> CurationConfig:
    """`config` with the standard iteration count of every representation filled in.

    Raises:
        ValueError, ImportError: an unknown or unusable representation (before any work starts).
    """
    standard = {name: get_reconstructor(name).standard_iterations
                for name in config.representations}
    standard.update({k: v for k, v in config.standard_iterations.items() if k in standard})
    return dataclasses.replace(config, standard_iterations=standard)


def exit_with_parent(parent: int) -> None:
    """Make this worker process exit when `parent` is gone: a coordinator killed by a signal
    (SIGTERM, SIGKILL) does not shut its pool down, and its orphaned workers would go on
    computing volumes nobody records. Run as the pool's initializer."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_local(
    sources: list[VolumeSource], out: Path, config: CurationConfig, workers: int
) -> Iterator[tuple[VolumeSource, dict | None, BaseException | None]]:
    if workers == 0:
        for source in sources:
            try:
                yield source, curate_volume(source, out, config), None
            except Exception as error:  # noqa: BLE001 - reported and recorded per volume
                yield source, None, error
        return
    # spawn: forking a process whose torch/OpenMP threads are running can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(curate_volume, s, str(out), config): s for s in sources}
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            yield futures[future], None if error else future.result(), error


def _run_dask(
    sources: list[VolumeSource], out: Path, config: CurationConfig, scheduler: Any
) -> Iterator[tuple[VolumeSource, dict | None, BaseException | None]]:
    try:
        from distributed import Client, as_completed
    except ImportError as error:
        raise ImportError("--scheduler needs Dask: pip install 'dask[distributed]' "
                          "(the toolkit's [cluster] extra)") from error
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        futures = {
            client.submit(curate_volume, s, str(out), config, key=f"curate-{s.volume_id}",
                          pure=False): s
            for s in sources
        }
        for future in as_completed(futures):
            error = future.exception()
            yield futures[future], None if error else future.result(), error
    finally:
        if own:
            client.close()


def curate(
    volumes: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: CurationConfig,
    *,
    data_manifest: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    workers: int = 1,
    scheduler: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Curate volumes into the dataset folder `out` (created or resumed).

    Args:
        volumes: files and folders (`find_volumes`).
        out: dataset folder.
        config: the recipe; must equal the one recorded when resuming.
        data_manifest: optional JSON file(s) giving each file's anatomy and NPZ key
            (`read_data_manifest`); others get ``config.anatomy``.
        workers: local processes (0: run in this process, for debugging).
        scheduler: Dask scheduler address ("tcp://host:8786") or a
            ``distributed.Client``; when given, Dask runs the volumes and
            `workers` is ignored.
        progress: show a tqdm bar over volumes.

    Returns:
        The manifest as written to ``out/manifest.json``.

    Raises:
        ValueError: `out` holds a dataset made with another config.
    """
    if not isinstance(config, CurationConfig):
        raise TypeError(f"config: expected a CurationConfig, got {type(config).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected an int >= 0, got {workers!r}")
    config = resolve_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = json.loads(json.dumps(config.to_dict()))
    manifest = read_manifest(out) or new_manifest(recipe)
    if manifest["config"] != recipe:
        raise ValueError(f"out: {out} holds a dataset curated with another configuration "
                         f"({out / 'manifest.json'}); choose a new --out or the same options")
    manifests = (
        [] if data_manifest is None
        else [data_manifest] if isinstance(data_manifest, (str, os.PathLike))
        else list(data_manifest)
    )
    table = {file: entry for path in manifests for file, entry in read_data_manifest(path).items()}
    paths = find_volumes(volumes)
    refuse_heldout(paths, "volumes")
    by_source = {}
    pending: list[VolumeSource] = []
    failed: list[dict[str, str]] = []
    for path in paths:
        try:
            sha = file_sha256(path)
        except OSError as error:
            LOG.error("%s: unreadable (%s); skipped", path, error)
            failed.append({"source": str(path), "error": f"{type(error).__name__}: {error}"})
            continue
        info = table.get(path.name, {})
        source = VolumeSource(str(path), f"{_stem(path)}-{sha[:8]}", sha,
                              info.get("anatomy") or config.anatomy, info.get("key"))
        if source.volume_id in by_source:
            LOG.warning("%s: same content as %s; curated once", path,
                        by_source[source.volume_id].path)
            continue
        by_source[source.volume_id] = source
        if is_finished(out, manifest["volumes"].get(source.volume_id), sha):
            LOG.info("%s: finished earlier (%s); skipped", path, source.volume_id)
        else:
            pending.append(source)
    manifest["failed"] = failed
    write_manifest(out, manifest)
    engine = (_run_local(pending, out, config, workers) if scheduler is None
              else _run_dask(pending, out, config, scheduler))
    with tqdm(total=len(pending), desc="curate", unit="volume", disable=not progress) as bar:
        for source, entry, error in engine:
            if error is not None:
                LOG.error("%s: failed (%s: %s); skipped", source.path,
                          type(error).__name__, error)
                manifest["failed"].append(
                    {"source": source.path, "error": f"{type(error).__name__}: {error}"})
            else:
                manifest["volumes"][source.volume_id] = entry
                LOG.info("%s: %d pairs in %d shards, %.1f s", source.volume_id,
                         entry["pairs"], len(entry["shards"]), entry["seconds"])
            write_manifest(out, manifest)
            bar.set_postfix_str(source.volume_id)
            bar.update()
    return manifest
