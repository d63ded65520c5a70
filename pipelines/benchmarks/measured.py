"""Sparse views of a measured scan: FDK, ASD-POCS and the neural representations scored
against the full-view FDK, inside the object.

    python -m pipelines.benchmark measured --scan SCAN [--quick]

SCAN is any measured scan `nr.io.load_scan` reads (tomopy's tooth: a Data Exchange .h5,
docs/formats.md). Steps:

1. read the scan and estimate its rotation axis on all views (`nr.io.resolve_center`, auto);
2. FDK of all views on the full grid; the object mask is that volume smoothed and
   thresholded (holes filled, dilated), and the grid is cropped to the mask's bounding box
   plus a margin (1-pixel voxels kept; the tooth's 640^2 slice becomes about 300^2, which
   makes the neural runs affordable on 2 cores); the reference is the full-view FDK on that
   grid;
3. for each view count, every k-th view (k = N // views: 181 views give 30, 20, 10 views
   k = 6, 9, 18 apart) reconstructed with FDK, ASD-POCS (`pipelines.recon.classical_method`
   defaults), the hash-grid field and the Gaussians (`nr.recon` recipes with the short
   schedules below, D-SSIM off when the detector has fewer than 11 rows: the SSIM window
   does not fit);
4. PSNR and SSIM inside the mask against the reference, both normalised by the reference's
   0.1-99.9 percentile range inside the mask (data range 1, no clipping); SSIM is the mean
   of the 2D SSIM map (11x11 Gaussian window, sigma 1.5) over the mask, per axial slice;
5. a montage PNG of the axial slices and a Markdown table.

DiffNR's priors (SliceFixer, DiffusionBlend) are not run: they were trained on 64^2-128^2
slices of normalised attenuation volumes and repair axial, coronal and sagittal slices of a
cube; a 2-row scan has no coronal or sagittal slices to repair.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402

from nr.geometry import ConeBeamGeometry  # noqa: E402
from nr.io import Scan, atomic_file, load_scan, resolve_center  # noqa: E402
from nr.ops.fdk import fdk  # noqa: E402
from nr.recon import (  # noqa: E402
    GaussianReconConfig,
    HashGridReconConfig,
    reconstruct_gaussians,
    reconstruct_hashgrid,
)
from pipelines.recon import classical_method  # noqa: E402

TITLE = "Measured scan: sparse views against the full-view FDK"
# pipelines.benchmark passes --scan to the topics that set this.
OPTIONS = ("scan",)
FIGURE = Path(__file__).resolve().parents[2] / "docs" / "figures" / "measured_sparse_views.png"
VIEWS = (30, 20, 10)
QUICK_VIEWS = (10,)
METHODS = ("fdk", "asd_pocs", "hashgrid", "gaussians")
# Short neural schedules (the defaults are sized for 128^3 scans with 50 views): steps of the
# warm-start fit and loop iterations.
HASHGRID_ITERATIONS, GAUSSIAN_ITERATIONS, WARM_START_STEPS = 150, 150, 800
QUICK_ITERATIONS, QUICK_WARM_START_STEPS = 5, 20
MARGIN = 16  # voxels around the object's bounding box


def run(quick: bool, scan: str | Path | None = None) -> str:
    """The Markdown body: the axis, the grid, the table and the montage's path."""
    if scan is None:
        raise ValueError(
            "scan: the measured benchmark needs a measured scan; pass --scan PATH (e.g. "
            "tomopy's tooth.h5, docs/formats.md)"
        )
    loaded = load_scan(scan)
    if not isinstance(loaded, Scan):
        raise ValueError(f"scan: {scan} holds a volume, not measured projections")
    measured, center = resolve_center(loaded, "auto")
    full = fdk(measured.projections, measured.geo)
    mask_full = _object_mask(full.numpy())
    geo = _crop(measured.geo, mask_full, MARGIN)
    measured = dataclasses.replace(measured, geo=geo)
    reference = fdk(measured.projections, geo).numpy()
    mask = _object_mask(reference)
    low, high = (float(q) for q in np.percentile(reference[mask], [0.1, 99.9]))
    view_counts = QUICK_VIEWS if quick else VIEWS
    rows, shown = [], {"reference": reference}
    for views in view_counts:
        step = geo.n_views // views
        ids = np.arange(views) * step
        sparse = dataclasses.replace(
            measured, projections=measured.projections[ids].contiguous(), geo=geo.subset(ids)
        )
        for method in METHODS:
            started = time.perf_counter()
            volume = _reconstruct(method, sparse, quick).numpy()
            seconds = time.perf_counter() - started
            psnr, ssim = _masked_scores(volume, reference, mask, low, high)
            rows.append((views, step, method, psnr, ssim, seconds))
            shown[f"{method}, {views} views"] = volume
    figure = Path(tempfile.gettempdir()) / "measured_quick.png" if quick else FIGURE
    _montage(shown, low, high, figure, view_counts)
    return _body(loaded, center, measured, mask, rows, figure, quick)


