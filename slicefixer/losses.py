"""SliceFixer's training losses: L2, LPIPS, CLIP similarity, adversarial, SSIM.

Weights default to pix2pix-turbo's (L2 1, LPIPS 5, CLIP 5, GAN 0.5) plus DiffNR's SSIM (1).
LPIPS (``lpips``) and CLIP (``open_clip_torch``) need torchvision and backbone weights that
cannot be downloaded here: they are imported lazily and their backbones read from local files.
Without the package or the file, the term is off; :attr:`SliceFixerLoss.resolved` records that
with the reason, and a warning is logged. A backbone is never used with random weights.

Discriminator: with a CLIP backbone, a trainable head over the frozen CLIP image features (in the
spirit of vision-aided GAN's CLIP discriminator, single level); without one, a PatchGAN trained
from scratch whose every level gives logits. Loss "multilevel_sigmoid_s" (pix2pix-turbo's):
BCE with logits summed over levels, real label 0.8 (one-sided smoothing), fake 0, the generator
targets 0.8; or "hinge": D relu(1 - real) + relu(1 + fake), G -mean(fake logits).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

logger = logging.getLogger(__name__)
REMEDY = "pip install 'diffnr-toolkit[perceptual]' (with torch 2.14.1 + torchvision 0.29.1)"
# CLIP's image normalisation (open_clip's OPENAI_DATASET_MEAN/STD).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LossConfig:
    """Loss weights and the local files of the perceptual backbones.

    Attributes:
        l2: weight of the mean squared error (pix2pix-turbo: 1).
        lpips: weight of LPIPS-VGG (pix2pix-turbo: 5).
        clip: weight of 1 - CLIP similarity / 100 against the prompt (pix2pix-turbo: 5).
        gan: weight of the generator's adversarial loss (pix2pix-turbo: 0.5).
        ssim: weight of 1 - SSIM on images mapped to [0, 1], data_range 1 (DiffNR; 1).
        vgg_weights: torchvision VGG16 state dict file (vgg16-397923af.pth) for LPIPS; its
            linear heads ship with the lpips package. None = LPIPS off.
        clip_model: open_clip architecture name (pix2pix-turbo: ViT-B/32).
        clip_weights: open_clip checkpoint file of ``clip_model``. None = CLIP terms off and the
            PatchGAN discriminator is used.
        gan_loss: "multilevel_sigmoid_s" or "hinge".
        disc_width: channels of the first PatchGAN layer (doubling per level, 3 levels).
    """

    l2: float = 1.0
    lpips: float = 5.0
    clip: float = 5.0
    gan: float = 0.5
    ssim: float = 1.0
    vgg_weights: str | None = None
    clip_model: str = "ViT-B-32"
    clip_weights: str | None = None
    gan_loss: str = "multilevel_sigmoid_s"
    disc_width: int = 32

    def __post_init__(self) -> None:
        if self.gan_loss not in ("multilevel_sigmoid_s", "hinge"):
            raise ValueError(f"gan_loss: expected 'multilevel_sigmoid_s' or 'hinge', got "
                             f"{self.gan_loss!r}")
        for name in ("l2", "lpips", "clip", "gan", "ssim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a weight >= 0, got {getattr(self, name)}")


class PatchDiscriminator(nn.Module):
    """PatchGAN on grayscale slices; returns one logit map per level (3 levels)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        self.heads = nn.ModuleList()
        channels = 1
        for level in range(3):
            out = width * 2**level
            self.levels.append(nn.Sequential(
                nn.utils.parametrizations.spectral_norm(nn.Conv2d(channels, out, 4, 2, 1)),
                nn.LeakyReLU(0.2),
            ))
            self.heads.append(nn.Conv2d(out, 1, 3, 1, 1))
            channels = out

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 1, H, W) in [-1, 1] -> logits [(B, 1, H/2, W/2), (B, 1, H/4, ...), ...]."""
        logits = []
        for level, head in zip(self.levels, self.heads, strict=True):
            images = level(images)
            logits.append(head(images))
        return logits


class ClipDiscriminator(nn.Module):
    """A trainable MLP head over a frozen CLIP image encoder; one level of logits."""

    def __init__(self, clip: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.clip = clip
        self.head = nn.Sequential(nn.Linear(embed_dim, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 1, H, W) in [-1, 1] -> [(B, 1) logits]."""
        return [self.head(self.clip.encode_image(_clip_input(images)))]


