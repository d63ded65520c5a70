"""SliceFixer model: structure, trainability, LoRA counts, save/load round trip, versioning."""

import json

import pytest
import torch
from torch import nn

from slicefixer.conditioning import biplanar_view_ids
from slicefixer.losses import LossConfig, SliceFixerLoss
from slicefixer.model import UNET_LORA_TARGETS, VAE_LORA_TARGETS, SliceFixer
from slicefixer.presets import build_components, compact_config, tiny_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SliceFixer.from_config(tiny_config())


def _inputs(batch=2, size=32):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 1, size, size, generator=generator) * 2 - 1
    xrays = torch.rand(batch, 2, 20, 24, generator=generator)
    return images, xrays


def _expected_lora(network: nn.Module, targets, rank: int) -> int:
    """LoRA parameter count from the base modules' shapes: r (in + out) per Linear,
    r (in k k + out) per Conv2d, for modules whose name ends with a target."""
    total = 0
    for name, module in network.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(module, nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += rank * (module.in_channels * k + module.out_channels)
    return total


def test_forward_backward_reaches_exactly_the_trainable_parameters(tiny):
    images, xrays = _inputs()
    tiny.zero_grad()
    output = tiny(images, xrays, [tiny.config.default_prompt] * 2)
    assert output.shape == images.shape
    assert torch.isfinite(output).all() and output.abs().max() <= 1
    assert output.std() > 0.01 and (output.abs() < 1).float().mean() > 0.5
    output.square().mean().backward()
    for name, parameter in tiny.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name


def test_lora_counts_match_configuration(tiny):
    base = build_components(tiny_config())
    for network, fresh, targets, rank in (
        (tiny.unet, base.unet, UNET_LORA_TARGETS, tiny.config.lora_rank_unet),
        (tiny.vae, base.vae, VAE_LORA_TARGETS, tiny.config.lora_rank_vae),
    ):
        lora = sum(p.numel() for n, p in network.named_parameters() if "lora_" in n)
        expected = _expected_lora(fresh, targets, rank)
        assert expected > 0 and lora == expected
        assert network.peft_config["default"].r == rank


def test_only_intended_parameters_require_grad(tiny):
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    allowed_prefixes = ("unet.conv_in.", "skip_convs.", "fusion.", "prompt_encoder.")
    for name in trainable:
        assert "lora_" in name or name.startswith(allowed_prefixes), name
    assert any(n.startswith("unet.conv_in.") for n in trainable)
    assert any("lora_" in n and n.startswith("vae.") for n in trainable)
    assert not any(n.startswith("xray_encoder.") for n in trainable)
    assert not any(n.startswith(("unet.", "vae.")) and "lora_" not in n
                   and not n.startswith("unet.conv_in.") for n in trainable)


def test_skip_convs_start_near_zero_and_match_widths(tiny):
    assert len(tiny.skip_convs) == len(tiny.vae.config.block_out_channels)
    for conv in tiny.skip_convs:
        assert torch.all(conv.weight == tiny.config.skip_init)
    assert tiny.scheduler.timesteps.tolist() == [999]


def test_two_training_steps_update_the_model():
    torch.manual_seed(0)
    tiny = SliceFixer.from_config(tiny_config())
    images, xrays = _inputs()
    target = images.flip(-1)
    loss = SliceFixerLoss(LossConfig())
    before = {n: p.detach().clone() for n, p in tiny.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in tiny.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        total, terms = loss.generator_loss(tiny(images, xrays, [tiny.config.default_prompt] * 2),
                                           target, [tiny.config.default_prompt] * 2)
        total.backward()
        optimizer.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    changed = [n for n, p in tiny.named_parameters() if p.requires_grad
               and not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)


def test_compact_preset_is_small_fully_trainable_and_runs_at_128():
    model = SliceFixer.from_config(compact_config())
    parameters = list(model.parameters())
    assert sum(p.numel() for p in parameters) <= 10_000_000
    assert all(p.requires_grad for p in parameters)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    images = torch.zeros(1, 1, 128, 128)
    with torch.no_grad():
        output = model(images, torch.rand(1, 2, 16, 16), [model.config.prompts[2]])
    assert output.shape == images.shape


def test_save_load_gives_identical_outputs(tiny, tmp_path):
    images, xrays = _inputs()
    prompts = [tiny.config.prompts[1]] * 2
    with torch.no_grad():
        # Move the parts a fresh model would share (skip init, LoRA B = 0) off their init.
        for name, parameter in tiny.named_parameters():
            if name.startswith("skip_convs.") or "lora_B" in name:
                parameter.add_(0.01 * torch.randn_like(parameter))
        expected = tiny(images, xrays, prompts)
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded = SliceFixer.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(images, xrays, prompts), expected)
    assert loaded.config == tiny.config
    reference = tiny.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert (tmp_path / "ckpt" / "unet_lora" / "adapter_config.json").is_file()
    fresh = SliceFixer.from_config(tiny_config())
    with torch.no_grad():
        assert not torch.allclose(fresh(images, xrays, prompts), expected)


@pytest.mark.parametrize("field,value,message", [
    ("format_version", 2, "version 2 is not supported"),
    ("format", "pix2pix", "format"),
])
def test_incompatible_checkpoint_is_refused(tiny, tmp_path, field, value, message):
    tiny.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "slicefixer_config.json"
    header = json.loads(path.read_text())
    header[field] = value
    path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=message):
        SliceFixer.from_pretrained(tmp_path / "ckpt")


def test_checkpoint_with_other_lora_rank_is_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "slicefixer_config.json"
    header = json.loads(path.read_text())
    header["config"]["lora_rank_unet"] = 2
    path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match="rank"):
        SliceFixer.from_pretrained(tmp_path / "ckpt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="slicefixer_config.json"):
        SliceFixer.from_pretrained(tmp_path)


def test_bad_inputs_are_rejected(tiny):
    images, xrays = _inputs()
    with pytest.raises(ValueError, match="closed prompt set"):
        tiny(images, xrays, ["make it pretty"] * 2)
    with pytest.raises(ValueError, match="xrays"):
        tiny(images, xrays[:, :1], [tiny.config.default_prompt] * 2)
    with pytest.raises(ValueError, match="prompts"):
        tiny(images, xrays, tiny.config.default_prompt)
    with pytest.raises(ValueError, match="images"):
        tiny(images[:, :, :30, :30], xrays, [tiny.config.default_prompt] * 2)
    with pytest.raises(ValueError, match="finite"):
        tiny(images, xrays * float("nan"), [tiny.config.default_prompt] * 2)


def test_biplanar_views_nearest_0_and_90_degrees():
    angles = torch.linspace(0, 2 * torch.pi, 37)[:-1].numpy()
    assert biplanar_view_ids(angles) == (0, 9)
    assert biplanar_view_ids([0.3, 1.4, 3.0, 6.2]) == (3, 1)
    with pytest.raises(ValueError, match="angles"):
        biplanar_view_ids([0.0])


def test_residual_model_starts_as_the_identity_and_learns_a_correction():
    import dataclasses

    torch.manual_seed(0)
    model = SliceFixer.from_config(dataclasses.replace(tiny_config(), residual=True))
    images, xrays = _inputs()
    torch.testing.assert_close(model(images, xrays, [model.config.default_prompt] * 2), images)
    target = images * 0.5
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.mean((model(images, xrays, [model.config.default_prompt] * 2) - target) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(model(images, xrays, [model.config.default_prompt] * 2), images)
