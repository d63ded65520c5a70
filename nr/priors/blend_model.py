"""The DiffusionBlend score model: a 2D UNet over k-slice patches conditioned on the slice gap.

A patch is k slices of a volume taken ``gap`` slices apart along z, stacked as
the k input channels of a diffusers ``UNet2DModel``; the network predicts the
noise epsilon of all k slices (epsilon prediction). The gap is the class label
of the UNet: ``class_embed_type=None`` with ``num_class_embeds`` gives a
*learned* ``nn.Embedding`` of the gap added to the timestep embedding, as in
the released DiffusionBlend code (the slides describe a Fourier embedding; we
follow the code). The class index is the gap itself (1 = adjacent, 3 = jumping).

Noise schedule: DDPM, linear betas 1e-4..0.02, T = 1000 (diffusers
``DDPMScheduler``). Model space is [-1, 1]: a normalised volume v in [0, 1]
enters as 2 v - 1 (see ``nr.priors.sampler.IntensityMap`` for attenuation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from nr.io import atomic_file

CONFIG_NAME = "blend_config.json"


@dataclass(frozen=True)
class BlendModelConfig:
    """Architecture and noise schedule of the patch score model.

    Attributes:
        slices: k, slices per patch (the UNet's input and output channels). The
            release uses 3.
        gaps: slice gaps the model is trained on and conditioned with; the
            sampler uses ``gaps[0]`` for adjacent and ``gaps[-1]`` for jumping
            patches. Release: (1, 3).
        resolution: in-plane size (pixels) of the training slices; sampling runs
            at any in-plane size divisible by ``2 ** (len(block_out_channels) - 1)``.
        block_out_channels: UNet widths per level (compact preset: 32-64-128-128,
            6.3 M parameters; the release's ADM UNet has 554 M).
        layers_per_block: ResNet blocks per level.
        attention_levels: indices of levels with self-attention (compact: the
            third level, 16x16 at 64 px); the mid block always has attention.
        norm_num_groups: GroupNorm groups; must divide every width.
        attention_head_dim: channels per attention head; must divide the widths
            of the attention levels and the last width (mid block).
        num_train_timesteps: T of the DDPM schedule (1000).
        beta_start: first beta of the linear schedule (1e-4).
        beta_end: last beta of the linear schedule (0.02).
    """

    slices: int = 3
    gaps: tuple[int, ...] = (1, 3)
    resolution: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (2,)
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        for name in ("gaps", "block_out_channels", "attention_levels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.slices < 2:
            raise ValueError(f"slices: expected >= 2, got {self.slices}")
        if not self.gaps or min(self.gaps) < 1:
            raise ValueError(f"gaps: expected positive integers, got {self.gaps}")
        levels = len(self.block_out_channels)
        if levels < 2:
            raise ValueError(
                f"block_out_channels: expected >= 2 levels, got {self.block_out_channels}"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups: must divide every width of block_out_channels "
                f"{self.block_out_channels}, got {self.norm_num_groups}"
            )
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ValueError(
                f"attention_levels: expected indices in [0, {levels}), got {self.attention_levels}"
            )
        attended = [self.block_out_channels[i] for i in self.attention_levels]
        if any(c % self.attention_head_dim for c in [*attended, self.block_out_channels[-1]]):
            raise ValueError(
                f"attention_head_dim: must divide the attended widths "
                f"{[*attended, self.block_out_channels[-1]]}, "
                f"got {self.attention_head_dim}"
            )
        if self.resolution % self.downsampling:
            raise ValueError(
                f"resolution: expected a multiple of {self.downsampling}, got {self.resolution}"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"beta_start, beta_end: expected 0 < start < end < 1, "
                f"got {self.beta_start}, {self.beta_end}"
            )

    @property
    def downsampling(self) -> int:
        """In-plane sizes must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlendModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BlendModelConfig: unknown fields {unknown}")
        return cls(**data)


PRESETS: dict[str, BlendModelConfig] = {
    "compact": BlendModelConfig(),
    "tiny": BlendModelConfig(
        resolution=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_levels=(),
        norm_num_groups=4,
        attention_head_dim=8,
    ),
}


class BlendPrior(nn.Module):
    """The patch score model with its DDPM schedule.

    Args:
        config: architecture and schedule.
    """

    def __init__(self, config: BlendModelConfig) -> None:
        super().__init__()
        self.config = config
        levels = range(len(config.block_out_channels))
        down = tuple(
            "AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels
        )
        up = tuple("AttnUpBlock2D" if b.startswith("Attn") else "UpBlock2D" for b in reversed(down))
        self.unet = UNet2DModel(
            sample_size=config.resolution,
            in_channels=config.slices,
            out_channels=config.slices,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=config.norm_num_groups,
            attention_head_dim=config.attention_head_dim,
            class_embed_type=None,
            num_class_embeds=max(config.gaps) + 1,
        )
        self.scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule="linear",
            prediction_type="epsilon",
            clip_sample=False,
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float64 cumulative products abar_t of the schedule (CPU)."""
        return self.scheduler.alphas_cumprod.double()

    def forward(
        self, patches: torch.Tensor, timesteps: torch.Tensor | int, gaps: torch.Tensor | int
    ) -> torch.Tensor:
        """Predict the noise of a batch of noisy patches.

        Args:
            patches: (B, k, H, W) noisy patches x_t in model space.
            timesteps: (B,) integer timesteps in [0, T) or one int for all.
            gaps: (B,) slice gaps (each one of ``config.gaps``) or one int for all.

        Returns:
            (B, k, H, W) predicted epsilon, same dtype as `patches`.
        """
        if not isinstance(patches, torch.Tensor) or patches.ndim != 4:
            raise TypeError(
                f"patches: expected a (B, k, H, W) tensor, got "
                f"{getattr(patches, 'shape', type(patches))}"
            )
        if patches.shape[1] != self.config.slices:
            raise ValueError(
                f"patches: expected {self.config.slices} slices in dim 1, "
                f"got shape {tuple(patches.shape)}"
            )
        if (
            patches.shape[2] % self.config.downsampling
            or patches.shape[3] % self.config.downsampling
        ):
            raise ValueError(
                f"patches: H and W must be multiples of {self.config.downsampling}, "
                f"got shape {tuple(patches.shape)}"
            )
        batch = patches.shape[0]
        t = torch.as_tensor(timesteps, device=patches.device).long().expand(batch)
        g = torch.as_tensor(gaps, device=patches.device).long().expand(batch)
        if t.min() < 0 or t.max() >= self.config.num_train_timesteps:
            raise ValueError(
                f"timesteps: expected values in [0, {self.config.num_train_timesteps}),"
                f" got [{int(t.min())}, {int(t.max())}]"
            )
        if not all(int(v) in self.config.gaps for v in g.unique()):
            raise ValueError(
                f"gaps: expected values in {self.config.gaps}, got {g.unique().tolist()}"
            )
        return self.unet(patches, t, class_labels=g).sample

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``blend_config.json`` and the UNet (diffusers layout) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        with atomic_file(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> BlendPrior:
        """Load a model written by `save_pretrained` (or ``pipelines.train_blend``)."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file() or not (directory / "unet").is_dir():
            raise FileNotFoundError(
                f"{directory}: not a DiffusionBlend model folder (needs {CONFIG_NAME} and unet/); "
                f"train one with `python -m pipelines.train_blend --volumes ... --out DIR` and "
                f"pass DIR/model"
            )
        config = BlendModelConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        model = cls(config)
        model.unet = UNet2DModel.from_pretrained(directory / "unet")
        return model.eval()
