"""Measured projections in HDF5: Data Exchange (APS, tomopy/dxchange) and NeXus NXtomo.

Data Exchange (the datasets tomopy's ``dxchange.read_aps_32id`` reads)::

    /exchange/data        (N, V, U) projections, counts (or (N, U) for one row)
    /exchange/data_white  (F, V, U) flat fields (open beam), optional
    /exchange/data_dark   (D, V, U) dark fields, optional
    /exchange/theta       (N,) angles, attribute units "degrees" (default) or "radians"
    /measurement/instrument/detector/x_pixel_size, y_pixel_size   optional, attribute units

NeXus NXtomo (the first top-level group with ``instrument/detector/image_key``)::

    /entry/instrument/detector/data       (M, V, U) every image, counts
    /entry/instrument/detector/image_key  (M,) 0 projection, 1 flat, 2 dark, 3 invalid
    /entry/sample/rotation_angle          (M,) degrees (or its units attribute)
    /entry/instrument/detector/x_pixel_size, y_pixel_size   optional, attribute units

Both are parallel-beam (synchrotron) formats: the mode defaults to "parallel"; fan or cone
beams need mode, pixel size and distances in a geometry JSON file (`Acquisition`). Rows
are stored top row first (image convention) and are reversed into TIGRE's order.
"""

from __future__ import annotations

import os

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

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
# Length units of pixel-size attributes, in mm.
_UNITS_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimeters": 1.0,
    "um": 1e-3,
    "µm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "micrometers": 1e-3,
    "m": 1e3,
    "meter": 1e3,
    "meters": 1e3,
    "cm": 10.0,
    "nm": 1e-6,
}


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency
        raise ImportError(
            "reading HDF5 needs h5py: `pip install h5py` (a dependency of this package)"
        ) from error
    return h5py


def is_hdf5_file(path: os.PathLike) -> bool:
    """Whether `path` is an HDF5 file (by its signature, not its name)."""
    path = as_path(path)
    return path.is_file() and _h5py().is_hdf5(path)


def read_data_exchange(
    path: str | os.PathLike,
    acquisition: Acquisition | str | os.PathLike | None = None,
    floor: float = DEFAULT_FLOOR,
) -> Scan:
    """Read a Data Exchange or NeXus NXtomo HDF5 file as a `Scan` of line integrals.

    Args:
        path: the .h5 / .hdf5 / .nxs file.
        acquisition: what the file lacks or gets wrong (`Acquisition`, a mapping or a
            geometry JSON path); its values override the file's.
        floor: smallest transmission before -log (`nr.io.measured.log_normalize`).

    Returns:
        A Scan (parallel beam unless `acquisition` says otherwise); metadata records the
        format, the file, the flat/dark normalisation (clipped counts) and the geometry's
        sources.

    Raises:
        FormatError: not HDF5, no projections, mismatched shapes, NaN values.
        MissingGeometryError: a number the geometry needs is missing (the message says
            which and how to give it).
    """
    path = as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    h5py = _h5py()
    user = as_acquisition(acquisition)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise FormatError(f"{path}: cannot read it as HDF5 ({error})") from error
    with handle:
        if "exchange/data" in handle:
            layout, (fields, images) = "data_exchange", _data_exchange(handle, path)
        else:
            entry = _nxtomo_entry(handle)
            if entry is None:
                names: list[str] = []
                handle.visit(lambda name: names.append(name) if len(names) < 12 else None)
                raise FormatError(
                    f"{path}: no Data Exchange projections (/exchange/data) and no NeXus "
                    f"NXtomo entry (<entry>/instrument/detector/data + image_key); found {names}"
                )
            layout, (fields, images) = "nxtomo", _nxtomo(handle[entry], path, entry)
    data, flat, dark = images
    values = user.values or ("counts" if flat is not None else None)
    if values is None:
        raise FormatError(
            f"{path}: no flat field in the file, so the values cannot be normalised; say what "
            'they are ("values": "transmission" or "line_integrals") in a geometry JSON file '
            "(--geometry FILE)"
        )
    line_integrals, record = log_normalize(data, flat, dark, values, floor, where=str(path))
    base = Acquisition(mode="parallel", values=values, **fields)
    return measured_scan(
        line_integrals,
        user.over(base),
        str(path),
        {
            "format": layout,
            "file": str(path),
            "normalization": normalization_record(record),
        },
    )


