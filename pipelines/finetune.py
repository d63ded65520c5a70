"""Fine-tune SliceFixer on a curated dataset (pipelines.curate), holding volumes out for validation.

    python -m pipelines.finetune --preset compact|sd-turbo --data DATASET --out DIR \\
        --val-volumes NAME[,NAME...] [--steps N] [--batch B] [--lr LR] [--resolution R] \\
        [--seed S] [--sd-turbo PATH --rad-dino PATH] [--resume] [--stop-at K]

    accelerate launch [--multi_gpu --num_processes 8 ...] -m pipelines.finetune ...   # many GPUs

Writes DIR/config.json, train.log, metrics.jsonl, samples/step-N.png, checkpoints/step-N/ and
DIR/final (load it with SliceFixer.from_pretrained). Unset options take the preset's defaults
(slicefixer.finetune.preset_defaults; docs/finetune.md gives them with their origin).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch

from data_curation import PairDataset
from data_curation.manifest import MANIFEST
from data_curation.splits import refuse_heldout
from pipelines.common import CommandParser, run_command
from slicefixer.finetune import FinetuneConfig, finetune, model_factory, preset_defaults

LOG = logging.getLogger("pipelines.finetune")
LOSS_TERMS = ("l2", "lpips", "clip", "gan", "ssim")


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser("python -m pipelines.finetune", __doc__)
    add = parser.add_argument
    add("--preset", choices=("compact", "sd-turbo", "tiny"), default="compact",
        help="model and recipe (tiny: a 0.1 M-parameter model for smoke tests)")
    add("--data", type=Path, required=True, help="curated dataset folder (holds manifest.json)")
    add("--out", type=Path, required=True, help="run folder")
    add("--val-volumes", type=_names, required=True,
        help="comma-separated volumes held out for validation (volume id, file stem or name)")
    add("--axes", type=_names, default=None, help="slice axes to use (default: all curated)")
    add("--sd-turbo", default=None, help="SD-Turbo folder or hub id (preset sd-turbo)")
    add("--rad-dino", default=None, help="RAD-DINO folder or hub id (preset sd-turbo)")
    add("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    for name, kind in (("steps", int), ("batch", int), ("lr", float), ("resolution", int),
                       ("seed", int), ("weight-decay", float), ("warmup-steps", int),
                       ("val-every", int), ("val-slices", int), ("samples", int),
                       ("checkpoint-every", int), ("keep-checkpoints", int), ("log-every", int),
                       ("stop-at", int), ("workers", int)):
        add(f"--{name}", type=kind, default=None, help="default: the preset's")
    add("--schedule", choices=("cosine", "constant"), default=None, help="default: the preset's")
    for term in LOSS_TERMS:
        add(f"--{term}", type=float, default=None, help=f"weight of the {term} loss term")
    add("--vgg-weights", default=None, help="torchvision VGG16 .pth for LPIPS (else LPIPS off)")
    add("--clip-weights", default=None, help="open_clip ViT-B-32 checkpoint (else CLIP off)")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The preset's defaults overridden by the options given."""
    config = preset_defaults(args.preset)
    loss = dataclasses.replace(
        config.loss, vgg_weights=args.vgg_weights, clip_weights=args.clip_weights,
        **{t: getattr(args, t) for t in LOSS_TERMS if getattr(args, t) is not None})
    names = ("steps", "batch", "lr", "resolution", "seed", "weight_decay", "warmup_steps",
             "val_every", "val_slices", "samples", "checkpoint_every", "keep_checkpoints",
             "log_every", "stop_at", "workers", "schedule")
    changes = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return dataclasses.replace(config, loss=loss, progress=not args.no_progress, **changes)


def load_pairs(data: Path, val_volumes: tuple[str, ...],
               axes: tuple[str, ...] | None) -> tuple[PairDataset, PairDataset]:
    """(training pairs without the held-out volumes, validation pairs of those volumes)."""
    if not (data / MANIFEST).is_file():
        raise FileNotFoundError(f"--data: {data} holds no curated dataset ({MANIFEST} missing); "
                                "make one with python -m pipelines.curate --out " + str(data))
    if not val_volumes:
        raise ValueError("--val-volumes: name at least one volume to hold out for validation")
    train = PairDataset(data, exclude=val_volumes, axes=axes)
    val = PairDataset(data, volumes=val_volumes, axes=axes)
    refuse_heldout([*train.volume_ids, *val.volume_ids], f"--data {data}")
    if len(train) == 0:
        raise ValueError(f"--val-volumes: holding out {list(val_volumes)} leaves no training "
                         "pairs")
    return train, val


def main(argv: list[str] | None = None) -> Path:
    """Run the command; returns the final model folder (or the last checkpoint with --stop-at)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        make_model = model_factory(args.preset, config.resolution, args.sd_turbo, args.rad_dino)
        train, val = load_pairs(args.data, args.val_volumes, args.axes)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("slicefixer").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    record = {
        "command": " ".join([os.path.basename(sys.executable), "-m", "pipelines.finetune",
                             *(argv if argv is not None else sys.argv[1:])]),
        "data": str(args.data.resolve()),
        "train_volumes": list(train.volume_ids),
        "val_volumes": list(val.volume_ids),
        "axes": list(train.axes),
        "threads": torch.get_num_threads(),
    }
    return finetune(make_model, train, val, config, args.out, resume=args.resume, record=record)


if __name__ == "__main__":
    run_command(main)