def _clip_input(images: torch.Tensor) -> torch.Tensor:
    rgb = F.interpolate((images.expand(-1, 3, -1, -1) + 1) / 2, size=(224, 224),
                        mode="bilinear", align_corners=False)
    mean = torch.tensor(_CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _optional(module: str) -> object | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class SliceFixerLoss(nn.Module):
    """Generator and discriminator losses; perceptual terms on only when their backbones load.

    Attributes:
        resolved: {"config": LossConfig fields, "terms": {name: {"weight", "active", "reason"}},
            "discriminator": description} - write it into the run's config and log.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.resolved: dict = {"config": asdict(self.config), "terms": {}}
        self.lpips = self._load_lpips()
        self.clip, clip_dim = self._load_clip()
        if self.clip is not None:
            self.discriminator: nn.Module = ClipDiscriminator(self.clip, clip_dim)
            self.resolved["discriminator"] = f"MLP head on frozen CLIP {self.config.clip_model}"
        else:
            self.discriminator = PatchDiscriminator(self.config.disc_width)
            self.resolved["discriminator"] = "PatchGAN (3 levels) trained from scratch"
        self.resolved["gan_loss"] = self.config.gan_loss
        for name in ("l2", "gan", "ssim"):
            self._record(name, True, "")

    def _record(self, name: str, active: bool, reason: str) -> None:
        weight = getattr(self.config, name)
        self.resolved["terms"][name] = {"weight": weight, "active": active and weight > 0,
                                        "reason": reason}
        if weight > 0 and not active:
            logger.warning("SliceFixer loss term %s is OFF: %s", name, reason)

    def _load_lpips(self) -> nn.Module | None:
        if self.config.lpips == 0:
            self._record("lpips", False, "weight 0")
            return None
        lpips = _optional("lpips")
        if lpips is None:
            self._record("lpips", False, f"package lpips not installed: {REMEDY}")
            return None
        path = self.config.vgg_weights
        if path is None or not Path(path).is_file():
            self._record("lpips", False, f"VGG16 weights file not given or missing ({path}); "
                         "set LossConfig.vgg_weights to torchvision's vgg16-397923af.pth")
            return None
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        vgg = torch.load(path, map_location="cpu", weights_only=True)
        # lpips keeps torchvision's layer indices: slice{k}.{i}.weight <- features.{i}.weight.
        state = {name: vgg[f"features.{name.split('.', 1)[1]}"]
                 for name in model.net.state_dict()}
        model.net.load_state_dict(state)
        model.requires_grad_(False).eval()
        self._record("lpips", True, "")
        return model

    def _load_clip(self) -> tuple[nn.Module | None, int]:
        open_clip = _optional("open_clip")
        path = self.config.clip_weights
        if open_clip is None:
            reason = f"package open_clip_torch not installed: {REMEDY}"
        elif path is None or not Path(path).is_file():
            reason = f"CLIP weights file not given or missing ({path}); set LossConfig.clip_weights"
        else:
            model = open_clip.create_model(self.config.clip_model, pretrained=path)
            model.requires_grad_(False).eval()
            self.tokenize = open_clip.get_tokenizer(self.config.clip_model)
            self._record("clip", True, "")
            return model, int(model.visual.output_dim)
        self._record("clip", False, reason)
        return None, 0

    def _gan(self, logits: list[torch.Tensor], real: bool, generator: bool) -> torch.Tensor:
        if self.config.gan_loss == "hinge":
            if generator:
                return sum(-level.mean() for level in logits)
            sign = -1.0 if real else 1.0
            return sum(F.relu(1.0 + sign * level).mean() for level in logits)
        target = 0.8 if (real or generator) else 0.0
        return sum(F.binary_cross_entropy_with_logits(level, torch.full_like(level, target))
                   for level in logits)

    def generator_loss(self, prediction: torch.Tensor, target: torch.Tensor,
                       prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """prediction, target: (B, 1, H, W) in [-1, 1] -> (weighted total, {term: value})."""
        if prediction.shape != target.shape or prediction.ndim != 4 or prediction.shape[1] != 1:
            raise ValueError(f"prediction/target: expected equal (B, 1, H, W) shapes, got "
                             f"{tuple(prediction.shape)} and {tuple(target.shape)}")
        terms = {"l2": F.mse_loss(prediction, target)}
        terms["ssim"] = 1 - ssim((prediction + 1) / 2, (target + 1) / 2, data_range=1.0)
        if self.lpips is not None:
            terms["lpips"] = self.lpips(prediction.expand(-1, 3, -1, -1),
                                        target.expand(-1, 3, -1, -1)).mean()
        if self.clip is not None:
            image = self.clip.encode_image(_clip_input(prediction), normalize=True)
            text = self.clip.encode_text(self.tokenize(list(prompts)).to(prediction.device),
                                         normalize=True)
            # pix2pix-turbo's 1 - logit / 100, with the CLIP logit = 100 x cosine similarity.
            terms["clip"] = 1 - (image * text).sum(-1).mean()
        if self.config.gan > 0:
            terms["gan"] = self._gan(self.discriminator(prediction), real=True, generator=True)
        total = sum(getattr(self.config, name) * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def discriminator_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of the discriminator on real ``target`` and (detached) fake ``prediction``."""
        real = self._gan(self.discriminator(target), real=True, generator=False)
        fake = self._gan(self.discriminator(prediction.detach()), real=False, generator=False)
        return real + fake

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the discriminator (the CLIP backbone stays frozen)."""
        return [p for p in self.discriminator.parameters() if p.requires_grad]
