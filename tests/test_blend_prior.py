"""DiffusionBlend as a DiffNR prior, alone and inside nr.train.Trainer on a tiny cone-beam scan."""

import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import HallucinationGuard
from nr.ops.projector import project
from nr.priors.blend_model import PRESETS, BlendPrior
from nr.priors.blend_prior import DiffusionBlendPrior, DiffusionBlendPriorConfig
from nr.priors.protocol import PriorHook, PriorSchedule
from nr.priors.sampler import BlendSamplerConfig
from nr.train import TrainConfig, Trainer

SHAPE = (12, 16, 16)


class VoxelGrid(torch.nn.Module):
    """The simplest Representation: a voxel grid projected by nr.ops."""

    def __init__(self):
        super().__init__()
        self.grid = torch.nn.Parameter(torch.full(SHAPE, 0.01))

    def render_projections(self, geo, view_ids):
        return project(self.grid, geo, list(view_ids))

    def to_volume(self, geo):
        return self.grid

    def query_box(self, geo, start, size):
        return self.grid[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))]

    def param_groups(self):
        return [{"params": [self.grid], "lr": 1e-3, "name": "grid"}]

    def after_backward(self, iteration, optimizer):
        pass

    def after_step(self, iteration, optimizer):
        pass


@pytest.fixture(scope="module")
def scan():
    geo = ConeBeamGeometry.for_volume(SHAPE, (1.0, 1.0, 1.0), 8)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    truth = ((x**2 + y**2 + 0.3 * z**2) < 0.5).float() * 0.05
    return geo, truth, project(truth, geo)


def make_prior(cg_iters, samples=1):
    torch.manual_seed(0)
    config = DiffusionBlendPriorConfig(
        t0=100, sampler=BlendSamplerConfig(steps=3, cg_iters=cg_iters), samples=samples
    )
    return DiffusionBlendPrior(BlendPrior(PRESETS["tiny"]), config)


def make_trainer(geo, projections, iterations, hooks=(), **changes):
    config = TrainConfig(iterations=iterations, tv_crop=4, eval_every=0, progress=False, **changes)
    return Trainer(VoxelGrid(), projections, geo, config, hooks=list(hooks))


def test_the_reference_is_data_consistent(scan):
    geo, truth, projections = scan
    current = torch.full(SHAPE, 0.02)
    reference = make_prior(cg_iters=8).pseudo_reference(current, projections, geo, 0.05)
    assert reference.shape == SHAPE and torch.isfinite(reference).all()
    no_cg = make_prior(cg_iters=0).pseudo_reference(current, projections, geo, 0.05)
    residual = lambda v: float((project(v, geo) - projections).norm())  # noqa: E731
    assert residual(reference) < residual(no_cg) and residual(reference) < residual(current)


def test_state_round_trip_reproduces_the_reference(scan):
    geo, truth, projections = scan
    prior = make_prior(cg_iters=2)
    state = prior.state_dict()
    first = prior.pseudo_reference(truth, projections, geo, 0.05)
    prior.load_state_dict(state)
    again = prior.pseudo_reference(truth, projections, geo, 0.05)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_the_prior_averages_its_draws(scan):
    geo, truth, projections = scan
    single = make_prior(cg_iters=2)
    draws, evaluations = [], 0
    for _ in range(2):
        draws.append(single.pseudo_reference(truth, projections, geo, 0.05))
        evaluations += single.last["patch_evaluations"]
    averaged = make_prior(cg_iters=2, samples=2)
    reference = averaged.pseudo_reference(truth, projections, geo, 0.05)
    assert not torch.allclose(draws[0], draws[1])
    torch.testing.assert_close(reference, (draws[0] + draws[1]) / 2)
    assert averaged.last["patch_evaluations"] == evaluations


def test_the_hook_calls_it_on_schedule_with_the_fitted_views_only(scan, monkeypatch):
    geo, truth, projections = scan
    prior = make_prior(cg_iters=1)
    seen = []
    draw = prior.pseudo_reference
    monkeypatch.setattr(
        prior, "pseudo_reference", lambda v, p, g, s: (seen.append(p.shape[0]), draw(v, p, g, s))[1]
    )
    hook = PriorHook(prior, PriorSchedule(start=2, every=2), HallucinationGuard(projections, geo))
    trainer = make_trainer(geo, projections, 6, [hook], validation_views=(3,), validation_until=5)
    trainer.run()
    # calls at 2 and 4 (7 of 8 views each); none at 6, the last step and after the release
    assert [call["iteration"] for call in hook.calls] == [2, 4] and seen == [7, 7]


def test_config_validation():
    for bad in ({"t0": 1000}, {"samples": 0}, {"high_percentile": 40.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiffusionBlendPriorConfig(**bad)
    with pytest.raises(TypeError, match="BlendPrior"):
        DiffusionBlendPrior(object())
