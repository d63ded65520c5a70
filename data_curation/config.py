"""`CurationConfig`: everything that decides the content of a curated dataset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SUBSET_KINDS = ("uniform", "random")
AXES = ("z", "y", "x")
SLICE_DTYPES = ("float16", "float32")
DEFAULT_PROMPT = "remove artifacts for this {anatomy} CT slice"
# A clean-slice pixel above this (normalised) value counts as foreground (`min_foreground`).
FOREGROUND_LEVEL = 0.05


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _names(name: str, values: object, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (tuple, list)) or not values:
        raise ValueError(f"{name}: expected a non-empty sequence of names, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected distinct names, got {values!r}")
    for value in values:
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise ValueError(f"{name}: expected names from {allowed}, got {value!r}")
    return tuple(values)


@dataclass(frozen=True)
class CurationConfig:
    """The recipe of a curated dataset (DiffNR's, docs/curation.md).

    Attributes:
        views: sparse view counts; each gives one subset of every kind in `subsets`.
        dense_views: K, the dense projections simulated over 360 degrees; the
            sparse subsets are drawn from them (300 divides 25, 50 and 75, so the
            uniform subsets are exactly equispaced).
        subsets: subset kinds: "uniform" (equispaced, random starting angle) and
            "random" (views drawn without replacement: gaps and clusters).
        representations: names in the reconstructor registry
            (`data_curation.reconstructors`).
        mix: relative share of each representation among a volume's
            reconstructions (same length as `representations`; DiffNR: 1:1).
        iters_fraction: (low, high): each reconstruction runs a fraction drawn
            uniformly from this range of its representation's standard count
            (DiffNR: 25-50%).
        standard_iterations: per-representation override of the standard count
            (default: the registry's); the resolved counts are recorded.
        size: resample every volume to size^3 voxels (linear); None keeps its shape.
        box_mm: side of the scanned box along the volume's longest axis, mm
            (isotropic voxels; 256 mm as `ConeBeamGeometry.default`).
        noise_i0: TIGRE noise dose (photons per ray, Poisson + Gaussian (0, 10))
            of the dense projections; None for noiseless projections.
        axes: slice axes of the (artifact, clean) pairs, from "z", "y", "x".
        min_foreground: keep a pair only when at least this fraction of its clean
            slice's pixels exceeds `FOREGROUND_LEVEL` (drops air-only slices; 0 keeps all).
        slice_dtype: storage dtype of the slices, "float16" or "float32"
            (projections are always float32).
        anatomy: anatomy of volumes the data manifest does not describe.
        prompt: text prompt template; "{anatomy}" is replaced.
        seed: master seed; each volume's seed derives from it and the file's hash.
        threads: torch threads per volume job (fixed so that results do not
            depend on the machine running the job).
    """

    views: tuple[int, ...] = (25, 50, 75)
    dense_views: int = 300
    subsets: tuple[str, ...] = SUBSET_KINDS
    representations: tuple[str, ...] = ("hashgrid", "gaussians")
    mix: tuple[float, ...] = (1.0, 1.0)
    iters_fraction: tuple[float, float] = (0.25, 0.5)
    standard_iterations: dict[str, int] = field(default_factory=dict)
    size: int | None = 128
    box_mm: float = 256.0
    noise_i0: float | None = 1e5
    axes: tuple[str, ...] = ("z",)
    min_foreground: float = 0.05
    slice_dtype: str = "float16"
    anatomy: str = "generic"
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.views, (tuple, list)) or not self.views:
            raise ValueError(f"views: expected a non-empty sequence of ints, got {self.views!r}")
        for n in self.views:
            _positive_int("views", n)
        _positive_int("dense_views", self.dense_views)
        if max(self.views) > self.dense_views:
            raise ValueError(
                f"views: every count must be <= dense_views ({self.dense_views}), "
                f"got {max(self.views)}"
            )
        object.__setattr__(self, "views", tuple(sorted(set(self.views))))
        object.__setattr__(self, "subsets", _names("subsets", self.subsets, SUBSET_KINDS))
        object.__setattr__(self, "axes", _names("axes", self.axes, AXES))
        reps = _names("representations", self.representations, None)
        object.__setattr__(self, "representations", reps)
        mix = tuple(self.mix) if isinstance(self.mix, (tuple, list)) else ()
        if len(mix) != len(reps) or not all(
            isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in mix
        ) or sum(mix) <= 0:
            raise ValueError(
                f"mix: expected {len(reps)} weights >= 0 (one per representation {reps}) "
                f"with a positive sum, got {self.mix!r}"
            )
        object.__setattr__(self, "mix", tuple(float(w) for w in mix))
        low, high = self.iters_fraction
        if not (0 < low <= high <= 1):
            raise ValueError(
                f"iters_fraction: expected (low, high) with 0 < low <= high <= 1, "
                f"got {self.iters_fraction!r}"
            )
        object.__setattr__(self, "iters_fraction", (float(low), float(high)))
        if not isinstance(self.standard_iterations, dict):
            raise TypeError(
                f"standard_iterations: expected a dict name -> int, "
                f"got {type(self.standard_iterations).__name__}"
            )
        for name, count in self.standard_iterations.items():
            _positive_int(f"standard_iterations[{name!r}]", count)
        if self.size is not None:
            _positive_int("size", self.size)
        if not isinstance(self.box_mm, (int, float)) or not self.box_mm > 0:
            raise ValueError(f"box_mm: expected a positive length in mm, got {self.box_mm!r}")
        if self.noise_i0 is not None and not (
            isinstance(self.noise_i0, (int, float)) and self.noise_i0 > 0
        ):
            raise ValueError(f"noise_i0: expected a positive dose or None, got {self.noise_i0!r}")
        if not isinstance(self.min_foreground, (int, float)) or not 0 <= self.min_foreground < 1:
            raise ValueError(f"min_foreground: expected a fraction in [0, 1), got "
                             f"{self.min_foreground!r}")
        if self.slice_dtype not in SLICE_DTYPES:
            raise ValueError(f"slice_dtype: expected one of {SLICE_DTYPES}, "
                             f"got {self.slice_dtype!r}")
        for name in ("anatomy", "prompt"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: expected a non-empty string, got "
                                 f"{getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")
        _positive_int("threads", self.threads)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return dataclasses.asdict(self)

    def prompt_for(self, anatomy: str) -> str:
        """The text prompt of a volume of `anatomy`."""
        return self.prompt.replace("{anatomy}", anatomy)
