"""`Scan`, the input of every command, and the toolkit's own "projections + geometry" format.

A scan folder holds::

    geometry.json            ConeBeamGeometry.to_dict() of the training views
    projections.npy          (N, V, U) float32 line integrals, TIGRE's row order
    volume_gt.npy            optional (Z, Y, X) float32 ground truth
    test_geometry.json       optional, with test_projections.npy
    test_projections.npy
    metadata.json            optional, a JSON object

A ``.npz`` archive holds the same arrays under the same names (without
".npy"), and the JSON documents as 0-d string arrays ``geometry``,
``test_geometry`` and ``metadata``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.io._files import (
    FormatError,
    as_path,
    atomic_file,
    atomic_folder,
    check_array,
    load_npy,
    save_npy,
)
from nr.io.volumes import Volume
from nr.ops.noise import NoiseConfig, simulate_projections

_ARRAYS = ("projections", "volume_gt", "test_projections")
_DOCUMENTS = ("geometry", "test_geometry", "metadata")


@dataclass(eq=False)
class Scan:
    """Projections, their geometry and what else is known about one scan.

    Attributes:
        projections: (N, V, U) float32 tensor of line integrals (dimensionless),
            N = ``geo.n_views``, rows in TIGRE's order (row 0 at the lowest z).
        geo: the training views' geometry.
        volume_gt: optional (Z, Y, X) float32 tensor, shape ``geo.volume_shape``,
            in the units whose line integrals along `geo` are `projections`.
        test_projections: optional (M, V, U) float32 tensor of held-out views.
        test_geo: their geometry (given exactly when `test_projections` is).
        metadata: JSON-serialisable facts about the source (format, file, units).
    """

    projections: torch.Tensor
    geo: ConeBeamGeometry
    volume_gt: torch.Tensor | None = None
    test_projections: torch.Tensor | None = None
    test_geo: ConeBeamGeometry | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(self.geo).__name__}")
        _check_tensor("projections", self.projections, self.geo.projection_shape)
        if self.volume_gt is not None:
            _check_tensor("volume_gt", self.volume_gt, self.geo.volume_shape)
        if (self.test_projections is None) != (self.test_geo is None):
            raise ValueError("test_projections, test_geo: give both or neither")
        if self.test_geo is not None:
            if not isinstance(self.test_geo, ConeBeamGeometry):
                raise TypeError(
                    f"test_geo: expected a ConeBeamGeometry, got {type(self.test_geo).__name__}"
                )
            _check_tensor("test_projections", self.test_projections, self.test_geo.projection_shape)
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata: expected a dict, got {type(self.metadata).__name__}")


def scan_from_volume(
    volume: Volume | torch.Tensor,
    geo: ConeBeamGeometry,
    views: Sequence[int] | None = None,
    noise: bool | NoiseConfig = False,
    seed: int = 0,
) -> Scan:
    """Simulate a scan of a volume (`nr.ops.noise.simulate_projections`).

    Args:
        volume: (Z, Y, X) attenuation per mm, shape ``geo.volume_shape``: a
            `Volume` (its spacing, when known, must equal ``geo.d_voxel``) or a
            float32 tensor.
        geo: the scan geometry.
        views: indices into ``geo.angles`` of the views to simulate (all when None).
        noise: False, True (TIGRE's defaults) or a `NoiseConfig`.
        seed: noise seed.

    Returns:
        A Scan whose `volume_gt` is the volume.
    """
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    metadata: dict[str, Any] = {
        "format": "simulated",
        "noise": _describe_noise(noise),
        "seed": seed,
    }
    if isinstance(volume, Volume):
        if volume.spacing is not None and not np.allclose(volume.spacing, geo.d_voxel, rtol=1e-4):
            raise ValueError(
                f"volume.spacing {volume.spacing} mm differs from geo.d_voxel "
                f"{geo.d_voxel.tolist()} mm; use geo.with_volume(n_voxel, s_voxel=n * spacing)"
                " or resample the volume"
            )
        metadata.update(source=volume.source, volume_units=volume.units)
        tensor = torch.from_numpy(volume.data)
    elif isinstance(volume, torch.Tensor):
        tensor = volume
    else:
        raise TypeError(f"volume: expected a Volume or torch.Tensor, got {type(volume).__name__}")
    _check_tensor("volume", tensor, geo.volume_shape)
    scan_geo = geo if views is None else geo.subset(views)
    projections = simulate_projections(tensor, scan_geo, noise=noise, seed=seed)
    return Scan(projections.float(), scan_geo, tensor.detach().float(), metadata=metadata)


# ------------------------------------------------------------ own format
def write_scan(scan: Scan, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write a scan as a folder, or as one archive if `path` ends in ".npz"; atomically."""
    path = as_path(path)
    if not isinstance(scan, Scan):
        raise TypeError(f"scan: expected a Scan, got {type(scan).__name__}")
    documents = _documents(scan)
    arrays = {
        name: getattr(scan, name).detach().cpu().numpy().astype(np.float32)
        for name in _ARRAYS
        if getattr(scan, name) is not None
    }
    if path.suffix.lower() == ".npz":
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        with atomic_file(path, ".npz") as temporary, open(temporary, "wb") as handle:
            np.savez(handle, **arrays, **{k: np.array(v) for k, v in documents.items()})
        return
    with atomic_folder(path, overwrite) as folder:
        for name, text in documents.items():
            (folder / f"{name}.json").write_text(text)
        for name, array in arrays.items():
            save_npy(array, folder / f"{name}.npy")


def read_scan(path: str | os.PathLike) -> Scan:
    """Read a scan written by `write_scan` (folder or .npz)."""
    path = as_path(path)
    if path.is_dir():
        documents = {
            name: ((path / f"{name}.json").read_text(), str(path / f"{name}.json"))
            for name in _DOCUMENTS
            if (path / f"{name}.json").is_file()
        }
        geo, test_geo, metadata = _parse_documents(documents, path)
        arrays = {
            name: (load_npy(path / f"{name}.npy", _label(name)), str(path / f"{name}.npy"))
            for name in _ARRAYS
            if (path / f"{name}.npy").exists() or name == "projections"
        }
    elif path.is_file():
        documents, arrays = _read_npz(path)
        geo, test_geo, metadata = _parse_documents(documents, path)
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (test_geo is None) != ("test_projections" not in arrays):
        raise FormatError(f"{path}: test_geometry and test_projections must come together")
    shapes = {
        "projections": geo.projection_shape,
        "volume_gt": geo.volume_shape,
        "test_projections": None if test_geo is None else test_geo.projection_shape,
    }
    tensors = {
        name: torch.from_numpy(check_array(array, shapes[name], where, _label(name)))
        for name, (array, where) in arrays.items()
    }
    return Scan(geo=geo, test_geo=test_geo, metadata=metadata, **tensors)


def is_scan_path(path: Path) -> bool:
    """Whether `path` looks like a `write_scan` folder or archive."""
    if path.is_dir():
        return (path / "geometry.json").is_file()
    if path.is_file() and path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return "geometry" in archive.files and "projections" in archive.files
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            return False
    return False


# ------------------------------------------------------------ helpers
def _check_tensor(name: str, tensor: object, shape: tuple) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.float32:
        raise TypeError(f"{name}: expected float32, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name}: values must be finite (found NaN or inf)")


def _describe_noise(noise: object) -> dict[str, Any] | None:
    if noise is True:
        noise = NoiseConfig()
    if isinstance(noise, NoiseConfig):
        return dataclasses.asdict(noise)
    return None


def _documents(scan: Scan) -> dict[str, str]:
    documents = {"geometry": scan.geo.to_json()}
    if scan.test_geo is not None:
        documents["test_geometry"] = scan.test_geo.to_json()
    try:
        documents["metadata"] = json.dumps(scan.metadata, indent=1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"scan.metadata: not JSON-serialisable ({error})") from error
    return documents


def _label(name: str) -> str:
    return name.replace("_", " ")


def _parse_documents(documents: dict, path: Path) -> tuple:
    """(geo, test_geo, metadata) from {name: (text, where)}."""
    if "geometry" not in documents:
        raise FormatError(f"{path}: geometry.json is missing")
    geo = _geometry(*documents["geometry"])
    test_geo = _geometry(*documents["test_geometry"]) if "test_geometry" in documents else None
    metadata = _json(*documents["metadata"]) if "metadata" in documents else {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: metadata must be a JSON object")
    return geo, test_geo, metadata


def _read_npz(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            documents = {
                n: (str(archive[n].item()), f"{path}:{n}") for n in _DOCUMENTS if n in names
            }
            arrays = {n: (archive[n], f"{path}:{n}") for n in _ARRAYS if n in names}
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise FormatError(f"{path}: cannot read the scan archive ({error})") from error
    if "projections" not in arrays:
        raise FormatError(f"{path}: the archive has no 'projections' array")
    return documents, arrays


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FormatError(f"{where}: invalid JSON ({error})") from error


def _geometry(text: str, where: str) -> ConeBeamGeometry:
    try:
        return ConeBeamGeometry.from_dict(_json(text, where))
    except (TypeError, ValueError) as error:
        if isinstance(error, FormatError):
            raise
        raise FormatError(f"{where}: invalid geometry ({error})") from error
