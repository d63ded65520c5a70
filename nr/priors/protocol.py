"""DiffNR's prior protocol ("volume in, pseudo-reference out") and the hook that runs any prior.

A prior (`Prior`: the SliceFixer, `slicefixer.prior.SliceFixerPrior`, or DiffusionBlend,
`nr.priors.blend_prior.DiffusionBlendPrior`) turns the current reconstruction into a
pseudo-reference. `PriorHook` calls it on one schedule (`PriorSchedule`: start, every,
weight) from `nr.train.Trainer`, puts each reference behind the hallucination guard
(`nr.guard`) and hands the accepted ones to the trainer as the target of
``weight * (1 - SSIM3D(volume, reference))``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import HallucinationGuard
from nr.train import HookResult, Trainer
from nr.validation import check_int, check_number

LOG = logging.getLogger("nr")


@runtime_checkable
class Prior(Protocol):
    """Volume in, pseudo-reference out.

    Attributes:
        resolution: the largest slice side (pixels) the prior was trained on; None if it
            has no such limit.
    """

    resolution: int | None

    def pseudo_reference(
        self,
        volume: torch.Tensor,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        volume_scale: float,
    ) -> torch.Tensor:
        """A (Z, Y, X) float32 pseudo-reference of the (Z, Y, X) attenuation `volume`.

        Args:
            volume: the current reconstruction (attenuation per mm) on the grid of `geo`.
            projections: (N, V, U) measured line integrals of the views of `geo`: the ones
                the fit may use, for data consistency or conditioning.
            geo: the scan restricted to those views.
            volume_scale: the attenuation that counts as 1 in the fit's losses.
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to draw the same references (e.g. a generator)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class PriorSchedule:
    """When a prior is called and how its reference weighs in the loss.

    Attributes:
        start: first iteration that calls the prior.
        every: iterations between calls.
        weight: lambda of ``1 - SSIM3D(volume, reference)`` (DiffNR paper and release: 1).
        loss_every: iterations between evaluations of that term (the release: 10).
        crop: side of a random cubic crop of the term; None compares the full volumes.
    """

    start: int
    every: int
    weight: float = 1.0
    loss_every: int = 10
    crop: int | None = None

    def __post_init__(self) -> None:
        for name in ("start", "every", "loss_every"):
            check_int(name, getattr(self, name), 1)
        check_number("weight", self.weight, 0.0)
        if self.crop is not None:
            check_int("crop (the SSIM window is 11)", self.crop, 11)


class PriorHook:
    """A `nr.train.Hook` that calls a `Prior` on a `PriorSchedule` behind the guard.

    The prior is called only while the trainer withholds its validation views
    (`Trainer.holding_out`, see `nr.guard`) and never at the last iteration (its reference
    would not be used). Its random draws do not touch the fit's generators. Each call is
    recorded in ``calls``: the prior's and the guard's wall time, the weight given and the
    guard's decision; with `score` (a volume -> {metric: value} function, e.g. PSNR/SSIM
    against a known ground truth) also the scores of the reference and of the current volume
    (``reference_quality``, ``current_quality``): whether the prior really improved the fit.

    Args:
        prior: the prior.
        schedule: when and with what weight.
        guard: judges each reference on the held-out views.
        score: optional scoring of volumes, for the record only.
    """

    def __init__(
        self,
        prior: Prior,
        schedule: PriorSchedule,
        guard: HallucinationGuard,
        score: Callable[[torch.Tensor], dict[str, float]] | None = None,
    ) -> None:
        if not isinstance(prior, Prior):
            raise TypeError(
                f"prior: expected an object following Prior, got {type(prior).__name__}"
            )
        self.prior = prior
        self.schedule = schedule
        self.guard = guard
        self.score = score
        self.every, self.start = schedule.every, schedule.start
        self.loss_every = schedule.loss_every
        self.calls: list[dict[str, Any]] = []

    def __call__(self, trainer: Trainer, iteration: int) -> HookResult | None:
        if not trainer.holding_out or iteration >= trainer.config.iterations:
            return None
        started = time.perf_counter()
        current = trainer.volume()
        projections, geo = trainer.training_data()
        with torch.random.fork_rng():  # the fit's random draws stay those of the NR alone
            reference = self.prior.pseudo_reference(
                current, projections, geo, trainer.config.volume_scale
            )
        prior_seconds = time.perf_counter() - started
        decision = self.guard.check(reference, current, trainer.config.validation_views, iteration)
        LOG.info("guard: %s", decision.reason)
        weight = self.schedule.weight * decision.weight_factor
        call = {
            "iteration": iteration,
            "prior_seconds": prior_seconds,
            "guard_seconds": time.perf_counter() - started - prior_seconds,
            "weight": weight,
            "guard": decision.to_dict(),
        }
        if self.score is not None:
            call["reference_quality"] = self.score(reference)
            call["current_quality"] = self.score(current)
            LOG.info(
                "iteration %d: pseudo-reference %s; current volume %s",
                iteration,
                _shown(call["reference_quality"]),
                _shown(call["current_quality"]),
            )
        self.calls.append(call)
        return HookResult(reference=reference, weight=weight, crop=self.schedule.crop)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": list(self.calls), "prior": self.prior.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = list(state["calls"])
        self.prior.load_state_dict(state["prior"])


def _shown(scores: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4g}" for key, value in scores.items())
