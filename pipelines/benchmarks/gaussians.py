"""R2-Gaussian benchmark: kernels against their torch twins, voxelizer memory, reconstructions.

    python -m pipelines.benchmark gaussians [--quick]

Sections: (1) forward+backward time of the compiled projection, rasterizer and voxelizer
against their pure-torch twins on the same inputs; (2) peak resident memory of a 256^3
voxelization of 200k Gaussians, measured in a fresh subprocess; (3) the default CPU
reconstruction (`GaussianReconConfig.default(shape=...)`) of a volume (the embedded scan unless
another is passed) from 25/50/75 noiseless cone-beam views: wall time, PSNR, SSIM; at 50 views
also the default hash grid, and how soon each reaches the hash grid's final PSNR.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time

import numpy as np
import torch

from nr.assets import embedded_volume
from nr.gaussians.projection import Cameras, precisions, project
from nr.gaussians.rasterize import rasterize
from nr.gaussians.voxelize import voxelize
from nr.geometry import ConeBeamGeometry
from nr.metrics import normalise, psnr3d, ssim3d
from nr.ops.fdk import fdk
from nr.ops.projector import project as project_volume
from nr.recon import GaussianReconConfig, reconstruct_gaussians, reconstruct_hashgrid
from pipelines.benchmarks.fields import hashgrid_config

TITLE = "R2-Gaussian"

MEMORY_SCRIPT = """
import json, sys, time, torch
from nr.gaussians.voxelize import voxelize

def peak_mb():  # VmHWM is per address space (unlike ru_maxrss, which survives fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

n, count = int(sys.argv[1]), int(sys.argv[2])
gen = torch.Generator().manual_seed(0)
means = (torch.rand(count, 3, generator=gen) - 0.5) * 240.0
scales = torch.rand(count, 3, generator=gen) * 3.0 + 0.5
prec = torch.zeros(count, 6)
prec[:, [0, 3, 5]] = scales ** -2
rho = torch.rand(count, generator=gen)
before = peak_mb()
start = time.perf_counter()
volume = voxelize(means, prec, rho, (-127.0, -127.0, -127.0), (256.0 / n,) * 3, (n, n, n))
seconds = time.perf_counter() - start
after = peak_mb()
print(json.dumps({"before_mb": before, "after_mb": after, "seconds": seconds,
                  "output_mb": volume.numel() * 4 / 2**20}))
