"""SliceFixer inference cost: the compact preset per slice and per volume, and the full-size
(SD-Turbo + RAD-DINO architecture, random weights) forward pass for reference."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nr.geometry import ConeBeamGeometry
from slicefixer.model import SliceFixer
from slicefixer.presets import compact_config, sd_turbo_architecture
from slicefixer.repair import repair_volume

TITLE = "SliceFixer"


def _median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _forward_row(model: SliceFixer, batch: int, repeats: int) -> str:
    size = model.config.resolution
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, size, size, generator=generator) * 2 - 1
    xrays = torch.rand(batch, 2, 128, 128, generator=generator)
    prompts = [model.config.default_prompt] * batch
    with torch.no_grad():
        condition = model.condition(xrays, prompts)
        counter = FlopCounterMode(display=False)
        with counter:
            model.denoise(images, condition)
        t_condition = _median_time(lambda: model.condition(xrays, prompts), repeats)
        t_denoise = _median_time(lambda: model.denoise(images, condition), repeats)
    return (f"| {model.config.preset} | {size} | {batch} | {_millions(model):.1f} | "
            f"{counter.get_total_flops() / 1e9:.1f} | {t_condition:.2f} | {t_denoise:.2f} | "
            f"{t_denoise / batch:.3f} |")


def _volume_row(model: SliceFixer, n: int, batch: int) -> str:
    geo = ConeBeamGeometry.default(n_voxel=n, n_views=50, n_detector=n)
    volume = torch.rand(n, n, n, generator=torch.Generator().manual_seed(1))
    projections = torch.rand(50, n, n)
    model(torch.zeros(1, 1, model.config.resolution, model.config.resolution),
          torch.rand(1, 2, 8, 8), [model.config.default_prompt])  # warm-up
    seconds = _median_time(
        lambda: repair_volume(model, volume, projections, geo, axes=("z",), batch_size=batch), 1)
    return f"| {n}^3, axis z, batch {batch} | {n} | {seconds:.1f} | {seconds / n:.3f} |"


def run(quick: bool) -> str:
    torch.manual_seed(0)
    compact = SliceFixer.from_config(compact_config()).eval()
    repeats = 2 if quick else 7
    rows = [_forward_row(compact, 8, repeats), _forward_row(compact, 1, repeats)]
    notes = []
    if quick:
        notes.append("Quick mode: full-size rows omitted; volume 32^3 (slices resized to 128).")
    else:
        for resolution in (256, 512):
            full = SliceFixer.from_config(sd_turbo_architecture(resolution)).eval()
            rows.append(_forward_row(full, 1, 1))
            parts = {name: _millions(getattr(full, name))
                     for name in ("unet", "vae", "xray_encoder")}
            del full
        notes.append("Full-size parameters (M): "
                     + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
                     + "; the CLIP text encoder (340 M, once per volume) is replaced by a prompt "
                     "table in this timing.")
    with torch.no_grad():
        volume = [_volume_row(compact, 32 if quick else 128, 8)]
    return "\n".join([
        "Single-step forward (`denoise`: VAE encode, UNet at t=999, VAE decode with skips) and "
        "conditioning (`condition`: X-ray encoder on 2 views + prompt + fusion; run once per "
        "volume by `repair_volume`). Median of repeats, random inputs, "
        f"{torch.get_num_threads()} threads.",
        "",
        "| preset | px | batch | params (M) | GFLOP (denoise) | condition (s) | denoise (s) "
        "| per slice (s) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Compact preset, a whole volume through `repair_volume` (resize to 128, repair, resize "
        "back):",
        "",
        "| volume | slices | seconds | per slice (s) |",
        "|---|---|---|---|",
        *volume,
        "",
        *notes,
        f"numpy {np.__version__}, torch {torch.__version__}.",
    ])
