"""R2-Gaussian case folders, built here by hand the way their generator writes them.

Their generator (data_generator/synthetic_dataset/generate_data.py) saves the (x, y, z)
volume as vol_gt.npy and ``tigre.Ax(vol.transpose(2, 1, 0), geo, angles)[:, ::-1, :]``
view by view, with ``geo`` from r2_gaussian/utils/ct_utils.py::get_geometry. TIGRE is
not installable here; `tigre_ax` stands in for it with our projector, which follows
TIGRE's conventions (test_io_r2gaussian checks one of them independently: where a
point lands on the detector).
"""

import json

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import FormatError, read_r2gaussian_case, write_r2gaussian_case
from nr.io import r2gaussian as r2_module
from nr.ops.fdk import fdk
from nr.ops.projector import project

SCANNER = {
    "mode": "cone",
    "filter": None,
    "DSD": 7.0,
    "DSO": 5.0,
    "nDetector": [14, 18],  # (v, u)
    "sDetector": [4.2, 5.4],
    "nVoxel": [12, 10, 8],  # (x, y, z)
    "sVoxel": [2.4, 2.0, 1.6],
    "offOrigin": [0.1, -0.2, 0.3],  # (x, y, z)
    "offDetector": [0.3, -0.15],  # (u, v)
    "accuracy": 0.5,
    "totalAngle": 360.0,
    "startAngle": 0.0,
    "noise": False,
}


def tigre_geometry(cfg, angles):
    """What get_geometry builds, in our vocabulary (TIGRE's field for field)."""
    return ConeBeamGeometry(
        mode=cfg["mode"],
        dsd=cfg["DSD"],
        dso=cfg["DSO"],
        n_detector=cfg["nDetector"],
        s_detector=cfg["sDetector"],
        n_voxel=cfg["nVoxel"][::-1],
        s_voxel=cfg["sVoxel"][::-1],
        off_origin=cfg["offOrigin"][::-1],
        off_detector=[cfg["offDetector"][1], cfg["offDetector"][0]],
        accuracy=cfg["accuracy"],
        angles=angles,
    )


def tigre_ax(volume_zyx, geo):
    return project(torch.from_numpy(np.ascontiguousarray(volume_zyx)), geo).numpy()


def blobs_xyz(cfg, centres):
    """Gaussian blobs at world (x, y, z) points, sampled on the (x, y, z)-indexed grid."""
    axes = [
        -s / 2 + (np.arange(n) + 0.5) * s / n + o
        for n, s, o in zip(cfg["nVoxel"], cfg["sVoxel"], cfg["offOrigin"], strict=True)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    volume = np.zeros(x.shape)
    for (cx, cy, cz), weight in centres:
        volume += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 0.02)
    return volume.astype(np.float32)


def write_case_by_hand(folder, cfg, volume_xyz, train_angles, test_angles, meta_extra=None):
    """A case folder as their generator writes it (json.dump + np.save, no toolkit writer)."""
    geo = tigre_geometry(cfg, np.concatenate([train_angles, test_angles]))
    projections = tigre_ax(volume_xyz.transpose(2, 1, 0), geo)[:, ::-1, :]
    folder.mkdir()
    np.save(folder / "vol_gt.npy", volume_xyz)
    meta = {"scanner": cfg, "vol": "vol_gt.npy", "bbox": [[-1, -1, -1], [1, 1, 1]]}
    start = 0
    for split, angles in (("proj_train", train_angles), ("proj_test", test_angles)):
        (folder / split).mkdir()
        meta[split] = []
        for i, angle in enumerate(angles):
            name = f"{split}/{split}_{i:04d}.npy"
            np.save(folder / name, projections[start + i])
            meta[split].append({"file_path": name, "angle": float(angle)})
        start += len(angles)
    meta.update(meta_extra or {})
    (folder / "meta_data.json").write_text(json.dumps(meta, indent=4))
    return projections


BLOBS = [((0.5, 0.4, 0.55), 1.0), ((-0.3, -0.2, 0.1), 0.5)]
TRAIN = np.linspace(0, 2 * np.pi, 5)[:-1]
TEST = np.array([0.3, 2.0])


@pytest.fixture
def case(tmp_path):
    volume = blobs_xyz(SCANNER, BLOBS)
    projections = write_case_by_hand(tmp_path / "case", SCANNER, volume, TRAIN, TEST)
    return tmp_path / "case", volume, projections


