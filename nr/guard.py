"""Hallucination guard: judge a prior's pseudo-reference on views the fit has not seen.

A diffusion prior may remove true detail or invent structure. Comparing a
pseudo-reference with the views the fit is trained on cannot tell either from
a reference that removes noise: the fit has absorbed those views, noise
included, and a sparse scan's null space hides most of a volume's errors from
its own views. The guard therefore cross-validates: the loop withholds a few
views (``TrainConfig.validation_views``, spread evenly over the arc) from the
warm start and the fit until after the prior's last call, and each
pseudo-reference is accepted only when its data residual on those views,
``r = ||A_H x - p_H|| / ||p_H||``, is below the current volume's by at least
``margin`` (relative). A reference the guard cannot trust gets weight 0. Both
volumes' errors are seen from new angles and the noise of the held-out views is
the same for both, so the comparison measures which volume is closer to the
object. After the validation views join the fit nothing can be judged, so the
prior is not called again; with every reference rejected, the run is the NR
alone's under the same protocol, to the bit.

`GuardedHook` puts any prior (`nr.train.Hook`: SliceFixer, DiffusionBlend)
behind the guard; every decision is kept for the run's metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import check_projections, project
from nr.train import Hook, HookResult, TrainConfig, Trainer, validation_views

LOG = logging.getLogger("nr")


@dataclass(frozen=True)
class GuardConfig:
    """The validation protocol and the acceptance rule (module docstring).

    Attributes:
        fraction: share of the scan's views held out (at least one; `nr.train.validation_views`).
        release: fraction of the loop after which the held-out views join the fit; the prior
            is called only before it.
        margin: relative drop of the held-out residual a reference must achieve against
            the current volume's to be accepted (0: any drop).
    """

    fraction: float = 0.1
    release: float = 0.75
    margin: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 0.25):
            raise ValueError(f"fraction: expected a number in (0, 0.25], got {self.fraction!r}")
        if not (isinstance(self.release, (int, float)) and 0 < self.release <= 1):
            raise ValueError(f"release: expected a number in (0, 1], got {self.release!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin)):
            raise ValueError(f"margin: expected a number in [0, 1), got {self.margin!r}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin: expected a number in [0, 1), got {self.margin!r}")

    def protocol(self, train: TrainConfig, n_views: int) -> TrainConfig:
        """`train` with this protocol's validation views of an `n_views` scan.

        The NR alone and DiffNR take the same protocol: with every reference rejected they
        are the same run.
        """
        return dataclasses.replace(
            train,
            validation_views=validation_views(n_views, self.fraction),
            validation_until=max(1, round(self.release * train.iterations)),
        )


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict on one pseudo-reference.

    Attributes:
        iteration: training iteration of the check.
        views: the held-out view indices it was judged on.
        residual_reference: relative residual of the pseudo-reference on those views.
        residual_current: relative residual of the current reconstruction on them.
        weight_factor: 1 (accepted) or 0 (rejected), applied to the reference's weight.
        action: "accept" or "reject".
        reason: one human-readable line for the log.
    """

    iteration: int
    views: tuple[int, ...]
    residual_reference: float
    residual_current: float
    weight_factor: float
    action: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


class HallucinationGuard:
    """Compares pseudo-references with held-out measured views (module docstring).

    Args:
        projections: (N, V, U) measured line integrals of all views of `geo`.
        geo: the scan.
        config: the acceptance rule.
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
    def residual(self, volume: torch.Tensor, views: Sequence[int]) -> float:
        """Relative data residual of a (Z, Y, X) volume on the views `views`."""
        if tuple(volume.shape) != self.geo.volume_shape:
            raise ValueError(
                f"volume: expected shape {self.geo.volume_shape}, got {tuple(volume.shape)}"
            )
        measured = self.projections[list(views)]
        difference = project(volume.detach().float().cpu(), self.geo.subset(views)) - measured
        return float(difference.norm() / measured.norm().clamp_min(1e-12))

    def check(
        self,
        reference: torch.Tensor,
        current: torch.Tensor,
        views: Sequence[int],
        iteration: int,
    ) -> GuardDecision:
        """Judge `reference` against `current` on the held-out `views` (not fitted yet)."""
        views = tuple(int(v) for v in views)
        if not views:
            raise ValueError("views: expected at least one held-out view, got none")
        r_ref = self.residual(reference, views)
        r_cur = self.residual(current, views)
        accepted = r_ref <= (1.0 - self.config.margin) * r_cur
        action = "accept" if accepted else "reject"
        reason = (
            f"iteration {iteration}: held-out residual of the pseudo-reference {r_ref:.5f} vs "
            f"the current volume's {r_cur:.5f} on views {list(views)} (margin "
            f"{self.config.margin:g}) -> {action}"
        )
        decision = GuardDecision(iteration, views, r_ref, r_cur, float(accepted), action, reason)
        self.decisions.append(decision)
        return decision


class GuardedHook:
    """Wraps a prior's hook: its pseudo-references pass the guard before they supervise the fit.

    Keeps the wrapped hook's schedule (``every``, ``start``, ``loss_every``). The prior is
    called only while the trainer withholds its validation views (`Trainer.holding_out`):
    afterwards no reference could be judged. Records, per call, the prior's and the guard's
    wall time and the guard's decision (``calls``). With `score` (a volume -> {metric: value}
    function, e.g. PSNR/SSIM against a known ground truth), each call also records the scores
    of the pseudo-reference and of the current volume (``reference_quality``,
    ``current_quality``): whether the prior really improved on the fit.
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
        if not trainer.holding_out:
            return None
        started = time.perf_counter()
        with torch.random.fork_rng():  # the fit's random draws stay those of the NR alone
            result = self.hook(trainer, iteration)
        prior_seconds = time.perf_counter() - started
        if result is None:
            return None
        current = trainer.volume()
        views = trainer.config.validation_views
        decision = self.guard.check(result.reference, current, views, iteration)
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
