"""The sd-turbo preset, built from local folders with tiny random SD-Turbo/RAD-DINO parts that the
test writes itself (same layout as the hub repos; no hub access)."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

from slicefixer.model import SliceFixer
from slicefixer.presets import tiny_config


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    sd, dino = root / "sd-turbo", root / "rad-dino"
    torch.manual_seed(0)
    tiny = tiny_config()
    UNet2DConditionModel(**tiny.unet).save_pretrained(sd / "unet")
    vae = dict(tiny.vae, in_channels=3, out_channels=3, scaling_factor=0.18215)
    AutoencoderKL(**vae).save_pretrained(sd / "vae")
    # SD-Turbo's own scheduler config (an Euler scheduler, loaded into DDPM as pix2pix-turbo does).
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           timestep_spacing="trailing", steps_offset=1).save_pretrained(
                               sd / "scheduler")
    words = "remove artifacts for this ct slice chest head".split()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in sorted(set("".join(words))) + [w + "</w>" for w in words]:
        vocab.setdefault(token, len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"),
                  model_max_length=12).save_pretrained(sd / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=12)).save_pretrained(sd / "text_encoder")
    Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, image_size=28, patch_size=14)).save_pretrained(
                                 dino)
    return sd, dino


@pytest.fixture(scope="module")
def model(folders):
    return SliceFixer.from_sd_turbo(*folders, resolution=32)


def _inputs():
    generator = torch.Generator().manual_seed(2)
    return (torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1,
            torch.rand(2, 2, 16, 16, generator=generator))


def test_sd_turbo_preset_builds_from_local_folders(model):
    assert model.config.preset == "sd-turbo" and model.config.text == "clip"
    assert model.vae.config.in_channels == 3
    assert model.unet.peft_config["default"].r == 8 and model.vae.peft_config["default"].r == 4
    assert model.scheduler.timesteps.tolist() == [999]
    images, xrays = _inputs()
    output = model(images, xrays, ["remove artifacts for this chest CT slice"] * 2)
    assert output.shape == (2, 1, 32, 32) and torch.isfinite(output).all()
    output.mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("prompt_encoder.", "xray_encoder.")) for n in trainable)
    assert all("lora_" in n or n.startswith(("unet.conv_in.", "skip_convs.", "fusion."))
               for n in trainable)
    tokens = model.prompt_encoder(["remove artifacts for this head CT slice"])
    assert tokens.shape == (1, 12, 16)


def test_sd_turbo_round_trip_stores_only_trained_weights(model, folders, tmp_path):
    images, xrays = _inputs()
    prompts = ["remove artifacts for this CT slice"] * 2
    with torch.no_grad():
        model.unet.conv_in.weight.mul_(1.1)
        expected = model(images, xrays, prompts)
    model.save_pretrained(tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "slicefixer_config.json").read_text())
    assert header["base_weights"] == "sources"
    loaded = SliceFixer.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(images, xrays, prompts), expected)
    moved = tmp_path / "moved"
    shutil.copytree(folders[0], moved)
    loaded = SliceFixer.from_pretrained(tmp_path / "ckpt",
                                        sources={"sd_turbo": str(moved), "rad_dino": folders[1]})
    with torch.no_grad():
        assert torch.equal(loaded(images, xrays, prompts), expected)


def test_missing_folders_name_the_folder_and_the_remedy(folders, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*huggingface-cli download stabilityai"):
        SliceFixer.from_sd_turbo(str(missing), folders[1])
    partial = tmp_path / "partial"
    shutil.copytree(folders[0], partial)
    shutil.rmtree(partial / "scheduler")
    with pytest.raises(FileNotFoundError, match="partial/scheduler is missing"):
        SliceFixer.from_sd_turbo(str(partial), folders[1])
    with pytest.raises(FileNotFoundError, match="rad_dino.*microsoft/rad-dino"):
        SliceFixer.from_sd_turbo(folders[0], str(missing))
