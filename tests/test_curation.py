"""Curation end to end on two tiny volumes: manifest vs files, resume, bad input, crash, Dask."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from data_curation import CurationConfig, PairDataset, Reconstructor, curate, register
from data_curation.manifest import file_sha256, read_manifest
from data_curation.reconstructors import _REGISTRY, get_reconstructor
from nr.geometry import ConeBeamGeometry
from nr.phantoms import shepp_logan_3d, voxelise
from pipelines.curate import main

# Two iterations of SART: the standard count 4 times the fraction 0.5 (no --mix: equal shares).
ARGS = ["--views", "4,8", "--dense-views", "24", "--representations", "sart",
        "--iterations", "sart=4", "--iters-fraction", "0.5:0.5", "--size", "16",
        "--axes", "z,x", "--seed", "3", "--no-progress"]
CONFIG = CurationConfig(views=(4, 8), dense_views=24, representations=("sart",), mix=(1,),
                        standard_iterations={"sart": 4}, iters_fraction=(0.5, 0.5), size=16,
                        axes=("z", "x"), seed=3)


def _phantom(n: int) -> np.ndarray:
    geo = ConeBeamGeometry.default(n, 4)
    return voxelise(shepp_logan_3d(geo), geo).numpy()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("volumes")
    np.savez(folder / "head.npz", volume=_phantom(16))
    np.savez(folder / "chest.npz", scan=_phantom(20)[:, 2:18] * 1000.0 - 1000.0)
    manifest = {"head": {"file": "head.npz", "key": "volume", "anatomy": "head"},
                "chest": {"file": "chest.npz", "key": "scan", "anatomy": "chest"}}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    return folder


def _shard_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.glob("shards/*/*"))}


@pytest.fixture(scope="module")
def dataset(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    main(["--volumes", str(inputs), "--out", str(out), "--manifest",
          str(inputs / "MANIFEST.json"), "--workers", "1", *ARGS])
    return out


def test_manifest_counts_match_files(dataset):
    manifest = read_manifest(dataset)
    assert manifest["failed"] == []
    entries = manifest["volumes"]
    assert sorted(e["anatomy"] for e in entries.values()) == ["chest", "head"]
    files = sorted(str(p.relative_to(dataset)) for p in dataset.glob("shards/*/*"))
    recorded = sorted(s["file"] for e in entries.values() for s in e["shards"])
    assert files == recorded and len(files) == 2 * 2 * 2  # volumes x view counts x subset kinds
    pairs = 0
    for entry in entries.values():
        assert entry["prompt"] == f"remove artifacts for this {entry['anatomy']} CT slice"
        assert entry["shape"] == [16, 16, 16]
        for shard in entry["shards"]:
            path = dataset / shard["file"]
            assert file_sha256(path) == shard["sha256"]
            arrays = load_file(str(path))
            for axis in ("z", "x"):
                assert arrays[f"artifact_{axis}"].shape == arrays[f"clean_{axis}"].shape
                assert arrays[f"artifact_{axis}"].dtype == np.float16
                assert len(arrays[f"index_{axis}"]) == shard["pairs_per_axis"][axis]
            assert shard["iterations"] == 2 and shard["representation"] == "sart"
            assert len(shard["view_ids"]) == shard["views"] == len(set(shard["view_ids"]))
            assert arrays["biplanar"].shape == (2, 16, 16)
            angles = np.degrees(np.asarray(entry["geometry"]["angles"])[shard["view_ids"]])
            gap = [np.min(np.abs((angles - t + 180) % 360 - 180)) for t in (0, 90)]
            got = [abs((a - t + 180) % 360 - 180)
                   for a, t in zip(shard["biplanar_angles_deg"], (0, 90), strict=True)]
            np.testing.assert_allclose(got, gap)
            pairs += shard["pairs"]
    assert manifest["counts"] == {"volumes": 2, "shards": 8, "pairs": pairs, "failed": 0}
    assert 0 < pairs < 2 * 4 * 2 * 16  # air-only slices dropped


def test_pairs_are_underfit_and_readable(dataset):
    data = PairDataset(dataset, verify=True)
    assert len(data) == read_manifest(dataset)["counts"]["pairs"]
    item = data[0]
    assert item["artifact"].shape == item["clean"].shape == (1, 16, 16)
    assert item["artifact"].dtype == torch.float32 and item["biplanar"].shape == (2, 16, 16)
    artifact = torch.stack([data[i]["artifact"] for i in range(len(data))])
    clean = torch.stack([data[i]["clean"] for i in range(len(data))])
    assert float(clean.min()) >= 0 and float(clean.max()) <= 1
    mse = float(((artifact - clean) ** 2).mean())
    assert 1e-4 < mse < 0.1  # a reconstruction, but far from converged
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch["artifact"].shape == (3, 1, 16, 16) and len(batch["prompt"]) == 3


def test_hold_out_named_volume(dataset):
    everything = PairDataset(dataset)
    train = PairDataset(dataset, exclude=["chest"])
    held_out = PairDataset(dataset, volumes=["chest.npz"], axes=["z"])
    assert len(train.volume_ids) == len(held_out.volume_ids) == 1
    assert train.volume_ids[0].startswith("head-")
    assert {held_out[i]["axis"] for i in range(len(held_out))} == {"z"}
    assert len(train) + len(PairDataset(dataset, volumes=["chest"])) == len(everything)
    with pytest.raises(ValueError, match="exclude: unknown volumes"):
        PairDataset(dataset, exclude=["liver"])
    with pytest.raises(ValueError, match="axes"):
        PairDataset(dataset, axes=["y"])


def test_second_run_skips_finished_volumes(dataset, inputs, caplog):
    before = {p: p.stat().st_mtime_ns for p in dataset.glob("shards/*/*")}
    hashes = _shard_hashes(dataset)
    with caplog.at_level(logging.INFO, logger="nr"):
        main(["--volumes", str(inputs), "--out", str(dataset), "--manifest",
              str(inputs / "MANIFEST.json"), "--workers", "1", *ARGS])
    assert caplog.text.count("finished earlier") == 2
    assert {p: p.stat().st_mtime_ns for p in dataset.glob("shards/*/*")} == before
    assert _shard_hashes(dataset) == hashes


def test_changed_recipe_is_refused(dataset, inputs):
    with pytest.raises(ValueError, match="another configuration"):
        curate([inputs], dataset, dataclasses.replace(CONFIG, seed=4), workers=0)


def test_corrupt_inputs_are_reported_and_skipped(inputs, tmp_path, dataset):
    folder = tmp_path / "volumes"
    folder.mkdir()
    for name in ("head.npz", "chest.npz"):
        (folder / name).write_bytes((inputs / name).read_bytes())
    (folder / "truncated.npz").write_bytes((inputs / "head.npz").read_bytes()[:300])
    np.save(folder / "nan.npy", np.full((8, 8, 8), np.nan, dtype=np.float32))
    (folder / "notes.nii").write_text("not a volume")
    out = tmp_path / "dataset"
    manifest = main(["--volumes", str(folder), "--out", str(out), "--manifest",
                     str(inputs / "MANIFEST.json"), "--workers", "0", *ARGS])
    failed = {Path(f["source"]).name: f["error"] for f in manifest["failed"]}
    assert sorted(failed) == ["nan.npy", "notes.nii", "truncated.npz"]
    assert "NaN" in failed["nan.npy"] and "truncated.npz" in failed["truncated.npz"]
    assert manifest["counts"]["volumes"] == 2 and manifest["counts"]["failed"] == 3
    assert read_manifest(out) == manifest
    assert _shard_hashes(out) == _shard_hashes(dataset)  # same data as the pool run


def test_crash_loses_only_the_volume_in_progress(inputs, tmp_path):
    calls = []

    def crashing(projections, geo, iterations, seed):
        calls.append(geo.volume_shape)
        if len(calls) == 5:  # first job of the second volume (4 jobs per volume)
            raise KeyboardInterrupt
        return get_reconstructor("sart").reconstruct(projections, geo, iterations, seed)

    register(Reconstructor("crashing", crashing, 4))
    try:
        config = dataclasses.replace(CONFIG, representations=("crashing",),
                                     standard_iterations={})
        out = tmp_path / "dataset"
        with pytest.raises(KeyboardInterrupt):
            curate([inputs / "head.npz", inputs / "chest.npz"], out, config, workers=0,
                   progress=False)
        assert len(read_manifest(out)["volumes"]) == 1
        done = next(iter(read_manifest(out)["volumes"]))
        curate([inputs / "head.npz", inputs / "chest.npz"], out, config, workers=0,
               progress=False)
        assert len(calls) == 5 + 4  # only the interrupted volume was redone
        manifest = read_manifest(out)
        assert done in manifest["volumes"] and manifest["counts"]["volumes"] == 2
    finally:
        _REGISTRY.pop("crashing")


def test_deterministic_and_independent_of_order(inputs, tmp_path, dataset):
    reordered = tmp_path / "reordered"
    curate([inputs / "chest.npz", inputs / "head.npz"], reordered, CONFIG,
           data_manifest=inputs / "MANIFEST.json", workers=0, progress=False)
    assert _shard_hashes(reordered) == _shard_hashes(dataset)
    other = tmp_path / "other_seed"
    curate([inputs / "head.npz"], other, dataclasses.replace(CONFIG, seed=4),
           workers=0, progress=False)
    head = {k: v for k, v in _shard_hashes(dataset).items() if "/head-" in k}
    assert set(_shard_hashes(other).values()).isdisjoint(head.values())


def test_dask_local_cluster_writes_the_same_dataset(inputs, tmp_path, dataset):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        manifest = main(["--volumes", str(inputs), "--out", str(out), "--manifest",
                         str(inputs / "MANIFEST.json"), "--scheduler",
                         cluster.scheduler_address, *ARGS])
    assert manifest["counts"] == read_manifest(dataset)["counts"]
    assert _shard_hashes(out) == _shard_hashes(dataset)


def test_cli_rejects_bad_options(inputs, tmp_path, capsys):
    for bad in (["--representations", "nope"], ["--mix", "1:1"], ["--views", "30"],
                ["--iters-fraction", "0.6:0.2"]):
        with pytest.raises(SystemExit):
            main(["--volumes", str(inputs), "--out", str(tmp_path / "x"), *ARGS, *bad])
    assert not (tmp_path / "x").exists()
    assert "representation" in capsys.readouterr().err


def test_neural_mix_one_to_one(inputs, tmp_path, short_gaussian_warm_start):
    for name in ("hashgrid", "gaussians"):
        try:
            get_reconstructor(name)
        except ImportError as error:
            pytest.skip(f"{name} not available: {error}")
    config = dataclasses.replace(CONFIG, views=(4,), representations=("hashgrid", "gaussians"),
                                 mix=(1, 1), standard_iterations={"hashgrid": 2, "gaussians": 2},
                                 axes=("z",))
    manifest = curate([inputs / "head.npz"], tmp_path / "neural", config, workers=0,
                      progress=False)
    (entry,) = manifest["volumes"].values()
    assert sorted(s["representation"] for s in entry["shards"]) == ["gaussians", "hashgrid"]
    assert {s["iterations"] for s in entry["shards"]} == {1}
    assert len(PairDataset(tmp_path / "neural", representations=["gaussians"])) > 0


def test_diffnr_states_are_the_prior_calls_of_the_loop(inputs, tmp_path, monkeypatch):
    """"diffnr_gaussians" records the NR where DiffNR's prior would be called (start, every,
    while the validation views are held out) and one shard holds every state's pairs."""
    import nr.diffnr

    default = nr.diffnr.DiffNRConfig.default.__func__

    def short(cls, geo, nr_name="gaussians", prior=None):
        config = default(cls, geo, nr_name, prior)
        return dataclasses.replace(config, iterations=40, warm_start_steps=10)

    monkeypatch.setattr(nr.diffnr.DiffNRConfig, "default", classmethod(short))
    config = dataclasses.replace(CONFIG, views=(8,), representations=("diffnr_gaussians",),
                                 subsets=("uniform",), axes=("z",))
    manifest = curate([inputs / "head.npz"], tmp_path / "loop", config, workers=0,
                      progress=False)
    (entry,) = manifest["volumes"].values()
    (shard,) = entry["shards"]
    # 40 iterations: calls from 0.5 * 40 every 0.125 * 40 while held out (to 0.75 * 40)
    assert shard["state_iterations"] == [20, 25, 30]
    dataset = PairDataset(tmp_path / "loop")
    per_state = shard["pairs"] // 3
    assert shard["pairs"] == 3 * per_state > 0 and len(dataset) == shard["pairs"]
    assert [dataset[i]["iterations"] for i in (0, per_state, 2 * per_state)] == [20, 25, 30]
    first, second = dataset[0], dataset[per_state]
    assert first["index"] == second["index"]
    assert torch.equal(first["clean"], second["clean"])
    assert not torch.equal(first["artifact"], second["artifact"])


