"""The contract every neural representation (hash-grid field, Gaussians) fulfils.

`nr.train.Trainer` only talks to a representation through this protocol, so the
training loop, its losses and its hooks (DiffNR's SliceFixer, DiffusionBlend)
are written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from nr.geometry import ConeBeamGeometry


@runtime_checkable
class Representation(Protocol):
    """A differentiable model of an attenuation volume (an ``nn.Module``).

    Shapes: volumes (Z, Y, X) float32 attenuation (per mm) in TIGRE's index
    order; projections (N, V, U) float32 line integrals.
    """

    def render_projections(self, geo: ConeBeamGeometry, view_ids: Sequence[int]) -> torch.Tensor:
        """(len(view_ids), V, U) projections of the views `view_ids` of `geo`; differentiable."""

    def to_volume(self, geo: ConeBeamGeometry) -> torch.Tensor:
        """(Z, Y, X) volume on the voxel grid of `geo`; differentiable; chunked (bounded memory)."""

    def query_box(
        self, geo: ConeBeamGeometry, start: Sequence[int], size: Sequence[int]
    ) -> torch.Tensor:
        """(size_z, size_y, size_x) sub-volume of `to_volume(geo)` starting at voxel index
        `start` (z, y, x); differentiable. Used for 3D TV and 3D SSIM on random crops."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: dicts with "params", "lr", "name" and optionally
        "lr_final" (the learning rate at the last iteration, for exponential decay)."""

    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after every backward pass, before the optimizer step (e.g. gradient
        statistics for density control). A no-op for fixed-size representations."""

    def after_step(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step (e.g. densify/prune, which edits `optimizer`)."""
