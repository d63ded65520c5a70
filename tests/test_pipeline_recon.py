import json

import numpy as np
import pytest

from nr.io import read_nifti
from pipelines import recon


@pytest.fixture()
def small_volume(tmp_path):
    z, y, x = np.mgrid[:24, :24, :24]
    ball = ((z - 12) ** 2 + (y - 11) ** 2 + (x - 13) ** 2 < 64).astype(np.float32)
    path = tmp_path / "ball.npy"
    np.save(path, ball * 0.5 + 0.1 * (ball > 0))
    return path


@pytest.mark.parametrize("method", ["fdk", "cgls"])
def test_recon_writes_every_output(small_volume, tmp_path, method):
    out = tmp_path / method
    metrics = recon.main(
        [
            str(small_volume),
            "--method",
            method,
            "--views",
            "12",
            "--noise",
            "none",
            "--out",
            str(out),
        ]
    )
    for name in ("volume.nii.gz", "metrics.json", "config.json", "montage.png", "run.log"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"])
    assert saved["psnr"] > 15.0
    config = json.loads((out / "config.json").read_text())
    assert config["geometry"]["n_voxel"] == [24, 24, 24] and len(config["geometry"]["angles"]) == 12
    assert read_nifti(out / "volume.nii.gz").shape == (24, 24, 24)


def test_recon_rejects_a_bad_input(tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(ValueError, match="bad.npy"):
        recon.main([str(bad), "--method", "fdk", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "volume.nii.gz").exists()


@pytest.mark.parametrize(
    "method, warm_start, extra",
    [
        ("gaussians", "asd_pocs", []),
        ("gaussians", "none", ["--gaussian-rendering", "rasterize"]),
        ("hashgrid", "none", []),
    ],
)
def test_recon_neural_methods_train_and_plot(small_volume, tmp_path, method, warm_start, extra):
    out = tmp_path / method
    metrics = recon.main(
        extra
        + [
            str(small_volume),
            "--method",
            method,
            "--views",
            "8",
            "--iterations",
            "6",
            "--noise",
            "none",
            "--warm-start",
            warm_start,
            "--warm-start-steps",
            "40",
            "--out",
            str(out),
        ]
    )
    assert (out / "curves.png").is_file() and (out / "volume.nii.gz").is_file()
    assert np.isfinite(metrics["psnr"])
    config = json.loads((out / "config.json").read_text())
    assert config["method_config"]["warm_start"]["method"] == warm_start
    assert config["method_config"]["warm_start"]["steps"] == 40
    if method == "gaussians":
        rendering = "rasterize" if extra else "voxel"
        assert config["method_config"]["model"]["rendering"] == rendering
