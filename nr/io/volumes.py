"""Volumes from medical and numpy files: NIfTI, MHD/MHA, NRRD, DICOM series, NPY/NPZ.

Every reader returns a `Volume`: a (Z, Y, X) float32 array in TIGRE's axis
order (x fastest), its voxel spacing (z, y, x) in mm when the file states one,
its intensity units and the file it came from.

Orientation: files that carry one (NIfTI, MHD/MHA, NRRD, DICOM) are reoriented,
without resampling, to the nearest of the patient axes so that the index grows
along +X towards the patient's Left, +Y towards Posterior and +Z towards
Superior (DICOM's LPS+). Slice Z=0 is therefore the most inferior one, and with
TIGRE's world (z up, detector row v growing with +z) the head is at the top of
a projection. Axial slices ``data[z]`` shown with row 0 on top are in the
radiological convention (anterior up, the patient's right on the viewer's
left). NPY/NPZ files carry no orientation and are taken as (Z, Y, X) as stored.
``docs/formats.md`` has the details.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from nr.io._files import FormatError, as_path, atomic_file, check_array, save_npy

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")
NUMPY_SUFFIXES = (".npy", ".npz")
DEFAULT_NPZ_KEY = "volume"
_UNITS_TAG = "nr units="


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image with its voxel spacing and intensity units.

    Attributes:
        data: (Z, Y, X) float32 array, finite. Index grows towards Superior (Z),
            Posterior (Y) and the patient's Left (X) for files with an
            orientation (module docstring).
        spacing: (z, y, x) voxel size in mm, or None when the file has none
            (NPY/NPZ).
        units: intensity units: "HU", "1/mm" (linear attenuation),
            "normalized" (a [0, 1] rescaling) or "unknown".
        source: the file or folder read, or None for an array made in memory.
    """

    data: np.ndarray
    spacing: tuple[float, float, float] | None = None
    units: str = "unknown"
    source: str | None = None

    def __post_init__(self) -> None:
        where = self.source or "volume"
        if not isinstance(self.data, np.ndarray):
            raise TypeError(f"data: expected a numpy array, got {type(self.data).__name__}")
        if self.data.ndim != 3:
            raise ValueError(
                f"{where}: expected a 3-D (Z, Y, X) array, got shape {self.data.shape}"
            )
        if self.data.dtype != np.float32:
            raise TypeError(f"data: expected float32, got {self.data.dtype}")
        if not np.all(np.isfinite(self.data)):
            raise ValueError(f"{where}: the volume contains NaN or infinite values")
        if not isinstance(self.units, str) or not self.units:
            raise TypeError(f"units: expected a non-empty string, got {self.units!r}")
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(
                    f"spacing: expected 3 positive finite sizes (z, y, x) in mm, got {self.spacing}"
                )
            object.__setattr__(self, "spacing", spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)


# ------------------------------------------------------------------ reading
def read_volume(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    series_id: str | None = None,
    units: str | None = None,
) -> Volume:
    """Read a volume, choosing the reader from what `path` is.

    Args:
        path: a .nii/.nii.gz, .mhd/.mha/.nrrd/.nhdr, .npy/.npz file or a folder
            holding one DICOM series.
        key: NPZ only: the array to read (default: the only array, else "volume").
        series_id: DICOM only: the SeriesInstanceUID when the folder holds several.
        units: override the intensity units; by default "HU" for CT DICOM
            series, the units recorded by `write_nifti`, else "unknown".
    """
    path = as_path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path, series_id=series_id, units=units)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, units=units)
    if name.endswith(ITK_SUFFIXES):
        return read_itk(path, units=units)
    if name.endswith(NUMPY_SUFFIXES):
        return read_numpy(path, key=key, units=units)
    raise FormatError(
        f"{path}: unknown volume format; expected one of "
        f"{NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES} or a DICOM folder"
    )


def read_nifti(path: str | os.PathLike, *, units: str | None = None) -> Volume:
    """Read a NIfTI-1/2 file (scl_slope/inter applied), reoriented to LPS+ index order.

    Trailing singleton dimensions (e.g. a 4-D file with one frame) are dropped.
    """
    path = as_path(path)
    try:
        image = nib.funcs.squeeze_image(nib.load(path))
        if image.ndim != 3:
            raise FormatError(f"{path}: expected a 3-D image, got shape {image.shape}")
        current = nib.orientations.io_orientation(image.affine)
        target = nib.orientations.axcodes2ornt(("L", "P", "S"))
        image = image.as_reoriented(nib.orientations.ornt_transform(current, target))
        data_xyz = image.get_fdata(dtype=np.float32)
    except FormatError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise FormatError(f"{path}: cannot read as NIfTI ({error})") from error
    spacing_xyz = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    if units is None:
        description = image.header.get("descrip")
        text = "" if description is None else description.item().decode("latin-1")
        units = text[len(_UNITS_TAG) :] if text.startswith(_UNITS_TAG) else "unknown"
    data = check_array(data_xyz.transpose(2, 1, 0), data_xyz.shape[::-1], str(path), "volume")
    return Volume(data, tuple(spacing_xyz[::-1].tolist()), units, str(path))


def read_itk(path: str | os.PathLike, *, units: str | None = None) -> Volume:
    """Read an MHD/MHA/NRRD file with SimpleITK, reoriented to LPS+ index order."""
    path = as_path(path)
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as error:
        raise FormatError(f"{path}: cannot read with SimpleITK ({_first_line(error)})") from error
    return _from_sitk(image, path, "unknown" if units is None else units)


