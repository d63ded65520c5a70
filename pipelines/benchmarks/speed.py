"""Projector speed: the compiled Joseph kernel vs its torch twin, diffct, scikit-image and ASTRA.

Throughput is counted in nominal ray-samples: rays x voxels along one volume
edge (n), the same count for every method of a row, so ratios of times and of
throughputs agree. Every peer runs in this process on the same problem size.
"""

from __future__ import annotations

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.projector import backproject, project
from nr.phantoms import Ellipsoid, line_integrals, voxelise
from pipelines.benchmarks._timing import best_time

TITLE = "Projector speed"


def _row(name: str, seconds: float, samples: float, reference: float | None) -> str:
    ratio = "" if reference is None else f"{seconds / reference:.1f}x"
    return f"| {name} | {seconds * 1e3:.1f} | {samples / seconds / 1e6:.1f} | {ratio} |"


def _cone_3d(quick: bool) -> list[str]:
    sizes, n_views, n_det = ((32,), 20, 64) if quick else ((64, 128), 50, 128)
    lines = [
        f"### 3D cone beam: compiled kernel vs torch twin ({n_views} views, {n_det}^2 detector)",
        "",
        "| operation | time (ms) | M ray-samples/s | time / compiled |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        geo = ConeBeamGeometry.default(n_voxel=n, n_views=n_views, n_detector=n_det)
        volume = torch.rand(geo.volume_shape)
        sino = project(volume, geo, backend="compiled")
        samples = float(np.prod(geo.projection_shape)) * n
        fwd = best_time(lambda g=geo, v=volume: project(v, g, backend="compiled"), 3)
        adj = best_time(lambda g=geo, s=sino: backproject(s, g, backend="compiled"), 3)
        fwd_twin = best_time(lambda g=geo, v=volume: project(v, g, backend="torch"), 1)
        adj_twin = best_time(lambda g=geo, s=sino: backproject(s, g, backend="torch"), 1)
        lines += [
            _row(f"{n}^3 forward, compiled", fwd, samples, fwd),
            _row(f"{n}^3 forward, torch twin", fwd_twin, samples, fwd),
            _row(f"{n}^3 adjoint, compiled", adj, samples, adj),
            _row(f"{n}^3 adjoint, torch twin", adj_twin, samples, adj),
        ]
    return lines


def _diffct(quick: bool) -> list[str]:
    n, n_views, n_det = (32, 10, 32) if quick else (64, 50, 64)
    header = f"### 3D cone beam vs diffct's torch backend ({n}^3, {n_views} views, {n_det}^2)"
    try:
        import diffct
    except ImportError:
        return [header, "", "diffct is not installed (`pip install diffct`): peer skipped."]
    geo = ConeBeamGeometry.default(n_voxel=n, n_views=n_views, n_detector=n_det)
    trajectory = diffct.circular_trajectory_3d(
        torch.from_numpy(geo.angles).float(), geo.dso, geo.dsd, device="cpu"
    )
    peer = diffct.Projector(
        trajectory,
        geo.volume_shape,
        (n_det, n_det),
        beam="cone",
        detector_spacing=float(geo.d_detector[0]),
        voxel_spacing=float(geo.d_voxel[0]),
        backend="torch",
    )
    volume = torch.rand(geo.volume_shape)
    sino = project(volume, geo, backend="compiled")
    samples = float(np.prod(geo.projection_shape)) * n
    fwd = best_time(lambda: project(volume, geo, backend="compiled"), 3)
    adj = best_time(lambda: backproject(sino, geo, backend="compiled"), 3)
    peer_fwd = best_time(lambda: peer.project(volume), 1)
    peer_adj = best_time(lambda: peer.backproject(sino.transpose(1, 2).contiguous()), 1)
    return [
        header,
        "",
        f"diffct {diffct.__version__ if hasattr(diffct, '__version__') else ''} "
        "(`Projector(..., beam='cone', backend='torch')`, Siddon-type ray marching).",
        "",
        "| operation | time (ms) | M ray-samples/s | time / ours |",
        "|---|---|---|---|",
        _row("forward, ours (compiled)", fwd, samples, fwd),
        _row("forward, diffct torch", peer_fwd, samples, fwd),
        _row("adjoint, ours (compiled)", adj, samples, adj),
        _row("adjoint, diffct torch", peer_adj, samples, adj),
    ]


def _parallel_2d(quick: bool) -> list[str]:
    # Odd sizes: scikit-image rotates about pixel n // 2, which is the image centre only then.
    n, n_angles = (127, 90) if quick else (255, 180)
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    geo = ConeBeamGeometry(
        n_voxel=(1, n, n),
        d_voxel=(1.0, 1.0, 1.0),
        n_detector=(1, n),
        d_detector=(1.0, 1.0),
        angles=angles,
        dso=float(n),
        dsd=2.0 * n,
        mode="parallel",
    )
    disc = [Ellipsoid(centre=(0.0, 0.0, 0.0), semi_axes=(0.35 * n, 0.35 * n, 1e6), density=1.0)]
    image = voxelise(disc, geo, supersample=8)
    exact = line_integrals(disc, geo)[:, 0].numpy()
    samples = float(n_angles * n * n)

    def accuracy(sino: np.ndarray) -> str:
        return f"{np.linalg.norm(sino - exact) / np.linalg.norm(exact):.2e}"

    sino = project(image, geo, backend="compiled")
    fwd = best_time(lambda: project(image, geo, backend="compiled"), 5)
    adj = best_time(lambda: backproject(sino, geo, backend="compiled"), 5)
    rows_fwd = [
        _row("ours (compiled Joseph)", fwd, samples, fwd) + f" {accuracy(sino[:, 0].numpy())} |"
    ]
    rows_adj = [_row("ours (compiled Joseph)", adj, samples, adj)]

    from skimage.transform import iradon, radon

    img = image[0].numpy()
    degrees = np.degrees(angles)
    sk_sino = radon(img, degrees, circle=True)
    t = best_time(lambda: radon(img, degrees, circle=True), 3)
    rows_fwd.append(_row("scikit-image radon", t, samples, fwd) + f" {accuracy(sk_sino.T)} |")
    t = best_time(lambda: iradon(sk_sino, degrees, circle=True, filter_name=None), 3)
    rows_adj.append(_row("scikit-image iradon (filter_name=None)", t, samples, adj))

    try:
        import astra
    except ImportError:
        astra = None
    if astra is not None:
        vol_geom = astra.create_vol_geom(n, n)
        proj_geom = astra.create_proj_geom("parallel", 1.0, n, angles)
        for kind in ("line", "linear", "strip"):
            projector = astra.create_projector(kind, proj_geom, vol_geom)

            def forward(p=projector):
                data_id, data = astra.create_sino(img, p)
                astra.data2d.delete(data_id)
                return data

            result = forward()

            def adjoint(p=projector, s=result):
                data_id, _ = astra.create_backprojection(s, p)
                astra.data2d.delete(data_id)

            # ASTRA's angle runs the other way round; the disc is symmetric, so compare as is.
            t = best_time(forward, 3)
            rows_fwd.append(_row(f"ASTRA CPU '{kind}'", t, samples, fwd) + f" {accuracy(result)} |")
            rows_adj.append(_row(f"ASTRA CPU '{kind}'", best_time(adjoint, 3), samples, adj))
            astra.projector.delete(projector)
    lines = [
        f"### 2D parallel beam: {n}^2 image, {n_angles} angles over 180 deg, {n} detector pixels",
        "",
        "Ours runs on a one-slice volume in parallel mode. Accuracy: relative L2 error of the "
        f"forward projection of a voxelised disc (radius {0.35 * n:.1f} px, 8^2 sub-samples per "
        "pixel) against its exact line integrals.",
        "",
        "| forward | time (ms) | M ray-samples/s | time / ours | rel. L2 error |",
        "|---|---|---|---|---|",
        *rows_fwd,
        "",
        "| adjoint / backprojection | time (ms) | M ray-samples/s | time / ours |",
        "|---|---|---|---|",
        *rows_adj,
    ]
    if astra is None:
        lines.append("\nASTRA is not installed (`pip install astra-toolbox`): peer skipped.")
    return lines


def run(quick: bool) -> str:
    """Markdown tables of projector timings (compiled vs twin vs peers)."""
    lines = [
        f"torch threads: {torch.get_num_threads()}. Times are the best of 3 runs (1 for the "
        "torch twin and diffct). Ray-samples: rays x n (voxels per edge).",
        "",
        *_cone_3d(quick),
        "",
        *_diffct(quick),
        "",
        *_parallel_2d(quick),
    ]
    return "\n".join(lines)
