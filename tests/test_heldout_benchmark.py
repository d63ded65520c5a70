"""The held-out benchmark's bookkeeping: rows made with other prior weights are measured again."""

from __future__ import annotations

import json

from pipelines.benchmarks import heldout


def test_rows_of_other_prior_weights_are_stale(tmp_path, monkeypatch):
    current = heldout._prior_weights("slicefixer")
    assert len(current) == 12 and current != heldout._prior_weights("diffusionblend")
    case = {"volume": "v", "size": 64, "views": 10, "method": "diffnr", "nr": "gaussians"}
    rows = [
        {**case, "prior": "none", "psnr": 20.0, "ssim": 0.5, "seconds": 1.0},
        {**case, "prior": "slicefixer", "prior_weights": "0" * 12, "psnr": 21.0, "ssim": 0.5,
         "seconds": 1.0, "calls": [{"iteration": 5, "action": "accept", "true_change_db": 0.2}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(heldout, "ROWS", path)
    assert list(heldout._read_rows()) == ["v/64/10/diffnr/gaussians/none/seeing"]
    rows[1]["prior_weights"] = current
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = heldout._read_rows()
    assert len(read) == 2
    text = heldout.table(list(read.values()))
    assert "+1.00 dB" in text and "helpful kept 1 / rejected 0" in text


def test_rows_of_the_two_warm_start_protocols_are_kept_apart(tmp_path, monkeypatch):
    case = {"volume": "v", "size": 64, "views": 10, "method": "diffnr", "nr": "gaussians"}
    weights = heldout._prior_weights("diffusionblend")
    rows = [
        # a row made before the protocol was recorded counts as "seeing"
        {**case, "prior": "none", "psnr": 20.0, "ssim": 0.5, "seconds": 1.0},
        {**case, "prior": "diffusionblend", "prior_weights": weights, "psnr": 20.0,
         "ssim": 0.5, "seconds": 1.0,
         "calls": [{"iteration": 5, "action": "reject", "true_change_db": 0.2}]},
        {**case, "guard": "blind", "prior": "none", "psnr": 19.5, "ssim": 0.5, "seconds": 1.0},
        {**case, "guard": "blind", "prior": "diffusionblend", "prior_weights": weights,
         "psnr": 20.5, "ssim": 0.6, "seconds": 1.0,
         "calls": [{"iteration": 5, "action": "accept", "true_change_db": 0.2}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(heldout, "ROWS", path)
    read = heldout._read_rows()
    assert len(read) == 4
    text = heldout.table(list(read.values()))
    assert "| v | 64 | 10 | seeing |" in text and "| v | 64 | 10 | blind |" in text
    assert "+0.00 dB / +0.000" in text and "+1.00 dB / +0.100" in text
    assert "warm start seeing, over 1 prior calls" in text and "helpful kept 0 / rejected 1" in text
    assert "warm start blind, over 1 prior calls" in text and "helpful kept 1 / rejected 0" in text
    jobs = list(heldout._jobs(quick=True, guard="blind"))
    assert {job["guard"] for job in jobs if job["method"] == "diffnr"} == {"blind"}
    assert all("guard" not in job for job in jobs if job["method"] != "diffnr")
