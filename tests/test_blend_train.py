"""DiffusionBlend training: patch sampling, CLI smoke run, exact resume, bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from nr.io import Volume
from nr.priors.blend_model import PRESETS, BlendPrior
from nr.priors.blend_train import BlendTrainConfig, PatchSampler, prepare_volume
from pipelines.train_blend import main, manifest_spacing


def write_volumes(folder, shapes=((14, 20, 20), (12, 24, 18))):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, shape in enumerate(shapes):
        np.savez(folder / f"vol{i}.npz", volume=rng.random(shape).astype(np.float32) * 100)
    return folder


def test_prepare_volume_normalises_and_keeps_physical_spacing():
    data = np.linspace(0, 50, 10 * 32 * 32, dtype=np.float32).reshape(10, 32, 32)
    prepared = prepare_volume(Volume(data, spacing=(2.0, 1.0, 1.0)), 16)
    # in-plane pixel 32 mm / 16 = 2 mm, equal to the slice spacing: depth stays 10
    assert prepared.shape == (10, 16, 16)
    assert -1.0 <= float(prepared.min()) < -0.9 and 0.9 < float(prepared.max()) <= 1.0
    assert prepare_volume(Volume(data, spacing=(4.0, 1.0, 1.0)), 16).shape == (20, 16, 16)


@pytest.mark.parametrize(
    "manifest",
    [
        {"a": {"file": "vol0.npz", "spacing_zyx_mm": [2.5, 1.0, 0.5]}},  # development volumes
        [{"name": "vol0", "file": "vol0.npz", "spacing_mm": [2.5, 1.0, 0.5]}],  # the corpus
    ],
)
def test_spacing_from_either_kind_of_manifest(tmp_path, manifest):
    folder = write_volumes(tmp_path / "v")
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    assert manifest_spacing(folder / "vol0.npz") == (2.5, 1.0, 0.5)
    assert manifest_spacing(folder / "vol1.npz") is None


def test_patch_sampler_takes_slices_at_the_drawn_gap():
    volume = torch.arange(12, dtype=torch.float32)[:, None, None].expand(12, 4, 4).contiguous()
    config = BlendTrainConfig(flips=False, intensity_jitter=0.0)
    sampler = PatchSampler([volume], PRESETS["tiny"], config)
    patches, gaps = sampler.sample(64, torch.Generator().manual_seed(0))
    assert patches.shape == (64, 3, 4, 4) and set(gaps.tolist()) == {1, 3}
    first = patches[:, :, 0, 0]
    torch.testing.assert_close(first[:, 1] - first[:, 0], gaps.float())
    torch.testing.assert_close(first[:, 2] - first[:, 1], gaps.float())


def test_cli_trains_exports_and_resumes_exactly(tmp_path):
    data = write_volumes(tmp_path / "data")
    common = ["--volumes", str(data), "--preset", "tiny", "--batch", "2", "--checkpoint-every", "2"]
    main([*common, "--out", str(tmp_path / "straight"), "--steps", "4"])
    main([*common, "--out", str(tmp_path / "resumed"), "--steps", "2"])
    main([*common, "--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"])

    states = [
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        for name in ("straight", "resumed")
    ]
    assert states[0]["step"] == states[1]["step"] == 4
    for key, value in states[0]["unet"].items():
        torch.testing.assert_close(states[1]["unet"][key], value, rtol=0, atol=0)
    initial = BlendPrior(PRESETS["tiny"]).unet.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in states[0]["unet"].items())

    log = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").open()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1]["loss"])
    model = BlendPrior.from_pretrained(tmp_path / "straight" / "model")
    assert model.config == PRESETS["tiny"]
    record = json.loads((tmp_path / "straight" / "train_config.json").read_text())
    assert record["train"]["steps"] == 4 and len(record["volumes"]) == 2


def test_cli_bad_input(tmp_path):
    data = write_volumes(tmp_path / "data")
    args = ["--volumes", str(data), "--preset", "tiny", "--batch", "2", "--steps", "1"]
    with pytest.raises(ValueError, match="hold-out"):
        main([*args, "--out", str(tmp_path / "a"), "--hold-out", "missing"])
    with pytest.raises(FileNotFoundError, match="resume"):
        main([*args, "--out", str(tmp_path / "b"), "--resume"])
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    main([*args, "--out", str(tmp_path / "c")])
    with pytest.raises(FileExistsError, match="--resume"):
        main([*args, "--out", str(tmp_path / "c")])
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "nan.npz", volume=np.full((12, 16, 16), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        main(["--volumes", str(bad), "--out", str(tmp_path / "d"), "--preset", "tiny"])
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError, match="Z >="):
        PatchSampler([torch.zeros(6, 16, 16)], PRESETS["tiny"], BlendTrainConfig())
    with pytest.raises(ValueError, match="intensity_jitter"):
        dataclasses.replace(BlendTrainConfig(), intensity_jitter=1.5)


def test_cli_init_from_starts_at_the_given_weights(tmp_path):
    data = write_volumes(tmp_path / "data")
    common = ["--volumes", str(data), "--preset", "tiny", "--batch", "2", "--steps", "1"]
    source = BlendPrior(PRESETS["tiny"])
    with torch.no_grad():
        for p in source.unet.parameters():
            p.normal_(0, 0.02)
    source.save_pretrained(tmp_path / "source")
    main(
        [
            *common,
            "--out",
            str(tmp_path / "run"),
            "--init-from",
            str(tmp_path / "source"),
            "--lr",
            "1e-30",
        ]
    )
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["unet"]
    for key, value in source.unet.state_dict().items():
        torch.testing.assert_close(trained[key], value)
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["init_from"] == str(tmp_path / "source")

    other = dataclasses.replace(PRESETS["tiny"], resolution=32)
    BlendPrior(other).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="init_from"):
        main([*common, "--out", str(tmp_path / "bad"), "--init-from", str(tmp_path / "other")])