def test_geometry_values_follow_their_axis_orders(case):
    folder, _, _ = case
    geo = read_r2gaussian_case(folder).geo
    np.testing.assert_array_equal(geo.n_voxel, [8, 10, 12])
    np.testing.assert_allclose(geo.s_voxel, [1.6, 2.0, 2.4])
    np.testing.assert_allclose(geo.d_voxel, [0.2, 0.2, 0.2])
    np.testing.assert_allclose(geo.off_origin, [0.3, -0.2, 0.1])
    np.testing.assert_array_equal(geo.n_detector, [14, 18])
    np.testing.assert_allclose(geo.d_detector, [0.3, 0.3])
    np.testing.assert_allclose(geo.off_detector, [-0.15, 0.3])
    assert (geo.dso, geo.dsd, geo.mode, geo.accuracy) == (5.0, 7.0, "cone", 0.5)
    np.testing.assert_allclose(geo.angles, TRAIN)


def test_their_files_land_where_tigre_puts_a_point(case):
    # Independent of our projector: at angle 0 the source is at +x, u grows with +y and
    # TIGRE's row 0 is the lowest v (z); their files flip the rows, so a point high in z
    # appears near row 0 of their file.
    folder, _, _ = case
    view = np.load(folder / "proj_train" / "proj_train_0000.npy")
    (px, py, pz), _ = BLOBS[0]
    magnification = SCANNER["DSD"] / (SCANNER["DSO"] - px)
    d_v, d_u = 0.3, 0.3
    u = (py * magnification - SCANNER["offDetector"][0]) / d_u + 18 / 2 - 0.5
    v = (pz * magnification - SCANNER["offDetector"][1]) / d_v + 14 / 2 - 0.5
    row, column = np.unravel_index(np.argmax(view), view.shape)
    assert abs(column - u) <= 1.0
    assert abs(row - (14 - 1 - v)) <= 1.0


def test_reader_undoes_their_flip_and_transpose(case):
    folder, volume_xyz, projections = case
    scan = read_r2gaussian_case(folder)
    np.testing.assert_array_equal(scan.volume_gt.numpy(), volume_xyz.transpose(2, 1, 0))
    reprojected = project(scan.volume_gt, scan.geo)
    torch.testing.assert_close(reprojected, scan.projections, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scan.projections.numpy(), projections[: TRAIN.size, ::-1, :])
    torch.testing.assert_close(
        project(scan.volume_gt, scan.test_geo), scan.test_projections, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(scan.test_geo.angles, TEST)
    assert scan.metadata["format"] == "r2gaussian"
    assert scan.metadata["scanner"]["offDetector"] == [0.3, -0.15]


def test_fdk_of_a_read_case_matches_the_volume_not_its_mirrors(tmp_path):
    cfg = dict(SCANNER, nVoxel=[16, 16, 16], sVoxel=[2.0, 2.0, 2.0], offOrigin=[0, 0, 0])
    cfg.update(nDetector=[24, 24], sDetector=[3.6, 3.6], offDetector=[0, 0])
    volume = blobs_xyz(cfg, [((0.45, 0.25, 0.3), 1.0), ((-0.35, -0.15, -0.4), 0.6)])
    angles = np.linspace(0, 2 * np.pi, 37)[:-1]
    write_case_by_hand(tmp_path / "case", cfg, volume, angles, np.zeros(0))
    scan = read_r2gaussian_case(tmp_path / "case")
    recon = fdk(scan.projections, scan.geo).numpy().ravel()
    gt = scan.volume_gt.numpy()

    def corr(other):
        return float(np.corrcoef(recon, other.ravel())[0, 1])

    right = corr(gt)
    wrong = {
        "flip z": corr(gt[::-1]),
        "flip y": corr(gt[:, ::-1]),
        "flip x": corr(gt[:, :, ::-1]),
        "swap x y": corr(gt.transpose(0, 2, 1)),
        "swap x z": corr(gt.transpose(2, 1, 0)),
    }
    assert right > 0.9
    assert all(right > value + 0.3 for value in wrong.values()), (right, wrong)


def test_writer_reproduces_their_files_and_round_trips(case, tmp_path):
    folder, volume_xyz, projections = case
    scan = read_r2gaussian_case(folder)
    write_r2gaussian_case(scan, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta_data.json").read_text())
    for key in ("nDetector", "sDetector", "nVoxel", "sVoxel", "offOrigin", "offDetector"):
        np.testing.assert_allclose(meta["scanner"][key], SCANNER[key], err_msg=key)
    for key in ("DSD", "DSO", "accuracy", "totalAngle", "startAngle"):
        assert meta["scanner"][key] == pytest.approx(SCANNER[key]), key
    assert (meta["scanner"]["mode"], meta["scanner"]["noise"]) == ("cone", False)
    np.testing.assert_allclose(meta["bbox"], [[-1.1, -1.2, -0.5], [1.3, 0.8, 1.1]])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / meta["vol"]), volume_xyz)
    for i, entry in enumerate(meta["proj_train"] + meta["proj_test"]):
        np.testing.assert_array_equal(
            np.load(tmp_path / "out" / entry["file_path"]), projections[i]
        )
    back = read_r2gaussian_case(tmp_path / "out")
    assert back.geo == scan.geo and back.test_geo == scan.test_geo
    torch.testing.assert_close(back.projections, scan.projections, rtol=0, atol=0)


