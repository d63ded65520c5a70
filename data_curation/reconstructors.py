"""The registry of "underfit reconstructors", whose artifacts SliceFixer learns to repair.

    recon = get_reconstructor("sart")
    volume = recon(projections, geo, iterations=5, seed=0)      # (Z, Y, X) float32 tensor

A reconstructor is ``callable(projections, geo, iterations, seed) -> volume`` with
`projections` (N, V, U) float32 line integrals of the views of `geo` and the
result a (Z, Y, X) float32 CPU tensor on ``geo.volume_shape``, plus its
*standard* iteration count (what a converged run uses); curation runs it for a
random fraction of that count. Built in:

- "hashgrid": the hash-grid neural field (`nr.recon.reconstruct_hashgrid`),
  standard count that of its default config; registered lazily.
- "gaussians": R2-Gaussian (`nr.recon.reconstruct_gaussians`),
  standard count that of ``GaussianReconConfig.default()``; registered lazily.
- "sart": SART from zero (`nr.ops.iterative.sart`), standard count 20
  (R2-Gaussian's baseline); cheap, for tests and for iterative-artifact data
  (docs/history.md, "SliceFixer").
- "diffnr_gaussians", "diffnr_hashgrid": the volumes DiffNR hands its prior. One run of
  the NR exactly as `pipelines.diffnr` runs it on this scan (`nr.diffnr.DiffNRConfig.default`:
  the recipe sized to the grid and view count, the warm start, the guard's validation
  protocol), recording the volume at every iteration where the prior would be called;
  the run stops after the last one. The iteration count drawn by the plan is not used
  (their standard count is 1): `states` returns the recorded volumes by iteration.

The neural packages are imported only when their reconstructor is first used,
so curating with "sart" never needs them. `register` adds a user's own method.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.iterative import SARTConfig, sart

ReconstructFn = Callable[
    [torch.Tensor, ConeBeamGeometry, int, int],
    torch.Tensor | list[tuple[int, torch.Tensor]],
]

# Standard iteration count of SART (R2-Gaussian's TIGRE baseline, nr.ops.iterative.SARTConfig).
SART_STANDARD_ITERATIONS = SARTConfig().n_iter


@dataclass(frozen=True)
class Reconstructor:
    """One registered method.

    Attributes:
        name: registry key (also written in the manifest).
        reconstruct: ``(projections, geo, iterations, seed) -> (Z, Y, X) volume``, or a
            list of ``(iteration, volume)`` for a method that records several states of a run.
        standard_iterations: the iteration count of a full (converged) run.
    """

    name: str
    reconstruct: ReconstructFn
    standard_iterations: int

    def __call__(
        self, projections: torch.Tensor, geo: ConeBeamGeometry, iterations: int, seed: int
    ) -> torch.Tensor:
        """Run the method; returns the (Z, Y, X) float32 CPU volume (a multi-state method's
        last state), checked for shape."""
        return self.states(projections, geo, iterations, seed)[-1][1]

    def states(
        self, projections: torch.Tensor, geo: ConeBeamGeometry, iterations: int, seed: int
    ) -> list[tuple[int, torch.Tensor]]:
        """Run the method; returns [(iteration, (Z, Y, X) float32 CPU volume), ...]: one
        volume, or every state a multi-state method records (its last is what `__call__`
        returns)."""
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
            raise TypeError(f"iterations: expected an int, got {type(iterations).__name__}")
        if iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {iterations}")
        result = self.reconstruct(projections, geo, int(iterations), int(seed))
        states = result if isinstance(result, list) else [(int(iterations), result)]
        checked = []
        for iteration, volume in states:
            volume = torch.as_tensor(volume).detach().cpu().float()
            if tuple(volume.shape) != geo.volume_shape:
                raise ValueError(
                    f"reconstructor {self.name!r}: returned shape {tuple(volume.shape)}, "
                    f"expected {geo.volume_shape}"
                )
            checked.append((int(iteration), volume))
        if not checked:
            raise ValueError(f"reconstructor {self.name!r}: returned no volume")
        return checked


_REGISTRY: dict[str, Reconstructor] = {}
# name -> `load() -> Reconstructor`, called on first use (it imports the method's package).
_LAZY: dict[str, Callable[[], Reconstructor]] = {}


def register(reconstructor: Reconstructor, *, overwrite: bool = False) -> None:
    """Add a reconstructor under ``reconstructor.name``.

    Raises:
        ValueError: the name is taken and `overwrite` is False.
    """
    if not isinstance(reconstructor, Reconstructor):
        raise TypeError(f"reconstructor: expected a Reconstructor, got {type(reconstructor)}")
    name = reconstructor.name
    if not overwrite and (name in _REGISTRY or name in _LAZY):
        raise ValueError(f"name: a reconstructor {name!r} is already registered")
    if (
        isinstance(reconstructor.standard_iterations, bool)
        or not isinstance(reconstructor.standard_iterations, int)
        or reconstructor.standard_iterations < 1
    ):
        raise ValueError(
            f"standard_iterations: expected a positive int, got "
            f"{reconstructor.standard_iterations!r}"
        )
    _LAZY.pop(name, None)
    _REGISTRY[name] = reconstructor


def available() -> tuple[str, ...]:
    """Names of the registered reconstructors (lazy ones included)."""
    return tuple(sorted(set(_REGISTRY) | set(_LAZY)))


def get_reconstructor(name: str) -> Reconstructor:
    """The reconstructor registered as `name`, importing its package on first use.

    Raises:
        ValueError: unknown name.
        ImportError: the package of a lazily registered method cannot be used.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _LAZY:
        raise ValueError(f"representation: expected one of {available()}, got {name!r}")
    _REGISTRY[name] = _LAZY.pop(name)()
    return _REGISTRY[name]


