"""What every command shares: resolving its INPUT into a `Scan`, and writing one run folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
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
from nr.io import (
    Scan,
    Volume,
    atomic_file,
    load_scan,
    normalize_minmax,
    resolve_center,
    scan_from_volume,
    write_nifti,
)
from nr.io.resample import resample_cube
from nr.memory import METHODS as MEMORY_METHODS
from nr.memory import InsufficientMemoryError, check_memory
from nr.metrics import scan_quality
from nr.ops.noise import NoiseConfig
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
        "geometry.json), measured projections (.h5/.nxs Data Exchange or NeXus, a TIFF folder "
        "with geometry.json, a FIPS .mat; docs/formats.md), or a volume (.nii/.nii.gz/.mhd/"
        ".nrrd/.npy/.npz/DICOM folder) whose projections are simulated; default: the "
        "embedded head phantom (128^3)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=None,
        help=f"number of projections: simulated from a volume (default {default_views}), or "
        "evenly spaced views taken from a scan's training views (default: all of them)",
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


def add_measured_arguments(parser: argparse.ArgumentParser) -> None:
    """``--geometry FILE`` and ``--center``: what measured projections need."""
    parser.add_argument(
        "--geometry",
        type=Path,
        metavar="FILE",
        help="measured projections: a geometry JSON file with what the files lack or get "
        "wrong (mode, pixel_size, dso, dsd, angles, center_offset, ...; docs/formats.md)",
    )
    parser.add_argument(
        "--center",
        type=center_choice,
        default=None,
        metavar="auto|none|PIXELS",
        help="rotation axis: estimate it (auto), keep the geometry's (none), or the detector "
        "offset in pixels (TIGRE's offU sign); default: auto when the files do not give it",
    )


def center_choice(text: str) -> str | float:
    """argparse type of ``--center``: "auto", "none" or a number of pixels."""
    if text in ("auto", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected auto, none or a number, got {text!r}")
    return value


def resolve_scan(
    input_path: str | None,
    views: int | None,
    noise: str,
    seed: int,
    size: int | None = None,
    *,
    default_views: int = 25,
    geometry: Path | None = None,
    center: str | float | None = None,
) -> Scan:
    """The `Scan` a command works on, from its INPUT argument.

    Volumes (including the embedded default) are min-max normalised to [0, 1]
    (as R2-Gaussian and NAF prepare theirs), optionally resampled to `size`^3
    over the same physical box, and scanned with `ConeBeamGeometry.for_volume`;
    measured scans are used as they are. `views` None means `default_views` for volumes and
    all the training views of a scan (R2-Gaussian case, NAF pickle, scan folder, measured
    projections). `geometry` (a JSON file) is passed to the
    readers of measured projections; `center` is applied by `nr.io.resolve_center` (its
    record lands in ``scan.metadata["center"]``) before any views are dropped.
    """
    if views is None and input_path is None:
        views = default_views
    if views is not None and (not isinstance(views, int) or views < 1):
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
        loaded = load_scan(input_path, geometry)
        if isinstance(loaded, Scan):
            if size is not None:
                raise ValueError("--size: applies to volume inputs, not to measured projections")
            loaded, record = resolve_center(loaded, center)
            if record["source"] == "estimated":
                LOG.info("rotation axis: detector offset %+.2f px (estimated)", record["offset_px"])
            return _subset_views(loaded, loaded.geo.n_views if views is None else views)
        views = default_views if views is None else views
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
    return resolve_center(scan, center)[0]


def quality(volume: torch.Tensor, scan: Scan) -> dict[str, float]:
    """`nr.metrics.scan_quality` of `volume` on `scan` (truth scores when it is known)."""
    return scan_quality(volume, scan.projections, scan.geo, scan.volume_gt)


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


def log_to_stderr() -> None:
    """Show the commands' log (INFO and above) on stderr, once."""
    LOG.setLevel(logging.INFO)
    if not any(
        isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in LOG.handlers
    ):
        LOG.addHandler(logging.StreamHandler(sys.stderr))


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
        log_to_stderr()
        LOG.info("command: %s", " ".join([os.path.basename(sys.executable)] + sys.argv))

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.path / name
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
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


def check_fits(method: str, geo: ConeBeamGeometry, config: Any = None) -> None:
    """Stop a run that will not fit in memory before it starts (`nr.memory.check_memory`;
    methods without a memory model are not checked): one line naming the remedy."""
    if method not in MEMORY_METHODS:
        return
    needed = check_memory(method, geo, config, remedy=_size_remedy)
    if needed is not None:
        LOG.info("memory: about %.1f GB at its peak (nr.memory)", needed / 1e9)


def _size_remedy(side: int) -> str:
    if side == 0:
        return "free memory"
    return f"use --size {side} or less (volume inputs), or free memory"


# Failures a user can cause and fix (bad or missing input, bad option values, missing weights
# or optional packages, a run too large for the memory available): one line on stderr and exit
# status 2, no traceback.
EXPECTED_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
    ImportError,
    InsufficientMemoryError,
)


class CommandParser(argparse.ArgumentParser):
    """The commands' argument parser: a bad option ends in one line ``error: ...`` on stderr
    and exit status 2 (not argparse's usage and message); ``--debug`` is every command's."""

    def __init__(self, prog: str, description: str | None) -> None:
        super().__init__(
            prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        self.add_argument(
            "--debug", action="store_true", help="on an error, show the full Python traceback"
        )
        log_to_stderr()  # what happens before the run folder exists is shown too

    def error(self, message: str) -> None:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def run_command(main: Any, argv: list[str] | None = None) -> Any:
    """Run a command's ``main(argv)`` as a program: an expected failure (`EXPECTED_ERRORS`) is
    printed as one line ``error: <what> (<remedy>)`` with exit status 2, its traceback only
    with ``--debug``. Returns what `main` returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except EXPECTED_ERRORS as error:
        if "--debug" in argv:
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(2) from None
