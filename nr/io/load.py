"""`load_scan`: one entry point that reads any supported scan or volume path."""

from __future__ import annotations

import os

from nr.io._files import FormatError, as_path
from nr.io.naf import is_naf_pickle, read_naf_pickle
from nr.io.r2gaussian import is_r2gaussian_case, read_r2gaussian_case
from nr.io.scan import Scan, is_scan_path, read_scan
from nr.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, NUMPY_SUFFIXES, Volume, read_volume


def load_scan(path: str | os.PathLike) -> Scan | Volume:
    """Read what `path` holds, recognising it by its contents and name.

    * a folder with meta_data.json: an R2-Gaussian case -> Scan;
    * a folder with geometry.json, or a .npz with "projections" and "geometry":
      the toolkit's scan format (`nr.io.scan.write_scan`) -> Scan;
    * a .pickle / .pkl file: a NAF pickle (mm geometry) -> Scan;
    * a volume file (.nii/.nii.gz, .mhd/.mha, .nrrd/.nhdr, .npy, other .npz)
      or a DICOM folder -> Volume; simulate its projections with
      `nr.io.scan.scan_from_volume`.
    """
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if is_r2gaussian_case(path):
        return read_r2gaussian_case(path)
    if is_scan_path(path):
        return read_scan(path)
    if path.is_file() and is_naf_pickle(path):
        return read_naf_pickle(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES):
        return read_volume(path)
    raise FormatError(
        f"{path}: not a recognised scan or volume (an R2-Gaussian case folder, a scan folder "
        "or .npz, a NAF .pickle, or a .nii/.nii.gz/.mhd/.mha/.nrrd/.nhdr/.npy/.npz volume "
        "or DICOM folder)"
    )
