"""DiffusionBlend: wall time per volume and network evaluations (standalone and as a DiffNR
hook), and quality against FDK and SART at 25 views when a trained model is available
(``assets/diffusionblend`` or the folder given with ``--model``): on the embedded head phantom,
the volume the shipped prior holds out, and on the LIDC chest, which it was trained on (a
check that the prior fits anatomy it has seen, not a held-out score)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from nr.assets import assets_dir, embedded_volume
from nr.geometry import ConeBeamGeometry
from nr.io import Volume, read_volume, scan_from_volume
from nr.ops.fdk import fdk
from nr.ops.iterative import sart
from nr.ops.projector import XRayOperator
from nr.priors.blend_model import PRESETS, BlendPrior
from nr.priors.blend_prior import DiffusionBlendPriorConfig
from nr.priors.blend_recon import BlendReconConfig, reconstruct_blend
from nr.priors.blend_train import prepare_volume
from nr.priors.sampler import BlendSampler, BlendSamplerConfig, IntensityMap
from pipelines.benchmarks._cases import data_dir
from pipelines.common import quality
from pipelines.train_blend import manifest_spacing

OPTIONS = ("model",)  # python -m pipelines.benchmark diffusionblend --model DIR
TITLE = "DiffusionBlend"
SEEN_IN_TRAINING = "vtkjs_lidc2_chest_ct_u8.npz"
VIEWS = 25
SAMPLES = BlendReconConfig().samples
DIFFNR_PRIOR = DiffusionBlendPriorConfig()


def _trained_model(folder: Path | None) -> tuple[BlendPrior, str] | None:
    path = folder or assets_dir() / "diffusionblend"
    if not path.is_dir():
        return None
    return BlendPrior.from_pretrained(path), str(folder or "assets/diffusionblend (shipped)")


def _ground_truths(quick: bool, resolution: int) -> dict[str, torch.Tensor]:
    """{description: (Z, R, R) volume in [0, 1]}: the embedded head phantom (held out) and the
    LIDC chest (seen in training) resampled (full), or a ball (quick, or without the chest's
    file)."""
    folder = data_dir()
    chest_path = folder / SEEN_IN_TRAINING if folder is not None else None
    if quick or chest_path is None or not chest_path.is_file():
        z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (12, 32, 32)), indexing="ij")
        return {"ball 12x32x32": ((x**2 + y**2 + z**2) < 0.6).float() * 0.8}
    chest = read_volume(chest_path)
    chest = Volume(chest.data, spacing=manifest_spacing(chest_path), units=chest.units)
    cases = {
        "embedded head phantom, held out": Volume(embedded_volume()),
        f"{chest_path.stem}, seen in training": chest,
    }
    truths = {}
    for name, volume in cases.items():
        truth = (prepare_volume(volume, resolution) + 1) / 2
        truths[f"{name} ({'x'.join(map(str, truth.shape))})"] = truth
    return truths


def _speed_rows(model: BlendPrior, scan, quick: bool) -> list[str]:
    geo, projections = scan.geo, scan.projections
    operator = XRayOperator(geo)
    A, AT = operator.forward, operator.adjoint
    intensity = IntensityMap(0.0, float(scan.volume_gt.max()))
    cases = [
        ("standalone, from noise (t0 = 999)", 999, 2 if quick else 50),
        ("standalone, FDK start", 500, 2 if quick else 25),
        (
            "DiffNR prior (one reference)",
            DIFFNR_PRIOR.t0,
            2 if quick else DIFFNR_PRIOR.sampler.steps,
        ),
    ]
    start = fdk(projections, geo)
    rows = []
    for name, t0, steps in cases:
        sampler = BlendSampler(model, BlendSamplerConfig(steps=steps))
        generator = torch.Generator().manual_seed(0)
        began = time.perf_counter()
        sampler.sample_from(A, AT, projections, start, t0, intensity, generator)
        seconds = time.perf_counter() - began
        s = sampler.stats
        rows.append(
            f"| {name} | {t0} | {s.steps} | {s.patch_evaluations} | {s.network_calls} | "
            f"{seconds:.1f} | {seconds / s.steps:.2f} |"
        )
    return rows


def _quality_rows(
    name: str, scan, model: BlendPrior, methods: dict[str, BlendReconConfig]
) -> list[str]:
    """Table rows (PSNR, SSIM, data residual, seconds) of FDK, SART and each DiffusionBlend
    setting on one scan, after the ground truth's own data residual (the noise level)."""
    geo, projections = scan.geo, scan.projections
    truth_residual = quality(scan.volume_gt, scan)["data_residual"]
    rows = [f"| {name} | ground truth | - | - | {truth_residual:.3f} | - |"]
    classical = {
        "FDK": lambda: fdk(projections, geo),
        "SART (20 sweeps)": lambda: sart(projections, geo, progress=False),
    }
    for method in (*classical, *methods):
        began = time.perf_counter()
        if method in classical:
            volume = classical[method]()
        else:
            volume = reconstruct_blend(projections, geo, model, methods[method])[0]
        seconds = time.perf_counter() - began
        q = quality(volume, scan)
        rows.append(
            f"| {name} | {method} | {q['psnr']:.2f} | {q['ssim']:.3f} | "
            f"{q['data_residual']:.3f} | {seconds:.1f} |"
        )
    return rows


