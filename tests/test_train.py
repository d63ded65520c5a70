"""The training loop: losses, schedules, hooks, evaluation, checkpoints and exact resume."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nr.fields import FieldConfig, HashGridConfig, HashGridField
from nr.geometry import ConeBeamGeometry
from nr.losses import dssim_loss, projection_loss, tv3d_loss
from nr.ops.projector import project
from nr.recon import HashGridReconConfig, reconstruct_hashgrid
from nr.train import HookResult, TrainConfig, Trainer, learning_rate, plot_curves

ROOT = Path(__file__).resolve().parents[1]
TINY = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.5)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: threads only add contention (tens of times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scan(n: int = 16, views: int = 8):
    geo = ConeBeamGeometry.default(n_voxel=n, n_views=views)
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, n)] * 3, indexing="ij")
    gt = ((x**2 + y**2 / 0.6 + z**2 / 0.8) < 0.6).float() * 0.5
    gt = gt + ((x - 0.2) ** 2 + y**2 + z**2 < 0.1).float() * 0.5
    return geo, gt, project(gt, geo)


def _trainer(geo, proj, gt=None, out_dir=None, hooks=(), **changes):
    config = dict(iterations=12, views_per_iteration=3, tv_crop=8, eval_every=4, progress=False)
    config.update(changes)
    field = HashGridField(geo, FieldConfig(encoding=TINY, attenuation_bound=2.0, lr_network=1e-2))
    return Trainer(field, proj, geo, TrainConfig(**config), gt, hooks, out_dir)


def test_losses():
    a = torch.zeros(2, 12, 12)
    b = torch.full((2, 12, 12), 2.0)
    assert float(projection_loss(a, b, "l1")) == 2.0 and float(projection_loss(a, b, "mse")) == 4.0
    assert float(dssim_loss(b, b, 2.0)) == pytest.approx(0.0, abs=1e-6)
    ramp = torch.arange(4.0).reshape(4, 1, 1).expand(4, 3, 2)
    assert float(tv3d_loss(ramp)) == pytest.approx(3 * 3 * 2 / 24)
    with pytest.raises(ValueError, match="kind"):
        projection_loss(a, b, "l2")


def test_learning_rate_schedules():
    group = {"lr_start": 1e-2, "lr_final": 1e-4}
    exp = TrainConfig(iterations=101)
    assert learning_rate(group, 1, exp) == pytest.approx(1e-2)
    assert learning_rate(group, 51, exp) == pytest.approx(1e-3)
    assert learning_rate(group, 101, exp) == pytest.approx(1e-4)
    step = TrainConfig(schedule="step", step_size=10, gamma=0.5)
    assert [learning_rate(group, i, step) for i in (1, 10, 11, 21)] == pytest.approx(
        [1e-2, 1e-2, 5e-3, 2.5e-3]
    )


def test_training_improves_and_is_deterministic():
    geo, gt, proj = _scan()
    first = _trainer(geo, proj, gt, iterations=30, eval_every=10)
    before = first.evaluate()["psnr"]
    history = first.run()
    assert history["eval"]["iteration"] == [0, 10, 20, 30]
    seconds = history["eval"]["seconds"]
    assert seconds[0] == 0 and all(a < b for a, b in zip(seconds, seconds[1:], strict=False))
    assert seconds[-1] <= history["wall_time"]
    assert history["eval"]["psnr"][-1] > before + 3.0
    assert history["train"]["loss"][-1] < 0.5 * history["train"]["loss"][0]
    assert set(history["train"]) == {"iteration", "loss", "projection", "dssim", "tv"}
    second = _trainer(geo, proj, gt, iterations=30, eval_every=10)
    second.evaluate()
    second.run()
    torch.testing.assert_close(first.volume(), second.volume(), rtol=0, atol=0)


class RecordingHook:
    """Returns a pseudo-reference at its first call; counts calls (checkpointed state)."""

    def __init__(self, every: int, start: int, reference: torch.Tensor, loss_every: int = 2):
        self.every, self.start, self.loss_every = every, start, loss_every
        self.reference = reference
        self.calls: list[int] = []

    def __call__(self, trainer, iteration):
        self.calls.append(iteration)
        return HookResult(self.reference, weight=1.0) if len(self.calls) == 1 else None

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


def test_hooks_schedule_and_reference_loss():
    geo, gt, proj = _scan()
    hook = RecordingHook(every=4, start=3, reference=gt)
    history = _trainer(geo, proj, hooks=[hook], iterations=12).run()
    assert hook.calls == [3, 7, 11]
    train = history["train"]
    # The reference of iteration 3 is used from iteration 4 on, every `loss_every` = 2 iterations.
    used = [i for i, v in zip(train["iteration"], train["reference0"], strict=True) if v == v]
    assert used == [4, 6, 8, 10, 12]  # NaN (not used) elsewhere, aligned with "iteration"
    assert all(0.0 < value <= 2.0 for value in train["reference0"] if value == value)


def test_hook_result_with_a_crop():
    geo, gt, proj = _scan()

    class CropHook:
        every, start, loss_every = 2, 2, 1

        def __call__(self, trainer, iteration):
            return HookResult(gt, weight=0.5, crop=12)

    history = _trainer(geo, proj, hooks=[CropHook()], iterations=4).run()
    assert sum(v == v for v in history["train"]["reference0"]) == 2  # iterations 3 and 4


def test_bad_hook_result_and_inputs():
    geo, gt, proj = _scan()

    class BadHook:
        every, start, loss_every = 1, 1, 1

        def __call__(self, trainer, iteration):
            return HookResult(gt[:4], weight=1.0)

    with pytest.raises(ValueError, match="reference shape"):
        _trainer(geo, proj, hooks=[BadHook()], iterations=2).run()
    with pytest.raises(ValueError, match="projections: expected"):
        _trainer(geo, proj[:3])
    with pytest.raises(ValueError, match="NaN"):
        _trainer(geo, proj * float("nan"))
    with pytest.raises(ValueError, match="out_dir"):
        _trainer(geo, proj, checkpoint_every=2)
    with pytest.raises(ValueError, match="views_per_iteration"):
        TrainConfig(views_per_iteration=0)


def test_checkpoint_resume_in_process_and_config_mismatch(tmp_path):
    geo, gt, proj = _scan()
    straight = _trainer(geo, proj, gt, iterations=10)
    straight.run()
    _trainer(geo, proj, gt, out_dir=tmp_path, iterations=10, checkpoint_every=4).run()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 10
    with pytest.raises(ValueError, match="another TrainConfig"):
        _trainer(geo, proj, gt, out_dir=tmp_path, iterations=10, checkpoint_every=4, seed=1).run()


CHILD = """
import sys, torch
from tests.test_train import RecordingHook, _scan, _trainer

