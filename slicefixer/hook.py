"""DiffNR's repair-and-augment step as a hook of `nr.train.Trainer`.

From iteration ``start``, every ``refresh`` iterations: take the current volume,
repair its slices with a SliceFixer (`repair_volume`, absolute scale kept),
check the repaired volume against the measured projections
(`nr.guard.HallucinationGuard`), and hand it to the trainer as the
pseudo-reference of a ``weight * (1 - SSIM3D(reference, volume))`` loss added
every ``loss_every`` iterations until the next refresh.

The DiffNR release refreshes once (iteration 10k of 12k) with weight 1 and the
loss every 10th iteration; the paper says "periodically", which this does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import HallucinationGuard
from nr.train import HookResult, Trainer
from slicefixer.model import SliceFixer
from slicefixer.repair import repair_volume

LOG = logging.getLogger("nr")


@dataclass(frozen=True)
class SliceFixerHookConfig:
    """When and how the pseudo-reference is made and used.

    Attributes:
        start: first iteration that makes a pseudo-reference.
        refresh: iterations between two pseudo-references.
        loss_every: the 3D SSIM term is added every `loss_every` iterations (release: 10).
        weight: lambda of ``1 - SSIM3D`` (paper and release: 1.0).
        axes: slicing axes repaired and averaged ("z" = axial, the release's choice).
        prompt: text prompt; None = the model's default prompt.
        batch_size: slices per SliceFixer call.
        crop: side of a random cubic crop for the SSIM term; None = the full volume (release).
    """

    start: int
    refresh: int
    loss_every: int = 10
    weight: float = 1.0
    axes: tuple[str, ...] = ("z",)
    prompt: str | None = None
    batch_size: int = 16
    crop: int | None = None

    def __post_init__(self) -> None:
        for name in ("start", "refresh", "loss_every", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight)
                and self.weight >= 0):
            raise ValueError(f"weight: expected a number >= 0, got {self.weight!r}")
        object.__setattr__(self, "axes", tuple(self.axes))


class SliceFixerHook:
    """A `nr.train` hook making SliceFixer pseudo-references (module docstring).

    Args:
        model: the SliceFixer (eval mode is set here).
        projections: (N, V, U) measured projections of `geo` (biplanar conditioning views).
        geo: the training scan.
        config: schedule and loss.
        guard: checks each pseudo-reference against the data; None = no check.
    """

    def __init__(
        self,
        model: SliceFixer,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        config: SliceFixerHookConfig,
        guard: HallucinationGuard | None = None,
    ) -> None:
        if not isinstance(model, SliceFixer):
            raise TypeError(f"model: expected a SliceFixer, got {type(model).__name__}")
        self.model = model.eval()
        self.projections = projections.detach().float().cpu()
        self.geo = geo
        self.config = config
        self.guard = guard
        self.every = config.refresh
        self.start = config.start
        self.loss_every = config.loss_every
        self.calls: list[dict[str, Any]] = []

    def __call__(self, trainer: Trainer, iteration: int) -> HookResult | None:
        c = self.config
        started = time.perf_counter()
        volume = trainer.volume()
        reference = repair_volume(
            self.model, volume, self.projections, self.geo, axes=c.axes, prompt=c.prompt,
            batch_size=c.batch_size, window=(0.0, trainer.config.volume_scale),
        )
        repaired = time.perf_counter()
        weight = c.weight
        record: dict[str, Any] = {"iteration": iteration}
        if self.guard is not None:
            decision = self.guard.check(reference, volume, iteration)
            weight *= decision.weight_factor
            record["guard"] = decision.to_dict()
            LOG.info("guard: %s", decision.reason)
        record.update(repair_seconds=repaired - started,
                      guard_seconds=time.perf_counter() - repaired, weight=weight)
        self.calls.append(record)
        return HookResult(reference=reference, weight=weight, crop=c.crop)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": list(self.calls)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = list(state["calls"])
