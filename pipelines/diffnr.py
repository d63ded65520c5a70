"""DiffNR on one scan: a neural representation fitted with periodic diffusion pseudo-references.

    python -m pipelines.diffnr [INPUT] [--nr gaussians|hashgrid] [--views N]
        [--prior slicefixer|diffusionblend|none] [--checkpoint DIR] [--compare] --out DIR

Without INPUT the embedded head phantom is scanned with 25 views. The default
prior is the compact SliceFixer shipped in assets/slicefixer-compact; a
fine-tuned one (compact or sd-turbo preset) is given with --checkpoint.

Writes to DIR: volume.nii.gz (DiffNR), metrics.json (PSNR/SSIM when the ground
truth is known, data residual, timings per stage, the hallucination guard's
decisions), montage.png (ground truth / FDK / NR alone / DiffNR), config.json,
report.md, curves.png and run.log. --compare also fits the NR alone with the
same settings and seed and reports the difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nr.assets import asset_path
from nr.guard import GuardConfig, GuardedHook, HallucinationGuard
from nr.io import Scan
from nr.ops.fdk import fdk
from nr.recon import LEARNING_RATES, GaussianReconConfig
from nr.train import plot_curves
from pipelines.common import (
    LOG,
    RunFolder,
    add_nr_arguments,
    add_scan_arguments,
    caption,
    nr_config,
    quality,
    reconstruct,
    resolve_scan,
    slice_axes,
    truth_scores,
)

PRIORS = ("slicefixer", "diffusionblend", "none")
DEFAULT_PRIOR = "slicefixer"  # unless `resolve_prior` turns it off


def hook_defaults(nr: str, prior: str) -> dict[str, float]:
    """Hook settings whose defaults depend on the representation (docs/diffnr.md, session 11).

    The Gaussians gain from lambda 3 with either prior and from CGLS on the SliceFixer's
    repairs. The hash grid's volumes are better than those references: it loses from both,
    and with the SliceFixer its periodic references compound, so it takes one reference.
    """
    gaussians = nr == "gaussians"
    return {
        "weight": 3.0 if gaussians else 1.0,
        "fixer_cg": 5 if gaussians else 0,
        "refresh": 1.0 if not gaussians and prior == "slicefixer" else 0.125,
    }


def loss_every_default(config: Any) -> int:
    """Iterations between 3D SSIM terms for the NR configuration `config`.

    10, as the DiffNR release, unless the loop's rates stay constant (the Gaussians' recipe
    above 64^3): there a term added every 10th iteration kicks Adam's moments and the fit
    does not recover within the run. With a prior that returns the current volume itself, the
    128^3 embedded fit ended at 30.52 dB with every 10 and 32.00 dB with every 1 (32.19 dB
    without a prior; docs/diffnr.md).
    """
    if isinstance(config, GaussianReconConfig) and all(
        getattr(config.model, name) == getattr(config.model, f"{name}_final")
        for name in LEARNING_RATES
    ):
        return 1
    return 10


def resolve_prior(args: argparse.Namespace, scan: Scan) -> str | None:
    """Settle ``args.prior`` when it was not given; returns the warning to record, if any.

    On slices larger than its resolution the shipped 64-pixel SliceFixer's repairs score below
    the fit they come from, and it pulled the 128^3 Gaussians down by 2.7 dB (docs/diffnr.md).
    So by default the prior is off there; ``--prior slicefixer`` forces it (with a warning).
    """
    if args.prior not in (None, DEFAULT_PRIOR):
        return None
    from slicefixer.checkpoint import read_header
    from slicefixer.repair import largest_slice_side

    folder = args.checkpoint or asset_path("slicefixer-compact")
    resolution = int(read_header(Path(folder))["config"]["resolution"])
    side = largest_slice_side(scan.geo.volume_shape, args.axes)
    if side <= resolution:
        args.prior = DEFAULT_PRIOR
        return None
    problem = (
        f"the SliceFixer ({folder}) works at {resolution} pixels and this scan's slices have "
        f"{side}: on slices larger than it was trained on its repairs score below the fit they "
        "come from (a 64-pixel fixer lowered a 128^3 fit by 2.7 dB, docs/diffnr.md)"
    )
    if args.prior is None:
        args.prior = "none"
        return (
            f"prior off: {problem}. Pass --prior slicefixer to use it anyway, or --size "
            f"{resolution}."
        )
    return f"--prior slicefixer given although {problem}"


def build_hook(args: argparse.Namespace, scan: Scan, iterations: int):
    """The prior's hook, scheduled from `--start`/`--refresh` (fractions of the run)."""
    start = max(1, round(args.start * iterations))
    refresh = max(1, round(args.refresh * iterations))
    if args.prior == "slicefixer":
        from slicefixer.hook import SliceFixerHook, SliceFixerHookConfig
        from slicefixer.model import SliceFixer

        model = SliceFixer.from_pretrained(args.checkpoint or asset_path("slicefixer-compact"))
        config = SliceFixerHookConfig(
            start=start,
            refresh=refresh,
            loss_every=args.loss_every,
            weight=args.weight,
            axes=args.axes,
            crop=args.crop,
            cg_iters=args.fixer_cg,
        )
        return SliceFixerHook(model, config), config
    from nr.priors.blend_hook import BlendHook, BlendHookConfig
    from nr.priors.blend_model import BlendPrior

    model = BlendPrior.from_pretrained(args.checkpoint or asset_path("diffusionblend"))
    given = {"t0": args.blend_t0, "samples": args.blend_samples}
    config = BlendHookConfig(
        every=refresh,
        start=start,
        loss_every=args.loss_every,
        weight=args.weight,
        crop=args.crop,
        seed=args.seed,
        **{name: value for name, value in given.items() if value is not None},
    )
    return BlendHook(model, config), config


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.diffnr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scan_arguments(parser, default_views=25)
    add_nr_arguments(parser)
    parser.add_argument(
        "--nr",
        choices=["gaussians", "hashgrid"],
        default="gaussians",
        help="neural representation (default gaussians)",
    )
    parser.add_argument(
        "--prior",
        choices=PRIORS,
        default=None,
        help="default: slicefixer, or none (with a warning) when the scan's slices are larger "
        "than the SliceFixer's resolution: a 64-pixel fixer lowered a 128^3 fit by 2.7 dB "
        "(docs/diffnr.md)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="prior checkpoint folder (default: the compact one in assets/)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="NR iterations (default: the representation's CPU default)",
    )
    parser.add_argument(
        "--start",
        type=float,
        default=0.5,
        help="first pseudo-reference, as a fraction of the run (default 0.5; 0.25 and 0.75 "
        "measured in docs/diffnr.md)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=None,
        help="iterations between pseudo-references, as a fraction of the run (default 0.125; "
        "1, a single reference, for the hash grid with the SliceFixer; docs/diffnr.md)",
    )
    parser.add_argument(
        "--loss-every",
        type=int,
        default=None,
        help="iterations between 3D SSIM terms (default: 10, as the DiffNR release; 1 for the "
        "Gaussians above 64^3, whose rates stay constant: docs/diffnr.md)",
    )
    parser.add_argument(
        "--weight",
        type=float,
        default=None,
        help="lambda of 1 - SSIM3D (default: 3 for the Gaussians, 1 for the hash grid; paper "
        "and release: 1)",
    )
    parser.add_argument(
        "--axes",
        type=slice_axes,
        default=("z",),
        help="slicing axes repaired and averaged, comma-separated: z (axial, the default) or "
        "z,y,x (removes the inter-slice stripes of axial-only repairs; docs/diffnr.md)",
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        help="side of a random crop for the SSIM term (default: full volume)",
    )
    parser.add_argument(
        "--fixer-cg",
        type=int,
        default=None,
        help="--prior slicefixer: CGLS iterations on the measured projections started from each "
        "repaired volume, before it becomes the pseudo-reference (default: 5 for the Gaussians, "
        "0 for the hash grid)",
    )
    parser.add_argument(
        "--blend-t0",
        type=int,
        default=None,
        help="--prior diffusionblend: diffusion time (of 1000) the current volume is noised to "
        "(default: BlendHookConfig.t0, 50)",
    )
    parser.add_argument(
        "--blend-samples",
        type=int,
        default=None,
        help="--prior diffusionblend: draws averaged into each pseudo-reference "
        "(default: BlendHookConfig.samples, 1)",
    )
    parser.add_argument(
        "--guard-fraction",
        type=float,
        default=GuardConfig.fraction,
        help="hallucination guard: share of the views held out of the fit to judge each "
        "pseudo-reference on (docs/diffnr.md)",
    )
    parser.add_argument(
        "--guard-release",
        type=float,
        default=GuardConfig.release,
        help="hallucination guard: fraction of the run after which the held-out views join "
        "the fit; the prior is called only before it",
    )
    parser.add_argument(
        "--guard-margin",
        type=float,
        default=GuardConfig.margin,
        help="hallucination guard: relative drop of the held-out residual a reference needs",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also fit the NR alone with identical settings and seed",
    )
    args = parser.parse_args(argv)
    for name, value in hook_defaults(args.nr, args.prior or DEFAULT_PRIOR).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = RunFolder(args.out)
    torch.manual_seed(args.seed)
    scan = resolve_scan(args.input, args.views, args.noise, args.seed, args.size)
    LOG.info("scan: %d views, volume %s", scan.geo.n_views, "x".join(map(str, scan.geo.n_voxel)))
    prior_warning = resolve_prior(args, scan)
    if prior_warning:
        LOG.warning(prior_warning)
    config = nr_config(
        args.nr,
        args.iterations,
        args.seed,
        args.warm_start,
        args.warm_start_steps,
        args.gaussian_rendering,
        scan.geo.volume_shape,
        scan.geo.n_views,
    )
    guard = HallucinationGuard(
        scan.projections,
        scan.geo,
        GuardConfig(args.guard_fraction, args.guard_release, args.guard_margin),
    )
    config = dataclasses.replace(
        config, train=guard.config.protocol(config.train, scan.geo.n_views)
    )
    iterations = config.train.iterations
    if args.loss_every is None:
        args.loss_every = loss_every_default(config)
    hook, hook_config = None, None
    if args.prior != "none":
        prior, hook_config = build_hook(args, scan, iterations)
        truth = scan.volume_gt
        score = None if truth is None else lambda volume: truth_scores(volume, truth)
        hook = GuardedHook(prior, guard, score)
    out.write_json(
        "config.json",
        {
            "command": "pipelines.diffnr",
            "arguments": vars(args),
            "geometry": scan.geo.to_dict(),
            "scan": scan.metadata,
            "nr_config": config,
            "prior_config": hook_config,
            "guard_config": guard.config,
        },
    )

    timings: dict[str, float] = {}
    results: dict[str, dict[str, float]] = {}
    shown: dict[str, torch.Tensor] = {}
    if scan.volume_gt is not None:
        shown["ground truth"] = scan.volume_gt
    started = time.perf_counter()
    shown["FDK"] = fdk(scan.projections, scan.geo)
    titles = {
        "FDK": "fdk",
        f"{args.nr} alone": "nr_only",
        f"DiffNR ({args.nr} + {args.prior})": "diffnr",
    }
    timings["fdk"] = time.perf_counter() - started
    results["fdk"] = quality(shown["FDK"], scan)

    if args.compare or hook is None:
        started = time.perf_counter()
        volume, history = reconstruct(args.nr, scan, config, out.path / "nr_only")
        timings["nr_only"] = time.perf_counter() - started
        results["nr_only"] = quality(volume, scan)
        shown[f"{args.nr} alone"] = volume
        # without a prior the NR alone is the run's result
        baseline = hook is not None
        out.write_volume(volume, scan.geo, "nr_only.nii.gz" if baseline else "volume.nii.gz")
        plot_curves(history, out.path / ("curves_nr_only.png" if baseline else "curves.png"))
    if hook is not None:
        started = time.perf_counter()
        volume, history = reconstruct(args.nr, scan, config, out.path / "diffnr", [hook])
        timings["diffnr"] = time.perf_counter() - started
        timings["diffnr_prior"] = sum(c["prior_seconds"] for c in hook.calls)
        timings["diffnr_guard"] = sum(c["guard_seconds"] for c in hook.calls)
        results["diffnr"] = quality(volume, scan)
        shown[f"DiffNR ({args.nr} + {args.prior})"] = volume
        out.write_volume(volume, scan.geo)
        plot_curves(history, out.path / "curves.png")

    metrics: dict[str, Any] = {
        "views": scan.geo.n_views,
        "nr": args.nr,
        "prior": args.prior,
        "prior_warning": prior_warning,
        **results,
        "timings_seconds": timings,
    }
    if hook is not None:
        metrics["guard"] = [c["guard"] for c in hook.calls]
        metrics["prior_calls"] = hook.calls
    if "diffnr" in results and "nr_only" in results:
        metrics["difference"] = {
            key: results["diffnr"][key] - results["nr_only"][key]
            for key in results["diffnr"]
            if key in results["nr_only"]
        }
        metrics["time_ratio"] = timings["diffnr"] / timings["nr_only"]
    out.write_json("metrics.json", metrics)
    out.write_montage(
        shown,
        captions={title: caption(results[key]) for title, key in titles.items() if key in results},
    )
    (out.path / "report.md").write_text(report(metrics, args), encoding="utf-8")
    LOG.info(
        "done in %.0f s: %s",
        out.elapsed,
        ", ".join(f"{k} {caption(v)}" for k, v in results.items()),
    )
    return metrics


