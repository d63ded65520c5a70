"""DiffNR as a library call: a neural representation fitted with a prior's pseudo-references.

    from nr.diffnr import DiffNRConfig, run_diffnr
    from slicefixer.prior import load_prior

    config = DiffNRConfig.default(scan.geo)             # this size and view count's defaults
    result = run_diffnr(scan, config, load_prior(config))
    result.volume, result.metrics["diffnr"], result.metrics["guard"]

The neural representation (`nr.recon`) is fitted under the guard's validation protocol
(`nr.guard`); from `start` (a fraction of the loop) every `every` the prior
(`nr.priors.protocol.Prior`) turns the current volume into a pseudo-reference, the guard
judges it on the held-out views, and an accepted one adds ``weight * (1 - SSIM3D)`` to the
loss every `loss_every` iterations. Every default lives in `DiffNRConfig` and
`DiffNRConfig.default`; docs/diffnr.md gives the measurements behind them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nr.geometry import SLICE_AXES, ConeBeamGeometry, largest_slice_side
from nr.guard import GuardConfig, HallucinationGuard
from nr.io import Scan
from nr.metrics import scan_quality, truth_scores
from nr.ops.fdk import fdk
from nr.priors.protocol import Prior, PriorHook, PriorSchedule
from nr.recon import (
    LEARNING_RATES,
    REPRESENTATIONS,
    GaussianReconConfig,
    recipe,
    reconstruct,
    warm_start,
)
from nr.train import CHECKPOINT
from nr.validation import check_choice, check_int, check_number
from nr.warm_start import METHODS as WARM_START_METHODS

LOG = logging.getLogger("nr")
PRIORS = ("slicefixer", "diffusionblend", "none")
AXES = tuple(SLICE_AXES)
# The default prior up to SHIPPED_RESOLUTION-pixel slices, and that resolution (docs/diffnr.md,
# "Defaults"; held-out figures in docs/BENCHMARKS.md, "DiffNR on held-out volumes").
DEFAULT_PRIOR = "diffusionblend"
SHIPPED_RESOLUTION = 64
# Fewer views: no prior by default (on a held-out 10-view scan the guard's held-out views cost
# the NR more than the prior gained back; docs/diffnr.md, "Defaults").
MIN_PRIOR_VIEWS = 25


@dataclass(frozen=True)
class DiffNRConfig:
    """Everything a DiffNR run depends on besides the scan and the prior's weights.

    Attributes:
        nr: the representation, "gaussians" or "hashgrid".
        prior: "slicefixer", "diffusionblend" or "none" (the NR alone, under `guard`'s
            protocol unless `guard` is None).
        checkpoint: folder of the prior's weights; None = the one shipped in assets/.
        start: first prior call, as a fraction of the loop.
        every: loop fraction between prior calls (calls stop at the guard's release).
        weight: lambda of ``1 - SSIM3D(volume, reference)`` (DiffNR paper and release: 1).
        loss_every: iterations between evaluations of that term; None = 10 (the release),
            or 1 for a loop whose learning rates stay constant (`loss_every_for`).
        crop: side of a random cubic crop of the term; None = the full volume.
        axes: SliceFixer: slicing axes repaired and averaged ("z" = axial).
        fixer_cg: SliceFixer: CGLS iterations on the fitted views started from each repair.
        blend_t0: DiffusionBlend: diffusion time (of 1000) the current volume is noised to.
        blend_samples: DiffusionBlend: draws averaged into each reference.
        guard: the validation protocol and the acceptance rule (`nr.guard.GuardConfig`);
            None (only without a prior): no views held out, the NR fits every view.
        iterations: NR loop iterations; None = the representation's recipe.
        seed: seeds the loop and the prior's draws.
        warm_start: classical volume the NR is fitted to first (`nr.warm_start.METHODS`).
        warm_start_steps: steps of that fit; None = the recipe's.
        gaussian_rendering: "voxel" or "rasterize"; None = the recipe's.
        rationale: one line on why these defaults (written by `default`; logged by the run).
    """

    nr: str = "gaussians"
    prior: str = DEFAULT_PRIOR
    checkpoint: str | None = None
    start: float = 0.5
    every: float = 0.125
    weight: float = 3.0
    loss_every: int | None = None
    crop: int | None = None
    axes: tuple[str, ...] = ("z",)
    fixer_cg: int = 5
    blend_t0: int = 50
    blend_samples: int = 4
    guard: GuardConfig | None = dataclasses.field(default_factory=GuardConfig)
    iterations: int | None = None
    seed: int = 0
    warm_start: str = "asd_pocs"
    warm_start_steps: int | None = None
    gaussian_rendering: str | None = None
    rationale: str = "given by the caller"

    def __post_init__(self) -> None:
        check_choice("nr", self.nr, REPRESENTATIONS)
        check_choice("prior", self.prior, PRIORS)
        check_number("start", self.start, 0.0, 1.0, open_low=True)
        check_number("every", self.every, 0.0, 1.0, open_low=True)
        check_number("weight", self.weight, 0.0)
        for name in ("loss_every", "iterations", "warm_start_steps"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1 if name != "warm_start_steps" else 0)
        if self.crop is not None:
            check_int("crop (the SSIM window is 11)", self.crop, 11)
        axes = tuple(self.axes)
        if not axes or len(set(axes)) != len(axes) or not set(axes) <= set(AXES):
            raise ValueError(f"axes: expected distinct axes among {AXES}, got {self.axes!r}")
        object.__setattr__(self, "axes", axes)
        check_int("fixer_cg", self.fixer_cg, 0)
        check_int("blend_t0", self.blend_t0, 0)
        check_int("blend_samples", self.blend_samples, 1)
        check_int("seed", self.seed, 0)
        if self.guard is None and self.prior != "none":
            raise ValueError(f"guard: prior {self.prior!r} needs a guard (None: only without one)")
        if not isinstance(self.guard, GuardConfig | None):
            raise TypeError(f"guard: expected a GuardConfig, got {type(self.guard).__name__}")
        check_choice("warm_start", self.warm_start, WARM_START_METHODS)
        check_choice("gaussian_rendering", self.gaussian_rendering, (None, "voxel", "rasterize"))

    @classmethod
    def default(
        cls, geo: ConeBeamGeometry, nr: str = "gaussians", prior: str | None = None
    ) -> DiffNRConfig:
        """The defaults for a scan of this size and view count (docs/diffnr.md, "Defaults").

        Args:
            geo: the scan.
            nr: the representation.
            prior: a prior to use whatever the size (its settings are the defaults for `nr`);
                None lets the scan's size decide.
        """
        side = largest_slice_side(geo.volume_shape, ("z",))
        guard: GuardConfig | None = GuardConfig()
        if prior is not None:
            why = f"prior {prior} chosen by the caller"
        elif side > SHIPPED_RESOLUTION:
            prior, guard = "none", None
            why = (
                f"slices of {side} px exceed the shipped priors' {SHIPPED_RESOLUTION} px: no "
                "prior, so no views held out for a guard (the NR fits every view)"
            )
        elif geo.n_views < MIN_PRIOR_VIEWS:
            prior, guard = "none", None
            why = (
                f"{geo.n_views} views < {MIN_PRIOR_VIEWS}: at 10 views the guard's held-out "
                "views cost the NR more than the prior gained on a held-out scan, so no prior "
                "and no views held out (the NR fits every view)"
            )
        else:
            prior = DEFAULT_PRIOR
            why = (
                f"slices of {side} px <= the shipped priors' {SHIPPED_RESOLUTION} px and "
                f"{geo.n_views} views; on the held-out benchmark at 25 views DiffusionBlend "
                "ended above the NR fitted to every view (the SliceFixer's references mostly "
                "harmed)"
            )
        gaussians = nr == "gaussians"
        return cls(
            nr=nr,
            prior=prior,
            guard=guard,
            # the fields' defaults are the Gaussians'; the hash grid keeps the paper's weight,
            # no data consistency and, with the SliceFixer, one reference (docs/diffnr.md)
            weight=cls.weight if gaussians else 1.0,
            fixer_cg=cls.fixer_cg if gaussians else 0,
            every=1.0 if not gaussians and prior == "slicefixer" else cls.every,
            rationale=f"{nr} + {prior}: {why}",
        )

    def recon_config(self, geo: ConeBeamGeometry) -> Any:
        """The NR's configuration for `geo`, under the guard's validation protocol if any."""
        config = recipe(
            self.nr,
            geo.volume_shape,
            geo.n_views,
            iterations=self.iterations,
            seed=self.seed,
            warm_start=self.warm_start,
            warm_start_steps=self.warm_start_steps,
            gaussian_rendering=self.gaussian_rendering,
        )
        if self.guard is None:
            return config
        train = self.guard.protocol(config.train, geo.n_views)
        warm_start = dataclasses.replace(
            config.warm_start, sees_validation_views=not self.guard.blind_warm_start
        )
        return dataclasses.replace(config, train=train, warm_start=warm_start)

    def schedule(self, recon_config: Any) -> PriorSchedule:
        """The prior's schedule in iterations of the loop of `recon_config`."""
        iterations = recon_config.train.iterations
        return PriorSchedule(
            start=max(1, round(self.start * iterations)),
            every=max(1, round(self.every * iterations)),
            weight=self.weight,
            loss_every=self.loss_every or loss_every_for(recon_config),
            crop=self.crop,
        )


def loss_every_for(recon_config: Any) -> int:
    """Iterations between 3D SSIM terms: 10, as the DiffNR release, unless the loop's rates
    stay constant (the Gaussians' recipe above 64^3), where a term added every 10th iteration
    kicks Adam's moments and the fit does not recover within the run (docs/diffnr.md)."""
    if isinstance(recon_config, GaussianReconConfig) and all(
        getattr(recon_config.model, name) == getattr(recon_config.model, f"{name}_final")
        for name in LEARNING_RATES
    ):
        return 1
    return 10


@dataclass
class DiffNRResult:
    """What `run_diffnr` returns.

    Attributes:
        volume: (Z, Y, X) DiffNR volume (the NR alone's when there is no prior).
        fdk: (Z, Y, X) FDK of the measured views (the classical baseline).
        nr_volume: (Z, Y, X) the NR alone (with ``compare`` or without a prior), else None.
        metrics: PSNR/SSIM against the ground truth when known and the data residual per
            reconstruction ("fdk", "nr_only", "diffnr"), their "difference", "timings_seconds",
            every guard decision ("guard") and prior call ("prior_calls"), "prior_warning",
            "rationale".
        histories: the loops' histories by name ("nr_only", "diffnr").
    """

    volume: torch.Tensor
    fdk: torch.Tensor
    nr_volume: torch.Tensor | None
    metrics: dict[str, Any]
    histories: dict[str, dict[str, Any]]


def run_diffnr(
    scan: Scan,
    config: DiffNRConfig,
    prior: Prior | None,
    *,
    out_dir: str | Path | None = None,
    compare: bool = False,
) -> DiffNRResult:
    """Run DiffNR on `scan` (module docstring).

    Args:
        scan: measured projections, geometry and (optionally) the ground truth.
        config: the run; ``config.prior`` "none" needs `prior` None, any other a `Prior`.
        prior: the loaded prior (`slicefixer.prior.load_prior`), or None.
        out_dir: folder of the loops' checkpoints ("diffnr", "nr_only"); the same call
            resumes an interrupted run. None keeps nothing.
        compare: also fit the NR alone (same protocol and seed) and report the difference.
    """
    if not isinstance(config, DiffNRConfig):
        raise TypeError(f"config: expected a DiffNRConfig, got {type(config).__name__}")
    if (prior is None) != (config.prior == "none"):
        raise ValueError(
            f"prior: config.prior is {config.prior!r} but the prior given is "
            f"{type(prior).__name__} (load it with slicefixer.prior.load_prior(config))"
        )
    LOG.info("defaults: %s", config.rationale)
    recon_config = config.recon_config(scan.geo)
    folder = None if out_dir is None else Path(out_dir)
    if folder is None:  # nowhere to checkpoint
        train = dataclasses.replace(recon_config.train, checkpoint_every=0)
        recon_config = dataclasses.replace(recon_config, train=train)
    metrics: dict[str, Any] = {
        "views": scan.geo.n_views,
        "nr": config.nr,
        "prior": config.prior,
        "rationale": config.rationale,
        "prior_warning": _resolution_warning(prior, scan.geo, config),
        "timings_seconds": {},
    }
    if metrics["prior_warning"]:
        LOG.warning(metrics["prior_warning"])
    timings = metrics["timings_seconds"]

    def quality(volume: torch.Tensor) -> dict[str, float]:
        return scan_quality(volume, scan.projections, scan.geo, scan.volume_gt)

    started = time.perf_counter()
    fdk_volume = fdk(scan.projections, scan.geo)
    timings["fdk"] = time.perf_counter() - started
    metrics["fdk"] = quality(fdk_volume)

    histories: dict[str, dict[str, Any]] = {}
    nr_volume = volume = None
    runs = (["nr_only"] if compare or prior is None else []) + ([] if prior is None else ["diffnr"])
    start = None
    if len(runs) == 2 and not any(_resumes(folder, run) for run in runs):
        # Both loops begin from the same warm start: fit it once (each loop trains a copy).
        started = time.perf_counter()
        start = warm_start(scan.projections, scan.geo, recon_config, scan.volume_gt)
        timings["warm_start"] = time.perf_counter() - started
    if "nr_only" in runs:
        started = time.perf_counter()
        nr_volume, histories["nr_only"] = reconstruct(
            scan.projections,
            scan.geo,
            recon_config,
            scan.volume_gt,
            None if folder is None else folder / "nr_only",
            start=start,
        )
        timings["nr_only"] = time.perf_counter() - started
        metrics["nr_only"] = quality(nr_volume)
        volume = nr_volume
    if prior is not None:
        truth = scan.volume_gt
        score = None if truth is None else lambda v: truth_scores(v, truth)
        guard = HallucinationGuard(scan.projections, scan.geo, config.guard)
        hook = PriorHook(prior, config.schedule(recon_config), guard, score)
        started = time.perf_counter()
        volume, histories["diffnr"] = reconstruct(
            scan.projections,
            scan.geo,
            recon_config,
            truth,
            None if folder is None else folder / "diffnr",
            [hook],
            start=start,
        )
        timings["diffnr"] = time.perf_counter() - started
        timings["diffnr_prior"] = sum(c["prior_seconds"] for c in hook.calls)
        timings["diffnr_guard"] = sum(c["guard_seconds"] for c in hook.calls)
        metrics["diffnr"] = quality(volume)
        metrics["guard"] = [c["guard"] for c in hook.calls]
        metrics["prior_calls"] = hook.calls
        if "nr_only" in metrics:
            metrics["difference"] = {
                k: metrics["diffnr"][k] - metrics["nr_only"][k] for k in metrics["diffnr"]
            }
            metrics["time_ratio"] = timings["diffnr"] / timings["nr_only"]
    return DiffNRResult(volume, fdk_volume, nr_volume, metrics, histories)


def _resumes(folder: Path | None, run: str) -> bool:
    """Whether the loop `run` ("nr_only", "diffnr") will resume from a checkpoint in `folder`."""
    return folder is not None and (folder / run / CHECKPOINT).exists()


def _resolution_warning(prior: Prior | None, geo: ConeBeamGeometry, config: DiffNRConfig):
    """A warning when the scan's slices exceed what the prior was trained on, else None."""
    if prior is None or prior.resolution is None:
        return None
    side = largest_slice_side(geo.volume_shape, config.axes)
    if side <= prior.resolution:
        return None
    return (
        f"the prior works at {prior.resolution} pixels and this scan's slices have {side}: "
        "on larger slices than it was trained on its references have scored below the fit "
        "they came from (docs/diffnr.md); the guard judges each one"
    )
