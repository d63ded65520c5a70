"""How much memory a reconstruction needs, and a pre-flight check that it fits.

    required_bytes("gaussians", geo)        # peak resident bytes of a process running it
    check_memory("gaussians", geo)          # raises InsufficientMemoryError when it cannot fit

The estimate is the peak resident memory (VmHWM) of a process that holds the scan (the
projections and, when known, the ground truth) and runs the method with its configuration,
Python and torch included. It is a sum of measured terms (`MODELS`), in bytes:

    constant + per_voxel * voxels + per_pixel * pixels + per_view_voxel * cached view-voxels
             + per_rendered_pixel * pixels rendered per iteration + per_gaussian * Gaussians

with ``voxels`` the grid's voxel count, ``pixels`` those of all projections, the cached
view-voxels the SART family's per-view weights ``V_b`` (one volume per block of views, kept
only while there are at most `nr.ops.iterative.V_CACHE_ELEMENTS` of them: 128^3 with 50 views
keeps them, 256^3 with 100 views recomputes them), the rendered pixels those of one loop
iteration's views, and the Gaussians the most the density control allows. A neural method
needs the larger of its warm start (FDK, the classical start, the volume fit) and its loop.

The coefficients (`MODELS`) come from peak measurements of each method in a fresh process,
one thread (`python -m pipelines.benchmarks.large calibrate` and `python -m pipelines.benchmark
large`; every row in docs/large_rows.jsonl, tabulated with this model's error in
docs/BENCHMARKS.md, "256^3 end to end"): FDK, ASD-POCS (2 iterations), the Gaussians and the
hash grid (a 20-step warm-start fit, 3 loop iterations) at 64^3 and 128^3 with 25 and 50
views, the Gaussians at 128^3 also with 400,000 initial Gaussians and with 4 views per
iteration, the hash grid at 160^3. What they say:

- Python, torch and this package: 430 MB before any scan.
- FDK: about 7 bytes per voxel and 26 per projection pixel beyond it (682 MiB at 256^3 with
  100 views, measured 695 MiB).
- ASD-POCS: about 85 bytes (21 float32 volumes) per voxel, plus 7 bytes per cached element
  of its per-view weights: 105 million at 128^3 with 50 views, where they are 40 % of the
  peak; at 256^3 with 100 views they are recomputed and nothing is cached.
- The Gaussians: the larger of their warm start (ASD-POCS) and their loop, whose voxelized
  grid, full-grid TV and their gradients take about 75 bytes per voxel, plus about 150 per
  rendered pixel (the projections and their 2D SSIM under autograd) and 300 per Gaussian
  (parameters, gradients, Adam's moments, the kernels' buffers; neither term could be told
  from the run-to-run spread at 128^3, so both are set from the tensors' sizes).
  At 256^3 with 100 views they peaked at 3.11 GiB, 8 % above this estimate, when the loop's
  last iteration evaluated the volume against the ground truth.
- The hash grid: 380 MB more (its tables and their Adam moments), about 930 bytes per point
  of one chunk of field evaluations (2^21 points) and 29 per voxel; not yet checked above
  160^3.

Below about 203^3 voxels a float32 volume is smaller than the 32 MiB above which glibc's
allocator always maps fresh memory, so freed volumes stay in its heap and the same run peaks
`HEAP_FACTOR` times higher per voxel (ASD-POCS: 136 bytes per voxel at 128^3, 81 at 256^3);
its peak also varies by up to a third from one process to the next, and the coefficients
follow the larger measurements. The check is meant to stop a run that cannot fit, not to
budget to the megabyte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nr.geometry import ConeBeamGeometry
from nr.ops.iterative import V_CACHE_ELEMENTS, ASDPOCSConfig, SARTConfig
from nr.recon import GaussianReconConfig, HashGridReconConfig, recipe

METHODS = ("fdk", "asd_pocs", "gaussians", "hashgrid")
GB = 1e9


class InsufficientMemoryError(MemoryError):
    """A method's estimated peak memory exceeds what the machine has available."""


