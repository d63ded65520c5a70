"""Every command turns an expected failure into one line `error: ...` on stderr, exit status 2,
no traceback and no output folder; --debug shows the traceback."""

import numpy as np
import pytest

from nr.geometry import ConeBeamGeometry
from nr.io import Scan, write_scan
from nr.ops.projector import project
from pipelines import benchmark, curate, diffnr, diffusionblend, finetune, recon, train_blend
from pipelines.common import run_command


def _fails_cleanly(main, argv, capsys, out=None, expected="error: "):
    with pytest.raises(SystemExit) as exit_info:
        run_command(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    if out is not None:
        assert not out.exists()
    return lines[0]


@pytest.fixture
def nan_volume(tmp_path):
    path = tmp_path / "nan.npy"
    np.save(path, np.full((8, 8, 8), np.nan, dtype=np.float32))
    return path


def test_a_missing_input_is_one_line_naming_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    for main, argv in (
        (diffnr.main, [str(missing), "--out", str(out)]),
        (recon.main, [str(missing), "--method", "fdk", "--out", str(out)]),
        (diffusionblend.main, [str(missing), "--model", str(tmp_path), "--out", str(out)]),
        (train_blend.main, ["--volumes", str(missing), "--out", str(out)]),
        (finetune.main, ["--data", str(missing), "--val-volumes", "a", "--out", str(out)]),
    ):
        line = _fails_cleanly(main, argv, capsys, out)
        assert str(missing) in line or str(tmp_path) in line, line


def test_nan_input_and_bad_option_values_are_one_line(tmp_path, nan_volume, capsys):
    out = tmp_path / "out"
    _fails_cleanly(diffnr.main, [str(nan_volume), "--out", str(out)], capsys, out)
    for bad in (["--guard-fraction", "0.9"], ["--views", "0"], ["--axes", "q"]):
        _fails_cleanly(diffnr.main, ["--size", "16", *bad, "--out", str(out)], capsys, out)
    _fails_cleanly(curate.main, ["--volumes", str(nan_volume), "--out", str(out),
                                 "--representations", "nope"], capsys, out)  # fmt: skip
    _fails_cleanly(benchmark.main, ["no_such_topic"], capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_command(diffnr.main, [str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o"),
                                  "--debug"])  # fmt: skip


def test_a_measured_scan_uses_all_its_views_unless_views_is_given(tmp_path):
    import torch

    geo = ConeBeamGeometry.default(n_voxel=16, n_views=30)
    truth = torch.zeros(geo.volume_shape)
    truth[4:12, 5:11, 4:12] = 0.02
    write_scan(Scan(project(truth, geo), geo, truth), tmp_path / "scan")
    every = recon.main([str(tmp_path / "scan"), "--method", "fdk", "--out", str(tmp_path / "a")])
    assert every["views"] == 30  # not the simulated scans' default of 50 (or 25)
    some = recon.main(
        [str(tmp_path / "scan"), "--method", "fdk", "--views", "10", "--out", str(tmp_path / "b")]
    )
    assert some["views"] == 10
    args = diffnr.parse([str(tmp_path / "scan"), "--out", str(tmp_path / "c")])
    scan = diffnr.resolve_scan(args.input, args.views, args.noise, args.seed, args.size)
    assert scan.geo.n_views == 30
