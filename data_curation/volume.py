"""Curation of one volume: the unit of work of every engine (local pool, Dask).

    entry = curate_volume(source, out_dir, config)

Steps: read (``nr.io.read_volume``), min-max normalise to [0, 1], resample to
``size^3``, simulate K dense noisy projections over 360 degrees, then for each
planned reconstruction (`data_curation.plan`): take the sparse subset, run the
underfit reconstructor, cut (artifact, clean) slice pairs along the chosen axes
and write one safetensors shard atomically. Returns the manifest entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from data_curation.config import AXES, FOREGROUND_LEVEL, CurationConfig
from data_curation.manifest import file_sha256
from data_curation.plan import Job, biplanar_views, plan_volume, volume_seed
from data_curation.reconstructors import get_reconstructor
from nr.geometry import ConeBeamGeometry
from nr.io import normalize_minmax, read_volume
from nr.io._files import atomic_file
from nr.io.resample import resample_cube
from nr.ops.noise import NoiseConfig, simulate_projections

SHARDS = "shards"


@dataclass(frozen=True)
class VolumeSource:
    """One input volume as the coordinator found it.

    Attributes:
        path: file or DICOM folder.
        volume_id: dataset-wide name: ``<file stem>-<first 8 hex of sha256>``.
        sha256: content hash of `path` (`file_sha256`).
        anatomy: for the prompt.
        key: NPZ array name (None: the reader's default).
    """

    path: str
    volume_id: str
    sha256: str
    anatomy: str
    key: str | None = None


def load_clean_volume(source: VolumeSource, config: CurationConfig) -> np.ndarray:
    """The (Z, Y, X) float32 ground truth in [0, 1]: read, normalised, resampled to size^3."""
    volume = normalize_minmax(read_volume(source.path, key=source.key))
    data = volume.data
    if config.size is not None and data.shape != (config.size,) * 3:
        data = np.clip(resample_cube(data, config.size), 0.0, 1.0)
    return np.ascontiguousarray(data)


def dense_geometry(shape: tuple[int, int, int], config: CurationConfig) -> ConeBeamGeometry:
    """K views over 360 degrees of a box `config.box_mm` long on its longest side."""
    voxel = config.box_mm / max(shape)
    return ConeBeamGeometry.for_volume(shape, (voxel,) * 3, config.dense_views)


def slice_pairs(
    artifact: np.ndarray, clean: np.ndarray, axis: str, min_foreground: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices along `axis` whose clean slice has enough foreground.

    Returns:
        artifact (S, H, W), clean (S, H, W) and their (S,) int32 slice indices.
    """
    along = AXES.index(axis)
    art = np.moveaxis(artifact, along, 0)
    ref = np.moveaxis(clean, along, 0)
    foreground = (ref > FOREGROUND_LEVEL).mean(axis=(1, 2))
    keep = np.flatnonzero(foreground >= min_foreground).astype(np.int32)
    return art[keep], ref[keep], keep


def _write_shard(path: Path, tensors: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    with atomic_file(path, ".safetensors") as temporary:
        save_file(tensors, str(temporary), metadata={"info": json.dumps(info, sort_keys=True)})


def _reconstruct_job(
    job: Job, dense: torch.Tensor, geo: ConeBeamGeometry, clean: np.ndarray,
    config: CurationConfig, out_dir: Path, volume_id: str,
) -> dict[str, Any]:
    ids = np.asarray(job.view_ids, dtype=np.int64)
    reconstructor = get_reconstructor(job.representation)
    states = reconstructor.states(dense[ids].contiguous(), geo.subset(ids), job.iterations,
                                  job.seed)
    biplanar = biplanar_views(geo.angles, ids)
    tensors: dict[str, np.ndarray] = {
        "biplanar": dense[biplanar].numpy().astype(np.float32),
        "biplanar_view_ids": biplanar,
        "view_ids": ids,
    }
    pairs_per_axis = {}
    for axis in config.axes:  # the states' pairs one after the other
        cut = [slice_pairs(volume.numpy(), clean, axis, config.min_foreground)
               for _, volume in states]
        art, ref, index = (np.concatenate(parts) for parts in zip(*cut, strict=True))
        tensors[f"artifact_{axis}"] = np.ascontiguousarray(art.astype(config.slice_dtype))
        tensors[f"clean_{axis}"] = np.ascontiguousarray(ref.astype(config.slice_dtype))
        tensors[f"index_{axis}"] = index
        tensors[f"iteration_{axis}"] = np.concatenate(
            [np.full(len(c[2]), it, dtype=np.int32) for (it, _), c in zip(states, cut, strict=True)]
        )
        pairs_per_axis[axis] = int(index.size)
    record = {
        "file": f"{SHARDS}/{volume_id}/{job.name}.safetensors",
        "views": job.views,
        "subset": job.subset,
        "view_ids": list(job.view_ids),
        "biplanar_view_ids": biplanar.tolist(),
        "biplanar_angles_deg": np.degrees(geo.angles[biplanar]).tolist(),
        "representation": job.representation,
        "iterations": job.iterations,
        "standard_iterations": job.standard_iterations,
        "iters_fraction": job.fraction,
        "state_iterations": [iteration for iteration, _ in states],
        "seed": job.seed,
        "pairs_per_axis": pairs_per_axis,
        "pairs": sum(pairs_per_axis.values()),
    }
    path = out_dir / record["file"]
    _write_shard(path, tensors, {"volume_id": volume_id, **record})
    record["sha256"] = file_sha256(path)
    return record


def curate_volume(source: VolumeSource, out_dir: str | Path, config: CurationConfig) -> dict:
    """Curate one volume into ``out_dir/shards/<volume_id>/`` and return its manifest entry.

    `config.standard_iterations` must name every representation (the
    coordinator resolves it, `data_curation.engine`). Torch runs on
    `config.threads` threads during the call.

    Raises:
        nr.io.FormatError, ValueError, OSError: unreadable or unusable volume.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        seed = volume_seed(config.seed, source.sha256)
        jobs = plan_volume(config, seed, config.standard_iterations)
        clean = load_clean_volume(source, config)
        geo = dense_geometry(clean.shape, config)
        noise = False if config.noise_i0 is None else NoiseConfig(i0=float(config.noise_i0))
        noise_seed = seed % (2**31 - 1)
        dense = simulate_projections(torch.from_numpy(clean), geo, noise=noise, seed=noise_seed)
        (out_dir / SHARDS / source.volume_id).mkdir(parents=True, exist_ok=True)
        shards = [
            _reconstruct_job(job, dense, geo, clean, config, out_dir, source.volume_id)
            for job in jobs
        ]
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "source": source.path,
        "source_sha256": source.sha256,
        "volume_id": source.volume_id,
        "anatomy": source.anatomy,
        "prompt": config.prompt_for(source.anatomy),
        "shape": list(clean.shape),
        "seed": seed,
        "noise_seed": noise_seed,
        "geometry": geo.to_dict(),
        "shards": shards,
        "pairs": sum(s["pairs"] for s in shards),
        "seconds": round(time.perf_counter() - started, 3),
    }
