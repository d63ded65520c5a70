import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.guard import GuardedHook, HallucinationGuard
from nr.ops.projector import project
from nr.train import HookResult, TrainConfig, Trainer
from pipelines import diffnr
from pipelines.common import truth_scores
from slicefixer.model import SliceFixer
from slicefixer.presets import tiny_config


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
            "--refresh",
            "0.25",
            "--loss-every",
            "2",
            "--warm-start-steps",
            "100",
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
    assert len(saved["guard"]) == 2  # pseudo-references at iterations 4 and 6, none at 8
    assert all(d["action"] in ("accept", "downweight", "reject") for d in saved["guard"])
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

    every, start, loss_every = 2, 2, 1

    def __call__(self, trainer, iteration):
        wrong = trainer.volume().flip(2).clone()
        wrong[2:6, 2:6, 2:6] += 30.0
        return HookResult(reference=wrong, weight=1.0)


def test_the_guard_rejects_a_hallucinated_pseudo_reference_inside_training():
    from nr.fields import FieldConfig, HashGridField

    geo = ConeBeamGeometry.default(n_voxel=16, n_views=6)
    z, y, x = torch.meshgrid(*(torch.arange(16.0) - 7.5,) * 3, indexing="ij")
    truth = ((z / 6) ** 2 + (y / 5) ** 2 + (x / 6) ** 2 < 1).float()
    projections = project(truth, geo)
    score = lambda volume: truth_scores(volume, truth)  # noqa: E731
    hook = GuardedHook(_WrongPrior(), HallucinationGuard(projections, geo), score)
    train = TrainConfig(
        iterations=6, progress=False, eval_every=0, validation_views=(2,), validation_until=4
    )
    trainer = Trainer(
        HashGridField(geo, FieldConfig(attenuation_bound=2.0)), projections, geo, train,
        hooks=[hook],
    )
    trainer.run()
    # called at 2 and 4; not at 6, after view 2 joined the fit (nothing left to judge on)
    assert [call["iteration"] for call in hook.calls] == [2, 4]
    assert [call["guard"]["action"] for call in hook.calls] == ["reject", "reject"]
    assert trainer.references == {}
    for call in hook.calls:
        assert call["reference_quality"]["psnr"] < call["current_quality"]["psnr"] - 10


def test_axes_are_comma_separated_like_curation():
    assert diffnr.parse(["--out", "o"]).axes == ("z",)
    assert diffnr.parse(["--out", "o", "--axes", "z,y,x"]).axes == ("z", "y", "x")
    for bad in ("z,w", "z,z", ","):
        with pytest.raises(SystemExit):
            diffnr.parse(["--out", "o", "--axes", bad])


def test_diffusionblend_hook_takes_its_options(tmp_path):
    from nr.priors.blend_model import PRESETS, BlendPrior

    torch.manual_seed(0)
    BlendPrior(PRESETS["tiny"]).save_pretrained(tmp_path / "blend")
    args = diffnr.parse(
        ["--out", "o", "--prior", "diffusionblend", "--checkpoint", str(tmp_path / "blend")]
        + ["--blend-t0", "50", "--blend-samples", "3", "--start", "0.5", "--refresh", "0.25"]
        + ["--loss-every", "3"]
    )
    hook, config = diffnr.build_hook(args, None, 100)
    assert hook.config is config
    assert (config.t0, config.samples, config.start, config.every) == (50, 3, 50, 25)
    assert config.loss_every == 3


def test_slicefixer_hook_takes_its_cg_iterations(tiny_fixer):
    args = diffnr.parse(
        ["--out", "o", "--checkpoint", str(tiny_fixer), "--fixer-cg", "4", "--loss-every", "10"]
    )
    scan = SimpleNamespace(projections=torch.zeros(6, 8, 8), geo=ConeBeamGeometry.default(8, 6))
    assert diffnr.resolve_prior(args, scan) is None and args.prior == "slicefixer"
    hook, config = diffnr.build_hook(args, scan, 100)
    assert hook.config is config and config.cg_iters == 4


def test_ssim_term_every_iteration_only_where_the_loop_rates_stay_constant():
    assert diffnr.parse(["--out", "o"]).loss_every is None  # settled once the scan is known
    sized = {n: diffnr.nr_config("gaussians", None, 0, shape=(n,) * 3, views=25) for n in (64, 128)}
    assert sized[128].model.lr_density == sized[128].model.lr_density_final
    assert sized[64].model.lr_density > sized[64].model.lr_density_final
    assert diffnr.loss_every_default(sized[128]) == 1
    assert diffnr.loss_every_default(sized[64]) == 10
    hashgrid = diffnr.nr_config("hashgrid", None, 0, shape=(128,) * 3, views=25)
    assert diffnr.loss_every_default(hashgrid) == 10


@pytest.fixture(scope="module")
def fixer_16px(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixer16")
    torch.manual_seed(0)
    SliceFixer.from_config(dataclasses.replace(tiny_config(), resolution=16)).save_pretrained(
        folder
    )
    return folder


def test_default_prior_is_off_on_slices_larger_than_the_fixer(fixer_16px):
    def resolved(shape, *given):
        args = diffnr.parse(["--out", "o", "--checkpoint", str(fixer_16px), *given])
        scan = SimpleNamespace(geo=SimpleNamespace(volume_shape=shape))
        return diffnr.resolve_prior(args, scan), args.prior

    assert resolved((40, 16, 16)) == (None, "slicefixer")  # axial slices of 16 x 16
    warning, prior = resolved((16, 16, 20))
    assert prior == "none" and "16 pixels" in warning and "20" in warning
    assert "--prior slicefixer" in warning
    assert resolved((40, 16, 16), "--axes", "z,y,x")[1] == "none"  # coronal slices 40 x 16
    warning, prior = resolved((16, 16, 20), "--prior", "slicefixer")
    assert prior == "slicefixer" and warning.startswith("--prior slicefixer given although")
    assert resolved((16, 16, 20), "--prior", "diffusionblend") == (None, "diffusionblend")


def test_without_a_prior_the_nr_volume_is_the_result(small_volume, fixer_16px, tmp_path):
    out = tmp_path / "run"
    metrics = diffnr.main(
        [str(small_volume), "--nr", "hashgrid", "--views", "8", "--iterations", "4"]
        + ["--warm-start-steps", "50", "--checkpoint", str(fixer_16px), "--out", str(out)]
    )
    assert metrics["prior"] == "none" and "prior off" in metrics["prior_warning"]
    assert "diffnr" not in metrics and np.isfinite(metrics["nr_only"]["psnr"])
    assert (out / "volume.nii.gz").is_file() and not (out / "nr_only.nii.gz").exists()
    assert (out / "curves.png").is_file()
    assert "**Warning**: prior off" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "given, expected",
    [
        ([], (3.0, 5, 0.125)),
        (["--nr", "hashgrid"], (1.0, 0, 1.0)),
        (["--nr", "hashgrid", "--prior", "diffusionblend"], (1.0, 0, 0.125)),
        (["--weight", "0.5", "--fixer-cg", "2", "--refresh", "0.25"], (0.5, 2, 0.25)),
        (["--nr", "hashgrid", "--weight", "2", "--refresh", "0.5"], (2.0, 0, 0.5)),
    ],
)
def test_hook_defaults_per_representation_unless_given(given, expected):
    args = diffnr.parse(["--out", "o", *given])
    assert (args.weight, args.fixer_cg, args.refresh) == expected
