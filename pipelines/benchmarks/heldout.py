"""DiffNR on the held-out split: volumes no prior was trained, validated or tuned on.

The five volumes of ``data_curation/splits.json`` "heldout", found by name in the development
folder and its ``corpus`` subfolder (`pipelines.benchmarks._cases.data_dir`), are prepared as
the curated training data (min-max normalised, resampled to size^3 in a 256 mm box) and scanned
with TIGRE's noise. For each volume, size (64, 128) and view count (10, 25): FDK, ASD-POCS,
the NR alone and DiffNR with each prior, for both representations, every NR run under the
guard's validation protocol (`nr.guard`; DiffNR with every reference rejected is the NR alone).
Each DiffNR row also records, per prior call, the guard's decision, the held-out residual ratio
it decided on and the pseudo-reference's true change in PSNR against the volume it was made
from.

Hours on 2 cores: each finished row is appended at once to ``ROWS`` (committed with the
repository) and a new run skips the rows already there, so the benchmark resumes where it
stopped; a DiffNR row records the prior's weights (`_prior_weights`) and its settings
(`_settings`) and is measured again when other weights are shipped or the defaults change.
Two processes of one thread each can share it (``OMP_NUM_THREADS=1``, started twice): each
claims a job before it starts it (``WORK/claims``). ``--quick`` runs the Gaussians at 64^3 on
the first three volumes. A row "NR, all views" fits the NR to every view from the start: the
cost of the protocol.
``--guard seeing|blind`` measures the DiffNR rows with that warm-start protocol
(`nr.guard.GuardConfig.blind_warm_start`; default: `GuardConfig`'s); the
rows of both protocols are kept apart and tabled side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from data_curation.manifest import file_sha256
from data_curation.splits import load_splits
from nr.assets import asset_path
from nr.diffnr import DiffNRConfig, run_diffnr
from nr.guard import GuardConfig
from nr.io import Scan, read_scan, write_scan
from nr.metrics import truth_scores
from nr.ops.fdk import fdk
from nr.ops.iterative import asd_pocs
from nr.ops.noise import simulate_projections
from nr.recon import recipe, reconstruct
from pipelines.benchmarks._cases import geometry, split_volume
from slicefixer.prior import load_prior

TITLE = "DiffNR on held-out volumes"
ROWS = Path(__file__).resolve().parents[2] / "docs" / "heldout_rows.jsonl"
WORK = Path("runs") / "benchmark-heldout"
SIZES, VIEWS = (64, 128), (10, 25)
NRS, PRIORS = ("gaussians", "hashgrid"), ("slicefixer", "diffusionblend")
PRIOR_ASSETS = {"slicefixer": "slicefixer-compact", "diffusionblend": "diffusionblend"}
GUARDS = ("seeing", "blind")
# the DiffNRConfig fields a row's result depends on (`_settings`): a row made with other values
# is stale, as one made with other weights
COMMON_FIELDS = ("nr", "iterations", "seed", "warm_start", "warm_start_steps",
                 "gaussian_rendering", "guard")  # fmt: skip
SCHEDULE_FIELDS = ("checkpoint", "start", "every", "weight", "loss_every", "crop")
PRIOR_FIELDS = {
    "none": (),
    "slicefixer": (*SCHEDULE_FIELDS, "axes", "fixer_cg"),
    "diffusionblend": (*SCHEDULE_FIELDS, "blend_t0", "blend_samples"),
}
OPTIONS = ("guard",)


def _scan(name: str, size: int, views: int) -> Path:
    """The case's scan file (written once under WORK)."""
    path = WORK / "cases" / f"{name}_{size}_{views}" / "scan.npz"
    if path.is_file():
        return path
    truth = torch.from_numpy(split_volume(name, size))
    geo = geometry(size, views)
    projections = simulate_projections(truth, geo, noise=True, seed=0).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scan(Scan(projections, geo, truth, metadata={"format": "benchmark"}), path)
    return path


def _guard_name(guard: GuardConfig) -> str:
    return GUARDS[guard.blind_warm_start]


def _jobs(quick: bool, guard: str) -> Iterator[dict[str, Any]]:
    """The rows in the order they are measured: per size, the Gaussians on every volume before
    the hash grid, the sparser scan first."""
    names = load_splits().heldout[: 3 if quick else None]
    for size in SIZES[:1] if quick else SIZES:
        for nr in NRS[:1] if quick else NRS:
            for name in names:
                for views in VIEWS:
                    case = {"volume": name, "size": size, "views": views}
                    if nr == NRS[0]:
                        yield {**case, "method": "fdk"}
                        yield {**case, "method": "asd_pocs"}
                    yield {**case, "method": "nr", "nr": nr}
                    for prior in ("none", *PRIORS):
                        yield {**case, "method": "diffnr", "nr": nr, "prior": prior,
                               "guard": guard}  # fmt: skip


def _guard_of(job: dict[str, Any]) -> str:
    # rows made before the blind protocol existed carry no "guard": they are "seeing" rows
    return job.get("guard", "seeing" if job["method"] == "diffnr" else "-")


