"""The two reconstruction recipes on `nr.train.Trainer`: a hash-grid field and R2-Gaussian.

    volume, history = reconstruct_hashgrid(projections, geo, HashGridReconConfig())
    volume, history = reconstruct_gaussians(
        projections, geo, GaussianReconConfig.default(shape=geo.volume_shape, views=geo.n_views)
    )

Both start with an FDK reconstruction of the projections: its 99.9th percentile is the
attenuation that counts as 1 in the losses (``TrainConfig.volume_scale``, see `nr.train`).
The hash-grid recipe also sets the field's output range and initial value from it. Both
then warm up on a classical reconstruction (`nr.warm_start`, ASD-POCS by default): the
Gaussians are seeded from its voxels (`nr.gaussians.init`) and both representations are
fitted to it before the projection loop. The Gaussian recipe minimises R2-Gaussian's
L1 + 0.25 D-SSIM on projections + 0.05 3D TV on 32^3 crops with exponentially decaying
learning rates, densifying on the schedule of `DensityControl`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nr.fields import FieldConfig, HashGridConfig, HashGridField
from nr.gaussians import DensityControl, GaussianConfig, GaussianModel, InitConfig, initial_points
from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d
from nr.ops.fdk import fdk
from nr.ops.projector import check_projections
from nr.representation import Representation
from nr.train import CHECKPOINT, Hook, TrainConfig, Trainer
from nr.warm_start import WarmStartConfig, classical_start, fit_to_volume

# The default hash-grid reconstruction, sized for a 128^3 scan with 50 views on 2 CPU cores
# (docs/fields.md): 8 levels of scale 1.5 (finest 273 cells; NAF's 16 levels of scale 2 reach
# 524288 cells and cost 1.5x more per step), 200 steps on the full grid (250 took 598-602 s at
# 50 views; on noisy views the PSNR is flat after 150), TV of weight 0.03 on 64^3 crops (0.05
# ends 0.2 dB lower on 50 noisy views, docs/training.md), and a warm-start fit of 1600 steps on
# 32^3 crops, which holds the ASD-POCS start within 0.1 dB where 200 steps on 64^3 crops lose
# 1.5 dB.
DEFAULT_FIELD = FieldConfig(encoding=HashGridConfig(n_levels=8, per_level_scale=1.5))
DEFAULT_TRAIN = TrainConfig(
    iterations=200, views_per_iteration=10, eval_every=50, lambda_tv=0.03, tv_crop=64
)
DEFAULT_WARM_START = WarmStartConfig(steps=1600, crop=32)
# Gaussians fit a volume slowly at their loop's rates: 20,000 of them reach 26.2 dB on the
# 128^3 ASD-POCS start after 200 steps on 64^3 crops, 31.6 dB after 3,200 steps on 32^3
# crops at 3x the rates, in twice the time (docs/gaussians.md).
DEFAULT_GAUSSIAN_WARM_START = WarmStartConfig(steps=3200, crop=32, lr_factor=3.0)
# The grid the Gaussians' base recipe is sized for (`GaussianReconConfig.default`).
SMALL_GRID = 64**3
# The Gaussians' learning rates (`GaussianConfig` fields, each with a "_final" twin).
LEARNING_RATES = ("lr_position", "lr_density", "lr_scale", "lr_rotation")


@dataclass(frozen=True)
class WarmStart:
    """A representation fitted to a scan's classical start: where its loops begin.

    Attributes:
        representation: the fitted field or Gaussians (each loop trains a copy).
        config: the recipe, with the scale resolved from the FDK (`auto_scale`).
        record: what a loop's history records under "warm_start".
        seconds: time spent on it (FDK, classical start, fit).
    """

    representation: Representation
    config: Any  # HashGridReconConfig | GaussianReconConfig
    record: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class HashGridReconConfig:
    """`reconstruct_hashgrid`: the field, the loop, and how the attenuation scale is set.

    The defaults (`DEFAULT_FIELD`, `DEFAULT_TRAIN`, `DEFAULT_WARM_START`) are sized for a
    128^3 scan with 50 views on 2 CPU cores.

    Attributes:
        field: the hash-grid field.
        train: the loop.
        auto_scale: set ``train.volume_scale`` to the 99.9th percentile of an
            FDK reconstruction of the projections, ``field.attenuation_bound``
            to ``bound_factor`` times it and ``field.initial_attenuation`` to the
            FDK volume's mean (clipped to [0.01, 0.5] of the bound); the
            resolved values are in the returned history's "config".
        bound_factor: headroom of the field's output range over the scale.
        coarse_fraction: sets ``field.coarse_iterations`` to this fraction of
            ``train.iterations`` (the coarse-to-fine phase); None keeps the field's value.
        warm_start: the classical reconstruction the field is fitted to before the loop.
    """

    field: FieldConfig = dataclasses.field(default_factory=lambda: DEFAULT_FIELD)
    train: TrainConfig = dataclasses.field(default_factory=lambda: DEFAULT_TRAIN)
    warm_start: WarmStartConfig = dataclasses.field(default_factory=lambda: DEFAULT_WARM_START)
    auto_scale: bool = True
    bound_factor: float = 2.0
    coarse_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.coarse_fraction is not None and not 0 <= self.coarse_fraction <= 1:
            raise ValueError(
                f"coarse_fraction: expected a number in [0, 1] or None, got {self.coarse_fraction}"
            )


def reconstruct_hashgrid(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: HashGridReconConfig = HashGridReconConfig(),
    volume_gt: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    hooks: Sequence[Hook] = (),
    start: WarmStart | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit a `HashGridField` to the projections of `geo`.

    Args:
        projections: (N, V, U) line integrals of all views of `geo`.
        geo: the scan.
        config: field, loop and scaling.
        volume_gt: optional (Z, Y, X) ground truth for PSNR/SSIM curves.
        out_dir: checkpoints (resumed when present) and TensorBoard logs.
        hooks: hooks of the loop (e.g. a SliceFixer prior).
        start: the warm start of these projections and `config` (`warm_start`), when
            several loops share it; None fits it here.

    Returns:
        The (Z, Y, X) float32 CPU volume (attenuation per mm) and the history,
        with the resolved configuration under "config", the warm start under "warm_start"
        and the seconds before the loop (FDK, warm start, set-up) under "setup_seconds".
    """
    if not isinstance(config, HashGridReconConfig):
        raise TypeError(f"config: expected a HashGridReconConfig, got {type(config).__name__}")
    check_projections(projections, geo)
    shared = start is not None
    if start is None:
        start = _hashgrid_start(projections, geo, config, volume_gt, out_dir)
    return _loop(projections, geo, start, shared, volume_gt, out_dir, hooks)


