"""Training checkpoints of SliceFixer fine-tuning: atomic folders and exact resume.

Layout of ``OUT/checkpoints/step-NNNNNNN/`` (written into a hidden temporary folder, then renamed,
so a crash never leaves a partial checkpoint under a final name):

    model/          the model, by ``SliceFixer.save_pretrained`` (loads with ``from_pretrained``)
    training.pt     optimizer, lr scheduler, discriminator and its optimizer, the torch RNG
                    states of every process (tensors and numbers only: loaded with weights_only)
    state.json      {"step", "run": the settings a resume must match, "prompt_replacements"}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from nr.io import atomic_folder

CHECKPOINTS = "checkpoints"
STATE = "state.json"
TRAINING = "training.pt"
MODEL = "model"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step:07d}"


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(out: Path, step: int, model: Any, training: dict[str, Any],
                     state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically and delete all but the ``keep`` newest.

    Args:
        model: the unwrapped SliceFixer.
        training: optimizer/scheduler/discriminator state dicts and RNG states (torch.save).
        state: JSON-serialisable run state (step, run settings, prompt replacements).
    """
    final = checkpoint_dir(out, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final, overwrite=True) as staging:
        model.save_pretrained(staging / MODEL)
        torch.save(training, staging / TRAINING)
        (staging / STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of ``out``, oldest first."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def read_checkpoint(path: Path, run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, training) of a checkpoint, refusing one written by a run with other settings.

    Args:
        run: the settings of the current run (same keys as the checkpoint's ``state["run"]``).

    Raises:
        ValueError: a setting differs (named, with both values) or the files are unreadable.
    """
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--resume: {path / STATE} is unreadable ({error})") from error
    saved = state.get("run", {})
    differences = [f"{key}: checkpoint {saved.get(key)!r}, now {value!r}"
                   for key, value in run.items() if saved.get(key) != value]
    differences += [f"{key}: checkpoint {saved[key]!r}, now absent" for key in saved
                    if key not in run]
    if differences:
        raise ValueError(f"--resume: the checkpoint {path} is incompatible with this run; "
                         "resume with the settings it was written with, or train into a new "
                         "--out. Differences: " + "; ".join(differences))
    training = torch.load(path / TRAINING, map_location="cpu", weights_only=True)
    return state, training
