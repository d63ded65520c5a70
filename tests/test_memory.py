"""The memory estimates grow with the scan; the pre-flight check raises one line naming the
remedy when the memory is short, passes when it is not, and the commands stop with exit
status 2 before they write anything."""

import pytest

import nr.memory
from nr.geometry import ConeBeamGeometry
from nr.memory import (
    METHODS,
    InsufficientMemoryError,
    check_memory,
    largest_side,
    required_bytes,
)
from nr.ops.iterative import ASDPOCSConfig
from pipelines import diffnr, recon
from pipelines.common import run_command


@pytest.mark.parametrize("method", METHODS)
def test_the_estimate_grows_with_the_grid_and_the_views(method):
    small = required_bytes(method, ConeBeamGeometry.default(n_voxel=64, n_views=25))
    large = required_bytes(method, ConeBeamGeometry.default(n_voxel=256, n_views=25))
    more_views = required_bytes(method, ConeBeamGeometry.default(n_voxel=256, n_views=100))
    assert 0 < small < large <= more_views


def test_the_sart_weights_count_only_while_they_are_cached():
    geo = ConeBeamGeometry.default(n_voxel=128, n_views=50)
    cached = required_bytes("asd_pocs", geo, ASDPOCSConfig())
    blocks = required_bytes("asd_pocs", geo, ASDPOCSConfig(block_size=10))
    assert cached > blocks


def test_the_estimate_rejects_a_bad_method_or_config():
    geo = ConeBeamGeometry.default(n_voxel=32, n_views=10)
    with pytest.raises(ValueError, match="method"):
        required_bytes("sirt", geo)
    with pytest.raises(TypeError, match="config"):
        required_bytes("gaussians", geo, ASDPOCSConfig())


def test_the_check_raises_one_line_naming_the_remedy():
    geo = ConeBeamGeometry.default(n_voxel=256, n_views=100)
    with pytest.raises(InsufficientMemoryError) as error:
        check_memory("gaussians", geo, available=10**6)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("gaussians at 256x256x256 with 100 views needs about ")
    assert "0.0 GB available" in message and "free memory" in message
    needed = required_bytes("gaussians", geo)
    side = largest_side("gaussians", geo, needed // 4)
    assert 16 <= side < 256
    with pytest.raises(InsufficientMemoryError, match=f"a {side}\\^3 grid or smaller"):
        check_memory("gaussians", geo, available=needed // 4)


def test_the_check_passes_with_enough_memory():
    geo = ConeBeamGeometry.default(n_voxel=256, n_views=100)
    assert check_memory("fdk", geo, available=10**12) == required_bytes("fdk", geo)


def test_the_check_is_skipped_when_the_available_memory_is_unknown(monkeypatch):
    monkeypatch.setattr(nr.memory, "available_bytes", lambda: None)
    geo = ConeBeamGeometry.default(n_voxel=256, n_views=100)
    assert check_memory("gaussians", geo) is None


@pytest.mark.parametrize(
    "main, method, argv",
    [
        (recon.main, "asd_pocs", ["--method", "asd_pocs"]),
        (recon.main, "gaussians", ["--method", "gaussians"]),
        (diffnr.main, "gaussians", ["--prior", "none"]),
    ],
)
def test_a_command_that_does_not_fit_stops_before_it_starts(
    main, method, argv, tmp_path, capsys, monkeypatch
):
    fits = required_bytes(method, ConeBeamGeometry.default(n_voxel=40, n_views=10))
    monkeypatch.setattr(nr.memory, "available_bytes", lambda: fits)
    monkeypatch.setattr(nr.memory, "resident_bytes", lambda: 0)
    argv = [*argv, "--size", "48", "--views", "10"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_command(main, [*argv, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and "48x48x48 with 10 views needs about" in lines[0], err
    assert "use --size 40 or less" in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
