"""Initial Gaussians: from a (FDK) volume as R2-Gaussian's initialize_pcd.py, or random."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from nr.geometry import ConeBeamGeometry

MODES = ("volume", "random")


@dataclass(frozen=True)
class InitConfig:
    """How the Gaussians start (R2-Gaussian's defaults).

    Attributes:
        mode: "volume" (voxels of a reconstruction, normally FDK of the training views)
            or "random" (uniform positions in the volume box).
        n_points: Gaussians to start with (R2-Gaussian: 50,000; all candidate voxels
            when fewer exceed the threshold).
        threshold: "volume" mode keeps voxels above threshold * unit (R2-Gaussian: 0.05
            of its [0, 1] volumes; unit is the scan's attenuation scale).
        density_rescale: initial density = voxel value * density_rescale (R2-Gaussian:
            0.15); "random" mode uses density_rescale * unit / 2.
        detail_floor: None samples the voxels above the threshold uniformly (R2-Gaussian);
            a number f >= 0 samples them with probability proportional to their detail
            (`voxel_detail`) plus f times the candidates' mean detail, so that edges get
            more Gaussians than flat tissue ("volume" mode; docs/gaussians.md).
        seed: seed of the voxel sampling and of the random positions.
    """

    mode: str = "volume"
    n_points: int = 50_000
    threshold: float = 0.05
    density_rescale: float = 0.15
    detail_floor: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not isinstance(self.n_points, int) or self.n_points < 4:
            raise ValueError(f"n_points: expected an int >= 4, got {self.n_points!r}")
        for name in ("threshold", "density_rescale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        floor = self.detail_floor
        if floor is not None and not (
            isinstance(floor, (int, float)) and math.isfinite(floor) and floor >= 0
        ):
            raise ValueError(f"detail_floor: expected None or a number >= 0, got {floor!r}")


def voxel_detail(values: np.ndarray) -> np.ndarray:
    """|values - their Gaussian blur (sigma 1 voxel)|: large at edges, ~0 in flat regions."""
    return np.abs(values - ndimage.gaussian_filter(values, 1.0))


def sample_voxels(
    candidates: np.ndarray, count: int, weights: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """`count` distinct entries of `candidates` (all when fewer), uniformly or with
    probability proportional to `weights` (>= 0, one per candidate; Efraimidis-Spirakis
    keys: one uniform draw per candidate, so the cost does not depend on `count`)."""
    if weights is None:
        return rng.choice(candidates, min(count, candidates.size), replace=False)
    if count >= candidates.size:
        return candidates
    with np.errstate(divide="ignore"):
        keys = np.log(rng.random(candidates.size)) / weights
    return candidates[np.argpartition(-keys, count - 1)[:count]]


def nearest_neighbour_scales(points: np.ndarray) -> np.ndarray:
    """(G,) sqrt of the mean squared distance to the 3 nearest other points (R2's distCUDA2)."""
    distances, _ = cKDTree(points).query(points, k=4)
    return np.sqrt(np.mean(distances[:, 1:] ** 2, axis=1))


def initial_points(
    geo: ConeBeamGeometry,
    config: InitConfig = InitConfig(),
    volume: torch.Tensor | np.ndarray | None = None,
    unit: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions, densities and isotropic scales of the initial Gaussians.

    Args:
        geo: the scan (its voxel grid and box).
        config: the initialisation.
        volume: (Z, Y, X) attenuation per mm on the grid of `geo`; needed in "volume" mode.
        unit: the scan's attenuation scale (what counts as 1).

    Returns:
        means (G, 3) mm, densities (G,) per mm, scales (G, 3) mm; float32 CPU tensors.
    """
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    if not (isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0):
        raise ValueError(f"unit: expected a positive number, got {unit!r}")
    rng = np.random.default_rng(config.seed)
    if config.mode == "random":
        low = geo.voxel_origin_xyz() - geo.voxel_size_xyz() / 2
        means = low + rng.random((config.n_points, 3)) * geo.s_voxel[::-1]
        densities = np.full(config.n_points, config.density_rescale * unit / 2)
    else:
        if volume is None:
            raise ValueError("volume: 'volume' initialisation needs a (Z, Y, X) volume")
        values = torch.as_tensor(volume).detach().cpu().double().numpy()
        if values.shape != geo.volume_shape:
            raise ValueError(f"volume: expected shape {geo.volume_shape}, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("volume: contains NaN or infinite values")
        candidates = np.flatnonzero(values > config.threshold * unit)
        if candidates.size < 4:
            raise ValueError(
                f"volume: only {candidates.size} voxels exceed threshold * unit = "
                f"{config.threshold * unit:.4g}; lower InitConfig.threshold"
            )
        weights = None
        if config.detail_floor is not None:
            detail = voxel_detail(values).reshape(-1)[candidates]
            weights = detail + config.detail_floor * detail.mean()
        chosen = sample_voxels(candidates, config.n_points, weights, rng)
        zyx = np.stack(np.unravel_index(chosen, values.shape), axis=1)
        means = geo.voxel_origin_xyz() + zyx[:, ::-1] * geo.voxel_size_xyz()
        densities = values.reshape(-1)[chosen] * config.density_rescale
    scales = np.repeat(nearest_neighbour_scales(means)[:, None], 3, axis=1)
    return tuple(torch.as_tensor(a, dtype=torch.float32) for a in (means, densities, scales))
