"""DiffNR against the NR alone on the validation volumes, with a downstream check.

The volumes of ``data_curation/splits.json`` "validation" (model selection and tuning happen
here; the held-out volumes judge, `pipelines.benchmarks.heldout`), prepared as the curated
training data at 64^3 in a 256 mm box with TIGRE's noise, at 10 and 25 views, for both
representations and both priors with `nr.diffnr.DiffNRConfig.default`'s settings
(``run_diffnr(..., compare=True)``: the NR alone under the same protocol and seed). The
segmentation of `nr.downstream` scores both reconstructions against the ground truth.
``--quick``: 24^3, 8 views, the Gaussians with 8 iterations (a smoke run).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from data_curation.splits import load_splits
from nr.diffnr import PRIORS, DiffNRConfig, run_diffnr
from nr.downstream import compare
from nr.io import Scan
from nr.ops.noise import simulate_projections
from pipelines.benchmarks._cases import geometry, split_volume
from slicefixer.prior import load_prior

TITLE = "DiffNR vs the NR alone on the validation volumes"


def _row(name: str, views: int, config: DiffNRConfig, truth: np.ndarray, m: dict) -> str:
    geo = geometry(truth.shape[0], views)
    segmented = {
        key: compare(truth, volume, geo.d_voxel)
        for key, volume in (("nr_only", m["nr_only_volume"]), ("diffnr", m["diffnr_volume"]))
    }
    a, b, d, t = m["nr_only"], m["diffnr"], m["difference"], m["timings_seconds"]
    accepted = sum(g["action"] == "accept" for g in m["guard"])
    dense = [segmented[k]["dense"] for k in ("nr_only", "diffnr")]
    air = [segmented[k]["air"] for k in ("nr_only", "diffnr")]
    return (
        f"| {name} | {views} | {config.nr} + {config.prior} | {a['psnr']:.2f} / {a['ssim']:.4f} "
        f"| {b['psnr']:.2f} / {b['ssim']:.4f} | {d['psnr']:+.2f} | {d['ssim']:+.4f} "
        f"| {t['nr_only']:.0f} / {t['diffnr']:.0f} | {accepted}/{len(m['guard'])} "
        f"| {dense[0]['dice']:.3f} / {dense[1]['dice']:.3f} "
        f"| {air[0]['dice']:.3f} / {air[1]['dice']:.3f} |"
    )


def run(quick: bool) -> str:
    size, views_list = (24, (8,)) if quick else (64, (10, 25))
    representations = ("gaussians",) if quick else ("gaussians", "hashgrid")
    lines = [
        "| volume | views | DiffNR | NR alone PSNR / SSIM | DiffNR PSNR / SSIM | dPSNR | dSSIM "
        "| time NR / DiffNR (s) | accepted | Dice dense NR / DiffNR | Dice air NR / DiffNR |",
        "|" + "---|" * 11,
    ]
    for name in load_splits().validation:
        truth = split_volume(name, size)
        for views in views_list:
            geo = geometry(size, views)
            volume = torch.from_numpy(truth)
            projections = simulate_projections(volume, geo, noise=True, seed=0).float()
            scan = Scan(projections, geo, volume)
            for nr in representations:
                for prior in PRIORS[:-1]:
                    config = DiffNRConfig.default(geo, nr, prior)
                    if quick:
                        config = dataclasses.replace(config, iterations=8, loss_every=2)
                    started = time.perf_counter()
                    result = run_diffnr(scan, config, load_prior(config), compare=True)
                    print(f"{name} {views} {nr} {prior}: {time.perf_counter() - started:.0f} s")
                    metrics = dict(
                        result.metrics,
                        nr_only_volume=result.nr_volume.numpy(),
                        diffnr_volume=result.volume.numpy(),
                    )
                    lines.append(_row(name, views, config, truth, metrics))
    note = (
        f"Validation volumes at {size}^3, noisy projections (I0 1e5), seed 0, the shipped "
        "priors with `DiffNRConfig.default`'s settings. Segmentation (`nr.downstream`): "
        "dense = normalised value > 0.6, air = < 0.15 inside the body, components >= 50 "
        "voxels; Dice from DeepMind's surface-distance."
    )
    return note + "\n\n" + "\n".join(lines)
