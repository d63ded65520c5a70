"""The random choices of one volume, drawn up front from its seed.

Drawing every choice (subsets, representation of each reconstruction,
iteration counts, seeds) before any computation makes a volume's data a pure
function of (master seed, file content, config), whatever worker runs it and
in whatever order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from data_curation.config import CurationConfig


@dataclass(frozen=True)
class Job:
    """One underfit reconstruction of a volume.

    Attributes:
        views: number of sparse views.
        subset: subset kind ("uniform" or "random").
        view_ids: (views,) sorted indices into the dense views.
        representation: reconstructor name.
        iterations: iterations run.
        standard_iterations: the representation's standard count.
        fraction: the drawn fraction (iterations = max(1, round(fraction * standard))).
        seed: the reconstructor's seed.
    """

    views: int
    subset: str
    view_ids: tuple[int, ...]
    representation: str
    iterations: int
    standard_iterations: int
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        """Shard stem, e.g. "v025-uniform-hashgrid"."""
        return f"v{self.views:03d}-{self.subset}-{self.representation}"


def volume_seed(seed: int, source_sha256: str) -> int:
    """A volume's seed: 63 bits of sha256(master seed, content hash of its file)."""
    digest = hashlib.sha256(f"{seed}:{source_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def select_views(kind: str, n: int, n_dense: int, rng: np.random.Generator) -> np.ndarray:
    """`n` sorted distinct indices into `n_dense` views over 360 degrees.

    "uniform": equispaced (``round(i * K / n)``) from a random starting view;
    "random": drawn uniformly without replacement (irregular gaps and clusters).
    """
    if not 1 <= n <= n_dense:
        raise ValueError(f"n: expected 1 <= n <= {n_dense}, got {n}")
    if kind == "uniform":
        start = int(rng.integers(math.ceil(n_dense / n)))
        ids = (start + np.round(np.arange(n) * n_dense / n).astype(np.int64)) % n_dense
    elif kind == "random":
        ids = rng.choice(n_dense, size=n, replace=False)
    else:
        raise ValueError(f"kind: expected 'uniform' or 'random', got {kind!r}")
    return np.sort(ids.astype(np.int64))


def biplanar_views(angles: np.ndarray, view_ids: np.ndarray) -> np.ndarray:
    """The two views of `view_ids` nearest 0 and 90 degrees (circular distance).

    Args:
        angles: (K,) dense view angles, radians.
        view_ids: (n,) indices into `angles`.

    Returns:
        (2,) indices into `angles` (equal when the subset has one view).
    """
    chosen = angles[view_ids]
    picks = []
    for target in (0.0, math.pi / 2):
        distance = np.abs(np.angle(np.exp(1j * (chosen - target))))
        picks.append(int(view_ids[int(np.argmin(distance))]))
    return np.asarray(picks, dtype=np.int64)


def apportion(weights: tuple[float, ...], n: int) -> list[int]:
    """Counts per weight summing to `n` (largest remainder; ties to the earlier weight)."""
    total = sum(weights)
    quotas = [w * n / total for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def plan_volume(config: CurationConfig, seed: int, standard: dict[str, int]) -> list[Job]:
    """The reconstructions of one volume: one per (view count, subset kind).

    Representations are shared out over them in the `config.mix` ratio (exact
    up to rounding within each volume) in a random order.

    Args:
        config: the recipe.
        seed: the volume's seed (`volume_seed`).
        standard: standard iteration count of each representation.
    """
    rng = np.random.default_rng(seed)
    combos = [(n, kind) for n in config.views for kind in config.subsets]
    counts = apportion(config.mix, len(combos))
    reps = [r for r, c in zip(config.representations, counts, strict=True) for _ in range(c)]
    reps = [reps[i] for i in rng.permutation(len(reps))]
    low, high = config.iters_fraction
    jobs = []
    for (n, kind), rep in zip(combos, reps, strict=True):
        ids = select_views(kind, n, config.dense_views, rng)
        fraction = float(rng.uniform(low, high))
        iterations = max(1, round(fraction * standard[rep]))
        jobs.append(Job(n, kind, tuple(int(i) for i in ids), rep, iterations, standard[rep],
                        fraction, int(rng.integers(2**31 - 1))))
    return jobs
