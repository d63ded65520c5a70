"""Hallucination guard: check a prior's pseudo-reference against the measured projections.

A diffusion prior may invent structure the scan never saw. Before a
pseudo-reference supervises the fit, it is projected along the measured
views and its data residual ``r_ref = ||A ref - p|| / ||p||`` is compared
with the current reconstruction's ``r_cur``. With ``ratio = r_ref / r_cur``:

* ``ratio <= accept_ratio``: accepted at full weight;
* ``accept_ratio < ratio < reject_ratio``: down-weighted linearly from 1 to 0;
* ``ratio >= reject_ratio``: rejected (weight 0).

The residual is also computed per view; the worst view's ratio is used when it
is larger, so that a structure inserted where only a few views see it is not
averaged away. Every decision is kept (``decisions``) for the run's metrics.

`GuardedHook` puts any prior's hook of `nr.train.Trainer` (SliceFixer,
DiffusionBlend) behind the guard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import check_projections, project
from nr.train import Hook, HookResult, Trainer

LOG = logging.getLogger("nr")


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds on the residual ratio (module docstring).

    Attributes:
        accept_ratio: largest ratio accepted at full weight.
        reject_ratio: ratio at and above which the reference is rejected.
        per_view: also compare the worst single view's ratio.
    """

    accept_ratio: float = 1.5
    reject_ratio: float = 3.0
    per_view: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accept_ratio) and self.accept_ratio >= 1.0):
            raise ValueError(f"accept_ratio: expected a number >= 1, got {self.accept_ratio!r}")
        if not (math.isfinite(self.reject_ratio) and self.reject_ratio > self.accept_ratio):
            raise ValueError(
                f"reject_ratio: expected a number > accept_ratio ({self.accept_ratio}), "
                f"got {self.reject_ratio!r}"
            )


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict on one pseudo-reference.

    Attributes:
        iteration: training iteration of the check.
        residual_reference: relative data residual of the pseudo-reference.
        residual_current: relative data residual of the current reconstruction.
        ratio: the ratio the thresholds were applied to (global or worst view).
        weight_factor: factor in [0, 1] applied to the reference's loss weight.
        action: "accept", "downweight" or "reject".
        reason: one human-readable line for the log.
    """

    iteration: int
    residual_reference: float
    residual_current: float
    ratio: float
    weight_factor: float
    action: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


class HallucinationGuard:
    """Compares pseudo-references with the data (module docstring).

    Args:
        projections: (N, V, U) measured line integrals of the views of `geo`.
        geo: the scan.
        config: thresholds.
    """

    def __init__(
        self, projections: torch.Tensor, geo: ConeBeamGeometry, config: GuardConfig = GuardConfig()
    ) -> None:
        check_projections(projections, geo)
        self.projections = projections.detach().float().cpu()
        self.geo = geo
        self.config = config
        self.decisions: list[GuardDecision] = []

    @torch.no_grad()
    def residuals(self, volume: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Relative data residual of a (Z, Y, X) volume: global and per view (N,)."""
        if tuple(volume.shape) != self.geo.volume_shape:
            raise ValueError(
                f"volume: expected shape {self.geo.volume_shape}, got {tuple(volume.shape)}"
            )
        difference = project(volume.detach().float().cpu(), self.geo) - self.projections
        per_view = difference.flatten(1).norm(dim=1) / self.projections.flatten(1).norm(
            dim=1
        ).clamp_min(1e-12)
        total = float(difference.norm() / self.projections.norm().clamp_min(1e-12))
        return total, per_view

    def check(
        self, reference: torch.Tensor, current: torch.Tensor, iteration: int
    ) -> GuardDecision:
        """Judge `reference` against the data, relative to the `current` reconstruction."""
        c = self.config
        r_ref, views_ref = self.residuals(reference)
        r_cur, views_cur = self.residuals(current)
        ratio = r_ref / max(r_cur, 1e-12)
        where = "overall"
        if c.per_view:
            view_ratio = views_ref / views_cur.clamp_min(1e-12)
            worst = int(view_ratio.argmax())
            if float(view_ratio[worst]) > ratio:
                ratio, where = float(view_ratio[worst]), f"view {worst}"
        if ratio <= c.accept_ratio:
            factor, action = 1.0, "accept"
        elif ratio >= c.reject_ratio:
            factor, action = 0.0, "reject"
        else:
            factor = (c.reject_ratio - ratio) / (c.reject_ratio - c.accept_ratio)
            action = "downweight"
        reason = (
            f"iteration {iteration}: pseudo-reference residual {r_ref:.4f} vs current {r_cur:.4f} "
            f"(ratio {ratio:.2f}, {where}; accept <= {c.accept_ratio}, reject >= "
            f"{c.reject_ratio}) -> {action}, weight x{factor:.2f}"
        )
        decision = GuardDecision(iteration, r_ref, r_cur, ratio, factor, action, reason)
        self.decisions.append(decision)
        return decision


class GuardedHook:
    """Wraps a prior's hook: its pseudo-references pass the guard before they supervise the fit.

    Keeps the wrapped hook's schedule (``every``, ``start``, ``loss_every``) and records, per
    call, the prior's and the guard's wall time and the guard's decision (``calls``). With
    `score` (a volume -> {metric: value} function, e.g. PSNR/SSIM against a known ground
    truth), each call also records the scores of the pseudo-reference and of the current
    volume (``reference_quality``, ``current_quality``): whether the prior improved on the fit.
    """

    def __init__(
        self,
        hook: Hook,
        guard: HallucinationGuard,
        score: Callable[[torch.Tensor], dict[str, float]] | None = None,
    ) -> None:
        self.hook = hook
        self.guard = guard
        self.score = score
        self.every = hook.every
        self.start = getattr(hook, "start", hook.every)
        self.loss_every = getattr(hook, "loss_every", 1)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, trainer: Trainer, iteration: int) -> HookResult | None:
        started = time.perf_counter()
        result = self.hook(trainer, iteration)
        prior_seconds = time.perf_counter() - started
        if result is None:
            return None
        current = trainer.volume()
        judged = result.reference if result.repair is None else result.repair
        decision = self.guard.check(judged, current, iteration)
        LOG.info("guard: %s", decision.reason)
        weight = result.weight * decision.weight_factor
        call = {
            "iteration": iteration,
            "prior_seconds": prior_seconds,
            "guard_seconds": time.perf_counter() - started - prior_seconds,
            "weight": weight,
            "guard": decision.to_dict(),
        }
        if self.score is not None:
            call["reference_quality"] = self.score(result.reference)
            call["current_quality"] = self.score(current)
            shown = {
                name: ", ".join(f"{key} {value:.4g}" for key, value in call[name].items())
                for name in ("reference_quality", "current_quality")
            }
            LOG.info(
                "iteration %d: pseudo-reference %s; current volume %s",
                iteration,
                shown["reference_quality"],
                shown["current_quality"],
            )
        self.calls.append(call)
        return dataclasses.replace(result, weight=weight)

    def state_dict(self) -> dict[str, Any]:
        inner = getattr(self.hook, "state_dict", None)
        return {"calls": list(self.calls), "hook": inner() if inner else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = list(state["calls"])
        if state["hook"] is not None:
            self.hook.load_state_dict(state["hook"])