def _case(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("volume", "size", "views")}


def _key(job: dict[str, Any]) -> str:
    fields = [str(job.get(k, "-")) for k in ("volume", "size", "views", "method", "nr", "prior")]
    return "/".join([*fields, _guard_of(job)])


def _classical(job: dict[str, Any], scan_file: Path) -> dict[str, Any]:
    """FDK, ASD-POCS, or the NR fitted to every view from the start (no validation views)."""
    scan = read_scan(scan_file)
    started = time.perf_counter()
    if job["method"] == "fdk":
        volume = fdk(scan.projections, scan.geo)
    elif job["method"] == "asd_pocs":
        volume = asd_pocs(scan.projections, scan.geo, progress=False)
    else:
        config = recipe(job["nr"], scan.geo.volume_shape, scan.geo.n_views)
        out = WORK / "runs" / _key(job).replace("/", "_")
        volume, _ = reconstruct(scan.projections, scan.geo, config, scan.volume_gt, out)
    return {**truth_scores(volume, scan.volume_gt), "seconds": time.perf_counter() - started}


@functools.cache
def _prior_weights(prior: str) -> str:
    """First 12 hex digits of the sha256 of the shipped prior's weight files: a DiffNR row made
    with other weights is stale (`run` measures it again). Hashed once per process."""
    folder = asset_path(PRIOR_ASSETS[prior])
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*.safetensors")):
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()[:12]


def _config(job: dict[str, Any]) -> DiffNRConfig:
    """A DiffNR job's configuration: `DiffNRConfig.default` for its prior, its guard protocol."""
    config = DiffNRConfig.default(geometry(job["size"], job["views"]), job["nr"], job["prior"])
    blind = _guard_of(job) == "blind"
    return dataclasses.replace(
        config, guard=dataclasses.replace(config.guard, blind_warm_start=blind)
    )


def _settings(config: DiffNRConfig) -> dict[str, Any]:
    """The fields of `config` its prior's result depends on, as JSON values."""
    fields = dataclasses.asdict(config)
    chosen = {name: fields[name] for name in (*COMMON_FIELDS, *PRIOR_FIELDS[config.prior])}
    return json.loads(json.dumps(chosen))


def _current(row: dict[str, Any]) -> bool:
    """False for a DiffNR row made with prior weights other than the shipped ones or with
    settings other than today's defaults."""
    if row["method"] != "diffnr":
        return True
    prior = row["prior"]
    weights = prior == "none" or row.get("prior_weights") == _prior_weights(prior)
    return weights and row.get("settings") == _settings(_config(row))


def _neural(job: dict[str, Any], scan_file: Path) -> dict[str, Any]:
    """The NR alone (prior "none", under the guard's protocol) or DiffNR with a prior, with
    the defaults of `DiffNRConfig.default` for that prior."""
    scan = read_scan(scan_file)
    config = _config(job)
    stamp = {"settings": _settings(config)}
    if job["prior"] != "none":
        stamp["prior_weights"] = _prior_weights(job["prior"])
    # a killed run resumes from its folder; one made with other settings or weights must not
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:8]
    out = WORK / "runs" / f"{_key(job).replace('/', '_')}_{digest}"
    metrics = run_diffnr(scan, config, load_prior(config), out_dir=out).metrics
    name = "nr_only" if job["prior"] == "none" else "diffnr"
    row = {
        "psnr": metrics[name]["psnr"],
        "ssim": metrics[name]["ssim"],
        "seconds": metrics["timings_seconds"][name],
        **stamp,
    }
    row["calls"] = [_call_record(call) for call in metrics.get("prior_calls", [])]
    return row


def _call_record(call: dict[str, Any]) -> dict[str, Any]:
    """One prior call of a run's metrics as a row keeps it: the guard's decision, the held-out
    residual ratio it decided on (reference over current volume) and the true change."""
    guard = call["guard"]
    return {
        "iteration": call["iteration"],
        "action": guard["action"],
        "residual_ratio": guard["residual_reference"] / guard["residual_current"],
        "true_change_db": call["reference_quality"]["psnr"] - call["current_quality"]["psnr"],
    }


def _read_rows() -> dict[str, dict[str, Any]]:
    if not ROWS.is_file():
        return {}
    rows = (json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines() if line)
    return {_key(row): row for row in rows if _current(row)}


