"""One optimisation loop for every representation (hash-grid field, Gaussians) and its hooks.

    trainer = Trainer(field, projections, geo, TrainConfig(), volume_gt=gt, out_dir="run")
    history = trainer.run()                  # resumes from run/checkpoint.pt when present

Per iteration (R2-Gaussian's recipe, ANCHORS.md section 1, with several views):

    loss = proj(render(views), target) + lambda_dssim (1 - SSIM2D) + lambda_tv TV3D(random crop)
           [+ weight (1 - SSIM3D(volume, reference)) for each hook holding a pseudo-reference,
            every `hook.loss_every` iterations]

Units: the losses see projections divided by ``volume_scale * L`` and volumes
divided by ``volume_scale``, where ``L`` is half the longest side of the volume
box (R2-Gaussian rescales the scene to [-1, 1]^3) and ``volume_scale`` the
attenuation per mm that counts as 1 (the scan's maximum). The weights then mean
what they mean in R2-Gaussian whatever the units of the scan.

Hooks (`Hook`): objects with ``every``, ``start`` and ``loss_every`` (ints >= 1) and
``__call__(trainer, iteration) -> HookResult | None``. It is called after the optimiser step of
iterations ``start, start + every, ...``. A returned `HookResult` replaces that
hook's pseudo-reference from the next iteration on (one of weight 0 removes it). Hooks with
``state_dict``/``load_state_dict`` are checkpointed.

Checkpoints (``out_dir/checkpoint.pt``, written atomically every
``checkpoint_every`` iterations) hold the representation, the optimiser, the
RNG states of torch, numpy, Python and the loop, the iteration, the history,
the pseudo-references and the hooks' states; a run killed at any moment and
started again ends where an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from nr.geometry import ConeBeamGeometry
from nr.io import atomic_file
from nr.losses import PROJECTION_LOSSES, dssim_loss, projection_loss, ssim3d_loss, tv3d_loss
from nr.metrics import truth_scores
from nr.ops.projector import check_projections
from nr.representation import Representation
from nr.validation import check_choice, check_int, check_number

SCHEDULES = ("exponential", "step")
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop.

    Attributes:
        iterations: optimiser steps (R2-Gaussian: 30k with 1 view per step).
        views_per_iteration: projections rendered per step, drawn without
            replacement from a shuffled pass over the views (R2-Gaussian: 1).
        projection_loss: "l1" (R2-Gaussian) or "mse" (NAF).
        lambda_dssim: weight of ``1 - SSIM2D`` on projections (R2-Gaussian: 0.25).
        lambda_tv: weight of 3D TV on a random crop (R2-Gaussian: 0.05; 0 disables).
        tv_crop: side of the TV crop in voxels (R2-Gaussian: 32), clipped to the grid.
        volume_scale: attenuation per mm that counts as 1 in the losses (module docstring).
        schedule: "exponential" (each group's lr decays log-linearly from "lr"
            to "lr_final", R2-Gaussian) or "step" (lr * gamma every `step_size`, NAF).
        step_size: iterations between lr steps of the "step" schedule.
        gamma: factor of each lr step.
        adam_betas: Adam's betas (instant-NGP: (0.9, 0.99)).
        adam_eps: Adam's epsilon (R2-Gaussian and instant-NGP: 1e-15).
        eval_every: iterations between evaluations against the ground truth
            (when one is given; also after the last iteration); 0 = only at the end.
        checkpoint_every: iterations between checkpoints (needs an out_dir); 0 = never.
        seed: seeds torch, numpy, Python and the loop's own generator.
        validation_views: view indices withheld from the loss up to and including iteration
            `validation_until`, so that a guard can judge pseudo-references on data the loop
            has not fitted (`nr.guard`); they join the loss after it. Empty: none withheld.
        validation_until: last iteration at which `validation_views` are withheld.
        progress: show a tqdm progress bar.
        tensorboard: log scalars to ``out_dir/tensorboard`` (needs tensorboard).
    """

    iterations: int = 1000
    views_per_iteration: int = 4
    projection_loss: str = "l1"
    lambda_dssim: float = 0.25
    lambda_tv: float = 0.05
    tv_crop: int = 32
    volume_scale: float = 1.0
    schedule: str = "exponential"
    step_size: int = 1000
    gamma: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    eval_every: int = 100
    checkpoint_every: int = 0
    seed: int = 0
    validation_views: tuple[int, ...] = ()
    validation_until: int = 0
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "views_per_iteration", "tv_crop", "step_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("eval_every", "checkpoint_every", "seed"):
            check_int(name, getattr(self, name), 0)
        for name in ("lambda_dssim", "lambda_tv"):
            check_number(name, getattr(self, name), 0.0)
        for name in ("volume_scale", "gamma", "adam_eps"):
            check_number(name, getattr(self, name), 0.0, open_low=True)
        check_choice("projection_loss", self.projection_loss, PROJECTION_LOSSES)
        check_choice("schedule", self.schedule, SCHEDULES)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {self.adam_betas}")
        views = self.validation_views
        if not isinstance(views, tuple) or len(set(views)) != len(views):
            raise ValueError(f"validation_views: expected a tuple of distinct ints, got {views!r}")
        for view in views:
            check_int("validation_views", view, 0)
        check_int("validation_until", self.validation_until, 0)
        if views and not 1 <= self.validation_until <= self.iterations:
            raise ValueError(
                f"validation_until: expected an iteration in [1, {self.iterations}] with "
                f"validation views, got {self.validation_until}"
            )

    def training_views(self, n_views: int, iteration: int) -> list[int]:
        """The view indices (of `n_views`) the loss may draw from at `iteration` (1-based)."""
        if not self.validation_views or iteration > self.validation_until:
            return list(range(n_views))
        held = set(self.validation_views)
        return [view for view in range(n_views) if view not in held]


