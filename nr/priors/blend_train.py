"""Training of the DiffusionBlend patch prior on volumes (DDPM epsilon loss).

Data: each volume is normalised to [0, 1] (window [min, 99.9th percentile]),
resampled in-plane to R x R and along z to the same physical slice spacing as
the new in-plane pixel size (when the voxel spacing is known; otherwise the
voxels are taken as isotropic), then mapped to model space [-1, 1]. A training
patch is k slices z, z+g, ..., z+(k-1)g of one volume with gap g drawn from the
model's gaps (adjacent and jumping patches equally often).

Augmentations: random flips of y, x and of the slice order, and an intensity
jitter v -> a v + b on [0, 1] values (a in [1-j, 1+j], b in [-j/2, j/2]).

Reproducibility: every random draw (patches, augmentations, timesteps, noise)
comes from one CPU ``torch.Generator`` whose state is checkpointed, so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from nr.io import Volume, atomic_file, atomic_folder, normalize_window
from nr.priors.blend_model import BlendModelConfig, BlendPrior

CHECKPOINT = "checkpoint.pt"
MODEL_DIR = "model"
LOG = "train_log.jsonl"


@dataclass(frozen=True)
class BlendTrainConfig:
    """Optimisation and data settings of DiffusionBlend training.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: patches per step (release: 4 at 256 px).
        lr: AdamW learning rate (release: 1e-5 for its 554 M model; a compact
            model from scratch trains faster at 2e-4).
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm.
        ema_decay: decay of the exponential moving average of the weights
            (diffusers ``EMAModel`` with warm-up); the exported model uses it.
        intensity_jitter: j of the intensity augmentation (0 = off).
        flips: random flips of y, x and the slice order.
        high_percentile: percentile of a volume mapped to 1 by normalisation.
        checkpoint_every: steps between checkpoints (and model exports).
        log_every: steps between log lines (mean loss over the interval).
        seed: seed of the single generator of all random draws.
    """

    steps: int = 20000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    intensity_jitter: float = 0.1
    flips: bool = True
    high_percentile: float = 99.9
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError(
                f"lr, weight_decay, grad_clip: expected > 0, >= 0, > 0; got "
                f"{self.lr}, {self.weight_decay}, {self.grad_clip}"
            )
        if not 0 <= self.ema_decay < 1 or not 0 <= self.intensity_jitter < 1:
            raise ValueError(
                f"ema_decay, intensity_jitter: expected in [0, 1), got "
                f"{self.ema_decay}, {self.intensity_jitter}"
            )
        if not 50 < self.high_percentile <= 100:
            raise ValueError(f"high_percentile: expected in (50, 100], got {self.high_percentile}")


def prepare_volume(volume: Volume, resolution: int, high_percentile: float = 99.9) -> torch.Tensor:
    """Normalise and resample one volume for training.

    Args:
        volume: a ``nr.io.Volume`` (any units).
        resolution: in-plane size R.
        high_percentile: the value mapped to 1 (values above are clipped).

    Returns:
        (Z', R, R) float32 in model space [-1, 1]; Z' keeps the physical slice
        spacing equal to the new in-plane pixel size.
    """
    data = volume.data
    low, high = float(data.min()), float(np.percentile(data, high_percentile))
    if not high > low:
        raise ValueError(f"{volume.source or 'volume'}: constant volume cannot be normalised")
    normal = torch.from_numpy(normalize_window(volume, low, high).data)
    sz, sy, sx = volume.spacing or (1.0, 1.0, 1.0)
    depth, height, width = normal.shape
    pixel = 0.5 * (sy * height + sx * width) / resolution
    new_depth = max(1, round(depth * sz / pixel))
    resampled = F.interpolate(
        normal[None, None],
        size=(new_depth, resolution, resolution),
        mode="trilinear",
        align_corners=False,
        antialias=False,
    )
    return resampled[0, 0] * 2.0 - 1.0


class PatchSampler:
    """Random k-slice patches with gap conditioning and augmentations.

    Args:
        volumes: (Z_i, R, R) tensors in model space [-1, 1].
        model_config: slices k and gaps of the model.
        config: augmentation settings.
    """

    def __init__(
        self,
        volumes: Sequence[torch.Tensor],
        model_config: BlendModelConfig,
        config: BlendTrainConfig,
    ) -> None:
        if not volumes:
            raise ValueError("volumes: expected at least one volume")
        self.volumes = list(volumes)
        self.k, self.gaps, self.config = model_config.slices, model_config.gaps, config
        span = (self.k - 1) * max(self.gaps) + 1
        for i, v in enumerate(self.volumes):
            if v.ndim != 3 or v.shape[0] < span:
                raise ValueError(
                    f"volumes[{i}]: expected (Z, R, R) with Z >= {span} for gap "
                    f"{max(self.gaps)}, got {tuple(v.shape)}"
                )
        sizes = torch.tensor([float(v.shape[0]) for v in self.volumes])
        self.weights = sizes / sizes.sum()

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, k, R, R) patches in [-1, 1] and (batch,) gaps."""
        patches, gaps = [], []
        for _ in range(batch):
            volume = self.volumes[int(torch.multinomial(self.weights, 1, generator=generator))]
            gap = self.gaps[int(torch.randint(len(self.gaps), (1,), generator=generator))]
            start = int(
                torch.randint(volume.shape[0] - (self.k - 1) * gap, (1,), generator=generator)
            )
            patch = volume[start : start + (self.k - 1) * gap + 1 : gap]
            if self.config.flips:
                dims = [
                    d
                    for d, flip in zip(
                        (0, 1, 2), torch.rand(3, generator=generator) < 0.5, strict=True
                    )
                    if flip
                ]
                patch = patch.flip(dims) if dims else patch
            j = self.config.intensity_jitter
            if j:
                u = 2 * torch.rand(2, generator=generator) - 1
                values = (patch + 1) / 2 * (1 + j * u[0]) + 0.5 * j * u[1]
                patch = 2 * values - 1
            patches.append(patch)
            gaps.append(gap)
        return torch.stack(patches), torch.tensor(gaps)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def _export(model: BlendPrior, ema: EMAModel, out: Path) -> None:
    """Write the EMA weights as a `BlendPrior` folder, replacing the previous export."""
    ema.store(model.unet.parameters())
    ema.copy_to(model.unet.parameters())
    with atomic_folder(out / MODEL_DIR, overwrite=True) as tmp:
        model.save_pretrained(tmp)
    ema.restore(model.unet.parameters())


def train_blend(
    volumes: Sequence[torch.Tensor],
    model_config: BlendModelConfig,
    config: BlendTrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    sources: Sequence[str] = (),
    record: dict[str, Any] | None = None,
    init_from: str | os.PathLike | None = None,
) -> BlendPrior:
    """Train (or resume training) a DiffusionBlend prior; checkpoints and exports into `out`.

    Args:
        volumes: prepared (Z_i, R, R) volumes (``prepare_volume``).
        model_config: architecture; ``resolution`` must equal R.
        config: optimisation settings.
        out: output folder: ``checkpoint.pt`` (full state), ``model/`` (EMA
            weights, ``BlendPrior.from_pretrained``), ``train_log.jsonl``.
        resume: continue from ``out/checkpoint.pt`` (must exist, same configs).
        sources: names of the volumes, recorded in the checkpoint (a resume must
            use the same).
        record: the resolved run configuration, written to ``train_config.json``.
        init_from: a `BlendPrior` folder whose weights start a new run (fine-tuning a
            shipped prior on other anatomy, or training it further); its architecture must
            equal `model_config`. Ignored on resume (the checkpoint holds the weights).

    Returns:
        The trained model with EMA weights, in eval mode.
    """
    out = Path(out)
    for i, v in enumerate(volumes):
        if v.shape[1:] != (model_config.resolution,) * 2:
            raise ValueError(
                f"volumes[{i}]: expected in-plane {model_config.resolution}^2, got {tuple(v.shape)}"
            )
    checkpoint_path = out / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise FileExistsError(
            f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out"
        )
    if resume and not checkpoint_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
    out.mkdir(parents=True, exist_ok=True)
    if record is not None:
        with atomic_file(out / "train_config.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = BlendPrior(model_config).train()
    if init_from is not None and not resume:
        source = BlendPrior.from_pretrained(init_from)
        if source.config != model_config:
            raise ValueError(
                f"init_from: {init_from} is a {source.config.to_dict()} model, "
                f"expected {model_config.to_dict()}"
            )
        model.unet.load_state_dict({k: v.float() for k, v in source.unet.state_dict().items()})
    optimizer = torch.optim.AdamW(
        model.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    ema = EMAModel(model.unet.parameters(), decay=config.ema_decay, use_ema_warmup=True)
    step = 0
    if resume:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["model_config"] != model_config.to_dict():
            raise ValueError(
                f"--resume: model config differs from the checkpoint's {state['model_config']}"
            )
        if list(state["sources"]) != list(sources):
            raise ValueError(f"--resume: volumes differ from the checkpoint's {state['sources']}")
        model.unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        step = state["step"]
    sampler = PatchSampler(volumes, model_config, config)
    abars = model.scheduler.alphas_cumprod.float()
    T = model_config.num_train_timesteps
    losses: list[float] = []
    start_time = time.perf_counter()
    with (
        open(out / LOG, "a", encoding="utf-8") as log,
        tqdm(total=config.steps, initial=step, desc="train_blend") as bar,
    ):
        while step < config.steps:
            patches, gaps = sampler.sample(config.batch_size, generator)
            t = torch.randint(T, (config.batch_size,), generator=generator)
            noise = torch.randn(patches.shape, generator=generator)
            a = abars[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * patches + (1 - a).sqrt() * noise
            loss = F.mse_loss(model(noisy, t, gaps), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.unet.parameters(), config.grad_clip)
            optimizer.step()
            ema.step(model.unet.parameters())
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                record = {
                    "step": step,
                    "loss": sum(losses) / len(losses),
                    "seconds": round(time.perf_counter() - start_time, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                losses.clear()
            if step % config.checkpoint_every == 0 or step == config.steps:
                _atomic_save(
                    {
                        "step": step,
                        "unet": model.unet.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "ema": ema.state_dict(),
                        "generator": generator.get_state(),
                        "model_config": model_config.to_dict(),
                        "train_config": dataclasses.asdict(config),
                        "sources": list(sources),
                    },
                    checkpoint_path,
                )
                _export(model, ema, out)
    ema.copy_to(model.unet.parameters())
    return model.eval()