def report(metrics: dict[str, Any], args: argparse.Namespace) -> str:
    """A short human-readable summary of the run."""
    lines = [
        f"# DiffNR run: {args.nr} + {args.prior}, {metrics['views']} views",
        "",
        f"Input: {args.input or 'embedded head phantom (assets/head_phantom)'}",
        "",
    ]
    if metrics.get("prior_warning"):
        lines += [f"**Warning**: {metrics['prior_warning']}", ""]
    lines += [
        "| reconstruction | PSNR (dB) | SSIM | data residual | time (s) |",
        "|---|---|---|---|---|",
    ]
    timing_keys = {"fdk": "fdk", "nr_only": "nr_only", "diffnr": "diffnr"}
    for key in ("fdk", "nr_only", "diffnr"):
        if key not in metrics:
            continue
        m = metrics[key]
        psnr = f"{m['psnr']:.2f}" if "psnr" in m else "-"
        ssim = f"{m['ssim']:.4f}" if "ssim" in m else "-"
        seconds = metrics["timings_seconds"].get(timing_keys[key], float("nan"))
        lines.append(f"| {key} | {psnr} | {ssim} | {m['data_residual']:.4f} | {seconds:.0f} |")
    if "difference" in metrics:
        d = metrics["difference"]
        lines += [
            "",
            f"DiffNR - NR alone: {d.get('psnr', float('nan')):+.2f} dB PSNR, "
            f"{d.get('ssim', float('nan')):+.4f} SSIM; time ratio "
            f"{metrics['time_ratio']:.2f}.",
        ]
    if metrics.get("guard"):
        lines += ["", "Hallucination guard:", ""]
        lines += [f"- {decision['reason']}" for decision in metrics["guard"]]
    scored = [c for c in metrics.get("prior_calls", []) if "reference_quality" in c]
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
    lines += [
        "",
        "Files: volume.nii.gz, metrics.json, config.json, montage.png, curves.png, run.log.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
