"""NAF pickles, built by hand the way naf_cbct's dataGenerator/generateData.py writes them.

Their generator divides every length by 1000 (ConeGeometry_special) and saves
``tigre.Ax(image.transpose(2, 1, 0), geo, angles)[:, ::-1, :]``; `tigre_ax` (our
projector, TIGRE's conventions) stands in for TIGRE.
"""

import datetime
import pickle

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import FormatError, read_naf_pickle
from nr.ops.projector import project

CONFIG = {
    "DSD": 1500.0,
    "DSO": 1000.0,
    "nDetector": [14, 18],  # (v, u)
    "dDetector": [1.5, 1.5],
    "nVoxel": [12, 10, 8],  # (x, y, z)
    "dVoxel": [1.0, 1.0, 1.0],
    "offOrigin": [1.0, -1.0, 0.5],  # (x, y, z)
    "offDetector": [1.5, -0.75],  # (u, v)
    "accuracy": 0.5,
    "mode": "cone",
    "filter": None,
    "totalAngle": 180.0,
    "startAngle": 0.0,
    "randomAngle": False,
    "convert": True,
    "rescale_slope": 1.0,
    "rescale_intercept": 0.0,
    "normalize": True,
    "noise": 0,
    "numTrain": 4,
    "numVal": 2,
}


def their_geometry_in_metres(data, angles):
    """ConeGeometry_special of generateData.py, in our vocabulary."""
    return ConeBeamGeometry(
        mode=data["mode"],
        dsd=data["DSD"] / 1000,
        dso=data["DSO"] / 1000,
        n_detector=data["nDetector"],
        d_detector=np.array(data["dDetector"]) / 1000,
        n_voxel=data["nVoxel"][::-1],
        d_voxel=np.array(data["dVoxel"][::-1]) / 1000,
        off_origin=np.array(data["offOrigin"][::-1]) / 1000,
        off_detector=np.array([data["offDetector"][1], data["offDetector"][0]]) / 1000,
        accuracy=data["accuracy"],
        angles=angles,
    )


def image_xyz():
    rng = np.random.default_rng(0)
    image = np.zeros(CONFIG["nVoxel"], np.float32)
    image[2:9, 3:8, 1:6] = rng.uniform(0.2, 1.0, size=(7, 5, 5))
    image[8:11, 1:3, 5:7] = 1.0
    return image


def tigre_ax(volume_zyx, geo):
    return project(torch.from_numpy(np.ascontiguousarray(volume_zyx)), geo).numpy()


def make_pickle(path, **changes):
    data = dict(CONFIG)
    data["image"] = image_xyz()
    train = np.linspace(0, np.pi, 5)[:-1]
    val = np.sort(np.array([0.4, 2.1]))
    for split, angles in (("train", train), ("val", val)):
        geo = their_geometry_in_metres(data, angles)
        projections = tigre_ax(data["image"].transpose(2, 1, 0), geo)[:, ::-1, :]
        data[split] = {"angles": angles, "projections": projections}
    data.update(changes)
    with open(path, "wb") as handle:
        pickle.dump(data, handle, pickle.HIGHEST_PROTOCOL)
    return data


def test_mm_reading_keeps_mm_geometry_and_rescales_projections(tmp_path):
    data = make_pickle(tmp_path / "chest_50.pickle")
    scan = read_naf_pickle(tmp_path / "chest_50.pickle")
    geo = scan.geo
    assert (geo.dso, geo.dsd) == (1000.0, 1500.0)
    np.testing.assert_array_equal(geo.n_voxel, [8, 10, 12])
    np.testing.assert_allclose(geo.d_voxel, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(geo.off_origin, [0.5, -1.0, 1.0])
    np.testing.assert_allclose(geo.d_detector, [1.5, 1.5])
    np.testing.assert_allclose(geo.off_detector, [-0.75, 1.5])
    np.testing.assert_array_equal(scan.volume_gt.numpy(), data["image"].transpose(2, 1, 0))
    stored = data["train"]["projections"]
    np.testing.assert_allclose(scan.projections.numpy(), stored[:, ::-1, :] * 1000, rtol=1e-6)
    torch.testing.assert_close(project(scan.volume_gt, geo), scan.projections, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        project(scan.volume_gt, scan.test_geo), scan.test_projections, rtol=1e-4, atol=1e-4
    )
    assert scan.metadata["length_unit"] == "mm"
    assert scan.metadata["config"]["numTrain"] == 4


def test_metre_reading_is_r2gaussians_choice(tmp_path):
    data = make_pickle(tmp_path / "case.pickle")
    scan = read_naf_pickle(tmp_path / "case.pickle", length_unit="m")
    assert (scan.geo.dso, scan.geo.dsd) == (1.0, 1.5)
    np.testing.assert_allclose(scan.geo.d_voxel, [1e-3, 1e-3, 1e-3])
    np.testing.assert_array_equal(scan.projections.numpy(), data["train"]["projections"][:, ::-1])
    torch.testing.assert_close(
        project(scan.volume_gt, scan.geo), scan.projections, rtol=1e-4, atol=1e-7
    )


def test_only_numpy_objects_are_unpickled(tmp_path):
    make_pickle(tmp_path / "evil.pickle", extra=datetime.date(2020, 1, 1))
    with pytest.raises(FormatError, match="evil.pickle.*refusing to load datetime.date"):
        read_naf_pickle(tmp_path / "evil.pickle")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(DSO=None), "invalid scanner geometry"),
        (dict(numTrain=5), "'train' has 4 angles but the config says 5"),
        (dict(image=np.zeros((8, 10, 12), np.float32)), r"image.*shape \(8, 10, 12\)"),
        (dict(image=np.full(CONFIG["nVoxel"], np.nan, np.float32)), "image.*NaN"),
        (dict(train={"angles": np.zeros(4)}), "'train' must be a dict"),
    ],
)
def test_bad_contents_are_named(tmp_path, changes, message):
    make_pickle(tmp_path / "bad.pickle", **changes)
    with pytest.raises(FormatError, match=f"bad.pickle.*{message}"):
        read_naf_pickle(tmp_path / "bad.pickle")


def test_missing_key_and_wrong_projection_shape(tmp_path):
    data = make_pickle(tmp_path / "a.pickle")
    del data["dVoxel"]
    (tmp_path / "b.pickle").write_bytes(pickle.dumps(data))
    with pytest.raises(FormatError, match=r"b.pickle: missing keys \['dVoxel'\]"):
        read_naf_pickle(tmp_path / "b.pickle")
    data = make_pickle(tmp_path / "a.pickle")
    data["val"]["projections"] = data["val"]["projections"][:, :, :-1]
    (tmp_path / "c.pickle").write_bytes(pickle.dumps(data))
    with pytest.raises(FormatError, match=r"c.pickle:val: projections.*shape"):
        read_naf_pickle(tmp_path / "c.pickle")


def test_truncated_pickle_and_bad_arguments(tmp_path):
    make_pickle(tmp_path / "a.pickle")
    raw = (tmp_path / "a.pickle").read_bytes()
    (tmp_path / "cut.pickle").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="cut.pickle: cannot read"):
        read_naf_pickle(tmp_path / "cut.pickle")
    with pytest.raises(ValueError, match="length_unit"):
        read_naf_pickle(tmp_path / "a.pickle", length_unit="cm")
    with pytest.raises(FileNotFoundError):
        read_naf_pickle(tmp_path / "absent.pickle")
