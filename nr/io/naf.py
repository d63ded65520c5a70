"""NAF / TIGRE-style pickles (Ruyi-Zha/naf_cbct dataGenerator/generateData.py): read into a `Scan`.

The pickle is a dict: the scanner config in mm (DSD, DSO, nDetector,
dDetector, nVoxel, dVoxel, offOrigin, offDetector, accuracy, mode, filter,
totalAngle, startAngle, ...), ``image`` (the ground truth, indexed (x, y, z))
and ``train`` / ``val`` = {"angles": (N,) radians, "projections": (N, V, U)}.

Conventions, from NAF's generator (docs/formats.md has the lines):

* nVoxel, dVoxel and offOrigin are (x, y, z) and reversed for TIGRE;
  nDetector and dDetector are (v, u); offDetector is (u, v) and swapped.
* Projections are ``tigre.Ax(image.transpose(2, 1, 0), geo, angles)[:, ::-1, :]``
  computed with every length divided by 1000, i.e. in metres: a projection
  value is the line integral of ``image`` over metres. R2-Gaussian's
  ``readNAFInfo`` therefore divides the mm values by 1000 and keeps the
  projections. Here ``length_unit`` chooses: "mm" (default) keeps the mm
  geometry and multiplies the projections by 1000, "m" is R2-Gaussian's
  choice. Both make ``project(volume_gt, geo)`` reproduce the projections,
  with ``volume_gt = image`` in values per length unit.

Pickles can run code when loaded; this reader only lets numpy arrays, dtypes
and scalars through (anything else is an error).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.io._files import FormatError, as_path, check_array
from nr.io.scan import Scan

LENGTH_UNITS = {"mm": 1.0, "m": 1e-3}
PICKLE_SUFFIXES = (".pickle", ".pkl")
_GEOMETRY_KEYS = tuple(
    "DSD DSO nDetector dDetector nVoxel dVoxel offOrigin offDetector accuracy mode".split()
)
_REQUIRED = (*_GEOMETRY_KEYS, "image", "train")
_CONFIG_KEYS = (
    *_GEOMETRY_KEYS,
    *"filter totalAngle startAngle randomAngle convert rescale_slope rescale_intercept".split(),
    *"normalize noise numTrain numVal".split(),
)
_NUMPY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("numpy.core", "numpy._core", 1)
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def is_naf_pickle(path: os.PathLike) -> bool:
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def read_naf_pickle(path: str | os.PathLike, *, length_unit: str = "mm") -> Scan:
    """Read a NAF pickle.

    Args:
        path: the .pickle file.
        length_unit: "mm" (geometry as stored, projections x 1000) or "m"
            (geometry / 1000, projections as stored; R2-Gaussian's readNAFInfo).

    Returns:
        Scan with TIGRE-ordered (N, V, U) train projections, the (Z, Y, X)
        volume, the "val" views as test views, and metadata {"format": "naf",
        "source", "length_unit", "config"}.
    """
    path = as_path(path)
    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit: expected one of {list(LENGTH_UNITS)}, got {length_unit!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise FormatError(f"{path}: cannot read as a NAF pickle ({error})") from error
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a dict, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise FormatError(f"{path}: missing keys {missing}")
    scale = LENGTH_UNITS[length_unit]
    train_angles, train_projs = _split(data, "train", path)
    geo = _geometry(data, train_angles, scale, path)
    projections = _projections(train_projs, geo, scale, f"{path}:train")
    test_projections = test_geo = None
    if "val" in data:
        val_angles, val_projs = _split(data, "val", path)
        test_geo = geo.with_angles(val_angles)
        test_projections = _projections(val_projs, test_geo, scale, f"{path}:val")
    nx, ny, nz = (int(n) for n in geo.n_voxel[::-1])
    image = np.asarray(data["image"])
    image = check_array(image, (nx, ny, nz), f"{path}:image", "image (x, y, z)")
    volume = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))
    metadata = {
        "format": "naf",
        "source": str(path),
        "length_unit": length_unit,
        "config": {key: _plain(data[key]) for key in _CONFIG_KEYS if key in data},
    }
    return Scan(projections, geo, volume, test_projections, test_geo, metadata)


def _split(data: dict, name: str, path: os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    split = data[name]
    if not isinstance(split, dict) or "angles" not in split or "projections" not in split:
        raise FormatError(f"{path}: '{name}' must be a dict with 'angles' and 'projections'")
    angles = np.asarray(split["angles"], dtype=np.float64).reshape(-1)
    count = data.get("numTrain" if name == "train" else "numVal")
    if count is not None and int(count) != angles.size:
        raise FormatError(
            f"{path}: '{name}' has {angles.size} angles but the config says {int(count)} views"
        )
    return angles, np.asarray(split["projections"])


def _geometry(data: dict, angles: np.ndarray, scale: float, path: os.PathLike) -> ConeBeamGeometry:
    def vector(key: str) -> np.ndarray:
        return np.asarray(data[key], dtype=np.float64).reshape(-1)

    try:
        return ConeBeamGeometry(
            mode=str(data["mode"]),
            dso=float(data["DSO"]) * scale,
            dsd=float(data["DSD"]) * scale,
            n_voxel=vector("nVoxel")[::-1],
            d_voxel=vector("dVoxel")[::-1] * scale,
            off_origin=vector("offOrigin")[::-1] * scale,
            n_detector=vector("nDetector"),
            d_detector=vector("dDetector") * scale,
            off_detector=vector("offDetector")[::-1] * scale,
            accuracy=float(data["accuracy"]),
            angles=angles,
        )
    except (TypeError, ValueError) as error:
        raise FormatError(f"{path}: invalid scanner geometry ({error})") from error


def _projections(array: np.ndarray, geo: ConeBeamGeometry, scale: float, where: str):
    views = check_array(array, geo.projection_shape, where, "projections (N, V, U)")
    # Stored values integrate over metres; over a unit of 1e-3 / scale metres they are
    # stored * scale * 1000 (x 1000 for mm, x 1 for m).
    views = views[:, ::-1, :] * np.float32(scale * 1e3)
    return torch.from_numpy(np.ascontiguousarray(views))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
