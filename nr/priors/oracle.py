"""The ceiling of any prior: a pseudo-reference that is the ground truth itself.

DiffNR with `TruthPrior` in place of a learned prior (same schedule, weight, guard and loss)
shows how much a perfect pseudo-reference could add to the NR on a benchmark scan; a learned
prior's gain is then read as a share of that ceiling (docs/diffnr.md, "Ceiling"). It needs
the ground truth, so it exists for benchmarks only.
"""

from __future__ import annotations

from typing import Any

import torch

from nr.geometry import ConeBeamGeometry


class TruthPrior:
    """A `nr.priors.protocol.Prior` whose every pseudo-reference is `truth`.

    Args:
        truth: (Z, Y, X) ground truth, attenuation per mm, on the scan's grid.
    """

    resolution: int | None = None

    def __init__(self, truth: torch.Tensor) -> None:
        if not isinstance(truth, torch.Tensor) or truth.dim() != 3:
            raise ValueError("truth: expected a (Z, Y, X) tensor")
        self.truth = truth.detach().float().cpu()

    def pseudo_reference(
        self,
        volume: torch.Tensor,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        volume_scale: float,
    ) -> torch.Tensor:
        if tuple(self.truth.shape) != tuple(volume.shape):
            raise ValueError(
                f"truth: shape {tuple(self.truth.shape)} is not the volume's {tuple(volume.shape)}"
            )
        return self.truth.to(volume.device).clone()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