def test_data_manifest_as_a_list_of_entries(tmp_path):
    from data_curation.engine import read_data_manifest

    path = tmp_path / "MANIFEST.json"
    path.write_text(json.dumps([{"name": "a", "file": "a.npz", "body_part": "knee"}]))
    assert read_data_manifest(path) == {"a.npz": {"anatomy": "knee", "key": None}}
    path.write_text(json.dumps([{"name": "a"}]))
    with pytest.raises(ValueError, match="has no 'file'"):
        read_data_manifest(path)


def test_pool_workers_exit_when_the_coordinator_is_killed(tmp_path):
    """A coordinator killed by SIGKILL leaves no worker computing volumes nobody records."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "coordinator.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from data_curation.engine import exit_with_parent\n"
        "def work():\n"
        "    exit_with_parent(int(sys.argv[1]))\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('spawn').Process(target=work)\n"
        "    sys.argv.append(str(os.getpid()))\n"
        "    child.start()\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    coordinator = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                   text=True, cwd=Path(__file__).resolve().parents[1])
    worker = int(coordinator.stdout.readline())
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{worker}/stat").is_file() and \
                Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
            break  # exited, not yet reaped
        time.sleep(0.2)
    else:
        os.kill(worker, 9)
        pytest.fail("the worker outlived its coordinator by 30 s")
