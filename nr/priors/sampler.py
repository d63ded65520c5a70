"""DiffusionBlend sampling: blended patch scores, Tweedie x0, CG data consistency, DDIM.

Per step t -> t_prev (DDIM, eta):

1. partition the z slices (jumping at even steps, randomly offset adjacent at
   odd steps, ``nr.priors.partitions``); run the model on every patch and give
   each slice the epsilon of the one patch that owns it;
2. Tweedie: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1];
3. data consistency: map x0 to attenuation, run a few CG iterations on
   (A^T A + rho Dz^T Dz) x = A^T y warm-started at x0, map back;
4. DDIM: x_prev = sqrt(abar_prev) x0' + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
   sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),
   with the network's eps (as DDS and the release do).

Intensity: the model works in [-1, 1]; attenuation mu (1/mm) maps affinely,
mu = low + (m + 1) / 2 (high - low) (``IntensityMap``). The operator callables
A (volume -> projections) and AT (its adjoint) work in attenuation units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from nr.ops.iterative import conjugate_gradient
from nr.priors.blend_model import BlendPrior
from nr.priors.partitions import Patch, partition_for_step

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class IntensityMap:
    """Affine map between model space [-1, 1] and attenuation: mu = low + (m + 1) / 2 (high - low).

    Attributes:
        low: attenuation (1/mm) that maps to -1 (usually 0, air).
        high: attenuation that maps to +1 (e.g. the 99.9th percentile of an FDK
            reconstruction, or the maximum of the training normalisation).
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"IntensityMap: expected finite low < high, got {self.low}, {self.high}"
            )

    def to_model(self, mu: torch.Tensor) -> torch.Tensor:
        return 2.0 * (mu - self.low) / (self.high - self.low) - 1.0

    def to_attenuation(self, m: torch.Tensor) -> torch.Tensor:
        return self.low + (m + 1.0) * 0.5 * (self.high - self.low)


@dataclass(frozen=True)
class BlendSamplerConfig:
    """Settings of the blended DDIM + CG sampler.

    Attributes:
        steps: DDIM steps from the start time to 0 (release: 200 from T; DDS: 50).
        eta: DDIM stochasticity (release: 0.85).
        cg_iters: CG iterations of data consistency per step (release: 5); 0 = none.
        rho: weight of the z finite-difference term rho Dz^T Dz in CG (release: tiny).
        clip: clip Tweedie x0 to [-1, 1] before data consistency (release: yes).
        batch_size: patches per network pass (memory knob; no effect on results).
        jump_gap: gap of jumping partitions (release: 3); 1 = adjacent partitions
            at every step. Must be one of the model's gaps.
        progress: show a tqdm bar over steps.
    """

    steps: int = 50
    eta: float = 0.85
    cg_iters: int = 5
    rho: float = 0.0
    clip: bool = True
    batch_size: int = 16
    jump_gap: int = 3
    progress: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta: expected in [0, 1], got {self.eta}")
        if self.cg_iters < 0 or self.rho < 0:
            raise ValueError(f"cg_iters, rho: expected >= 0, got {self.cg_iters}, {self.rho}")
        if self.batch_size < 1 or self.jump_gap < 1:
            raise ValueError(
                f"batch_size, jump_gap: expected >= 1, got {self.batch_size}, {self.jump_gap}"
            )


def _dz_adjoint_dz(x: torch.Tensor) -> torch.Tensor:
    """Dz^T Dz x for forward differences along z (dim 0) of a (Z, Y, X) volume."""
    d = x[1:] - x[:-1]
    out = torch.zeros_like(x)
    out[:-1] -= d
    out[1:] += d
    return out


