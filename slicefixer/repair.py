"""Repair a whole volume slice by slice with a SliceFixer, keeping its absolute intensity scale.

Intensity mapping: one affine map per volume, not per slice. The window (low, high) is the range
the model was trained on (``config.intensity_window``, default) or the volume's own min and max
("volume"), or one given explicitly. Slices are mapped by x -> 2 (x - low) / (high - low) - 1,
clipped to [-1, 1] (the model never saw values outside), repaired, and mapped back by the inverse
of the same map. So a voxel keeps its attenuation units, unlike the DiffNR release, which min-max
normalises every slice to [0, 255] and loses the absolute scale (and the contrast between slices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nr.geometry import SLICE_AXES, ConeBeamGeometry
from slicefixer.conditioning import biplanar_view_ids
from slicefixer.model import SliceFixer


def intensity_window(volume: torch.Tensor, model: SliceFixer,
                     window: str | tuple[float, float]) -> tuple[float, float]:
    """(low, high) attenuation mapped to [-1, 1]: "model", "volume" or an explicit pair."""
    if window == "model":
        low, high = model.config.intensity_window
    elif window == "volume":
        low, high = float(volume.min()), float(volume.max())
        if not high > low:
            raise ValueError(f"volume: constant volume ({low}); give window=(low, high) "
                             "explicitly")
    elif isinstance(window, (tuple, list)) and len(window) == 2:
        low, high = float(window[0]), float(window[1])
        if not high > low:
            raise ValueError(f"window: expected (low, high) with high > low, got {window}")
    else:
        raise ValueError(f"window: expected 'model', 'volume' or (low, high), got {window!r}")
    return low, high


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                         antialias=size[0] < images.shape[-2] or size[1] < images.shape[-1])


def _validate(volume: torch.Tensor, projections: torch.Tensor, geo: ConeBeamGeometry,
              axes: Sequence[str], batch_size: int) -> None:
    for name, tensor in (("volume", volume), ("projections", projections)):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise ValueError(f"{name}: expected a 3-D tensor, got "
                             f"{getattr(tensor, 'shape', type(tensor).__name__)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name}: values must be finite")
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    if projections.shape[0] != geo.n_views:
        raise ValueError(f"projections: expected {geo.n_views} views (len(geo.angles)), got "
                         f"{projections.shape[0]}")
    if isinstance(axes, str) or not axes or any(axis not in SLICE_AXES for axis in axes):
        raise ValueError(f"axes: expected a non-empty sequence of 'z', 'y', 'x', got {axes!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")


@torch.no_grad()
def repair_volume(
    model: SliceFixer,
    volume: torch.Tensor,
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    axes: Sequence[str] = ("z",),
    prompt: str | None = None,
    batch_size: int = 8,
    window: str | tuple[float, float] = "model",
) -> torch.Tensor:
    """Repair every slice of ``volume`` along ``axes`` and average the axes.

    The two views of ``projections`` nearest 0 and 90 degrees condition the model. Slices are
    resized (bilinear; antialiased when shrinking) to the model's square resolution, and the
    model's change (output minus what it was given) is resized back and added to the slice: the
    model changes what its resolution shows, and detail finer than that is kept, not blurred
    away. A non-square slice is stretched for the model and its change un-stretched.

    Args:
        model: the SliceFixer (its device and dtype are used for the computation).
        volume: (Z, Y, X) float attenuation.
        projections: (N, V, U) float, the views of ``geo``.
        geo: geometry whose ``angles`` belong to ``projections``.
        axes: slicing axes among "z", "y", "x"; several are averaged.
        prompt: the text prompt (default: ``model.config.default_prompt``).
        batch_size: slices per model call.
        window: intensity window, see :func:`intensity_window` and the module docstring.

    Returns:
        (Z, Y, X) tensor of the input's dtype and device.
    """
    if not isinstance(model, SliceFixer):
        raise TypeError(f"model: expected a SliceFixer, got {type(model).__name__}")
    _validate(volume, projections, geo, axes, batch_size)
    low, high = intensity_window(volume, model, window)
    dtype = next(model.parameters()).dtype
    views = projections[list(biplanar_view_ids(geo.angles))].to(model.device, dtype)
    prompt = model.config.default_prompt if prompt is None else prompt
    condition = model.condition(views[None], [prompt])
    size = (model.config.resolution, model.config.resolution)
    mapped = ((volume.to(model.device, dtype) - low) * (2.0 / (high - low)) - 1.0).clamp(-1, 1)
    total = torch.zeros_like(mapped)
    for axis in axes:
        order = SLICE_AXES[axis]
        stack = mapped.permute(order)
        repaired = torch.empty_like(stack)
        for start in range(0, stack.shape[0], batch_size):
            chunk = stack[start:start + batch_size, None]
            seen = _resize(chunk, size)
            correction = model.denoise(seen, condition.expand(chunk.shape[0], -1, -1)) - seen
            repaired[start:start + batch_size] = (
                chunk + _resize(correction, tuple(chunk.shape[-2:])))[:, 0]
        total += repaired.permute(*torch.argsort(torch.tensor(order)).tolist())
    result = (total / len(axes) + 1.0) * ((high - low) / 2.0) + low
    return result.to(volume.device, volume.dtype)
