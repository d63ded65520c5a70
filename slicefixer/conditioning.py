"""SliceFixer's conditioning: prompt tokens cross-attending to X-ray tokens of two biplanar views.

As in DiffNR's ``CrossAttnFusionAdapter``: each of the two views gives one token (the Dinov2 CLS
token after the final LayerNorm, i.e. ``pooler_output``), projected to the UNet's cross-attention
width; the prompt tokens are the queries, the X-ray tokens keys and values, followed by a residual
and a LayerNorm. The fused tokens are the UNet's ``encoder_hidden_states``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model


def biplanar_view_ids(angles: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """Indices of the views nearest 0 and 90 degrees (angles in radians, any turn)."""
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    if angles.size < 2:
        raise ValueError(f"angles: expected at least 2 views, got {angles.size}")
    ids = []
    for target in (0.0, np.pi / 2):
        distance = np.abs(np.angle(np.exp(1j * (angles - target))))
        if ids:
            distance[ids[0]] = np.inf
        ids.append(int(np.argmin(distance)))
    return ids[0], ids[1]


class PromptTable(nn.Module):
    """A learned sequence of ``n_tokens`` tokens of width ``width`` per prompt of a closed set.

    Stands in for CLIP's tokenizer + text encoder where no text weights exist (compact preset).
    """

    def __init__(self, prompts: Sequence[str], n_tokens: int, width: int) -> None:
        super().__init__()
        if not prompts:
            raise ValueError("prompts: expected a non-empty set of prompts")
        self.prompts = tuple(prompts)
        self.tokens = nn.Parameter(torch.randn(len(self.prompts), n_tokens, width) * 0.02)

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts: B strings -> (B, n_tokens, width)."""
        unknown = [p for p in prompts if p not in self.prompts]
        if unknown:
            raise ValueError(f"prompts: {unknown} not in this model's closed prompt set "
                             f"{list(self.prompts)}")
        index = torch.tensor([self.prompts.index(p) for p in prompts], device=self.tokens.device)
        return self.tokens[index]


class ClipPromptEncoder(nn.Module):
    """CLIP tokenizer + text encoder (SD-Turbo's), padded to the tokenizer's max length (77)."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts: B strings -> (B, 77, width) last hidden states."""
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.input_ids.to(device)).last_hidden_state


class XrayEncoder(nn.Module):
    """Dinov2 CLS tokens of the two biplanar views.

    Preprocessing: both views of a sample are divided by their joint maximum (so [0, 1], keeping
    their relative brightness), resized (bilinear, antialiased) to the backbone's image size,
    repeated to its channel count, then standardised with ``mean``/``std``.
    """

    def __init__(self, backbone: Dinov2Model, mean: float, std: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean = mean
        self.std = std

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """views: (B, 2, V, U) projections -> (B, 2, hidden) tokens."""
        batch, n_views, height, width = views.shape
        scale = views.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        images = (views / scale).reshape(batch * n_views, 1, height, width)
        size = self.backbone.config.image_size
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
        images = images.expand(-1, self.backbone.config.num_channels, -1, -1)
        images = (images - self.mean) / self.std
        tokens = self.backbone(pixel_values=images).pooler_output
        return tokens.reshape(batch, n_views, -1)


class CrossAttentionFusion(nn.Module):
    """Prompt tokens attend to projected X-ray tokens; residual + LayerNorm (DiffNR's adapter)."""

    def __init__(self, xray_width: int, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: cross-attention width {width} is not divisible by {heads}")
        self.project = nn.Linear(xray_width, width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, text: torch.Tensor, xray: torch.Tensor) -> torch.Tensor:
        """text: (B, L, width), xray: (B, T, xray_width) -> (B, L, width)."""
        keys = self.project(xray)
        attended, _ = self.attention(text, keys, keys, need_weights=False)
        return self.norm(text + attended)
