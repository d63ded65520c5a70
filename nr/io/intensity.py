"""Explicit intensity conversions of a `Volume`: HU to attenuation, clipping, normalisation.

None of these runs implicitly: a reader returns what the file holds, and a
pipeline states which of these it applies. Each returns a new `Volume` with
its ``units`` updated.

Attenuation convention: ``mu = mu_water + (mu_water - mu_air) * HU / 1000``,
in 1/mm. With the default ``mu_air = 0`` this is ``mu_water * (1 + HU/1000)``,
the definition of HU. NAF (dataGenerator/generateData.py,
``convert_to_attenuation``) uses mu_water 0.206 and mu_air 0.0004 in 1/cm
(water near 60-70 keV); the default here is the same water value in 1/mm,
0.0206. NAF's air value in 1/mm is ``NAF_MU_AIR_PER_MM``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nr.io.volumes import Volume

MU_WATER_PER_MM = 0.0206
NAF_MU_AIR_PER_MM = 0.00004


def hu_to_mu(volume: Volume, mu_water: float = MU_WATER_PER_MM, mu_air: float = 0.0) -> Volume:
    """Convert Hounsfield units to linear attenuation (1/mm); values are not clipped.

    Args:
        volume: units must be "HU" (set them with ``dataclasses.replace`` if
            you know an "unknown" volume holds HU).
        mu_water: attenuation of water, 1/mm.
        mu_air: attenuation of air (HU -1000), 1/mm; 0 gives mu_water * (1 + HU/1000).

    Returns:
        Volume in "1/mm". Values below -1000 HU map below mu_air (negative with
        the defaults); follow with `clip` if the reconstruction needs mu >= 0.
    """
    _check(volume, expected_units="HU")
    for name, value in (("mu_water", mu_water), ("mu_air", mu_air)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite non-negative number, got {value!r}")
    if mu_air >= mu_water:
        raise ValueError(f"mu_air: must be below mu_water ({mu_water}), got {mu_air}")
    data = mu_water + (mu_water - mu_air) / 1000.0 * volume.data.astype(np.float64)
    return dataclasses.replace(volume, data=data.astype(np.float32), units="1/mm")


def clip(volume: Volume, low: float | None, high: float | None) -> Volume:
    """Clip values to [low, high] (either bound may be None); units unchanged."""
    _check(volume)
    if low is None and high is None:
        raise ValueError("low, high: give at least one bound")
    if low is not None and high is not None and not low < high:
        raise ValueError(f"low, high: expected low < high, got {low} and {high}")
    data = np.clip(volume.data, low, high).astype(np.float32)
    return dataclasses.replace(volume, data=data)


def normalize_minmax(volume: Volume) -> Volume:
    """Rescale linearly so that the minimum maps to 0 and the maximum to 1 ("normalized").

    This is how R2-Gaussian's and NAF's synthetic volumes were made.
    """
    _check(volume)
    low, high = float(volume.data.min()), float(volume.data.max())
    if not high > low:
        raise ValueError(f"volume: constant volume (all values {low}) cannot be min-max normalised")
    return _rescale(volume, low, high)


def normalize_window(volume: Volume, low: float, high: float) -> Volume:
    """Clip to the window [low, high] (in the volume's units), then map it to [0, 1].

    Example: ``normalize_window(hu_volume, -1000, 1000)``.
    """
    _check(volume)
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if not low < high:
        raise ValueError(f"low, high: expected low < high, got {low} and {high}")
    return _rescale(clip(volume, low, high), float(low), float(high))


def _rescale(volume: Volume, low: float, high: float) -> Volume:
    data = (volume.data.astype(np.float64) - low) / (high - low)
    return dataclasses.replace(volume, data=data.astype(np.float32), units="normalized")


def _check(volume: object, expected_units: str | None = None) -> None:
    if not isinstance(volume, Volume):
        raise TypeError(f"volume: expected a Volume, got {type(volume).__name__}")
    if expected_units is not None and volume.units != expected_units:
        raise ValueError(
            f"volume.units: expected {expected_units!r}, got {volume.units!r} "
            f"(if the values are {expected_units}, say so with "
            f"dataclasses.replace(volume, units={expected_units!r}))"
        )