def _sart(projections: torch.Tensor, geo: ConeBeamGeometry, iterations: int, seed: int):
    # SART is deterministic: the seed has nothing to draw.
    return sart(projections, geo, SARTConfig(n_iter=iterations), progress=False)


def _import(name: str, module_name: str, *names: str) -> list:
    try:
        module = importlib.import_module(module_name)
        return [getattr(module, n) for n in names]
    except (ImportError, AttributeError) as error:
        raise ImportError(
            f"representation {name!r} needs {', '.join(names)} from {module_name}, which cannot "
            f"be imported ({error}); curate with --representations sart, or update the toolkit"
        ) from error


def _load_hashgrid() -> Reconstructor:
    """`nr.recon.reconstruct_hashgrid` with its default config; the seed sets the field's
    initialisation and the loop's view order."""
    config_cls, reconstruct_hashgrid = _import(
        "hashgrid", "nr.recon", "HashGridReconConfig", "reconstruct_hashgrid"
    )
    base = config_cls()

    def reconstruct(projections, geo, iterations, seed):
        config = dataclasses.replace(
            base,
            field=dataclasses.replace(base.field, seed=seed),
            train=dataclasses.replace(
                base.train, iterations=iterations, seed=seed, progress=False, eval_every=0
            ),
        )
        return reconstruct_hashgrid(projections.float().contiguous(), geo, config)[0]

    return Reconstructor("hashgrid", reconstruct, int(base.train.iterations))


def _load_gaussians() -> Reconstructor:
    """`nr.recon.reconstruct_gaussians` with ``GaussianReconConfig.default``
    (its densification schedule scales with the iterations); the seed sets the initial
    points and the loop. The base recipe at every grid size, not the one sized to the grid:
    curated reconstructions are meant to be underfit, and their standard count is fixed."""
    config_cls, reconstruct_gaussians = _import(
        "gaussians", "nr.recon", "GaussianReconConfig", "reconstruct_gaussians"
    )

    def reconstruct(projections, geo, iterations, seed):
        config = config_cls.default(iterations)
        config = dataclasses.replace(
            config,
            init=dataclasses.replace(config.init, seed=seed),
            train=dataclasses.replace(config.train, seed=seed, progress=False, eval_every=0),
        )
        return reconstruct_gaussians(projections.float().contiguous(), geo, config)[0]

    return Reconstructor("gaussians", reconstruct, int(config_cls.default().train.iterations))


class _LoopEnded(Exception):
    """Raised by `_RecordStates` after the last state: the rest of the loop is not needed."""


class _RecordStates:
    """A `nr.train.Hook` on a DiffNR prior schedule that records the volume where the prior
    would be called (while the validation views are held out, never at the last iteration,
    as `nr.priors.protocol.PriorHook`) and ends the loop after the last such call."""

    loss_every = 1

    def __init__(self, start: int, every: int) -> None:
        self.start, self.every = start, every
        self.states: list[tuple[int, torch.Tensor]] = []

    def __call__(self, trainer, iteration: int) -> None:
        if trainer.holding_out and iteration < trainer.config.iterations:
            self.states.append((iteration, trainer.volume().detach().cpu().clone()))
        if iteration + self.every > min(trainer.config.validation_until,
                                        trainer.config.iterations - 1):
            raise _LoopEnded


def _load_diffnr(nr: str) -> Callable[[], Reconstructor]:
    """The "diffnr_<nr>" reconstructor (module docstring)."""

    def load() -> Reconstructor:
        config_cls, = _import(f"diffnr_{nr}", "nr.diffnr", "DiffNRConfig")
        reconstruct_nr, = _import(f"diffnr_{nr}", "nr.recon", "reconstruct")

        def reconstruct(projections, geo, iterations, seed):
            config = dataclasses.replace(config_cls.default(geo, nr, "none"), seed=seed)
            recon_config = config.recon_config(geo)
            recon_config = dataclasses.replace(
                recon_config,
                train=dataclasses.replace(recon_config.train, progress=False, eval_every=0,
                                          checkpoint_every=0),
            )
            schedule = config.schedule(recon_config)
            recorder = _RecordStates(schedule.start, schedule.every)
            try:
                reconstruct_nr(projections.float().contiguous(), geo, recon_config,
                               hooks=[recorder])
            except _LoopEnded:
                pass
            return recorder.states

        return Reconstructor(f"diffnr_{nr}", reconstruct, 1)

    return load


register(Reconstructor("sart", _sart, SART_STANDARD_ITERATIONS))
_LAZY["hashgrid"] = _load_hashgrid
_LAZY["gaussians"] = _load_gaussians
_LAZY["diffnr_gaussians"] = _load_diffnr("gaussians")
_LAZY["diffnr_hashgrid"] = _load_diffnr("hashgrid")
