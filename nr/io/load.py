"""`load_scan`: one entry point that reads any supported scan or volume path."""

from __future__ import annotations

import os

from nr.io._files import FormatError, as_path
from nr.io.dxchange import HDF5_SUFFIXES, is_hdf5_file, read_data_exchange
from nr.io.matlab import read_matlab
from nr.io.measured import Acquisition
from nr.io.naf import is_naf_pickle, read_naf_pickle
from nr.io.r2gaussian import is_r2gaussian_case, read_r2gaussian_case
from nr.io.scan import Scan, is_scan_path, read_scan
from nr.io.tiffstack import is_tiff_folder, read_tiff_folder
from nr.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, NUMPY_SUFFIXES, Volume, read_volume


def load_scan(
    path: str | os.PathLike,
    acquisition: Acquisition | str | os.PathLike | None = None,
) -> Scan | Volume:
    """Read what `path` holds, recognising it by its contents and name.

    * a folder with meta_data.json: an R2-Gaussian case -> Scan;
    * a folder of TIFF images (no projections.npy): measured projections with a
      geometry JSON file (`nr.io.tiffstack`) -> Scan;
    * a folder with geometry.json, or a .npz with "projections" and "geometry":
      the toolkit's scan format (`nr.io.scan.write_scan`) -> Scan;
    * a .pickle / .pkl file: a NAF pickle (mm geometry) -> Scan;
    * an HDF5 file (.h5/.hdf5/.hdf/.nxs/.cxi): measured Data Exchange or NeXus NXtomo
      projections (`nr.io.dxchange`) -> Scan;
    * a .mat file: a measured FIPS/HTC sinogram (`nr.io.matlab`) -> Scan;
    * a volume file (.nii/.nii.gz, .mhd/.mha, .nrrd/.nhdr, .npy, other .npz)
      or a DICOM folder -> Volume; simulate its projections with
      `nr.io.scan.scan_from_volume`.

    Args:
        path: the file or folder.
        acquisition: for measured projections only (HDF5, TIFF folder, .mat): what their
            files lack or get wrong (`nr.io.measured.Acquisition`, a mapping or a geometry
            JSON path); an error for other inputs.
    """
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    name = path.name.lower()
    if is_tiff_folder(path) and not is_r2gaussian_case(path):
        return read_tiff_folder(path, acquisition)
    if path.is_file() and name.endswith(".mat"):
        return read_matlab(path, acquisition)
    if path.is_file() and (name.endswith(HDF5_SUFFIXES) or is_hdf5_file(path)):
        return read_data_exchange(path, acquisition)
    if acquisition is not None:
        raise ValueError(
            "acquisition (--geometry): applies to measured projections (HDF5, TIFF folder, "
            f".mat), not to {path}"
        )
    if is_r2gaussian_case(path):
        return read_r2gaussian_case(path)
    if is_scan_path(path):
        return read_scan(path)
    if path.is_file() and is_naf_pickle(path):
        return read_naf_pickle(path)
    if path.is_dir() or name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES):
        return read_volume(path)
    raise FormatError(
        f"{path}: not a recognised scan or volume (an R2-Gaussian case folder, a scan folder "
        "or .npz, a NAF .pickle, measured projections (.h5/.hdf5/.nxs Data Exchange or NeXus, "
        "a TIFF folder with geometry.json, a FIPS .mat), or a .nii/.nii.gz/.mhd/.mha/.nrrd/"
        ".nhdr/.npy/.npz volume or DICOM folder)"
    )
