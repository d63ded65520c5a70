"""SliceFixer fine-tuning: end to end on a tiny curated dataset, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nr.geometry import ConeBeamGeometry
from nr.phantoms import shepp_logan_3d, voxelise
from pipelines.curate import main as curate
from pipelines.finetune import main
from slicefixer.data import EpochSampler, PromptResolver, collate_pairs, to_model_space
from slicefixer.model import SliceFixer
from slicefixer.repair import repair_volume

# A 0.1 M-parameter model at 32 px, batch 2; the GAN term on, so the discriminator state is
# part of what the resume must restore.
RUN = ["--preset", "tiny", "--val-volumes", "chest", "--steps", "4", "--val-every", "2",
       "--checkpoint-every", "2", "--val-slices", "6", "--samples", "2", "--log-every", "1",
       "--gan", "0.5", "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two 16^3 phantoms curated with 2 SART iterations from 4 and 8 views, axes z and x."""
    folder = tmp_path_factory.mktemp("volumes")
    geo = ConeBeamGeometry.default(16, 4)
    phantom = voxelise(shepp_logan_3d(geo), geo).numpy()
    np.savez(folder / "head.npz", volume=phantom)
    np.savez(folder / "chest.npz", volume=np.ascontiguousarray(phantom[::-1]) * 0.7)
    manifest = {"head": {"file": "head.npz", "anatomy": "head"},
                "chest": {"file": "chest.npz", "anatomy": "chest"}}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    out = tmp_path_factory.mktemp("dataset")
    curate(["--volumes", str(folder), "--out", str(out), "--manifest",
            str(folder / "MANIFEST.json"), "--workers", "0", "--views", "4,8", "--dense-views",
            "24", "--representations", "sart", "--mix", "1", "--iterations", "sart=4",
            "--iters-fraction", "0.5:0.5", "--size", "16", "--axes", "z,x", "--seed", "3",
            "--no-progress"])
    return out


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*RUN, "--data", str(dataset), "--out", str(out)]) == out / "final"
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_checkpoints_grids_metrics_and_a_loadable_model(straight):
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000004"]
    assert sorted(p.name for p in (straight / "samples").iterdir()) == [
        "step-0000002.png", "step-0000004.png"]
    lines = _lines(straight / "metrics.jsonl")
    assert [e["step"] for e in lines if e["kind"] == "train"] == [1, 2, 3, 4]
    val = [e for e in lines if e["kind"] == "val"]
    assert [e["step"] for e in val] == [2, 4]
    assert set(val[-1]["groups"]) == {"sart/4 views", "sart/8 views"}
    assert val[-1]["slices"] == 6 and "discriminator" in lines[-2]
    assert val[-1]["psnr_gain"] == pytest.approx(val[-1]["psnr_repaired"]
                                                 - val[-1]["psnr_artifact"])
    config = json.loads((straight / "config.json").read_text())
    assert config["losses"]["terms"]["gan"]["active"] is True
    assert config["val_volumes"] == [v for v in config["val_volumes"] if v.startswith("chest-")]
    assert config["train_volumes"][0].startswith("head-")
    if not config["losses"]["terms"]["lpips"]["active"]:
        assert "LPIPS" in (straight / "train.log").read_text().upper()
    model = SliceFixer.from_pretrained(straight / "final")
    trained = load_file(straight / "final" / "model.safetensors")
    assert any(not torch.equal(v, SliceFixer.from_config(model.config).state_dict()[k])
               for k, v in trained.items())
    geo = ConeBeamGeometry.default(16, 6)
    volume = torch.rand(16, 16, 16)
    repaired = repair_volume(model, volume, torch.rand(6, *geo.n_detector), geo)
    assert repaired.shape == volume.shape and torch.isfinite(repaired).all()


def test_resume_equals_a_straight_run(dataset, straight, tmp_path):
    out = tmp_path / "run"
    first = main([*RUN, "--data", str(dataset), "--out", str(out), "--stop-at", "2"])
    assert first == out / "checkpoints" / "step-0000002" and not (out / "final").exists()
    main([*RUN, "--data", str(dataset), "--out", str(out), "--resume"])
    for name in ("model.safetensors", "unet_lora/adapter_model.safetensors"):
        expected = load_file(straight / "final" / name)
        got = load_file(out / "final" / name)
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    training = [torch.load(p / "checkpoints" / "step-0000004" / "training.pt", weights_only=True)
                for p in (straight, out)]
    assert training[0]["scheduler"] == training[1]["scheduler"]
    for a, b in zip(training[0]["d_optimizer"]["state"].values(),
                    training[1]["d_optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=1e-5, atol=1e-7)
    steps = [[e["step"] for e in _lines(p / "metrics.jsonl")] for p in (straight, out)]
    assert steps[0] == steps[1]
    val = [[e for e in _lines(p / "metrics.jsonl") if e["kind"] == "val"] for p in (straight, out)]
    assert val[0][-1]["psnr_repaired"] == pytest.approx(val[1][-1]["psnr_repaired"], abs=1e-4)


def test_incompatible_resume_and_checkpoint_are_refused(dataset, straight, tmp_path):
    out = tmp_path / "run"
    main([*RUN, "--data", str(dataset), "--out", str(out), "--stop-at", "2"])
    with pytest.raises(ValueError, match=r"incompatible.*lr: checkpoint 0.0002, now 0.001"):
        main([*RUN, "--data", str(dataset), "--out", str(out), "--resume", "--lr", "1e-3"])
    header = out / "checkpoints" / "step-0000002" / "model" / "slicefixer_config.json"
    data = json.loads(header.read_text())
    header.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        main([*RUN, "--data", str(dataset), "--out", str(out), "--resume"])
    with pytest.raises(FileExistsError, match="--resume"):
        main([*RUN, "--data", str(dataset), "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main([*RUN, "--data", str(dataset), "--out", str(tmp_path / "new"), "--resume"])


def test_missing_dataset_and_unknown_volume_are_clear_errors(dataset, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="pipelines.curate"):
        main([*RUN, "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit):
        main([*RUN[:2], "--val-volumes", "liver", *RUN[4:], "--data", str(dataset), "--out",
              str(tmp_path / "b")])
    assert "unknown volumes ['liver']" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_batches_use_repair_volumes_window_map():
    items = [{"artifact": torch.full((1, 8, 8), value), "clean": torch.full((1, 8, 8), 0.5),
              "biplanar": torch.ones(2, 4, 4), "prompt": "p", "views": 4}
             for value in (-0.5, 0.25, 2.0)]
    batch = collate_pairs(items)
    assert batch["views"] == [4, 4, 4] and "representation" not in batch
    mapped = to_model_space(batch["artifact"], (0.0, 1.0), 8)
    torch.testing.assert_close(mapped[:, 0, 0, 0], torch.tensor([-1.0, -0.5, 1.0]))
    assert to_model_space(batch["clean"], (0.0, 2.0), 16).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="lacks 'prompt'"):
        collate_pairs([{k: v for k, v in items[0].items() if k != "prompt"}])


def test_epoch_sampler_and_prompt_resolver():
    sampler = EpochSampler(10, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    resolver = PromptResolver(("a", "b"), "a")
    assert resolver(["b", "c", "c"]) == ["b", "a", "a"] and resolver.replaced == {"c": "a"}
    assert PromptResolver(None, "a")(["c"]) == ["c"]