def _hashgrid_start(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: HashGridReconConfig,
    volume_gt: torch.Tensor | None,
    out_dir: str | Path | None,
) -> WarmStart:
    called = time.perf_counter()
    if config.auto_scale:
        reference = fdk(projections.float().cpu(), geo)
        scale = _fdk_scale(reference)
        bound = config.bound_factor * scale
        mean = float(reference.flatten()[::7].clamp(min=0).mean())
        initial = min(max(mean, 0.01 * bound), 0.5 * bound)
        config = dataclasses.replace(
            config,
            field=dataclasses.replace(
                config.field, attenuation_bound=bound, initial_attenuation=initial
            ),
            train=dataclasses.replace(config.train, volume_scale=scale),
        )
    if config.coarse_fraction is not None:
        coarse = int(config.coarse_fraction * config.train.iterations)
        config = dataclasses.replace(
            config, field=dataclasses.replace(config.field, coarse_iterations=coarse)
        )
    began = time.perf_counter()
    start = _classical_start(projections, geo, config.train, config.warm_start)
    warm = {"start_seconds": time.perf_counter() - began}
    field = HashGridField(geo, config.field).to(projections.device)
    warm |= _warm_up(field, geo, start, config.train, config.warm_start, volume_gt, out_dir)
    return WarmStart(field, config, warm, time.perf_counter() - called)


