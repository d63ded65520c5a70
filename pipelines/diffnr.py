"""DiffNR on one scan: a neural representation fitted with a diffusion prior's pseudo-references.

    python -m pipelines.diffnr [INPUT] [--nr gaussians|hashgrid] [--views N]
        [--prior slicefixer|diffusionblend|none] [--checkpoint DIR] [--compare] --out DIR

A thin layer over `nr.diffnr.run_diffnr`: the defaults for the scan's size and view count
come from `nr.diffnr.DiffNRConfig.default` (the run's log says which and why), options
override them. Without INPUT the embedded head phantom is scanned with 25 views.

Writes to DIR: volume.nii.gz (DiffNR; the NR's without a prior), nr_only.nii.gz with
--compare, metrics.json (PSNR/SSIM when the ground truth is known, data residual, timings,
every guard decision), montage.png, config.json, report.md, curves.png and run.log.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from nr.diffnr import PRIORS, DiffNRConfig, run_diffnr
from nr.guard import GuardConfig
from nr.train import plot_curves
from pipelines.common import (
    LOG,
    CommandParser,
    RunFolder,
    add_nr_arguments,
    add_scan_arguments,
    caption,
    check_fits,
    resolve_scan,
    run_command,
    slice_axes,
)
from slicefixer.prior import load_prior

# options that override a DiffNRConfig field of the same name when given
OVERRIDABLE = {f.name for f in dataclasses.fields(DiffNRConfig)} - {"nr", "prior", "guard"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser("python -m pipelines.diffnr", __doc__)
    add_scan_arguments(parser, default_views=25)
    add_nr_arguments(parser)
    add = parser.add_argument
    add("--nr", choices=["gaussians", "hashgrid"], default="gaussians", help="representation")
    add("--prior", choices=PRIORS, help="default: by the scan's size (docs/diffnr.md)")
    add("--checkpoint", help="prior weights folder (default: the one shipped in assets/)")
    add("--iterations", type=int, help="NR loop iterations (default: the recipe's)")
    add("--start", type=float, help="first prior call, as a fraction of the loop")
    add("--every", type=float, help="loop fraction between prior calls")
    add("--loss-every", type=int, help="iterations between 3D SSIM terms")
    add("--weight", type=float, help="lambda of 1 - SSIM3D(volume, reference)")
    add("--axes", type=slice_axes, help="SliceFixer: slicing axes, e.g. z or z,y,x")
    add("--crop", type=int, help="side of a random crop for the SSIM term (default: full)")
    add("--fixer-cg", type=int, help="SliceFixer: CGLS iterations on each repair")
    add("--blend-t0", type=int, help="DiffusionBlend: diffusion time the volume is noised to")
    add("--blend-samples", type=int, help="DiffusionBlend: draws averaged per reference")
    add(
        "--guard-fraction",
        type=float,
        help=f"guard: share of the views held out to judge each reference on "
        f"(default {GuardConfig.fraction})",
    )
    add(
        "--guard-release",
        type=float,
        help=f"guard: loop fraction after which the held-out views join the fit "
        f"(default {GuardConfig.release})",
    )
    add(
        "--guard-margin",
        type=float,
        help=f"guard: relative drop of the held-out residual a reference needs "
        f"(default {GuardConfig.margin})",
    )
    add(
        "--guard-warm-start",
        choices=("seeing", "blind"),
        help="guard: the warm start sees the held-out views or leaves them out too "
        "(default: by the scan's size and views, docs/diffnr.md)",
    )
    add("--compare", action="store_true", help="also fit the NR alone (same protocol and seed)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace, scan_geo) -> DiffNRConfig:
    """The size's defaults (`DiffNRConfig.default`) with the options given."""
    config = DiffNRConfig.default(scan_geo, args.nr, args.prior)
    given = {k: v for k, v in vars(args).items() if k in OVERRIDABLE and v is not None}
    guard = {
        "fraction": args.guard_fraction,
        "release": args.guard_release,
        "margin": args.guard_margin,
        "blind_warm_start": {"seeing": False, "blind": True}.get(args.guard_warm_start),
    }
    guard = {k: v for k, v in guard.items() if v is not None}
    if guard:  # without a prior the size's default may hold no views out: guard options do
        config = dataclasses.replace(
            config, guard=dataclasses.replace(config.guard or GuardConfig(), **guard)
        )
    return dataclasses.replace(config, **given)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.manual_seed(args.seed)
    scan = resolve_scan(args.input, args.views, args.noise, args.seed, args.size)
    config = config_from_args(args, scan.geo)
    check_fits(config.nr, scan.geo, config.recon_config(scan.geo))  # the prior's model aside
    prior = load_prior(config)
    out = RunFolder(args.out)  # only once the inputs are known to be good: no partial output
    LOG.info("scan: %d views, volume %s", scan.geo.n_views, "x".join(map(str, scan.geo.n_voxel)))
    out.write_json(
        "config.json",
        {
            "command": "pipelines.diffnr",
            "arguments": vars(args),
            "geometry": scan.geo.to_dict(),
            "scan": scan.metadata,
            "diffnr_config": config,
            "nr_config": config.recon_config(scan.geo),
        },
    )
    result = run_diffnr(scan, config, prior, out_dir=out.path, compare=args.compare)
    metrics = result.metrics
    out.write_volume(result.volume, scan.geo)
    if prior is not None and result.nr_volume is not None:
        out.write_volume(result.nr_volume, scan.geo, "nr_only.nii.gz")
        plot_curves(result.histories["nr_only"], out.path / "curves_nr_only.png")
    plot_curves(result.histories["diffnr" if prior else "nr_only"], out.path / "curves.png")
    out.write_json("metrics.json", metrics)
    shown = {"ground truth": scan.volume_gt} if scan.volume_gt is not None else {}
    shown["FDK"] = result.fdk
    titles = {"FDK": "fdk", f"{config.nr} alone": "nr_only"}
    if result.nr_volume is not None:
        shown[f"{config.nr} alone"] = result.nr_volume
    if prior is not None:
        titles[f"DiffNR ({config.nr} + {config.prior})"] = "diffnr"
        shown[f"DiffNR ({config.nr} + {config.prior})"] = result.volume
    out.write_montage(
        shown,
        captions={t: caption(metrics[key]) for t, key in titles.items() if key in metrics},
    )
    (out.path / "report.md").write_text(report(metrics, args.input), encoding="utf-8")
    reconstructions = [k for k in ("fdk", "nr_only", "diffnr") if k in metrics]
    LOG.info(
        "done in %.0f s: %s",
        out.elapsed,
        ", ".join(f"{k} {caption(metrics[k])}" for k in reconstructions),
    )
    return metrics