def _reconstruct(method: str, scan: Scan, quick: bool) -> torch.Tensor:
    if method in ("fdk", "asd_pocs"):
        run, _ = classical_method(method, "ram_lak")
        return run(scan)
    iterations = QUICK_ITERATIONS if quick else None
    steps = QUICK_WARM_START_STEPS if quick else WARM_START_STEPS
    # D-SSIM on projections needs 11x11 views; the tooth's have 2 rows.
    dssim = 0.0 if int(scan.geo.n_detector[0]) < 11 else None
    if method == "hashgrid":
        config = HashGridReconConfig()
        iterations = iterations or HASHGRID_ITERATIONS
    else:
        iterations = iterations or GAUSSIAN_ITERATIONS
        config = GaussianReconConfig.default(iterations, scan.geo.volume_shape, scan.geo.n_views)
    train = dataclasses.replace(config.train, iterations=iterations, eval_every=0, progress=False)
    if dssim is not None:
        train = dataclasses.replace(train, lambda_dssim=dssim)
    warm = dataclasses.replace(config.warm_start, steps=steps)
    config = dataclasses.replace(config, train=train, warm_start=warm)
    if method == "hashgrid":
        return reconstruct_hashgrid(scan.projections, scan.geo, config)[0]
    return reconstruct_gaussians(scan.projections, scan.geo, config)[0]


