"""SliceFixer losses: active terms, recorded fall-backs, GAN loss values, gradients."""

import importlib.util
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from slicefixer.losses import LossConfig, PatchDiscriminator, SliceFixerLoss


def _pair():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1
    prediction = (target + 0.3 * torch.randn(2, 1, 32, 32, generator=generator)).clamp(-1, 1)
    return prediction.requires_grad_(), target


def test_missing_perceptual_backbones_are_recorded_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="slicefixer.losses"):
        loss = SliceFixerLoss(LossConfig())
    terms = loss.resolved["terms"]
    for name in ("lpips", "clip"):
        assert terms[name]["active"] is False and terms[name]["reason"]
        assert f"term {name} is OFF" in caplog.text
    if importlib.util.find_spec("lpips") is None:
        assert "not installed" in terms["lpips"]["reason"]
    assert all(terms[name]["active"] for name in ("l2", "ssim", "gan"))
    assert isinstance(loss.discriminator, PatchDiscriminator)
    assert "PatchGAN" in loss.resolved["discriminator"]
    assert loss.lpips is None and loss.clip is None


def test_generator_loss_terms_and_gradients():
    torch.manual_seed(0)
    loss = SliceFixerLoss(LossConfig(l2=1.0, ssim=2.0, gan=0.5))
    prediction, target = _pair()
    total, terms = loss.generator_loss(prediction, target, ["p", "p"])
    assert set(terms) == {"l2", "ssim", "gan"}
    assert terms["l2"] == pytest.approx(float(F.mse_loss(prediction.detach(), target)))
    assert 0 < terms["ssim"] < 1
    expected = terms["l2"] + 2.0 * terms["ssim"] + 0.5 * terms["gan"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    _, same = loss.generator_loss(target, target, ["p", "p"])
    assert same["l2"] == 0 and same["ssim"] == pytest.approx(0, abs=1e-6)


def test_discriminator_step_reduces_its_loss():
    torch.manual_seed(0)
    loss = SliceFixerLoss(LossConfig(disc_width=8))
    prediction, target = _pair()
    smooth = F.avg_pool2d(target, 5, 1, 2)
    optimizer = torch.optim.Adam(loss.discriminator_parameters(), lr=1e-3)
    first = float(loss.discriminator_loss(prediction, smooth).detach())
    for _ in range(20):
        optimizer.zero_grad()
        loss.discriminator_loss(prediction, smooth).backward()
        optimizer.step()
    assert float(loss.discriminator_loss(prediction, smooth).detach()) < first


@pytest.mark.parametrize("kind,real,fake,generator", [
    ("multilevel_sigmoid_s", -(0.8 * math.log(0.5) + 0.2 * math.log(0.5)), math.log(2),
     math.log(2)),
    ("hinge", 1.0, 1.0, 0.0),
])
def test_gan_losses_on_zero_logits(kind, real, fake, generator):
    loss = SliceFixerLoss(LossConfig(gan_loss=kind))
    logits = [torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2)]
    assert float(loss._gan(logits, real=True, generator=False)) == pytest.approx(2 * real)
    assert float(loss._gan(logits, real=False, generator=False)) == pytest.approx(2 * fake)
    assert float(loss._gan(logits, real=True, generator=True)) == pytest.approx(2 * generator)


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="gan_loss"):
        LossConfig(gan_loss="wasserstein")
    with pytest.raises(ValueError, match="ssim"):
        LossConfig(ssim=-1)
    loss = SliceFixerLoss(LossConfig())
    with pytest.raises(ValueError, match="prediction/target"):
        loss.generator_loss(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), ["p", "p"])


def test_lpips_without_weights_is_off():
    pytest.importorskip("lpips")
    loss = SliceFixerLoss(LossConfig(vgg_weights="/nonexistent/vgg16.pth"))
    assert loss.lpips is None
    assert "vgg16" in loss.resolved["terms"]["lpips"]["reason"]


def test_clip_without_weights_is_off_and_discriminator_falls_back():
    pytest.importorskip("open_clip")
    loss = SliceFixerLoss(LossConfig(clip_weights="/nonexistent/clip.bin"))
    assert loss.clip is None and isinstance(loss.discriminator, PatchDiscriminator)