def _claim(job: dict[str, Any]) -> bool:
    """Claim `job` for this process, so that several processes (one thread each) can share the
    benchmark: False when a live process holds it. A dead holder's claim is taken over."""
    claim = WORK / "claims" / _key(job).replace("/", "_")
    claim.parent.mkdir(parents=True, exist_ok=True)
    try:
        holder = int(claim.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        holder = None
    if holder is not None and holder != os.getpid():
        try:
            os.kill(holder, 0)
            return False
        except ProcessLookupError:
            pass
    claim.write_text(str(os.getpid()), encoding="utf-8")
    return int(claim.read_text(encoding="utf-8")) == os.getpid()


def run(quick: bool = False, guard: str | None = None) -> str:
    """Measure the missing rows (DiffNR with the warm-start protocol `guard`, "seeing" or
    "blind"; None: the default's) and return the table of every current row."""
    if guard is None:
        guard = _guard_name(GuardConfig())
    for job in _jobs(quick, guard):
        if _key(job) in _read_rows() or not _claim(job):
            continue
        scan_file = _scan(job["volume"], job["size"], job["views"])
        measure = _neural if job["method"] == "diffnr" else _classical
        row = {**job, **measure(job, scan_file)}
        with ROWS.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
    return table(list(_read_rows().values()))


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown results: one line per case and warm-start protocol, DiffNR - NR alone per
    prior, the default's worst row, guard accuracy per protocol."""
    by_key = {_key(row): row for row in rows}
    cases = sorted({(r["size"], r["views"], r["volume"]) for r in rows})
    nrs = [nr for nr in NRS if any(r.get("nr") == nr for r in rows)]
    lines = [
        "PSNR (dB) / SSIM against the ground truth. 'all views': the NR fitted to every view "
        "from the start; 'alone': the NR under the guard's validation protocol (the loop holds "
        "10 % of the views out until 3/4 of it), its warm start seeing those views or blind to "
        "them (column 'guard'); the prior columns give DiffNR's change over 'alone' (same "
        "protocol and seed). Time in seconds (2 cores shared by several jobs: compare times "
        "within a row only).",
        "",
    ]
    header = "| volume | size | views | guard | FDK | ASD-POCS |"
    rule = "|---|---|---|---|---|---|"
    for nr in nrs:
        header += f" {nr}, all views | {nr} alone | + slicefixer | + diffusionblend |"
        rule += "---|---|---|---|"
    lines += [header, rule]

    def cell(row: dict[str, Any] | None) -> str:
        return (
            "-"
            if row is None
            else f"{row['psnr']:.2f} / {row['ssim']:.3f} ({row['seconds']:.0f} s)"
        )

    for size, views, volume in cases:
        base = {"volume": volume, "size": size, "views": views}
        measured = {_guard_of(r) for r in rows if r["method"] == "diffnr" and _case(r) == base}
        guards = [g for g in GUARDS if g in measured] or ["-"]
        for guard in guards:
            line = f"| {volume} | {size} | {views} | {guard} |"
            for method in ("fdk", "asd_pocs"):
                line += f" {cell(by_key.get(_key({**base, 'method': method})))} |"
            for nr in nrs:
                line += f" {cell(by_key.get(_key({**base, 'method': 'nr', 'nr': nr})))} |"
                neural = {**base, "method": "diffnr", "nr": nr, "guard": guard}
                alone = by_key.get(_key({**neural, "prior": "none"}))
                line += f" {cell(alone)} |"
                for prior in PRIORS:
                    row = by_key.get(_key({**neural, "prior": prior}))
                    if row is None or alone is None:
                        line += " - |"
                        continue
                    line += (
                        f" {row['psnr'] - alone['psnr']:+.2f} dB / "
                        f"{row['ssim'] - alone['ssim']:+.3f} ({row['seconds']:.0f} s) |"
                    )
            lines.append(line)
    defaults = []
    for size, views, volume in cases:
        config = DiffNRConfig.default(geometry(size, views))
        base = {"volume": volume, "size": size, "views": views}
        full = by_key.get(_key({**base, "method": "nr", "nr": NRS[0]}))
        # without a guard (no prior) the default run is the NR fitted to every view
        row = full if config.guard is None else by_key.get(_key({
            **base, "method": "diffnr", "nr": NRS[0], "prior": config.prior,
            "guard": _guard_name(config.guard)}))  # fmt: skip
        if row is not None and full is not None:
            defaults.append((row["psnr"] - full["psnr"], f"{volume} {size}^3 {views} views"))
    if defaults:
        worst = min(defaults)
        lines += [
            "",
            f"DiffNR with the default settings (`DiffNRConfig.default`) minus the {NRS[0]} "
            f"fitted to all views: worst {worst[0]:+.2f} dB ({worst[1]}) over {len(defaults)} "
            "rows.",
        ]
    for guard in GUARDS:
        calls = [c for r in rows if _guard_of(r) == guard for c in r.get("calls", [])]
        if not calls:
            continue
        harmful = [c for c in calls if c["true_change_db"] < 0]
        helpful = [c for c in calls if c["true_change_db"] >= 0]
        count = lambda group, action: sum(c["action"] == action for c in group)  # noqa: E731
        lines += [
            "",
            f"Guard accuracy, warm start {guard}, over {len(calls)} prior calls (a call is "
            "harmful when its pseudo-reference's PSNR is below the volume it was made from): "
            f"harmful rejected {count(harmful, 'reject')} / kept {count(harmful, 'accept')}; "
            f"helpful kept {count(helpful, 'accept')} / rejected {count(helpful, 'reject')}.",
        ]
    return "\n".join(lines)
