"""Quality of the classical reconstructions at 25/50/75 views (noisy, TIGRE's noise model).

Two tables, same solvers and settings (`pipelines.recon.classical_method`):

1. the embedded head phantom and the development volumes, all at 64^3 with a 64^2 detector
   (`pipelines.benchmarks._cases`, as the DiffNR benchmark);
2. the embedded scan at its native 128^3 with a 128^2 detector.

Each volume is scanned over 360 degrees of a 256 mm box with I0 = 1e5 Poisson and Gaussian
(0, 10) noise, seed 0. PSNR/SSIM3D against the ground truth with data range 1. ``--quick``
runs both tables at 32^3 (FDK and CGLS, 25 views) to check the code path only.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from nr.assets import embedded_volume
from nr.io import Scan
from nr.ops.noise import simulate_projections
from pipelines.benchmarks._cases import geometry, volumes
from pipelines.common import quality
from pipelines.recon import classical_method

TITLE = "Classical reconstructions: quality"
METHODS = ("fdk", "sart", "ossart", "cgls", "asd_pocs")
QUICK_SIZE = 32


def _scan(volume: np.ndarray, views: int) -> Scan:
    geo = geometry(volume.shape[0], views)
    truth = torch.from_numpy(volume)
    return Scan(simulate_projections(truth, geo, noise=True, seed=0).float(), geo, truth)


def _table(cases: dict[str, np.ndarray], view_counts: tuple[int, ...], methods) -> str:
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
    return "\n".join(lines)


def run(quick: bool) -> str:
    view_counts = (25,) if quick else (25, 50, 75)
    methods = ("fdk", "cgls") if quick else METHODS
    small = QUICK_SIZE if quick else 64
    native = QUICK_SIZE if quick else embedded_volume().shape[0]
    sections = [
        "Cells: PSNR (dB) / SSIM3D / wall time.",
        f"### All volumes at {small}^3",
        _table(volumes(small), view_counts, methods),
        f"### The embedded scan at its native size ({native}^3"
        + (", quick run: resized)" if quick else ")"),
        _table(volumes(native, names=[]), view_counts, methods),
    ]
    return "\n\n".join(sections)
