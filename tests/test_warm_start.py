"""Warm start: the classical start volumes and the fit of a representation to a volume."""

import pytest
import torch

from nr.fields import FieldConfig, HashGridField
from nr.gaussians import GaussianConfig, GaussianModel, InitConfig, initial_points
from nr.metrics import psnr3d
from nr.recon import HashGridReconConfig, reconstruct_hashgrid
from nr.train import CHECKPOINT, TrainConfig
from nr.warm_start import WarmStartConfig, classical_start, crop_starts, fit_to_volume
from tests.test_train import TINY, _one_thread, _scan  # noqa: F401 (_one_thread: autouse)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(method="fdk"), "method"),
        (dict(steps=-1), "steps"),
        (dict(crop=1), "crop"),
        (dict(crop_sampling="random"), "crop_sampling"),
        (dict(final_lr_factor=0.0), "final_lr_factor"),
        (dict(lr_factor=0.0), "lr_factor"),
        (dict(lr_factor=float("inf")), "lr_factor"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        WarmStartConfig(**changes)


def test_classical_starts_beat_a_blank_volume():
    geo, gt, proj = _scan()
    assert classical_start(proj, geo, "none") is None
    blank = float(psnr3d(torch.zeros_like(gt), gt))
    for method in ("sart", "asd_pocs"):
        start = classical_start(proj, geo, method)
        assert start.shape == geo.volume_shape and start.dtype == torch.float32
        assert float(psnr3d(start, gt)) > blank + 5
    with pytest.raises(ValueError, match="method"):
        classical_start(proj, geo, "cgls")
    with pytest.raises(ValueError, match="projections"):
        classical_start(proj[:3], geo, "sart")


def test_fit_brings_a_field_and_gaussians_to_the_volume():
    geo, gt, _ = _scan()
    config = WarmStartConfig(steps=60, crop=12)
    field = HashGridField(geo, FieldConfig(encoding=TINY, attenuation_bound=2.0))
    means, densities, scales = initial_points(geo, InitConfig(n_points=300, threshold=0.2), gt)
    gaussians = GaussianModel(geo, means, densities, scales, GaussianConfig())
    for model in (field, gaussians):
        with torch.no_grad():
            before = float(psnr3d(model.to_volume(geo), gt))
        losses = fit_to_volume(model, geo, gt, 1.0, config, progress=False)
        with torch.no_grad():
            after = float(psnr3d(model.to_volume(geo), gt))
        assert len(losses) == 60 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
        assert after > before + 3, (type(model).__name__, before, after)
    assert gaussians.count == 300  # no density control during the fit


def test_attenuation_crops_land_on_the_object():
    target = torch.zeros(20, 24, 28)
    target[2:6, 15:21, 3:9] = 1.0  # the object: a small block near a corner
    target[10, 12, 14] = 0.5  # and one fainter voxel
    size = [8, 8, 8]
    config = WarmStartConfig(steps=400, crop_sampling="attenuation", seed=3)
    starts = crop_starts(target, size, config)
    assert len(starts) == 400 and starts == crop_starts(target, size, config)
    covered = [
        float(target[tuple(slice(a, a + n) for a, n in zip(s, size, strict=True))].sum())
        for s in starts
    ]
    assert all(c > 0 for c in covered)  # every crop holds a voxel of the object
    for start in starts:
        assert all(0 <= a <= n - k for a, n, k in zip(start, target.shape, size, strict=True))
    # Uniform starts are the historical draws (one torch.randint per axis and step), and
    # most of them miss the block.
    uniform = crop_starts(target, size, WarmStartConfig(steps=400, seed=3))
    generator = torch.Generator().manual_seed(3)
    expected = [
        [int(torch.randint(0, n - 8 + 1, (1,), generator=generator)) for n in (20, 24, 28)]
        for _ in range(400)
    ]
    assert uniform == expected
    missed = [float(target[tuple(slice(a, a + 8) for a in s)].sum()) == 0 for s in uniform]
    assert sum(missed) > 100
    with pytest.raises(ValueError, match="positive attenuation"):
        crop_starts(torch.zeros(20, 24, 28), size, config)


def test_fit_rejects_bad_inputs():
    geo, gt, _ = _scan(n=8, views=4)
    field = HashGridField(geo, FieldConfig(encoding=TINY))
    with pytest.raises(ValueError, match="reference"):
        fit_to_volume(field, geo, gt[:4], 1.0)
    with pytest.raises(ValueError, match="scale"):
        fit_to_volume(field, geo, gt, 0.0)
    with pytest.raises(TypeError, match="representation"):
        fit_to_volume(torch.nn.Linear(2, 2), geo, gt, 1.0)


def test_recipe_records_the_warm_start_and_skips_it_on_resume(tmp_path):
    geo, gt, proj = _scan()
    train = TrainConfig(
        iterations=2, views_per_iteration=4, tv_crop=8, progress=False, checkpoint_every=1
    )
    config = HashGridReconConfig(
        field=FieldConfig(encoding=TINY),
        train=train,
        warm_start=WarmStartConfig(method="sart", steps=150, crop=12),
    )
    first, history = reconstruct_hashgrid(proj, geo, config, volume_gt=gt, out_dir=tmp_path)
    warm = history["warm_start"]
    assert warm["method"] == "sart" and warm["steps"] == 150
    assert warm["fit_seconds"] > 0 and warm["start_seconds"] > 0
    assert warm["fitted_psnr"] > warm["start_psnr"] - 3  # near SART, far above the constant
    assert (tmp_path / CHECKPOINT).exists()
    again, history = reconstruct_hashgrid(proj, geo, config, volume_gt=gt, out_dir=tmp_path)
    assert history["warm_start"]["skipped"] == "resumed from a checkpoint"
    torch.testing.assert_close(again, first)


def test_a_blind_warm_start_leaves_the_validation_views_out():
    """`sees_validation_views=False`: the classical start is computed from the fitted views
    only, so the guard's held-out views are new to the fit when it judges on them; DiffNR sets
    it from `GuardConfig.blind_warm_start`."""
    import dataclasses

    from nr.diffnr import DiffNRConfig
    from nr.guard import GuardConfig
    from nr.recon import _classical_start

    geo, _, projections = _scan()
    train = TrainConfig(iterations=4, validation_views=(1, 5), validation_until=2)
    seen = _classical_start(projections, geo, train, WarmStartConfig(method="sart"))
    blind = _classical_start(
        projections, geo, train, WarmStartConfig(method="sart", sees_validation_views=False)
    )
    fitted = [v for v in range(geo.n_views) if v not in (1, 5)]
    assert torch.equal(blind, classical_start(projections[fitted], geo.subset(fitted), "sart"))
    assert not torch.equal(seen, blind)
    config = DiffNRConfig(prior="none")  # blind by default
    assert not config.recon_config(geo).warm_start.sees_validation_views
    seeing = dataclasses.replace(config, guard=GuardConfig(blind_warm_start=False))
    assert seeing.recon_config(geo).warm_start.sees_validation_views
