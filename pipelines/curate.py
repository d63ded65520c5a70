"""Curate SliceFixer training pairs (underfit reconstruction slice, clean slice) from CT volumes.

    python -m pipelines.curate --volumes FILES_OR_DIR [...] --out DATASET \\
        [--views 25,50,75] [--iters-fraction 0.25:0.5] [--mix 1:1] [--workers N] \\
        [--size 128] [--axes z] [--seed S] [--manifest MANIFEST.json] [--scheduler tcp://host:port]

Writes DATASET/manifest.json, DATASET/shards/<volume>/*.safetensors and
DATASET/run.log; running again resumes (finished volumes are skipped). Exit
status 1 when some input could not be curated (listed under "failed" in the
manifest). docs/curation.md has the recipe, every option and the format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_curation import CurationConfig, available, curate
from data_curation.config import AXES, SLICE_DTYPES, SUBSET_KINDS
from data_curation.engine import find_volumes, resolve_config
from data_curation.splits import refuse_heldout
from pipelines.common import LOG, CommandParser, RunFolder, run_command, slice_axes


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from error


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ratio(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(":"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected weights like 1:1, got {text!r}") from error


def _range(text: str) -> tuple[float, float]:
    parts = _ratio(text)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}")
    return parts[0], parts[1]


def _override(text: str) -> tuple[str, int]:
    name, _, count = text.partition("=")
    try:
        return name, int(count)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected NAME=N, got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser("python -m pipelines.curate", __doc__)
    default = CurationConfig()
    add = parser.add_argument
    add("--volumes", nargs="+", required=True, type=Path,
        help="volume files (.nii/.nii.gz/.mhd/.mha/.nrrd/.npy/.npz) and folders of them "
        "(a folder without such files is read as one DICOM series)")
    add("--out", required=True, type=Path, help="dataset folder (created, or resumed)")
    add("--views", type=_ints, default=default.views,
        help="sparse view counts, comma-separated (default 25,50,75)")
    add("--dense-views", type=int, default=default.dense_views,
        help=f"K dense projections over 360 degrees (default {default.dense_views})")
    add("--subsets", type=_names, default=default.subsets,
        help=f"subset kinds from {','.join(SUBSET_KINDS)} (default both)")
    add("--representations", type=_names, default=default.representations,
        help=f"underfit reconstructors from {','.join(available())} "
        "(default hashgrid,gaussians)")
    add("--mix", type=_ratio, default=None,
        help="share of each representation, e.g. 1:1, one weight per representation "
        "(default: equal shares)")
    add("--iters-fraction", type=_range, default=default.iters_fraction,
        help="LOW:HIGH fraction of the standard iteration count (default 0.25:0.5)")
    add("--iterations", type=_override, action="append", default=[], metavar="NAME=N",
        help="override a representation's standard iteration count (repeatable)")
    add("--size", type=int, default=default.size,
        help="resample volumes to SIZE^3 (default 128; 0 keeps each volume's shape)")
    add("--box-mm", type=float, default=default.box_mm,
        help="scanned box along the longest axis, mm (default 256)")
    add("--noise-i0", type=float, default=default.noise_i0,
        help="TIGRE noise dose, photons per ray (default 1e5); 0 for noiseless projections")
    add("--axes", type=slice_axes, default=default.axes,
        help=f"slice axes from {','.join(AXES)}, comma-separated (default z)")
    add("--min-foreground", type=float, default=default.min_foreground,
        help="drop pairs whose clean slice has less than this fraction of pixels > 0.05 "
        "(default 0.05; 0 keeps all)")
    add("--dtype", choices=SLICE_DTYPES, default=default.slice_dtype,
        help="slice storage dtype (default float16)")
    add("--manifest", type=Path, nargs="+", default=None,
        help="data manifest(s) (JSON entries with 'file', 'anatomy' or 'body_part', 'key') "
        "giving each file's anatomy and NPZ key")
    add("--anatomy", default=default.anatomy,
        help="anatomy of files the data manifest does not list (default generic)")
    add("--prompt", default=default.prompt, help=f"prompt template (default {default.prompt!r})")
    add("--seed", type=int, default=default.seed, help="master seed (default 0)")
    add("--threads", type=int, default=default.threads,
        help="torch threads per volume job (default 1)")
    add("--workers", type=int, default=1,
        help="local worker processes (default 1; 0 runs in this process)")
    add("--scheduler", default=None,
        help="Dask scheduler address (tcp://host:port): run the volumes on that cluster")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    """The `CurationConfig` the command-line options describe."""
    return CurationConfig(
        views=args.views, dense_views=args.dense_views, subsets=args.subsets,
        representations=args.representations,
        mix=args.mix or (1.0,) * len(args.representations), iters_fraction=args.iters_fraction,
        standard_iterations=dict(args.iterations), size=args.size or None, box_mm=args.box_mm,
        noise_i0=args.noise_i0 or None, axes=args.axes, min_foreground=args.min_foreground,
        slice_dtype=args.dtype, anatomy=args.anatomy, prompt=args.prompt, seed=args.seed,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the command; returns the manifest."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(config_from_args(args))
        refuse_heldout(find_volumes(args.volumes), "--volumes")
    except (TypeError, ValueError, ImportError) as error:
        parser.error(str(error))
    RunFolder(args.out)
    manifest = curate(args.volumes, args.out, config, data_manifest=args.manifest,
                      workers=args.workers, scheduler=args.scheduler,
                      progress=not args.no_progress)
    counts = manifest["counts"]
    LOG.info("dataset %s: %d volumes, %d shards, %d pairs, %d failed", args.out,
             counts["volumes"], counts["shards"], counts["pairs"], counts["failed"])
    return manifest


if __name__ == "__main__":
    sys.exit(1 if run_command(main)["failed"] else 0)