def validation_views(n_views: int, fraction: float) -> tuple[int, ...]:
    """`fraction` of `n_views` views (at least one, at most a quarter), spread evenly in angle.

    The views of a sparse scan are spread evenly over the arc, so the chosen ones are too.
    """
    check_int("n_views", n_views, 4)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.25:
        raise ValueError(f"fraction: expected a number in (0, 0.25], got {fraction!r}")
    count = max(1, round(fraction * n_views))
    return tuple(sorted({int((i + 0.5) * n_views / count) for i in range(count)}))


def _resume_key(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a TrainConfig that must not change across a resume."""
    return {k: v for k, v in config.items() if k not in ("progress", "tensorboard")}


@dataclass
class HookResult:
    """A pseudo-reference returned by a hook.

    Attributes:
        reference: (Z, Y, X) attenuation per mm on the training grid.
        weight: weight of ``1 - SSIM3D(volume, reference)`` (DiffNR: 1.0).
        crop: side of a random cubic crop on which the term is computed; None
            compares the full volumes (DiffNR).
    """

    reference: torch.Tensor
    weight: float
    crop: int | None = None


class Hook(Protocol):
    """Called after the optimiser step of iterations ``start, start + every, ...``; a returned
    `HookResult` holds a pseudo-reference whose term is added every ``loss_every`` iterations
    (module docstring). Hooks with ``state_dict``/``load_state_dict`` are checkpointed.
    `nr.priors.protocol.PriorHook` is the one DiffNR uses."""

    every: int
    start: int
    loss_every: int

    def __call__(self, trainer: Trainer, iteration: int) -> HookResult | None: ...


def adam(param_groups: Sequence[dict[str, Any]], **options: Any) -> torch.optim.Adam:
    """Adam over `param_groups`, with torch's fused kernel when every parameter is on a CPU or
    CUDA device.

    On a CPU the default for-loop Adam spends about 57 ms per step on the 2^19 x 16 x 2 hash
    table with 2 threads, the fused one 10 ms; the warm start takes 1,600 such steps.
    """
    devices = {p.device.type for group in param_groups for p in group["params"]}
    return torch.optim.Adam(param_groups, fused=devices <= {"cpu", "cuda"}, **options)


def learning_rate(group: dict[str, Any], iteration: int, config: TrainConfig) -> float:
    """The learning rate of a parameter group at `iteration` (1-based)."""
    if config.schedule == "step":
        return group["lr_start"] * config.gamma ** ((iteration - 1) // config.step_size)
    final = group.get("lr_final", group["lr_start"])
    t = min(max((iteration - 1) / max(config.iterations - 1, 1), 0.0), 1.0)
    return math.exp(math.log(group["lr_start"]) * (1 - t) + math.log(final) * t)


class Trainer:
    """Fits a `Representation` to projections (module docstring).

    Args:
        representation: the model (an ``nn.Module`` implementing the contract).
        projections: (N, V, U) float32 measured line integrals of all views of `geo`.
        geo: the scan; the loss compares ``render_projections(geo, ids)`` to
            ``projections[ids]``.
        config: the loop.
        volume_gt: optional (Z, Y, X) ground truth on the grid of `geo`; when
            given, PSNR/SSIM (after normalising both volumes with the ground
            truth's range) are recorded every ``eval_every`` iterations.
        hooks: objects following `Hook`.
        out_dir: folder of checkpoints and TensorBoard logs; None keeps nothing.
    """

    def __init__(
        self,
        representation: Representation,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        config: TrainConfig = TrainConfig(),
        volume_gt: torch.Tensor | None = None,
        hooks: Sequence[Hook] = (),
        out_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(representation, torch.nn.Module) or not isinstance(
            representation, Representation
        ):
            raise TypeError("representation: expected an nn.Module implementing Representation")
        check_projections(projections, geo)
        if volume_gt is not None and tuple(volume_gt.shape) != geo.volume_shape:
            raise ValueError(
                f"volume_gt: expected shape {geo.volume_shape}, got {tuple(volume_gt.shape)}"
            )
        for hook in hooks:
            for name in ("every", "start", "loss_every"):
                check_int(f"hook.{name}", getattr(hook, name, None), 1)
        if config.checkpoint_every and out_dir is None:
            raise ValueError("out_dir: checkpoint_every > 0 needs an out_dir")
        if config.lambda_dssim > 0 and min(int(n) for n in geo.n_detector) < 11:
            raise ValueError(
                "config.lambda_dssim: the projections' 2D SSIM needs at least 11 x 11 pixels, "
                f"this scan's are {int(geo.n_detector[0])} rows x {int(geo.n_detector[1])} "
                "columns (set lambda_dssim to 0)"
            )
        if config.validation_views and max(config.validation_views) >= geo.n_views:
            raise ValueError(
                f"config.validation_views: expected indices below the scan's {geo.n_views} "
                f"views, got {config.validation_views}"
            )
        self.representation = representation
        self.geo = geo
        self.config = config
        self.hooks = list(hooks)
        self.out_dir = None if out_dir is None else Path(out_dir)
        device = next(representation.parameters()).device
        self.length_unit = float(max(geo.s_voxel)) / 2.0
        self.projection_unit = config.volume_scale * self.length_unit
        self.targets = projections.to(device=device, dtype=torch.float32) / self.projection_unit
        self.target_range = max(float(self.targets.max()), 1e-6)
        self.volume_gt = None if volume_gt is None else torch.as_tensor(volume_gt).float().cpu()
        self.iteration = 0
        self.history: dict[str, Any] = {"train": {}, "eval": {}, "wall_time": 0.0}
        self.references: dict[int, HookResult] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.view_order: list[int] = []
        self.optimizer = adam(
            [dict(g, lr_start=g["lr"]) for g in representation.param_groups()],
            betas=config.adam_betas,
            eps=config.adam_eps,
        )
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train to ``config.iterations`` (resuming from ``out_dir`` when a checkpoint exists).

        Returns:
            The history: ``train`` (per-iteration losses), ``eval`` (iteration,
            psnr, ssim and the loop's wall time in seconds before each evaluation),
            ``wall_time`` seconds.
        """
        if self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            self.load_checkpoint(self.out_dir / CHECKPOINT)
        c = self.config
        writer = self._tensorboard()
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not c.progress, desc="train")
        self.representation.train()
        started = time.perf_counter() - self.history["wall_time"]
        while self.iteration < c.iterations:
            self.iteration += 1
            parts = self.step(self.iteration)
            self._record(parts)
            self._run_hooks()
            last = self.iteration == c.iterations
            self.history["wall_time"] = time.perf_counter() - started
            if self.volume_gt is not None and (
                last or (c.eval_every and self.iteration % c.eval_every == 0)
            ):
                parts.update(self.evaluate())
                self.history["wall_time"] = time.perf_counter() - started
            if writer is not None:
                for name, value in parts.items():
                    writer.add_scalar(name, value, self.iteration)
            if c.checkpoint_every and (last or self.iteration % c.checkpoint_every == 0):
                self.save_checkpoint(self.out_dir / CHECKPOINT)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4g}")
        bar.close()
        if writer is not None:
            writer.close()
        return self.history

    def _record(self, parts: dict[str, float]) -> None:
        """Append this iteration's loss terms to the history, one list per term aligned with
        "iteration"; a term absent at an iteration (e.g. a pseudo-reference term added every
        few iterations) is recorded as NaN."""
        train = self.history["train"]
        done = len(train.get("iteration", []))
        for name in set(train) | set(parts):
            if name != "iteration":
                train.setdefault(name, [math.nan] * done).append(parts.get(name, math.nan))
        train.setdefault("iteration", []).append(self.iteration)

    def step(self, iteration: int) -> dict[str, float]:
        """One optimiser step; returns the loss terms as floats."""
        c = self.config
        rep = self.representation
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(group, iteration, c)
        if c.validation_views and iteration == c.validation_until + 1:
            self.view_order = []  # the validation views join the loss from this pass on
        ids = self._next_views()
        pred = rep.render_projections(self.geo, ids) / self.projection_unit
        target = self.targets[ids]
        terms = {"projection": projection_loss(pred, target, c.projection_loss)}
        if c.lambda_dssim > 0:
            terms["dssim"] = c.lambda_dssim * dssim_loss(pred, target, self.target_range)
        if c.lambda_tv > 0:
            start, size = self._random_crop(c.tv_crop)
            crop = rep.query_box(self.geo, start, size) / c.volume_scale
            terms["tv"] = c.lambda_tv * tv3d_loss(crop)
        for key, result in sorted(self.references.items()):
            if iteration % self.hooks[key].loss_every == 0:
                terms[f"reference{key}"] = result.weight * self._reference_loss(result)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rep.after_backward(iteration, self.optimizer)
        self.optimizer.step()
        rep.after_step(iteration, self.optimizer)
        out = {name: float(value.detach()) for name, value in terms.items()}
        out["loss"] = float(loss.detach())
        return out

    def _reference_loss(self, result: HookResult) -> torch.Tensor:
        reference = result.reference
        if result.crop is None:
            volume = self.representation.to_volume(self.geo)
        else:
            start, size = self._random_crop(result.crop)
            volume = self.representation.query_box(self.geo, start, size)
            reference = reference[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))]
        return ssim3d_loss(volume / self.config.volume_scale, reference / self.config.volume_scale)

    def training_data(self) -> tuple[torch.Tensor, ConeBeamGeometry]:
        """The (N', V, U) measured line integrals (CPU) and the geometry of the views the fit
        may use at this iteration: a prior's data-consistency step must not see the
        validation views a guard judges it on."""
        views = self.config.training_views(self.geo.n_views, self.iteration)
        projections = (self.targets[views] * self.projection_unit).detach().cpu()
        geo = self.geo if len(views) == self.geo.n_views else self.geo.subset(views)
        return projections, geo

    @property
    def holding_out(self) -> bool:
        """Whether the fit has not yet seen `config.validation_views` (there are some)."""
        c = self.config
        return bool(c.validation_views) and self.iteration <= c.validation_until

    def _next_views(self) -> list[int]:
        pool = self.config.training_views(self.geo.n_views, self.iteration)
        ids = []
        while len(ids) < min(self.config.views_per_iteration, len(pool)):
            if not self.view_order:
                order = torch.randperm(len(pool), generator=self.generator).tolist()
                self.view_order = [pool[i] for i in order]
            candidate = self.view_order.pop()
            if candidate not in ids:
                ids.append(candidate)
        return ids

    def _random_crop(self, side: int) -> tuple[list[int], list[int]]:
        size = [min(side, int(n)) for n in self.geo.n_voxel]
        start = [
            int(torch.randint(0, int(n) - s + 1, (1,), generator=self.generator))
            for n, s in zip(self.geo.n_voxel, size, strict=True)
        ]
        return start, size

    def _run_hooks(self) -> None:
        for key, hook in enumerate(self.hooks):
            if self.iteration < hook.start or (self.iteration - hook.start) % hook.every:
                continue
            result = hook(self, self.iteration)
            if result is None:
                continue
            if not isinstance(result, HookResult):
                raise TypeError(f"hook {key}: expected a HookResult or None, got {type(result)}")
            if result.crop is not None and not 11 <= result.crop:
                raise ValueError(f"hook {key}: crop must be at least 11 (the SSIM window)")
            if tuple(result.reference.shape) != self.geo.volume_shape:
                raise ValueError(
                    f"hook {key}: reference shape {tuple(result.reference.shape)} != "
                    f"{self.geo.volume_shape}"
                )
            if result.weight == 0:  # e.g. rejected by a guard: the hook's term is dropped
                self.references.pop(key, None)
                continue
            device = self.targets.device
            self.references[key] = dataclasses.replace(
                result, reference=result.reference.detach().to(device, torch.float32)
            )

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def volume(self) -> torch.Tensor:
        """(Z, Y, X) current reconstruction on the grid of `geo` (eval mode, CPU)."""
        rep = self.representation
        was_training = rep.training
        rep.eval()
        volume = rep.to_volume(self.geo).detach().float().cpu()
        rep.train(was_training)
        return volume

    def evaluate(self) -> dict[str, float]:
        """PSNR and SSIM3D of the current volume against the ground truth, recorded in the
        history with the iteration and the loop's wall time so far."""
        if self.volume_gt is None:
            raise ValueError("volume_gt: evaluation needs the ground-truth volume")
        scores = truth_scores(self.volume(), self.volume_gt)
        record = self.history["eval"]
        record.setdefault("iteration", []).append(self.iteration)
        record.setdefault("seconds", []).append(self.history["wall_time"])
        for name, value in scores.items():
            record.setdefault(name, []).append(value)
        return scores

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | Path) -> None:
        """Write everything a resume needs to `path` atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "iteration": self.iteration,
            "representation": self.representation.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "references": {k: dataclasses.asdict(r) for k, r in self.references.items()},
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks],
            "view_order": self.view_order,
            "rng": {
                "loop": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": dataclasses.asdict(self.config),
        }
        with atomic_file(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by `save_checkpoint`."""
        state = torch.load(Path(path), map_location="cpu", weights_only=False)
        if _resume_key(state["config"]) != _resume_key(dataclasses.asdict(self.config)):
            raise ValueError(f"path: checkpoint {path} was written with another TrainConfig")
        self.representation.load_state_dict(state["representation"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = state["iteration"]
        self.history = state["history"]
        device = self.targets.device
        self.references = {
            k: HookResult(**dict(r, reference=r["reference"].to(device)))
            for k, r in state["references"].items()
        }
        for hook, hook_state in zip(self.hooks, state["hooks"], strict=True):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        self.view_order = state["view_order"]
        rng = state["rng"]
        self.generator.set_state(rng["loop"])
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        if self.out_dir is None:
            raise ValueError("out_dir: tensorboard logging needs an out_dir")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "tensorboard is not installed: pip install tensorboard (or the [logging] extra)"
            ) from error
        return SummaryWriter(str(self.out_dir / "tensorboard"))


def plot_curves(history: dict[str, Any], path: str | Path) -> None:
    """Write a PNG of the training loss and, when evaluated, PSNR/SSIM against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evaluation = history.get("train", {}), history.get("eval", {})
    if not train.get("iteration"):
        raise ValueError("history: has no training iterations to plot")
    panels = 2 if evaluation.get("iteration") else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    ax = axes[0, 0]
    steps = np.asarray(train["iteration"])
    for name, values in train.items():
        if name != "iteration":
            values = np.asarray(values, dtype=float)
            kept = np.isfinite(values)  # terms added every few iterations are NaN in between
            ax.plot(steps[kept], values[kept], label=name, lw=1)
    ax.set(
        xlabel="iteration", ylabel="loss (normalised units)", yscale="log", title="training loss"
    )
    ax.legend(fontsize=7)
    if panels == 2:
        ax = axes[0, 1]
        ax.plot(evaluation["iteration"], evaluation["psnr"], "o-", color="C0")
        ax.set(xlabel="iteration", ylabel="PSNR (dB)", title="against the ground truth")
        twin = ax.twinx()
        twin.plot(evaluation["iteration"], evaluation["ssim"], "s--", color="C1")
        twin.set_ylabel("SSIM3D", color="C1")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