def run(quick: bool, model: Path | None = None) -> str:
    torch.manual_seed(0)
    trained = _trained_model(model)
    model, source = (
        trained
        if trained
        else (BlendPrior(PRESETS["compact"]).eval(), "compact preset, random weights")
    )
    truths = _ground_truths(quick, model.config.resolution)
    scans = {}
    for name, truth in truths.items():
        geo = ConeBeamGeometry.for_volume(tuple(truth.shape), (1.0, 1.0, 1.0), VIEWS)
        scans[name] = scan_from_volume(truth, geo, noise=True, seed=0)
    first = next(iter(scans))
    lines = [
        f"Model: {source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
        f"{model.config.resolution} px). Volumes: {', '.join(scans)}, resampled to the model's "
        f"resolution; {VIEWS} cone-beam views with TIGRE noise. CG: 5 iterations per step "
        f"(unless stated) on the cone-beam operator (nr.ops). "
        f"{torch.get_num_threads()} threads.",
        "",
        f"Speed ({first}):",
        "",
        "| run | t0 | DDIM steps | patch evaluations | network calls | seconds | s / step |",
        "|---|---|---|---|---|---|---|",
        *_speed_rows(model, scans[first], quick),
    ]
    if trained is None or quick:
        lines += [
            "",
            "Quality: not measured here (quick run, or no trained model: train one "
            "with `python -m pipelines.train_blend` and pass --model DIR).",
        ]
        return "\n".join(lines)
    lines += [
        "",
        f"Quality at {VIEWS} views (PSNR/SSIM against the ground truth in [0, 1]):",
        "",
        "| volume | method | PSNR (dB) | SSIM | data residual | seconds |",
        "|---|---|---|---|---|---|",
    ]
    methods = {
        "DiffusionBlend, noise start, 50 steps, 1 sample": BlendReconConfig(samples=1),
        "DiffusionBlend, FDK start t0=500, 25 steps, 1 sample": BlendReconConfig(
            sampler=BlendSamplerConfig(steps=25), init="fdk", samples=1
        ),
        f"DiffusionBlend, noise start, 50 steps, mean of {SAMPLES} samples (default)": (
            BlendReconConfig(samples=SAMPLES)
        ),
        f"DiffusionBlend, noise start, 50 steps, 10 CG, mean of {SAMPLES} samples": (
            BlendReconConfig(sampler=BlendSamplerConfig(cg_iters=10), samples=SAMPLES)
        ),
    }
    for name, scan in scans.items():
        lines += _quality_rows(name, scan, model, methods)
    return "\n".join(lines)
