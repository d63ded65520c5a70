"""SliceFixer configuration, named presets, and the builders of its pretrained parts.

Two presets share one architecture (``slicefixer.model.SliceFixer``):

- ``compact``: small configs of the same diffusers/transformers classes, randomly initialised and
  trained from scratch (7.4 M parameters; runs on a laptop CPU). Its text side is a learned
  table of token sequences over a closed set of prompts, because no CLIP tokenizer or text weights
  can be had offline.
- ``sd-turbo``: SD-Turbo's unet/vae/text_encoder/tokenizer/scheduler and RAD-DINO, loaded from
  local folders or hub ids given by the user (see :func:`load_sd_turbo_components`).

``sd_turbo_architecture`` gives SD-Turbo's and RAD-DINO's configs without weights (random init) for
timing; it uses a prompt table of 77 tokens instead of CLIP.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel, Dinov2Config, Dinov2Model

ANATOMIES = ("head", "chest", "abdomen", "tooth")
GENERIC_PROMPT = "remove artifacts for this CT slice"
COMPACT_PROMPTS = (GENERIC_PROMPT,) + tuple(
    f"remove artifacts for this {anatomy} CT slice" for anatomy in ANATOMIES
)
SD_TURBO_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# SD-Turbo's scheduler (beta range and trailing spacing, so that set_timesteps(1) gives t = 999).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SliceFixerConfig:
    """Everything needed to rebuild a SliceFixer; saved as JSON beside its weights.

    Attributes:
        preset: "compact", "sd-turbo", "sd-turbo-random" or "custom" (informational).
        resolution: side in pixels of the square slices the model works at (SD-Turbo: 512, as in
            the DiffNR release; compact: 128). ``repair_volume`` resizes slices to it and back.
        unet: ``UNet2DConditionModel`` config dict.
        vae: ``AutoencoderKL`` config dict. ``in_channels`` 3 (SD): a grayscale slice is
            repeated to 3 channels in and the mean of the 3 output channels is taken; 1 (compact):
            used as is.
        scheduler: ``DDPMScheduler`` config dict (one step at ``timestep``).
        xray_encoder: ``Dinov2Config`` dict (RAD-DINO is a Dinov2 ViT-B/14).
        text: "clip" (CLIPTextModel + tokenizer from the SD-Turbo folder) or "table" (a learned
            table of ``prompt_tokens`` tokens per prompt over the closed set ``prompts``).
        prompts: the closed prompt set of the "table" text side.
        prompt_tokens: tokens per prompt of the "table" text side (CLIP: 77).
        default_prompt: the prompt used when none is given.
        fusion_heads: heads of the prompt->X-ray cross-attention (DiffNR: 8).
        lora_rank_unet: LoRA rank on the UNet (pix2pix-turbo/DiffNR: 8); 0 = no adapter.
        lora_rank_vae: LoRA rank on the VAE (pix2pix-turbo/DiffNR: 4); 0 = no adapter.
        lora_alpha: LoRA alpha of both adapters (peft's default 8, which pix2pix-turbo uses).
        train_base: True = every weight of UNet, VAE, X-ray encoder and prompt table is trained
            (compact: no pretrained prior to preserve); False = LoRA + conv_in + skip convs +
            fusion (+ prompt table) only, as pix2pix-turbo. A CLIP text encoder is always frozen.
        train_xray_encoder: train the X-ray encoder even when ``train_base`` is False (DiffNR
            keeps RAD-DINO frozen: it precomputes its features).
        skip_gamma: factor on the encoder activations entering the skip convs (pix2pix-turbo: 1).
        skip_init: constant the skip-conv weights start at (pix2pix-turbo: 1e-5, "zero-conv").
        timestep: the single diffusion timestep (999).
        xray_mean: mean subtracted from X-ray views scaled to [0, 1] (RAD-DINO's processor: 0.5307).
        xray_std: std dividing them (RAD-DINO's processor: 0.2583).
        intensity_window: (low, high) attenuation range the model was trained on; ``repair_volume``
            maps it affinely to [-1, 1] and back (default for volumes normalised to [0, 1]).
        residual: the output is the input slice plus the decoded correction, and the decoder's
            last conv starts at zero, so an untrained model returns its input (compact: a model
            trained from scratch on a CPU starts from the identity instead of from noise, as the
            residual UNet of the CPU pilot, docs/history.md "SliceFixer"; SD-Turbo's
            pix2pix-turbo: False).
        sources: for weights loaded from pretrained folders: {"sd_turbo": ..., "rad_dino": ...}
            (local folders or hub ids); None when every weight lives in the checkpoint.
    """

    preset: str
    resolution: int
    unet: dict
    vae: dict
    scheduler: dict
    xray_encoder: dict
    text: str = "table"
    prompts: tuple[str, ...] = COMPACT_PROMPTS
    prompt_tokens: int = 8
    default_prompt: str = GENERIC_PROMPT
    fusion_heads: int = 8
    lora_rank_unet: int = 8
    lora_rank_vae: int = 4
    lora_alpha: int = 8
    train_base: bool = False
    train_xray_encoder: bool = False
    skip_gamma: float = 1.0
    skip_init: float = 1e-5
    timestep: int = 999
    xray_mean: float = 0.5307
    xray_std: float = 0.2583
    intensity_window: tuple[float, float] = (0.0, 1.0)
    residual: bool = False
    sources: dict | None = None

    def __post_init__(self) -> None:
        if self.text not in ("clip", "table"):
            raise ValueError(f"text: expected 'clip' or 'table', got {self.text!r}")
        if self.resolution <= 0:
            raise ValueError(f"resolution: expected a positive int, got {self.resolution}")
        for name in ("lora_rank_unet", "lora_rank_vae"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        low, high = self.intensity_window
        if not high > low:
            raise ValueError(f"intensity_window: expected (low, high) with high > low, got "
                             f"{self.intensity_window}")
        self.prompts = tuple(self.prompts)
        self.intensity_window = (float(low), float(high))
        if self.text == "table" and self.default_prompt not in self.prompts:
            raise ValueError(f"default_prompt: {self.default_prompt!r} is not one of prompts "
                             f"{self.prompts}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceFixerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**data)


def compact_config() -> SliceFixerConfig:
    """The compact preset (7.4 M parameters, 22 GFLOP per batch of 8 slices at 128 px).

    VAE 16-32-64-64 on 1 channel: four levels and four skip convs as SD's VAE, latent 4 x 16 x 16
    at 128 px (a 3-level 32-64-128 VAE with a 32 x 32 latent costs 102 GFLOP per batch of 8; the
    full-resolution decoder convolutions dominate). UNet 32-64-128-128 with one layer per block
    and plain blocks at the top and bottom levels. A 4-layer Dinov2 of width 96 on 112 px views.
    Everything is trained from scratch.
    """
    unet = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64, 128, 128],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        # diffusers reads attention_head_dim as the number of heads: heads of width 16.
        "attention_head_dim": [2, 4, 8, 8],
        "cross_attention_dim": 128,
        "norm_num_groups": 32,
    }
    vae = {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": 128,
        "scaling_factor": 1.0,
    }
    xray = Dinov2Config(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4,
                        image_size=112, patch_size=14, num_channels=1).to_diff_dict()
    return SliceFixerConfig(
        preset="compact", resolution=128, unet=unet, vae=vae, scheduler=dict(SCHEDULER_CONFIG),
        xray_encoder=xray, text="table", prompt_tokens=8, fusion_heads=8, lora_rank_unet=0,
        lora_rank_vae=0, train_base=True, xray_mean=0.5, xray_std=0.25, residual=True,
    )


def tiny_config() -> SliceFixerConfig:
    """A model of about 0.1 M parameters with the full structure (VAE, UNet, skip convs, LoRA 4/2
    with a frozen base, X-ray encoder, fusion, prompt table) at 32 px, for smoke tests."""
    unet = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [8, 16],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 2,
        "cross_attention_dim": 16,
        "norm_num_groups": 4,
    }
    vae = {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [4, 8, 8],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 32,
    }
    xray = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, image_size=28, patch_size=14,
                        num_channels=1).to_diff_dict()
    return SliceFixerConfig(
        preset="custom", resolution=32, unet=unet, vae=vae, scheduler=dict(SCHEDULER_CONFIG),
        xray_encoder=xray, text="table", prompt_tokens=4, fusion_heads=2, lora_rank_unet=4,
        lora_rank_vae=2, train_base=False, xray_mean=0.5, xray_std=0.25,
    )


def sd_turbo_architecture(resolution: int = 512) -> SliceFixerConfig:
    """SD-Turbo's UNet/VAE and RAD-DINO's ViT-B/14 configs (no weights; for timing only). The text
    side is a 77-token prompt table of width 1024 in place of the 340 M CLIP text encoder."""
    unet = {
        "sample_size": resolution // 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "layers_per_block": 2,
        "use_linear_projection": True,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": resolution,
        "scaling_factor": 0.18215,
    }
    xray = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        image_size=518, patch_size=14).to_diff_dict()
    return SliceFixerConfig(
        preset="sd-turbo-random", resolution=resolution, unet=unet, vae=vae,
        scheduler=dict(SCHEDULER_CONFIG), xray_encoder=xray, text="table", prompt_tokens=77,
    )


@dataclass
class SliceFixerComponents:
    """The pretrained-or-random parts a SliceFixer is assembled from.

    Attributes:
        unet: the denoiser.
        vae: the autoencoder (its encoder and decoder are run by SliceFixer, with skips).
        scheduler: gives x0 from the UNet's prediction at the single timestep.
        xray_encoder: Dinov2Model applied to the two biplanar views.
        text_encoder: CLIPTextModel (text "clip") or None (text "table").
        tokenizer: the CLIP tokenizer (text "clip") or None.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler
    xray_encoder: Dinov2Model
    text_encoder: nn.Module | None = None
    tokenizer: Any = field(default=None, repr=False)


def build_components(config: SliceFixerConfig) -> SliceFixerComponents:
    """Randomly initialised components from the config dicts (compact preset, tests, timing)."""
    if config.text != "table":
        raise ValueError("config.text: 'clip' needs the SD-Turbo tokenizer and text encoder; "
                         "build it with SliceFixer.from_sd_turbo(...) instead of from_config")
    return SliceFixerComponents(
        unet=UNet2DConditionModel.from_config(config.unet),
        vae=AutoencoderKL.from_config(config.vae),
        scheduler=DDPMScheduler.from_config(config.scheduler),
        xray_encoder=Dinov2Model(Dinov2Config.from_dict(config.xray_encoder)),
    )


def _resolve(source: str, argument: str, subfolders: tuple[str, ...], remedy: str) -> tuple:
    """(path or hub id, local_files_only) for one pretrained source; checks local folders."""
    if not isinstance(source, (str, Path)):
        raise TypeError(f"{argument}: expected a folder path or hub id string, got "
                        f"{type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        for sub in subfolders:
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"{argument}: folder {path / sub} is missing. {remedy}")
        return str(path), True
    if isinstance(source, str) and _HUB_ID.match(source) and not source.startswith("."):
        return source, False
    raise FileNotFoundError(f"{argument}: folder {path} does not exist. {remedy}")


def load_sd_turbo_components(sd_turbo: str, rad_dino: str) -> SliceFixerComponents:
    """Load SD-Turbo and RAD-DINO from local folders (``local_files_only``) or hub ids.

    Args:
        sd_turbo: folder holding unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (the
            layout of the hub repo stabilityai/sd-turbo), or that hub id.
        rad_dino: folder holding a Dinov2 config.json + weights (microsoft/rad-dino), or that id.

    Raises:
        FileNotFoundError: a folder or subfolder is missing; the message names it and the remedy.
    """
    sd_path, sd_local = _resolve(
        sd_turbo, "sd_turbo", SD_TURBO_SUBFOLDERS,
        "Download SD-Turbo on a machine with internet access (`huggingface-cli download "
        "stabilityai/sd-turbo --local-dir <folder>`) and pass that folder as sd_turbo.")
    dino_path, dino_local = _resolve(
        rad_dino, "rad_dino", (),
        "Download RAD-DINO on a machine with internet access (`huggingface-cli download "
        "microsoft/rad-dino --local-dir <folder>`) and pass that folder as rad_dino.")
    # pix2pix-turbo loads SD-Turbo's (Euler) scheduler config into a DDPMScheduler the same way.
    return SliceFixerComponents(
        unet=UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet",
                                                  local_files_only=sd_local),
        vae=AutoencoderKL.from_pretrained(sd_path, subfolder="vae", local_files_only=sd_local),
        scheduler=DDPMScheduler.from_pretrained(sd_path, subfolder="scheduler",
                                                local_files_only=sd_local),
        xray_encoder=Dinov2Model.from_pretrained(dino_path, local_files_only=dino_local),
        text_encoder=CLIPTextModel.from_pretrained(sd_path, subfolder="text_encoder",
                                                   local_files_only=sd_local),
        tokenizer=AutoTokenizer.from_pretrained(sd_path, subfolder="tokenizer",
                                                local_files_only=sd_local),
    )


def sd_turbo_config(components: SliceFixerComponents, sd_turbo: str, rad_dino: str,
                    resolution: int = 512) -> SliceFixerConfig:
    """The ``sd-turbo`` preset's config around loaded components (LoRA 8/4, base frozen)."""
    return SliceFixerConfig(
        preset="sd-turbo", resolution=resolution, unet=dict(components.unet.config),
        vae=dict(components.vae.config), scheduler=dict(components.scheduler.config),
        xray_encoder=components.xray_encoder.config.to_diff_dict(), text="clip", prompts=(),
        prompt_tokens=components.tokenizer.model_max_length, lora_rank_unet=8, lora_rank_vae=4,
        train_base=False, sources={"sd_turbo": str(sd_turbo), "rad_dino": str(rad_dino)},
    )
