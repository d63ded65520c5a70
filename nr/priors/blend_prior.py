"""DiffusionBlend as a DiffNR prior (`nr.priors.protocol.Prior`): a data-consistent sample.

Each call noises the current reconstruction to an intermediate time t0 with q(x_t0 | x_0),
runs a few blended DDIM + CG steps from t0 to 0 on the cone-beam operator of the fitted views
(`nr.ops.project` / `backproject`) and returns the mean of `samples` such draws. A small t0
keeps the structure of the current volume; the prior removes artifacts, CG keeps the data fit.

Intensity map: low = 0 (air) and high = the ``high_percentile`` of the current volume, fixed
per call (the model sees [-1, 1], CG works in attenuation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import XRayOperator
from nr.priors.blend_model import BlendPrior
from nr.priors.sampler import BlendSampler, BlendSamplerConfig, IntensityMap
from nr.validation import check_int, check_number


@dataclass(frozen=True)
class DiffusionBlendPriorConfig:
    """How DiffusionBlend makes a pseudo-reference.

    Attributes:
        t0: diffusion time the current volume is noised to (of T = 1000); too high a t0
            replaces what the fit knows with what the prior guesses (docs/diffnr.md).
        sampler: DDIM steps from t0 to 0, eta, CG iterations (defaults: 5 steps, eta 0.85,
            5 CG iterations as in the release).
        high_percentile: percentile of the current volume mapped to +1.
        samples: draws averaged into the reference (an estimate of the posterior mean;
            `samples` times the cost of one).
        seed: seed of the prior's noise and partition generator.
    """

    t0: int = 50
    sampler: BlendSamplerConfig = field(default_factory=lambda: BlendSamplerConfig(steps=5))
    high_percentile: float = 99.9
    samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("t0", self.t0, 0)
        if self.t0 >= 1000:
            raise ValueError(f"t0: expected an int in [0, 1000), got {self.t0}")
        check_number("high_percentile", self.high_percentile, 50.0, 100.0, open_low=True)
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)


class DiffusionBlendPrior:
    """A `Prior` drawing DiffusionBlend pseudo-references (module docstring).

    Args:
        model: the trained patch prior.
        config: sampler settings.
    """

    def __init__(
        self, model: BlendPrior, config: DiffusionBlendPriorConfig = DiffusionBlendPriorConfig()
    ) -> None:
        if not isinstance(model, BlendPrior):
            raise TypeError(f"model: expected a BlendPrior, got {type(model).__name__}")
        self.config = config
        self.resolution = int(model.config.resolution)
        self.sampler = BlendSampler(model, config.sampler)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last: dict[str, float] = {}

    def pseudo_reference(
        self,
        volume: torch.Tensor,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        volume_scale: float,
    ) -> torch.Tensor:
        """The mean of `samples` data-consistent draws near `volume`; `last` records the cost."""
        c = self.config
        high = float(
            torch.quantile(
                volume.flatten()[:: max(1, volume.numel() // 2**20)], c.high_percentile / 100
            )
        )
        if not high > 0:
            raise ValueError(
                f"volume: has no positive attenuation (percentile {c.high_percentile} = {high})"
            )
        operator = XRayOperator(geo)
        intensity = IntensityMap(0.0, high)
        draws, evaluations = [], 0
        for _ in range(c.samples):
            draws.append(
                self.sampler.sample_from(
                    operator.forward,
                    operator.adjoint,
                    projections,
                    volume,
                    c.t0,
                    intensity,
                    self.generator,
                )
            )
            evaluations += self.sampler.stats.patch_evaluations
        self.last = {"high": high, "patch_evaluations": evaluations}
        return torch.stack(draws).mean(0)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
