"""DiffusionBlend hook inside nr.train.Trainer on a tiny cone-beam scan."""

import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project
from nr.priors.blend_hook import BlendHook, BlendHookConfig
from nr.priors.blend_model import PRESETS, BlendPrior
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


def make_hook(cg_iters, every=3, samples=1):
    torch.manual_seed(0)
    config = BlendHookConfig(
        every=every,
        start=every,
        loss_every=1,
        t0=100,
        sampler=BlendSamplerConfig(steps=3, cg_iters=cg_iters),
        samples=samples,
    )
    return BlendHook(BlendPrior(PRESETS["tiny"]), config)


def make_trainer(geo, projections, iterations, hooks=()):
    config = TrainConfig(iterations=iterations, tv_crop=4, eval_every=0, progress=False)
    return Trainer(VoxelGrid(), projections, geo, config, hooks=list(hooks))


def test_hook_in_trainer_returns_a_data_consistent_reference(scan):
    geo, truth, projections = scan
    hook = make_hook(cg_iters=8)
    trainer = make_trainer(geo, projections, 4, [hook])
    trainer.run()
    reference = trainer.references[0].reference
    assert reference.shape == SHAPE and torch.isfinite(reference).all()
    assert trainer.references[0].weight == 1.0
    assert hook.last["iteration"] == 3 and hook.last["patch_evaluations"] > 0
    current = trainer.volume()
    residual = lambda v: float((project(v, geo) - projections).norm())  # noqa: E731
    no_cg = make_hook(cg_iters=0)
    no_cg_reference = no_cg(trainer, 3).reference
    assert residual(reference) < residual(no_cg_reference)
    assert residual(reference) < residual(current)


def test_hook_state_round_trip_reproduces_the_reference(scan):
    geo, truth, projections = scan
    trainer = make_trainer(geo, projections, 2)
    hook = make_hook(cg_iters=2)
    state = hook.state_dict()
    first = hook(trainer, 1).reference
    hook.load_state_dict(state)
    torch.testing.assert_close(hook(trainer, 1).reference, first, rtol=0, atol=0)


def test_hook_averages_its_draws(scan):
    geo, truth, projections = scan
    trainer = make_trainer(geo, projections, 2)
    single = make_hook(cg_iters=2)
    draws, evaluations = [], 0
    for _ in range(2):
        draws.append(single(trainer, 1).reference)
        evaluations += single.last["patch_evaluations"]
    averaged = make_hook(cg_iters=2, samples=2)
    reference = averaged(trainer, 1).reference
    assert not torch.allclose(draws[0], draws[1])
    torch.testing.assert_close(reference, (draws[0] + draws[1]) / 2)
    assert averaged.last["patch_evaluations"] == evaluations


def test_hook_makes_no_reference_after_the_last_step(scan):
    geo, truth, projections = scan
    hook = make_hook(cg_iters=1)
    trainer = make_trainer(geo, projections, 3, [hook])
    trainer.run()
    assert trainer.references == {} and hook.last == {}
    assert hook(trainer, 2) is not None


def test_hook_config_validation():
    with pytest.raises(ValueError, match="t0"):
        BlendHookConfig(t0=1000)
    with pytest.raises(ValueError, match="every"):
        BlendHookConfig(every=0)
    with pytest.raises(ValueError, match="samples"):
        BlendHookConfig(samples=0)
