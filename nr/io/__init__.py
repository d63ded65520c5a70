"""Readers and writers of CT data: volumes, R2-Gaussian cases, NAF pickles, and `Scan`.

Formats, axis orders and units: docs/formats.md.
"""

from nr.io._files import FormatError
from nr.io.intensity import clip, hu_to_mu, normalize_minmax, normalize_window
from nr.io.load import load_scan
from nr.io.naf import read_naf_pickle
from nr.io.r2gaussian import read_r2gaussian_case, write_r2gaussian_case
from nr.io.scan import Scan, read_scan, scan_from_volume, write_scan
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
    "FormatError",
    "Scan",
    "Volume",
    "clip",
    "hu_to_mu",
    "load_scan",
    "normalize_minmax",
    "normalize_window",
    "read_dicom_series",
    "read_itk",
    "read_naf_pickle",
    "read_nifti",
    "read_numpy",
    "read_r2gaussian_case",
    "read_scan",
    "read_volume",
    "scan_from_volume",
    "write_nifti",
    "write_npy",
    "write_r2gaussian_case",
    "write_scan",
]