@dataclass(frozen=True)
class GaussianReconConfig:
    """`reconstruct_gaussians`: initialisation, model, loop and the attenuation scale.

    Attributes:
        init: initial Gaussians ("volume" mode uses FDK of the training views).
        model: the Gaussians, learning rates and density control.
        train: the loop (R2-Gaussian's losses: L1 + 0.25 D-SSIM + 0.05 TV on 32^3 crops).
        auto_scale: set ``train.volume_scale`` and ``model.density_unit`` to the 99.9th
            percentile of the FDK reconstruction (resolved values in the history's "config").
        warm_start: the classical reconstruction that seeds the Gaussians (in "volume"
            init mode; FDK when its method is "none") and that they are fitted to before
            the loop.
    """

    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    model: GaussianConfig = dataclasses.field(default_factory=GaussianConfig)
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            iterations=30_000, views_per_iteration=1, lambda_dssim=0.25, lambda_tv=0.05
        )
    )
    auto_scale: bool = True
    warm_start: WarmStartConfig = dataclasses.field(default_factory=WarmStartConfig)

    @classmethod
    def default(
        cls,
        iterations: int | None = None,
        shape: Sequence[int] | None = None,
        views: int | None = None,
    ) -> GaussianReconConfig:
        """The CPU default: R2-Gaussian's recipe on a shorter schedule, sized to the grid.

        Up to 64^3 voxels (or `shape` None): a warm start of 3,200 steps on 32^3 crops at
        3x the model's learning rates (`DEFAULT_GAUSSIAN_WARM_START`), then 500 iterations
        of 4 views (2,000 rendered views; R2-Gaussian renders 30,000, one per iteration),
        20,000 initial Gaussians (R2-Gaussian: 50,000) and at most 50,000 (R2-Gaussian:
        500,000). Larger grids need more Gaussians: 20,000 can not hold a 128^3 volume
        (docs/gaussians.md, "Sizing to the grid"). With k = cbrt(voxels / 64^3) > 1 the
        recipe takes one initial Gaussian per 20 voxels (at most twice that many after
        densification), placed by detail (`InitConfig.detail_floor` 0.1: in 3,200 warm-start
        steps they fit the volume nearly as well as uniformly placed ones in 6,400), fitted on
        crops centred on the object (`WarmStartConfig.crop_sampling` "attenuation"; +0.4
        dB at 128^3), and the same 2,000 rendered views in k^2 x 4 views per iteration for
        500 / k^2 iterations: one voxelization serves all views of an iteration, and it
        costs more on a larger grid. At 128^3: 104,857 Gaussians, 3,200 steps, 125
        iterations of 16 views. That loop differs from R2-Gaussian's in two more ways
        (docs/gaussians.md, "The loop's TV and rates"): its 3D TV covers the whole grid,
        where R2-Gaussian's covers one 32^3 crop per iteration (1/64 of a 128^3 grid: over
        125 iterations each voxel would meet it about twice), cut from the volume the render
        voxelized (`GaussianModel.query_box`: no extra voxelization), with a weight falling
        with the views, 1.25 / `views` (R2-Gaussian's 0.05 at 25 views and below, or when
        `views` is None); and its learning rates are twice R2-Gaussian's starting rates,
        held constant (R2-Gaussian's tenfold decay is made for 30,000 iterations; the
        warm-start fit keeps 3x R2-Gaussian's rates). The density-control schedule keeps
        R2-Gaussian's proportions of the run (start after 1/60, stop at 1/2) with a
        densification every 25 iterations.

        Args:
            iterations: overrides the iteration count; the densification schedule scales
                with it.
            shape: (Z, Y, X) voxels of the scan the recipe is for.
            views: the scan's number of views (sets the TV weight above 64^3 voxels).
        """
        if iterations is not None and (not isinstance(iterations, int) or iterations < 1):
            raise ValueError(f"iterations: expected a positive int, got {iterations!r}")
        if shape is not None and (len(shape) != 3 or any(int(n) < 1 for n in shape)):
            raise ValueError(f"shape: expected 3 positive voxel counts, got {tuple(shape)}")
        if views is not None and (not isinstance(views, int) or views < 1):
            raise ValueError(f"views: expected a positive int, got {views!r}")
        voxels = SMALL_GRID if shape is None else math.prod(int(n) for n in shape)
        k = max(1.0, (voxels / SMALL_GRID) ** (1 / 3))
        n_points = max(20_000, voxels // 20)  # 20,000 up to 64^3 voxels
        iterations = round(500 / k**2) if iterations is None else iterations
        control = DensityControl(
            start=iterations // 60,
            until=iterations // 2,
            every=25,
            max_gaussians=max(50_000, 2 * n_points),
        )
        init = InitConfig(n_points=n_points)
        model = GaussianConfig(density_control=control, rendering="voxel")
        train = TrainConfig(
            iterations=iterations, views_per_iteration=round(4 * k**2), eval_every=0
        )
        warm_start = DEFAULT_GAUSSIAN_WARM_START
        if k > 1:
            init = dataclasses.replace(init, detail_floor=0.1)
            rates = {n: 2 * getattr(model, n) for n in LEARNING_RATES}
            model = dataclasses.replace(
                model, **rates, **{f"{n}_final": rate for n, rate in rates.items()}
            )
            train = dataclasses.replace(
                train,
                lambda_tv=train.lambda_tv if views is None else min(train.lambda_tv, 1.25 / views),
                tv_crop=max(int(n) for n in shape),
            )
            warm_start = dataclasses.replace(
                warm_start, crop_sampling="attenuation", lr_factor=warm_start.lr_factor / 2
            )
        return cls(init=init, model=model, train=train, warm_start=warm_start)


def reconstruct_gaussians(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: GaussianReconConfig | None = None,
    volume_gt: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    hooks: Sequence[Hook] = (),
    start: WarmStart | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit Gaussians to the projections of `geo`; arguments as `reconstruct_hashgrid`.

    `config` (initialisation, model, loop and scaling) defaults to
    `GaussianReconConfig.default(shape=geo.volume_shape, views=geo.n_views)`. Returns the
    (Z, Y, X) float32 CPU volume (attenuation per mm) and the history, with the resolved
    configuration under "config", the final number of Gaussians under "gaussians" and the
    other entries of `reconstruct_hashgrid`'s.
    """
    if config is None:
        config = GaussianReconConfig.default(shape=geo.volume_shape, views=geo.n_views)
    if not isinstance(config, GaussianReconConfig):
        raise TypeError(f"config: expected a GaussianReconConfig, got {type(config).__name__}")
    check_projections(projections, geo)
    shared = start is not None
    if start is None:
        start = _gaussian_start(projections, geo, config, volume_gt, out_dir)
    return _loop(projections, geo, start, shared, volume_gt, out_dir, hooks)


def _gaussian_start(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: GaussianReconConfig,
    volume_gt: torch.Tensor | None,
    out_dir: str | Path | None,
) -> WarmStart:
    called = time.perf_counter()
    reference = fdk(projections.float().cpu(), geo)
    unit = 1.0
    if config.auto_scale:
        unit = _fdk_scale(reference)
        config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, density_unit=unit),
            train=dataclasses.replace(config.train, volume_scale=unit),
        )
    began = time.perf_counter()
    start = _classical_start(projections, geo, config.train, config.warm_start)
    warm = {"start_seconds": time.perf_counter() - began}
    seed_volume = reference if start is None else start
    means, densities, scales = initial_points(geo, config.init, seed_volume, unit)
    model = GaussianModel(geo, means, densities, scales, config.model).to(projections.device)
    warm |= _warm_up(model, geo, start, config.train, config.warm_start, volume_gt, out_dir)
    return WarmStart(model, config, warm, time.perf_counter() - called)


def _loop(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    start: WarmStart,
    shared: bool,
    volume_gt: torch.Tensor | None,
    out_dir: str | Path | None,
    hooks: Sequence[Hook],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The projection loop from the warm start's representation (from a copy when the start
    is `shared` with other loops)."""
    began = time.perf_counter()
    representation = copy.deepcopy(start.representation) if shared else start.representation
    config = start.config
    trainer = Trainer(representation, projections, geo, config.train, volume_gt, hooks, out_dir)
    setup = start.seconds + time.perf_counter() - began
    history = trainer.run()
    history["config"] = dataclasses.asdict(config)
    history["warm_start"] = dict(start.record)
    history["setup_seconds"] = setup
    if isinstance(representation, GaussianModel):
        history["gaussians"] = representation.count
    return trainer.volume(), history


def _classical_start(
    projections: torch.Tensor, geo: ConeBeamGeometry, train: TrainConfig, config: WarmStartConfig
) -> torch.Tensor | None:
    """The warm start's classical volume, from every view or without the loop's validation
    views (`WarmStartConfig.sees_validation_views`)."""
    if config.sees_validation_views or not train.validation_views:
        return classical_start(projections, geo, config.method)
    held_out = set(train.validation_views)
    fitted = [view for view in range(geo.n_views) if view not in held_out]
    return classical_start(projections[fitted], geo.subset(fitted), config.method)


def _warm_up(
    representation: Representation,
    geo: ConeBeamGeometry,
    start: torch.Tensor | None,
    train: TrainConfig,
    config: WarmStartConfig,
    volume_gt: torch.Tensor | None,
    out_dir: str | Path | None,
) -> dict[str, Any]:
    """Fit `representation` to the classical volume `start` unless there is none or the
    loop will resume from a checkpoint in `out_dir`; returns what the history records."""
    record: dict[str, Any] = {"method": config.method, "steps": 0}
    if start is None or config.steps == 0:
        return record
    if volume_gt is not None:
        volume_gt = torch.as_tensor(volume_gt).float().cpu()
        record["start_psnr"] = float(psnr3d(start, volume_gt))
    if out_dir is not None and (Path(out_dir) / CHECKPOINT).exists():
        record["skipped"] = "resumed from a checkpoint"
        return record
    began = time.perf_counter()
    losses = fit_to_volume(representation, geo, start, train.volume_scale, config, train.progress)
    record.update(
        steps=config.steps, final_loss=losses[-1], fit_seconds=time.perf_counter() - began
    )
    if volume_gt is not None:
        with torch.no_grad():
            record["fitted_psnr"] = float(psnr3d(representation.to_volume(geo).cpu(), volume_gt))
    return record


def _fdk_scale(reference: torch.Tensor) -> float:
    """The attenuation that counts as 1: the 99.9th percentile of every 7th voxel of the
    (Z, Y, X) FDK reconstruction `reference` (a subsample: quantile sorts its input)."""
    scale = float(torch.quantile(reference.flatten()[::7], 0.999))
    if not scale > 0:
        raise ValueError("projections: the FDK reconstruction has no positive attenuation")
    return scale


REPRESENTATIONS = ("gaussians", "hashgrid")


def recipe(
    name: str,
    shape: Sequence[int] | None = None,
    views: int | None = None,
    *,
    iterations: int | None = None,
    seed: int = 0,
    warm_start: str = "asd_pocs",
    warm_start_steps: int | None = None,
    gaussian_rendering: str | None = None,
) -> GaussianReconConfig | HashGridReconConfig:
    """The default configuration of the representation `name` ("gaussians" or "hashgrid").

    Args:
        name: one of `REPRESENTATIONS`.
        shape: (Z, Y, X) grid the Gaussians' recipe is sized to (`GaussianReconConfig.default`).
        views: the scan's number of views (the Gaussians' TV weight above 64^3 voxels).
        iterations: overrides the loop's iteration count.
        seed: seeds the loop.
        warm_start: method of the classical volume fitted first (`nr.warm_start.METHODS`).
        warm_start_steps: steps of that fit (None: the recipe's).
        gaussian_rendering: "voxel" or "rasterize" (None: the recipe's).

    The loop checkpoints ten times per run when it is given an ``out_dir``, so that the
    same call resumes a killed run.
    """
    if name not in REPRESENTATIONS:
        raise ValueError(f"name: expected one of {REPRESENTATIONS}, got {name!r}")
    if name == "gaussians":
        config = GaussianReconConfig.default(iterations, shape, views)
        if gaussian_rendering is not None:
            model = dataclasses.replace(config.model, rendering=gaussian_rendering)
            config = dataclasses.replace(config, model=model)
    else:
        config = HashGridReconConfig()
    train = config.train
    if iterations is not None:
        train = dataclasses.replace(train, iterations=iterations)
    every = max(1, train.iterations // 10)
    train = dataclasses.replace(train, seed=seed, checkpoint_every=every)
    warm = dataclasses.replace(config.warm_start, method=warm_start)
    if warm_start_steps is not None:
        warm = dataclasses.replace(warm, steps=warm_start_steps)
    return dataclasses.replace(config, train=train, warm_start=warm)


def warm_start(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: GaussianReconConfig | HashGridReconConfig,
    volume_gt: torch.Tensor | None = None,
) -> WarmStart:
    """Everything before the loop of `reconstruct` (FDK scale, classical start, the
    representation fitted to it), for several loops on the same projections and recipe
    (e.g. DiffNR and the NR alone): each loop starts from its own copy, so they run exactly
    as if each had fitted it. Arguments as `reconstruct`."""
    check_projections(projections, geo)
    if isinstance(config, GaussianReconConfig):
        return _gaussian_start(projections, geo, config, volume_gt, None)
    if isinstance(config, HashGridReconConfig):
        return _hashgrid_start(projections, geo, config, volume_gt, None)
    raise TypeError(f"config: expected a recon config, got {type(config).__name__}")


def reconstruct(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: GaussianReconConfig | HashGridReconConfig,
    volume_gt: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    hooks: Sequence[Hook] = (),
    start: WarmStart | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`reconstruct_gaussians` or `reconstruct_hashgrid`, by the type of `config`."""
    if isinstance(config, GaussianReconConfig):
        return reconstruct_gaussians(projections, geo, config, volume_gt, out_dir, hooks, start)
    return reconstruct_hashgrid(projections, geo, config, volume_gt, out_dir, hooks, start)
