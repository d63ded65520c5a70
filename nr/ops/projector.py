"""The X-ray transform of a `ConeBeamGeometry` and its exact (matched) adjoint.

    sino = project(volume, geo)            # (Z, Y, X) -> (N, V, U), line integrals in mm
    vol = backproject(sino, geo)           # (N, V, U) -> (Z, Y, X), the transpose

Joseph's method (bilinear interpolation in the voxel planes perpendicular to
each ray's dominant axis; docs/projector.md). Both functions are linear,
differentiable (the gradient of one is the other), take float32 or float64
tensors on any device, and select among three backends:

* ``"compiled"``: the C++/OpenMP kernel ``nr.ops._C`` (CPU tensors);
* ``"torch"``: the pure-torch twin (any device; same weights);
* ``"tigre"``: TIGRE's CUDA interpolated projector and matched backprojector,
  only where ``import tigre`` works (untested here);
* ``"auto"``: compiled for CPU tensors when built, torch otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nr._ext import require_compiled, use_compiled
from nr.geometry import ConeBeamGeometry
from nr.ops._projector_twin import backproject_twin, index_vectors, project_twin

BACKENDS = ("auto", "compiled", "torch", "tigre")
TIGRE_REMEDY = (
    "TIGRE is not importable. It needs an NVIDIA GPU and nvcc; install it from source "
    "(`pip install TIGRE-x.y/Python --no-build-isolation`, github.com/CERN/TIGRE; PyPI's "
    "`tigre` is an unrelated package) or use backend='auto'."
)


@dataclass(frozen=True, eq=False)
class _Operator:
    """Everything both directions of one operator need, resolved once per call."""

    geo: ConeBeamGeometry
    view_ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, 4, 3) float64, voxel-index coordinates
    backend: str  # "compiled", "torch" or "tigre"

    @property
    def parallel(self) -> bool:
        return self.geo.mode == "parallel"

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        volume = volume.contiguous()
        if self.backend == "compiled":
            return require_compiled("ops").projector_forward(
                volume,
                torch.from_numpy(self.vectors),
                torch.from_numpy(self.geo.voxel_size_xyz()),
                int(self.geo.n_detector[0]),
                int(self.geo.n_detector[1]),
                self.parallel,
            )
        if self.backend == "tigre":
            return _tigre_apply(volume, self, adjoint=False)
        n_det = (int(self.geo.n_detector[0]), int(self.geo.n_detector[1]))
        return project_twin(volume, self.vectors, self.geo.voxel_size_xyz(), n_det, self.parallel)

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        projections = projections.contiguous()
        if self.backend == "compiled":
            z, y, x = self.geo.volume_shape
            return require_compiled("ops").projector_backward(
                projections,
                torch.from_numpy(self.vectors),
                torch.from_numpy(self.geo.voxel_size_xyz()),
                z,
                y,
                x,
                self.parallel,
            )
        if self.backend == "tigre":
            return _tigre_apply(projections, self, adjoint=True)
        return backproject_twin(
            projections,
            self.vectors,
            self.geo.voxel_size_xyz(),
            self.geo.volume_shape,
            self.parallel,
        )


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, volume: torch.Tensor, op: _Operator) -> torch.Tensor:
        ctx.op = op
        return op.forward(volume)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _Backproject.apply(grad, ctx.op), None


class _Backproject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projections: torch.Tensor, op: _Operator) -> torch.Tensor:
        ctx.op = op
        return op.adjoint(projections)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _Project.apply(grad, ctx.op), None


def project(
    volume: torch.Tensor,
    geo: ConeBeamGeometry,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Line integrals of an attenuation volume along the rays of `geo`.

    Args:
        volume: (Z, Y, X) float32/float64 tensor, attenuation per mm, shape
            ``geo.volume_shape``; any device.
        geo: the scan (cone or parallel; every field is honoured).
        view_ids: (N,) indices into ``geo.angles`` of the views to compute;
            all views when None.
        backend: "auto", "compiled", "torch" or "tigre" (module docstring).

    Returns:
        (N, V, U) tensor of line integrals (dimensionless), volume's dtype and
        device. Differentiable; its gradient is `backproject`.
    """
    op = _operator(geo, view_ids, backend, volume, "volume")
    _check_tensor("volume", volume, geo.volume_shape)
    return _Project.apply(volume, op)


