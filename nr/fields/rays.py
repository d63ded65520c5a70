"""Stratified ray samples through an axis-aligned box (NAF's renderer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry


@dataclass(frozen=True)
class RaySamples:
    """Samples of every detector ray of some views.

    Attributes:
        points: (R, S, 3) float32 world (x, y, z) mm, R = views * V * U rays.
        step: (R,) float32 length (mm) each sample stands for; 0 for rays
            that miss the box.
        view_ids: the views, in order.
    """

    points: torch.Tensor
    step: torch.Tensor
    view_ids: list[int]


def sample_rays(
    geo: ConeBeamGeometry,
    view_ids: Sequence[int],
    box_min: torch.Tensor,
    box_size: torch.Tensor,
    n_samples: int,
    jitter: bool,
) -> RaySamples:
    """Stratified samples between each ray's entry into and exit from a box.

    The segment of ray r inside the box is cut into `n_samples` equal strata;
    each sample sits at a uniformly random position in its stratum when
    `jitter` (torch's global RNG) and at its midpoint otherwise.

    Args:
        geo: the scan; rays as in ``geo.view_vectors()``.
        view_ids: indices into ``geo.angles``.
        box_min: (3,) world (x, y, z) corner of the box, mm.
        box_size: (3,) box edge lengths, mm.
        n_samples: samples per ray.
        jitter: random positions within the strata.
    """
    ids = [int(i) for i in view_ids]
    if not ids or min(ids) < 0 or max(ids) >= geo.n_views:
        raise ValueError(f"view_ids: expected indices in [0, {geo.n_views}), got {ids}")
    device = box_min.device
    vectors = torch.from_numpy(geo.view_vectors()[np.asarray(ids)]).to(device)  # (N, 4, 3)
    src, det, du, dv = vectors.unbind(dim=1)
    n_v, n_u = (int(n) for n in geo.n_detector)
    v = torch.arange(n_v, dtype=torch.float64, device=device)
    u = torch.arange(n_u, dtype=torch.float64, device=device)
    pixels = (
        det[:, None, None]
        + v[None, :, None, None] * dv[:, None, None]
        + u[None, None, :, None] * du[:, None, None]
    ).reshape(-1, 3)  # (R, 3)
    if geo.mode == "cone":
        start = src.repeat_interleave(n_v * n_u, dim=0)
        direction = pixels - start
    else:
        direction = src.repeat_interleave(n_v * n_u, dim=0)
        start = pixels - direction
    low = box_min.to(torch.float64)
    high = low + box_size.to(torch.float64)
    # Slab test in the ray parameter t (start + t * direction, t in [0, 1]).
    safe = torch.where(direction == 0, torch.ones_like(direction), direction)
    t_low, t_high = (low - start) / safe, (high - start) / safe
    parallel_inside = (start >= low) & (start <= high)
    t_enter = torch.where(
        direction == 0,
        torch.where(parallel_inside, -torch.inf, torch.inf),
        torch.minimum(t_low, t_high),
    )
    t_exit = torch.where(
        direction == 0,
        torch.where(parallel_inside, torch.inf, -torch.inf),
        torch.maximum(t_low, t_high),
    )
    near = t_enter.amax(dim=1).clamp(min=0.0)
    far = t_exit.amin(dim=1).clamp(max=1.0)
    span = (far - near).clamp(min=0.0)
    strata = torch.arange(n_samples, dtype=torch.float64, device=device)
    if jitter:
        offsets = torch.rand(span.shape[0], n_samples, dtype=torch.float64, device=device)
    else:
        offsets = torch.full((span.shape[0], n_samples), 0.5, dtype=torch.float64, device=device)
    t = near[:, None] + (strata + offsets) / n_samples * span[:, None]
    points = start[:, None] + t[..., None] * direction[:, None]
    step = span / n_samples * direction.norm(dim=1)
    return RaySamples(points.to(torch.float32), step.to(torch.float32), ids)
