"""The held-out benchmark's bookkeeping: rows made with other prior weights or other settings
are measured again; the two warm-start protocols are kept apart."""

from __future__ import annotations

import json

from pipelines.benchmarks import heldout

CASE = {"volume": "v", "size": 64, "views": 10, "method": "diffnr", "nr": "gaussians"}


def _stamped(row: dict) -> dict:
    """`row` as `heldout._neural` writes it: with today's settings (and weights) of its job."""
    stamp = {"settings": heldout._settings(heldout._config(row))}
    if row["prior"] != "none":
        stamp["prior_weights"] = heldout._prior_weights(row["prior"])
    return {**stamp, **row}


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_rows_of_other_prior_weights_or_settings_are_stale(tmp_path, monkeypatch):
    current = heldout._prior_weights("slicefixer")
    assert len(current) == 12 and current != heldout._prior_weights("diffusionblend")
    alone = _stamped({**CASE, "prior": "none", "psnr": 20.0, "ssim": 0.5, "seconds": 1.0})
    fixer = _stamped({**CASE, "prior": "slicefixer", "psnr": 21.0, "ssim": 0.5, "seconds": 1.0,
                      "calls": [{"iteration": 5, "action": "accept", "true_change_db": 0.2}]})
    path = tmp_path / "rows.jsonl"
    monkeypatch.setattr(heldout, "ROWS", path)
    _write(path, [alone, {**fixer, "prior_weights": "0" * 12}])
    assert list(heldout._read_rows()) == ["v/64/10/diffnr/gaussians/none/seeing"]
    other = {**fixer, "settings": {**fixer["settings"], "weight": fixer["settings"]["weight"] + 1}}
    _write(path, [alone, other, {**fixer, "settings": None}])
    assert list(heldout._read_rows()) == ["v/64/10/diffnr/gaussians/none/seeing"]
    _write(path, [alone, fixer])
    read = heldout._read_rows()
    assert len(read) == 2
    text = heldout.table(list(read.values()))
    assert "+1.00 dB" in text and "helpful kept 1 / rejected 0" in text


def test_settings_name_only_what_the_prior_uses():
    alone = heldout._settings(heldout._config({**CASE, "prior": "none"}))
    blend = heldout._settings(heldout._config({**CASE, "prior": "diffusionblend"}))
    assert "blend_samples" in blend and "fixer_cg" not in blend
    assert "blend_samples" not in alone and "weight" not in alone
    blind = heldout._settings(heldout._config({**CASE, "prior": "none", "guard": "blind"}))
    assert blind["guard"]["blind_warm_start"] and not alone["guard"]["blind_warm_start"]


def test_rows_of_the_two_warm_start_protocols_are_kept_apart(tmp_path, monkeypatch):
    call = {"iteration": 5, "true_change_db": 0.2}
    rows = [
        # a row made before the protocol was recorded counts as "seeing"
        {**CASE, "prior": "none", "psnr": 20.0, "ssim": 0.5, "seconds": 1.0},
        {**CASE, "prior": "diffusionblend", "psnr": 20.0, "ssim": 0.5, "seconds": 1.0,
         "calls": [{**call, "action": "reject"}]},
        {**CASE, "guard": "blind", "prior": "none", "psnr": 19.5, "ssim": 0.5, "seconds": 1.0},
        {**CASE, "guard": "blind", "prior": "diffusionblend", "psnr": 20.5, "ssim": 0.6,
         "seconds": 1.0, "calls": [{**call, "action": "accept"}]},
    ]
    path = tmp_path / "rows.jsonl"
    _write(path, [_stamped(row) for row in rows])
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


def test_a_call_keeps_the_ratio_the_guard_decided_on_and_the_true_change():
    call = {"iteration": 250, "guard": {"action": "reject", "residual_reference": 0.03,
                                        "residual_current": 0.02},
            "reference_quality": {"psnr": 30.5}, "current_quality": {"psnr": 30.0}}
    record = heldout._call_record(call)
    assert record["action"] == "reject" and record["iteration"] == 250
    assert abs(record["residual_ratio"] - 1.5) < 1e-12 and record["true_change_db"] == 0.5


def test_run_measures_with_the_default_protocol_unless_told(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(heldout, "ROWS", tmp_path / "rows.jsonl")
    monkeypatch.setattr(heldout, "_jobs", lambda quick, guard: asked.append(guard) or iter(()))
    heldout.run(quick=True)
    heldout.run(quick=True, guard="seeing")
    assert asked == ["blind", "seeing"]
