"""Hash-grid field: encoding kernel vs torch twin, ray vs voxel rendering, reconstruction quality.

    python -m pipelines.benchmark fields [--quick]
    python -m pipelines.benchmarks.fields --volume scan.npy [--quick]   # another (Z, Y, X) volume

The quality runs use the embedded scan (`nr.assets.embedded_volume`) unless a
volume is passed; they compare the default `reconstruct_hashgrid` with FDK, SART (20 sweeps)
and its warm-start volume (ASD-POCS) on the same projections, and report the hash grid's
wall time (FDK, warm start and evaluations included).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nr.fields import FieldConfig, HashGridConfig, HashGridField, hash_encode
from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d, ssim3d
from nr.ops.fdk import fdk
from nr.ops.iterative import SARTConfig, sart
from nr.ops.noise import simulate_projections
from nr.recon import HashGridReconConfig, reconstruct_hashgrid
from pipelines.benchmarks._timing import best_time

TITLE = "Hash-grid field"


def _encoding_speed(quick: bool) -> list[str]:
    n = 1 << (13 if quick else 18)
    config = HashGridConfig()
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(n, 3, generator=generator)
    table = torch.nn.Parameter(torch.rand(config.offsets()[-1], 2, generator=generator) - 0.5)
    geo = ConeBeamGeometry.default(n_voxel=8, n_views=1)
    lines = [
        f"### Encoding: forward + backward of 2^{n.bit_length() - 1} points (NAF layout: 16 levels"
        " x 2 features, 2^19 rows, base 16, scale 2)",
        "",
        "| what | compiled kernel (s) | torch twin (s) | speed-up |",
        "|---|---|---|---|",
    ]

    def encode(backend: str) -> None:
        out = hash_encode(points, table, config, backend)
        torch.autograd.grad(out, table, torch.ones_like(out))

    def field_pass(backend: str) -> Callable[[], None]:
        field = HashGridField(geo, FieldConfig(backend=backend))
        unit = points

        def run() -> None:
            field.zero_grad(set_to_none=True)
            field._density_unit(unit).sum().backward()

        return run

    for name, fast, slow in (
        ("hash encoding", lambda: encode("compiled"), lambda: encode("torch")),
        ("encoding + NAF MLP", field_pass("compiled"), field_pass("torch")),
    ):
        t_fast, t_slow = best_time(fast, 2), best_time(slow, 1 if quick else 2)
        lines.append(f"| {name} | {t_fast:.3f} | {t_slow:.3f} | {t_slow / t_fast:.1f}x |")
    return lines


def _rendering_speed(quick: bool) -> list[str]:
    n, views = (16, 2) if quick else (128, 10)
    geo = ConeBeamGeometry.default(n_voxel=n, n_views=50)
    ids = list(range(0, 50, 50 // views))[:views]
    lines = [
        f"### Rendering: forward + backward of {views} views of {n}^2 pixels, {n}^3 grid",
        "",
        "| renderer | field points | seconds | seconds per view |",
        "|---|---|---|---|",
    ]
    for rendering, label in (
        ("voxel", "(b) query the voxel grid, then project (Joseph)"),
        ("rays", "(a) NAF rays, 192 stratified samples"),
    ):
        field = HashGridField(geo, FieldConfig(rendering=rendering))
        points = n**3 if rendering == "voxel" else views * n * n * 192
        count = views if rendering == "voxel" else 1

        def run(field: HashGridField = field, count: int = count) -> None:
            field.zero_grad(set_to_none=True)
            field.render_projections(geo, ids[:count]).sum().backward()

        seconds = best_time(run, 1)
        # The ray renderer is timed on one view and scaled: its cost is linear in the views.
        seconds *= views / count
        lines.append(f"| {label} | {points:,} | {seconds:.2f} | {seconds / views:.2f} |")
    return lines


def _resize(volume: torch.Tensor, n: int) -> torch.Tensor:
    if volume.shape == (n, n, n):
        return volume
    return F.interpolate(volume[None, None], size=(n, n, n), mode="trilinear")[0, 0]


def hashgrid_config(quick: bool) -> HashGridReconConfig:
    """The benchmarks' hash grid: the default without a progress bar (--quick: 10 iterations
    evaluated every 5 and a 10-step warm-start fit)."""
    config = HashGridReconConfig()
    train = dataclasses.replace(config.train, progress=False)
    if not quick:
        return dataclasses.replace(config, train=train)
    return dataclasses.replace(
        config,
        train=dataclasses.replace(train, iterations=10, eval_every=5),
        warm_start=dataclasses.replace(config.warm_start, steps=10),
    )


def _quality(quick: bool, volume: torch.Tensor) -> list[str]:
    n = 24 if quick else int(volume.shape[0])
    volume = _resize(volume, n)
    cases = [(12, False)] if quick else [(50, False), (50, True), (25, False), (75, False)]
    sweeps = 2 if quick else 20
    config = hashgrid_config(quick)
    warm = config.warm_start.method
    lines = [
        f"### Quality on a {n}^3 scan (PSNR dB / SSIM3D against the ground truth, data range 1)",
        "",
        f"Hash grid: {config.train.iterations} iterations of {config.train.views_per_iteration} "
        f"views (TV on {config.train.tv_crop}^3 crops) after a warm start "
        f"({config.warm_start.steps} fitting steps on {config.warm_start.crop}^3 crops) on "
        f"{warm}; the warm start column is that classical volume's PSNR; the wall time "
        "includes FDK, the warm start and evaluations. Noise: TIGRE's CTnoise with I0 1e5, "
        "Gaussian (0, 10).",
        "",
        f"| views | noise | FDK | SART ({sweeps} sweeps) | warm start ({warm}) | hash grid | "
        "hash grid - FDK | hash grid wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n_views, noisy in cases:
        geo = ConeBeamGeometry.default(n_voxel=n, n_views=n_views)
        projections = simulate_projections(volume, geo, noise=noisy, seed=0)
        baselines = (
            fdk(projections, geo),
            sart(projections, geo, SARTConfig(n_iter=sweeps), progress=False),
        )
        scores = [(float(psnr3d(r, volume)), float(ssim3d(r, volume))) for r in baselines]
        start = time.perf_counter()
        result, history = reconstruct_hashgrid(projections, geo, config, volume_gt=volume)
        seconds = time.perf_counter() - start
        psnr, ssim = float(psnr3d(result, volume)), float(ssim3d(result, volume))
        cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in scores)
        start_psnr = history["warm_start"].get("start_psnr")
        cells += " | -" if start_psnr is None else f" | {start_psnr:.2f}"
        lines.append(
            f"| {n_views} | {'yes' if noisy else 'no'} | {cells} | {psnr:.2f} / {ssim:.3f} | "
            f"{psnr - scores[0][0]:+.2f} dB | {seconds:.0f} |"
        )
    return lines


def _load_volume(path: str | Path | None) -> torch.Tensor:
    if path is None:
        from nr.assets import embedded_volume

        return torch.from_numpy(embedded_volume())
    array = np.load(path)
    if isinstance(array, np.lib.npyio.NpzFile):
        array = array[array.files[0]]
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise ValueError(f"volume: expected a cubic (Z, Y, X) array in {path}, got {array.shape}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def run(quick: bool, volume: str | Path | None = None) -> str:
    """The Markdown body of the benchmark; `volume` is a .npy/.npz (Z, Y, X) file in [0, 1]."""
    lines = _encoding_speed(quick) + [""] + _rendering_speed(quick) + [""]
    lines += _quality(quick, _load_volume(volume))
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volume", help="(Z, Y, X) .npy/.npz volume in [0, 1] (default: assets)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(run(args.quick, args.volume))