def _object_mask(volume: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: per axial slice, the smoothed slice above a quarter of the volume's
    99.9th percentile, holes filled, dilated by 3 voxels."""
    smooth = np.stack([ndimage.gaussian_filter(s, 2.0) for s in volume])
    level = 0.25 * float(np.percentile(smooth, 99.9))
    masks = [ndimage.binary_fill_holes(s > level) for s in smooth]
    return np.stack([ndimage.binary_dilation(m, iterations=3) for m in masks])


def _crop(geo: ConeBeamGeometry, mask: np.ndarray, margin: int) -> ConeBeamGeometry:
    """`geo` with its x-y grid cut to the mask's bounding box plus `margin` voxels (a square,
    same voxel size, centred on the box)."""
    ys, xs = np.nonzero(mask.any(axis=0))
    n_y, n_x = mask.shape[1:]
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 + 2 * margin
    side = int(min(side, n_y, n_x))
    centre_y = (ys.max() + ys.min()) / 2
    centre_x = (xs.max() + xs.min()) / 2
    d_z, d_y, d_x = geo.d_voxel
    shift_y = float(np.interp(centre_y, np.arange(n_y), geo.voxel_centres(1)))
    shift_x = float(np.interp(centre_x, np.arange(n_x), geo.voxel_centres(2)))
    return dataclasses.replace(
        geo,
        n_voxel=(int(geo.n_voxel[0]), side, side),
        d_voxel=(d_z, d_y, d_x),
        s_voxel=None,
        off_origin=(float(geo.off_origin[0]), shift_y, shift_x),
    )


def _masked_scores(
    volume: np.ndarray, reference: np.ndarray, mask: np.ndarray, low: float, high: float
) -> tuple[float, float]:
    pred = (volume - low) / (high - low)
    ref = (reference - low) / (high - low)
    mse = float(np.mean((pred[mask] - ref[mask]) ** 2))
    psnr = 10 * np.log10(1.0 / mse)
    ssims = []
    for p, r, m in zip(pred, ref, mask, strict=True):
        if not m.any():
            continue
        _, ssim_map = structural_similarity(
            r.astype(np.float64), p.astype(np.float64), data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True,
        )  # fmt: skip
        ssims.append(float(ssim_map[m].mean()))
    return float(psnr), float(np.mean(ssims))


def _montage(shown: dict, low: float, high: float, path: Path, view_counts) -> None:
    """Reference alone on the first row, then one row per view count, one column per method;
    the last axial slice (the top detector row), one grey window."""
    columns = len(METHODS)
    fig, axes = plt.subplots(
        len(view_counts) + 1, columns, figsize=(2.6 * columns, 2.6 * (len(view_counts) + 1))
    )
    for ax in axes.flat:
        ax.axis("off")
    cells = [("reference", (0, 0))] + [
        (f"{m}, {v} views", (1 + i, j))
        for i, v in enumerate(view_counts)
        for j, m in enumerate(METHODS)
    ]
    for title, (row, col) in cells:
        ax = axes[row, col]
        ax.imshow(shown[title][-1], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title("full-view FDK (reference)" if title == "reference" else title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80)
        # Grey levels only: an 8-bit grey PNG is a third of matplotlib's RGBA one.
        Image.open(tmp).convert("L").save(tmp, optimize=True)
    plt.close(fig)


def _body(loaded: Scan, center: dict, measured: Scan, mask, rows, figure: Path, quick) -> str:
    geo = measured.geo
    n_v, n_u = (int(n) for n in geo.n_detector)
    unit = loaded.metadata.get("length_unit", "mm")
    lines = [
        f"Scan: `{Path(str(loaded.metadata.get('file', '?'))).name}`, {geo.n_views} "
        f"{loaded.metadata.get('mode', geo.mode)}-beam views of {n_v}x{n_u} pixels "
        f"(lengths in {unit}s). Rotation axis estimated on all views: detector offset "
        f"{center['offset_px']:+.2f} px (`nr.io.estimate_center`, sharpness).",
        "",
        f"Grid: {'x'.join(map(str, geo.volume_shape))} voxels of {geo.d_voxel[1]:g} {unit} "
        f"(cropped to the object plus {MARGIN} voxels); the object mask holds "
        f"{int(mask.sum())} voxels. Reference: FDK (Ram-Lak) of all {geo.n_views} views.",
        "",
        f"Neural schedules: hash grid {HASHGRID_ITERATIONS} and Gaussians "
        f"{GAUSSIAN_ITERATIONS} iterations after a {WARM_START_STEPS}-step warm-start fit "
        "on ASD-POCS (their recipes otherwise, `nr.recon`); D-SSIM off (2-row views)."
        if not quick
        else "Quick run: 10 views, 5 iterations, 20 warm-start steps (code path only).",
        "",
        "| views | every k-th | method | PSNR (dB) | SSIM | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for views, step, method, psnr, ssim, seconds in rows:
        lines.append(f"| {views} | {step} | {method} | {psnr:.2f} | {ssim:.3f} | {seconds:.0f} |")
    lines += [
        "",
        f"Montage (top detector row): `{_relative(figure)}`. No DiffNR rows: its priors "
        "(SliceFixer, DiffusionBlend) were trained on 64^2-128^2 slices of normalised "
        "volumes and repair the slices of a cube along three axes; a 2-row scan has no "
        "coronal or sagittal slices.",
    ]
    return "\n".join(lines)


def _relative(path: Path) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
