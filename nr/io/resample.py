"""Resampling of volumes onto a cubic grid (linear interpolation, scipy.ndimage)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resample_cube(data: np.ndarray, size: int) -> np.ndarray:
    """(Z, Y, X) array resampled to (size, size, size) float32 by linear interpolation over the
    whole voxel extent (``grid_mode``), edges extended; returned as is when already that shape."""
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size: expected an int >= 2, got {size!r}")
    if data.ndim != 3:
        raise ValueError(f"data: expected a (Z, Y, X) array, got shape {data.shape}")
    if data.shape == (size,) * 3:
        return np.ascontiguousarray(data, dtype=np.float32)
    factors = [size / n for n in data.shape]
    resampled = ndimage.zoom(data, factors, order=1, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(resampled, dtype=np.float32)
