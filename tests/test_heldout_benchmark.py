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
    assert list(heldout._read_rows()) == ["v/64/10/diffnr/gaussians/none"]
    rows[1]["prior_weights"] = current
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = heldout._read_rows()
    assert len(read) == 2
    text = heldout.table(list(read.values()))
    assert "+1.00 dB" in text and "helpful kept 1 / rejected 0" in text
