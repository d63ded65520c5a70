import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import GuardConfig, HallucinationGuard
from nr.ops.projector import project


@pytest.fixture(scope="module")
def scene():
    geo = ConeBeamGeometry.default(n_voxel=24, n_views=12)
    z, y, x = torch.meshgrid(*(torch.arange(24.0) - 11.5,) * 3, indexing="ij")
    truth = ((z / 9) ** 2 + (y / 7) ** 2 + (x / 10) ** 2 < 1).float() * 0.5
    truth += ((z / 3) ** 2 + ((y - 3) / 2) ** 2 + (x / 3) ** 2 < 1).float() * 0.4
    projections = project(truth, geo)
    generator = torch.Generator().manual_seed(0)
    current = truth + 0.05 * torch.randn(truth.shape, generator=generator)
    return geo, truth, projections, current


def test_a_faithful_reference_is_accepted(scene):
    geo, truth, projections, current = scene
    guard = HallucinationGuard(projections, geo)
    decision = guard.check(truth, current, iteration=10)
    assert decision.action == "accept" and decision.weight_factor == 1.0
    assert decision.residual_reference < decision.residual_current


def test_a_hallucinated_reference_is_rejected(scene):
    geo, truth, projections, current = scene
    wrong = truth.flip(2).clone()
    wrong[4:9, 4:9, 4:9] += 1.0  # a structure the data never saw
    guard = HallucinationGuard(projections, geo)
    decision = guard.check(wrong, current, iteration=20)
    assert decision.action == "reject" and decision.weight_factor == 0.0
    assert "reject" in decision.reason and guard.decisions == [decision]


def test_in_between_references_are_down_weighted(scene):
    geo, truth, projections, current = scene
    guard = HallucinationGuard(
        projections, geo, GuardConfig(accept_ratio=1.0, reject_ratio=1e6, per_view=False)
    )
    decision = guard.check(current * 1.5, current, iteration=30)
    assert decision.action == "downweight" and 0.0 < decision.weight_factor < 1.0


def test_bad_configuration_and_shapes_are_refused(scene):
    geo, truth, projections, _ = scene
    with pytest.raises(ValueError, match="reject_ratio"):
        GuardConfig(accept_ratio=2.0, reject_ratio=1.5)
    with pytest.raises(ValueError, match="projections"):
        HallucinationGuard(projections[:3], geo)
    with pytest.raises(ValueError, match="volume"):
        HallucinationGuard(projections, geo).check(truth[:3], truth, iteration=1)
