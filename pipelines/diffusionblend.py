"""Reconstruct one scan with the DiffusionBlend prior (blended DDIM + cone-beam CG).

    python -m pipelines.diffusionblend [INPUT] --model DIR --views N --out DIR
        [--steps 50] [--eta 0.85] [--cg-iters 5] [--init noise|fdk|sart|asd_pocs] [--t0 500]
        [--samples K]

INPUT as in ``pipelines.recon``. DIR of --model is a folder written by
``python -m pipelines.train_blend`` (its ``model/``); default:
``assets/diffusionblend`` when shipped. The reconstruction grid's in-plane size
should equal the model's training resolution. Writes to --out: volume.nii.gz,
metrics.json (PSNR/SSIM when the ground truth is known, data residual, time,
network evaluations; the same for FDK and for a classical start), config.json,
montage.png and run.log.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nr.assets import assets_dir
from nr.priors.blend_model import BlendPrior
from nr.priors.blend_recon import INITS, BlendReconConfig, reconstruct_blend
from nr.priors.sampler import BlendSamplerConfig
from pipelines.common import (
    LOG,
    CommandParser,
    RunFolder,
    add_scan_arguments,
    caption,
    quality,
    resolve_scan,
    run_command,
)

ASSET = "diffusionblend"


def model_folder(path: Path | None) -> Path:
    """The --model folder, or the shipped asset; raises with the remedy when there is none."""
    if path is None:
        path = assets_dir() / ASSET
        if not path.is_dir():
            raise FileNotFoundError(
                f"no DiffusionBlend model shipped at {path}: train one with `python -m "
                f"pipelines.train_blend --volumes ... --out RUN` and pass --model RUN/model"
            )
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser("python -m pipelines.diffusionblend", __doc__)
    parser.add_argument("--model", type=Path, default=None, help="trained model folder")
    defaults, sampler_defaults = BlendReconConfig(), BlendSamplerConfig()
    parser.add_argument("--steps", type=int, default=sampler_defaults.steps)
    parser.add_argument("--eta", type=float, default=sampler_defaults.eta)
    parser.add_argument("--cg-iters", type=int, default=sampler_defaults.cg_iters)
    parser.add_argument(
        "--batch", type=int, default=sampler_defaults.batch_size, help="patches per network pass"
    )
    parser.add_argument("--init", choices=INITS, default=defaults.init)
    parser.add_argument(
        "--samples",
        type=int,
        default=defaults.samples,
        help="independent samples averaged, an estimate of the posterior mean (default "
        f"{defaults.samples}; K times the cost of one)",
    )
    parser.add_argument(
        "--t0", type=int, default=defaults.t0, help="start time of a reconstruction --init"
    )
    parser.add_argument(
        "--intensity-high",
        type=float,
        default=None,
        help="attenuation (1/mm) mapped to +1 (default: FDK's 99.9th percentile)",
    )
    add_scan_arguments(parser, default_views=25)
    args = parser.parse_args(argv)

    model = BlendPrior.from_pretrained(model_folder(args.model))
    config = BlendReconConfig(
        sampler=BlendSamplerConfig(
            steps=args.steps,
            eta=args.eta,
            cg_iters=args.cg_iters,
            batch_size=args.batch,
            progress=True,
        ),
        init=args.init,
        t0=args.t0,
        samples=args.samples,
        intensity_high=args.intensity_high,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    scan = resolve_scan(args.input, args.views, args.noise, args.seed, args.size)
    out = RunFolder(args.out)  # only once the inputs are known to be good: no partial output
    LOG.info(
        "scan: %d views, volume %s; model %s (resolution %d)",
        scan.geo.n_views,
        "x".join(map(str, scan.geo.n_voxel)),
        args.model or ASSET,
        model.config.resolution,
    )
    out.write_json(
        "config.json",
        {
            "method": "diffusionblend",
            "input": args.input,
            "views": args.views,
            "noise": args.noise,
            "seed": args.seed,
            "model": str(model_folder(args.model)),
            "model_config": model.config.to_dict(),
            "geometry": scan.geo.to_dict(),
            "scan": scan.metadata,
            "method_config": config,
        },
    )
    volume, info = reconstruct_blend(scan.projections, scan.geo, model, config)
    metrics = {
        "method": "diffusionblend",
        "views": scan.geo.n_views,
        **quality(volume, scan),
        **{k: v for k, v in info.items() if k not in ("fdk", "start")},
        "fdk": quality(info["fdk"], scan),
    }
    if info["start"] is not None:
        metrics["start"] = {"method": args.init, **quality(info["start"], scan)}
    LOG.info(
        "diffusionblend: %s in %.1f s (%d patch evaluations)",
        caption(metrics),
        info["seconds"],
        info["patch_evaluations"],
    )
    out.write_volume(volume, scan.geo)
    out.write_json("metrics.json", metrics)
    shown = {} if scan.volume_gt is None else {"ground truth": scan.volume_gt}
    shown["FDK"] = info["fdk"]
    captions = {"FDK": caption(metrics["fdk"]), "DiffusionBlend": caption(metrics)}
    if info["start"] is not None:
        shown[args.init] = info["start"]
        captions[args.init] = caption(metrics["start"])
    shown["DiffusionBlend"] = volume
    out.write_montage(shown, captions=captions)
    return metrics


if __name__ == "__main__":
    run_command(main)
