"""Reconstruct one scan with a classical or neural method.

    python -m pipelines.recon --method fdk|sart|ossart|cgls|asd_pocs|hashgrid|gaussians \\
        [INPUT] --views N --out DIR [--geometry FILE] [--center auto|none|PIXELS]

Measured projections (docs/formats.md, "Bringing your scanner's data") use all their views
unless --views is given; their rotation axis is estimated when the files do not give it.

Writes to DIR: volume.nii.gz, metrics.json (PSNR/SSIM when the ground truth is
known, data residual, time), config.json (the resolved configuration),
montage.png (ground truth if known and the reconstruction, three axes) and
run.log; neural methods also write curves.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nr.io import Scan
from nr.ops.fdk import FILTERS, fdk
from nr.ops.iterative import (
    ASDPOCSConfig,
    CGLSConfig,
    SARTConfig,
    asd_pocs,
    cgls,
    os_sart,
    sart,
)
from nr.recon import recipe, reconstruct
from nr.train import plot_curves
from pipelines.common import (
    LOG,
    CommandParser,
    RunFolder,
    add_measured_arguments,
    add_nr_arguments,
    add_scan_arguments,
    caption,
    check_fits,
    quality,
    resolve_scan,
    run_command,
)

CLASSICAL = ("fdk", "sart", "ossart", "cgls", "asd_pocs")
NEURAL = ("hashgrid", "gaussians")


def classical_method(name: str, filter_name: str) -> tuple[Callable[[Scan], torch.Tensor], object]:
    """The reconstruction function of a classical method and its (default) configuration."""
    if name == "fdk":
        return (lambda scan: fdk(scan.projections, scan.geo, filter_name)), {"filter": filter_name}
    if name == "sart":
        config = SARTConfig()
        return (lambda scan: sart(scan.projections, scan.geo, config)), config
    if name == "ossart":
        config = SARTConfig(block_size=10)
        return (lambda scan: os_sart(scan.projections, scan.geo, config)), config
    if name == "cgls":
        config = CGLSConfig()
        return (lambda scan: cgls(scan.projections, scan.geo, config)), config
    if name == "asd_pocs":
        config = ASDPOCSConfig()
        return (lambda scan: asd_pocs(scan.projections, scan.geo, config)), config
    raise ValueError(f"method: expected one of {CLASSICAL + NEURAL}, got {name!r}")


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser("python -m pipelines.recon", __doc__)
    parser.add_argument("--method", required=True, choices=CLASSICAL + NEURAL)
    parser.add_argument(
        "--filter",
        default="ram_lak",
        choices=FILTERS,
        help="FDK ramp-filter window (default ram_lak)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="neural methods: training iterations (default: the method's CPU "
        "default); checkpoints in DIR/training resume an interrupted run",
    )
    add_scan_arguments(parser, default_views=50)
    add_measured_arguments(parser)
    add_nr_arguments(parser)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    scan = resolve_scan(
        args.input,
        args.views,
        args.noise,
        args.seed,
        args.size,
        default_views=50,
        geometry=args.geometry,
        center=args.center,
    )
    history = None
    if args.method in CLASSICAL:
        run, config = classical_method(args.method, args.filter)
    else:
        config = recipe(
            args.method,
            scan.geo.volume_shape,
            scan.geo.n_views,
            iterations=args.iterations,
            seed=args.seed,
            warm_start=args.warm_start,
            warm_start_steps=args.warm_start_steps,
            gaussian_rendering=args.gaussian_rendering,
        )

        def run(scan: Scan) -> torch.Tensor:
            nonlocal history
            volume, history = reconstruct(
                scan.projections, scan.geo, config, scan.volume_gt, out.path / "training"
            )
            return volume

    check_fits(args.method, scan.geo, None if args.method == "fdk" else config)
    out = RunFolder(args.out)  # only once the inputs are known to be good: no partial output
    LOG.info(
        "scan: %d views of %s, volume %s",
        scan.geo.n_views,
        "x".join(map(str, scan.geo.n_detector)),
        "x".join(map(str, scan.geo.n_voxel)),
    )
    out.write_json(
        "config.json",
        {
            "method": args.method,
            "input": args.input,
            "views": args.views,
            "noise": args.noise,
            "seed": args.seed,
            "geometry": scan.geo.to_dict(),
            "scan": scan.metadata,
            "method_config": config,
        },
    )
    started = time.perf_counter()
    volume = run(scan)
    seconds = time.perf_counter() - started
    metrics = {
        "method": args.method,
        "views": scan.geo.n_views,
        **quality(volume, scan),
        "seconds": seconds,
    }
    if "center" in scan.metadata:
        metrics["center_offset_px"] = scan.metadata["center"]["offset_px"]
    LOG.info("%s: %s in %.1f s", args.method, caption(metrics), seconds)
    out.write_volume(volume, scan.geo)
    out.write_json("metrics.json", metrics)
    shown = {} if scan.volume_gt is None else {"ground truth": scan.volume_gt}
    shown[args.method] = volume
    out.write_montage(shown, captions={args.method: caption(metrics)})
    if history is not None:
        plot_curves(history, out.path / "curves.png")
    return metrics


if __name__ == "__main__":
    run_command(main)