@dataclass(frozen=True)
class MemoryModel:
    """The measured terms of one phase of a method, in bytes (module docstring).

    Attributes:
        constant: Python, torch and this package, and what does not grow with the scan.
        per_voxel: per voxel of the grid (the ground truth and the method's volumes), for
            grids of at least 2^23 voxels (`HEAP_FACTOR` times this below).
        per_pixel: per pixel of all the scan's projections.
        per_view_voxel: per cached element of the SART family's per-view weights.
        per_rendered_pixel: per pixel of one loop iteration's rendered views.
        per_gaussian: per Gaussian (parameters, gradients, Adam's moments, the kernels'
            per-Gaussian buffers).
        per_chunk_point: per point of one chunk of field evaluations (the hash grid evaluates
            its grid in chunks of ``FieldConfig.chunk_size`` points).
    """

    constant: float
    per_voxel: float
    per_pixel: float = 0.0
    per_view_voxel: float = 0.0
    per_rendered_pixel: float = 0.0
    per_gaussian: float = 0.0
    per_chunk_point: float = 0.0


MiB = 2**20
# glibc serves allocations below its mmap threshold (at most 32 MiB on 64-bit systems) from its
# heap, which keeps freed blocks; larger ones are mapped fresh and returned when freed. A grid
# whose float32 volume is below it (fewer than 2^23 voxels, about 203^3) therefore peaks higher
# per voxel: HEAP_FACTOR times, measured on FDK and ASD-POCS at 128^3 and 256^3.
MMAP_THRESHOLD = 32 * MiB
HEAP_FACTOR = 1.6
MODELS = {
    "fdk": MemoryModel(430e6, 6.75, per_pixel=26.3),
    "asd_pocs": MemoryModel(430e6, 85.0, per_view_voxel=7.0),
    "gaussians": MemoryModel(
        513e6, 75.0, per_pixel=26.3, per_rendered_pixel=150.0, per_gaussian=300.0
    ),
    "hashgrid": MemoryModel(810e6, 29.0, per_pixel=26.3, per_chunk_point=932.0),
}


def required_bytes(method: str, geo: ConeBeamGeometry, config: Any = None) -> int:
    """The estimated peak resident bytes of a process holding the scan `geo` and running
    `method` with `config` (module docstring).

    Args:
        method: one of `METHODS`.
        geo: the scan (its voxel grid, detector and views).
        config: the method's configuration: None for FDK; an `ASDPOCSConfig` for ASD-POCS; a
            `GaussianReconConfig` / `HashGridReconConfig` for the neural methods. None means
            the default (`ASDPOCSConfig()`, ``nr.recon.recipe(method, shape, views)``).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not isinstance(geo, ConeBeamGeometry):
        raise TypeError(f"geo: expected a ConeBeamGeometry, got {type(geo).__name__}")
    config = _default_config(method, geo) if config is None else config
    expected = {
        "fdk": type(None),
        "asd_pocs": ASDPOCSConfig,
        "gaussians": GaussianReconConfig,
        "hashgrid": HashGridReconConfig,
    }[method]
    if not isinstance(config, expected):
        raise TypeError(
            f"config: expected {expected.__name__} for {method}, got {type(config).__name__}"
        )
    voxels = math.prod(geo.volume_shape)
    pixels = geo.n_views * math.prod(int(n) for n in geo.n_detector)
    if method == "fdk":
        return _bytes(MODELS["fdk"], voxels, pixels)
    if method == "asd_pocs":
        return _bytes(MODELS["asd_pocs"], voxels, pixels, _cached(geo, config.block_size))
    start = _start_bytes(config.warm_start.method, geo, voxels, pixels)
    view_pixels = math.prod(int(n) for n in geo.n_detector)
    rendered = min(config.train.views_per_iteration, geo.n_views) * view_pixels
    if method == "gaussians":
        count = max(config.init.n_points, config.model.density_control.max_gaussians)
        loop = _bytes(MODELS["gaussians"], voxels, pixels, rendered=rendered, gaussians=count)
    else:
        chunk = min(voxels, config.field.chunk_size)
        loop = _bytes(MODELS["hashgrid"], voxels, pixels, rendered=rendered, chunk=chunk)
    return max(start, loop)


def _default_config(method: str, geo: ConeBeamGeometry) -> Any:
    if method == "fdk":
        return None
    if method == "asd_pocs":
        return ASDPOCSConfig()
    return recipe(method, geo.volume_shape, geo.n_views)


def _cached(geo: ConeBeamGeometry, block_size: int) -> int:
    """Elements of the SART family's cached per-block weights (0 when recomputed)."""
    elements = math.ceil(geo.n_views / block_size) * math.prod(geo.volume_shape)
    return elements if elements <= V_CACHE_ELEMENTS else 0


