"""R2-Gaussian's model: 3D Gaussians that sum to an attenuation volume.

Parameters (world mm, ANCHORS.md section 1): positions; density
``density_unit * softplus(raw)``; scales ``s_min + (s_max - s_min) sigmoid(raw)`` with
``s_min, s_max = scale_min * V, scale_max * V`` and V the longest side of the volume box;
unit quaternions (w, x, y, z). Projections use the X-ray rasterizer with the
integration-bias factor (`nr.gaussians.projection`), volumes the voxelizer; both are
differentiable in every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from nr.gaussians.density import DensityControl
from nr.gaussians.projection import Cameras, precisions, project
from nr.gaussians.rasterize import rasterize
from nr.gaussians.voxelize import voxelize
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project as project_volume


@dataclass(frozen=True)
class GaussianConfig:
    """The Gaussian model and its learning rates (R2-Gaussian's defaults).

    Attributes:
        scale_min: smallest scale as a fraction of V, the longest side of the volume box
            (R2-Gaussian: 0.0005).
        scale_max: largest scale as a fraction of V (R2-Gaussian: 0.5).
        density_unit: attenuation per mm of ``softplus(raw) = 1``; set it to the scan's
            attenuation scale so that the density learning rates mean what they mean in
            R2-Gaussian, whose volumes lie in [0, 1].
        cutoff: the rasterizer sums a Gaussian's footprint within this many standard
            deviations (Mahalanobis distance; R2-Gaussian: 3); the voxelizer within the radius
            that keeps the same share of its mass (3.33 for 3).
        lr_position, lr_position_final: position learning rate, in units of half the longest
            side of the volume box (R2-Gaussian's scene is [-1, 1]^3): 2e-4 -> 2e-5.
        lr_density, lr_density_final: 1e-2 -> 1e-3.
        lr_scale, lr_scale_final: 5e-3 -> 5e-4.
        lr_rotation, lr_rotation_final: 1e-3 -> 1e-4.
        density_control: clone/split/prune schedule; None keeps the Gaussians fixed.
        backend: kernels: "auto" (compiled on CPU, torch twins elsewhere), "compiled", "torch".
        rendering: how `render_projections` makes the training projections. "rasterize":
            R2-Gaussian's X-ray rasterizer (each Gaussian's EWA footprint on the detector).
            "voxel": voxelize on the scan's grid and project with `nr.ops.project`, the
            projector that simulates data and that the hash grid's voxel rendering uses; the
            projections are then exactly those of the volume the model is judged by, which
            the rasterizer's are not (its footprints extend beyond the box faces and its
            3-sigma cut differs: 4 % of the data's norm on a fitted model, docs/gaussians.md).
    """

    scale_min: float = 0.0005
    scale_max: float = 0.5
    density_unit: float = 1.0
    cutoff: float = 3.0
    lr_position: float = 2e-4
    lr_position_final: float = 2e-5
    lr_density: float = 1e-2
    lr_density_final: float = 1e-3
    lr_scale: float = 5e-3
    lr_scale_final: float = 5e-4
    lr_rotation: float = 1e-3
    lr_rotation_final: float = 1e-4
    density_control: DensityControl | None = field(default_factory=DensityControl)
    backend: str = "auto"
    rendering: str = "rasterize"

    def __post_init__(self) -> None:
        for name in ("density_unit", "cutoff") + tuple(
            n for n in self.__dataclass_fields__ if n.startswith("lr_")
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if not 0 < self.scale_min < self.scale_max:
            raise ValueError(
                f"scale_min, scale_max: expected 0 < scale_min < scale_max, got "
                f"{self.scale_min}, {self.scale_max}"
            )
        if self.backend not in ("auto", "compiled", "torch"):
            raise ValueError(
                f"backend: expected 'auto', 'compiled' or 'torch', got {self.backend!r}"
            )
        if self.rendering not in ("rasterize", "voxel"):
            raise ValueError(f"rendering: expected 'rasterize' or 'voxel', got {self.rendering!r}")
        if self.density_control is not None and not isinstance(
            self.density_control, DensityControl
        ):
            raise TypeError("density_control: expected a DensityControl or None")


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class GaussianModel(nn.Module):
    """Gaussians in the volume box of a geometry (implements `nr.representation.Representation`).

    Args:
        geo: the scan whose volume box bounds the Gaussians (and sets V).
        means: (G, 3) positions (x, y, z), mm.
        densities: (G,) positive peak attenuations, per mm.
        scales: (G, 3) positive standard deviations, mm (clamped into the scale bounds).
        config: the model.
        quaternions: (G, 4) rotations (w, x, y, z); identity when None.
    """

    def __init__(
        self,
        geo: ConeBeamGeometry,
        means: torch.Tensor,
        densities: torch.Tensor,
        scales: torch.Tensor,
        config: GaussianConfig = GaussianConfig(),
        quaternions: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        if not isinstance(config, GaussianConfig):
            raise TypeError(f"config: expected a GaussianConfig, got {type(config).__name__}")
        count = _check_points(means, densities, scales)
        if quaternions is None:
            quaternions = means.new_zeros(count, 4)
            quaternions[:, 0] = 1.0
        elif quaternions.shape != (count, 4) or not torch.isfinite(quaternions).all():
            raise ValueError(
                f"quaternions: expected finite (G, 4) = ({count}, 4), got "
                f"{tuple(quaternions.shape)}"
            )
        self.config = config
        self.box_size = float(max(geo.s_voxel))
        self.scale_bounds = (config.scale_min * self.box_size, config.scale_max * self.box_size)
        # The voxelizer's ellipsoid keeps the share of each Gaussian's mass that the
        # rasterizer's ellipse keeps (1 - exp(-c^2 / 2); 3.33 sigma for c = 3), so that the
        # volume and the projections carry the same mass: the chi-square (3 degrees of
        # freedom) quantile, 2 P^-1(3/2, kept) (scipy.special, not the slow-importing stats).
        kept = -math.expm1(-(config.cutoff**2) / 2)
        self.volume_cutoff = math.sqrt(2 * float(scipy.special.gammaincinv(1.5, kept)))
        low = torch.as_tensor(geo.voxel_origin_xyz() - geo.voxel_size_xyz() / 2)
        self.register_buffer("box_low", low.to(means.dtype))
        self.register_buffer(
            "box_high", (low + torch.as_tensor(geo.s_voxel[::-1].copy())).to(means.dtype)
        )
        s_lo, s_hi = self.scale_bounds
        fraction = ((scales - s_lo) / (s_hi - s_lo)).clamp(1e-4, 1 - 1e-4)
        self.raw_means = nn.Parameter(means.detach().clone())
        self.raw_densities = nn.Parameter(
            inverse_softplus(densities.detach() / config.density_unit)
        )
        self.raw_scales = nn.Parameter(torch.logit(fraction.detach()))
        self.raw_quaternions = nn.Parameter(quaternions.detach().clone())
        # Densification statistics (R2-Gaussian: the summed view-space gradient norms and
        # the number of views in which each Gaussian was visible since the last reset).
        self.register_buffer("grad_sum", means.new_zeros(count))
        self.register_buffer("grad_count", means.new_zeros(count))
        self._means2d: torch.Tensor | None = None
        self._means3d: torch.Tensor | None = None
        self._visible: torch.Tensor | None = None
        self._detector = (1, 1)
        # The whole-grid volume of the current training step's voxel render and its scan
        # (`query_box` cuts the TV and 3D SSIM boxes from it until `after_backward`).
        self._rendered: tuple[ConeBeamGeometry, torch.Tensor] | None = None

    # ------------------------------------------------------------ parameters
    @property
    def count(self) -> int:
        return self.raw_means.shape[0]

    @property
    def means(self) -> torch.Tensor:
        return self.raw_means

    @property
    def densities(self) -> torch.Tensor:
        return self._density(self.raw_densities)

    @property
    def scales(self) -> torch.Tensor:
        return self._scale(self.raw_scales)

    @property
    def quaternions(self) -> torch.Tensor:
        return F.normalize(self.raw_quaternions, dim=-1)

    def _density(self, raw: torch.Tensor) -> torch.Tensor:
        """Densities of raw density parameters (any subset of `raw_densities`)."""
        return self.config.density_unit * F.softplus(raw)

    def _scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Scales of raw scale parameters (any subset of `raw_scales`)."""
        s_lo, s_hi = self.scale_bounds
        return s_lo + (s_hi - s_lo) * torch.sigmoid(raw)

    def density_to_raw(self, densities: torch.Tensor) -> torch.Tensor:
        return inverse_softplus(densities / self.config.density_unit)

    def scale_to_raw(self, scales: torch.Tensor) -> torch.Tensor:
        s_lo, s_hi = self.scale_bounds
        return torch.logit(((scales - s_lo) / (s_hi - s_lo)).clamp(1e-6, 1 - 1e-6))

    def param_groups(self) -> list[dict[str, Any]]:
        """One Adam group per parameter, R2-Gaussian's rates (positions scaled to mm)."""
        c = self.config
        half = self.box_size / 2
        return [
            {
                "params": [self.raw_means],
                "name": "means",
                "lr": c.lr_position * half,
                "lr_final": c.lr_position_final * half,
            },
            {
                "params": [self.raw_densities],
                "name": "densities",
                "lr": c.lr_density,
                "lr_final": c.lr_density_final,
            },
            {
                "params": [self.raw_scales],
                "name": "scales",
                "lr": c.lr_scale,
                "lr_final": c.lr_scale_final,
            },
            {
                "params": [self.raw_quaternions],
                "name": "quaternions",
                "lr": c.lr_rotation,
                "lr_final": c.lr_rotation_final,
            },
        ]

    # -------------------------------------------------------------- rendering
    def render_projections(self, geo: ConeBeamGeometry, view_ids: Sequence[int]) -> torch.Tensor:
        """(len(view_ids), V, U) projections of the views `view_ids` of `geo`; differentiable."""
        if self.config.rendering == "voxel":
            means = self.means
            training = self.training and means.requires_grad
            if training:
                # A non-leaf alias whose gradient is the densification statistic: that of
                # every loss term on this render's volume (the projections', and the TV's
                # and 3D SSIM's on the boxes `query_box` cuts from it).
                means = means.view_as(means)
                means.retain_grad()
                self._means3d = means
            volume = self._voxelize_box(geo, (0, 0, 0), geo.volume_shape, means)
            if training:
                self._rendered = (geo, volume)
            return project_volume(volume, geo, list(view_ids), backend=self.config.backend)
        cameras = Cameras.from_geometry(
            geo.subset(view_ids), self.raw_means.dtype, self.raw_means.device
        )
        means2d, conics, amps = project(
            self.means,
            self.scales,
            self.quaternions,
            self.densities,
            cameras,
            self.config.backend,
        )
        if self.training and means2d.requires_grad:
            means2d.retain_grad()
            self._means2d = means2d
            self._visible = _on_detector(means2d, conics, amps, cameras, self.config.cutoff)
            self._detector = (cameras.height, cameras.width)
        return rasterize(
            means2d,
            conics,
            amps,
            cameras.height,
            cameras.width,
            self.config.cutoff,
            self.config.backend,
        )

    def to_volume(self, geo: ConeBeamGeometry) -> torch.Tensor:
        """(Z, Y, X) volume on the voxel grid of `geo`; differentiable."""
        return self.query_box(geo, (0, 0, 0), geo.volume_shape)

    def query_box(
        self, geo: ConeBeamGeometry, start: Sequence[int], size: Sequence[int]
    ) -> torch.Tensor:
        """(size_z, size_y, size_x) sub-volume of `to_volume(geo)` from voxel `start` (z, y, x).

        Within a training step of voxel rendering (from `render_projections` to
        `after_backward`, on the same `geo` object) the box is cut from the volume the render
        voxelized: the loop's TV and 3D SSIM terms then cost no second voxelization, and
        their gradients join the densification statistic (`after_backward`).
        """
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        start, size = [int(s) for s in start], [int(s) for s in size]
        if (
            len(start) != 3
            or len(size) != 3
            or any(
                s < 0 or n < 1 or s + n > m
                for s, n, m in zip(start, size, geo.n_voxel, strict=True)
            )
        ):
            raise ValueError(
                f"start, size: box {start} + {size} outside the grid {geo.volume_shape}"
            )
        if self._rendered is not None and self._rendered[0] is geo:
            box = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
            return self._rendered[1][box]
        return self._voxelize_box(geo, start, size, self.means)

    def _voxelize_box(
        self,
        geo: ConeBeamGeometry,
        start: Sequence[int],
        size: Sequence[int],
        means: torch.Tensor,
    ) -> torch.Tensor:
        """`query_box` on checked arguments, with `means` standing for `self.means`."""
        spacing = geo.voxel_size_xyz()
        origin = geo.voxel_origin_xyz() + spacing * start[::-1]
        # Only Gaussians whose bounding sphere reaches the box enter the kernels; the
        # activations run on those alone (a crop holds a small share of them). The sigmoid
        # is monotonic: the largest raw scale gives the largest scale.
        reach = self.volume_cutoff * self._scale(self.raw_scales.detach().amax(-1, True))
        low = torch.as_tensor(origin, dtype=reach.dtype, device=reach.device)
        high = low + torch.as_tensor(
            spacing * (np.array(size[::-1]) - 1), dtype=reach.dtype, device=reach.device
        )
        centres = means.detach()
        near = ((centres + reach >= low) & (centres - reach <= high)).all(-1)
        index = near.nonzero().squeeze(1)
        quaternions = F.normalize(self.raw_quaternions[index], dim=-1)
        return voxelize(
            means[index],
            precisions(self._scale(self.raw_scales[index]), quaternions),
            self._density(self.raw_densities[index]),
            origin.tolist(),
            spacing.tolist(),
            size,
            self.volume_cutoff,
            self.config.backend,
        )

    # -------------------------------------------------------- density control
    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Accumulate the gradient norms of the last render's centres (for densification)."""
        control = self.config.density_control
        if control is not None and iteration < control.until:
            if self._means2d is not None and self._means2d.grad is not None:
                control.accumulate(self, self._means2d.grad, self._visible, *self._detector)
            if self._means3d is not None and self._means3d.grad is not None:
                control.accumulate_positions(self, self._means3d.grad)
        self._means2d = self._means3d = self._visible = self._rendered = None

    def after_step(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Densify and prune on R2-Gaussian's schedule (edits `optimizer`)."""
        control = self.config.density_control
        if control is not None and control.due(iteration):
            control.densify_and_prune(self, optimizer)

    # ------------------------------------------------------------ checkpoints
    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        """As `nn.Module.load_state_dict`, first resizing to the stored number of Gaussians.

        The resize keeps the parameter objects (an optimiser built on this model stays
        valid, as `nr.train.Trainer` needs when it resumes): load before training steps.
        """
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            stored = state_dict.get(name)
            if stored is not None and stored.shape != tensor.shape:
                tensor.data = tensor.new_empty(stored.shape)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _check_points(means: torch.Tensor, densities: torch.Tensor, scales: torch.Tensor) -> int:
    if not isinstance(means, torch.Tensor) or means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means: expected a (G, 3) tensor, got {getattr(means, 'shape', means)}")
    count = means.shape[0]
    if count == 0:
        raise ValueError("means: expected at least one Gaussian")
    if not torch.is_floating_point(means):
        raise TypeError(f"means: expected a floating-point tensor, got {means.dtype}")
    for name, tensor, shape in (("densities", densities, (count,)), ("scales", scales, (count, 3))):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}: expected shape {shape}, got {getattr(tensor, 'shape', tensor)}"
            )
        if not torch.isfinite(tensor).all() or not (tensor > 0).all():
            raise ValueError(f"{name}: expected finite positive values")
    if not torch.isfinite(means).all():
        raise ValueError("means: expected finite values")
    return count


@torch.no_grad()
def _on_detector(
    means2d: torch.Tensor, conics: torch.Tensor, amps: torch.Tensor, cameras: Cameras, cutoff: float
) -> torch.Tensor:
    """(N, G) bool: the footprint of the Gaussian overlaps the detector in that view."""
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    reach_u, reach_v = cutoff * (c / det).sqrt(), cutoff * (a / det).sqrt()
    u, v = means2d.unbind(-1)
    return (
        (amps > 0)
        & (u + reach_u >= 0)
        & (u - reach_u <= cameras.width - 1)
        & (v + reach_v >= 0)
        & (v - reach_v <= cameras.height - 1)
    )
