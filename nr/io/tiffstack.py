"""Measured projections as a folder of TIFF images plus a geometry JSON file.

Layout (names are matched case-insensitively, sorted in natural order: ``p2`` before
``p10``)::

    folder/
      geometry.json          the `Acquisition` (mode, pixel_size, dso, dsd, angles, ...)
      flat*.tif, white*.tif, bright*.tif   open-beam images (optional)
      dark*.tif              dark images (optional)
      *.tif / *.tiff         every other TIFF: the projections, one view per page

A file may hold one image or a stack of pages (tifffile reads both). Without flats the
values must be declared (``"values": "transmission"`` or ``"line_integrals"``). The
geometry file may also live elsewhere: pass it as `acquisition` (``--geometry FILE``).
Rows are stored top row first (image convention) and reversed into TIGRE's order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from nr.io._files import FormatError, as_path
from nr.io.measured import (
    DEFAULT_FLOOR,
    Acquisition,
    MissingGeometryError,
    as_acquisition,
    log_normalize,
    measured_scan,
    normalization_record,
)
from nr.io.scan import Scan

TIFF_SUFFIXES = (".tif", ".tiff")
GEOMETRY_FILE = "geometry.json"
FLAT_PREFIXES = ("flat", "white", "bright")
DARK_PREFIXES = ("dark",)


def is_tiff_folder(path: os.PathLike) -> bool:
    """Whether `path` is a folder holding TIFF images (and no toolkit scan arrays)."""
    path = as_path(path)
    return (
        path.is_dir()
        and not (path / "projections.npy").exists()
        and any(p.suffix.lower() in TIFF_SUFFIXES for p in path.iterdir())
    )


def read_tiff_folder(
    folder: str | os.PathLike,
    acquisition: Acquisition | str | os.PathLike | None = None,
    floor: float = DEFAULT_FLOOR,
) -> Scan:
    """Read a folder of TIFF projections (and flats/darks) as a `Scan` of line integrals.

    Args:
        folder: the folder (module docstring).
        acquisition: the geometry (`Acquisition`, a mapping or a JSON path); overrides
            ``folder/geometry.json`` key by key when both exist.
        floor: smallest transmission before -log (`nr.io.measured.log_normalize`).

    Returns:
        A Scan; metadata records the files, the normalisation and the geometry's sources.

    Raises:
        FormatError: no projections, unreadable files, images of different shapes, NaN.
        MissingGeometryError: no geometry file, or a needed number is missing.
    """
    folder = as_path(folder, "folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    base = Acquisition()
    if (folder / GEOMETRY_FILE).is_file():
        base = Acquisition.from_json(folder / GEOMETRY_FILE)
    elif acquisition is None:
        raise MissingGeometryError(
            f"{folder}: no {GEOMETRY_FILE}; TIFF images carry no geometry: put a geometry "
            f"JSON file there (keys: mode, pixel_size, dso, dsd, angular_range_deg, ...; "
            "docs/formats.md) or pass it with --geometry FILE"
        )
    acq = as_acquisition(acquisition).over(base)
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
        key=_natural_key,
    )
    flats = [p for p in files if p.name.lower().startswith(FLAT_PREFIXES)]
    darks = [p for p in files if p.name.lower().startswith(DARK_PREFIXES)]
    projections = [p for p in files if p not in flats and p not in darks]
    if not projections:
        raise FormatError(f"{folder}: no projection TIFFs (only flats or darks)")
    data = _stack(projections)
    flat = _stack(flats) if flats else None
    dark = _stack(darks) if darks else None
    values = acq.values or ("counts" if flat is not None else None)
    if values is None:
        raise FormatError(
            f"{folder}: no flat-field TIFFs (flat*.tif), so the values cannot be normalised; "
            f'say what they are ("values": "transmission" or "line_integrals") in '
            f"{GEOMETRY_FILE}"
        )
    line_integrals, record = log_normalize(data, flat, dark, values, floor, where=str(folder))
    return measured_scan(
        line_integrals,
        acq,
        str(folder),
        {
            "format": "tiff_folder",
            "file": str(folder),
            "projection_files": len(projections),
            "flat_files": len(flats),
            "dark_files": len(darks),
            "normalization": normalization_record(record),
        },
    )


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower())]


def _stack(paths: list[Path]) -> np.ndarray:
    """(N, V, U) images of `paths`, pages of every file in order."""
    import tifffile

    images = []
    for path in paths:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, array = series.axes, np.asarray(series.asarray())
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as error:
            raise FormatError(f"{path}: cannot read the TIFF ({error})") from error
        if "S" in axes:
            raise FormatError(f"{path}: a colour image (axes {axes}); expected grey images")
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise FormatError(
                f"{path}: expected a grey image or a stack of them, got shape {array.shape}"
            )
        if images and array.shape[1:] != images[0].shape[1:]:
            raise FormatError(
                f"{path}: images of shape {array.shape[1:]}, but {paths[0].name} has "
                f"{images[0].shape[1:]}"
            )
        images.append(array)
    return np.concatenate(images, axis=0)