def _start_bytes(method: str, geo: ConeBeamGeometry, voxels: int, pixels: int) -> int:
    """The classical start of a neural recipe (`nr.warm_start.classical_start`)."""
    if method == "asd_pocs":
        return _bytes(MODELS["asd_pocs"], voxels, pixels, _cached(geo, ASDPOCSConfig.block_size))
    if method == "sart":  # the same sweep, without the TV steps
        return _bytes(MODELS["asd_pocs"], voxels, pixels, _cached(geo, SARTConfig.block_size))
    return _bytes(MODELS["fdk"], voxels, pixels)


def _bytes(
    model: MemoryModel,
    voxels: int,
    pixels: int,
    view_voxels: int = 0,
    rendered: int = 0,
    gaussians: int = 0,
    chunk: int = 0,
) -> int:
    heap = HEAP_FACTOR if 4 * voxels < MMAP_THRESHOLD else 1.0
    return int(
        model.constant
        + model.per_voxel * heap * voxels
        + model.per_pixel * pixels
        + model.per_view_voxel * view_voxels
        + model.per_rendered_pixel * rendered
        + model.per_gaussian * gaussians
        + model.per_chunk_point * chunk
    )


def proc_kib(path: str, field: str) -> int | None:
    """The value of `field` (a "Name:   N kB" line) of a /proc file, in KiB; None where the
    file or the field is absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """Bytes the system can give without swapping: MemAvailable of /proc/meminfo, else
    psutil's ``virtual_memory().available`` when psutil is installed, else None."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), 0 where /proc is absent."""
    return (proc_kib("/proc/self/status", "VmRSS") or 0) * 1024


def largest_side(method: str, geo: ConeBeamGeometry, available: int) -> int:
    """The largest N (16 to the grid's largest side) such that `method`'s default
    configuration on an N^3 grid (same views, N^2 detector pixels, as ``--size N`` scans a
    volume) needs at most `available` bytes; 0 when none does. A linear search: the estimate
    falls where a volume outgrows the allocator's heap (`HEAP_FACTOR`)."""
    for side in range(max(geo.volume_shape), 15, -1):
        if required_bytes(method, _cube(geo, side)) <= available:
            return side
    return 0


def _cube(geo: ConeBeamGeometry, side: int) -> ConeBeamGeometry:
    box = float(max(geo.s_voxel))
    return ConeBeamGeometry.for_volume((side,) * 3, (box / side,) * 3, geo.n_views)


def check_memory(
    method: str,
    geo: ConeBeamGeometry,
    config: Any = None,
    available: int | None = None,
    remedy: Callable[[int], str] | None = None,
) -> int | None:
    """Raise `InsufficientMemoryError` (one line) when `method` on `geo` will not fit.

    Args:
        method, geo, config: as `required_bytes`.
        available: bytes this process may use in all; None: what the system has available
            (`available_bytes`) plus what this process already holds (the estimate counts the
            whole process). When neither /proc/meminfo nor psutil is there, no check is made.
        remedy: the advice ending the message, given the largest grid side that fits (0 when
            none does); None: "reconstruct on an N^3 grid or smaller, or free memory".

    Returns:
        The estimate in bytes, or None when the available memory is unknown.
    """
    needed = required_bytes(method, geo, config)
    if available is None:
        system = available_bytes()
        if system is None:
            return None
        available = system + resident_bytes()
    if needed <= available:
        return needed
    side = largest_side(method, geo, available)
    if remedy is None:
        advice = "free memory"
        if side:
            advice = f"reconstruct on a {side}^3 grid or smaller, or free memory"
    else:
        advice = remedy(side)
    grid = "x".join(str(n) for n in geo.volume_shape)
    raise InsufficientMemoryError(
        f"{method} at {grid} with {geo.n_views} views needs about {needed / GB:.1f} GB, this "
        f"machine has {available / GB:.1f} GB available: {advice}"
    )
