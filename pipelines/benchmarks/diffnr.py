"""DiffNR against the NR alone with identical settings and seeds, with a downstream check.

Cases: the embedded head phantom and the development volumes held out from the shipped
SliceFixer's training (``NR_HELDOUT``, default vtkjs_lidc2_chest_ct_u8), prepared as the
curated training data (`pipelines.benchmarks._cases`, size^3 in a 256 mm box, TIGRE noise),
at 25 and 50 views, with both representations (``NR_DIFFNR_VIEWS``, ``NR_DIFFNR_NR`` and
``NR_DIFFNR_VOLUMES`` restrict them, e.g. "25", "gaussians" and "vtkjs_lidc2_chest_ct_u8"
(volume names as in the table, comma-separated); the section then says what ran). The prior is
the shipped compact SliceFixer, or the shipped DiffusionBlend model with
``NR_DIFFNR_PRIOR=diffusionblend``. Each case runs ``python -m pipelines.diffnr SCAN --nr NR
--views N --prior PRIOR --compare`` and the segmentation of `nr.downstream` scores both
reconstructions against the ground truth.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nr.assets import asset_path
from nr.downstream import compare
from nr.io import Scan, read_nifti, write_scan
from nr.ops.noise import simulate_projections
from pipelines import diffnr
from pipelines.benchmarks._cases import geometry, volumes

TITLE = "DiffNR vs the NR alone"
SIZE = 64
PRIOR_ASSETS = {
    "slicefixer": ("slicefixer-compact", "the shipped compact SliceFixer"),
    "diffusionblend": ("diffusionblend", "the shipped DiffusionBlend prior"),
}


def _write_case(volume: np.ndarray, views: int, folder: Path) -> Path:
    geo = geometry(volume.shape[0], views)
    truth = torch.from_numpy(volume)
    scan = Scan(
        simulate_projections(truth, geo, noise=True, seed=0).float(),
        geo,
        truth,
        metadata={"format": "benchmark"},
    )
    path = folder / "scan.npz"
    write_scan(scan, path)
    return path


def _downstream(out: Path, truth: np.ndarray, spacing) -> dict[str, dict[str, dict]]:
    return {
        name: compare(truth, read_nifti(out / file).data, spacing)
        for name, file in (("nr_only", "nr_only.nii.gz"), ("diffnr", "volume.nii.gz"))
    }


def run(quick: bool) -> str:
    size = 24 if quick else SIZE
    views_list = (
        (8,)
        if quick
        else tuple(int(v) for v in os.environ.get("NR_DIFFNR_VIEWS", "25,50").split(","))
    )
    representations = (
        ("gaussians",)
        if quick
        else tuple(os.environ.get("NR_DIFFNR_NR", "gaussians,hashgrid").split(","))
    )
    held_out = os.environ.get("NR_HELDOUT", "vtkjs_lidc2_chest_ct_u8").split(",")
    cases = volumes(size, names=held_out)
    if os.environ.get("NR_DIFFNR_VOLUMES"):
        wanted = os.environ["NR_DIFFNR_VOLUMES"].split(",")
        cases = {name: volume for name, volume in cases.items() if name in wanted}
    extra = ["--iterations", "8", "--loss-every", "2"] if quick else []
    prior = os.environ.get("NR_DIFFNR_PRIOR", "slicefixer")
    if prior not in PRIOR_ASSETS:
        raise ValueError(f"NR_DIFFNR_PRIOR: expected one of {sorted(PRIOR_ASSETS)}, got {prior!r}")
    asset, described = PRIOR_ASSETS[prior]
    checkpoint = str(asset_path(asset))
    header = (
        "| volume | views | NR | NR alone PSNR / SSIM | DiffNR PSNR / SSIM | dPSNR | dSSIM "
        "| time NR / DiffNR (s) | guard | Dice dense NR / DiffNR | ASD dense (mm) "
        "| Dice air NR / DiffNR | ASD air (mm) |"
    )
    lines = [header, "|" + "---|" * 13]
    deltas: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, volume in cases.items():
            for views in views_list:
                case_dir = Path(tmp) / f"{name}-{views}"
                case_dir.mkdir()
                scan_path = _write_case(volume, views, case_dir)
                for nr in representations:
                    out = case_dir / nr
                    started = time.perf_counter()
                    m = diffnr.main(
                        [
                            str(scan_path),
                            "--nr",
                            nr,
                            "--views",
                            str(views),
                            "--compare",
                            "--prior",
                            prior,
                            "--checkpoint",
                            checkpoint,
                            "--out",
                            str(out),
                            *extra,
                        ]
                    )
                    print(f"{name} {views} {nr}: {time.perf_counter() - started:.0f} s")
                    seg = _downstream(out, volume, geometry(size, views).d_voxel)
                    a, b, d = m["nr_only"], m["diffnr"], m["difference"]
                    t = m["timings_seconds"]
                    accepted = sum(g["action"] == "accept" for g in m["guard"])
                    deltas.setdefault(nr, []).append(d["psnr"])
                    lines.append(
                        f"| {name} | {views} | {nr} | {a['psnr']:.2f} / {a['ssim']:.4f} "
                        f"| {b['psnr']:.2f} / {b['ssim']:.4f} | {d['psnr']:+.2f} "
                        f"| {d['ssim']:+.4f} | {t['nr_only']:.0f} / {t['diffnr']:.0f} "
                        f"| {accepted}/{len(m['guard'])} accepted "
                        f"| {seg['nr_only']['dense']['dice']:.3f} / "
                        f"{seg['diffnr']['dense']['dice']:.3f} "
                        f"| {seg['nr_only']['dense']['asd_mm']:.2f} / "
                        f"{seg['diffnr']['dense']['asd_mm']:.2f} "
                        f"| {seg['nr_only']['air']['dice']:.3f} / "
                        f"{seg['diffnr']['air']['dice']:.3f} "
                        f"| {seg['nr_only']['air']['asd_mm']:.2f} / "
                        f"{seg['diffnr']['air']['asd_mm']:.2f} |"
                    )
    summary = [
        f"- {nr}: mean dPSNR {np.mean(v):+.2f} dB, worst {np.min(v):+.2f} dB over {len(v)} cases"
        for nr, v in deltas.items()
    ]
    note = (
        f"Volumes at {size}^3 ({', '.join(cases)}), noisy projections (I0 1e5), seed 0, "
        f"{described} (assets/{asset}), pipelines.diffnr defaults. "
        "Segmentation (`nr.downstream`): dense = normalised value > 0.6, air = < 0.15 inside "
        "the body, components >= 50 voxels; Dice and average symmetric surface distance "
        "from DeepMind's surface-distance."
    )
    return note + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(summary)
