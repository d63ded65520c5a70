"""R2-Gaussian case folders (also used by DiffNR): read into a `Scan`, and write one.

A case folder (R2-Gaussian data_generator/synthetic_dataset/generate_data.py)::

    meta_data.json   {"scanner": {...}, "vol": "vol_gt.npy", "bbox": [[x0,y0,z0],[x1,y1,z1]],
                      "proj_train": [{"file_path": "proj_train/proj_train_0000.npy",
                                      "angle": radians}, ...], "proj_test": [...]}
    vol_gt.npy       the volume indexed (x, y, z): TIGRE's (z, y, x) array transposed
    proj_train/*.npy one (V, U) view each: TIGRE's Ax output with the rows flipped

Conventions, from their sources (docs/formats.md has the lines):

* ``scanner`` holds TIGRE's fields under TIGRE's names, but nVoxel, sVoxel,
  dVoxel and offOrigin are (x, y, z) (``get_geometry`` in
  r2_gaussian/utils/ct_utils.py reverses them for TIGRE), nDetector, sDetector
  and dDetector are (v, u), and offDetector is (u, v) (``get_geometry`` swaps it).
* Projections were made as ``tigre.Ax(vol.transpose(2, 1, 0), geo, angles)[:, ::-1, :]``:
  reading flips the rows back, so that ``project(volume_gt, geo)`` (TIGRE's
  conventions) reproduces them; writing flips them again.
* Lengths are kept as written. Their synthetic scenes are unitless (a cube of
  side 2, DSO 5, DSD 7); the toolkit treats the numbers as mm. R2-Gaussian's
  loader rescales everything (and the projections) by ``2 / max(sVoxel)`` when
  training, so a case written in mm trains the same there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.io._files import FormatError, as_path, atomic_folder, check_array, load_npy, save_npy
from nr.io.scan import Scan

META_FILE = "meta_data.json"
VOLUME_FILE = "vol_gt.npy"
_REQUIRED = ("mode", "DSD", "DSO", "nDetector", "nVoxel", "offOrigin", "offDetector", "accuracy")


def is_r2gaussian_case(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def read_r2gaussian_case(
    folder: str | os.PathLike, *, load_volume: bool = True, load_test: bool = True
) -> Scan:
    """Read an R2-Gaussian case folder.

    Args:
        folder: holds meta_data.json and the files it names.
        load_volume: read the ground truth named by "vol" (or "ct", as in their
            real-data cases); a missing file is an error unless this is False.
        load_test: read the "proj_test" views (as test_projections / test_geo).

    Returns:
        Scan with TIGRE-ordered (N, V, U) projections, the (Z, Y, X) volume,
        and metadata {"format": "r2gaussian", "source", "length_unit", "scanner", "bbox"}.
    """
    folder = as_path(folder, "folder")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FormatError(f"{meta_path}: not found; {folder} is not an R2-Gaussian case folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f"{meta_path}: invalid JSON ({error})") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("scanner"), dict):
        raise FormatError(f"{meta_path}: missing the 'scanner' object")
    scanner = meta["scanner"]
    train_angles, train_files = _views(meta, "proj_train", meta_path, required=True)
    geo = geometry_from_scanner(scanner, train_angles, str(meta_path))
    projections = _read_views(folder, train_files, geo)
    test_projections = test_geo = None
    if load_test:
        test_angles, test_files = _views(meta, "proj_test", meta_path, required=False)
        if test_files:
            test_geo = geo.with_angles(test_angles)
            test_projections = _read_views(folder, test_files, test_geo)
    volume = None
    if load_volume:
        name = meta.get("vol", meta.get("ct"))
        if not isinstance(name, str):
            raise FormatError(f"{meta_path}: no 'vol' (or 'ct') entry naming the volume file")
        nx, ny, nz = (int(n) for n in geo.n_voxel[::-1])
        array = load_npy(folder / name, "volume")
        volume = check_array(array, (nx, ny, nz), str(folder / name), "volume (x, y, z)")
        volume = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    metadata = {
        "format": "r2gaussian",
        "source": str(folder),
        "length_unit": "as in meta_data.json (R2-Gaussian's synthetic cases are unitless)",
        "scanner": scanner,
        "bbox": meta.get("bbox"),
    }
    return Scan(projections, geo, volume, test_projections, test_geo, metadata)


def geometry_from_scanner(scanner: dict, angles: np.ndarray, where: str) -> ConeBeamGeometry:
    """A ConeBeamGeometry from R2-Gaussian's "scanner" dict (axis orders: module docstring)."""
    missing = [k for k in _REQUIRED if k not in scanner]
    for size, step in (("sDetector", "dDetector"), ("sVoxel", "dVoxel")):
        if size not in scanner and step not in scanner:
            missing.append(f"{size} or {step}")
    if missing:
        raise FormatError(f"{where}: scanner lacks {missing}")

    def xyz(key: str) -> Any:
        value = scanner.get(key)
        return None if value is None else np.asarray(value, dtype=np.float64)[::-1]

    try:
        off_detector = np.asarray(scanner["offDetector"], dtype=np.float64)
        if off_detector.shape != (2,):
            raise ValueError(f"offDetector: expected (u, v), got {scanner['offDetector']}")
        return ConeBeamGeometry(
            mode=scanner["mode"],
            dso=scanner["DSO"],
            dsd=scanner["DSD"],
            n_voxel=xyz("nVoxel"),
            s_voxel=xyz("sVoxel"),
            d_voxel=xyz("dVoxel"),
            n_detector=scanner["nDetector"],
            s_detector=scanner.get("sDetector"),
            d_detector=scanner.get("dDetector"),
            off_origin=xyz("offOrigin"),
            off_detector=off_detector[::-1],
            accuracy=scanner["accuracy"],
            angles=angles,
        )
    except (TypeError, ValueError) as error:
        raise FormatError(f"{where}: invalid scanner geometry ({error})") from error


