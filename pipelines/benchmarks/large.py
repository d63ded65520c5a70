"""256^3 end to end: FDK, ASD-POCS and the Gaussians on a 256^3 scan with 100 noisy views.

    python -m pipelines.benchmark large [--quick]

A training-split volume (`VOLUME`, from the development folder; the Shepp-Logan phantom when
that folder is absent) is prepared as the curated data (`pipelines.benchmarks._cases`) and
scanned with TIGRE's noise. Each method runs in its own fresh process on the scan read from a
file: wall time, peak resident memory (VmHWM, reset after the scan is read, so the peak is
that of a process holding the scan and running the method, as `pipelines.recon` does), the
estimate of `nr.memory.required_bytes` beside it, and PSNR/SSIM against the truth. FDK and
ASD-POCS use their defaults, the Gaussians the default recipe (`nr.recon.recipe`); a method
whose estimate exceeds the memory available says so in one line and is skipped.

Each finished row is appended at once to ``ROWS`` (committed with the repository) and a new
run skips the rows already there. The calibration rows of `nr.memory` (short runs at 64^3 to
160^3, `CALIBRATION`) are kept in the same file and tabulated with the model's error.
``--quick``: 128^3 with 50 views. Threads: torch's as set by the environment
(``OMP_NUM_THREADS``), recorded in every row.

    python -m pipelines.benchmarks.large calibrate   # the calibration rows only
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nr.io import Scan, read_scan, write_scan
from nr.memory import MiB, check_memory, proc_kib, required_bytes, resident_bytes
from nr.metrics import truth_scores
from nr.ops.iterative import ASDPOCSConfig
from nr.ops.noise import simulate_projections
from nr.recon import recipe
from pipelines.benchmarks._cases import data_dir, geometry, split_volume

TITLE = "256^3 end to end"
ROWS = Path(__file__).resolve().parents[2] / "docs" / "large_rows.jsonl"
WORK = Path("runs") / "benchmark-large"
# A training-split volume of data_curation/splits.json (a LIDC-IDRI chest, 133 x 256 x 256).
VOLUME = "vtkjs_lidc2_chest_ct_u8"
PHANTOM = "shepp_logan"
METHODS = ("fdk", "asd_pocs", "gaussians")
FULL, QUICK = (256, 100), (128, 50)
# Short runs that calibrate nr.memory: (method, size, views, overrides); the loops' peaks are
# reached in their first iterations, ASD-POCS's in its first sweep.
SHORT = {"iterations": 3, "warm_start_steps": 20}
CALIBRATION = [
    (method, size, views, overrides)
    for method, overrides in (
        ("fdk", {}),
        ("asd_pocs", {"n_iter": 2}),
        ("gaussians", SHORT),
        ("hashgrid", SHORT),
    )
    for size in (64, 128)
    for views in (25, 50)
] + [
    ("gaussians", 128, 50, {**SHORT, "n_points": 400_000}),
    ("gaussians", 128, 50, {**SHORT, "views_per_iteration": 4}),
    ("hashgrid", 160, 25, SHORT),
]
OVERRIDES = ("iterations", "warm_start_steps", "n_points", "views_per_iteration", "n_iter")


def peak_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM: per address space)."""
    kib = proc_kib("/proc/self/status", "VmHWM")
    if kib is None:
        raise OSError("/proc/self/status has no VmHWM")
    return kib / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current resident size (Linux >= 4.0: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _volume_name() -> str:
    return VOLUME if data_dir() is not None else PHANTOM


def _scan_file(volume: str, size: int, views: int) -> Path:
    return WORK / "cases" / f"{volume}_{size}_{views}.npz"


def _prepare(job: dict[str, Any]) -> None:
    """Write the job's scan (truth, geometry, noisy projections) once."""
    path = _scan_file(job["volume"], job["size"], job["views"])
    if path.is_file():
        return
    geo = geometry(job["size"], job["views"])
    if job["volume"] == PHANTOM:
        from nr.phantoms import shepp_logan_3d, voxelise

        truth = voxelise(shepp_logan_3d(geo), geo)
    else:
        truth = torch.from_numpy(split_volume(job["volume"], job["size"]))
    projections = simulate_projections(truth, geo, noise=True, seed=0).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scan(Scan(projections, geo, truth, metadata={"format": "benchmark"}), path)


def _config(job: dict[str, Any], geo) -> Any:
    """The method's default configuration with the job's overrides ("n_iter" for ASD-POCS;
    "iterations", "warm_start_steps" and "n_points" for a neural recipe); None for FDK."""
    progress = job["kind"] == "run"
    if job["method"] == "fdk":
        return None
    if job["method"] == "asd_pocs":
        return ASDPOCSConfig(n_iter=job.get("n_iter", ASDPOCSConfig.n_iter))
    config = recipe(
        job["method"],
        geo.volume_shape,
        geo.n_views,
        iterations=job.get("iterations"),
        warm_start_steps=job.get("warm_start_steps"),
    )
    train = dataclasses.replace(
        config.train,
        checkpoint_every=0,
        progress=progress,
        views_per_iteration=job.get("views_per_iteration", config.train.views_per_iteration),
    )
    config = dataclasses.replace(config, train=train)
    if "n_points" in job:
        control = dataclasses.replace(
            config.model.density_control, max_gaussians=2 * job["n_points"]
        )
        config = dataclasses.replace(
            config,
            init=dataclasses.replace(config.init, n_points=job["n_points"]),
            model=dataclasses.replace(config.model, density_control=control),
        )
    return config


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this (fresh) process; returns its row."""
    from nr.ops.fdk import fdk
    from nr.ops.iterative import asd_pocs
    from nr.recon import reconstruct, warm_start

    scan = read_scan(_scan_file(job["volume"], job["size"], job["views"]))
    geo, projections, truth = scan.geo, scan.projections, scan.volume_gt
    config = _config(job, geo)
    _reset_peak()
    row: dict[str, Any] = {"resident_before_mb": resident_bytes() / MiB}
    started = time.perf_counter()
    if job["method"] == "fdk":
        volume = fdk(projections, geo)
    elif job["method"] == "asd_pocs":
        volume = asd_pocs(projections, geo, config, progress=job["kind"] == "run")
    else:
        # The warm start (FDK, ASD-POCS, initialisation, volume fit) and the loop, as
        # `reconstruct` runs them, with the peak of each phase.
        start = warm_start(projections, geo, config, truth)
        row["warm_start_peak_mb"] = peak_mb()
        row["warm_start_seconds"] = time.perf_counter() - started
        row["warm_start"] = start.record
        _reset_peak()
        row["resident_loop_start_mb"] = resident_bytes() / MiB
        volume, history = reconstruct(projections, geo, config, truth, start=start)
        row["loop_peak_mb"] = peak_mb()
        row["loop_seconds"] = history["wall_time"]
        row["loop_iterations"] = config.train.iterations
        row["loop_views_per_iteration"] = config.train.views_per_iteration
        row["gaussians"] = history.get("gaussians")
    row["seconds"] = time.perf_counter() - started
    row["peak_mb"] = max(peak_mb(), row.get("warm_start_peak_mb", 0.0))
    row.update(truth_scores(volume, truth))
    row["threads"] = torch.get_num_threads()
    return row


def _child(command: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """Run `command` ("prepare" or "measure") on `job` in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.benchmarks.large", command, json.dumps(job)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if command == "measure" else None


def _key(job: dict[str, Any]) -> str:
    """A job's (and its row's) identity; runs take no overrides."""
    extra = "".join(f",{k}={job[k]}" for k in OVERRIDES if k in job and job["kind"] != "run")
    return "/".join(str(job[k]) for k in ("kind", "volume", "size", "views", "method")) + extra


def _read_rows() -> dict[str, dict[str, Any]]:
    return {_key(row): row for row in _all_rows()}


def _jobs(quick: bool, calibrate: bool) -> Iterator[dict[str, Any]]:
    volume = _volume_name()
    if calibrate:
        for method, size, views, overrides in CALIBRATION:
            yield {"kind": "calibration", "volume": volume, "size": size, "views": views,
                   "method": method, **overrides}  # fmt: skip
        return
    size, views = QUICK if quick else FULL
    for method in METHODS:
        yield {"kind": "run", "volume": volume, "size": size, "views": views, "method": method}


def _run_jobs(quick: bool, calibrate: bool) -> None:
    for job in _jobs(quick, calibrate):
        if _key(job) in _read_rows():
            continue
        geo = geometry(job["size"], job["views"])
        try:
            check_memory(job["method"], geo, _config(job, geo))
        except MemoryError as error:
            print(f"{job['method']}: skipped, {error}", file=sys.stderr, flush=True)
            row = {**job, "skipped": str(error), "threads": torch.get_num_threads()}
        else:
            print(f"{_key(job)}: running", file=sys.stderr, flush=True)
            _child("prepare", job)
            row = {**job, **_child("measure", job)}
        with ROWS.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def run(quick: bool = False) -> str:
    _run_jobs(quick, calibrate=False)
    return table(_all_rows())


def _all_rows() -> list[dict[str, Any]]:
    if not ROWS.is_file():
        return []
    return [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines() if line]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown results: the runs, then the calibration of `nr.memory`."""
    latest = {_key(r): r for r in rows if r["kind"] == "run"}
    runs = sorted(latest.values(), key=lambda r: (-r["size"], METHODS.index(r["method"])))
    lines = [
        "One fresh process per method on a scan read from a file; peak = VmHWM (resident set) "
        "from the moment the scan is in memory to the end of the method, the process's "
        "Python, torch and scan included; 'estimate' = `nr.memory.required_bytes` (the "
        "pre-flight check of `pipelines.recon` and `pipelines.diffnr`). PSNR/SSIM against "
        "the truth (data range 1). Gaussians: the default recipe "
        '(`nr.recon.recipe("gaussians", shape, views)`), its warm start (FDK, ASD-POCS, '
        "seeding, volume fit) and loop timed and measured apart. The FDK and ASD-POCS rows "
        "at 256^3 and the calibration below set `nr.memory`'s coefficients; the Gaussians' "
        "estimate at 256^3 is a prediction.",
        "",
        "| volume | size | views | method | threads | wall time | peak memory | estimate | "
        "PSNR (dB) | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        head = f"| {r['volume']} | {r['size']}^3 | {r['views']} | {r['method']} | {r['threads']} |"
        if "skipped" in r:
            lines.append(head + f" skipped: {r['skipped']} | | | | |")
            continue
        lines.append(
            head + f" {_duration(r['seconds'])} | {r['peak_mb'] / 1024:.2f} GiB | "
            f"{estimate_mb(r) / 1024:.2f} GiB ({_error(r)}) | {r['psnr']:.2f} | {r['ssim']:.3f} |"
        )
    for r in runs:
        if r["method"] == "gaussians" and "skipped" not in r:
            warm = r["warm_start"]
            lines += [
                "",
                f"Gaussians at {r['size']}^3: warm start {_duration(r['warm_start_seconds'])} "
                f"(ASD-POCS {_duration(warm['start_seconds'])}, fit of {warm['steps']} steps "
                f"{_duration(warm.get('fit_seconds', 0.0))}; ASD-POCS {warm['start_psnr']:.2f} "
                f"dB, fitted Gaussians {warm['fitted_psnr']:.2f} dB), peak "
                f"{r['warm_start_peak_mb'] / 1024:.2f} GiB; loop of {r['loop_iterations']} "
                f"iterations x {r['loop_views_per_iteration']} views "
                f"{_duration(r['loop_seconds'])}, peak {r['loop_peak_mb'] / 1024:.2f} GiB; "
                f"{r['gaussians']:,} Gaussians at the end.",
            ]
    repeats: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "calibration":
            repeats.setdefault(_key(r), []).append(r)
    if repeats:
        lines += [
            "",
            "Calibration of `nr.memory` (short runs: FDK in full, ASD-POCS 2 iterations, the "
            "neural recipes a 20-step warm-start fit and 3 loop iterations; the peaks are "
            "reached in the first iterations). Cases measured twice give both peaks: below "
            "about 200^3 voxels the allocator keeps freed volumes, and the same run's peak "
            "varies from process to process; the error is against the larger.",
            "",
            "| method | size | views | overrides | peak memory | estimate |",
            "|---|---|---|---|---|---|",
        ]
        order = sorted(repeats.values(), key=lambda g: (g[0]["method"], g[0]["size"],
                                                        g[0]["views"], _key(g[0])))  # fmt: skip
        for group in order:
            r = max(group, key=lambda row: row["peak_mb"])
            extra = ", ".join(
                f"{name.replace('_', ' ')} {r[name]:,}"
                for name in ("n_points", "views_per_iteration")
                if name in r
            )
            peaks = " / ".join(f"{row['peak_mb']:.0f}" for row in group)
            lines.append(
                f"| {r['method']} | {r['size']}^3 | {r['views']} | {extra or '-'} | "
                f"{peaks} MiB | {estimate_mb(r):.0f} MiB ({_error(r)}) |"
            )
    return "\n".join(lines)


def estimate_mb(row: dict[str, Any]) -> float:
    """`nr.memory.required_bytes` of a row's job, in MB."""
    geo = geometry(row["size"], row["views"])
    return required_bytes(row["method"], geo, _config(row, geo)) / 2**20


def _error(row: dict[str, Any]) -> str:
    return f"{100 * (estimate_mb(row) / row['peak_mb'] - 1):+.0f} %"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def main(argv: list[str]) -> None:
    """``prepare JOB`` / ``measure JOB`` (a fresh process per job), or ``calibrate``."""
    if argv[:1] == ["calibrate"]:
        _run_jobs(quick=False, calibrate=True)
        print(table(_all_rows()))
        return
    command, job = argv[0], json.loads(argv[1])
    if command == "prepare":
        _prepare(job)
    else:
        print(json.dumps(_measure(job)))


if __name__ == "__main__":
    main(sys.argv[1:])
