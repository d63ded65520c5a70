"""SliceFixer: pix2pix-turbo's single-step image-to-image diffusion model for CT slices.

slice (B, 1, H, W) in [-1, 1] --VAE encoder--> latent (posterior mean x scaling factor)
  --UNet at t = 999, conditioned on fused prompt/X-ray tokens--> prediction
  --DDPMScheduler.step (one step, set_timesteps(1)) --> x0 latent
  --VAE decoder, plus 1x1 skip convs from the encoder's down-block inputs--> slice, clamped.
With ``config.residual`` the decoded image is a correction added to the input slice (the
decoder's last conv starts at zero: an untrained model is the identity).

Channels: a 3-channel VAE (SD-Turbo) gets the grayscale slice repeated to 3 channels and its
output is the mean of the 3 channels; a 1-channel VAE (compact) is used as is.
Determinism: the posterior mean is used instead of a sample (pix2pix-turbo samples), and x0 is the
scheduler's ``pred_original_sample`` (its ``prev_sample`` adds 1e-10-scale noise at t > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from torch import nn

from slicefixer import checkpoint
from slicefixer.conditioning import (
    ClipPromptEncoder,
    CrossAttentionFusion,
    PromptTable,
    XrayEncoder,
)
from slicefixer.presets import (
    SliceFixerComponents,
    SliceFixerConfig,
    build_components,
    load_sd_turbo_components,
    sd_turbo_config,
)

# pix2pix-turbo's LoRA targets (DiffNR uses the same). Its VAE list also names its skip convs,
# which are fully trained here, so an adapter on them would add nothing.
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2",
                     "conv_shortcut", "conv_out", "proj_in", "proj_out", "ff.net.2",
                     "ff.net.0.proj")
VAE_LORA_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
                    "to_k", "to_q", "to_v", "to_out.0")


class SliceFixer(nn.Module):
    """Single-step slice repairer (see the module docstring for the data flow).

    Build it with :meth:`from_config` (random init, e.g. the compact preset),
    :meth:`from_sd_turbo` (pretrained folders) or :meth:`from_pretrained` (a saved checkpoint);
    all three go through ``__init__`` with a config and the components.
    """

    def __init__(self, config: SliceFixerConfig, components: SliceFixerComponents) -> None:
        super().__init__()
        self.config = config
        self.unet = components.unet
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.scheduler.set_timesteps(1)
        width = self.unet.config.cross_attention_dim
        if config.text == "clip":
            self.prompt_encoder = ClipPromptEncoder(components.tokenizer, components.text_encoder)
        else:
            self.prompt_encoder = PromptTable(config.prompts, config.prompt_tokens, width)
        self.xray_encoder = XrayEncoder(components.xray_encoder, config.xray_mean, config.xray_std)
        self.fusion = CrossAttentionFusion(components.xray_encoder.config.hidden_size, width,
                                           config.fusion_heads)
        encoder_widths = self._encoder_skip_widths()
        decoder_widths = self._decoder_block_inputs()
        self.skip_convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
            for c_in, c_out in zip(encoder_widths, decoder_widths, strict=True)
        )
        for conv in self.skip_convs:
            nn.init.constant_(conv.weight, config.skip_init)
        if config.residual:
            nn.init.zeros_(self.vae.decoder.conv_out.weight)
            nn.init.zeros_(self.vae.decoder.conv_out.bias)
        if config.lora_rank_unet:
            self.unet.add_adapter(self._lora(config.lora_rank_unet, UNET_LORA_TARGETS))
        if config.lora_rank_vae:
            self.vae.add_adapter(self._lora(config.lora_rank_vae, VAE_LORA_TARGETS))
        self.set_trainable()

    def _lora(self, rank: int, targets: tuple[str, ...]) -> LoraConfig:
        return LoraConfig(r=rank, lora_alpha=self.config.lora_alpha, init_lora_weights="gaussian",
                          target_modules=list(targets))

    def _encoder_skip_widths(self) -> list[int]:
        """Channels of the inputs of the encoder's down blocks, deepest first."""
        widths = list(self.vae.config.block_out_channels)
        return ([widths[0]] + widths[:-1])[::-1]

    def _decoder_block_inputs(self) -> list[int]:
        """Channels entering each decoder up block, in decoding order."""
        widths = list(reversed(self.vae.config.block_out_channels))
        return [widths[0]] + widths[:-1]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SliceFixerConfig) -> SliceFixer:
        """A randomly initialised model (compact preset, tests, timing)."""
        return cls(config, build_components(config))

    @classmethod
    def from_sd_turbo(cls, sd_turbo: str, rad_dino: str, resolution: int = 512) -> SliceFixer:
        """The ``sd-turbo`` preset from local folders (or hub ids): see
        :func:`slicefixer.presets.load_sd_turbo_components`."""
        components = load_sd_turbo_components(sd_turbo, rad_dino)
        return cls(sd_turbo_config(components, sd_turbo, rad_dino, resolution), components)

    @classmethod
    def from_pretrained(cls, directory: str | Path,
                        sources: dict[str, str] | None = None) -> SliceFixer:
        """Load a checkpoint written by :meth:`save_pretrained`.

        Args:
            directory: the checkpoint folder.
            sources: overrides the recorded {"sd_turbo": ..., "rad_dino": ...} folders of a model
                whose frozen base weights were not saved (sd-turbo preset).
        """
        return checkpoint.load(cls, directory, sources)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config JSON, weights (safetensors) and LoRA adapters (peft layout)."""
        checkpoint.save(self, directory)

    # -- trainability ---------------------------------------------------------------------------
    def set_trainable(self) -> None:
        """Set requires_grad per the config (see ``SliceFixerConfig.train_base``)."""
        self.requires_grad_(self.config.train_base)
        for name, parameter in self.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
        for module in self.trained_modules():
            module.requires_grad_(True)
        if isinstance(self.prompt_encoder, ClipPromptEncoder):
            self.prompt_encoder.requires_grad_(False)

    def trained_modules(self) -> list[nn.Module]:
        """Modules trained in full even when the base is frozen (LoRA weights aside)."""
        modules = [self.unet.conv_in, self.skip_convs, self.fusion]
        if isinstance(self.prompt_encoder, PromptTable):
            modules.append(self.prompt_encoder)
        if self.config.train_xray_encoder:
            modules.append(self.xray_encoder)
        return modules

    # -- forward --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.skip_convs[0].weight.device

    @property
    def latent_divisor(self) -> int:
        """H and W must be multiples of this (VAE x UNet downsampling)."""
        vae_levels = len(self.vae.config.block_out_channels) - 1
        unet_levels = len(self.unet.config.block_out_channels) - 1
        return 2 ** (vae_levels + unet_levels)

    def condition(self, xrays: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """xrays: (B, 2, V, U) biplanar projections, prompts: B strings -> (B, L, D) tokens."""
        if not isinstance(xrays, torch.Tensor) or xrays.ndim != 4 or xrays.shape[1] != 2:
            raise ValueError("xrays: expected a (B, 2, V, U) tensor of two views, got "
                             f"{getattr(xrays, 'shape', type(xrays).__name__)}")
        if isinstance(prompts, str) or len(prompts) != xrays.shape[0]:
            raise ValueError(f"prompts: expected a sequence of {xrays.shape[0]} strings, got "
                             f"{prompts!r}")
        if not torch.isfinite(xrays).all():
            raise ValueError("xrays: values must be finite")
        text = self.prompt_encoder(prompts)
        return self.fusion(text, self.xray_encoder(xrays.to(self.device)))

    def denoise(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """images: (B, 1, H, W) in [-1, 1], condition: (B, L, D) -> (B, 1, H, W) in [-1, 1]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
            raise ValueError("images: expected a (B, 1, H, W) tensor, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        height, width = images.shape[-2:]
        if height % self.latent_divisor or width % self.latent_divisor:
            raise ValueError(f"images: H and W must be multiples of {self.latent_divisor}, got "
                             f"{height}x{width}")
        if condition.ndim != 3 or condition.shape[0] != images.shape[0]:
            raise ValueError(f"condition: expected (B={images.shape[0]}, L, D), got "
                             f"{tuple(condition.shape)}")
        channels = self.vae.config.in_channels
        latent, skips = self._encode(images.expand(-1, channels, -1, -1))
        timestep = torch.full((images.shape[0],), self.config.timestep, device=latent.device,
                              dtype=torch.long)
        prediction = self.unet(latent, timestep, encoder_hidden_states=condition).sample
        clean = self.scheduler.step(prediction, self.config.timestep, latent).pred_original_sample
        decoded = self._decode(clean, skips).mean(dim=1, keepdim=True)
        if self.config.residual:
            decoded = images + decoded
        return decoded.clamp(-1.0, 1.0)

    def forward(self, images: torch.Tensor, xrays: torch.Tensor,
                prompts: Sequence[str]) -> torch.Tensor:
        """images: (B, 1, H, W) in [-1, 1], xrays: (B, 2, V, U), prompts: B strings
        -> repaired (B, 1, H, W) in [-1, 1]."""
        return self.denoise(images, self.condition(xrays, prompts))

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder = self.vae.encoder
        sample = encoder.conv_in(images)
        skips = []
        for block in encoder.down_blocks:
            skips.append(sample)
            sample = block(sample)
        sample = encoder.conv_norm_out(encoder.mid_block(sample))
        sample = encoder.conv_out(encoder.conv_act(sample))
        if self.vae.quant_conv is not None:
            sample = self.vae.quant_conv(sample)
        mean = sample.chunk(2, dim=1)[0]
        return mean * self.vae.config.scaling_factor, skips[::-1]

    def _decode(self, latent: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        sample = latent / self.vae.config.scaling_factor
        if self.vae.post_quant_conv is not None:
            sample = self.vae.post_quant_conv(sample)
        decoder = self.vae.decoder
        sample = decoder.mid_block(decoder.conv_in(sample), None)
        for block, conv, skip in zip(decoder.up_blocks, self.skip_convs, skips, strict=True):
            sample = block(sample + conv(skip * self.config.skip_gamma), None)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(sample)))