def write_r2gaussian_case(
    scan: Scan, folder: str | os.PathLike, *, overwrite: bool = False
) -> None:
    """Write a scan as an R2-Gaussian case folder, atomically.

    Projection files are named like R2-Gaussian's (``proj_train/proj_train_0000.npy``).
    The scan needs `volume_gt` (R2-Gaussian's loader reads it unconditionally);
    detector rotation and COR, which its loader ignores, must be zero. Noise
    settings in ``scan.metadata["noise"]`` ({"i0", "gaussian"}) are recorded
    under R2-Gaussian's keys (``possion_noise`` sic, ``gaussian_noise``).
    """
    if not isinstance(scan, Scan):
        raise TypeError(f"scan: expected a Scan, got {type(scan).__name__}")
    if scan.volume_gt is None:
        raise ValueError("scan.volume_gt: R2-Gaussian cases need the ground-truth volume")
    geo = scan.geo
    if np.any(geo.rot_detector != 0) or geo.cor != 0:
        raise ValueError(
            "scan.geo: R2-Gaussian cases cannot hold rot_detector or cor; both must be zero"
        )
    scanner = scanner_from_geometry(geo, scan.metadata.get("noise"))
    low = np.asarray(scanner["offOrigin"]) - np.asarray(scanner["sVoxel"]) / 2
    meta: dict[str, Any] = {
        "scanner": scanner,
        "vol": VOLUME_FILE,
        "bbox": [low.tolist(), (low + np.asarray(scanner["sVoxel"])).tolist()],
    }
    splits = [("proj_train", scan.projections, geo)]
    if scan.test_projections is not None:
        splits.append(("proj_test", scan.test_projections, scan.test_geo))
    with atomic_folder(as_path(folder, "folder"), overwrite) as temporary:
        volume = scan.volume_gt.detach().cpu().numpy().astype(np.float32).transpose(2, 1, 0)
        save_npy(np.ascontiguousarray(volume), temporary / VOLUME_FILE)
        meta["proj_test"] = []
        for split, projections, split_geo in splits:
            (temporary / split).mkdir()
            entries = []
            views = projections.detach().cpu().numpy().astype(np.float32)
            for i, (view, angle) in enumerate(zip(views, split_geo.angles, strict=True)):
                name = f"{split}/{split}_{i:04d}.npy"
                save_npy(np.ascontiguousarray(view[::-1, :]), temporary / name)
                entries.append({"file_path": name, "angle": float(angle)})
            meta[split] = entries
        (temporary / META_FILE).write_text(json.dumps(meta, indent=4))


def scanner_from_geometry(geo: ConeBeamGeometry, noise: dict | None = None) -> dict[str, Any]:
    """R2-Gaussian's "scanner" dict of a geometry (inverse of `geometry_from_scanner`).

    totalAngle / startAngle (degrees) are informational (views are listed with
    their angles): n * step for equally spaced angles, else their range.
    """
    angles = np.degrees(geo.angles)
    steps = np.diff(angles)
    uniform = steps.size > 0 and np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9)
    total = steps[0] * angles.size if uniform else float(np.ptp(angles))
    scanner: dict[str, Any] = {
        "mode": geo.mode,
        "DSD": geo.dsd,
        "DSO": geo.dso,
        "nDetector": geo.n_detector.tolist(),
        "sDetector": geo.s_detector.tolist(),
        "dDetector": geo.d_detector.tolist(),
        "nVoxel": geo.n_voxel[::-1].tolist(),
        "sVoxel": geo.s_voxel[::-1].tolist(),
        "dVoxel": geo.d_voxel[::-1].tolist(),
        "offOrigin": geo.off_origin[::-1].tolist(),
        "offDetector": geo.off_detector[::-1].tolist(),
        "accuracy": geo.accuracy,
        "totalAngle": float(total),
        "startAngle": float(angles[0]),
        "noise": noise is not None,
        "filter": None,
    }
    if noise is not None:
        scanner["possion_noise"] = noise["i0"]
        scanner["gaussian_noise"] = list(noise["gaussian"])
    return scanner


def _views(meta: dict, split: str, where: Path, required: bool) -> tuple[np.ndarray, list[str]]:
    entries = meta.get(split)
    if entries is None and not required:
        return np.zeros(0), []
    if not isinstance(entries, list) or (required and not entries):
        raise FormatError(f"{where}: '{split}' must be a non-empty list of {{file_path, angle}}")
    angles, files = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "file_path" not in entry or "angle" not in entry:
            raise FormatError(f"{where}: {split}[{i}] lacks 'file_path' or 'angle'")
        angle = entry["angle"]
        if not isinstance(angle, (int, float)) or not math.isfinite(angle):
            raise FormatError(f"{where}: {split}[{i}].angle is not a finite number: {angle!r}")
        angles.append(float(angle))
        files.append(str(entry["file_path"]))
    return np.asarray(angles), files


def _read_views(folder: Path, files: list[str], geo: ConeBeamGeometry) -> torch.Tensor:
    shape = tuple(int(n) for n in geo.n_detector)
    views = np.empty(geo.projection_shape, dtype=np.float32)
    for i, name in enumerate(files):
        path = folder / name
        views[i] = check_array(load_npy(path, "projection"), shape, str(path), "projection (v, u)")
    return torch.from_numpy(np.ascontiguousarray(views[:, ::-1, :]))
