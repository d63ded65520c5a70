"""SliceFixer fine-tuning with accelerate: the training code the DiffNR release never published.

    model = build_model(config)                                  # or SliceFixer.from_pretrained
    finetune(model_factory, train_pairs, val_pairs, config, "runs/fixer")

Recipe (docs/finetune.md): pix2pix-turbo's generator step (L2 x1, LPIPS x5, CLIP x5, GAN x0.5)
plus SSIM, then a discriminator step; AdamW, gradient clipping at 1, a diffusers lr schedule.
The generator step takes every term in one backward pass (pix2pix-turbo runs a second forward for
the GAN term; on a CPU that doubles the cost). Slices are trained in ``repair_volume``'s window
space (``slicefixer.data``). Everything goes through an ``accelerate.Accelerator``, so
``accelerate launch`` runs it on several GPUs or nodes unchanged: each process takes its own
``batch`` (global batch = batch x processes); the lr schedule counts optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from nr.io import atomic_file
from slicefixer import finetune_state as ckpt
from slicefixer.checkpoint import save as save_model
from slicefixer.data import EpochSampler, PromptResolver, collate_pairs, to_model_space
from slicefixer.losses import LossConfig, SliceFixerLoss
from slicefixer.model import SliceFixer
from slicefixer.presets import compact_config, tiny_config
from slicefixer.validation import batch_metrics, group_labels, repair_batch, save_grid, summarise

logger = logging.getLogger(__name__)
SCHEDULES = ("cosine", "constant")
# Settings that may change between a run and its resume (they do not alter the trained weights).
RESUMABLE_CHANGES = ("stop_at", "val_every", "checkpoint_every", "keep_checkpoints", "log_every",
                     "workers", "progress")


@dataclass
class FinetuneConfig:
    """Optimisation, losses and bookkeeping of a run (defaults: :func:`preset_defaults`).

    Attributes:
        preset: model preset, "compact", "sd-turbo" or "tiny" (smoke tests); informational here.
        steps: optimizer steps of the whole run; the lr schedule spans them.
        batch: slices per process and step.
        lr: AdamW learning rate (pix2pix-turbo: 5e-6 for LoRA on SD-Turbo; compact, trained from
            scratch: 2e-4, the CPU pilot's; docs/history.md, "SliceFixer").
        weight_decay: AdamW weight decay (pix2pix-turbo: 1e-2).
        schedule: "cosine" (decay to 0 over ``steps``; the pilot) or "constant" (pix2pix-turbo).
        warmup_steps: linear warm-up steps of the schedule.
        grad_clip: max gradient norm of generator and discriminator (pix2pix-turbo: 1).
        resolution: square side the slices are resized to (the model's resolution).
        seed: seeds model init, data order and every random draw.
        loss: loss weights and perceptual backbone files (``slicefixer.losses.LossConfig``).
        val_every: validate (metrics + sample grid) every this many steps and at the end.
        val_slices: validation slices, evenly spaced over the held-out dataset (all if fewer).
        samples: rows of each sample grid.
        checkpoint_every: write a checkpoint every this many steps (and at the end or stop).
        keep_checkpoints: newest checkpoints kept.
        log_every: log training losses every this many steps.
        stop_at: stop after this step with a checkpoint (an interruption by design: the run
            resumes to ``steps`` with the same schedule); None runs to ``steps``.
        workers: DataLoader worker processes.
        progress: show a tqdm bar (main process).
    """

    preset: str = "compact"
    steps: int = 1000
    batch: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-2
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    resolution: int = 128
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    val_every: int = 200
    val_slices: int = 256
    samples: int = 4
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    stop_at: int | None = None
    workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        for name in ("steps", "batch", "resolution", "val_every", "val_slices", "samples",
                     "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("warmup_steps", "workers", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at: expected a step in [1, steps={self.steps}], "
                             f"got {self.stop_at}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def preset_defaults(preset: str) -> FinetuneConfig:
    """Per-preset defaults, with their origin.

    - "sd-turbo": pix2pix-turbo's recipe: lr 5e-6, wd 1e-2, constant schedule, batch 4, 512 px,
      L2 1 + LPIPS 5 + CLIP 5 + GAN 0.5, plus SSIM 1 (DiffNR's SSIM term).
    - "compact": the CPU pilot (docs/history.md, "SliceFixer"): from scratch, lr 2e-4 cosine,
      batch 16, 128 px, L2 1 + SSIM 0.05; LPIPS/CLIP keep pix2pix-turbo's 5 (active only with their
      backbones); GAN 0 (off): without LPIPS the from-scratch GAN term would outweigh L2.
    - "tiny": the compact recipe at 32 px and batch 2, for smoke tests.
    """
    if preset == "sd-turbo":
        return FinetuneConfig(preset=preset, steps=10000, batch=4, lr=5e-6, schedule="constant",
                              resolution=512, loss=LossConfig(ssim=1.0), val_every=500,
                              checkpoint_every=500)
    if preset in ("compact", "tiny"):
        tiny = preset == "tiny"
        return FinetuneConfig(preset=preset, steps=1000, batch=2 if tiny else 16, lr=2e-4,
                              schedule="cosine", resolution=32 if tiny else 128,
                              loss=LossConfig(ssim=0.05, gan=0.0))
    raise ValueError(f"preset: expected 'compact', 'sd-turbo' or 'tiny', got {preset!r}")


def model_factory(preset: str, resolution: int, sd_turbo: str | None = None,
                  rad_dino: str | None = None) -> Callable[[Path | None], SliceFixer]:
    """The ``make_model`` of :func:`finetune` for a preset.

    Args:
        preset: "compact" or "tiny" (random init at ``resolution``), or "sd-turbo" (SD-Turbo and
            RAD-DINO from the local folders or hub ids ``sd_turbo`` and ``rad_dino``).
        resolution: the model's square slice side in pixels.
    """
    builders = {"compact": compact_config, "tiny": tiny_config}
    if preset == "sd-turbo":
        if not sd_turbo or not rad_dino:
            raise ValueError("preset: 'sd-turbo' needs the SD-Turbo and RAD-DINO folders: pass "
                             "--sd-turbo PATH --rad-dino PATH (see docs/finetune.md)")
        sources = {"sd_turbo": str(sd_turbo), "rad_dino": str(rad_dino)}

        def make_sd_turbo(path: Path | None) -> SliceFixer:
            if path is None:
                return SliceFixer.from_sd_turbo(sd_turbo, rad_dino, resolution)
            return SliceFixer.from_pretrained(path, sources)
        return make_sd_turbo
    if preset not in builders:
        raise ValueError(f"preset: expected 'compact', 'sd-turbo' or 'tiny', got {preset!r}")

    def make(path: Path | None) -> SliceFixer:
        if path is None:
            config = dataclasses.replace(builders[preset](), resolution=resolution)
            return SliceFixer.from_config(config)
        return SliceFixer.from_pretrained(path)
    return make


def _check_dataset(dataset: Dataset, name: str, minimum: int) -> None:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name}: expected a torch Dataset, got {type(dataset).__name__}")
    if len(dataset) < minimum:
        raise ValueError(f"{name}: expected at least {minimum} slice pairs, got {len(dataset)}")


def _evenly(dataset: Dataset, count: int) -> Dataset:
    if len(dataset) <= count:
        return dataset
    return Subset(dataset, torch.linspace(0, len(dataset) - 1, count).round().long().tolist())


class _Logs:
    """train.log (via the logging module) and metrics.jsonl of the main process."""

    def __init__(self, out: Path, enabled: bool, resumed_step: int) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        if not enabled:
            return
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for name in ("slicefixer", "pipelines"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
        self.handler = handler
        # Lines after the checkpoint belong to the interrupted attempt: the resume rewrites them.
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def record(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        if self.enabled:
            for name in ("slicefixer", "pipelines"):
                logging.getLogger(name).removeHandler(self.handler)
            self.handler.close()


def finetune(
    make_model: Callable[[Path | None], SliceFixer],
    train_set: Dataset,
    val_set: Dataset,
    config: FinetuneConfig,
    out: str | Path,
    resume: bool = False,
    record: dict[str, Any] | None = None,
    accelerator: Accelerator | None = None,
) -> Path:
    """Fine-tune a SliceFixer; write checkpoints, validation metrics, sample grids and the model.

    Args:
        make_model: called with None for a fresh model (seeded before the call), or with a
            checkpoint's ``model/`` folder to load it (e.g. ``SliceFixer.from_pretrained``).
        train_set, val_set: datasets of pair dicts (``slicefixer.data``); val_set is held out.
        config: the run's settings.
        out: output folder: config.json, train.log, metrics.jsonl, samples/step-N.png,
            checkpoints/step-N/, and final/ (``SliceFixer.save_pretrained``) when ``steps`` is done.
        resume: continue from the newest checkpoint in ``out`` (which must exist and match).
        record: extra provenance (data, volumes, command) written into config.json.
        accelerator: the Accelerator to use (default: a new one, configured by accelerate launch).

    Returns:
        The final model folder, or the last checkpoint when ``config.stop_at`` ended the run early.
    """
    out = Path(out)
    accelerator = accelerator or Accelerator()
    _check_dataset(train_set, "train_set", config.batch * accelerator.num_processes)
    _check_dataset(val_set, "val_set", 1)
    found = ckpt.list_checkpoints(out)
    if resume and not found:
        raise FileNotFoundError(f"--resume: no checkpoint in {out / ckpt.CHECKPOINTS}")
    if not resume and (found or (out / "final").exists()):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or "
                              "choose another --out")
    run = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    run["train_pairs"] = len(train_set)
    run["val_pairs"] = len(val_set)
    run["processes"] = accelerator.num_processes
    state: dict[str, Any] = {"step": 0, "prompt_replacements": {}}
    training: dict[str, Any] | None = None
    if resume:
        state, training = ckpt.read_checkpoint(found[-1], run)
    set_seed(config.seed)
    model = make_model(found[-1] / ckpt.MODEL if resume else None)
    if model.config.resolution != config.resolution:
        raise ValueError(f"resolution: the model works at {model.config.resolution} px, the run "
                         f"at {config.resolution}")
    if config.resolution % model.latent_divisor:
        raise ValueError(f"resolution: expected a multiple of {model.latent_divisor}, got "
                         f"{config.resolution}")
    step = int(state["step"])
    accelerator.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
    logs = _Logs(out, accelerator.is_main_process, step)
    try:
        return _train(model, train_set, val_set, config, out, accelerator, logs, run, state,
                      training, record or {})
    finally:
        logs.close()


def _train(model: SliceFixer, train_set: Dataset, val_set: Dataset, config: FinetuneConfig,
           out: Path, accelerator: Accelerator, logs: _Logs, run: dict[str, Any],
           state: dict[str, Any], training: dict[str, Any] | None,
           record: dict[str, Any]) -> Path:
    window = model.config.intensity_window
    losses = SliceFixerLoss(config.loss).to(accelerator.device)
    use_gan = losses.resolved["terms"]["gan"]["active"]
    prompts = PromptResolver(model.config.prompts if model.config.text == "table" else None,
                             model.config.default_prompt)
    prompts.replaced.update(state["prompt_replacements"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    name = "cosine" if config.schedule == "cosine" else "constant_with_warmup"
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    loader = DataLoader(train_set, batch_size=config.batch, drop_last=True,
                        sampler=EpochSampler(len(train_set), config.seed),
                        collate_fn=collate_pairs, num_workers=config.workers)
    val_subset = _evenly(val_set, config.val_slices)
    val_loader = DataLoader(val_subset, batch_size=config.batch, collate_fn=collate_pairs,
                            num_workers=config.workers)
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader,
                                                               val_loader)
    d_optimizer = None
    if use_gan:
        d_optimizer = torch.optim.AdamW(losses.discriminator_parameters(), lr=config.lr,
                                        weight_decay=config.weight_decay)
        losses.discriminator, d_optimizer = accelerator.prepare(losses.discriminator, d_optimizer)
    step = int(state["step"])
    if training is not None:
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        if use_gan:
            accelerator.unwrap_model(losses.discriminator).load_state_dict(
                training["discriminator"])
            d_optimizer.load_state_dict(training["d_optimizer"])
        rngs = training["rng"]
        if len(rngs) == accelerator.num_processes:
            ckpt.set_rng_state(rngs[accelerator.process_index])
    if accelerator.is_main_process:
        resolved = {
            "finetune": config.to_dict(), "model": accelerator.unwrap_model(model).config.to_dict(),
            "losses": losses.resolved, "processes": accelerator.num_processes,
            "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
            "global_batch": config.batch * accelerator.num_processes, **record,
        }
        _write_json(out / "config.json", resolved)
        off = [f"{k} ({v['reason'] or 'weight 0'})" for k, v in losses.resolved["terms"].items()
               if not v["active"]]
        logger.info("fine-tuning %s from step %d to %d; loss terms off: %s", config.preset, step,
                    config.steps, "; ".join(off) or "none")

    def save_checkpoint() -> Path:
        rngs = gather_object([ckpt.rng_state()])
        path = ckpt.checkpoint_dir(out, step)
        if accelerator.is_main_process:
            blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rngs}
            if use_gan:
                blob["discriminator"] = accelerator.unwrap_model(losses.discriminator).state_dict()
                blob["d_optimizer"] = d_optimizer.state_dict()
            path = ckpt.write_checkpoint(
                out, step, accelerator.unwrap_model(model), blob,
                {"step": step, "run": run, "prompt_replacements": prompts.replaced},
                config.keep_checkpoints)
            logger.info("checkpoint %s", path)
        accelerator.wait_for_everyone()
        return path

    def validate() -> None:
        values, labels = [], []
        for batch in val_loader:
            metrics = batch_metrics(model, batch, window, config.resolution, prompts)
            values.append(accelerator.gather_for_metrics(metrics))
            labels += accelerator.gather_for_metrics(group_labels(batch), use_gather_object=True)
        if not accelerator.is_main_process:
            return
        summary = summarise(torch.cat(values).cpu(), labels)
        logs.record({"step": step, "kind": "val", **summary})
        logger.info("step %d validation: PSNR %.2f dB (artifact %.2f, gain %+.2f), SSIM %.4f "
                    "(artifact %.4f)", step, summary["psnr_repaired"], summary["psnr_artifact"],
                    summary["psnr_gain"], summary["ssim_repaired"], summary["ssim_artifact"])
        rows = []
        for index in torch.linspace(0, len(val_subset) - 1, config.samples).round().long():
            batch = collate_pairs([val_subset[int(index)]])
            images = to_model_space(batch["artifact"], window, config.resolution)
            repaired = repair_batch(accelerator.unwrap_model(model), images.to(accelerator.device),
                                    batch["biplanar"].to(accelerator.device),
                                    prompts(batch["prompt"]))
            target = to_model_space(batch["clean"], window, config.resolution)
            rows.append((images[0, 0], repaired[0, 0].cpu(), target[0, 0]))
        save_grid(rows, out / "samples" / f"step-{step:07d}.png", f"step {step}")

    last = config.stop_at or config.steps
    checkpoint = ckpt.checkpoint_dir(out, step)
    bar = tqdm(total=config.steps, initial=step, desc="fine-tune",
               disable=not (config.progress and accelerator.is_main_process))
    per_epoch = len(loader)
    model.train()
    while step < last:
        epoch, skip = divmod(step, per_epoch)
        loader.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index < skip:
                continue
            images = to_model_space(batch["artifact"], window, config.resolution)
            target = to_model_space(batch["clean"], window, config.resolution)
            text = prompts(batch["prompt"])
            prediction = model(images, batch["biplanar"], text)
            total, terms = losses.generator_loss(prediction, target, text)
            accelerator.backward(total)
            grad_norm = accelerator.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if use_gan:
                d_optimizer.zero_grad(set_to_none=True)
                d_loss = losses.discriminator_loss(prediction.detach(), target)
                accelerator.backward(d_loss)
                accelerator.clip_grad_norm_(losses.discriminator_parameters(), config.grad_clip)
                d_optimizer.step()
                d_optimizer.zero_grad(set_to_none=True)
                terms["discriminator"] = float(d_loss.detach())
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == last:
                entry = {"step": step, "kind": "train", "loss": float(total.detach()),
                         "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0], **terms}
                logs.record(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                logger.info("step %d loss %.5f %s", step, entry["loss"],
                            " ".join(f"{k} {v:.4g}" for k, v in terms.items()))
            if step % config.val_every == 0 or step == last:
                validate()
            if step % config.checkpoint_every == 0 or step == last:
                checkpoint = save_checkpoint()
            if step == last:
                break
    bar.close()
    if last < config.steps:
        logger.info("stopped at step %d of %d (stop_at); resume with --resume", step,
                    config.steps)
        return checkpoint
    final = out / "final"
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), final)
        logger.info("final model %s", final)
    accelerator.wait_for_everyone()
    return final


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
