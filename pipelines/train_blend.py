"""Train a DiffusionBlend patch prior on CT volumes.

    python -m pipelines.train_blend --volumes FILES_OR_DIRS --out DIR
        [--hold-out NAME ...] [--preset compact] [--steps N] [--resolution R]
        [--batch B] [--lr LR] [--seed S] [--checkpoint-every N] [--resume]
        [--init-from MODEL_DIR]

Volumes: any file ``nr.io.read_volume`` reads (NIfTI, MHD/NRRD, NPY/NPZ with
key "volume"), or folders of them. A ``MANIFEST.json`` beside NPZ files (as in
the development volumes and their corpus) supplies their voxel spacing (``spacing_zyx_mm``
or ``spacing_mm``, z first); otherwise voxels are taken as isotropic. Outputs in DIR:
``model/`` (EMA weights for ``BlendPrior.from_pretrained``), ``checkpoint.pt`` (exact resume),
``train_config.json``, ``train_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from data_curation.splits import refuse_heldout
from nr.io import read_volume
from nr.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, NUMPY_SUFFIXES
from nr.priors.blend_model import PRESETS
from nr.priors.blend_train import BlendTrainConfig, prepare_volume, train_blend
from pipelines.common import CommandParser, run_command

SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES


def volume_files(items: list[str], hold_out: list[str]) -> list[Path]:
    """Files named by `items` (folders expanded, sorted), minus those whose stem is held out."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.name.lower().endswith(SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--volumes: {path} is neither a file nor a folder")
    refuse_heldout(files, "--volumes")
    stems = {f.name.split(".")[0] for f in files}
    unknown = [name for name in hold_out if name not in stems]
    if unknown:
        raise ValueError(f"--hold-out: {unknown} not among the volumes {sorted(stems)}")
    kept = [f for f in files if f.name.split(".")[0] not in hold_out]
    if not kept:
        raise ValueError("--volumes: no volume files left to train on")
    return kept


def manifest_spacing(path: Path) -> tuple[float, float, float] | None:
    """The (z, y, x) spacing in mm of `path` in a MANIFEST.json beside it, if any: an object
    of entries (the development volumes', ``spacing_zyx_mm``) or a list of them (the
    corpus's, ``spacing_mm``)."""
    manifest = path.parent / "MANIFEST.json"
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in entries.values() if isinstance(entries, dict) else entries:
        if isinstance(entry, dict) and entry.get("file") == path.name:
            spacing = entry.get("spacing_zyx_mm", entry.get("spacing_mm"))
            return tuple(float(v) for v in spacing) if spacing else None
    return None


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser("python -m pipelines.train_blend", __doc__)
    parser.add_argument("--volumes", nargs="+", required=True, help="volume files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--hold-out",
        nargs="*",
        default=[],
        metavar="NAME",
        help="file stems to exclude (the evaluation volume)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="compact")
    parser.add_argument("--resolution", type=int, help="in-plane size (default: the preset's)")
    defaults = BlendTrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt")
    parser.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        help="start from the weights of this prior (e.g. assets/diffusionblend) instead of "
        "random ones; its architecture must match --preset/--resolution",
    )
    args = parser.parse_args(argv)

    model_config = PRESETS[args.preset]
    if args.resolution is not None:
        model_config = dataclasses.replace(model_config, resolution=args.resolution)
    config = dataclasses.replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    files = volume_files(args.volumes, args.hold_out)
    volumes = []
    for path in files:
        volume = read_volume(path)
        if volume.spacing is None:
            volume = dataclasses.replace(volume, spacing=manifest_spacing(path))
        volumes.append(prepare_volume(volume, model_config.resolution, config.high_percentile))
        print(f"{path.name}: {volume.shape} -> {tuple(volumes[-1].shape)}", file=sys.stderr)
    record = {
        "model": model_config.to_dict(),
        "train": dataclasses.asdict(config),
        "volumes": [str(f) for f in files],
        "held_out": args.hold_out,
        "init_from": args.init_from,
    }
    train_blend(
        volumes,
        model_config,
        config,
        args.out,
        resume=args.resume,
        sources=[f.name for f in files],
        record=record,
        init_from=args.init_from,
    )


if __name__ == "__main__":
    run_command(main)
