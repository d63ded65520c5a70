"""X-ray rasterizer and voxelizer of nr.gaussians: kernels against twins, analytic integrals."""

import math

import numpy as np
import pytest
import torch

from nr._ext import compiled
from nr.gaussians.projection import Cameras, covariances, precisions, project, project_torch
from nr.gaussians.rasterize import rasterize, rasterize_torch
from nr.gaussians.voxelize import voxelize, voxelize_torch
from nr.geometry import ConeBeamGeometry

needs_kernel = pytest.mark.skipif(compiled("gaussians") is None, reason="nr.gaussians._C not built")


def small_geometry(mode: str, angles=(0.3, 1.2, 4.0)) -> ConeBeamGeometry:
    return ConeBeamGeometry(
        n_voxel=(12, 14, 16),
        s_voxel=(48.0, 56.0, 64.0),
        n_detector=(20, 24),
        d_detector=(4.0, 4.0),
        angles=angles,
        dso=200.0,
        dsd=300.0,
        mode=mode,
        off_detector=(3.0, -2.0),
    )


def random_gaussians(count: int, dtype=torch.float32, seed: int = 0):
    """Mixed Gaussians: anisotropic and rotated, tiny (sub-pixel), large, and off-detector."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(count, 3, generator=gen, dtype=torch.float64) - 0.5) * 60.0
    means[: count // 8, 2] += 150.0  # far above the volume: off the detector
    scales = torch.exp(
        torch.empty(count, 3, dtype=torch.float64).uniform_(-1.0, 1.5, generator=gen)
    )
    scales[count // 8 : count // 4] *= 0.05  # sub-pixel
    quats = torch.randn(count, 4, generator=gen, dtype=torch.float64)
    rho = torch.rand(count, generator=gen, dtype=torch.float64) + 0.1
    return tuple(t.to(dtype) for t in (means, scales, quats, rho))


def projected(mode: str, dtype=torch.float32, count: int = 64):
    geo = small_geometry(mode)
    means, scales, quats, rho = random_gaussians(count, dtype)
    cams = Cameras.from_geometry(geo, dtype)
    return geo, project(means, scales, quats, rho, cams)


@needs_kernel
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_rasterize_kernel_equals_twin_forward_and_backward(mode):
    geo, (means2d, conics, amps) = projected(mode)
    assert (amps > 0).all() and (means2d[..., 1] > geo.n_detector[0] + 20).any()
    height, width = (int(n) for n in geo.n_detector)
    inputs = [t.detach().requires_grad_() for t in (means2d, conics, amps)]
    twin_inputs = [t.detach().requires_grad_() for t in (means2d, conics, amps)]
    image = rasterize(*inputs, height, width, backend="compiled")
    twin = rasterize_torch(*twin_inputs, height, width)
    assert image.abs().max() > 1.0
    torch.testing.assert_close(image, twin, rtol=1e-5, atol=1e-5 * twin.abs().max().item())
    cotangent = torch.randn_like(image)
    grads = torch.autograd.grad((image * cotangent).sum(), inputs)
    twin_grads = torch.autograd.grad((twin * cotangent).sum(), twin_inputs)
    for grad, expected in zip(grads, twin_grads, strict=True):
        torch.testing.assert_close(
            grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()
        )


@needs_kernel
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_project_kernel_equals_twin_forward_and_backward(mode):
    geo = small_geometry(mode)
    cams = Cameras.from_geometry(geo)
    means, scales, quats, rho = random_gaussians(64)
    means = means.clone()
    means[0] = torch.tensor([250.0, 0.0, 0.0])  # behind the source at angle 0.3: inert
    inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    twin_inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    out = project(*inputs, cams, backend="compiled")
    twin = project_torch(*twin_inputs, cams)
    assert (out[2][:, 0] == 0).any() == (mode == "cone")
    cotangents = [torch.randn_like(t) for t in twin]
    for got, expected in zip(out, twin, strict=True):
        torch.testing.assert_close(
            got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()
        )
    loss = sum((o * c).sum() for o, c in zip(out, cotangents, strict=True))
    twin_loss = sum((o * c).sum() for o, c in zip(twin, cotangents, strict=True))
    grads = torch.autograd.grad(loss, inputs)
    twin_grads = torch.autograd.grad(twin_loss, twin_inputs)
    for grad, expected in zip(grads, twin_grads, strict=True):
        torch.testing.assert_close(
            grad, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item()
        )


@needs_kernel
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_project_kernel_shape_gradients_equal_twin_for_unnormalised_quaternions(mode):
    cams = Cameras.from_geometry(small_geometry(mode), torch.float64)
    means, scales, quats, rho = random_gaussians(32, torch.float64, seed=5)
    # Quaternion norms from 1e-3 to 1e3: the kernel normalises them and differentiates that.
    quats = quats * torch.logspace(-3, 3, 32, dtype=torch.float64)[:, None]
    inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    twin_inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    out = project(*inputs, cams, backend="compiled")
    # One autograd node: covariance and weights are formed inside the kernel.
    leaves = [node.variable for node, _ in out[0].grad_fn.next_functions[:4]]
    assert all(leaf is t for leaf, t in zip(leaves, inputs, strict=True))
    twin = project_torch(*twin_inputs, cams)
    gen = torch.Generator().manual_seed(6)
    for index in (1, 2):  # conics and amps: the outputs that depend on scales and rotation
        cotangent = torch.randn(twin[index].shape, generator=gen, dtype=torch.float64)
        loss, twin_loss = ((o[index] * cotangent).sum() for o in (out, twin))
        grads = torch.autograd.grad(loss, inputs[1:3], retain_graph=True)
        twin_grads = torch.autograd.grad(twin_loss, twin_inputs[1:3], retain_graph=True)
        for grad, expected in zip(grads, twin_grads, strict=True):
            assert expected.abs().max() > 0
            torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-10 * expected.abs().max())
    # The radial direction of a quaternion changes nothing: its gradient is tangential.
    radial = (grads[1] * quats).sum(-1) / quats.norm(dim=-1)
    assert radial.abs().max() < 1e-9 * grads[1].abs().max()


def assert_voxelize_matches_twin(tensors, grid, tolerance):
    """Kernel = twin on `grid` (origin, spacing, shape): forward within `tolerance`, backward
    with a random cotangent within 10 x `tolerance` (relative to the largest value)."""
    inputs = [t.detach().requires_grad_() for t in tensors]
    twin_inputs = [t.detach().requires_grad_() for t in tensors]
    volume = voxelize(*inputs, *grid, backend="compiled")
    twin = voxelize_torch(*twin_inputs, *grid)
    assert volume.shape == grid[2] and twin.abs().max() > 0.05
    scale = twin.abs().max().item()
    torch.testing.assert_close(volume, twin, rtol=tolerance, atol=tolerance * scale)
    cotangent = torch.randn_like(volume)
    grads = torch.autograd.grad((volume * cotangent).sum(), inputs)
    twin_grads = torch.autograd.grad((twin * cotangent).sum(), twin_inputs)
    for grad, expected in zip(grads, twin_grads, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(grad, expected, rtol=10 * tolerance, atol=10 * tolerance * scale)


@needs_kernel
def test_voxelize_kernel_equals_twin_on_whole_grid_and_sub_box():
    means, scales, quats, rho = random_gaussians(64)
    means = means.clone()
    means[:8, 2] -= 150.0  # bring the off-detector ones back, partly outside the box
    tensors = (means, precisions(scales, quats), rho)
    assert_voxelize_matches_twin(tensors, ((-30.0, -28.0, -22.0), (4.0,) * 3, (12, 14, 16)), 1e-5)
    assert_voxelize_matches_twin(tensors, ((-5.0, 2.0, -9.0), (1.5, 2.0, 2.5), (9, 5, 7)), 1e-5)


@needs_kernel
def test_voxelize_kernel_equals_twin_for_needles():
    """Thin rotated needles: their bounding boxes hold rows whose power far exceeds the cutoff
    (over 1,000), which the kernel walks from the interval's ends, not from the box's. In
    float64: in float32 the twin's own rounding of such needles' powers is about 1e-4."""
    quats = torch.tensor(
        [
            [math.cos(0.6), math.sin(0.6) * 0.6, math.sin(0.6) * 0.8, 0.0],
            [0.8, 0.1, -0.5, 0.3],
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    scales = torch.tensor([[14.0, 0.4, 0.5], [0.3, 10.0, 0.35], [1.5, 1.2, 1.0]])
    means = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 2.5, 1.0], [4.0, 4.0, -4.0]])
    rho = torch.tensor([0.8, 1.2, 0.5])
    tensors = [t.double() for t in (means, precisions(scales, quats), rho)]
    assert_voxelize_matches_twin(tensors, ((-15.5, -15.0, -14.5), (1.0,) * 3, (30, 31, 32)), 1e-10)


def exact_line_integrals(geo, view, mean, cov, rho):
    """Closed-form integral of rho exp(-x^T P x / 2) along every detector ray of one view."""
    src, det, du, dv = geo.view_vectors()[view]
    v, u = np.meshgrid(np.arange(geo.n_detector[0]), np.arange(geo.n_detector[1]), indexing="ij")
    pixels = det + u[..., None] * du + v[..., None] * dv
    start, direction = (
        (src, pixels - src) if geo.mode == "cone" else (pixels - src, src + 0 * pixels)
    )
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    prec = np.linalg.inv(cov)
    r = start - mean
    wpw = np.einsum("...i,ij,...j", direction, prec, direction)
    wpr = np.einsum("...i,ij,...j", direction, prec, r)
    rpr = np.einsum("...i,ij,...j", r, prec, r)
    return rho * np.sqrt(2 * np.pi / wpw) * np.exp(-0.5 * (rpr - wpr**2 / wpw))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("mode", ["parallel", "cone"])
def test_single_gaussian_matches_its_analytic_line_integrals(mode, backend):
    geo = ConeBeamGeometry(
        n_voxel=(16, 16, 16),
        s_voxel=(64.0,) * 3,
        n_detector=(48, 64),
        d_detector=(1.5, 1.5),
        angles=[0.0, 1.2],
        dso=200.0,
        dsd=300.0,
        mode=mode,
    )
    mean = torch.tensor([[0.0, 0.0, 0.0], [2.0, -3.0, 1.0]], dtype=torch.float64)
    scales = torch.tensor([[3.0, 2.0, 4.0]], dtype=torch.float64)
    quat = torch.tensor([[0.9, 0.2, -0.3, 0.25]], dtype=torch.float64)
    rho = torch.tensor([0.7], dtype=torch.float64)
    cov = covariances(scales, quat)[0].numpy()
    total = 0.7 * (2 * math.pi) ** 1.5 * math.sqrt(np.linalg.det(cov))
    magnification = 1.0 if mode == "parallel" else geo.dsd / geo.dso
    for centre in mean:
        args = project(centre[None], scales, quat, rho, Cameras.from_geometry(geo, torch.float64))
        # A wide cutoff keeps the whole footprint; cutoff 3 drops exactly exp(-9/2) of it.
        image = rasterize(*args, 48, 64, cutoff=8.0, backend=backend)
        truncated = rasterize(*args, 48, 64, cutoff=3.0, backend=backend)
        pixel_area = 1.5 * 1.5 / magnification**2
        for view in range(2):
            exact = exact_line_integrals(geo, view, centre.numpy(), cov, 0.7)
            error = np.abs(image[view].numpy() - exact).max() / exact.max()
            # Parallel beams: EWA is exact. Cone: the linearised perspective errs by < 1 %.
            assert error < (1e-9 if mode == "parallel" else 1e-2)
            if mode == "parallel" or view == 0 and not centre.any():
                # Pixel sum x pixel area (at the Gaussian) = rho (2 pi)^(3/2) sqrt(det Sigma).
                tolerance = 1e-9 if mode == "parallel" else 5e-3
                assert image[view].sum().item() * pixel_area == pytest.approx(total, rel=tolerance)
                kept = truncated[view].sum().item() / image[view].sum().item()
                assert kept == pytest.approx(1 - math.exp(-4.5), rel=5e-3)


@needs_kernel
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_gradcheck_float64_through_projection_and_kernel(mode):
    geo = small_geometry(mode, angles=(0.4, 2.0))
    cams = Cameras.from_geometry(geo, torch.float64)
    means, scales, quats, rho = random_gaussians(4, torch.float64, seed=3)
    means = means.clone()
    means[:, 2] = torch.tensor([0.0, 5.0, -8.0, 3.0])  # all on the detector
    scales = scales.clamp(min=2.0)
    height, width = (int(n) for n in geo.n_detector)

    def render(m, s, q, r):  # both compiled kernels: projection and rasterization
        projected = project(m, s, q, r, cams, backend="compiled")
        return rasterize(*projected, height, width, backend="compiled")

    inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@needs_kernel
def test_gradcheck_float64_voxelize():
    means, scales, quats, rho = random_gaussians(4, torch.float64, seed=4)
    means = (means.clone() * 0.2).detach()
    scales = scales.clamp(min=2.0)

    def volume(m, s, q, r):
        return voxelize(
            m,
            precisions(s, q),
            r,
            (-10.0, -9.0, -8.0),
            (2.5, 2.0, 3.0),
            (6, 7, 8),
            backend="compiled",
        )

    inputs = [t.detach().requires_grad_() for t in (means, scales, quats, rho)]
    assert torch.autograd.gradcheck(volume, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gaussians_behind_the_source_render_nothing():
    geo = small_geometry("cone", angles=(0.0,))
    means = torch.tensor([[300.0, 0.0, 0.0]])  # beyond the source at x = +200
    out = project(
        means,
        torch.ones(1, 3),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.ones(1),
        Cameras.from_geometry(geo),
    )
    assert out[2].item() == 0.0 and torch.isfinite(out[1]).all()


def test_bad_inputs_raise_clear_errors():
    means2d, conics, amps = torch.zeros(1, 2, 2), torch.ones(1, 2, 3), torch.ones(1, 2)
    with pytest.raises(ValueError, match="conics"):
        rasterize(means2d, conics[:, :1], amps, 4, 4)
    with pytest.raises(TypeError, match="amps"):
        rasterize(means2d, conics, amps.double(), 4, 4)
    with pytest.raises(ValueError, match="height"):
        rasterize(means2d, conics, amps, 0, 4)
    with pytest.raises(ValueError, match="backend"):
        rasterize(means2d, conics, amps, 4, 4, backend="gpu")
    means, prec, rho = torch.zeros(2, 3), torch.ones(2, 6), torch.ones(2)
    with pytest.raises(ValueError, match="precisions"):
        voxelize(means, prec[:, :3], rho, (0, 0, 0), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="spacing"):
        voxelize(means, prec, rho, (0, 0, 0), (1, 0, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        voxelize(means, prec, rho, (0, 0, 0), (1, 1, 1), (2, 2))
    with pytest.raises(ValueError, match="origin"):
        voxelize(means, prec, rho, (0, float("nan"), 0), (1, 1, 1), (2, 2, 2))
    with pytest.raises(TypeError, match="geo"):
        Cameras.from_geometry("geo")
