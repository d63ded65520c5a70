"""Additive X-ray rasterization of projected Gaussians: compiled CPU kernel and torch twin.

A view's image is ``I(p) = sum_g amp_g exp(-1/2 d^T C_g d)`` with ``d = p - mean_g`` in
detector pixel coordinates, summed only where ``d^T C_g d <= cutoff^2`` (no alpha
compositing: X-ray attenuation adds up along a ray). Pixel (v, u) has its centre at the
coordinates (u, v); ``C_g = [[a, b], [b, c]]`` is the inverse of the 2D covariance.
"""

from __future__ import annotations

import torch

from nr._ext import require_compiled, use_compiled

TWIN_BLOCK = 1 << 22  # (pixel, Gaussian) pairs per step of the brute-force twin (bounds memory)


def _check(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    cutoff: float,
) -> None:
    for name, tensor in (("means2d", means2d), ("conics", conics), ("amps", amps)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in (torch.float32, torch.float64) or tensor.dtype != means2d.dtype:
            raise TypeError(f"{name}: expected float32 or float64 like means2d, got {tensor.dtype}")
        if tensor.device != means2d.device:
            raise ValueError(f"{name}: expected device {means2d.device}, got {tensor.device}")
    if means2d.ndim != 3 or means2d.shape[2] != 2:
        raise ValueError(f"means2d: expected shape (N, G, 2), got {tuple(means2d.shape)}")
    n, g = means2d.shape[:2]
    if conics.shape != (n, g, 3):
        raise ValueError(f"conics: expected shape {(n, g, 3)}, got {tuple(conics.shape)}")
    if amps.shape != (n, g):
        raise ValueError(f"amps: expected shape {(n, g)}, got {tuple(amps.shape)}")
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name}: expected a positive int, got {size!r}")
    if not cutoff > 0:
        raise ValueError(f"cutoff: expected a positive number of standard deviations, got {cutoff}")


def rasterize_torch(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    cutoff: float = 3.0,
) -> torch.Tensor:
    """Readable pure-torch twin of the compiled rasterizer (any device; autograd).

    Brute force over pixels x Gaussians, in chunks of Gaussians to bound memory.
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
        du = pixels_u - means2d[:, None, part, 0]  # (N, P, g)
        dv = pixels_v - means2d[:, None, part, 1]
        a, b, c = (conics[:, None, part, i] for i in range(3))
        power = a * du * du + 2 * b * du * dv + c * dv * dv
        inside = power <= cutoff * cutoff
        weight = torch.where(inside, torch.exp(-0.5 * power), torch.zeros_like(power))
        image = image + (weight * amps[:, None, part]).sum(dim=2)
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
