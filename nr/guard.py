"""Hallucination guard: judge a prior's pseudo-reference on views the loop has not fitted.

A diffusion prior may remove true detail or invent structure. Comparing a
pseudo-reference with the views the fit is trained on cannot tell either from
a reference that removes noise: the fit has absorbed those views, noise
included, and a sparse scan's null space hides most of a volume's errors from
its own views. The guard therefore cross-validates: the loop withholds a few
views (``TrainConfig.validation_views``, spread evenly over the arc) until after
the prior's last call, and each pseudo-reference is accepted only when its data
residual on those views, ``r = ||A_H x - p_H|| / ||p_H||``, is below the current
volume's by at least ``margin`` (relative). A reference the guard cannot trust
gets weight 0. Both volumes' errors are seen from new angles and the noise of the
held-out views is the same for both, so the comparison measures which volume is
closer to the object. After the validation views join the fit nothing can be
judged, so the prior is not called again; with every reference rejected, the run
is the NR alone's under the same protocol, to the bit.

The warm start (a classical reconstruction the NR is fitted to before the loop) leaves
them out too by default (``blind_warm_start``): a warm start that sees them leaves a trace
of them in the current volume, which then looks closer to the held-out data than an honest
estimate would, and the guard rejected helpful references (docs/diffnr.md). Blinding costs
the NR alone 0.1-0.4 dB at 10-25 views; the references it lets through gain more.

`nr.priors.protocol.PriorHook` puts any prior (SliceFixer, DiffusionBlend) behind the
guard; every decision is kept (``decisions``) for the run's metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import check_projections, project
from nr.train import TrainConfig, validation_views
from nr.validation import check_number

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
        blind_warm_start: the NR's warm start leaves the held-out views out too
            (`nr.warm_start.WarmStartConfig.sees_validation_views`), so that nothing the
            guard judges on has been fitted before its calls (False: the warm start sees
            every view).
    """

    fraction: float = 0.1
    release: float = 0.75
    margin: float = 0.0
    blind_warm_start: bool = True

    def __post_init__(self) -> None:
        check_number("fraction", self.fraction, 0.0, 0.25, open_low=True)
        check_number("release", self.release, 0.0, 1.0, open_low=True)
        check_number("margin", self.margin, 0.0, 0.99)

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
