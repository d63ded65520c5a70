import pytest
import torch
import torch.nn.functional as F

from nr.geometry import ConeBeamGeometry
from nr.guard import GuardConfig, HallucinationGuard
from nr.ops.iterative import CGLSConfig, cgls
from nr.ops.projector import project
from nr.train import TrainConfig, validation_views


@pytest.fixture(scope="module")
def scene():
    """A two-ellipsoid phantom, its 16 views, 2 of them held out, and a CGLS fit of the other
    14 (what the fit knows before the held-out views are released)."""
    geo = ConeBeamGeometry.default(n_voxel=24, n_views=16)
    z, y, x = torch.meshgrid(*(torch.arange(24.0) - 11.5,) * 3, indexing="ij")
    truth = ((z / 9) ** 2 + (y / 7) ** 2 + (x / 10) ** 2 < 1).float() * 0.5
    truth += ((z / 3) ** 2 + ((y - 3) / 2) ** 2 + (x / 3) ** 2 < 1).float() * 0.4
    projections = project(truth, geo)
    held_out = validation_views(16, 0.125)
    training = [v for v in range(16) if v not in held_out]
    current = cgls(
        projections[training], geo.subset(training), CGLSConfig(n_iter=8), progress=False
    )
    return geo, truth, projections, held_out, training, current


def blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
    taps = taps / taps.sum()
    out = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(taps)
        padding = [0, 0, 0]
        padding[axis] = radius
        out = F.conv3d(out, taps.view(shape), padding=padding)
    return out[0, 0]


def test_a_reference_closer_to_the_truth_is_accepted(scene):
    geo, truth, projections, held_out, _, current = scene
    guard = HallucinationGuard(projections, geo)
    decision = guard.check(0.5 * (current + truth), current, held_out, iteration=10)
    assert decision.action == "accept" and decision.weight_factor == 1.0
    assert decision.residual_reference < decision.residual_current
    assert decision.views == held_out and guard.decisions == [decision]


def test_blurred_and_invented_references_are_rejected_on_the_held_out_views(scene):
    geo, truth, projections, held_out, training, current = scene
    invented = current.clone()
    invented[4:9, 10:15, 4:9] += 0.6  # a structure the data never saw
    guard = HallucinationGuard(projections, geo)
    for worse in (blur(current, 1.5), invented):
        decision = guard.check(worse, current, held_out, iteration=20)
        assert decision.action == "reject" and decision.weight_factor == 0.0
        assert "reject" in decision.reason


def test_data_consistency_on_the_fitted_views_does_not_hide_an_invented_structure(scene):
    """CGLS on the fitted views makes an invented structure fit those views about as well as
    the current volume does; the held-out views still see it."""
    geo, truth, projections, held_out, training, current = scene
    invented = current.clone()
    invented[4:9, 10:15, 4:9] += 0.6
    consistent = cgls(
        projections[training],
        geo.subset(training),
        CGLSConfig(n_iter=8),
        init=invented,
        progress=False,
    )
    guard = HallucinationGuard(projections, geo)
    on_fitted = guard.residual(consistent, training) / guard.residual(current, training)
    assert on_fitted < 1.5  # the old residual-ratio guard accepted up to 1.5
    assert guard.check(consistent, current, held_out, iteration=30).action == "reject"


def test_the_margin_demands_a_clear_improvement(scene):
    geo, truth, projections, held_out, _, current = scene
    slightly_better = 0.98 * current + 0.02 * truth
    assert (
        HallucinationGuard(projections, geo).check(slightly_better, current, held_out, 1).action
        == "accept"
    )
    strict = HallucinationGuard(projections, geo, GuardConfig(margin=0.5))
    assert strict.check(slightly_better, current, held_out, 1).action == "reject"


def test_the_protocol_holds_views_out_until_its_release():
    train = GuardConfig(fraction=0.1, release=0.75).protocol(TrainConfig(iterations=40), 25)
    assert train.validation_views == validation_views(25, 0.1) and train.validation_until == 30
    assert len(train.validation_views) == 2
    assert len(train.training_views(25, 30)) == 23 and len(train.training_views(25, 31)) == 25


def test_bad_configuration_and_inputs_are_refused(scene):
    geo, truth, projections, held_out, _, _ = scene
    for bad in ({"margin": 1.0}, {"margin": -0.1}, {"fraction": 0.5}, {"release": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GuardConfig(**bad)
    with pytest.raises(ValueError, match="projections"):
        HallucinationGuard(projections[:3], geo)
    guard = HallucinationGuard(projections, geo)
    with pytest.raises(ValueError, match="volume"):
        guard.check(truth[:3], truth, held_out, iteration=1)
    with pytest.raises(ValueError, match="views"):
        guard.check(truth, truth, (), iteration=1)
