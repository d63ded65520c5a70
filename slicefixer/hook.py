"""DiffNR's repair-and-augment step as a hook of `nr.train.Trainer`.

From iteration ``start``, every ``refresh`` iterations: take the current volume,
repair its slices with a SliceFixer (`repair_volume`, absolute scale kept), and
hand it to the trainer as the pseudo-reference of a loss
``weight * (1 - SSIM3D(reference, volume))`` added every ``loss_every``
iterations until the next refresh. With ``cg_iters`` the repaired volume is first
made consistent with the measured projections by a few CGLS iterations started from
it (DDS's data-consistency step, as the DiffusionBlend hook does after each denoising).
Conditioning views and data consistency use only the views the fit may see
(`Trainer.training_data`): a guard judges the reference on the others.

The DiffNR release refreshes once (iteration 10k of 12k) with weight 1 and the
loss every 10th iteration; the paper says "periodically", which this does.
Wrap the hook in `nr.guard.GuardedHook` to check each pseudo-reference against
held-out measured views first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nr.ops.iterative import CGLSConfig, cgls
from nr.train import HookResult, Trainer
from slicefixer.model import SliceFixer
from slicefixer.repair import repair_volume


@dataclass(frozen=True)
class SliceFixerHookConfig:
    """When and how the pseudo-reference is made and used.

    Attributes:
        start: first iteration that makes a pseudo-reference.
        refresh: iterations between two pseudo-references.
        loss_every: the 3D SSIM term is added every `loss_every` iterations (release: 10).
        weight: lambda of ``1 - SSIM3D`` (paper and release: 1.0).
        axes: slicing axes repaired and averaged ("z" = axial, the release's choice).
        prompt: text prompt; None = the model's default prompt.
        batch_size: slices per SliceFixer call.
        crop: side of a random cubic crop for the SSIM term; None = the full volume (release).
        window: intensity window mapped to the model's [-1, 1]: "model" (the range it was
            trained on: volumes normalised to [0, 1]) or "scan" (0 to the trainer's
            ``volume_scale``, for scans in other units).
        cg_iters: CGLS iterations on the measured projections, started from the repaired
            volume, before it becomes the reference; 0 = none (the release).
    """

    start: int
    refresh: int
    loss_every: int = 10
    weight: float = 1.0
    axes: tuple[str, ...] = ("z",)
    prompt: str | None = None
    batch_size: int = 16
    crop: int | None = None
    window: str = "model"
    cg_iters: int = 0

    def __post_init__(self) -> None:
        if self.window not in ("model", "scan"):
            raise ValueError(f"window: expected 'model' or 'scan', got {self.window!r}")
        minimum = {"start": 1, "refresh": 1, "loss_every": 1, "batch_size": 1, "cg_iters": 0}
        for name, least in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
        if not (
            isinstance(self.weight, (int, float))
            and math.isfinite(self.weight)
            and self.weight >= 0
        ):
            raise ValueError(f"weight: expected a number >= 0, got {self.weight!r}")
        object.__setattr__(self, "axes", tuple(self.axes))


class SliceFixerHook:
    """A `nr.train` hook making SliceFixer pseudo-references (module docstring).

    Args:
        model: the SliceFixer (eval mode is set here).
        config: schedule and loss.
    """

    def __init__(self, model: SliceFixer, config: SliceFixerHookConfig) -> None:
        if not isinstance(model, SliceFixer):
            raise TypeError(f"model: expected a SliceFixer, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config
        self.every = config.refresh
        self.start = config.start
        self.loss_every = config.loss_every

    def __call__(self, trainer: Trainer, iteration: int) -> HookResult | None:
        if iteration >= trainer.config.iterations:
            return None  # a pseudo-reference made after the last step would never be used
        c = self.config
        window = (0.0, trainer.config.volume_scale) if c.window == "scan" else "model"
        projections, geo = trainer.training_data()
        repair = repair_volume(
            self.model,
            trainer.volume(),
            projections,
            geo,
            axes=c.axes,
            prompt=c.prompt,
            batch_size=c.batch_size,
            window=window,
        )
        if not c.cg_iters:
            return HookResult(reference=repair, weight=c.weight, crop=c.crop)
        reference = cgls(
            projections.to(repair), geo, CGLSConfig(c.cg_iters), init=repair, progress=False
        )
        return HookResult(reference=reference, weight=c.weight, crop=c.crop)
