"""TIGRE's CT noise model (``CTnoise.add``) and projection synthesis.

    noisy = add_tigre_noise(projections, i0=1e5, gaussian=(0.0, 10.0), seed=0)
    sino = simulate_projections(volume, geo, noise=True, seed=0)

The model (TIGRE utilities/CTnoise.py, as R2-Gaussian and NAF call it):

1. ``m = max(projections)``; counts ``I = i0 * exp(-p / m)``: line integrals
   are rescaled so that the most attenuating ray keeps ``i0 / e`` photons.
   ``i0`` is therefore a dose per unattenuated ray in photons, independent of
   the units of p.
2. Quantum noise ``I ~ Poisson(I)``, then electronic noise ``I += N(mu, sigma)``
   (mu, sigma in photon counts).
3. Back to line integrals ``p = -log(I / i0) * m``.
4. Negative line integrals are clipped to 0 (R2-Gaussian's
   ``projs[projs < 0] = 0``, applied to TIGRE's output).

TIGRE takes the log of non-positive counts (NaN / inf); here counts are first
floored at `MIN_COUNTS` photons, which only happens when ``i0 / e`` is not far
above the Gaussian sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import check_projections, project

# Smallest photon count before the log (TIGRE would return NaN / inf below one count).
MIN_COUNTS = 1.0


@dataclass(frozen=True)
class NoiseConfig:
    """Parameters of `add_tigre_noise`.

    Attributes:
        i0: photons per unattenuated ray (TIGRE's ``Poisson``). 1e5 as in NAF and
            TIGRE's demos; R2-Gaussian's synthetic cases use 1e4.
        gaussian: (mean, std) of the electronic noise in photon counts (TIGRE's
            ``Gaussian``); (0, 10) in NAF, R2-Gaussian and TIGRE's demos.
    """

    i0: float = 1e5
    gaussian: tuple[float, float] = (0.0, 10.0)

    def __post_init__(self) -> None:
        if not isinstance(self.i0, (int, float)) or not math.isfinite(self.i0) or self.i0 <= 0:
            raise ValueError(f"i0: expected a positive finite photon count, got {self.i0!r}")
        pair = tuple(self.gaussian) if isinstance(self.gaussian, Sequence) else ()
        if len(pair) != 2 or not all(
            isinstance(g, (int, float)) and math.isfinite(g) for g in pair
        ):
            raise ValueError(
                f"gaussian: expected (mean, std) finite numbers, got {self.gaussian!r}"
            )
        if pair[1] < 0:
            raise ValueError(f"gaussian: std must be >= 0, got {pair[1]}")
        object.__setattr__(self, "gaussian", (float(pair[0]), float(pair[1])))


def add_tigre_noise(
    projections: torch.Tensor,
    i0: float = 1e5,
    gaussian: tuple[float, float] = (0.0, 10.0),
    seed: int = 0,
) -> torch.Tensor:
    """Poisson + Gaussian detector noise on line integrals, as TIGRE's ``CTnoise.add``.

    Args:
        projections: (N, V, U) float32/float64 line integrals (dimensionless),
            with a positive maximum; any device.
        i0: photons per unattenuated ray (see `NoiseConfig`).
        gaussian: (mean, std) of the electronic noise, photon counts.
        seed: seed of the torch.Generator on the projections' device; the same
            seed on the same device gives the same noise.

    Returns:
        (N, V, U) noisy line integrals >= 0, projections' dtype and device.
    """
    config = NoiseConfig(i0=i0, gaussian=gaussian)
    check_projections(projections, None)
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    peak = projections.max()
    if not peak > 0:
        raise ValueError(
            f"projections: the maximum line integral must be positive, got {float(peak)}"
        )
    generator = torch.Generator(device=projections.device).manual_seed(int(seed))
    counts = config.i0 * torch.exp(-projections / peak)
    counts = torch.poisson(counts, generator=generator)
    mean, std = config.gaussian
    electronic = torch.randn(
        counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
    )
    counts = (counts + mean + std * electronic).clamp(min=MIN_COUNTS)
    return (-torch.log(counts / config.i0) * peak).clamp(min=0.0)


def simulate_projections(
    volume: torch.Tensor,
    geo: ConeBeamGeometry,
    noise: bool | NoiseConfig = False,
    seed: int = 0,
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Projections of a volume, optionally with TIGRE's noise (data synthesis; no gradient).

    Args:
        volume: (Z, Y, X) float32/float64 attenuation per mm, shape ``geo.volume_shape``.
        geo: the scan.
        noise: False for clean line integrals, True for `NoiseConfig()` defaults,
            or a `NoiseConfig`.
        seed: noise seed (see `add_tigre_noise`).
        view_ids: views to simulate (all when None).
        backend: projector backend (see `nr.ops.projector.project`).

    Returns:
        (N, V, U) line integrals, volume's dtype and device.
    """
    if isinstance(noise, bool):
        config = NoiseConfig() if noise else None
    elif isinstance(noise, NoiseConfig):
        config = noise
    else:
        raise TypeError(f"noise: expected a bool or a NoiseConfig, got {type(noise).__name__}")
    with torch.no_grad():
        clean = project(volume, geo, view_ids, backend=backend)
        if config is None:
            return clean
        return add_tigre_noise(clean, config.i0, config.gaussian, seed)