def read_dicom_series(
    folder: str | os.PathLike, *, series_id: str | None = None, units: str | None = None
) -> Volume:
    """Read one DICOM series from a folder (rescale slope/intercept applied).

    Slices are ordered by position along the slice normal (GDCM); a series with
    missing or unevenly spaced slices, or a .dcm file no series could use, is
    an error. Units default to "HU" when the Modality is CT.
    """
    folder = as_path(folder, "folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise FormatError(f"{folder}: no readable DICOM series in this folder")
    if series_id is None and len(ids) > 1:
        raise FormatError(f"{folder}: holds {len(ids)} DICOM series {list(ids)}; pass series_id")
    chosen = ids[0] if series_id is None else series_id
    if chosen not in ids:
        raise FormatError(f"{folder}: no DICOM series {chosen!r}; found {list(ids)}")
    used = {Path(f).name for i in ids for f in _series_files(folder, i)}
    skipped = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".dcm" and p.name not in used
    )
    if skipped:
        raise FormatError(f"{folder}: unreadable DICOM files {skipped[:5]}")
    files = _series_files(folder, chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise FormatError(
            f"{folder}: cannot read the DICOM series ({_first_line(error)})"
        ) from error
    _check_slice_positions(reader, files, folder)
    if units is None:
        modality = (
            reader.GetMetaData(0, "0008|0060").strip()
            if reader.HasMetaDataKey(0, "0008|0060")
            else ""
        )
        units = "HU" if modality == "CT" else "unknown"
    return _from_sitk(image, folder, units)


def read_numpy(
    path: str | os.PathLike, *, key: str | None = None, units: str | None = None
) -> Volume:
    """Read a (Z, Y, X) array from .npy, or from .npz by `key` (default: the only array,
    else "volume"). No spacing is recorded in these files."""
    path = as_path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise FormatError(f"{path}: cannot read as numpy ({error})") from error
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            if key is None:
                key = keys[0] if len(keys) == 1 else DEFAULT_NPZ_KEY
            if key not in keys:
                raise FormatError(f"{path}: no array {key!r} in the archive (has {keys}); pass key")
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
                raise FormatError(f"{path}: cannot read array {key!r} ({error})") from error
    elif key is not None:
        raise ValueError(f"key: only .npz archives have keys, {path} is a .npy file")
    else:
        array = loaded
    if array.ndim != 3:
        raise FormatError(f"{path}: expected a 3-D (Z, Y, X) array, got shape {array.shape}")
    data = check_array(array, array.shape, str(path), "volume")
    return Volume(data, None, "unknown" if units is None else units, str(path))


# ------------------------------------------------------------------ writing
def write_nifti(volume: Volume, path: str | os.PathLike) -> None:
    """Write a volume as NIfTI-1 (.nii or .nii.gz), atomically.

    The (Z, Y, X) array is stored as NIfTI's (i, j, k) = (X, Y, Z) with the
    affine ``diag(-dx, -dy, dz)`` (LPS+ index to NIfTI's RAS+ world, mm),
    centred on the world origin; `read_nifti` returns the same array, spacing
    and units (kept in the header's descrip field).
    """
    path = as_path(path)
    _check_volume(volume)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    if not path.name.lower().endswith(suffix):
        raise ValueError(f"path: expected a .nii or .nii.gz name, got {path.name}")
    if volume.spacing is None:
        raise ValueError(
            "volume.spacing: NIfTI needs a voxel size; set one with "
            "dataclasses.replace(volume, spacing=(dz, dy, dx))"
        )
    if len(_UNITS_TAG + volume.units) > 79:
        raise ValueError(f"volume.units: too long for the NIfTI header: {volume.units!r}")
    data_xyz = np.ascontiguousarray(volume.data.transpose(2, 1, 0))
    dz, dy, dx = volume.spacing
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(data_xyz.shape) - 1) / 2)
    image = nib.Nifti1Image(data_xyz, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = (_UNITS_TAG + volume.units).encode("latin-1")
    with atomic_file(path, suffix) as temporary:
        nib.save(image, temporary)


def write_npy(volume: Volume, path: str | os.PathLike) -> None:
    """Write the (Z, Y, X) float32 array as .npy, atomically (spacing and units are not kept)."""
    path = as_path(path)
    _check_volume(volume)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"path: expected a .npy name, got {path.name}")
    with atomic_file(path, ".npy") as temporary:
        save_npy(volume.data, temporary)


# ------------------------------------------------------------------ helpers
def _check_volume(volume: object) -> None:
    if not isinstance(volume, Volume):
        raise TypeError(f"volume: expected a Volume, got {type(volume).__name__}")


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _from_sitk(image: sitk.Image, path: Path, units: str) -> Volume:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise FormatError(
            f"{path}: expected a scalar 3-D image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image)
    data = check_array(array, array.shape, str(path), "volume")
    return Volume(data, tuple(float(s) for s in image.GetSpacing()[::-1]), units, str(path))


def _series_files(folder: Path, series_id: str) -> Sequence[str]:
    return sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)


def _check_slice_positions(reader: sitk.ImageSeriesReader, files: Sequence[str], folder: Path):
    """Error on missing or unevenly spaced slices (GDCM only warns)."""
    tag = "0020|0032"
    if len(files) < 3 or not all(reader.HasMetaDataKey(i, tag) for i in range(len(files))):
        return
    positions = np.array(
        [[float(v) for v in reader.GetMetaData(i, tag).split("\\")] for i in range(len(files))]
    )
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    if np.ptp(steps) > 0.01 * np.median(steps):
        raise FormatError(
            f"{folder}: slice positions are unevenly spaced (steps {steps.min():.4g} to "
            f"{steps.max():.4g} mm): missing or duplicated slices"
        )
