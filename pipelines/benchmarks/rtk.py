"""Ours against RTK (`nr.ops.rtk`): the same cone-beam problems, one process, same threads.

    python -m pipelines.benchmark rtk [--quick]

Problems: the default scan (`ConeBeamGeometry.default`, TIGRE-like: 256 mm cube, DSO:DSD
5:7, square detector twice the cube's side) at 128^3 / 50 views / 128^2 detector and
256^3 / 100 views / 256^2 (``--quick``: 64^3 / 20 views / 64^2 only), float32 on both
sides. Operations: Joseph forward projection, its transpose (back projection), FDK with
the plain ramp (ours: ``filter="ram_lak"``; RTK: Hann cut 0, no truncation correction),
and CGLS with the same fixed iteration count (ours: `nr.ops.cgls`; RTK:
ConjugateGradientConeBeamReconstructionFilter with its Joseph pair, `nr.ops.rtk.cgls_image`).

Threads: ITK's global default is set to ``torch.get_num_threads()`` for the run.

Timed (wall clock, interleaved ours, RTK, ours, RTK, ...; the best of 3 calls each):
- ours: the library call on a CPU tensor built before timing (``project``, ``backproject``,
  ``fdk``, ``cgls``), so it includes its own per-call set-up (view vectors, padded copies,
  output allocation);
- RTK: the ``*_image`` call of `nr.ops.rtk` on itk images and an RTK geometry built once
  before timing: creating the filter, its zero output/start image (RTK's
  ConstantImageSource) and ``Update()``. Not timed: converting arrays to itk images and
  back (a transpose into RTK's frame and copies that ours does not need).

Agreement (between the two outputs of the first timed call): relative L2 of RTK's
projections against ours; PSNR (dB) for volumes, with the range (max - min) of ours as the
data range, on the voxels where the two are comparable: off the two outermost voxel
layers for the back projection and CGLS (where the Joseph models differ,
docs/projector.md "Border voxels"), in the field of view (voxels every view sees between
its outermost pixel centres) for FDK. The forward projection and the projections fed to
the rest are those of the voxelised Shepp-Logan head (values in [0, 1]) with its two
outermost layers set to 0, projected by ours.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

import numpy as np
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops import rtk
from nr.ops.fdk import fdk
from nr.ops.iterative import CGLSConfig, cgls
from nr.ops.projector import backproject, project
from nr.phantoms import shepp_logan_3d, voxelise
from pipelines.benchmarks._timing import best_time

TITLE = "Ours against RTK (CPU)"
SIZES = ((128, 50, 128), (256, 100, 256))  # (n_voxel, n_views, n_detector)
QUICK_SIZES = ((64, 20, 64),)
CGLS_ITERATIONS = 10
REPEAT = 3


def run(quick: bool) -> str:
    """The Markdown body: set-up, the table, the memory used."""
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    previous = rtk.set_threads(threads)
    try:
        rows, memory = [], []
        for n, n_views, n_det in QUICK_SIZES if quick else SIZES:
            geo = ConeBeamGeometry.default(n_voxel=n, n_views=n_views, n_detector=n_det)
            size = f"{n}^3, {n_views} views, {n_det}^2"
            rows += [(name, size, *result) for name, result in _compare(geo)]
            memory.append(f"{size}: {_peak_rss_gb():.1f} GB")
    finally:
        rtk.set_threads(previous)
    total = _total_memory_gb()
    lines = [
        f"Threads: {threads} for both (torch and ITK's global default). itk-rtk "
        f"{_rtk_version()}, float32 on both sides; CGLS {CGLS_ITERATIONS} iterations. Times: "
        f"best of {REPEAT} calls each, interleaved; arrays are converted to itk images "
        "before timing (module docstring, `pipelines/benchmarks/rtk.py`).",
        "",
        "| operation | size | ours (s) | RTK (s) | ours / RTK | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, ours, theirs, agreement in rows:
        lines.append(
            f"| {name} | {size} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} | {agreement} |"
        )
    peak = _peak_rss_gb()
    verdict = "fine" if peak < 0.5 * total else "close to the machine's memory"
    lines += [
        "",
        "Agreement: relative L2 of RTK's projections against ours; PSNR of RTK's volume "
        "against ours (data range: ours' max - min) off the two outermost voxel layers "
        '("interior") or in the field of view ("FOV").',
        "",
        "Peak resident memory of the process after each size (both sides' arrays and "
        f"images): {'; '.join(memory)}. Machine memory {total:.0f} GB: {verdict}.",
        "",
        f"Machine load (1-minute load average, {os.cpu_count()} cores) at the start "
        f"{load_before:.2f}, at the end {os.getloadavg()[0]:.2f}: other jobs share the cores "
        "with both sides alike when it exceeds the threads used.",
    ]
    return "\n".join(lines)


def _compare(geo: ConeBeamGeometry) -> list[tuple[str, tuple[float, float, str]]]:
    """(operation, (ours s, RTK s, agreement)) for the four operations on `geo`."""
    interior = rtk.border_distance(geo.volume_shape) >= 2
    phantom = voxelise(shepp_logan_3d(geo), geo, supersample=2, dtype=torch.float32)
    phantom = phantom * torch.from_numpy(interior)
    projections = project(phantom, geo)
    geometry = rtk.rtk_geometry(geo)
    volume_image = rtk.volume_image(phantom.numpy(), geo)
    projection_image = rtk.projection_image(projections.numpy(), geo)
    fov = rtk.field_of_view(geo)
    config = CGLSConfig(n_iter=CGLS_ITERATIONS)
    return [
        (
            "forward projection",
            _timed(
                lambda: project(phantom, geo).numpy(),
                lambda: rtk.forward_image(volume_image, geo, geometry),
                rtk.projection_from_image,
                lambda ours, theirs: f"rel. L2 {_relative(theirs, ours):.1e}",
            ),
        ),
        (
            "back projection",
            _timed(
                lambda: backproject(projections, geo).numpy(),
                lambda: rtk.back_image(projection_image, geo, geometry),
                rtk.volume_from_image,
                lambda ours, theirs: _psnr(ours, theirs, interior, "interior"),
            ),
        ),
        (
            "FDK (ramp)",
            _timed(
                lambda: fdk(projections, geo, "ram_lak").numpy(),
                lambda: rtk.fdk_image(projection_image, geo, geometry),
                rtk.volume_from_image,
                lambda ours, theirs: _psnr(ours, theirs, fov, "FOV"),
            ),
        ),
        (
            f"CGLS ({CGLS_ITERATIONS} it.)",
            _timed(
                lambda: cgls(projections, geo, config, progress=False).numpy(),
                lambda: rtk.cgls_image(projection_image, geo, CGLS_ITERATIONS, geometry=geometry),
                rtk.volume_from_image,
                lambda ours, theirs: _psnr(ours, theirs, interior, "interior"),
            ),
        ),
    ]


def _timed(
    ours: Callable[[], np.ndarray],
    theirs: Callable[[], object],
    to_array: Callable[[object], np.ndarray],
    agreement: Callable[[np.ndarray, np.ndarray], str],
) -> tuple[float, float, str]:
    """Best-of-`REPEAT` times of `ours` and `theirs`, called alternately, and the agreement
    of their first outputs (RTK's converted by `to_array`, untimed)."""
    first: dict[str, object] = {}
    best = {"ours": float("inf"), "theirs": float("inf")}
    for _ in range(REPEAT):
        for side, fn in (("ours", ours), ("theirs", theirs)):
            result: list = []
            seconds = best_time(lambda f=fn, r=result: r.append(f()), 1)
            best[side] = min(best[side], seconds)
            first.setdefault(side, result[0])
    return best["ours"], best["theirs"], agreement(first["ours"], to_array(first["theirs"]))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _psnr(ours: np.ndarray, theirs: np.ndarray, where: np.ndarray, label: str) -> str:
    reference = ours[where].astype(np.float64)
    mse = float(np.mean((theirs[where] - reference) ** 2))
    peak = float(reference.max() - reference.min())
    value = "inf" if mse == 0 else f"{10 * np.log10(peak**2 / mse):.1f}"
    return f"PSNR {value} dB ({label}, {where.mean():.0%} of voxels)"


def _peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _rtk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("itk-rtk")
    except PackageNotFoundError:
        return "(version unknown)"
