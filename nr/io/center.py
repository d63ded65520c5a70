"""Where the rotation axis projects on the detector: centre-of-rotation (CoR) estimation.

A measured scan's axis rarely projects onto the detector's centre column, and an offset of
a few pixels doubles every edge of a reconstruction. The offset is TIGRE's detector offset
along u, ``geo.off_detector[1]``; here it is in detector pixels,
``offset_px = n_u/2 - 0.5 - c`` with c the column the axis projects onto.

Two estimators:

* ``"sharpness"`` (any parallel or cone/fan geometry, any angular range): reconstruct one
  detector row (the central one) by FBP/FDK for candidate offsets and keep the offset that
  gives the slice the most energy (mean square inside the inscribed circle): with a wrong
  axis the views disagree, and their back-projections partly cancel (features doubled by
  opposite views of a 360-degree scan, smeared along arcs on a 180-degree one). Gradient
  sparsity (TV / L2) was tried and rejected: at a tenth of a feature's width the doubled
  edges of a 360-degree scan look smoother, not rougher, and its minima flank the true
  axis. Each candidate shifts
  the projections by a Fourier (sinc) shift and reconstructs with offset 0, so that every
  candidate is interpolated alike (shifting the geometry instead blurs half-pixel
  candidates and biases the score towards them). The first guess is the axis of the
  sinusoid traced by the views' centres of mass; a search around it on binned projections
  (one binned column apart) is refined at full resolution (`CenterSearch.fine_step`),
  and the estimate is the vertex of a parabola fitted to the fine scores around their
  minimum. On 2 CPU cores a 640-column, 181-view scan takes about 20 s.
* ``"mirror"`` (parallel beams with two views about 180 degrees apart): a view equals the
  mirrored opposite view about the axis column; the shift between them is found by
  cross-correlation with a parabolic sub-pixel peak.

`resolve_center` applies a ``--center`` choice (auto, none or a number of pixels) to a Scan.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.io.scan import Scan
from nr.ops.fdk import FILTERS, fdk
from nr.ops.projector import check_projections

METHODS = ("sharpness", "mirror")


@dataclass(frozen=True)
class CenterSearch:
    """Settings of `estimate_center`.

    Attributes:
        method: "sharpness" or "mirror" (module docstring).
        search_range: half-width, detector pixels, of the sharpness search around the
            first guess (the axis of the projections' centre-of-mass sinusoid); None:
            ``max(8, n_u / 64)``.
        width: the first stage bins the detector to at most this many columns (the cost
            of a candidate grows with its square) and steps by one binned column.
        fine_width: the second stage bins the detector to at most this many columns
            (default: none of the detectors here is binned; binning blurs the sub-pixel
            differences it looks for).
        fine_step: step of the second stage, detector pixels, over the best first-stage
            offset plus or minus one binned column (at least 1 pixel).
        max_views: both stages use every k-th view, k the smallest stride that leaves at
            most this many.
        row: detector row used (in the scan's order); None: the central row (cone beams:
            the row through the source plane, interpolated).
        filter: ramp-filter window of the reconstructions (`nr.ops.fdk.FILTERS`).
        pair_tolerance_deg: "mirror": largest departure from 180 degrees of the view pair.
    """

    method: str = "sharpness"
    search_range: float | None = None
    width: int = 320
    fine_width: int = 2048
    fine_step: float = 0.5
    max_views: int = 100
    row: int | None = None
    filter: str = "hann"
    pair_tolerance_deg: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter: expected one of {FILTERS}, got {self.filter!r}")
        for name in ("width", "fine_width", "max_views"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16:
                raise ValueError(f"{name}: expected an int >= 16, got {value!r}")
        for name in ("fine_step", "pair_tolerance_deg") + (
            ("search_range",) if self.search_range is not None else ()
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if self.row is not None and (not isinstance(self.row, int) or self.row < 0):
            raise ValueError(f"row: expected a non-negative int or None, got {self.row!r}")


@dataclass(frozen=True)
class CenterEstimate:
    """The result of `estimate_center`.

    Attributes:
        offset_px: TIGRE's u offset in detector pixels (``n_u/2 - 0.5 - axis_column``).
        axis_column: the detector column the rotation axis projects onto (0-based).
        method: the estimator used.
        candidates: offsets of the final stage, pixels ("sharpness"; empty for "mirror").
        scores: their scores, minus the slice energy relative to the best (-1; lower is
            sharper).
    """

    offset_px: float
    axis_column: float
    method: str
    candidates: tuple[float, ...] = ()
    scores: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate_center(
    projections: torch.Tensor, geo: ConeBeamGeometry, config: CenterSearch = CenterSearch()
) -> CenterEstimate:
    """Estimate the detector offset that puts the rotation axis where it is.

    Args:
        projections: (N, V, U) float32/float64 line integrals of all views of `geo`.
        geo: the scan; its own ``off_detector[1]`` is ignored (the estimate replaces it),
            everything else is used.
        config: the search.

    Returns:
        The estimate; apply it with ``with_center_offset(geo, estimate.offset_px)``.
    """
    if not isinstance(config, CenterSearch):
        raise TypeError(f"config: expected a CenterSearch, got {type(config).__name__}")
    check_projections(projections, geo)
    rows = _central_row(projections.detach().cpu().double().numpy(), geo, config.row)
    n_u = int(geo.n_detector[1])
    if config.method == "mirror":
        offset = float(_mirror_offset(rows, geo, config.pair_tolerance_deg))
        return CenterEstimate(offset, n_u / 2 - 0.5 - offset, "mirror")
    guess = _mass_offset(rows, geo)
    stride = math.ceil(geo.n_views / config.max_views)
    if stride > 1:
        ids = np.arange(0, geo.n_views, stride)
        geo, rows = geo.subset(ids), rows[ids]
    reach = max(8.0, n_u / 64) if config.search_range is None else float(config.search_range)
    factor = max(1, math.ceil(n_u / config.width))
    first = guess + np.arange(-reach, reach + 1e-9, factor)
    scores = [_score(rows, geo, c, factor, config.filter) for c in first]
    best = float(first[int(np.argmin(scores))])
    half = max(1.0, float(factor))
    fine_factor = max(1, math.ceil(n_u / config.fine_width))
    steps = int(math.ceil(half / config.fine_step))
    found: dict[int, float] = {}
    low, high = -steps, steps
    # Walk the window towards the minimum while it sits on an edge (the first stage's
    # coarser binning can miss it by a binned column or two).
    for _ in range(4 * steps + 8):
        for k in range(low, high + 1):
            if k not in found:
                offset = best + k * config.fine_step
                found[k] = _score(rows, geo, offset, fine_factor, config.filter)
        k_best = min(found, key=found.get)
        if k_best == low:
            low -= steps
        elif k_best == high:
            high += steps
        else:
            break
    ks = np.array(sorted(found))
    fine = best + ks * config.fine_step
    fine_scores = np.array([found[int(k)] for k in ks])
    offset = float(_parabola_vertex(fine, fine_scores, half_width=half))
    fine_scores = fine_scores / max(abs(float(fine_scores.min())), 1e-30)
    return CenterEstimate(
        offset,
        n_u / 2 - 0.5 - offset,
        "sharpness",
        tuple(float(c) for c in fine),
        tuple(float(s) for s in fine_scores),
    )


def with_center_offset(geo: ConeBeamGeometry, offset_px: float) -> ConeBeamGeometry:
    """A copy of `geo` whose detector u offset is `offset_px` pixels (TIGRE's sign)."""
    if not isinstance(offset_px, (int, float)) or not math.isfinite(offset_px):
        raise ValueError(f"offset_px: expected a finite number, got {offset_px!r}")
    off_v = float(geo.off_detector[0])
    return dataclasses.replace(
        geo, off_detector=(off_v, float(offset_px) * float(geo.d_detector[1]))
    )


def resolve_center(
    scan: Scan, center: str | float | None, config: CenterSearch = CenterSearch()
) -> tuple[Scan, dict[str, Any]]:
    """Apply a rotation-axis choice to a scan (and its test views).

    Args:
        scan: the scan.
        center: "auto" (estimate it), "none" (keep the geometry's offset), a number (the
            offset in pixels, TIGRE's sign), or None: "auto" when the scan's metadata says
            the axis is unknown (``metadata["center"]["source"] == "unknown"``, measured
            files that do not give it), "none" otherwise.
        config: the search of "auto".

    Returns:
        The scan with the offset applied, and a record for the run's config and metrics:
        {"choice", "offset_px", "source"} plus the estimate for "auto".
    """
    if not isinstance(scan, Scan):
        raise TypeError(f"scan: expected a Scan, got {type(scan).__name__}")
    if center is None:
        unknown = scan.metadata.get("center", {}).get("source") == "unknown"
        center = "auto" if unknown else "none"
    current = float(scan.geo.off_detector[1] / scan.geo.d_detector[1])
    if center == "none":
        return scan, {"choice": "none", "offset_px": current, "source": "geometry"}
    record: dict[str, Any]
    if center == "auto":
        estimate = estimate_center(scan.projections, scan.geo, config)
        offset = estimate.offset_px
        record = {"choice": "auto", "offset_px": offset, "source": "estimated"}
        record["estimate"] = estimate.to_dict()
    elif isinstance(center, (int, float)) and not isinstance(center, bool):
        offset = float(center)
        record = {"choice": "given", "offset_px": offset, "source": "given"}
    else:
        raise ValueError(f"center: expected 'auto', 'none', a number or None, got {center!r}")
    test_geo = scan.test_geo
    if test_geo is not None:
        test_geo = with_center_offset(test_geo, offset)
    metadata = dict(scan.metadata)
    metadata["center"] = record
    scan = dataclasses.replace(
        scan, geo=with_center_offset(scan.geo, offset), test_geo=test_geo, metadata=metadata
    )
    return scan, record


# ------------------------------------------------------------ helpers
def _central_row(projections: np.ndarray, geo: ConeBeamGeometry, row: int | None) -> np.ndarray:
    """(N, U) float64 row: `row`, or the row through the source plane (cone) / the middle."""
    n_v = projections.shape[1]
    if row is not None:
        if row >= n_v:
            raise ValueError(f"row: the detector has {n_v} rows, got {row}")
        return projections[:, row]
    position = n_v / 2 - 0.5
    if geo.mode == "cone":
        position -= float(geo.off_detector[0] / geo.d_detector[0])
    position = min(max(position, 0.0), n_v - 1.0)
    low = int(math.floor(position))
    high = min(low + 1, n_v - 1)
    weight = position - low
    if geo.mode == "parallel":
        # Any row of a parallel beam sees the same geometry: use one, no interpolation blur.
        return projections[:, int(round(position))]
    return (1 - weight) * projections[:, low] + weight * projections[:, high]


def _mass_offset(rows: np.ndarray, geo: ConeBeamGeometry) -> float:
    """First guess of the offset: the constant of ``a0 + a1 cos + b1 sin + a2 cos 2 + b2 sin 2``
    fitted to each view's centre of mass (column), a sinusoid for parallel beams (the second
    harmonic absorbs a fan's perspective). 0 when the views hold no positive mass."""
    weights = np.clip(rows, 0.0, None)
    mass = weights.sum(axis=1)
    keep = mass > 0.05 * max(float(mass.max()), 1e-12)
    if keep.sum() < 5:
        return 0.0
    columns = np.arange(rows.shape[1])
    centre = (weights[keep] * columns).sum(axis=1) / mass[keep]
    angles = np.asarray(geo.angles)[keep]
    basis = [np.ones_like(angles), np.cos(angles), np.sin(angles)]
    if geo.mode == "cone":
        basis += [np.cos(2 * angles), np.sin(2 * angles)]
    coefficients, *_ = np.linalg.lstsq(np.stack(basis, axis=1), centre, rcond=None)
    return float(rows.shape[1] / 2 - 0.5 - coefficients[0])


def _bin(rows: np.ndarray, factor: int) -> np.ndarray:
    n = rows.shape[1] // factor * factor
    return rows[:, :n].reshape(rows.shape[0], -1, factor).mean(axis=2)


def _shift(rows: np.ndarray, shift: float) -> np.ndarray:
    """``out[:, u] = rows[:, u - shift]`` by a Fourier shift, edges padded by replication."""
    pad = rows.shape[1] // 2 + int(math.ceil(abs(shift)))
    padded = np.pad(rows, ((0, 0), (pad, pad)), mode="edge")
    length = padded.shape[1]
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(length) * shift)
    shifted = np.fft.irfft(np.fft.rfft(padded, axis=1) * phase, n=length, axis=1)
    return shifted[:, pad : pad + rows.shape[1]]


def _slice_geometry(geo: ConeBeamGeometry, n_u: int, d_u: float) -> ConeBeamGeometry:
    """One detector row of `n_u` pixels of width `d_u` through the source plane, offset 0,
    and a one-voxel-thick square slice of `n_u`^2 voxels at the axis' pixel pitch."""
    magnification = geo.dsd / geo.dso if geo.mode == "cone" else 1.0
    d_v = float(geo.d_detector[0])
    voxel = d_u / magnification
    return ConeBeamGeometry(
        mode=geo.mode,
        dso=geo.dso,
        dsd=geo.dsd,
        n_voxel=(1, n_u, n_u),
        d_voxel=(d_v / magnification, voxel, voxel),
        n_detector=(1, n_u),
        d_detector=(d_v, d_u),
        angles=geo.angles,
    )


def _slice(
    rows: np.ndarray, geo: ConeBeamGeometry, offset: float, factor: int, window
) -> np.ndarray:
    """(n, n) float64 FBP slice of the binned `rows` reconstructed with the axis at `offset`
    pixels, zero outside the inscribed circle."""
    # Binning drops the last (U mod factor) columns; shift half of them back to keep the centre.
    shifted = _bin(_shift(rows, offset - (rows.shape[1] % factor) / 2), factor)
    n_u = shifted.shape[1]
    slice_geo = _slice_geometry(geo, n_u, float(geo.d_detector[1]) * factor)
    projections = torch.from_numpy(shifted[:, None, :].astype(np.float32))
    image = fdk(projections, slice_geo, window)[0].double().numpy()
    centre = (n_u - 1) / 2
    y, x = np.ogrid[:n_u, :n_u]
    return image * ((y - centre) ** 2 + (x - centre) ** 2 <= (n_u / 2 - 1) ** 2)


def _score(rows: np.ndarray, geo: ConeBeamGeometry, offset: float, factor: int, window) -> float:
    """Minus the mean squared value of the slice with the axis at `offset` (lower: sharper)."""
    return -float(np.mean(_slice(rows, geo, offset, factor, window) ** 2))


def _parabola_vertex(x: np.ndarray, y: np.ndarray, half_width: float) -> float:
    """Vertex of the parabola fitted to the samples within `half_width` of the minimum (the
    minimum itself when the fit is not convex or its vertex leaves that window)."""
    best = float(x[int(np.argmin(y))])
    near = np.abs(x - best) <= half_width
    if near.sum() >= 3:
        a, b, _ = np.polyfit(x[near] - best, y[near], 2)
        if a > 0 and abs(-b / (2 * a)) <= half_width:
            return best - b / (2 * a)
    return best


def _mirror_offset(rows: np.ndarray, geo: ConeBeamGeometry, tolerance_deg: float) -> float:
    if geo.mode != "parallel":
        raise ValueError(
            "config.method: 'mirror' needs a parallel beam (opposite fan-beam views are not "
            "mirror images); use 'sharpness'"
        )
    angles = np.asarray(geo.angles)
    gap = np.abs(np.angle(np.exp(1j * (angles[None, :] - angles[:, None] - np.pi))))
    i, j = np.unravel_index(int(np.argmin(gap)), gap.shape)
    if math.degrees(gap[i, j]) > tolerance_deg:
        raise ValueError(
            f"projections: no two views are 180 +- {tolerance_deg} degrees apart (closest: "
            f"{math.degrees(gap[i, j]):.3f} degrees off); use method 'sharpness' or raise "
            "pair_tolerance_deg"
        )
    first, mirrored = np.gradient(rows[i]), np.gradient(rows[j][::-1])
    n = first.size
    # corr[k] = sum_u first[u + s] * mirrored[u] with s = k - (n - 1); mirrored(u) = first(u + s)
    # where s = 2 c - (n - 1) for the axis column c, so offset = n/2 - 0.5 - c = -s / 2.
    corr = np.correlate(first, mirrored, mode="full")
    k = int(np.argmax(corr))
    shift = float(k - (n - 1))
    if 0 < k < corr.size - 1:
        left, centre, right = corr[k - 1], corr[k], corr[k + 1]
        denominator = left - 2 * centre + right
        if denominator < 0:
            shift += 0.5 * (left - right) / denominator
    return -shift / 2
