"""Measured sinograms in MATLAB .mat files: the FIPS / HTC (HelTomo) ``CtData`` struct.

The Finnish Inverse Problems Society's open CT datasets (the Helsinki Tomography Challenge
2022, the 2D fan-beam scans) store one struct (``CtDataFull``, ``CtDataLimited``,
``CtData``, ...) made by the HelTomo toolbox's ``create_ct_project``:

    CtData.type         '2D' or '3D'
    CtData.sinogram     2D: (views, columns); 3D: (columns, views, rows) (ASTRA's layout)
                        already log-transformed line integrals
    CtData.parameters   distanceSourceDetector, distanceSourceOrigin (mm), angles (degrees),
                        geometricMagnification, effectivePixelSizePost (mm at the axis),
                        pixelSizePost / pixelSize (mm at the detector), ...

A file with top-level ``sinogram`` (views, columns) and optional ``parameters`` variables
is read the same way. Geometry: HelTomo builds ASTRA ``fanflat`` / ``cone`` geometries,
whose source sits at ``DSO (sin t, -cos t)`` and whose detector u runs along
``(cos t, sin t)``; TIGRE's source sits at ``DSO (cos a, sin a)`` with u along
``(-sin a, cos a)``, so ``a = t - 90 degrees`` with the same column order. (Derived from the
two conventions, not checked against a FIPS file here.) The rotation axis is not recorded
(the HTC data were corrected for it): ``--center auto`` estimates any residual offset.
Files saved with ``-v7.3`` are HDF5 and are not read: re-save them with ``-v7``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from nr.io._files import FormatError, as_path
from nr.io.measured import (
    DEFAULT_FLOOR,
    Acquisition,
    as_acquisition,
    log_normalize,
    measured_scan,
    normalization_record,
)
from nr.io.scan import Scan

# HelTomo's ASTRA angle t and TIGRE's angle a: a = t - 90 degrees (module docstring).
ASTRA_TO_TIGRE_DEG = -90.0


def read_matlab(
    path: str | os.PathLike,
    acquisition: Acquisition | str | os.PathLike | None = None,
    floor: float = DEFAULT_FLOOR,
) -> Scan:
    """Read a FIPS/HTC-style .mat sinogram as a `Scan` of line integrals.

    Args:
        path: the .mat file (MATLAB v4-v7.2).
        acquisition: what the file lacks or gets wrong; overrides the file's parameters.
        floor: smallest transmission before -log, when ``values`` says the sinogram holds
            transmissions (`nr.io.measured.log_normalize`).

    Returns:
        A fan-beam (2D sinogram) or cone-beam (3D) Scan.

    Raises:
        FormatError: unreadable file, no sinogram, wrong dimensions, NaN.
        MissingGeometryError: a needed number is missing (which, and how to give it).
    """
    import scipy.io

    path = as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        contents = scipy.io.loadmat(path, simplify_cells=True)
    except NotImplementedError as error:
        raise FormatError(
            f"{path}: a MATLAB v7.3 (HDF5) file; re-save it in MATLAB with "
            "save(name, '-struct', ..., '-v7') or export the sinogram to a TIFF folder"
        ) from error
    except (scipy.io.matlab.MatReadError, ValueError, OSError, TypeError) as error:
        raise FormatError(f"{path}: cannot read the .mat file ({error})") from error
    name, struct = _find_struct(contents, path)
    sinogram = np.asarray(struct["sinogram"])
    kind = str(struct.get("type", "2D" if sinogram.ndim == 2 else "3D")).upper()
    if sinogram.ndim == 2 and kind == "2D":
        projections = sinogram[:, None, :]
    elif sinogram.ndim == 3 and kind == "3D":
        projections = np.transpose(sinogram, (1, 2, 0))
    else:
        raise FormatError(
            f"{path}: {name}.sinogram has shape {sinogram.shape} for type {kind!r}; expected "
            "(views, columns) for '2D' or (columns, views, rows) for '3D'"
        )
    parameters = struct.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, Mapping):
        raise FormatError(f"{path}: {name}.parameters is not a struct")
    base = _from_parameters(parameters, projections.shape[1], path, name)
    acq = as_acquisition(acquisition).over(base)
    line_integrals, record = log_normalize(
        projections, values=acq.values or "line_integrals", floor=floor, where=str(path)
    )
    return measured_scan(
        line_integrals,
        acq,
        str(path),
        {
            "format": "matlab",
            "file": str(path),
            "variable": name,
            "normalization": normalization_record(record),
        },
    )


def _find_struct(contents: Mapping[str, Any], path) -> tuple[str, Mapping[str, Any]]:
    variables = {k: v for k, v in contents.items() if not k.startswith("__")}
    for name, value in variables.items():
        if isinstance(value, Mapping) and "sinogram" in value:
            return name, value
    if "sinogram" in variables:
        return "", {"sinogram": variables["sinogram"], "parameters": variables.get("parameters")}
    raise FormatError(
        f"{path}: no sinogram (a struct with a 'sinogram' field, or a 'sinogram' variable); "
        f"variables: {sorted(variables)}"
    )


def _from_parameters(parameters: Mapping[str, Any], n_rows: int, path, name: str) -> Acquisition:
    """The Acquisition HelTomo's parameter names give (missing ones stay None)."""

    def number(key: str) -> float | None:
        if key not in parameters:
            return None
        value = np.asarray(parameters[key], dtype=np.float64).reshape(-1)
        if value.size != 1 or not np.isfinite(value[0]):
            raise FormatError(f"{path}: {name}.parameters.{key} must be one finite number")
        return float(value[0])

    fields: dict[str, Any] = {"mode": "fan" if n_rows == 1 else "cone"}
    fields["values"] = "line_integrals"
    fields["dso"] = number("distanceSourceOrigin")
    fields["dsd"] = number("distanceSourceDetector")
    magnification = number("geometricMagnification")
    effective = number("effectivePixelSizePost") or number("effectivePixelSize")
    if effective is not None and magnification is not None:
        fields["pixel_size"] = effective * magnification
    else:
        fields["pixel_size"] = number("pixelSizePost") or number("pixelSize")
    if "angles" in parameters:
        angles = np.asarray(parameters["angles"], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(angles)):
            raise FormatError(f"{path}: {name}.parameters.angles contains NaN or inf")
        fields["angles_deg"] = tuple(angles + ASTRA_TO_TIGRE_DEG)
    try:
        return Acquisition(**{k: v for k, v in fields.items() if v is not None})
    except (TypeError, ValueError) as error:
        raise FormatError(f"{path}: {name}.parameters: {error}") from error
