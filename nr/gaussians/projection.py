"""EWA projection of 3D Gaussians onto the detector (vectorised torch; autograd).

Ray space of a view is (u, v, l): detector pixel coordinates of the ray through a point
and the distance l (mm) along that ray. Linearising the map x -> (u, v, l) at a
Gaussian's centre (the 3x3 Jacobian J) gives the ray-space covariance
``S3 = J Sigma J^T``; its (u, v) block ``S2`` is the footprint on the detector, and
integrating the ray-space Gaussian over l gives the peak line integral
``rho * mu`` with ``mu = sqrt(2 pi det(S3) / det(S2))`` (R2-Gaussian's Eq. 7). Because l
is in mm, a rendered projection is a line integral in (density x mm), and the footprint
of one Gaussian integrates over the detector pixels to
``rho (2 pi)^(3/2) sqrt(det Sigma) |det J|`` exactly (for parallel beams EWA is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nr._ext import require_compiled, use_compiled
from nr.geometry import ConeBeamGeometry


@dataclass(frozen=True)
class Cameras:
    """Per-view projection maps from world (x, y, z) mm to detector pixels (u, v).

    Cone beam: ``u = offset_u + (rows[0] . a) / (rows[2] . a)`` with ``a = x - source``,
    and likewise v with rows[1]; rows[2] is the unit detector normal (pointing away from
    the source). Parallel beam: ``u = offset_u + rows[0] . x``; rows[2] is the unit ray
    direction.

    Attributes:
        mode: "cone" or "parallel".
        source: (N, 3) source positions, mm (zeros in parallel mode).
        rows: (N, 3, 3) see above.
        offset: (N, 2) (u, v) offsets, pixels.
        height, width: detector pixels along v and u.
    """

    mode: str
    source: torch.Tensor
    rows: torch.Tensor
    offset: torch.Tensor
    height: int
    width: int

    @classmethod
    def from_geometry(
        cls,
        geo: ConeBeamGeometry,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Cameras:
        """The cameras of all views of `geo` (built in float64, then cast)."""
        if not isinstance(geo, ConeBeamGeometry):
            raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
        vectors = geo.view_vectors()
        n = vectors.shape[0]
        source, rows, offset = np.zeros((n, 3)), np.zeros((n, 3, 3)), np.zeros((n, 2))
        for i, (src, det, du, dv) in enumerate(vectors):
            normal = np.cross(du, dv)
            normal /= np.linalg.norm(normal)
            # Dual basis of (du, dv, normal): e_u . (det + u du + v dv - det) = u on the plane.
            e_u, e_v, _ = np.linalg.inv(np.stack([du, dv, normal], axis=1))
            if geo.mode == "cone":
                if normal @ (det - src) < 0:
                    normal = -normal
                depth = normal @ (det - src)  # source to detector plane
                source[i] = src
                rows[i] = np.stack([depth * e_u, depth * e_v, normal])
                offset[i] = [e_u @ (src - det), e_v @ (src - det)]
            else:
                ray = src / np.linalg.norm(src)
                # Move along the ray onto the detector plane, then read the pixel coordinates.
                p_u = e_u - (e_u @ ray) / (normal @ ray) * normal
                p_v = e_v - (e_v @ ray) / (normal @ ray) * normal
                rows[i] = np.stack([p_u, p_v, ray])
                offset[i] = [-p_u @ det, -p_v @ det]

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype, device=device)

        height, width = (int(x) for x in geo.n_detector)
        return cls(geo.mode, tensor(source), tensor(rows), tensor(offset), height, width)

    def select(self, view_ids: torch.Tensor) -> Cameras:
        """The cameras of the views `view_ids` ((K,) int64)."""
        return Cameras(
            self.mode,
            self.source[view_ids],
            self.rows[view_ids],
            self.offset[view_ids],
            self.height,
            self.width,
        )


def rotation_matrices(quaternions: torch.Tensor) -> torch.Tensor:
    """(G, 3, 3) rotations of (G, 4) quaternions (w, x, y, z), normalised here."""
    w, x, y, z = torch.nn.functional.normalize(quaternions, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def covariances(scales: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
    """(G, 3, 3) covariances ``R diag(s^2) R^T`` of (G, 3) scales (mm) and (G, 4) quaternions."""
    rot = rotation_matrices(quaternions)
    return (rot * scales[:, None, :] ** 2) @ rot.transpose(1, 2)


def precisions(scales: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
    """(G, 6) inverse covariances [xx, xy, xz, yy, yz, zz] (mm^-2), without a matrix inverse."""
    rot = rotation_matrices(quaternions)
    full = (rot / scales[:, None, :] ** 2) @ rot.transpose(1, 2)
    return full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]


def project_torch(
    means: torch.Tensor,
    scales: torch.Tensor,
    quaternions: torch.Tensor,
    densities: torch.Tensor,
    cameras: Cameras,
) -> tuple[torch.Tensor, ...]:
    """Readable pure-torch twin of the compiled projection (any device; autograd).

    Gaussians behind a cone-beam source are inert: zero amplitude and no gradient.

    Args:
        means: (G, 3) centres (x, y, z), mm.
        scales: (G, 3) standard deviations along the rotated axes, mm.
        quaternions: (G, 4) rotations (w, x, y, z).
        densities: (G,) peak densities.
        cameras: N views.

    Returns:
        means2d (N, G, 2) pixel coordinates (u, v); conics (N, G, 3) inverse 2D
        covariances [a, b, c]; amps (N, G) peak line integrals rho * mu (0 for
        Gaussians behind a cone-beam source).
    """
    cov = covariances(scales, quaternions)
    rows, offset = cameras.rows, cameras.offset
    if cameras.mode == "cone":
        rel = means[None] - cameras.source[:, None]  # (N, G, 3)
        depth = (rel * rows[:, None, 2]).sum(-1)
        in_front = depth > 0
        depth = torch.where(in_front, depth, torch.ones_like(depth))
        rel = torch.where(in_front[..., None], rel, rel.detach())
        uv = torch.einsum("ngk,nik->ngi", rel, rows[:, :2]) / depth[..., None]
        # d(uv)/dx = (P_i - uv_i * normal) / depth; d(l)/dx = unit vector from the source.
        jac_uv = (rows[:, None, :2] - uv[..., None] * rows[:, None, 2:3]) / depth[..., None, None]
        jac_l = rel / rel.norm(dim=-1, keepdim=True)
        jacobian = torch.cat([jac_uv, jac_l[..., None, :]], dim=-2)  # (N, G, 3, 3)
        means2d = uv + offset[:, None]
    else:
        in_front = torch.ones(rows.shape[0], means.shape[0], dtype=torch.bool, device=means.device)
        jacobian = rows[:, None].expand(-1, means.shape[0], -1, -1)
        means2d = torch.einsum("gk,nik->ngi", means, rows[:, :2]) + offset[:, None]
    cov2 = jacobian[..., :2, :] @ cov @ jacobian[..., :2, :].transpose(-1, -2)  # (N, G, 2, 2)
    det2 = cov2[..., 0, 0] * cov2[..., 1, 1] - cov2[..., 0, 1] * cov2[..., 1, 0]
    conics = torch.stack([cov2[..., 1, 1], -cov2[..., 0, 1], cov2[..., 0, 0]], dim=-1)
    conics = conics / det2[..., None]
    conics = torch.where(in_front[..., None], conics, conics.detach())
    # det(S3) = det(J)^2 det(Sigma) and sqrt(det Sigma) = s1 s2 s3.
    mu = math.sqrt(2 * math.pi) * torch.linalg.det(jacobian).abs() * scales.prod(-1)
    mu = mu / det2.sqrt()
    amps = torch.where(in_front, densities * mu, torch.zeros_like(mu))
    return means2d, conics, amps


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, quaternions, densities, source, rows, offset, cone):  # noqa: D102
        ctx.save_for_backward(means, scales, quaternions, densities, source, rows, offset)
        ctx.cone = cone
        return tuple(
            require_compiled("gaussians").project_forward(
                means, scales, quaternions, densities, source, rows, offset, cone
            )
        )

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_amps):  # noqa: D102
        grads = require_compiled("gaussians").project_backward(
            *ctx.saved_tensors, ctx.cone, grad_means2d, grad_conics, grad_amps
        )
        return (*grads, None, None, None, None)


def project(
    means: torch.Tensor,
    scales: torch.Tensor,
    quaternions: torch.Tensor,
    densities: torch.Tensor,
    cameras: Cameras,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """Project 3D Gaussians into every view of `cameras` (EWA with the integration factor).

    On CPU (`backend` as in `nr._ext.use_compiled`) one compiled kernel does everything,
    forward and backward: the per-Gaussian covariance (from the normalised quaternion) and
    ``rho sqrt(2 pi) s1 s2 s3``, then the per-(view, Gaussian) projection; `project_torch`
    otherwise.

    Args:
        means: (G, 3) centres (x, y, z), mm.
        scales: (G, 3) standard deviations along the rotated axes, mm.
        quaternions: (G, 4) rotations (w, x, y, z).
        densities: (G,) peak densities.
        cameras: N views.
        backend: "auto", "compiled" or "torch".

    Returns:
        means2d (N, G, 2) pixel coordinates (u, v); conics (N, G, 3) inverse 2D
        covariances [a, b, c]; amps (N, G) peak line integrals rho * mu (0 for
        Gaussians behind a cone-beam source).
    """
    tensors = (means, scales, quaternions, densities, cameras.rows)
    for name, tensor in zip(("means", "scales", "quaternions", "densities"), tensors, strict=False):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != cameras.rows.dtype:
            raise TypeError(f"{name}: expected a {cameras.rows.dtype} tensor like the cameras")
    count = means.shape[0]
    for name, tensor, shape in (
        ("means", means, (count, 3)),
        ("scales", scales, (count, 3)),
        ("quaternions", quaternions, (count, 4)),
        ("densities", densities, (count,)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
    if not use_compiled("gaussians", backend, *tensors):
        return project_torch(means, scales, quaternions, densities, cameras)
    return _Project.apply(
        means,
        scales,
        quaternions,
        densities,
        cameras.source,
        cameras.rows,
        cameras.offset,
        cameras.mode == "cone",
    )