def report(metrics: dict[str, Any], source: str | None) -> str:
    """A short human-readable summary of the run."""
    lines = [
        f"# DiffNR run: {metrics['nr']} + {metrics['prior']}, {metrics['views']} views",
        "",
        f"Input: {source or 'embedded head phantom (assets/head_phantom)'}",
        "",
        f"Defaults: {metrics['rationale']}",
        "",
    ]
    if metrics.get("prior_warning"):
        lines += [f"**Warning**: {metrics['prior_warning']}", ""]
    lines += [
        "| reconstruction | PSNR (dB) | SSIM | data residual | time (s) |",
        "|---|---|---|---|---|",
    ]
    for key in ("fdk", "nr_only", "diffnr"):
        if key in metrics:
            m, seconds = metrics[key], metrics["timings_seconds"][key]
            psnr = f"{m['psnr']:.2f}" if "psnr" in m else "-"
            ssim = f"{m['ssim']:.4f}" if "ssim" in m else "-"
            lines.append(f"| {key} | {psnr} | {ssim} | {m['data_residual']:.4f} | {seconds:.0f} |")
    if "difference" in metrics:
        d = metrics["difference"]
        lines += [
            "",
            f"DiffNR - NR alone: {d.get('psnr', float('nan')):+.2f} dB PSNR, "
            f"{d.get('ssim', float('nan')):+.4f} SSIM; time ratio {metrics['time_ratio']:.2f}.",
        ]
    calls = metrics.get("prior_calls", [])
    if calls:
        lines += ["", "Hallucination guard (held-out views):", ""]
        lines += [f"- {call['guard']['reason']}" for call in calls]
    scored = [c for c in calls if "reference_quality" in c]
    if scored:
        lines += [
            "",
            "Pseudo-references against the ground truth (PSNR dB / SSIM):",
            "",
            "| iteration | pseudo-reference | current volume |",
            "|---|---|---|",
        ]
        for c in scored:
            ref, cur = c["reference_quality"], c["current_quality"]
            lines.append(
                f"| {c['iteration']} | {ref['psnr']:.2f} / {ref['ssim']:.4f} "
                f"| {cur['psnr']:.2f} / {cur['ssim']:.4f} |"
            )
    lines += ["", "Files: volume.nii.gz, metrics.json, config.json, montage.png, curves.png."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_command(main)
