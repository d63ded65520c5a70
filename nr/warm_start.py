"""Warm start: fit a neural representation to a classical reconstruction before the loop.

On a CPU budget of a few hundred iterations a neural representation started from a
constant (NAF) or from thresholded FDK voxels (R2-Gaussian) is still far from converged,
while ASD-POCS reaches a better volume in under a minute (docs/BENCHMARKS.md). Fitting the
representation to that volume first (squared error on random crops through ``query_box``, no
projections) puts the projection loop on a better starting point; the loop then answers to
the measured projections alone (docs/training.md, "Warm start").

    start = classical_start(projections, geo, "asd_pocs")
    losses = fit_to_volume(representation, geo, start, scale, WarmStartConfig())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nr.geometry import ConeBeamGeometry
from nr.ops.iterative import ASDPOCSConfig, SARTConfig, asd_pocs, sart
from nr.ops.projector import check_projections
from nr.representation import Representation
from nr.train import adam

METHODS = ("none", "sart", "asd_pocs")
CROP_SAMPLING = ("uniform", "attenuation")


@dataclass(frozen=True)
class WarmStartConfig:
    """How a reconstruction recipe warms its representation up (`nr.recon`).

    Attributes:
        method: the classical reconstruction to start from: "asd_pocs" (TIGRE's
            control logic, R2-Gaussian's settings), "sart" (20 sweeps) or "none"
            (the recipe's own start: FDK-mean constant field / FDK-seeded Gaussians).
        steps: Adam steps of the volume fit (0: only seed the Gaussians from the volume).
        crop: side of the random cubic crop fitted per step (clipped to the grid).
        crop_sampling: "uniform" (every crop position equally likely) or "attenuation"
            (each crop centred on a voxel drawn with probability proportional to the
            reference's attenuation, so that crops land on the object rather than the air
            around it; docs/gaussians.md).
        lr_factor: the learning rates start at this multiple of the representation's own
            (a volume fit tolerates larger steps than the projection loop).
        final_lr_factor: the learning rates decay exponentially from their start to this
            fraction of it over the steps.
        seed: seed of the crop positions.
        sees_validation_views: the classical reconstruction uses every view; False leaves out
            the loop's validation views (`TrainConfig.validation_views`), so that the
            DiffNR guard judges on views nothing before its calls has fitted (docs/diffnr.md).
    """

    method: str = "asd_pocs"
    steps: int = 200
    crop: int = 64
    crop_sampling: str = "uniform"
    lr_factor: float = 1.0
    final_lr_factor: float = 0.1
    seed: int = 0
    sees_validation_views: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.crop_sampling not in CROP_SAMPLING:
            raise ValueError(
                f"crop_sampling: expected one of {CROP_SAMPLING}, got {self.crop_sampling!r}"
            )
        for name, minimum in (("steps", 0), ("crop", 2), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
        factor = self.final_lr_factor
        if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ValueError(f"final_lr_factor: expected a number in (0, 1], got {factor!r}")
        factor = self.lr_factor
        if not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"lr_factor: expected a positive number, got {factor!r}")


def classical_start(
    projections: torch.Tensor, geo: ConeBeamGeometry, method: str
) -> torch.Tensor | None:
    """The (Z, Y, X) float32 CPU volume of `method` ("asd_pocs" | "sart"); None for "none".

    Args:
        projections: (N, V, U) line integrals of all views of `geo`.
        geo: the scan.
        method: one of `METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    check_projections(projections, geo)
    projections = projections.detach().float().cpu()
    if method == "asd_pocs":
        return asd_pocs(projections, geo, ASDPOCSConfig(), progress=False)
    if method == "sart":
        return sart(projections, geo, SARTConfig(n_iter=20), progress=False)
    return None


def fit_to_volume(
    representation: Representation,
    geo: ConeBeamGeometry,
    reference: torch.Tensor,
    scale: float,
    config: WarmStartConfig = WarmStartConfig(),
    progress: bool = True,
) -> list[float]:
    """Fit `representation` to `reference`: mean squared error on random crops (Adam, its
    own parameter groups).

    No density control runs: a Gaussian model keeps its count.

    Args:
        representation: an ``nn.Module`` implementing `Representation`, on any device.
        geo: the scan whose voxel grid `reference` lives on.
        reference: (Z, Y, X) attenuation per mm; negative values count as 0.
        scale: the attenuation that counts as 1 in the loss (the loop's ``volume_scale``).
        config: steps, crop size, learning-rate decay and seed.
        progress: show a tqdm bar.

    Returns:
        The loss of every step (squared error in units of `scale`).
    """
    if not isinstance(representation, torch.nn.Module) or not isinstance(
        representation, Representation
    ):
        raise TypeError("representation: expected an nn.Module implementing Representation")
    if not isinstance(reference, torch.Tensor) or tuple(reference.shape) != geo.volume_shape:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else reference
        raise ValueError(f"reference: expected a tensor of shape {geo.volume_shape}, got {shape}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    device = next(representation.parameters()).device
    target = (reference.detach().float().clamp(min=0) / scale).to(device)
    groups = representation.param_groups()
    factor = config.lr_factor
    optimizer = adam([dict(g, lr=g["lr"] * factor, lr_start=g["lr"] * factor) for g in groups])
    size = [min(config.crop, int(n)) for n in geo.n_voxel]
    starts = crop_starts(target, size, config)
    losses = []
    representation.train()
    for step, start in enumerate(tqdm(starts, disable=not progress, desc="warm start")):
        box = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        crop = representation.query_box(geo, start, size) / scale
        loss = (crop - target[box]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = config.final_lr_factor ** ((step + 1) / config.steps)
        for group in optimizer.param_groups:
            group["lr"] = group["lr_start"] * decay
        losses.append(loss.item())
    return losses


def crop_starts(
    target: torch.Tensor, size: Sequence[int], config: WarmStartConfig
) -> list[list[int]]:
    """The (z, y, x) first voxel of each step's crop of `size` inside `target` (Z, Y, X, >= 0).

    "uniform": each start uniform over the positions that fit. "attenuation": each crop
    centred (then shifted inside the grid) on a voxel drawn with probability proportional
    to `target`.
    """
    shape = [int(n) for n in target.shape]
    if config.crop_sampling == "uniform":
        generator = torch.Generator().manual_seed(config.seed)
        return [
            [
                int(torch.randint(0, n - s + 1, (1,), generator=generator))
                for n, s in zip(shape, size, strict=True)
            ]
            for _ in range(config.steps)
        ]
    weights = target.detach().double().cpu().flatten().numpy()
    total = weights.sum()
    if not total > 0:
        raise ValueError("reference: attenuation crop sampling needs a positive attenuation")
    rng = np.random.default_rng(config.seed)
    centres = np.unravel_index(rng.choice(weights.size, config.steps, p=weights / total), shape)
    return [
        [min(max(int(c) - s // 2, 0), n - s) for c, s, n in zip(centre, size, shape, strict=True)]
        for centre in zip(*centres, strict=True)
    ]