"""


def _timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _kernel_table(quick: bool) -> str:
    geo = ConeBeamGeometry.default(n_voxel=32 if quick else 64, n_views=4)
    # The large projection size is that of the default 128^3 reconstruction (50k Gaussians).
    count, large = (500, 5000) if quick else (3000, 50_000)

    def gaussians(count):
        gen = torch.Generator().manual_seed(0)
        means = (torch.rand(count, 3, generator=gen) - 0.5) * 200.0
        scales = torch.rand(count, 3, generator=gen) * 6.0 + 1.0
        quats = torch.randn(count, 4, generator=gen)
        rho = torch.rand(count, generator=gen)
        return [t.requires_grad_() for t in (means, scales, quats, rho)]

    inputs, large_inputs = gaussians(count), gaussians(large)
    means, scales, quats, rho = inputs
    cams = Cameras.from_geometry(geo)
    height, width = (int(n) for n in geo.n_detector)
    side = int(geo.n_voxel[0])
    origin, spacing = geo.voxel_origin_xyz().tolist(), geo.voxel_size_xyz().tolist()

    def projection(backend, inputs=inputs):
        return lambda: sum(t.sum() for t in project(*inputs, cams, backend=backend)).backward()

    def large_projection(backend):
        return projection(backend, large_inputs)

    projected = [t.detach().requires_grad_() for t in project(*inputs, cams)]

    def raster(backend):
        return lambda: rasterize(*projected, height, width, backend=backend).sum().backward()

    prec = precisions(scales, quats).detach().requires_grad_()

    def voxel(backend):
        return lambda: (
            voxelize(means, prec, rho, origin, spacing, (side,) * 3, backend=backend)
            .sum()
            .backward()
        )

    rows = [
        "| kernel (forward + backward) | size | compiled | torch twin | speed-up |",
        "|---|---|---|---|---|",
    ]
    cases = [
        ("projection", f"{count} Gaussians x 4 views", projection),
        ("projection", f"{large:,} Gaussians x 4 views", large_projection),
        ("rasterizer", f"{count} Gaussians, 4 views of {height}x{width}", raster),
        ("voxelizer", f"{count} Gaussians, {side}^3 voxels", voxel),
    ]
    for name, size, make in cases:
        fast = _timed(make("compiled"), 3)
        slow = _timed(make("torch"), 1)
        rows.append(
            f"| {name} | {size} | {fast * 1e3:.1f} ms | {slow * 1e3:.1f} ms | {slow / fast:.1f}x |"
        )
    return "\n".join(rows)


def _memory_line(quick: bool) -> str:
    n, count = (128, 20_000) if quick else (256, 200_000)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(n), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return (
        f"Voxelization of {count:,} Gaussians (scales 0.5-3.5 mm) on {n}^3 voxels: "
        f"{report['seconds']:.2f} s; peak resident memory {report['after_mb']:.0f} MB "
        f"(process before the call: {report['before_mb']:.0f} MB; the output volume alone is "
        f"{report['output_mb']:.0f} MB). Binning memory is bounded by 2^24 (block, Gaussian) "
        "pairs per pass, independent of Gaussians x voxels."
    )


def _reconstructions(quick: bool, volume: np.ndarray) -> str:
    side = 32 if quick else volume.shape[0]
    gt = torch.as_tensor(volume, dtype=torch.float32)
    if side != gt.shape[0]:
        gt = torch.nn.functional.interpolate(gt[None, None], size=(side,) * 3, mode="area")[0, 0]
    # Mapped to [0, 1] (the embedded scan already is) so that the warm start's PSNR and the
    # loop's evaluations (taken in the ground truth's range) measure the same.
    gt = normalise(gt, float(gt.min()), float(gt.max()))
    rows = [
        "| views | iterations x views | Gaussians (initial, final) | wall time | FDK (dB) | "
        "warm start (dB) | fitted to it (dB) | PSNR (dB) | SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for views in (50,) if quick else (25, 50, 75):
        geo = ConeBeamGeometry.default(n_voxel=side, n_views=views)
        projections = project_volume(gt, geo)
        config = GaussianReconConfig.default(100 if quick else None, (side,) * 3, views)
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(
                config.train, progress=False, eval_every=config.train.iterations // 5
            ),
        )
        if quick:
            config = dataclasses.replace(
                config, warm_start=dataclasses.replace(config.warm_start, steps=10)
            )
        start = time.perf_counter()
        result, history = reconstruct_gaussians(projections, geo, config, volume_gt=gt)
        seconds = time.perf_counter() - start
        psnr, ssim = float(psnr3d(result, gt)), float(ssim3d(result, gt))
        fdk_psnr = float(psnr3d(fdk(projections, geo), gt))
        warm = [history["warm_start"].get(key) for key in ("start_psnr", "fitted_psnr")]
        warm = ["-" if value is None else f"{value:.2f}" for value in warm]
        rows.append(
            f"| {views} | {config.train.iterations} x {config.train.views_per_iteration} | "
            f"{config.init.n_points:,}, {history['gaussians']:,} | {seconds:.0f} s | "
            f"{fdk_psnr:.2f} | {warm[0]} | {warm[1]} | {psnr:.2f} | {ssim:.3f} |"
        )
        if views == 50:
            race = _race_to_the_hash_grid(projections, geo, gt, history, quick)
    return (
        f"Default CPU configuration (`GaussianReconConfig.default(shape=({side},) * 3, "
        "views=views)`), "
        f"{side}^3 volume, noiseless cone-beam views over 360 degrees, {side}^2 detector; "
        "the Gaussians are seeded from and fitted to a warm-start volume "
        f"({config.warm_start.method}, {config.warm_start.steps} fitting steps; its PSNR and "
        "that of the fitted Gaussians in their columns); time includes FDK, the warm start, "
        "initialisation and five evaluations against the ground truth; PSNR/SSIM of the "
        "unclipped volume against the ground truth (data range 1).\n\n"
        + "\n".join(rows)
        + "\n\n"
        + race
    )


def _race_to_the_hash_grid(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    gt: torch.Tensor,
    gaussians: dict,
    quick: bool,
) -> str:
    """How soon the Gaussians' run (`gaussians`, its history) and the default hash grid on the
    same views reach the hash grid's final PSNR (seconds from the call, at the first
    evaluation at or above it, the fitted warm start counting as one)."""
    config = hashgrid_config(quick)
    if not quick:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, eval_every=25))
    start = time.perf_counter()
    result, hashgrid = reconstruct_hashgrid(projections, geo, config, volume_gt=gt)
    seconds = time.perf_counter() - start
    target = float(psnr3d(result, gt))
    cells = []
    for history in (gaussians, hashgrid):
        reached = _time_to(history, target)
        cells.append("never" if reached is None else f"{reached:.0f} s")
    return (
        f"Time to the hash grid's final PSNR ({geo.n_views} views): the default hash grid "
        f"(`HashGridReconConfig()`, evaluated every {config.train.eval_every} iterations) ends at "
        f"{target:.2f} dB in {seconds:.0f} s. Seconds from the call to the first evaluation at "
        f"or above {target:.2f} dB (the fitted warm start counts as one): Gaussians "
        f"{cells[0]}, hash grid {cells[1]}."
    )


def _time_to(history: dict, target: float) -> float | None:
    """Seconds from a `reconstruct_*` call to its first evaluation at or above `target` dB."""
    setup = history["setup_seconds"]
    points = [(setup, history["warm_start"].get("fitted_psnr", -math.inf))]
    record = history["eval"]
    points += [(setup + s, p) for s, p in zip(record["seconds"], record["psnr"], strict=True)]
    return next((seconds for seconds, psnr in points if psnr >= target), None)


def run(quick: bool, volume: np.ndarray | None = None) -> str:
    """The Markdown body of the benchmark (`volume`: (Z, Y, X) in [0, 1], default embedded)."""
    volume = embedded_volume() if volume is None else np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume: expected a cubic (Z, Y, X) array, got shape {volume.shape}")
    return "\n\n".join(
        [
            "### Kernels against their torch twins\n\n" + _kernel_table(quick),
            "### Voxelizer memory\n\n" + _memory_line(quick),
            "### Reconstruction\n\n" + _reconstructions(quick, volume),
        ]
    )