@torch.no_grad()
def cg_normal_equations(
    A: Operator,
    AT: Operator,
    y: torch.Tensor,
    x0: torch.Tensor,
    iters: int,
    rho: float = 0.0,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Conjugate gradients on (A^T A + rho Dz^T Dz) x = A^T y, warm-started at `x0`.

    Args:
        A: volume (Z, Y, X) -> projections (N, V, U); linear.
        AT: the adjoint of A.
        y: (N, V, U) measured projections.
        x0: (Z, Y, X) start.
        iters: at most this many CG iterations.
        rho: weight of the z-smoothness term.
        tol: stop once the normal-equation residual is below tol * ||A^T y||
            (float32 CG loses conjugacy and diverges past that point).

    Returns:
        (Z, Y, X) the iterate after `iters` steps.
    """

    def normal(v: torch.Tensor) -> torch.Tensor:
        out = AT(A(v))
        return out + rho * _dz_adjoint_dz(v) if rho else out

    return conjugate_gradient(normal, AT(y), x0, iters, tol=tol)


@torch.no_grad()
def blended_epsilon(
    model: BlendPrior, x: torch.Tensor, timestep: int, patches: list[Patch], batch_size: int
) -> torch.Tensor:
    """Epsilon of every slice of `x` (Z, H, W), each from the one patch of `patches` owning it."""
    eps = torch.empty_like(x)
    for first in range(0, len(patches), batch_size):
        chunk = patches[first : first + batch_size]
        index = torch.tensor([p.indices for p in chunk], device=x.device)
        gaps = torch.tensor([p.gap for p in chunk], device=x.device)
        out = model(x[index], timestep, gaps)
        owned = torch.tensor([p.owned for p in chunk], device=x.device)
        eps[index[owned]] = out[owned].to(x.dtype)
    return eps


@dataclass
class SamplerStats:
    """What a sampling run cost: DDIM steps and network evaluations (patch passes)."""

    steps: int = 0
    patch_evaluations: int = 0
    network_calls: int = 0

    def __add__(self, other: SamplerStats) -> SamplerStats:
        return SamplerStats(
            self.steps + other.steps,
            self.patch_evaluations + other.patch_evaluations,
            self.network_calls + other.network_calls,
        )


class BlendSampler:
    """Blended DDIM + CG reconstruction with a DiffusionBlend prior.

    Args:
        model: the patch score model (its schedule defines abar_t).
        config: sampler settings.
    """

    def __init__(self, model: BlendPrior, config: BlendSamplerConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config or BlendSamplerConfig()
        if self.config.jump_gap > 1 and self.config.jump_gap not in model.config.gaps:
            raise ValueError(
                f"jump_gap: {self.config.jump_gap} is not one of the model's gaps "
                f"{model.config.gaps}"
            )
        self.stats = SamplerStats()

    def timesteps(self, t_start: int) -> list[int]:
        """The DDIM timesteps from `t_start` down to 0, `config.steps` of them (distinct)."""
        T = self.model.config.num_train_timesteps
        if not 0 <= t_start < T:
            raise ValueError(f"t_start: expected in [0, {T}), got {t_start}")
        grid = torch.linspace(t_start, 0, min(self.config.steps, t_start + 1)).round().long()
        return grid.tolist()

    def _check(self, shape: tuple[int, ...], y: torch.Tensor) -> None:
        if len(shape) != 3:
            raise ValueError(f"shape: expected (Z, Y, X), got {shape}")
        down = self.model.config.downsampling
        if shape[1] % down or shape[2] % down:
            raise ValueError(
                f"shape: Y and X must be multiples of {down} for this model, got {shape}"
            )
        need = self.model.config.slices * (self.config.jump_gap if self.config.jump_gap > 1 else 1)
        if shape[0] < need:
            raise ValueError(
                f"shape: Z must be >= {need} (k x jump_gap) slices, got {shape}; set "
                f"jump_gap=1 for thinner volumes"
            )
        if not isinstance(y, torch.Tensor) or not torch.isfinite(y).all():
            raise ValueError("y: expected a finite projection tensor")

    @torch.no_grad()
    def sample(
        self,
        A: Operator,
        AT: Operator,
        y: torch.Tensor,
        shape: tuple[int, int, int],
        intensity: IntensityMap,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Reconstruct from pure noise at t = T - 1.

        Args:
            A: volume (Z, Y, X) -> projections (N, V, U), attenuation units.
            AT: adjoint of A.
            y: (N, V, U) measured projections (same device and dtype as the result).
            shape: (Z, Y, X) of the volume.
            intensity: model space <-> attenuation map.
            generator: CPU generator for noise and partition offsets.

        Returns:
            (Z, Y, X) reconstructed attenuation, dtype and device of `y`.
        """
        self._check(tuple(shape), y)
        x = torch.randn(tuple(shape), generator=generator).to(y)
        return self._run(
            A, AT, y, x, self.model.config.num_train_timesteps - 1, intensity, generator
        )

    @torch.no_grad()
    def sample_from(
        self,
        A: Operator,
        AT: Operator,
        y: torch.Tensor,
        volume: torch.Tensor,
        t0: int,
        intensity: IntensityMap,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Noise `volume` (attenuation, (Z, Y, X)) to time `t0` with q(x_t | x_0), then sample.

        Used by the DiffNR hook (an intermediate t0 keeps the current volume's
        structure) and for an FDK start. Arguments as `sample`; returns (Z, Y, X).
        """
        if not isinstance(volume, torch.Tensor) or volume.ndim != 3:
            raise ValueError(
                f"volume: expected a (Z, Y, X) tensor, got {getattr(volume, 'shape', type(volume))}"
            )
        if not torch.isfinite(volume).all():
            raise ValueError("volume: contains NaN or inf")
        self._check(tuple(volume.shape), y)
        if not 0 <= t0 < self.model.config.num_train_timesteps:
            raise ValueError(
                f"t0: expected in [0, {self.model.config.num_train_timesteps}), got {t0}"
            )
        abar = float(self.model.alphas_cumprod[t0])
        m0 = intensity.to_model(volume.to(y))
        noise = torch.randn(tuple(volume.shape), generator=generator).to(y)
        x = math.sqrt(abar) * m0 + math.sqrt(1.0 - abar) * noise
        return self._run(A, AT, y, x, t0, intensity, generator)

    def _run(
        self,
        A: Operator,
        AT: Operator,
        y: torch.Tensor,
        x: torch.Tensor,
        t_start: int,
        intensity: IntensityMap,
        generator: torch.Generator,
    ) -> torch.Tensor:
        cfg, abars = self.config, self.model.alphas_cumprod
        ts = self.timesteps(t_start)
        k = self.model.config.slices
        self.stats = SamplerStats()
        for step, t in enumerate(tqdm(ts, desc="DiffusionBlend", disable=not cfg.progress)):
            patches = partition_for_step(step, x.shape[0], generator, k, cfg.jump_gap)
            eps = blended_epsilon(self.model, x, t, patches, cfg.batch_size)
            self.stats.steps += 1
            self.stats.patch_evaluations += len(patches)
            self.stats.network_calls += math.ceil(len(patches) / cfg.batch_size)
            abar = float(abars[t])
            abar_prev = float(abars[ts[step + 1]]) if step + 1 < len(ts) else 1.0
            x0 = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
            if cfg.clip:
                x0 = x0.clamp(-1.0, 1.0)
            if cfg.cg_iters:
                mu = cg_normal_equations(
                    A, AT, y, intensity.to_attenuation(x0), cfg.cg_iters, cfg.rho
                )
                x0 = intensity.to_model(mu)
            sigma = cfg.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(tuple(x.shape), generator=generator).to(x)
        return intensity.to_attenuation(x)
