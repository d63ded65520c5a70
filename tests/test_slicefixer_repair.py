"""repair_volume: shapes, dtype, device, absolute intensity scale, view choice, bad input;
the DiffNR hook built on it."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import HallucinationGuard
from nr.ops.projector import project
from nr.priors.protocol import PriorHook, PriorSchedule
from slicefixer.model import SliceFixer
from slicefixer.presets import tiny_config
from slicefixer.prior import SliceFixerPrior, SliceFixerPriorConfig
from slicefixer.repair import repair_volume


class IdentityFixer(SliceFixer):
    """A SliceFixer that maps every slice to itself and records its conditioning views."""

    def condition(self, xrays, prompts):
        self.seen_views = xrays.clone()
        return super().condition(xrays, prompts)

    def denoise(self, images, condition):
        assert images.shape[-2:] == (self.config.resolution,) * 2
        return images


class HallucinatingFixer(SliceFixer):
    """A SliceFixer that invents a dense square in every slice."""

    def denoise(self, images, condition):
        out = images.clone()
        out[..., 24:34, 24:34] += 1.0
        return out


def _identity(resolution):
    torch.manual_seed(0)
    return IdentityFixer.from_config(dataclasses.replace(tiny_config(), resolution=resolution))


@pytest.fixture(scope="module")
def scan():
    geo = ConeBeamGeometry.default(n_voxel=64, n_views=12, n_detector=16)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, 64),) * 3, indexing="ij")
    volume = 0.1 + 0.7 * torch.exp(-((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) / 0.3)
    projections = torch.rand(12, 16, 16, generator=torch.Generator().manual_seed(3))
    return volume, projections, geo


def test_identity_model_returns_the_volume_unchanged(scan):
    volume, projections, geo = scan
    model = _identity(64)
    out = repair_volume(model, volume, projections, geo, axes=("z", "y", "x"))
    assert out.shape == volume.shape and out.dtype == volume.dtype and out.device == volume.device
    torch.testing.assert_close(out, volume, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.seen_views[0], projections[[0, 3]])


def test_absolute_scale_is_kept_outside_unit_range(scan):
    volume, projections, geo = scan
    hounsfield = (volume * 2000 - 1000).double()
    out = repair_volume(_identity(64), hounsfield, projections, geo, window="volume")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, hounsfield, atol=1e-3, rtol=0)
    out = repair_volume(_identity(64), hounsfield, projections, geo, window=(-1000.0, 1000.0))
    torch.testing.assert_close(out, hounsfield, atol=1e-3, rtol=0)


class BrighteningFixer(SliceFixer):
    """A SliceFixer that adds 0.2 (in its [-1, 1] units) to the left half of every slice."""

    def denoise(self, images, condition):
        out = images.clone()
        out[..., : images.shape[-1] // 2] += 0.2
        return out


def test_resizing_to_the_model_resolution_and_back(scan):
    volume, projections, geo = scan
    for resolution in (32, 128):
        out = repair_volume(
            _identity(resolution), volume, projections, geo, axes=("x",), batch_size=5
        )
        assert out.shape == volume.shape
        torch.testing.assert_close(out, volume, atol=1e-6, rtol=0)


def test_detail_finer_than_the_model_resolution_is_kept(scan):
    volume, projections, geo = scan
    checkerboard = 0.05 * (-1.0) ** torch.arange(64).view(1, 1, 64)
    detailed = volume + checkerboard
    torch.manual_seed(0)
    model = BrighteningFixer.from_config(dataclasses.replace(tiny_config(), resolution=16))
    out = repair_volume(model, detailed, projections, geo)
    change = out - detailed
    # 0.2 in [-1, 1] units is 0.1 in the (0, 1) window: added to the left, nothing to the right
    # (bilinear enlargement smooths the step over the middle columns). The change is smooth, so
    # the pixel-scale checkerboard, invisible at 16 pixels, survives everywhere.
    torch.testing.assert_close(change[..., :28], torch.full_like(change[..., :28], 0.1),
                               atol=1e-5, rtol=0)
    assert change[..., 36:].abs().max() < 1e-5
    assert (change[..., 1:] - change[..., :-1]).abs().max() <= 0.1 / 4 + 1e-6


def test_real_tiny_model_repairs_a_64_cube(scan):
    volume, projections, geo = scan
    torch.manual_seed(0)
    model = SliceFixer.from_config(tiny_config())
    out = repair_volume(model, volume, projections, geo, axes=("z", "x"), batch_size=16)
    assert out.shape == volume.shape and out.dtype == volume.dtype
    low, high = model.config.intensity_window
    assert torch.isfinite(out).all() and out.min() >= low and out.max() <= high
    assert not torch.allclose(out, volume, atol=1e-3)


def test_bad_inputs(scan):
    volume, projections, geo = scan
    model = _identity(64)
    with pytest.raises(ValueError, match="projections: expected 12 views"):
        repair_volume(model, volume, projections[:5], geo)
    with pytest.raises(ValueError, match="axes"):
        repair_volume(model, volume, projections, geo, axes="z")
    with pytest.raises(ValueError, match="volume: values must be finite"):
        repair_volume(model, volume * float("nan"), projections, geo)
    with pytest.raises(ValueError, match="window"):
        repair_volume(model, volume, projections, geo, window=(1.0, 0.0))
    with pytest.raises(TypeError, match="geo"):
        repair_volume(model, volume, projections, "geo")
    with pytest.raises(ValueError, match="closed prompt set"):
        repair_volume(model, volume, projections, geo, prompt="sharpen")


def test_the_prior_makes_the_repaired_volume_data_consistent_with_cg(scan):
    volume, _, geo = scan
    truth = volume.flip(2)  # the measured data disagree with the current volume
    projections = project(truth, geo)

    def residual(reference):
        return float(torch.linalg.vector_norm(project(reference, geo) - projections))

    references = {}
    for cg_iters in (0, 2, 6):
        prior = SliceFixerPrior(_identity(64), SliceFixerPriorConfig(cg_iters=cg_iters))
        references[cg_iters] = prior.pseudo_reference(volume, projections, geo, 1.0)
    torch.testing.assert_close(references[0], volume, atol=1e-5, rtol=0)
    assert residual(volume) > 1.5 * residual(references[2]) > 1.5 * residual(references[6])
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="cg_iters"):
            SliceFixerPriorConfig(cg_iters=bad)


def test_the_guard_rejects_an_invented_square_that_cg_fits_to_the_fitted_views(scan):
    truth, _, geo = scan
    projections = project(truth, geo)
    current = truth + 0.01 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    held_out = (2, 8)
    fitted = [v for v in range(geo.n_views) if v not in held_out]
    torch.manual_seed(0)
    fixer = HallucinatingFixer.from_config(dataclasses.replace(tiny_config(), resolution=64))
    prior = SliceFixerPrior(fixer, SliceFixerPriorConfig(cg_iters=5))
    guard = HallucinationGuard(projections, geo)

    reference = prior.pseudo_reference(current, projections[fitted], geo.subset(fitted), 1.0)
    invented = (reference - truth)[:, 24:34, 24:34].mean()
    assert invented > 0.4  # the square survives CGLS on the 10 fitted views ...
    assert guard.check(reference, current, held_out, 1).action == "reject"  # ... not 2 and 8

    trainer = SimpleNamespace(  # what the hook reads of a Trainer
        config=SimpleNamespace(iterations=10, volume_scale=1.0, validation_views=held_out),
        volume=lambda: current,
        training_data=lambda: (projections[fitted], geo.subset(fitted)),
        holding_out=True,
    )
    hook = PriorHook(prior, PriorSchedule(start=1, every=1), guard)
    assert hook(trainer, 1).weight == 0.0
    assert [call["guard"]["action"] for call in hook.calls] == ["reject"]
