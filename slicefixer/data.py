"""Batches of (artifact, clean) slice pairs for SliceFixer training, in the model's space.

Any torch ``Dataset`` whose items are dicts with these keys can be trained on (the curated
dataset's ``data_curation.PairDataset`` yields them; ``slicefixer`` does not import it):

    artifact: (1, H, W) float slice of the underfit reconstruction.
    clean: (1, H, W) float slice of the ground truth, same units.
    biplanar: (2, V, U) float projections nearest 0 and 90 degrees.
    prompt: str.
    optional metadata, kept for grouping validation metrics: representation (str), views (int),
    volume_id (str), axis (str).

Intensity: :func:`to_model_space` applies the same affine window map as
``slicefixer.repair.repair_volume`` (``x -> 2 (x - low) / (high - low) - 1``, clipped to [-1, 1],
then resized to the model's resolution), to the artifact and the clean slice alike, so a model
trained on these batches works through ``repair_volume`` unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from slicefixer.repair import _resize

logger = logging.getLogger(__name__)
REQUIRED_KEYS = ("artifact", "clean", "biplanar", "prompt")
METADATA_KEYS = ("representation", "views", "volume_id", "axis", "subset")


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch.

    Returns:
        {"artifact": (B, 1, H, W), "clean": (B, 1, H, W), "biplanar": (B, 2, V, U) float32,
        "prompt": B strings, and each metadata key present in every item: B values}.

    Raises:
        ValueError: an item lacks a required key or the shapes differ within the batch.
    """
    for key in REQUIRED_KEYS:
        if any(key not in item for item in items):
            raise ValueError(f"items: every dataset item needs the keys {REQUIRED_KEYS}; "
                             f"one lacks {key!r}")
    batch: dict[str, Any] = {}
    for key in ("artifact", "clean", "biplanar"):
        shapes = {tuple(item[key].shape) for item in items}
        if len(shapes) != 1:
            raise ValueError(f"items: {key} shapes differ within a batch: {sorted(shapes)}")
        batch[key] = torch.stack([item[key].float() for item in items])
    if batch["artifact"].shape != batch["clean"].shape or batch["artifact"].shape[1] != 1:
        raise ValueError(f"items: artifact and clean must be equal (1, H, W) slices, got "
                         f"{tuple(batch['artifact'].shape[1:])} and "
                         f"{tuple(batch['clean'].shape[1:])}")
    batch["prompt"] = [str(item["prompt"]) for item in items]
    for key in METADATA_KEYS:
        if all(key in item for item in items):
            batch[key] = [item[key] for item in items]
    return batch


def to_model_space(slices: torch.Tensor, window: tuple[float, float],
                   resolution: int) -> torch.Tensor:
    """slices: (B, 1, H, W) attenuation -> (B, 1, R, R) in [-1, 1] (repair_volume's map)."""
    low, high = window
    mapped = ((slices - low) * (2.0 / (high - low)) - 1.0).clamp(-1.0, 1.0)
    return _resize(mapped, (resolution, resolution))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] (the window as unit range, where metrics are taken)."""
    return (images + 1.0) / 2.0


class PromptResolver:
    """Maps dataset prompts onto a model's closed prompt set (prompt-table text side).

    A prompt outside the set is replaced by the model's default prompt; each replacement is
    logged once as a warning and listed in :attr:`replaced` (written into the run's config).
    A model with a CLIP text side (``prompts`` None) takes every prompt as it is.
    """

    def __init__(self, prompts: Sequence[str] | None, default: str) -> None:
        self.prompts = None if prompts is None else frozenset(prompts)
        self.default = default
        self.replaced: dict[str, str] = {}

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        if self.prompts is None:
            return list(prompts)
        resolved = []
        for prompt in prompts:
            if prompt in self.prompts:
                resolved.append(prompt)
                continue
            if prompt not in self.replaced:
                self.replaced[prompt] = self.default
                logger.warning("prompt %r is not in the model's prompt set; using %r",
                               prompt, self.default)
            resolved.append(self.default)
        return resolved


class EpochSampler(Sampler[int]):
    """A fresh random permutation per epoch, a pure function of (seed, epoch).

    Because the order never depends on hidden generator state, a resumed run sees the same
    batches as an uninterrupted one (``set_epoch`` is called by accelerate's prepared loader).
    """

    def __init__(self, length: int, seed: int) -> None:
        if length < 1:
            raise ValueError(f"length: expected a non-empty dataset, got {length} items")
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())
