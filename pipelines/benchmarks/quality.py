"""Quality of the classical reconstructions at 25/50/75 views (noisy, TIGRE's noise model).

The embedded head phantom and the development volumes, all at 64^3 with a 64^2 detector
(`pipelines.benchmarks._cases`, as the DiffNR benchmark), each scanned over 360 degrees with
I0 = 1e5 Poisson and Gaussian (0, 10) noise, seed 0. PSNR/SSIM3D against the ground truth
with data range 1.
"""

from __future__ import annotations

import time

import torch

from nr.io import Scan
from nr.ops.noise import simulate_projections
from pipelines.benchmarks._cases import geometry, volumes
from pipelines.common import quality
from pipelines.recon import classical_method

TITLE = "Classical reconstructions: quality"
METHODS = ("fdk", "sart", "ossart", "cgls", "asd_pocs")


def _scan(volume, views: int) -> Scan:
    size = volume.shape[0]
    geo = geometry(size, views)
    truth = torch.from_numpy(volume)
    return Scan(simulate_projections(truth, geo, noise=True, seed=0).float(), geo, truth)


def run(quick: bool) -> str:
    view_counts = (25,) if quick else (25, 50, 75)
    methods = ("fdk", "cgls") if quick else METHODS
    cases = volumes(32 if quick else 64)
    lines = [
        "| volume | size | views | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for name, volume in cases.items():
        for views in view_counts:
            scan = _scan(volume, views)
            cells = []
            for method in methods:
                reconstruct, _ = classical_method(method, "ram_lak")
                started = time.perf_counter()
                result = reconstruct(scan)
                seconds = time.perf_counter() - started
                m = quality(result, scan)
                cells.append(f"{m['psnr']:.2f} / {m['ssim']:.3f} / {seconds:.0f} s")
            lines.append(f"| {name} | {volume.shape[0]}^3 | {views} | " + " | ".join(cells) + " |")
    return "Cells: PSNR (dB) / SSIM3D / wall time.\n\n" + "\n".join(lines)
