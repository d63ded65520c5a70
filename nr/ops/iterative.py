"""Classical iterative reconstructions on `project` / `backproject`, TIGRE's algorithms.

    vol = sart(projections, geo)                       # 20 iterations, one view per update
    vol = os_sart(projections, geo)                    # 20 iterations, blocks of 10 views
    vol = cgls(projections, geo)                       # 60 iterations
    vol = asd_pocs(projections, geo)                   # 10 iterations, TV steps 20

Defaults are the baseline settings R2-Gaussian runs through TIGRE
(``ct_utils.run_ct_recon_algs``); docs/classical.md lists TIGRE's own defaults
beside them. The SART family updates, for each block b of views (in the given
order, TIGRE's "ordered"),

    x <- x + lmbda * V_b * A_b^T (W_b * (p_b - A_b x)),   x <- max(x, 0)

with ``W = 1 / (A 1)`` per ray (rays crossing less than half a voxel get weight
0, TIGRE's threshold) and ``V_b = 1 / (A_b^T 1)`` per voxel (0 where no ray
of the block passes), both computed with the exact projector pair; lmbda is
multiplied by lmbda_red after every iteration. All solvers run without autograd
and on the projections' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from nr.geometry import ConeBeamGeometry
from nr.ops.fdk import fdk
from nr.ops.projector import _check_tensor, _view_ids, backproject, check_projections, project

Callback = Callable[[int, torch.Tensor], None]
C = TypeVar("C")  # a solver's config class
# Largest number of cached per-block V values (block count x voxels); above it V_b is recomputed.
V_CACHE_ELEMENTS = 1 << 27
# TIGRE's TV-gradient epsilon (POCS_TV.cu) and ASD-POCS stopping thresholds (pocs_algorithms.py).
TV_EPS = 1e-8
BETA_MIN = 0.005
ANTIPARALLEL = -0.99


def _positive(name: str, value: object, integer: bool = False) -> None:
    kind = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or (value <= 0)
    ):
        what = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name}: expected {what}, got {value!r}")


@dataclass(frozen=True)
class SARTConfig:
    """SART and OS-SART (TIGRE's ``sart`` / ``ossart``).

    Attributes:
        n_iter: sweeps over all views (R2-Gaussian: 20 for both).
        block_size: views per update; 1 is SART, more is OS-SART (R2-Gaussian:
            10; TIGRE's ossart default is 20).
        lmbda: relaxation of each update (TIGRE: 1).
        lmbda_red: factor applied to lmbda after every sweep (R2-Gaussian:
            0.999; TIGRE's docstring: 0.99).
        nonneg: clip the volume at 0 after every block (TIGRE's ``noneg``).
    """

    n_iter: int = 20
    block_size: int = 1
    lmbda: float = 1.0
    lmbda_red: float = 0.999
    nonneg: bool = True

    def __post_init__(self) -> None:
        _positive("n_iter", self.n_iter, integer=True)
        _positive("block_size", self.block_size, integer=True)
        _positive("lmbda", self.lmbda)
        _positive("lmbda_red", self.lmbda_red)


@dataclass(frozen=True)
class CGLSConfig:
    """CGLS (TIGRE's ``cgls``): conjugate gradients on the normal equations, no constraint.

    Attributes:
        n_iter: iterations (R2-Gaussian: 60).
    """

    n_iter: int = 60

    def __post_init__(self) -> None:
        _positive("n_iter", self.n_iter, integer=True)


@dataclass(frozen=True)
class ASDPOCSConfig:
    """ASD-POCS (Sidky & Pan 2008; TIGRE's ``asd_pocs``, R2-Gaussian's settings).

    Attributes:
        n_iter: outer iterations (R2-Gaussian: 10).
        tv_iter: TV steepest-descent steps per iteration (TIGRE ``tviter``: 20).
        alpha: TV step as a fraction of the first data step's norm (0.002).
        alpha_red: reduction of the TV step when it dominates (0.95).
        rmax: largest allowed ratio TV change / data change (R2-Gaussian 0.94;
            TIGRE default 0.95).
        lmbda: SART relaxation (beta in the paper; 1).
        lmbda_red: its reduction per iteration (R2-Gaussian 0.9999).
        max_l2_err: data tolerance epsilon on ``||A x - p||_2``; None means
            ``l2_err_fraction * ||A fdk(p) - p||_2``.
        l2_err_fraction: see max_l2_err (R2-Gaussian 0.15; TIGRE default 0.2).
        block_size: views per SART update (TIGRE asd_pocs: 1; os_asd_pocs: 20).
        nonneg: clip at 0 after every SART block.
    """

    n_iter: int = 10
    tv_iter: int = 20
    alpha: float = 0.002
    alpha_red: float = 0.95
    rmax: float = 0.94
    lmbda: float = 1.0
    lmbda_red: float = 0.9999
    max_l2_err: float | None = None
    l2_err_fraction: float = 0.15
    block_size: int = 1
    nonneg: bool = True

    def __post_init__(self) -> None:
        for name in ("n_iter", "tv_iter", "block_size"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("alpha", "alpha_red", "rmax", "lmbda", "lmbda_red", "l2_err_fraction"):
            _positive(name, getattr(self, name))
        if self.max_l2_err is not None:
            _positive("max_l2_err", self.max_l2_err)


class _Problem:
    """Projections, geometry and view ids of one reconstruction, validated once."""

    def __init__(
        self,
        projections: torch.Tensor,
        geo: ConeBeamGeometry,
        view_ids: object,
        init: torch.Tensor | None,
        backend: str,
    ) -> None:
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        self.ids = _view_ids(view_ids, geo.n_views)
        check_projections(projections, geo, n_views=self.ids.size)
        self.projections = projections.detach()
        self.geo, self.backend = geo, backend
        if init is None:
            self.init = torch.zeros(
                geo.volume_shape, dtype=projections.dtype, device=projections.device
            )
        else:
            _check_tensor("init", init, geo.volume_shape)
            self.init = init.detach().to(device=projections.device, dtype=projections.dtype).clone()

    def A(self, volume: torch.Tensor, rows: slice | np.ndarray = slice(None)) -> torch.Tensor:
        return project(volume, self.geo, self.ids[rows], backend=self.backend)

    def At(self, sino: torch.Tensor, rows: slice | np.ndarray = slice(None)) -> torch.Tensor:
        return backproject(sino, self.geo, self.ids[rows], backend=self.backend)

    def residual_norm(self, volume: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(self.A(volume) - self.projections))


def _prepare(
    config: object,
    default: C,
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    view_ids: object,
    init: torch.Tensor | None,
    backend: str,
) -> tuple[C, _Problem]:
    """A solver's arguments, validated: its config (`default` when None, else of the same
    class) and the `_Problem`."""
    config = default if config is None else config
    if not isinstance(config, type(default)):
        raise TypeError(
            f"config: expected {type(default).__name__} or None, got {type(config).__name__}"
        )
    return config, _Problem(projections, geo, view_ids, init, backend)


class _SARTSweep:
    """The SART family's data step with its weights W and V (module docstring)."""

    def __init__(self, problem: _Problem, block_size: int, nonneg: bool) -> None:
        self.problem, self.nonneg = problem, nonneg
        n = problem.ids.size
        self.blocks = [slice(s, min(s + block_size, n)) for s in range(0, n, block_size)]
        ones = torch.ones_like(problem.init)
        lengths = problem.A(ones)
        threshold = float(problem.geo.d_voxel.min()) / 2
        self.W = torch.where(lengths > threshold, 1.0 / lengths.clamp(min=threshold), 0.0)
        n_cached = len(self.blocks) * ones.numel()
        self.V = [self._v(b) for b in self.blocks] if n_cached <= V_CACHE_ELEMENTS else None

    def _v(self, block: slice) -> torch.Tensor:
        p = self.problem.projections
        coverage = self.problem.At(torch.ones_like(p[block]), block)
        return torch.where(coverage > 0, 1.0 / coverage.clamp(min=1e-30), 0.0)

    def __call__(self, volume: torch.Tensor, lmbda: float) -> torch.Tensor:
        problem = self.problem
        for i, block in enumerate(self.blocks):
            error = self.W[block] * (problem.projections[block] - problem.A(volume, block))
            v = self.V[i] if self.V is not None else self._v(block)
            volume = volume + lmbda * v * problem.At(error, block)
            if self.nonneg:
                volume = volume.clamp(min=0)
        return volume


def sart(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: SARTConfig | None = None,
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """SART (one view per update; ``config.block_size`` must be 1) or, via `os_sart`, OS-SART.

    Args:
        projections: (N, V, U) float32/float64 line integrals; N = len(view_ids).
        geo: the scan.
        config: `SARTConfig` (defaults when None).
        view_ids: (N,) indices into ``geo.angles`` of the rows (all views when None).
        init: (Z, Y, X) starting volume (zeros when None).
        callback: called as ``callback(iteration, volume)`` after every sweep.
        progress: show a tqdm bar.
        backend: projector backend.

    Returns:
        (Z, Y, X) volume, projections' dtype and device.
    """
    config, problem = _prepare(config, SARTConfig(), projections, geo, view_ids, init, backend)
    if config.block_size != 1:
        raise ValueError(
            f"config.block_size: SART updates one view at a time (1), got {config.block_size};"
            " use os_sart for blocks"
        )
    return _run_sart(problem, config, callback, progress, "SART")


def os_sart(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: SARTConfig | None = None,
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """OS-SART: SART updates on ordered blocks of views; defaults block_size 10, 20 iterations.

    Arguments and result as `sart`; `config` defaults to ``SARTConfig(block_size=10)``.
    """
    default = SARTConfig(block_size=10)
    config, problem = _prepare(config, default, projections, geo, view_ids, init, backend)
    return _run_sart(problem, config, callback, progress, "OS-SART")


def _run_sart(
    problem: _Problem, config: SARTConfig, callback: Callback | None, progress: bool, name: str
) -> torch.Tensor:
    with torch.no_grad():
        sweep = _SARTSweep(problem, config.block_size, config.nonneg)
        volume, lmbda = problem.init, config.lmbda
        for it in tqdm(range(config.n_iter), desc=name, disable=not progress):
            volume = sweep(volume, lmbda)
            lmbda *= config.lmbda_red
            if callback is not None:
                callback(it, volume)
    return volume


@torch.no_grad()
def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor,
    iters: int,
    *,
    tol: float = 0.0,
    callback: Callback | None = None,
    progress: bool = False,
    desc: str = "CG",
) -> torch.Tensor:
    """Conjugate gradients on ``normal(x) = b`` from `x0`: the toolkit's one CG solver.

    Args:
        normal: a symmetric positive semi-definite linear map (e.g. ``A^T A`` or
            ``A^T A + rho D^T D``) of tensors shaped like `b`.
        b: the right-hand side (e.g. ``A^T p``).
        x0: the start, shaped like `b`.
        iters: at most this many iterations.
        tol: stop once ``||b - normal(x)|| <= tol * ||b||`` (float32 CG loses conjugacy past
            that point); 0 runs all `iters`.
        callback: called as ``callback(iteration, x)`` after each iteration.
        progress: show a tqdm bar named `desc`.

    Returns:
        The iterate, `x0`'s shape and dtype. Stops early when the residual vanishes or the
        curvature ``p^T normal(p)`` is not positive. Inner products in float64.
    """

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.dot(u.flatten().double(), v.flatten().double())

    x = x0.clone()
    r = b - normal(x)
    p = r.clone()
    rs = dot(r, r)
    stop = tol**2 * dot(b, b)
    for it in tqdm(range(iters), desc=desc, disable=not progress):
        if rs <= stop:
            break
        q = normal(p)
        pq = dot(p, q)
        if pq <= 0:
            break
        alpha = (rs / pq).to(x.dtype)
        x += alpha * p
        r -= alpha * q
        rs_new = dot(r, r)
        p = r + (rs_new / rs).to(x.dtype) * p
        rs = rs_new
        if callback is not None:
            callback(it, x)
    return x


def cgls(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: CGLSConfig | None = None,
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """TIGRE's CGLS: minimises ``||A x - p||_2`` by conjugate gradients on the normal
    equations ``A^T A x = A^T p`` (`conjugate_gradient`; the iterates of CGLS, monotone
    residual). No non-negativity (as TIGRE). Arguments and result as `sart`.
    """
    config, problem = _prepare(config, CGLSConfig(), projections, geo, view_ids, init, backend)
    with torch.no_grad():
        return conjugate_gradient(
            lambda v: problem.At(problem.A(v)),
            problem.At(problem.projections),
            problem.init,
            config.n_iter,
            callback=callback,
            progress=progress,
            desc="CGLS",
        )


def asd_pocs(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    config: ASDPOCSConfig | None = None,
    *,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """ASD-POCS: SART data sweeps alternating with TV steepest descent (TIGRE's control logic).

    Each iteration: a SART sweep with relaxation beta; ``dd = ||A x - p||``,
    ``dp = ||x - x_prev||``; the TV step size is ``alpha * dp`` of the first
    iteration; `tv_iter` normalised TV-gradient steps; the TV step shrinks by
    alpha_red when the TV change exceeds ``rmax * dp`` while ``dd > epsilon``;
    beta shrinks by lmbda_red. Stops after n_iter, when beta < 0.005, or when
    the two changes are antiparallel (cosine < -0.99) with ``dd <= epsilon``.
    Arguments and result as `sart`.
    """
    default = ASDPOCSConfig()
    config, problem = _prepare(config, default, projections, geo, view_ids, init, backend)
    with torch.no_grad():
        epsilon = config.max_l2_err
        if epsilon is None:
            start = fdk(problem.projections, geo, view_ids=problem.ids)
            epsilon = config.l2_err_fraction * problem.residual_norm(start)
        sweep = _SARTSweep(problem, config.block_size, config.nonneg)
        x, beta, tv_step = problem.init, config.lmbda, None
        for it in tqdm(range(config.n_iter), desc="ASD-POCS", disable=not progress):
            x_data = sweep(x, beta)
            dd = problem.residual_norm(x_data)
            dp_vec = x_data - x
            dp = float(torch.linalg.vector_norm(dp_vec))
            if tv_step is None:
                tv_step = config.alpha * dp
            x = minimize_tv(x_data, tv_step, config.tv_iter)
            dg_vec = x - x_data
            dg = float(torch.linalg.vector_norm(dg_vec))
            if dg > config.rmax * dp and dd > epsilon:
                tv_step *= config.alpha_red
            beta *= config.lmbda_red
            cosine = float((dg_vec * dp_vec).sum()) / max(dg * dp, 1e-6)
            if callback is not None:
                callback(it, x)
            if (cosine < ANTIPARALLEL and dd <= epsilon) or beta < BETA_MIN:
                break
    return x


def tv_gradient(volume: torch.Tensor) -> torch.Tensor:
    """Gradient of the isotropic TV ``sum |grad- f|`` with backward differences (TIGRE's POCS_TV).

    Args:
        volume: (Z, Y, X) tensor.

    Returns:
        (Z, Y, X) gradient; the norm of the differences is regularised by
        adding `TV_EPS` (TIGRE's choice).
    """
    diffs = []
    for axis in range(3):
        d = torch.zeros_like(volume)
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis], lo[axis] = slice(1, None), slice(None, -1)
        d[tuple(hi)] = volume[tuple(hi)] - volume[tuple(lo)]
        diffs.append(d)
    magnitude = torch.sqrt(sum(d * d for d in diffs)) + TV_EPS
    grad = torch.zeros_like(volume)
    for axis, d in enumerate(diffs):
        normalised = d / magnitude
        grad = grad + normalised
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis], lo[axis] = slice(1, None), slice(None, -1)
        # Voxel i also appears, negated, in the difference at i + 1.
        grad[tuple(lo)] -= normalised[tuple(hi)]
    return grad


def minimize_tv(volume: torch.Tensor, step: float, n_iter: int) -> torch.Tensor:
    """`n_iter` steps ``x <- x - step * g / ||g||`` along the TV gradient g (TIGRE's minTV).

    Args:
        volume: (Z, Y, X) tensor.
        step: length of each step (same units as the volume).
        n_iter: number of steps.

    Returns:
        (Z, Y, X) tensor.
    """
    for _ in range(n_iter):
        grad = tv_gradient(volume)
        norm = torch.linalg.vector_norm(grad)
        if norm == 0:
            break
        volume = volume - step * grad / norm
    return volume
