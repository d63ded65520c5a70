"""Measured projections: what a scanner's files leave out, flat/dark correction, and the geometry.

The readers of measured data (`nr.io.dxchange`, `nr.io.tiffstack`, `nr.io.matlab`) share
three steps, all here:

1. `Acquisition`: the numbers a file may not hold (pixel size, distances, angles, rotation
   axis, what the pixel values are), given by the user as a geometry JSON file
   (`Acquisition.from_json`, ``--geometry FILE`` on the command line) or in code. Values the
   user gives override the file's.
2. `log_normalize`: raw counts to line integrals, ``-log((I - D) / (F - D))`` with the mean
   flat F and mean dark D; transmissions at or below a floor (zero or negative counts after
   the dark is subtracted, or pixels whose flat is not above their dark) are set to the floor
   and counted, never dropped silently.
3. `measured_scan`: the `Scan`, with the `ConeBeamGeometry` in TIGRE's conventions
   (docs/geometry.md) and a metadata record of every choice made.

Geometries: "parallel" (synchrotron), "fan" (a cone beam with one detector row: one slice)
and "cone" (3D). Parallel-beam scans without a pixel size are reconstructed in pixel units
(the pixel size only scales the attenuation values); fan and cone scans need the pixel size
and both distances, and a reader that lacks one raises `MissingGeometryError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.io._files import FormatError, as_path
from nr.io.scan import Scan

LOG = logging.getLogger("nr")

MODES = ("parallel", "fan", "cone")
VALUES = ("counts", "transmission", "line_integrals")
# The smallest transmission -log is taken of (line integral at most -log(1e-6) = 13.8).
DEFAULT_FLOOR = 1e-6
GEOMETRY_REMEDY = (
    'give it in a geometry JSON file (e.g. {{"{key}": ...}}; command line: --geometry FILE; '
    'docs/formats.md, "Bringing your scanner\'s data") or as Acquisition({key}=...)'
)


# Fields that say the same thing two ways: a user's value for one replaces the file's group.
_ALTERNATIVES = (
    ("angles_deg", "angular_range_deg", "start_angle_deg"),
    ("center_offset", "axis_column"),
)


class MissingGeometryError(FormatError):
    """A number the geometry needs is neither in the file nor given; the message says how."""


@dataclass(frozen=True)
class Acquisition:
    """What a measured scan's files may leave out; every field is optional.

    The JSON form (`from_json`) uses the field names as keys.

    Attributes:
        mode: "parallel", "fan" (cone beam, one detector row) or "cone"; None: the
            reader's default (parallel for Data Exchange / NeXus, the file's for MATLAB).
        pixel_size: detector pixel pitch at the detector, mm: one number (square
            pixels) or [v, u]. Parallel scans without it use pixel units (1.0).
        dso: source to rotation axis, mm (fan and cone).
        dsd: source to detector, mm (fan and cone); must exceed dso.
        center_offset: TIGRE's detector offset along u in pixels, ``n_u/2 - 0.5 - c``
            with c the column (after `flip_u`) where the rotation axis projects.
        axis_column: c itself, 0-based in the file's column order (the alternative to
            `center_offset`; give at most one of them).
        offset_v: detector offset along v in pixels (TIGRE's off_detector[0] / d_v).
        angles_deg: (N,) view angles in degrees, one per projection.
        angular_range_deg: evenly spaced angles ``start + range * i / N`` (endpoint
            excluded) instead of `angles_deg`.
        start_angle_deg: the first angle with `angular_range_deg` (default 0).
        flip_u: reverse the detector columns (a detector whose u runs towards -y in TIGRE's
            frame; for fan and cone beams that is the same as reversing the rotation).
        flip_v: the files store the top detector row first (image convention, the default
            True): rows are reversed into TIGRE's order (row 0 at the lowest z).
        values: what the pixels hold: "counts" (needs flat fields), "transmission" (I / I0)
            or "line_integrals" (-log already taken); None: the reader decides.
        voxels: reconstruction grid side along x and y (default: the detector columns).
        slices: voxels along z (default: the detector rows).
        voxel_size: mm (default: pixel size / magnification, i.e. the pixel at the axis).
    """

    mode: str | None = None
    pixel_size: float | Sequence[float] | None = None
    dso: float | None = None
    dsd: float | None = None
    center_offset: float | None = None
    axis_column: float | None = None
    offset_v: float | None = None
    angles_deg: Sequence[float] | None = None
    angular_range_deg: float | None = None
    start_angle_deg: float | None = None
    flip_u: bool | None = None
    flip_v: bool | None = None
    values: str | None = None
    voxels: int | None = None
    slices: int | None = None
    voxel_size: float | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.values is not None and self.values not in VALUES:
            raise ValueError(f"values: expected one of {VALUES}, got {self.values!r}")
        if self.pixel_size is not None:
            size = np.asarray(self.pixel_size, dtype=np.float64).reshape(-1)
            if size.size not in (1, 2) or not np.all(np.isfinite(size)) or np.any(size <= 0):
                raise ValueError(
                    "pixel_size: expected one or two positive numbers (mm), got "
                    f"{self.pixel_size!r}"
                )
            object.__setattr__(self, "pixel_size", tuple(float(s) for s in size))
        for name in ("dso", "dsd", "voxel_size"):
            _number(name, getattr(self, name), positive=True)
        for name in (
            "center_offset",
            "axis_column",
            "offset_v",
            "angular_range_deg",
            "start_angle_deg",
        ):
            _number(name, getattr(self, name))
        for name in ("voxels", "slices"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("flip_u", "flip_v"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{name}: expected true or false, got {value!r}")
        if self.center_offset is not None and self.axis_column is not None:
            raise ValueError("center_offset, axis_column: give at most one of them")
        if self.angles_deg is not None and self.angular_range_deg is not None:
            raise ValueError("angles_deg, angular_range_deg: give at most one of them")
        if self.angles_deg is not None:
            angles = np.asarray(self.angles_deg, dtype=np.float64)
            if angles.ndim != 1 or angles.size == 0 or not np.all(np.isfinite(angles)):
                raise ValueError("angles_deg: expected a non-empty list of finite degrees")
            object.__setattr__(self, "angles_deg", tuple(float(a) for a in angles))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "geometry") -> Acquisition:
        """Build from a mapping of field names; unknown keys are an error naming `where`."""
        if not isinstance(data, Mapping):
            raise FormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as error:
            raise FormatError(f"{where}: {error}") from error

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Acquisition:
        """Read a geometry JSON file (keys: the field names)."""
        path = as_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: geometry file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FormatError(f"{path}: invalid JSON ({error})") from error
        return cls.from_dict(data, str(path))

    def over(self, base: Acquisition) -> Acquisition:
        """This acquisition's values where given, `base`'s elsewhere. Alternatives replace
        each other: angles given either way replace the base's angles, and a
        `center_offset` or `axis_column` replaces the base's rotation axis."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        given = {k: v for k, v in given.items() if v is not None}
        for group in _ALTERNATIVES:
            if given.keys() & set(group):
                base = dataclasses.replace(base, **dict.fromkeys(group))
        return dataclasses.replace(base, **given)


def as_acquisition(value: Acquisition | Mapping | str | os.PathLike | None) -> Acquisition:
    """An `Acquisition` from itself, a mapping, a JSON file path, or None (nothing given)."""
    if value is None:
        return Acquisition()
    if isinstance(value, Acquisition):
        return value
    if isinstance(value, Mapping):
        return Acquisition.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return Acquisition.from_json(value)
    raise TypeError(
        "acquisition: expected an Acquisition, a mapping or a JSON path, got "
        f"{type(value).__name__}"
    )


@dataclass(frozen=True)
class Normalization:
    """What `log_normalize` did; stored in ``Scan.metadata["normalization"]``.

    Attributes:
        values: what the input held ("counts", "transmission" or "line_integrals").
        floor: the smallest transmission kept.
        clipped: values whose transmission was at or below `floor` (zero or negative
            counts after the dark is subtracted, dead pixels) and was set to it.
        total: values processed.
        dead_pixels: detector pixels whose mean flat is not above their mean dark.
        above_one: transmissions above 1 (negative line integrals: noise, flat drift); kept.
        flats: flat-field images averaged.
        darks: dark-field images averaged.
    """

    values: str
    floor: float
    clipped: int = 0
    total: int = 0
    dead_pixels: int = 0
    above_one: int = 0
    flats: int = 0
    darks: int = 0


def log_normalize(
    data: np.ndarray,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    values: str = "counts",
    floor: float = DEFAULT_FLOOR,
    where: str = "data",
) -> tuple[np.ndarray, Normalization]:
    """Line integrals from measured values, with zero and negative counts clipped and counted.

    Args:
        data: (N, V, U) real values: counts, transmissions or line integrals.
        flat: (F, V, U) or (V, U) open-beam counts; required for "counts".
        dark: (D, V, U) or (V, U) dark counts; zeros when None.
        values: "counts" (``T = (data - dark) / (flat - dark)`` with the mean flat and
            dark), "transmission" (T = data) or "line_integrals" (returned as they are).
        floor: transmissions at or below it are set to it before ``-log``.
        where: the file (or dataset) named in the messages.

    Returns:
        (N, V, U) float32 line integrals and the `Normalization` record.

    Raises:
        FormatError: NaN or infinite values, shapes that do not match, or counts without
            a flat field.
    """
    if values not in VALUES:
        raise ValueError(f"values: expected one of {VALUES}, got {values!r}")
    if not (isinstance(floor, (int, float)) and 0 < floor < 1):
        raise ValueError(f"floor: expected a number in (0, 1), got {floor!r}")
    data = _real_array(data, f"{where}: projections", 3)
    if values == "line_integrals":
        record = Normalization(values, float(floor), total=int(data.size))
        return data.astype(np.float32), record
    mean_flat = mean_dark = None
    n_flats = n_darks = 0
    if values == "counts":
        if flat is None:
            raise FormatError(
                f"{where}: the projections are raw counts but there is no flat field; add "
                'the flats, or say what the values are ("values": "transmission" or '
                '"line_integrals" in a geometry JSON file, --geometry FILE)'
            )
        mean_flat, n_flats = _mean_field(flat, data.shape[1:], f"{where}: flat field")
        mean_dark = np.zeros_like(mean_flat)
        if dark is not None:
            mean_dark, n_darks = _mean_field(dark, data.shape[1:], f"{where}: dark field")
        denominator = mean_flat - mean_dark
        dead = denominator <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            transmission = (data - mean_dark) / np.where(dead, 1.0, denominator)
        transmission[:, dead] = 0.0
    else:
        dead = np.zeros(data.shape[1:], dtype=bool)
        transmission = data
    low = transmission <= floor
    record = Normalization(
        values=values,
        floor=float(floor),
        clipped=int(low.sum()),
        total=int(data.size),
        dead_pixels=int(dead.sum()),
        above_one=int((transmission > 1).sum()),
        flats=n_flats,
        darks=n_darks,
    )
    if record.clipped:
        LOG.warning(
            "%s: %d of %d transmissions were <= %g (zero or negative counts after the dark, "
            "%d dead detector pixels); set to %g before -log",
            where,
            record.clipped,
            record.total,
            floor,
            record.dead_pixels,
            floor,
        )
    line_integrals = -np.log(np.maximum(transmission, floor))
    return line_integrals.astype(np.float32), record


def measured_scan(
    projections: np.ndarray,
    acquisition: Acquisition,
    where: str,
    metadata: Mapping[str, Any],
) -> Scan:
    """The `Scan` of measured line integrals, its geometry built from `acquisition`.

    Args:
        projections: (N, V, U) float32 line integrals in the files' row and column order.
        acquisition: everything known about the scan (file values overlaid with the user's);
            `mode` must be set; `flip_u` and `flip_v` are applied here.
        where: the file, for the messages.
        metadata: facts about the source, recorded in the scan's metadata.

    Returns:
        A Scan with ``metadata["measured"] = True`` and ``metadata["center"]`` saying
        where the rotation axis came from ("file or geometry", or "unknown": offset 0).

    Raises:
        MissingGeometryError: a number the geometry needs is missing.
        FormatError: the number of angles differs from the number of projections.
    """
    projections = _real_array(projections, f"{where}: projections", 3)
    n_views, n_v, n_u = projections.shape
    acq = acquisition
    if acq.mode is None:
        raise MissingGeometryError(
            f"{where}: the beam geometry (mode: parallel, fan or cone) is unknown; "
            + GEOMETRY_REMEDY.format(key="mode")
        )
    if acq.mode == "fan" and n_v != 1:
        raise FormatError(
            f"{where}: mode 'fan' needs one detector row, the projections have {n_v} "
            "(use mode 'cone')"
        )
    angles = _angles(acq, n_views, where)
    if acq.flip_v is not False:
        projections = projections[:, ::-1, :]
    if acq.flip_u:
        projections = projections[:, :, ::-1]
    length_unit = "mm"
    if acq.pixel_size is None:
        if acq.mode != "parallel":
            raise MissingGeometryError(
                f"{where}: the detector pixel size is not in the file; "
                + GEOMETRY_REMEDY.format(key="pixel_size")
            )
        length_unit = "pixel"
        LOG.warning("%s: no pixel size; lengths are in detector pixels", where)
    d_v, d_u = (1.0, 1.0) if acq.pixel_size is None else _pair(acq.pixel_size)
    magnification = 1.0
    if acq.mode != "parallel":
        for key in ("dso", "dsd"):
            if getattr(acq, key) is None:
                what = "source-to-axis" if key == "dso" else "source-to-detector"
                raise MissingGeometryError(
                    f"{where}: the {what} distance ({key}, mm) is not in the file; "
                    + GEOMETRY_REMEDY.format(key=key)
                )
        if acq.dsd <= acq.dso:
            raise FormatError(f"{where}: dsd ({acq.dsd} mm) must exceed dso ({acq.dso} mm)")
        magnification = acq.dsd / acq.dso
    center_known = acq.center_offset is not None or acq.axis_column is not None
    offset_u = 0.0 if acq.center_offset is None else acq.center_offset
    if acq.axis_column is not None:
        column = (n_u - 1 - acq.axis_column) if acq.flip_u else acq.axis_column
        offset_u = n_u / 2 - 0.5 - column
    offset_v = 0.0 if acq.offset_v is None else acq.offset_v
    voxel = acq.voxel_size or d_u / magnification
    n_xy = acq.voxels or n_u
    n_z = acq.slices or n_v
    d_z = acq.voxel_size or d_v / magnification
    if acq.mode == "parallel":
        # The virtual source plane of parallel rays must lie outside the volume.
        extent = max(n_xy * voxel, n_z * d_z, n_u * d_u, n_v * d_v)
        dso, dsd = 2.0 * extent, 4.0 * extent
    else:
        dso, dsd = acq.dso, acq.dsd
    geo = ConeBeamGeometry(
        mode="parallel" if acq.mode == "parallel" else "cone",
        dso=dso,
        dsd=dsd,
        n_voxel=(n_z, n_xy, n_xy),
        d_voxel=(d_z, voxel, voxel),
        n_detector=(n_v, n_u),
        d_detector=(d_v, d_u),
        off_detector=(offset_v * d_v, offset_u * d_u),
        angles=angles,
    )
    record = dict(metadata)
    record.update(
        measured=True,
        mode=acq.mode,
        length_unit=length_unit,
        center={
            "source": "file or geometry" if center_known else "unknown",
            "offset_px": float(offset_u),
        },
        flip_u=bool(acq.flip_u),
        flip_v=acq.flip_v is not False,
    )
    tensor = torch.from_numpy(np.ascontiguousarray(projections, dtype=np.float32))
    return Scan(tensor, geo, metadata=record)


def normalization_record(record: Normalization) -> dict[str, Any]:
    """`Normalization` as a JSON-serialisable dict."""
    return dataclasses.asdict(record)


# ------------------------------------------------------------ helpers
def _number(name: str, value: object, positive: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def _pair(size: Sequence[float]) -> tuple[float, float]:
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _real_array(array: object, what: str, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise FormatError(f"{what}: expected real numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise FormatError(f"{what}: expected {ndim} dimensions, got shape {array.shape}")
    if array.size == 0:
        raise FormatError(f"{what}: empty array of shape {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise FormatError(f"{what}: contains NaN or infinite values")
    return array


def _mean_field(field: np.ndarray, shape: tuple[int, int], what: str) -> tuple[np.ndarray, int]:
    field = np.asarray(field)
    if field.ndim == 2:
        field = field[None]
    field = _real_array(field, what, 3)
    if field.shape[1:] != tuple(shape):
        raise FormatError(
            f"{what}: images of shape {field.shape[1:]} do not match the projections' "
            f"{tuple(shape)}"
        )
    return field.mean(axis=0), int(field.shape[0])


def _angles(acq: Acquisition, n_views: int, where: str) -> np.ndarray:
    if acq.angles_deg is not None:
        degrees = np.asarray(acq.angles_deg, dtype=np.float64)
    elif acq.angular_range_deg is not None:
        start = acq.start_angle_deg or 0.0
        degrees = start + acq.angular_range_deg * np.arange(n_views) / n_views
    else:
        raise MissingGeometryError(
            f"{where}: the view angles are not in the file; "
            + GEOMETRY_REMEDY.format(key="angular_range_deg")
        )
    if degrees.size != n_views:
        raise FormatError(f"{where}: {degrees.size} angles for {n_views} projections")
    return np.deg2rad(degrees)