# ------------------------------------------------------------ layouts
def _data_exchange(handle, path) -> tuple[dict, tuple]:
    data = _images(handle["exchange/data"], path, "/exchange/data")
    flat = _optional(handle, "exchange/data_white", path)
    dark = _optional(handle, "exchange/data_dark", path)
    fields: dict = {}
    if "exchange/theta" in handle:
        fields["angles_deg"] = _degrees(handle["exchange/theta"], path, "/exchange/theta")
    size = _pixel_size(handle, "measurement/instrument/detector", path)
    if size is not None:
        fields["pixel_size"] = size
    return fields, (data, flat, dark)


def _nxtomo_entry(handle) -> str | None:
    for name, item in handle.items():
        if hasattr(item, "keys") and "instrument/detector/image_key" in item:
            return name
    return None


def _nxtomo(group, path, entry: str) -> tuple[dict, tuple]:
    where = f"/{entry}/instrument/detector"
    if "instrument/detector/data" not in group:
        raise FormatError(f"{path}: {where}/data is missing")
    images = _images(group["instrument/detector/data"], path, f"{where}/data")
    keys = np.asarray(group["instrument/detector/image_key"][()]).reshape(-1)
    if keys.size != images.shape[0]:
        raise FormatError(
            f"{path}: {where}/image_key has {keys.size} entries for {images.shape[0]} images"
        )
    data = images[keys == 0]
    if data.shape[0] == 0:
        raise FormatError(f"{path}: {where}/image_key marks no image as a projection (0)")
    flat = images[keys == 1] if np.any(keys == 1) else None
    dark = images[keys == 2] if np.any(keys == 2) else None
    fields: dict = {}
    if "sample/rotation_angle" in group:
        angles = _degrees(group["sample/rotation_angle"], path, f"/{entry}/sample/rotation_angle")
        if len(angles) != keys.size:
            raise FormatError(
                f"{path}: /{entry}/sample/rotation_angle has {len(angles)} entries for "
                f"{keys.size} images"
            )
        fields["angles_deg"] = tuple(np.asarray(angles)[keys == 0])
    size = _pixel_size(group, "instrument/detector", path)
    if size is not None:
        fields["pixel_size"] = size
    return fields, (data, flat, dark)


# ------------------------------------------------------------ datasets
def _images(dataset, path, name: str) -> np.ndarray:
    if not hasattr(dataset, "shape"):
        raise FormatError(f"{path}: {name} is a group, expected a dataset")
    array = np.asarray(dataset[()])
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3:
        raise FormatError(f"{path}: {name} has shape {array.shape}, expected (N, V, U)")
    return array


def _optional(handle, name: str, path) -> np.ndarray | None:
    if name not in handle:
        return None
    return _images(handle[name], path, "/" + name)


def _degrees(dataset, path, name: str) -> tuple[float, ...]:
    values = np.asarray(dataset[()], dtype=np.float64).reshape(-1)
    units = _text(dataset.attrs.get("units", "degrees")).lower()
    if units in ("rad", "radian", "radians"):
        values = np.rad2deg(values)
    elif units not in ("deg", "degree", "degrees"):
        raise FormatError(f"{path}: {name} has units {units!r}, expected degrees or radians")
    if not np.all(np.isfinite(values)):
        raise FormatError(f"{path}: {name} contains NaN or infinite values")
    return tuple(float(v) for v in values)


def _pixel_size(handle, group: str, path) -> tuple[float, float] | None:
    """(v, u) pixel size in mm from ``y_pixel_size`` and ``x_pixel_size``, when both exist."""
    names = (f"{group}/y_pixel_size", f"{group}/x_pixel_size")
    if not all(name in handle for name in names):
        return None
    sizes = []
    for name in names:
        dataset = handle[name]
        value = float(np.asarray(dataset[()], dtype=np.float64).reshape(-1)[0])
        units = _text(dataset.attrs.get("units", "")).lower()
        if units not in _UNITS_MM:
            raise MissingGeometryError(
                f"{path}: /{name} = {value} has no known length unit (units attribute "
                f"{units!r}); give the pixel size in mm in a geometry JSON file "
                '({"pixel_size": ...}; command line: --geometry FILE)'
            )
        if not (np.isfinite(value) and value > 0):
            raise FormatError(f"{path}: /{name} must be a positive number, got {value}")
        sizes.append(value * _UNITS_MM[units])
    return sizes[0], sizes[1]


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _text(value.reshape(-1)[0]) if value.size else ""
    return str(value)
