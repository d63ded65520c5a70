import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nr.metrics import psnr3d, ssim2d, ssim3d, ssim3d_axes


def _volumes(seed: int = 0, shape=(16, 20, 24)):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape).astype(np.float64)
    pred = np.clip(gt + 0.1 * rng.standard_normal(shape), -0.2, 1.2)
    return pred, gt


def _skimage_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    return structural_similarity(
        gt, pred, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


def test_psnr3d_matches_skimage():
    pred, gt = _volumes()
    expected = peak_signal_noise_ratio(gt, pred, data_range=1.0)
    assert float(psnr3d(torch.from_numpy(pred), torch.from_numpy(gt))) == pytest.approx(
        expected, abs=1e-9
    )


def test_ssim2d_matches_skimage_per_image():
    pred, gt = _volumes(1)
    ours = ssim2d(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    expected = [_skimage_ssim(p, g) for p, g in zip(pred, gt, strict=True)]
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_ssim3d_is_mean_of_slice_ssims_over_three_axes():
    pred, gt = _volumes(2)
    gt[:, :, 0] = 0.0  # an all-zero slice along x is skipped, as R2-Gaussian does
    expected = []
    for axis in range(3):
        p, g = np.moveaxis(pred, axis, 0), np.moveaxis(gt, axis, 0)
        expected.append(
            np.mean([_skimage_ssim(a, b) for a, b in zip(p, g, strict=True) if b.max() > 0])
        )
    axes = ssim3d_axes(pred, gt).numpy()
    np.testing.assert_allclose(axes, expected, atol=1e-6)
    assert float(ssim3d(pred, gt)) == pytest.approx(np.mean(expected), abs=1e-6)


def test_ssim3d_is_differentiable_and_one_at_identity():
    _, gt = _volumes(3)
    volume = torch.from_numpy(gt).clone().requires_grad_(True)
    value = ssim3d(volume, torch.from_numpy(gt)).detach()
    assert float(value) == pytest.approx(1.0, abs=1e-9)
    (1 - ssim3d(volume * 0.9, torch.from_numpy(gt))).backward()
    assert volume.grad is not None and torch.isfinite(volume.grad).all()


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr3d(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="at least 11"):
        ssim3d(torch.rand(8, 8, 8), torch.rand(8, 8, 8))
    with pytest.raises(TypeError, match="pred"):
        psnr3d([1, 2], torch.zeros(2))
