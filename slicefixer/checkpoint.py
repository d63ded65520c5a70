"""SliceFixer checkpoints: a versioned JSON config, safetensors weights, peft LoRA adapters.

Layout of a checkpoint folder:
    slicefixer_config.json   {"format": "slicefixer", "format_version": 1,
                              "base_weights": "included" | "sources", "config": {...}}
    model.safetensors        every non-LoRA tensor ("included"), or only the trained modules'
                             tensors ("sources": the frozen base is reloaded from config.sources)
    unet_lora/, vae_lora/    adapter_config.json + adapter_model.safetensors, as peft writes them
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from nr.io import atomic_folder
from slicefixer.presets import SliceFixerConfig, build_components, load_sd_turbo_components

FORMAT = "slicefixer"
FORMAT_VERSION = 1
CONFIG_NAME = "slicefixer_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTERS = {"unet": "unet_lora", "vae": "vae_lora"}


def _saved_state(model: nn.Module) -> dict:
    if model.config.sources is None:
        state = model.state_dict()
    else:
        state = {}
        named = {id(module): name for name, module in model.named_modules()}
        for module in model.trained_modules():
            prefix = named[id(module)]
            state.update({f"{prefix}.{key}": value for key, value in module.state_dict().items()})
    return {key: value.detach().contiguous().cpu() for key, value in state.items()
            if "lora_" not in key}


def save(model: nn.Module, directory: str | Path) -> None:
    """Write the `slicefixer.model.SliceFixer` ``model`` to ``directory`` (created; replaced as a
    whole, atomically)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(directory, overwrite=True) as staging:
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_weights": "included" if model.config.sources is None else "sources",
            "config": model.config.to_dict(),
        }
        (staging / CONFIG_NAME).write_text(json.dumps(header, indent=2, default=list))
        save_file(_saved_state(model), str(staging / WEIGHTS_NAME), metadata={"format": FORMAT})
        for part, folder in ADAPTERS.items():
            network = getattr(model, part)
            if getattr(network, "peft_config", None):
                network.peft_config["default"].save_pretrained(str(staging / folder))
                lora = {k: v.detach().contiguous().cpu()
                        for k, v in get_peft_model_state_dict(network).items()}
                save_file(lora, str(staging / folder / "adapter_model.safetensors"))


def read_header(directory: Path) -> dict:
    """The checkpoint's JSON header, refusing unknown formats and versions."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"directory: {directory} holds no {CONFIG_NAME}; it is not a "
                                "SliceFixer checkpoint (write one with save_pretrained)")
    header = json.loads(path.read_text())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r} is not {FORMAT!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version!r} is not supported; this release reads "
            f"version {FORMAT_VERSION} only. Load it with the diffnr-toolkit release that wrote "
            "it, or re-export it with save_pretrained from a release that reads both.")
    return header


def load(cls: type[nn.Module], directory: str | Path,
         sources: dict[str, str] | None = None) -> nn.Module:
    """Rebuild the model of a checkpoint folder (see the module docstring) as an instance of
    `cls` (`slicefixer.model.SliceFixer` or a subclass), built as ``cls(config, components)``."""
    directory = Path(directory)
    header = read_header(directory)
    config = SliceFixerConfig.from_dict(header["config"])
    if header["base_weights"] == "sources":
        config.sources = dict(sources or config.sources)
        components = load_sd_turbo_components(**config.sources)
    else:
        components = build_components(config)
    model = cls(config, components)
    state = load_file(str(directory / WEIGHTS_NAME))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{directory}: weights {result.unexpected_keys[:5]} do not fit the model "
                         "its config describes")
    if header["base_weights"] == "included":
        missing = [k for k in result.missing_keys if "lora_" not in k]
        if missing:
            raise ValueError(f"{directory}: weights missing for {missing[:5]}")
    for part, folder in ADAPTERS.items():
        network = getattr(model, part)
        has_adapter = bool(getattr(network, "peft_config", None))
        if has_adapter != (directory / folder).is_dir():
            raise ValueError(f"{directory}: adapter folder {folder} does not match the config's "
                             f"LoRA rank for the {part}")
        if has_adapter:
            saved = LoraConfig.from_pretrained(str(directory / folder))
            if saved.r != network.peft_config["default"].r:
                raise ValueError(f"{directory / folder}: rank {saved.r} differs from the config's")
            lora = load_file(str(directory / folder / "adapter_model.safetensors"))
            expected = set(get_peft_model_state_dict(network))
            if set(lora) != expected:
                raise ValueError(f"{directory / folder}: adapter weights do not match the model")
            set_peft_model_state_dict(network, lora)
    return model
