"""The SliceFixer as a DiffNR prior (`nr.priors.protocol.Prior`): repair the current volume.

Each call repairs every slice of the current volume along `axes` with a SliceFixer
(`repair_volume`, absolute scale kept; the two measured views nearest 0 and 90 degrees
condition it) and, with ``cg_iters``, makes the repair consistent with the fitted projections
by a few CGLS iterations started from it (DDS's data-consistency step, as DiffusionBlend does
after each denoising). It sees only the views the fit may use: the guard judges the reference
on the others.

The DiffNR release repairs axial slices once (iteration 10k of 12k) with weight 1 and no data
consistency; `nr.priors.protocol.PriorSchedule` sets when and how often. `load_prior` loads
either prior (this one or DiffusionBlend) by the name in a `nr.diffnr.DiffNRConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nr.assets import asset_path
from nr.diffnr import DiffNRConfig
from nr.geometry import ConeBeamGeometry
from nr.ops.iterative import CGLSConfig, cgls
from nr.priors.blend_model import BlendPrior
from nr.priors.blend_prior import DiffusionBlendPrior, DiffusionBlendPriorConfig
from nr.priors.protocol import Prior
from nr.validation import check_int
from slicefixer.model import SliceFixer
from slicefixer.repair import repair_volume


@dataclass(frozen=True)
class SliceFixerPriorConfig:
    """How the SliceFixer makes a pseudo-reference.

    Attributes:
        axes: slicing axes repaired and averaged ("z" = axial, the release's choice).
        prompt: text prompt; None = the model's default prompt.
        batch_size: slices per SliceFixer call.
        window: intensity window mapped to the model's [-1, 1]: "model" (the range it was
            trained on: volumes normalised to [0, 1]) or "scan" (0 to the fit's
            ``volume_scale``, for scans in other units).
        cg_iters: CGLS iterations on the fitted projections, started from the repair; 0 =
            none (the release).
    """

    axes: tuple[str, ...] = ("z",)
    prompt: str | None = None
    batch_size: int = 16
    window: str = "model"
    cg_iters: int = 0

    def __post_init__(self) -> None:
        if self.window not in ("model", "scan"):
            raise ValueError(f"window: expected 'model' or 'scan', got {self.window!r}")
        check_int("batch_size", self.batch_size, 1)
        check_int("cg_iters", self.cg_iters, 0)
        object.__setattr__(self, "axes", tuple(self.axes))


class SliceFixerPrior:
    """A `Prior` making SliceFixer pseudo-references (module docstring).

    Args:
        model: the SliceFixer (eval mode is set here).
        config: axes, window and data consistency.
    """

    def __init__(self, model: SliceFixer, config: SliceFixerPriorConfig) -> None:
        if not isinstance(model, SliceFixer):
            raise TypeError(f"model: expected a SliceFixer, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config
        self.resolution = int(model.config.resolution)

    def pseudo_reference(
        self,
        volume: torch.Tensor,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        volume_scale: float,
    ) -> torch.Tensor:
        """The repaired (Z, Y, X) volume, made data-consistent with ``cg_iters`` CGLS steps."""
        c = self.config
        repair = repair_volume(
            self.model,
            volume,
            projections,
            geo,
            axes=c.axes,
            prompt=c.prompt,
            batch_size=c.batch_size,
            window=(0.0, volume_scale) if c.window == "scan" else "model",
        )
        if not c.cg_iters:
            return repair
        return cgls(
            projections.to(repair), geo, CGLSConfig(c.cg_iters), init=repair, progress=False
        )

    def state_dict(self) -> dict[str, Any]:
        return {}  # deterministic

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def load_prior(config: DiffNRConfig) -> Prior | None:
    """The prior `config` names ("none": None), from ``config.checkpoint`` or the one shipped
    in assets/, with its settings from `config`."""
    if config.prior == "none":
        return None
    if config.prior == "slicefixer":
        model = SliceFixer.from_pretrained(config.checkpoint or asset_path("slicefixer-compact"))
        settings = SliceFixerPriorConfig(axes=config.axes, cg_iters=config.fixer_cg)
        return SliceFixerPrior(model, settings)
    model = BlendPrior.from_pretrained(config.checkpoint or asset_path("diffusionblend"))
    settings = DiffusionBlendPriorConfig(
        t0=config.blend_t0, samples=config.blend_samples, seed=config.seed
    )
    return DiffusionBlendPrior(model, settings)