def backproject(
    projections: torch.Tensor,
    geo: ConeBeamGeometry,
    view_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The exact adjoint (transpose) of `project`: ``<project(x), y> == <x, backproject(y)>``.

    Args:
        projections: (N, V, U) float32/float64 tensor with N = len(view_ids)
            (all views of `geo` when view_ids is None); any device.
        geo: the scan.
        view_ids: (N,) indices into ``geo.angles`` of the rows of `projections`.
        backend: "auto", "compiled", "torch" or "tigre".

    Returns:
        (Z, Y, X) tensor, projections' dtype and device. Differentiable; its
        gradient is `project`.
    """
    op = _operator(geo, view_ids, backend, projections, "projections")
    check_projections(projections, geo, n_views=op.view_ids.size)
    return _Backproject.apply(projections, op)


@dataclass(frozen=True)
class XRayOperator:
    """The X-ray transform of one scan as a linear operator A (for solvers and samplers).

    Attributes:
        geo: the scan.
        backend: as `project`.
    """

    geo: ConeBeamGeometry
    backend: str = "auto"

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """A x: (Z, Y, X) -> (N, V, U) (`project`)."""
        return project(volume, self.geo, backend=self.backend)

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """A^T y: (N, V, U) -> (Z, Y, X) (`backproject`)."""
        return backproject(projections, self.geo, backend=self.backend)


def check_projections(
    projections: object,
    geo: ConeBeamGeometry | None,
    name: str = "projections",
    *,
    n_views: int | None = None,
) -> None:
    """Raise unless `projections` is a finite float32/float64 (N, V, U) tensor of `geo`'s views.

    Args:
        projections: the argument to check; any device.
        geo: the scan: V and U must be its detector rows and columns, N `n_views`
            (``geo.n_views`` when None). None accepts any (N, V, U).
        name: the argument's name in the error messages.
        n_views: the expected N when the projections are a subset of the views.

    Raises:
        TypeError: not a tensor, not float32/float64, or `geo` not a `ConeBeamGeometry`.
        ValueError: wrong shape, or NaN/inf values.
    """
    shape: tuple[int | str, ...] = ("N", "V", "U")
    if geo is not None:
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        n_v, n_u = (int(n) for n in geo.n_detector)
        shape = (geo.n_views if n_views is None else n_views, n_v, n_u)
    _check_tensor(name, projections, shape)


def _operator(
    geo: ConeBeamGeometry, view_ids: object, backend: str, tensor: object, name: str
) -> _Operator:
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor, got {type(tensor).__name__}"
            " (wrap numpy arrays with torch.from_numpy)"
        )
    ids = _view_ids(view_ids, geo.n_views)
    if backend == "tigre":
        _import_tigre()
        resolved = "tigre"
    else:
        resolved = "compiled" if use_compiled("ops", backend, tensor) else "torch"
    return _Operator(geo, ids, index_vectors(geo, ids), resolved)


def _view_ids(view_ids: object, n_views: int) -> np.ndarray:
    if view_ids is None:
        return np.arange(n_views, dtype=np.int64)
    if isinstance(view_ids, torch.Tensor):
        view_ids = view_ids.detach().cpu().numpy()
    ids = np.asarray(view_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"view_ids: expected a non-empty 1-D sequence of integers, got {ids.dtype} "
            f"array of shape {ids.shape}"
        )
    if ids.min() < 0 or ids.max() >= n_views:
        raise ValueError(f"view_ids: expected indices in [0, {n_views}), got {ids.tolist()}")
    return ids.astype(np.int64)


def _check_tensor(name: str, tensor: object, shape: tuple[int | str, ...]) -> None:
    """Raise unless `tensor` is a finite float32/float64 tensor of `shape`; a str entry
    names a dimension of any size."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor, got {type(tensor).__name__}"
            " (wrap numpy arrays with torch.from_numpy)"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {tensor.dtype}")
    if tensor.ndim != len(shape) or any(
        isinstance(n, int) and n != size for n, size in zip(shape, tensor.shape, strict=True)
    ):
        expected = ", ".join(str(n) for n in shape)
        raise ValueError(f"{name}: expected shape ({expected}), got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name}: values must be finite (found NaN or inf)")


def _import_tigre():
    try:
        import tigre
    except ImportError as error:
        raise ImportError(TIGRE_REMEDY) from error
    return tigre


def _tigre_apply(tensor: torch.Tensor, op: _Operator, adjoint: bool) -> torch.Tensor:
    """TIGRE's interpolated Ax / matched Atb on a host copy (untested: needs CUDA)."""
    tigre = _import_tigre()
    geo = op.geo
    tg = tigre.geometry(mode=geo.mode, nVoxel=geo.n_voxel.copy(), default=False)
    tg.DSD, tg.DSO = geo.dsd, geo.dso
    tg.nVoxel, tg.sVoxel, tg.dVoxel = geo.n_voxel.copy(), geo.s_voxel.copy(), geo.d_voxel.copy()
    tg.nDetector, tg.sDetector = geo.n_detector.copy(), geo.s_detector.copy()
    tg.dDetector = geo.d_detector.copy()
    tg.offOrigin, tg.offDetector = geo.off_origin.copy(), geo.off_detector.copy()
    tg.rotDetector, tg.COR, tg.accuracy = geo.rot_detector.copy(), geo.cor, geo.accuracy
    angles = geo.angles[op.view_ids].astype(np.float32)
    data = tensor.detach().cpu().numpy().astype(np.float32)
    if adjoint:
        out = tigre.Atb(data, tg, angles, backprojection_type="matched")
    else:
        out = tigre.Ax(data, tg, angles, projection_type="interpolated")
    return torch.from_numpy(np.ascontiguousarray(out)).to(tensor.device, tensor.dtype)
