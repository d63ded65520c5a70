"""pipelines.diffusionblend end to end on a 12x16x16 scan with a tiny model."""

import json

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import read_nifti
from nr.ops.projector import project
from nr.priors.blend_model import PRESETS, BlendPrior
from nr.priors.blend_recon import BlendReconConfig, reconstruct_blend
from nr.priors.sampler import BlendSamplerConfig
from pipelines import diffusionblend


@pytest.fixture()
def inputs(tmp_path):
    z, y, x = np.mgrid[:12, :16, :16]
    ball = ((z - 6) ** 2 + (y - 8) ** 2 + (x - 7) ** 2 < 30).astype(np.float32)
    volume = tmp_path / "ball.npy"
    np.save(volume, ball * 0.5)
    torch.manual_seed(0)
    BlendPrior(PRESETS["tiny"]).save_pretrained(tmp_path / "model")
    return volume, tmp_path / "model"


@pytest.mark.parametrize("init", ["noise", "fdk", "sart"])
def test_diffusionblend_writes_every_output(inputs, tmp_path, init):
    volume, model = inputs
    out = tmp_path / init
    metrics = diffusionblend.main(
        [
            str(volume),
            "--model",
            str(model),
            "--views",
            "8",
            "--noise",
            "none",
            "--steps",
            "3",
            "--cg-iters",
            "4",
            "--init",
            init,
            "--t0",
            "300",
            "--samples",
            "2",
            "--out",
            str(out),
        ]
    )
    for name in ("volume.nii.gz", "metrics.json", "config.json", "montage.png", "run.log"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"])
    assert saved["samples"] == 2 and saved["steps"] == 2 * 3
    assert saved["patch_evaluations"] >= 2 * 3 * 4
    assert np.isfinite(saved["psnr"]) and np.isfinite(saved["fdk"]["psnr"])
    assert saved["data_residual"] < 1.0
    assert read_nifti(out / "volume.nii.gz").shape == (12, 16, 16)
    config = json.loads((out / "config.json").read_text())
    assert config["method_config"]["init"] == init
    if init == "sart":
        assert saved["start"]["method"] == "sart" and np.isfinite(saved["start"]["psnr"])
    else:
        assert "start" not in saved


def test_diffusionblend_without_model_names_the_remedy(inputs, tmp_path, monkeypatch):
    volume, _ = inputs
    monkeypatch.setenv("NR_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_blend"):
        diffusionblend.main([str(volume), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_samples_are_averaged_and_their_costs_summed():
    torch.manual_seed(0)
    model = BlendPrior(PRESETS["tiny"]).eval()
    truth = torch.zeros(12, 16, 16)
    truth[3:9, 4:12, 5:11] = 0.02
    geo = ConeBeamGeometry.for_volume(tuple(truth.shape), (1.0, 1.0, 1.0), 6)
    projections = project(truth, geo)
    sampler = BlendSamplerConfig(steps=3, cg_iters=2)
    singles = [
        reconstruct_blend(
            projections, geo, model, BlendReconConfig(sampler=sampler, seed=seed, samples=1)
        )
        for seed in (4, 5)
    ]
    mean, info = reconstruct_blend(
        projections, geo, model, BlendReconConfig(sampler=sampler, seed=4, samples=2)
    )
    assert not torch.allclose(singles[0][0], singles[1][0])
    torch.testing.assert_close(mean, (singles[0][0] + singles[1][0]) / 2)
    assert info["samples"] == 2 and info["steps"] == 2 * singles[0][1]["steps"] == 6
    assert info["network_calls"] == 2 * singles[0][1]["network_calls"]
    with pytest.raises(ValueError, match="samples"):
        BlendReconConfig(samples=0)
