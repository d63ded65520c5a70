"""What every command shares: resolving its INPUT into a `Scan`, and writing one run folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nr.assets import embedded_volume
from nr.geometry import ConeBeamGeometry
from nr.io import Scan, Volume, load_scan, normalize_minmax, scan_from_volume, write_nifti
from nr.io.resample import resample_cube
from nr.metrics import psnr3d, ssim3d
from nr.ops.noise import NoiseConfig
from nr.ops.projector import project
from nr.recon import (
    GaussianReconConfig,
    HashGridReconConfig,
    reconstruct_gaussians,
    reconstruct_hashgrid,
)
from nr.viz import save_montage
from nr.warm_start import METHODS as WARM_START_METHODS
from nr.warm_start import WarmStartConfig

LOG = logging.getLogger("nr")


def add_scan_arguments(parser: argparse.ArgumentParser, default_views: int = 25) -> None:
    """The INPUT and scan options shared by the reconstruction commands."""
    parser.add_argument(
        "input",
        nargs="?",
        default=None,
        help="an R2-Gaussian case folder, a NAF .pickle, a scan folder/.npz (projections + "
        "geometry.json), or a volume (.nii/.nii.gz/.mhd/.nrrd/.npy/.npz/DICOM folder) whose "
        "projections are simulated; default: the embedded head phantom (128^3)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=default_views,
        help=f"number of projections (default {default_views}); for a measured "
        "scan, evenly spaced views are taken from its training views",
    )
    parser.add_argument(
        "--noise",
        choices=["tigre", "none"],
        default="tigre",
        help="noise of simulated projections: TIGRE's Poisson I0=1e5 + Gaussian "
        "(0, 10) (default), or none",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="volume inputs (and the default scan): resample to SIZE^3 before "
        "scanning (default: keep the volume's grid)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of noise and training")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def _subset_views(scan: Scan, views: int) -> Scan:
    if views >= scan.geo.n_views:
        if views > scan.geo.n_views:
            LOG.warning(
                "--views %d: the scan has only %d views; using all", views, scan.geo.n_views
            )
        return scan
    ids = np.round(np.linspace(0, scan.geo.n_views, views, endpoint=False)).astype(np.int64)
    return dataclasses.replace(
        scan, projections=scan.projections[ids].contiguous(), geo=scan.geo.subset(ids)
    )


def resolve_scan(
    input_path: str | None, views: int, noise: str, seed: int, size: int | None = None
) -> Scan:
    """The `Scan` a command works on, from its INPUT argument.

    Volumes (including the embedded default) are min-max normalised to [0, 1]
    (as R2-Gaussian and NAF prepare theirs), optionally resampled to `size`^3
    over the same physical box, and scanned with `ConeBeamGeometry.for_volume`;
    measured scans are used as they are.
    """
    if not isinstance(views, int) or views < 1:
        raise ValueError(f"--views: expected a positive number of views, got {views!r}")
    noise_config: bool | NoiseConfig = noise == "tigre"
    if input_path is None:
        volume = Volume(
            embedded_volume(),
            spacing=(2.0, 2.0, 2.0),
            units="normalized",
            source="assets/head_phantom",
        )
    else:
        loaded = load_scan(input_path)
        if isinstance(loaded, Scan):
            if size is not None:
                raise ValueError("--size: applies to volume inputs, not to measured projections")
            return _subset_views(loaded, views)
        volume = dataclasses.replace(
            normalize_minmax(loaded), spacing=loaded.spacing or (1.0, 1.0, 1.0)
        )
    if size is not None:
        extent = np.array(volume.shape) * np.array(volume.spacing)
        volume = dataclasses.replace(
            volume,
            data=resample_cube(volume.data, size),
            spacing=tuple(float(e) for e in extent / size),
        )
    geo = ConeBeamGeometry.for_volume(volume.shape, volume.spacing, views)
    scan = scan_from_volume(volume, geo, noise=noise_config, seed=seed)
    if input_path is None:
        scan.metadata["source"] = "embedded TIGRE head phantom (assets/head_phantom)"
    return scan


def truth_scores(volume: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM3D of `volume` against `truth`, both normalised by the truth's range."""
    with torch.no_grad():
        gt = truth.float()
        low, high = float(gt.min()), float(gt.max())
        pred_n, gt_n = (volume.float() - low) / (high - low), (gt - low) / (high - low)
        return {"psnr": float(psnr3d(pred_n, gt_n)), "ssim": float(ssim3d(pred_n, gt_n))}