def test_diffnr_flavoured_json_reads(tmp_path):
    # DiffNR's sample case: dVoxel/dDetector present, total_angle instead of totalAngle,
    # poisson_noise, no bbox; the real-data cases name the volume "ct" instead of "vol".
    cfg = {k: v for k, v in SCANNER.items() if k not in ("totalAngle", "startAngle")}
    cfg.update(dVoxel=[0.2, 0.2, 0.2], dDetector=[0.3, 0.3], total_angle=360, poisson_noise=1e4)
    volume = blobs_xyz(cfg, BLOBS)
    write_case_by_hand(tmp_path / "case", cfg, volume, TRAIN, np.zeros(0))
    meta = json.loads((tmp_path / "case" / "meta_data.json").read_text())
    meta["ct"] = meta.pop("vol")
    del meta["bbox"]
    (tmp_path / "case" / "meta_data.json").write_text(json.dumps(meta))
    scan = read_r2gaussian_case(tmp_path / "case")
    assert scan.test_geo is None
    np.testing.assert_array_equal(scan.volume_gt.numpy(), volume.transpose(2, 1, 0))


def _edit_meta(folder, edit):
    meta = json.loads((folder / "meta_data.json").read_text())
    edit(meta)
    (folder / "meta_data.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["scanner"].pop("DSO"), r"meta_data.json: scanner lacks \['DSO'\]"),
        (lambda m: m["scanner"].update(dVoxel=[0.1, 0.1, 0.1]), "meta_data.json.*d_voxel"),
        (lambda m: m.pop("proj_train"), "meta_data.json.*proj_train"),
        (lambda m: m["proj_train"][1].pop("angle"), r"proj_train\[1\] lacks"),
        (lambda m: m.pop("vol"), "no 'vol'"),
    ],
)
def test_bad_json_is_named(case, edit, message):
    folder, _, _ = case
    _edit_meta(folder, edit)
    with pytest.raises(FormatError, match=message):
        read_r2gaussian_case(folder)


def test_invalid_json_and_missing_meta(case, tmp_path):
    folder, _, _ = case
    (folder / "meta_data.json").write_text("{ not json")
    with pytest.raises(FormatError, match="meta_data.json: invalid JSON"):
        read_r2gaussian_case(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not an R2-Gaussian case"):
        read_r2gaussian_case(tmp_path / "empty")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "proj_train_0001.npy: projection file not found"),
        (lambda p: np.save(p, np.zeros((18, 14), np.float32)), r"proj_train_0001.npy.*shape"),
        (lambda p: np.save(p, np.full((14, 18), np.nan, np.float32)), "proj_train_0001.npy.*NaN"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "proj_train_0001.npy: cannot read"),
    ],
)
def test_bad_projection_file_is_named(case, damage, message):
    folder, _, _ = case
    damage(folder / "proj_train" / "proj_train_0001.npy")
    with pytest.raises(FormatError, match=message):
        read_r2gaussian_case(folder)


def test_bad_volume_file_is_named(case):
    folder, _, _ = case
    raw = (folder / "vol_gt.npy").read_bytes()
    (folder / "vol_gt.npy").write_bytes(raw[:-50])
    with pytest.raises(FormatError, match="vol_gt.npy"):
        read_r2gaussian_case(folder)
    assert read_r2gaussian_case(folder, load_volume=False).volume_gt is None


def test_writer_refuses_and_leaves_nothing_partial(case, tmp_path, monkeypatch):
    folder, _, _ = case
    scan = read_r2gaussian_case(folder)
    with pytest.raises(FileExistsError):
        write_r2gaussian_case(scan, folder)
    scan_without_volume = read_r2gaussian_case(folder, load_volume=False)
    with pytest.raises(ValueError, match="volume_gt"):
        write_r2gaussian_case(scan_without_volume, tmp_path / "out")
    calls = []

    def failing_save(array, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        np.save(path, array)

    monkeypatch.setattr(r2_module, "save_npy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_r2gaussian_case(scan, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_parallel_mode_case_reads(tmp_path):
    cfg = dict(SCANNER, mode="parallel", sDetector=[2.8, 3.6], offDetector=[0.0, 0.0])
    volume = blobs_xyz(cfg, BLOBS)
    write_case_by_hand(tmp_path / "case", cfg, volume, TRAIN, np.zeros(0))
    scan = read_r2gaussian_case(tmp_path / "case")
    assert scan.geo.mode == "parallel"
    reprojected = project(scan.volume_gt, scan.geo)
    torch.testing.assert_close(reprojected, scan.projections, rtol=1e-5, atol=1e-6)
