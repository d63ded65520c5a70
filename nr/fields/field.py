"""A hash-grid neural attenuation field (NAF-class) implementing `nr.representation.Representation`.

    field = HashGridField(geo, FieldConfig())
    volume = field.to_volume(geo)                    # (Z, Y, X), differentiable
    sino = field.render_projections(geo, [0, 5])     # (2, V, U), differentiable

The field lives in the volume box of the geometry it was built for: world
(x, y, z) mm are mapped to the unit cube of that box, encoded by the hash grid
and decoded by NAF's MLP (LeakyReLU, a skip connection that re-injects the
encoding, sigmoid output). The sigmoid output is multiplied by
``attenuation_bound`` (per mm), so the field represents attenuation in
[0, attenuation_bound] per mm; outside the box it is zero.

Rendering (``FieldConfig.rendering``):

* ``"voxel"``: query the field at the voxel centres of ``geo`` and project the
  volume with `nr.ops.projector.project` (Joseph's method, compiled). One
  field evaluation serves every view of an iteration.
* ``"rays"``: NAF's renderer: ``n_samples`` stratified samples per detector
  ray between the ray's entry into and exit from the box, summed as
  ``sum(mu * dt)``; jittered with the torch RNG in training mode, midpoints
  in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nr.fields.hashgrid import HashGridConfig, HashGridEncoding
from nr.fields.rays import sample_rays
from nr.fields.tcnn import TCNN_BACKEND, make_tcnn_encoding, tcnn_available
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project

RENDERINGS = ("voxel", "rays")
BACKENDS = ("auto", "compiled", "torch", TCNN_BACKEND)


@dataclass(frozen=True)
class FieldConfig:
    """The field: encoding, MLP head, output scale, rendering and learning rates.

    Attributes:
        encoding: the hash-grid layout (NAF's defaults).
        n_layers: linear layers of the MLP, the output layer included (NAF: 4).
        hidden_dim: width of the hidden layers (NAF: 32).
        skips: layers whose input is the previous activation concatenated with
            the encoding (NAF: (2,)).
        attenuation_bound: attenuation per mm represented by a sigmoid output of
            1; choose it above the largest attenuation of the scan (NAF
            normalises volumes to [0, 1] and uses 1).
        initial_attenuation: None keeps torch's default initialisation of the
            output layer (NAF: the field starts near ``attenuation_bound / 2``
            everywhere); a value in (0, attenuation_bound) zeroes the output
            layer's weights and sets its bias to the logit of the value, so that
            the field starts at that constant attenuation (e.g. the mean of an
            FDK reconstruction), which saves many iterations.
        rendering: "voxel" or "rays" (module docstring).
        n_samples: samples per ray of the "rays" renderer (NAF: 192).
        coarse_iterations: during the first `coarse_iterations` optimiser steps
            the "voxel" renderer evaluates the field on a grid `coarse_factor`
            times coarser (same box), each step costing about coarse_factor^3
            times less, and the encoding levels finer than that grid are masked
            (set to zero) so that they cannot alias; 0 disables this phase.
        coarse_factor: the downsampling of the coarse phase.
        chunk_size: points per field evaluation; larger grids are evaluated in
            chunks and, under autograd, re-computed in the backward pass
            (activation checkpointing) so that memory stays bounded.
        backend: "auto" (tinycudann when CUDA and tinycudann are present, else
            the compiled kernel on CPU or the torch twin), "compiled", "torch"
            or "tcnn".
        lr_encoding: Adam learning rate of the table at the start.
        lr_encoding_final: its value at the last iteration (exponential decay).
        lr_network: Adam learning rate of the MLP at the start.
        lr_network_final: its value at the last iteration.
        seed: seed of the parameter initialisation.
    """

    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    n_layers: int = 4
    hidden_dim: int = 32
    skips: tuple[int, ...] = (2,)
    attenuation_bound: float = 1.0
    initial_attenuation: float | None = None
    rendering: str = "voxel"
    n_samples: int = 192
    coarse_iterations: int = 0
    coarse_factor: int = 2
    chunk_size: int = 1 << 21
    backend: str = "auto"
    lr_encoding: float = 1e-2
    lr_encoding_final: float = 1e-3
    lr_network: float = 1e-2
    lr_network_final: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.encoding, HashGridConfig):
            raise TypeError(f"encoding: expected a HashGridConfig, got {type(self.encoding)}")
        if not isinstance(self.coarse_iterations, int) or self.coarse_iterations < 0:
            raise ValueError(
                f"coarse_iterations: expected an int >= 0, got {self.coarse_iterations!r}"
            )
        for name in ("n_layers", "hidden_dim", "n_samples", "chunk_size", "coarse_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.n_layers < 2:
            raise ValueError(f"n_layers: expected at least 2, got {self.n_layers}")
        if any(not 0 < s < self.n_layers for s in self.skips):
            raise ValueError(
                f"skips: expected layer indices in [1, {self.n_layers}), got {self.skips}"
            )
        for name in (
            "attenuation_bound",
            "lr_encoding",
            "lr_encoding_final",
            "lr_network",
            "lr_network_final",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if self.initial_attenuation is not None and not (
            0 < self.initial_attenuation < self.attenuation_bound
        ):
            raise ValueError(
                f"initial_attenuation: expected a value in (0, {self.attenuation_bound}), "
                f"got {self.initial_attenuation!r}"
            )
        if self.rendering not in RENDERINGS:
            raise ValueError(f"rendering: expected one of {RENDERINGS}, got {self.rendering!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {self.backend!r}")


class HashGridField(nn.Module):
    """Hash-grid encoding + MLP over the volume box of `geo`.

    Args:
        geo: the scan whose volume box (``s_voxel`` around ``off_origin``) the
            field covers; other voxel grids over any part of the box can be queried.
        config: the field.
    """

    def __init__(self, geo: ConeBeamGeometry, config: FieldConfig = FieldConfig()) -> None:
        super().__init__()
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        backend = config.backend
        if backend == TCNN_BACKEND or (backend == "auto" and tcnn_available()):
            self.encoding = make_tcnn_encoding(config.encoding)
        else:
            self.encoding = HashGridEncoding(config.encoding, backend, generator)
        in_dim = config.encoding.output_dim
        widths = [in_dim] + [config.hidden_dim] * (config.n_layers - 1)
        layers = []
        for i in range(config.n_layers):
            fan_in = widths[i] + (in_dim if i in config.skips else 0)
            fan_out = 1 if i == config.n_layers - 1 else config.hidden_dim
            layer = nn.Linear(fan_in, fan_out)
            bound = 1.0 / math.sqrt(fan_in)  # torch's default init, drawn from our generator
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        if config.initial_attenuation is not None:
            p = config.initial_attenuation / config.attenuation_bound
            with torch.no_grad():
                layers[-1].weight.zero_()
                layers[-1].bias.fill_(math.log(p / (1 - p)))
        box_size = geo.s_voxel[::-1].copy()
        box_min = geo.off_origin[::-1] - box_size / 2
        self.register_buffer("box_min", torch.tensor(box_min, dtype=torch.float32))
        self.register_buffer("box_size", torch.tensor(box_size, dtype=torch.float32))
        # Optimiser steps taken (drives the coarse-to-fine phase; saved with the state).
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        coarse_cells = int(max(geo.n_voxel)) // config.coarse_factor
        kept = [r <= coarse_cells for r in config.encoding.resolutions()]
        mask = torch.tensor(kept, dtype=torch.float32).repeat_interleave(
            config.encoding.features_per_level
        )
        self.register_buffer("coarse_mask", mask, persistent=False)

    # ----------------------------------------------------------------- queries
    def _linear(self, i: int, x: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        if i not in self.config.skips:
            return layer(x)
        # == layer(cat([encoded, x])) without materialising the concatenation
        in_dim = encoded.shape[1]
        x = torch.addmm(layer.bias, x, layer.weight[:, in_dim:].t())
        return x.addmm_(encoded, layer.weight[:, :in_dim].t())

    def _coarse_phase(self) -> bool:
        return self.training and int(self.steps) < self.config.coarse_iterations

    def _density_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """(N,) attenuation at (N, 3) unit-cube points (the MLP of NAF)."""
        encoded = self.encoding(unit)
        if self._coarse_phase():
            encoded = encoded * self.coarse_mask
        x = encoded
        for i in range(len(self.layers) - 1):
            x = nn.functional.leaky_relu_(self._linear(i, x, encoded))
        x = self._linear(len(self.layers) - 1, x, encoded)
        return torch.sigmoid(x[:, 0]) * self.config.attenuation_bound

    def _evaluate(self, unit: torch.Tensor) -> torch.Tensor:
        """`_density_unit` in chunks of ``chunk_size``, checkpointed under autograd."""
        size = self.config.chunk_size
        if unit.shape[0] <= size:
            return self._density_unit(unit)
        chunks = []
        for chunk in unit.split(size):
            if torch.is_grad_enabled():
                chunks.append(checkpoint(self._density_unit, chunk, use_reentrant=False))
            else:
                chunks.append(self._density_unit(chunk))
        return torch.cat(chunks)

    def _to_unit(self, points: torch.Tensor) -> torch.Tensor:
        return ((points - self.box_min) / self.box_size).to(self.box_min.dtype)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Attenuation per mm at world points.

        Args:
            points: (N, 3) world (x, y, z) mm, finite.

        Returns:
            (N,) attenuation per mm, zero outside the box; differentiable with
            respect to the parameters.
        """
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
            shape = getattr(points, "shape", type(points).__name__)
            raise ValueError(f"points: expected an (N, 3) tensor, got {shape}")
        unit = self._to_unit(points)
        inside = ((unit >= 0) & (unit <= 1)).all(dim=1)
        return self._evaluate(unit) * inside

    def query_box(
        self, geo: ConeBeamGeometry, start: Sequence[int], size: Sequence[int]
    ) -> torch.Tensor:
        """(size_z, size_y, size_x) attenuation at the voxel centres of a sub-grid of `geo`.

        Args:
            geo: the voxel grid (any grid over the field's box).
            start: (z, y, x) first voxel index.
            size: (z, y, x) number of voxels; ``start + size <= geo.n_voxel``.
        """
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        start_zyx = np.asarray(start, dtype=np.int64).reshape(-1)
        size_zyx = np.asarray(size, dtype=np.int64).reshape(-1)
        if start_zyx.shape != (3,) or size_zyx.shape != (3,):
            raise ValueError(f"start, size: expected 3 ints (z, y, x), got {start}, {size}")
        if (
            np.any(start_zyx < 0)
            or np.any(size_zyx < 1)
            or np.any(start_zyx + size_zyx > geo.n_voxel)
        ):
            raise ValueError(
                f"start, size: box {start_zyx.tolist()} + {size_zyx.tolist()} is not inside "
                f"the grid {geo.n_voxel.tolist()}"
            )
        device = self.box_min.device
        axes = [
            torch.as_tensor(geo.voxel_centres(a)[start_zyx[a] : start_zyx[a] + size_zyx[a]])
            for a in range(3)
        ]
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        points = (
            torch.stack([x, y, z], dim=-1).reshape(-1, 3).to(device=device, dtype=torch.float32)
        )
        return self.density(points).reshape(*size_zyx.tolist())

    def to_volume(self, geo: ConeBeamGeometry) -> torch.Tensor:
        """(Z, Y, X) attenuation per mm at the voxel centres of `geo`; differentiable."""
        return self.query_box(geo, (0, 0, 0), geo.volume_shape)

    def render_projections(self, geo: ConeBeamGeometry, view_ids: Sequence[int]) -> torch.Tensor:
        """(len(view_ids), V, U) line integrals of the views `view_ids` of `geo`; differentiable."""
        if self.config.rendering == "rays":
            return self.render_rays(geo, view_ids)
        if self._coarse_phase():
            coarse = np.maximum(geo.n_voxel // self.config.coarse_factor, 1)
            geo = geo.with_volume(coarse)
        return project(self.to_volume(geo), geo, list(view_ids))

    def render_rays(self, geo: ConeBeamGeometry, view_ids: Sequence[int]) -> torch.Tensor:
        """NAF's renderer: (len(view_ids), V, U) sums of stratified samples along every ray."""
        samples = sample_rays(
            geo,
            view_ids,
            self.box_min,
            self.box_size,
            self.config.n_samples,
            jitter=self.training,
        )
        n_v, n_u = (int(n) for n in geo.n_detector)
        mu = self.density(samples.points.reshape(-1, 3)).reshape(samples.step.shape[0], -1)
        return (mu * samples.step[:, None]).sum(dim=1).reshape(len(samples.view_ids), n_v, n_u)

    # ----------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups "encoding" and "network" with their start and final learning rates."""
        c = self.config
        return [
            {
                "name": "encoding",
                "params": list(self.encoding.parameters()),
                "lr": c.lr_encoding,
                "lr_final": c.lr_encoding_final,
            },
            {
                "name": "network",
                "params": list(self.layers.parameters()),
                "lr": c.lr_network,
                "lr_final": c.lr_network_final,
            },
        ]

    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to do: the field has a fixed size."""

    def after_step(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Counts the steps (for the coarse-to-fine phase); the field has a fixed size."""
        self.steps.fill_(iteration)
