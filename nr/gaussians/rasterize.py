"""Additive X-ray rasterization of projected Gaussians: compiled CPU kernel and torch twin.

A view's image is ``I(p) = sum_g amp_g exp(-1/2 d^T C_g d)`` with ``d = p - mean_g`` in
detector pixel coordinates, summed only where ``d^T C_g d <= cutoff^2`` (no alpha
compositing: X-ray attenuation adds up along a ray). Pixel (v, u) has its centre at the
coordinates (u, v); ``C_g = [[a, b], [b, c]]`` is the inverse of the 2D covariance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from nr._ext import require_compiled, use_compiled

TWIN_BLOCK = 1 << 22  # (pixel, Gaussian) pairs per step of the brute-force twin (bounds memory)


def check_gaussian_tensors(
    tensors: Sequence[tuple[str, object, int | None]], batch: str, cutoff: float
) -> tuple[int, ...]:
    """Validate the per-Gaussian tensors of a kernel call and its cutoff (rasterizer, voxelizer).

    Args:
        tensors: (name, tensor, last) triples. The first tensor has shape (*B, last), B its
            leading dimensions named by `batch`; the others (*B, last), or (*B,) when last
            is None. All are float32 or float64 tensors of the first's dtype and device.
        batch: the names of the dimensions of B for the error messages, e.g. "N, G".
        cutoff: Mahalanobis distance beyond which a Gaussian does not contribute.

    Returns:
        B, the sizes of the leading dimensions.
    """
    lead_name, lead, lead_last = tensors[0]
    for name, tensor, _ in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in (torch.float32, torch.float64) or tensor.dtype != lead.dtype:
            raise TypeError(
                f"{name}: expected float32 or float64 like {lead_name}, got {tensor.dtype}"
            )
        if tensor.device != lead.device:
            raise ValueError(f"{name}: expected device {lead.device}, got {tensor.device}")
    if lead.ndim != batch.count(",") + 2 or lead.shape[-1] != lead_last:
        raise ValueError(
            f"{lead_name}: expected shape ({batch}, {lead_last}), got {tuple(lead.shape)}"
        )
    sizes = tuple(lead.shape[:-1])
    for name, tensor, last in tensors[1:]:
        expected = sizes if last is None else (*sizes, last)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")
    if not cutoff > 0:
        raise ValueError(f"cutoff: expected a positive number of standard deviations, got {cutoff}")
    return sizes


def _check(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    cutoff: float,
) -> None:
    tensors = (("means2d", means2d, 2), ("conics", conics, 3), ("amps", amps, None))
    check_gaussian_tensors(tensors, "N, G", cutoff)
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name}: expected a positive int, got {size!r}")


def bounded_chunk(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """`fn(*args)`, recomputed in the backward pass when autograd records it: the brute-force
    twins then hold one chunk of (element, Gaussian) pairs at a time, not all of them."""
    if torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    ):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _chunk_image(
    pixels_u: torch.Tensor,
    pixels_v: torch.Tensor,
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    cutoff: float,
) -> torch.Tensor:
    """(N, P) image of g Gaussians at P pixels (1, P, 1); means2d (N, g, 2), conics (N, g, 3)."""
    du = pixels_u - means2d[:, None, :, 0]  # (N, P, g)
    dv = pixels_v - means2d[:, None, :, 1]
    a, b, c = (conics[:, None, :, i] for i in range(3))
    power = a * du * du + 2 * b * du * dv + c * dv * dv
    inside = power <= cutoff * cutoff
    weight = torch.where(inside, torch.exp(-0.5 * power), torch.zeros_like(power))
    return (weight * amps[:, None, :]).sum(dim=2)


def rasterize_torch(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    cutoff: float = 3.0,
) -> torch.Tensor:
    """Readable pure-torch twin of the compiled rasterizer (any device; autograd).

    Brute force over pixels x Gaussians, in chunks of Gaussians; each chunk is recomputed in
    the backward pass (`bounded_chunk`), so memory stays bounded under autograd too.
    Arguments and result as `rasterize`.
    """
    _check(means2d, conics, amps, height, width, cutoff)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=means2d.dtype, device=means2d.device),
        torch.arange(width, dtype=means2d.dtype, device=means2d.device),
        indexing="ij",
    )
    pixels_u, pixels_v = u.reshape(1, -1, 1), v.reshape(1, -1, 1)  # (1, P, 1)
    image = means2d.new_zeros(means2d.shape[0], height * width)
    chunk = max(1, TWIN_BLOCK // (means2d.shape[0] * height * width))
    for start in range(0, means2d.shape[1], chunk):
        part = slice(start, start + chunk)
        image = image + bounded_chunk(
            _chunk_image,
            pixels_u,
            pixels_v,
            means2d[:, part],
            conics[:, part],
            amps[:, part],
            cutoff,
        )
    return image.reshape(-1, height, width)


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, amps, height, width, cutoff):  # noqa: D102
        ctx.save_for_backward(means2d, conics, amps)
        ctx.cutoff = cutoff
        return require_compiled("gaussians").rasterize_forward(
            means2d, conics, amps, height, width, cutoff
        )

    @staticmethod
    def backward(ctx, grad_image):  # noqa: D102
        means2d, conics, amps = ctx.saved_tensors
        grads = require_compiled("gaussians").rasterize_backward(
            means2d, conics, amps, grad_image.contiguous(), ctx.cutoff
        )
        return (*grads, None, None, None)


def rasterize(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    cutoff: float = 3.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Render projections as sums of 2D Gaussians (differentiable).

    Args:
        means2d: (N, G, 2) centres (u, v) in detector pixel coordinates, per view.
        conics: (N, G, 3) inverse 2D covariances [a, b, c] (pixel^-2).
        amps: (N, G) peak values (density x integration factor); 0 skips the Gaussian.
        height, width: detector pixels along v and u.
        cutoff: Gaussians contribute where their Mahalanobis distance is <= cutoff.
        backend: "auto", "compiled" or "torch" (see `nr._ext.use_compiled`).

    Returns:
        (N, height, width) images, dtype of the inputs.
    """
    _check(means2d, conics, amps, height, width, cutoff)
    if use_compiled("gaussians", backend, means2d, conics, amps):
        return _Rasterize.apply(means2d, conics, amps, height, width, float(cutoff))
    return rasterize_torch(means2d, conics, amps, height, width, cutoff)
