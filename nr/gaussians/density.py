"""Adaptive density control of R2-Gaussian (clone, split, prune) as a strategy object.

The statistic is 3DGS's: the norm of the loss gradient with respect to a Gaussian's
projected centre, in normalised device coordinates (pixels x size/2), averaged over
the views in which the Gaussian was visible. The trainer's losses use R2-Gaussian's
normalised projection units, so R2-Gaussian's threshold applies unchanged. With K views
per iteration each view's gradient is multiplied by K, as if each were rendered alone.
With voxel rendering (no projected centres) it is the 3D position gradient instead
(`accumulate_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nr.gaussians.projection import rotation_matrices

PARAMETERS = ("means", "densities", "scales", "quaternions")


class GaussianSet(Protocol):
    """What density control reads and edits of a set of Gaussians
    (`nr.gaussians.model.GaussianModel`): its raw parameters ``raw_<name>`` for each name in
    `PARAMETERS`, their activated values, the gradient statistics and the scan's box."""

    config: Any  # GaussianConfig: density_unit
    box_size: float
    box_low: torch.Tensor
    box_high: torch.Tensor
    grad_sum: torch.Tensor
    grad_count: torch.Tensor
    raw_means: torch.nn.Parameter
    raw_densities: torch.nn.Parameter
    raw_scales: torch.nn.Parameter
    raw_quaternions: torch.nn.Parameter

    @property
    def count(self) -> int: ...

    @property
    def means(self) -> torch.Tensor: ...

    @property
    def densities(self) -> torch.Tensor: ...

    @property
    def scales(self) -> torch.Tensor: ...

    def density_to_raw(self, densities: torch.Tensor) -> torch.Tensor: ...

    def scale_to_raw(self, scales: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DensityControl:
    """When and how Gaussians are cloned, split and pruned (R2-Gaussian's defaults).

    Attributes:
        start: densify at iterations > start (R2-Gaussian: 500 of 30k).
        until: collect statistics and densify at iterations < until (R2-Gaussian: 15k).
        every: iterations between densifications (R2-Gaussian: 100).
        grad_threshold: mean view-space gradient norm above which a Gaussian is
            densified (R2-Gaussian: 5e-5).
        clone_scale: Gaussians whose largest scale is <= clone_scale * V are cloned,
            larger ones split (R2-Gaussian: 0.1; V the longest side of the box).
        split_count: children of a split (R2-Gaussian: 2); each has scale / (0.8 N)
            and density / N, positions drawn from the parent.
        min_density: Gaussians with density below min_density * density_unit are
            pruned (R2-Gaussian: 1e-5); so are Gaussians centred outside the box.
        max_gaussians: densification never grows the model beyond this count
            (R2-Gaussian stops growing above 500k); the largest gradients go first.
    """

    start: int = 500
    until: int = 15000
    every: int = 100
    grad_threshold: float = 5e-5
    clone_scale: float = 0.1
    split_count: int = 2
    min_density: float = 1e-5
    max_gaussians: int = 500_000

    def __post_init__(self) -> None:
        for name in ("start", "until", "every", "split_count", "max_gaussians"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if self.every < 1 or self.split_count < 2:
            raise ValueError(
                f"every, split_count: expected >= 1 and >= 2, got {self.every}, {self.split_count}"
            )
        for name in ("grad_threshold", "clone_scale", "min_density"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")

    def due(self, iteration: int) -> bool:
        """Whether to densify after the optimiser step of `iteration`."""
        return self.start < iteration < self.until and iteration % self.every == 0

    @torch.no_grad()
    def accumulate(
        self,
        model: GaussianSet,
        grad_means2d: torch.Tensor,
        visible: torch.Tensor,
        height: int,
        width: int,
    ) -> None:
        """Add the view-space gradient norms of one render ((K, G, 2) and (K, G) bool)."""
        ndc = grad_means2d * grad_means2d.new_tensor([width / 2, height / 2])
        norms = ndc.norm(dim=-1) * grad_means2d.shape[0]
        model.grad_sum += (norms * visible).sum(0)
        model.grad_count += visible.sum(0)

    @torch.no_grad()
    def accumulate_positions(self, model: GaussianSet, grad_means: torch.Tensor) -> None:
        """Add the position gradient norms of one voxel render ((G, 3), mm).

        Voxel rendering has no view-space centres; its statistic is the gradient with
        respect to the centre in R2-Gaussian's scene units (half the box = 1), counted
        once per render for every Gaussian that the render reached.
        """
        norms = grad_means.norm(dim=-1) * (model.box_size / 2)
        model.grad_sum += norms
        model.grad_count += norms > 0

    @torch.no_grad()
    def densify_and_prune(self, model: GaussianSet, optimizer: torch.optim.Optimizer) -> None:
        """Clone, split and prune `model`, editing the Adam state of `optimizer` to match."""
        grads = (model.grad_sum / model.grad_count).nan_to_num(0.0)
        selected = grads >= self.grad_threshold
        large = model.scales.amax(-1) > self.clone_scale * model.box_size
        cost = torch.where(large, self.split_count - 1, 1)  # Gaussians added by each
        budget = self.max_gaussians - model.count
        order = torch.argsort(grads, descending=True)
        fits = torch.zeros_like(selected)
        fits[order] = torch.cumsum((cost * selected)[order], 0) <= budget
        selected &= fits
        clone, split = selected & ~large, selected & large
        # Clones: both copies get half the density (R2-Gaussian).
        model.raw_densities[clone] = model.density_to_raw(model.densities[clone] / 2)
        new = {name: getattr(model, f"raw_{name}")[clone] for name in PARAMETERS}
        children = self._split_children(model, split)
        new = {name: torch.cat([new[name], children[name]]) for name in PARAMETERS}
        keep = torch.cat(
            [~split, torch.ones(len(new["means"]), dtype=torch.bool, device=split.device)]
        )
        edit_parameters(model, optimizer, extra=new)
        means, densities = model.means, model.densities
        keep &= densities >= self.min_density * model.config.density_unit
        keep &= ((means >= model.box_low) & (means <= model.box_high)).all(-1)
        edit_parameters(model, optimizer, keep=keep)
        model.grad_sum = model.grad_sum.new_zeros(model.count)
        model.grad_count = model.grad_count.new_zeros(model.count)

    def _split_children(self, model: GaussianSet, split: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.split_count
        scales = model.scales[split].repeat(n, 1)
        quats = model.raw_quaternions[split].repeat(n, 1)
        offsets = rotation_matrices(quats) @ (torch.randn_like(scales) * scales)[..., None]
        return {
            "means": model.means[split].repeat(n, 1) + offsets[..., 0],
            "densities": model.density_to_raw(model.densities[split].repeat(n) / n),
            "scales": model.scale_to_raw(scales / (0.8 * n)),
            "quaternions": quats,
        }


def edit_parameters(
    model: GaussianSet,
    optimizer: torch.optim.Optimizer,
    keep: torch.Tensor | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Keep the rows `keep` of every Gaussian parameter and append the rows `extra`.

    As 3DGS does: each parameter becomes a new ``nn.Parameter`` that replaces the old one
    in the model and in its optimiser group; Adam's moments follow the rows (kept rows keep
    theirs, appended rows start at zero) and the step count stays.
    """

    def edit(tensor: torch.Tensor, new_rows: torch.Tensor | None) -> torch.Tensor:
        if keep is not None:
            tensor = tensor[keep]
        if new_rows is not None:
            tensor = torch.cat([tensor, new_rows.to(tensor.dtype)])
        return tensor

    groups = {group.get("name"): group for group in optimizer.param_groups}
    for name in PARAMETERS:
        param = getattr(model, f"raw_{name}")
        group = groups.get(name)
        if group is None or len(group["params"]) != 1 or group["params"][0] is not param:
            raise ValueError(f"optimizer: expected a group {name!r} holding only raw_{name}")
        rows = None if extra is None else extra[name]
        new_param = torch.nn.Parameter(edit(param.detach(), rows))
        state = optimizer.state.pop(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key] = edit(state[key], None if rows is None else torch.zeros_like(rows))
        if state:
            optimizer.state[new_param] = state
        group["params"][0] = new_param
        setattr(model, f"raw_{name}", new_param)
    for name in ("grad_sum", "grad_count"):
        buffer = getattr(model, name)
        setattr(
            model,
            name,
            edit(buffer, None if extra is None else buffer.new_zeros(len(extra["means"]))),
        )