class Printer:
    every, start, loss_every = 1, 1, 1
    def __call__(self, trainer, iteration):
        print(iteration, flush=True)

out_dir = sys.argv[1] if sys.argv[1] != "-" else None
geo, gt, proj = _scan()
hook = RecordingHook(every=4, start=4, reference=gt)
trainer = _trainer(geo, proj, gt, out_dir=out_dir, hooks=[hook, Printer()], iterations=24,
                   checkpoint_every=4 if out_dir else 0, eval_every=8)
history = trainer.run()
torch.save({"volume": trainer.volume(), "history": history, "calls": hook.calls}, sys.argv[2])
"""


def test_sigkill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-c", CHILD]
    subprocess.run(run + ["-", str(tmp_path / "straight.pt")], env=env, cwd=ROOT, check=True)

    out_dir = tmp_path / "run"
    child = subprocess.Popen(
        run + [str(out_dir), str(tmp_path / "unused.pt")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    last = 0
    deadline = time.monotonic() + 120
    while last < 11 and time.monotonic() < deadline:  # past the checkpoint of iteration 8
        line = child.stdout.readline()
        if not line:
            break
        last = int(line)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 11 <= last < 24, f"the child reached iteration {last} before the kill"
    saved = torch.load(out_dir / "checkpoint.pt", weights_only=False)["iteration"]
    assert last - 4 <= saved <= last  # at most one checkpoint interval lost

    subprocess.run(
        run + [str(out_dir), str(tmp_path / "resumed.pt")], env=env, cwd=ROOT, check=True
    )
    straight = torch.load(tmp_path / "straight.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    torch.testing.assert_close(resumed["volume"], straight["volume"], rtol=1e-5, atol=1e-6)
    assert resumed["calls"] == straight["calls"] == [4, 8, 12, 16, 20, 24]
    for key in ("loss", "reference0"):
        assert resumed["history"]["train"][key] == pytest.approx(
            straight["history"]["train"][key], rel=1e-5, nan_ok=True
        )
    assert resumed["history"]["eval"]["psnr"] == pytest.approx(
        straight["history"]["eval"]["psnr"], rel=1e-5
    )


def test_reconstruct_hashgrid_and_plot_curves(tmp_path):
    geo, gt, proj = _scan()
    config = HashGridReconConfig(
        coarse_fraction=0.9,
        field=FieldConfig(encoding=TINY),
        train=TrainConfig(
            iterations=6,
            views_per_iteration=4,
            tv_crop=8,
            eval_every=3,
            progress=False,
            tensorboard=True,
        ),
    )
    volume, history = reconstruct_hashgrid(proj, geo, config, volume_gt=gt, out_dir=tmp_path)
    assert volume.shape == geo.volume_shape and torch.isfinite(volume).all()
    scale = history["config"]["train"]["volume_scale"]
    assert 0.5 < scale < 1.5  # the phantom's maximum is 1
    assert history["config"]["field"]["attenuation_bound"] == pytest.approx(2.0 * scale)
    assert history["config"]["field"]["coarse_iterations"] == 5  # 90% of 6 iterations
    assert list((tmp_path / "tensorboard").iterdir())
    plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(history["wall_time"])


class _Noise:
    """A prior whose references are noise far above the scan, drawn from torch's global generator
    as a diffusion sampler draws."""

    resolution = None

    def __init__(self):
        self.calls = 0

    def pseudo_reference(self, volume, projections, geo, volume_scale):
        self.calls += 1
        return 3 + torch.rand(volume.shape)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_validation_views_are_withheld_until_their_release_and_a_rejected_prior_changes_nothing(
    monkeypatch,
):
    from nr.guard import HallucinationGuard
    from nr.priors.protocol import PriorHook, PriorSchedule

    geo, gt, proj = _scan(views=10)
    held = {"validation_views": (3, 8), "validation_until": 8}
    seen = []
    alone = _trainer(geo, proj, gt, **held)
    render = alone.representation.render_projections
    monkeypatch.setattr(
        alone.representation,
        "render_projections",
        lambda geo, ids: (seen.append((alone.iteration, list(ids))), render(geo, ids))[1],
    )
    alone.run()
    before = {v for it, ids in seen if it <= 8 for v in ids}
    after = {v for it, ids in seen if it > 8 for v in ids}
    assert before == set(range(10)) - {3, 8} and {3, 8} <= after
    projections, released = alone.training_data()
    assert projections.shape[0] == 10 and released == geo

    prior = _Noise()
    guarded = PriorHook(prior, PriorSchedule(start=2, every=2), HallucinationGuard(proj, geo))
    with_prior = _trainer(geo, proj, gt, hooks=[guarded], **held)
    with_prior.run()
    assert [call["iteration"] for call in guarded.calls] == [2, 4, 6, 8]  # not after release
    assert prior.calls == 4
    assert [call["guard"]["action"] for call in guarded.calls] == ["reject"] * 4
    assert with_prior.references == {}
    assert torch.equal(with_prior.volume(), alone.volume())


def test_validation_settings_are_checked():
    with pytest.raises(ValueError, match="validation_until"):
        TrainConfig(iterations=5, validation_views=(1,), validation_until=6)
    with pytest.raises(ValueError, match="validation_views"):
        TrainConfig(validation_views=(1, 1), validation_until=1)
    geo, _, proj = _scan(views=6)
    with pytest.raises(ValueError, match="validation_views"):
        _trainer(geo, proj, validation_views=(6,), validation_until=2)


def test_a_detector_too_small_for_the_projection_ssim_is_a_clear_error():
    import dataclasses

    geo, gt, _ = _scan()
    flat = dataclasses.replace(geo, n_detector=(4, 16), s_detector=None)
    with pytest.raises(ValueError, match="lambda_dssim.*4 rows x 16 columns"):
        _trainer(flat, project(gt, flat))
    _trainer(flat, project(gt, flat), lambda_dssim=0.0)  # without the term it trains
