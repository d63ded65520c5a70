"""pipelines.diffnr and the library it is a thin layer over (nr.diffnr, the prior protocol)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from nr.diffnr import DiffNRConfig, loss_every_for, run_diffnr
from nr.geometry import ConeBeamGeometry
from nr.guard import HallucinationGuard
from nr.io import Scan
from nr.metrics import truth_scores
from nr.ops.projector import project
from nr.priors.protocol import PriorHook, PriorSchedule
from nr.recon import recipe, reconstruct
from nr.train import TrainConfig, Trainer
from pipelines import diffnr
from slicefixer.model import SliceFixer
from slicefixer.presets import tiny_config
from slicefixer.prior import load_prior


@pytest.fixture(scope="module")
def tiny_fixer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixer")
    torch.manual_seed(0)
    SliceFixer.from_config(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory):
    z, y, x = np.mgrid[:20, :20, :20] - 9.5
    volume = ((z / 8) ** 2 + (y / 6) ** 2 + (x / 7) ** 2 < 1) * 0.6
    volume += ((z / 3) ** 2 + (y / 2) ** 2 + ((x - 2) / 2) ** 2 < 1) * 0.4
    path = tmp_path_factory.mktemp("scan") / "phantom.npy"
    np.save(path, volume.astype(np.float32))
    return path


@pytest.mark.parametrize("nr", ["gaussians", "hashgrid"])
def test_diffnr_smoke_writes_every_output(small_volume, tiny_fixer, tmp_path, nr):
    out = tmp_path / nr
    metrics = diffnr.main(
        [
            str(small_volume),
            "--nr",
            nr,
            "--views",
            "8",
            "--iterations",
            "8",
            "--start",
            "0.5",
            "--every",
            "0.25",
            "--loss-every",
            "2",
            "--warm-start-steps",
            "100",
            "--prior",
            "slicefixer",
            "--checkpoint",
            str(tiny_fixer),
            "--compare",
            "--out",
            str(out),
        ]
    )
    for name in (
        "volume.nii.gz",
        "nr_only.nii.gz",
        "metrics.json",
        "config.json",
        "montage.png",
        "curves.png",
        "report.md",
        "run.log",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert {"fdk", "nr_only", "diffnr", "difference", "guard", "timings_seconds"} <= set(saved)
    # calls at iterations 4 and 6; none at 8, after the held-out views joined the fit at 7
    assert [d["iteration"] for d in saved["guard"]] == [4, 6]
    assert all(d["action"] in ("accept", "reject") for d in saved["guard"])
    assert saved["rationale"].startswith(f"{nr} + slicefixer")
    assert saved["difference"]["psnr"] == pytest.approx(
        metrics["diffnr"]["psnr"] - metrics["nr_only"]["psnr"]
    )
    for call in saved["prior_calls"]:  # the ground truth is known: references are scored
        assert np.isfinite(call["reference_quality"]["psnr"])
        assert set(call["current_quality"]) == {"psnr", "ssim"}
    report = (out / "report.md").read_text()
    assert "Hallucination guard" in report and "Pseudo-references against the ground" in report


class _WrongPrior:
    """A prior that hallucinates: a flipped volume with an invented blob far denser than anything
    in the scan (the data contradict it whatever the state of the fit)."""

    resolution = None

    def pseudo_reference(self, volume, projections, geo, volume_scale):
        wrong = volume.flip(2).clone()
        wrong[2:6, 2:6, 2:6] += 30.0
        return wrong

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_guard_rejects_a_hallucinated_pseudo_reference_inside_training():
    from nr.fields import FieldConfig, HashGridField

    geo = ConeBeamGeometry.default(n_voxel=16, n_views=6)
    z, y, x = torch.meshgrid(*(torch.arange(16.0) - 7.5,) * 3, indexing="ij")
    truth = ((z / 6) ** 2 + (y / 5) ** 2 + (x / 6) ** 2 < 1).float()
    projections = project(truth, geo)
    score = lambda volume: truth_scores(volume, truth)  # noqa: E731
    schedule = PriorSchedule(start=2, every=2, loss_every=1)
    hook = PriorHook(_WrongPrior(), schedule, HallucinationGuard(projections, geo), score)
    train = TrainConfig(
        iterations=6, progress=False, eval_every=0, validation_views=(2,), validation_until=4
    )
    field = HashGridField(geo, FieldConfig(attenuation_bound=2.0))
    trainer = Trainer(field, projections, geo, train, hooks=[hook])
    trainer.run()
    # called at 2 and 4; not at 6, after view 2 joined the fit (nothing left to judge on)
    assert [call["iteration"] for call in hook.calls] == [2, 4]
    assert [call["guard"]["action"] for call in hook.calls] == ["reject", "reject"]
    assert trainer.references == {}
    for call in hook.calls:
        assert call["reference_quality"]["psnr"] < call["current_quality"]["psnr"] - 10
    with pytest.raises(TypeError, match="Prior"):
        PriorHook(object(), schedule, HallucinationGuard(projections, geo))


def test_the_truth_as_pseudo_reference_is_accepted_and_pulls_towards_it():
    """`TruthPrior`, the ceiling of any prior: the guard accepts it and the fit ends closer to
    the truth than the same loop without it."""
    from nr.fields import FieldConfig, HashGridField
    from nr.priors.oracle import TruthPrior

    geo = ConeBeamGeometry.default(n_voxel=16, n_views=6)
    z, y, x = torch.meshgrid(*(torch.arange(16.0) - 7.5,) * 3, indexing="ij")
    truth = ((z / 6) ** 2 + (y / 5) ** 2 + (x / 6) ** 2 < 1).float()
    projections = project(truth, geo)
    train = TrainConfig(
        iterations=60, progress=False, eval_every=0, validation_views=(2,), validation_until=45
    )
    volumes = []
    for hooks in ([], [PriorHook(TruthPrior(truth), PriorSchedule(start=15, every=15, weight=3.0,
                                                                   loss_every=1),
                                 HallucinationGuard(projections, geo))]):
        torch.manual_seed(0)
        field = HashGridField(geo, FieldConfig(attenuation_bound=2.0))
        trainer = Trainer(field, projections, geo, train, hooks=hooks)
        trainer.run()
        volumes.append(trainer.volume())
    assert [call["guard"]["action"] for call in hooks[0].calls] == ["accept"] * 3
    alone, with_truth = (truth_scores(volume, truth)["psnr"] for volume in volumes)
    assert with_truth > alone + 0.5
    with pytest.raises(ValueError, match="shape"):
        TruthPrior(truth).pseudo_reference(truth[:8], projections, geo, 1.0)


def test_axes_are_comma_separated_like_curation():
    assert diffnr.parse(["--out", "o"]).axes is None  # the default's, once the scan is known
    assert diffnr.parse(["--out", "o", "--axes", "z,y,x"]).axes == ("z", "y", "x")
    for bad in ("z,w", "z,z", ","):
        with pytest.raises(SystemExit):
            diffnr.parse(["--out", "o", "--axes", bad])


def _config(*given, shape=(16, 16, 16)):
    geo = ConeBeamGeometry.for_volume(shape, (1.0, 1.0, 1.0), 8)
    return diffnr.config_from_args(diffnr.parse(["--out", "o", *given]), geo)


def test_each_prior_takes_its_options(tmp_path, tiny_fixer):
    from nr.priors.blend_model import PRESETS, BlendPrior

    torch.manual_seed(0)
    BlendPrior(PRESETS["tiny"]).save_pretrained(tmp_path / "blend")
    config = _config(
        "--prior", "diffusionblend", "--checkpoint", str(tmp_path / "blend"), "--blend-t0", "40",
        "--blend-samples", "3", "--start", "0.5", "--every", "0.25", "--loss-every", "3",
    )  # fmt: skip
    prior = load_prior(config)
    assert (prior.config.t0, prior.config.samples) == (40, 3)
    schedule = config.schedule(recipe("hashgrid", iterations=100))
    assert (schedule.start, schedule.every, schedule.loss_every) == (50, 25, 3)
    config = _config(
        "--prior", "slicefixer", "--checkpoint", str(tiny_fixer), "--fixer-cg", "4", "--axes", "z,y"
    )  # fmt: skip
    prior = load_prior(config)
    assert prior.config.cg_iters == 4 and prior.config.axes == ("z", "y")
    assert load_prior(_config("--prior", "none")) is None
    default = _config("--prior", "none").guard
    for protocol in ("seeing", "blind"):
        guard = _config("--prior", "none", "--guard-warm-start", protocol).guard
        assert guard.blind_warm_start == (protocol == "blind")
        assert guard.fraction == default.fraction and guard.release == default.release
    guard = _config("--prior", "none", "--guard-margin", "0.05").guard
    assert guard.margin == 0.05 and guard.blind_warm_start == default.blind_warm_start
    large = (128, 128, 128)  # no prior by default: no guard unless a guard option is given
    assert _config(shape=large).guard is None
    assert _config("--guard-warm-start", "blind", shape=large).guard.blind_warm_start


def test_ssim_term_every_iteration_only_where_the_loop_rates_stay_constant():
    sized = {n: recipe("gaussians", (n,) * 3, 25) for n in (64, 128)}
    assert sized[128].model.lr_density == sized[128].model.lr_density_final
    assert sized[64].model.lr_density > sized[64].model.lr_density_final
    assert loss_every_for(sized[128]) == 1 and loss_every_for(sized[64]) == 10
    assert loss_every_for(recipe("hashgrid", (128,) * 3, 25)) == 10


@pytest.fixture(scope="module")
def fixer_16px(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixer16")
    torch.manual_seed(0)
    SliceFixer.from_config(dataclasses.replace(tiny_config(), resolution=16)).save_pretrained(
        folder
    )
    return folder


def test_the_default_prior_follows_the_scan_size_and_a_forced_one_warns(fixer_16px):
    small = DiffNRConfig.default(ConeBeamGeometry.default(n_voxel=64, n_views=25))
    large = DiffNRConfig.default(ConeBeamGeometry.default(n_voxel=128, n_views=25))
    assert small.prior == "diffusionblend" and large.prior == "none"
    assert small.guard.blind_warm_start and small.blend_samples == 4
    sparse = DiffNRConfig.default(ConeBeamGeometry.default(n_voxel=64, n_views=10))
    assert sparse.prior == "none" and sparse.guard is None and "10 views" in sparse.rationale
    assert "128 px" in large.rationale
    # no prior by default: nothing to guard, so no views held out (the NR alone on every view)
    large_geo = ConeBeamGeometry.default(n_voxel=128, n_views=25)
    assert large.guard is None and small.guard is not None
    assert large.recon_config(large_geo) == recipe("gaussians", large_geo.volume_shape, 25)
    small_geo = ConeBeamGeometry.default(n_voxel=64, n_views=25)
    assert small.recon_config(small_geo).train.validation_views
    with pytest.raises(ValueError, match="needs a guard"):
        dataclasses.replace(small, guard=None)
    geo = ConeBeamGeometry.for_volume((16, 16, 20), (1.0, 1.0, 1.0), 6)
    truth = torch.zeros(geo.volume_shape)
    truth[4:12, 4:12, 4:16] = 1.0
    scan = Scan(project(truth, geo), geo, truth)
    config = dataclasses.replace(
        DiffNRConfig.default(geo, "hashgrid", "slicefixer"),
        checkpoint=str(fixer_16px),
        iterations=2,
        warm_start_steps=0,
    )
    result = run_diffnr(scan, config, load_prior(config))
    assert (
        "16 pixels" in result.metrics["prior_warning"] and "20" in result.metrics["prior_warning"]
    )
    with pytest.raises(ValueError, match="load_prior"):
        run_diffnr(scan, config, None)


def test_without_a_prior_the_nr_volume_is_the_result(small_volume, tmp_path):
    out = tmp_path / "run"
    metrics = diffnr.main(
        [str(small_volume), "--nr", "hashgrid", "--views", "8", "--iterations", "4"]
        + ["--warm-start-steps", "50", "--prior", "none", "--out", str(out)]
    )
    assert metrics["prior"] == "none" and metrics["prior_warning"] is None
    assert "diffnr" not in metrics and np.isfinite(metrics["nr_only"]["psnr"])
    assert (out / "volume.nii.gz").is_file() and not (out / "nr_only.nii.gz").exists()
    assert (out / "curves.png").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["nr_config"]["train"]["validation_views"] == [4]  # one of 8 views held out


@pytest.mark.parametrize(
    "given, expected",
    [
        ([], (3.0, 5, 0.125)),
        (["--nr", "hashgrid"], (1.0, 0, 0.125)),
        (["--nr", "hashgrid", "--prior", "slicefixer"], (1.0, 0, 1.0)),
        (["--nr", "hashgrid", "--prior", "diffusionblend"], (1.0, 0, 0.125)),
        (["--weight", "0.5", "--fixer-cg", "2", "--every", "0.25"], (0.5, 2, 0.25)),
        (["--nr", "hashgrid", "--weight", "2", "--every", "0.5"], (2.0, 0, 0.5)),
    ],
)
def test_prior_defaults_per_representation_unless_given(given, expected):
    config = _config(*given)
    assert (config.weight, config.fixer_cg, config.every) == expected


def test_bad_configurations_are_refused():
    for bad in ({"nr": "nerf"}, {"prior": "gan"}, {"start": 0.0}, {"axes": ("z", "z")},
                {"crop": 5}, {"blend_samples": 0}, {"warm_start": "fbp"}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiffNRConfig(**bad)


@pytest.mark.parametrize("nr", ["gaussians", "hashgrid"])
def test_compare_fits_the_warm_start_once_and_changes_no_loop(nr, fixer_16px):
    geo = ConeBeamGeometry.for_volume((16, 16, 16), (1.0, 1.0, 1.0), 6)
    truth = torch.zeros(geo.volume_shape)
    truth[4:12, 5:11, 3:13] = 1.0
    scan = Scan(project(truth, geo), geo, truth)
    config = dataclasses.replace(
        DiffNRConfig.default(geo, nr, "slicefixer"),
        checkpoint=str(fixer_16px),
        iterations=4,
        start=0.5,
        every=0.25,
        warm_start_steps=20,
    )
    result = run_diffnr(scan, config, load_prior(config), compare=True)
    assert "warm_start" in result.metrics["timings_seconds"]
    recon_config = config.recon_config(geo)
    train = dataclasses.replace(recon_config.train, checkpoint_every=0)  # as run_diffnr's
    alone, _ = reconstruct(
        scan.projections, geo, dataclasses.replace(recon_config, train=train), truth
    )
    assert torch.equal(result.nr_volume, alone)
    assert torch.equal(result.volume, run_diffnr(scan, config, load_prior(config)).volume)