def quality(volume: torch.Tensor, scan: Scan) -> dict[str, float]:
    """PSNR/SSIM against the ground truth (when known, both normalised by its range) and the
    relative data residual ||A x - p|| / ||p|| on the measured views."""
    metrics: dict[str, float] = {}
    with torch.no_grad():
        residual = project(volume.float(), scan.geo) - scan.projections
        metrics["data_residual"] = float(residual.norm() / scan.projections.norm())
    if scan.volume_gt is not None:
        metrics.update(truth_scores(volume, scan.volume_gt))
    return metrics


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class RunFolder:
    """One output folder: volume (NIfTI), metrics.json, config.json, montage PNGs and run.log.

    Every file is written atomically (temporary file + rename).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()
        handler = logging.FileHandler(self.path / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        if not any(
            isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in LOG.handlers
        ):
            LOG.addHandler(logging.StreamHandler(sys.stderr))
        LOG.info("command: %s", " ".join([os.path.basename(sys.executable)] + sys.argv))

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.path / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def write_volume(
        self, volume: torch.Tensor, geo: ConeBeamGeometry, name: str = "volume.nii.gz"
    ) -> Path:
        data = volume.detach().cpu().float().numpy()
        spacing = tuple(float(d) for d in geo.d_voxel)
        write_nifti(
            Volume(np.ascontiguousarray(data), spacing=spacing, units="1/mm"), self.path / name
        )
        return self.path / name

    def write_montage(
        self,
        volumes: Mapping[str, torch.Tensor],
        name: str = "montage.png",
        captions: Mapping[str, str] | None = None,
    ) -> Path:
        return save_montage(volumes, self.path / name, captions=captions)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started


def caption(metrics: Mapping[str, float]) -> str:
    if "psnr" in metrics:
        return f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
    return f"residual {metrics['data_residual']:.3f}"


def slice_axes(text: str) -> tuple[str, ...]:
    """argparse type of ``--axes``: comma-separated slicing axes among z, y, x ("z,y,x")."""
    axes = tuple(v.strip() for v in text.split(",") if v.strip())
    if not axes or any(a not in ("z", "y", "x") for a in axes) or len(set(axes)) < len(axes):
        raise argparse.ArgumentTypeError(f"expected distinct axes among z, y, x, got {text!r}")
    return axes


def add_nr_arguments(parser: argparse.ArgumentParser) -> None:
    """``--warm-start`` (the classical volume a neural representation is fitted to first),
    ``--warm-start-steps`` and ``--gaussian-rendering``."""
    parser.add_argument(
        "--warm-start",
        choices=WARM_START_METHODS,
        default=WarmStartConfig.method,
        help="neural methods: classical reconstruction the representation is fitted to before "
        f"training (default {WarmStartConfig.method}; docs/training.md)",
    )
    parser.add_argument(
        "--warm-start-steps",
        type=int,
        metavar="N",
        help="neural methods: steps of that fit (default: the representation's recipe)",
    )
    parser.add_argument(
        "--gaussian-rendering",
        choices=("voxel", "rasterize"),
        help="Gaussians: training projections of the voxelized model by the scan's projector "
        "(voxel, the default) or R2-Gaussian's X-ray rasterizer (docs/gaussians.md)",
    )


def nr_config(
    name: str,
    iterations: int | None,
    seed: int,
    warm_start: str = "asd_pocs",
    warm_start_steps: int | None = None,
    gaussian_rendering: str | None = None,
    shape: tuple[int, int, int] | None = None,
    views: int | None = None,
):
    """The default configuration of a neural representation ("gaussians" or "hashgrid"),
    with the loop seeded by `seed`, the warm start of method `warm_start` (and
    `warm_start_steps` steps unless None) and, for the Gaussians, `gaussian_rendering`
    ("voxel" or "rasterize"; None keeps the recipe's) and the recipe sized to the (Z, Y, X)
    grid `shape` and the number of `views` (`GaussianReconConfig.default`)."""
    if name == "gaussians":
        config = GaussianReconConfig.default(iterations, shape, views)
        if gaussian_rendering is not None:
            model = dataclasses.replace(config.model, rendering=gaussian_rendering)
            config = dataclasses.replace(config, model=model)
    else:
        config = HashGridReconConfig()
    train = (
        config.train
        if iterations is None
        else dataclasses.replace(config.train, iterations=iterations)
    )
    # Checkpoint ten times per run (in the run folder): the same command resumes a killed run.
    every = max(1, train.iterations // 10)
    train = dataclasses.replace(train, seed=seed, checkpoint_every=every)
    warm = dataclasses.replace(config.warm_start, method=warm_start)
    if warm_start_steps is not None:
        warm = dataclasses.replace(warm, steps=warm_start_steps)
    return dataclasses.replace(config, train=train, warm_start=warm)


def reconstruct(name: str, scan: Scan, config, out_dir: Path | None, hooks=()):
    """Fit the representation `name` to `scan`; returns (volume, history)."""
    if name == "gaussians":
        return reconstruct_gaussians(
            scan.projections, scan.geo, config, scan.volume_gt, out_dir, hooks
        )
    return reconstruct_hashgrid(scan.projections, scan.geo, config, scan.volume_gt, out_dir, hooks)
