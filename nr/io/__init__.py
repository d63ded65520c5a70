"""Readers and writers of CT data: volumes, R2-Gaussian cases, NAF pickles, measured
projections (HDF5, TIFF, .mat), rotation-axis estimation, and `Scan`.

Formats, axis orders and units: docs/formats.md. Every file the toolkit writes goes through
`atomic_file` / `atomic_folder` (temporary sibling + rename): a crash leaves no partial file.
"""

from nr.io._files import FormatError, atomic_file, atomic_folder
from nr.io.center import (
    CenterEstimate,
    CenterSearch,
    estimate_center,
    resolve_center,
    with_center_offset,
)
from nr.io.dxchange import read_data_exchange
from nr.io.intensity import clip, hu_to_mu, normalize_minmax, normalize_window
from nr.io.load import load_scan
from nr.io.matlab import read_matlab
from nr.io.measured import Acquisition, MissingGeometryError, Normalization, log_normalize
from nr.io.naf import read_naf_pickle
from nr.io.r2gaussian import read_r2gaussian_case, write_r2gaussian_case
from nr.io.scan import Scan, read_scan, scan_from_volume, write_scan
from nr.io.tiffstack import read_tiff_folder
from nr.io.volumes import (
    Volume,
    read_dicom_series,
    read_itk,
    read_nifti,
    read_numpy,
    read_volume,
    write_nifti,
    write_npy,
)

__all__ = [
    "atomic_file",
    "atomic_folder",
    "Acquisition",
    "CenterEstimate",
    "CenterSearch",
    "FormatError",
    "MissingGeometryError",
    "Normalization",
    "Scan",
    "Volume",
    "clip",
    "estimate_center",
    "hu_to_mu",
    "load_scan",
    "log_normalize",
    "normalize_minmax",
    "normalize_window",
    "read_data_exchange",
    "read_dicom_series",
    "read_itk",
    "read_matlab",
    "read_naf_pickle",
    "read_nifti",
    "read_numpy",
    "read_r2gaussian_case",
    "read_scan",
    "read_tiff_folder",
    "read_volume",
    "resolve_center",
    "scan_from_volume",
    "write_nifti",
    "write_npy",
    "write_r2gaussian_case",
    "with_center_offset",
    "write_scan",
]
