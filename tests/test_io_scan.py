import json
import math

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import (
    FormatError,
    Scan,
    Volume,
    load_scan,
    read_scan,
    scan_from_volume,
    write_nifti,
    write_npy,
    write_r2gaussian_case,
    write_scan,
)
from nr.io import scan as scan_module
from nr.ops.noise import NoiseConfig
from nr.ops.projector import project


def _geo(n_views=3):
    return ConeBeamGeometry(
        n_voxel=(6, 7, 8), s_voxel=(12.0, 14.0, 16.0), n_detector=(9, 10),
        d_detector=(3.0, 3.0), dso=100.0, dsd=150.0,
        angles=np.linspace(0, 2 * math.pi, n_views + 1)[:-1],
    )  # fmt: skip


def _scan(with_test=True):
    geo = _geo()
    rng = np.random.default_rng(0)
    volume = torch.from_numpy(rng.uniform(size=geo.volume_shape).astype(np.float32))
    test_geo = geo.with_angles([0.5, 1.5]) if with_test else None
    return Scan(
        project(volume, geo),
        geo,
        volume,
        project(volume, test_geo) if with_test else None,
        test_geo,
        {"format": "test", "note": [1, 2]},
    )


def _assert_same(a, b):
    assert a.geo == b.geo and a.test_geo == b.test_geo and a.metadata == b.metadata
    for name in ("projections", "volume_gt", "test_projections"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["scan", "scan.npz"])
def test_round_trip(tmp_path, name):
    scan = _scan()
    write_scan(scan, tmp_path / name)
    _assert_same(read_scan(tmp_path / name), scan)
    _assert_same(load_scan(tmp_path / name), scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with pytest.raises(FileExistsError):
        write_scan(scan, tmp_path / name)
    write_scan(_scan(with_test=False), tmp_path / name, overwrite=True)
    assert read_scan(tmp_path / name).test_geo is None


def test_folder_layout_is_the_documented_one(tmp_path):
    write_scan(_scan(), tmp_path / "scan")
    names = sorted(p.name for p in (tmp_path / "scan").iterdir())
    assert names == [
        "geometry.json", "metadata.json", "projections.npy", "test_geometry.json",
        "test_projections.npy", "volume_gt.npy",
    ]  # fmt: skip
    geometry = json.loads((tmp_path / "scan" / "geometry.json").read_text())
    assert ConeBeamGeometry.from_dict(geometry) == _geo()


def test_scan_validation():
    scan = _scan()
    with pytest.raises(ValueError, match=r"projections: expected shape \(3, 9, 10\)"):
        Scan(scan.projections[:2], scan.geo)
    with pytest.raises(TypeError, match="projections: expected float32"):
        Scan(scan.projections.double(), scan.geo)
    with pytest.raises(ValueError, match="volume_gt: expected shape"):
        Scan(scan.projections, scan.geo, scan.volume_gt[:-1])
    with pytest.raises(ValueError, match="give both or neither"):
        Scan(scan.projections, scan.geo, test_projections=scan.test_projections)
    bad = scan.projections.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="projections: values must be finite"):
        Scan(bad, scan.geo)


def test_read_errors_name_the_file(tmp_path):
    write_scan(_scan(), tmp_path / "scan")
    folder = tmp_path / "scan"
    np.save(folder / "projections.npy", np.zeros((3, 9, 11), np.float32))
    with pytest.raises(FormatError, match=r"projections.npy: projections has shape"):
        read_scan(folder)
    np.save(folder / "projections.npy", np.full((3, 9, 10), np.nan, np.float32))
    with pytest.raises(FormatError, match="projections.npy: projections contains NaN"):
        read_scan(folder)
    (folder / "projections.npy").unlink()
    with pytest.raises(FormatError, match="projections.npy: projections file not found"):
        read_scan(folder)
    (folder / "geometry.json").write_text('{"n_voxel": [6, 7, 8]}')
    with pytest.raises(FormatError, match="geometry.json: invalid geometry"):
        read_scan(folder)
    (folder / "geometry.json").unlink()
    with pytest.raises(FormatError, match="geometry.json is missing"):
        read_scan(folder)


def test_truncated_archive_names_the_file(tmp_path):
    write_scan(_scan(), tmp_path / "scan.npz")
    raw = (tmp_path / "scan.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="cut.npz"):
        read_scan(tmp_path / "cut.npz")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(array, path):
        raise OSError("disk full")

    monkeypatch.setattr(scan_module, "save_npy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_scan(_scan(), tmp_path / "scan")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="metadata: not JSON"):
        write_scan(Scan(_scan().projections, _geo(), metadata={"x": object()}), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_scan_from_volume(tmp_path):
    geo = _geo(n_views=4)
    data = np.random.default_rng(1).uniform(size=geo.volume_shape).astype(np.float32)
    volume = Volume(data, spacing=tuple(geo.d_voxel), units="1/mm", source="v.nii")
    scan = scan_from_volume(volume, geo, views=[0, 2])
    np.testing.assert_allclose(scan.geo.angles, geo.angles[[0, 2]])
    torch.testing.assert_close(scan.projections, project(torch.from_numpy(data), scan.geo))
    assert scan.metadata["noise"] is None and scan.metadata["source"] == "v.nii"
    noisy = scan_from_volume(volume, geo, noise=NoiseConfig(i0=1e3), seed=3)
    again = scan_from_volume(torch.from_numpy(data), geo, noise=NoiseConfig(i0=1e3), seed=3)
    torch.testing.assert_close(noisy.projections, again.projections, rtol=0, atol=0)
    assert not torch.equal(noisy.projections, project(torch.from_numpy(data), geo))
    assert noisy.metadata["noise"] == {"i0": 1e3, "gaussian": (0.0, 10.0)}
    write_scan(noisy, tmp_path / "noisy")
    write_r2gaussian_case(noisy, tmp_path / "case")
    meta = json.loads((tmp_path / "case" / "meta_data.json").read_text())
    assert meta["scanner"]["possion_noise"] == 1e3 and meta["scanner"]["noise"] is True
    with pytest.raises(ValueError, match="spacing"):
        scan_from_volume(Volume(data, spacing=(1.0, 1.0, 1.0)), geo)
    with pytest.raises(ValueError, match="volume: expected shape"):
        scan_from_volume(Volume(data[:-1]), geo)


def test_load_scan_dispatches_on_what_the_path_is(tmp_path):
    scan = _scan()
    write_r2gaussian_case(scan, tmp_path / "case")
    loaded = load_scan(tmp_path / "case")
    assert isinstance(loaded, Scan) and loaded.metadata["format"] == "r2gaussian"
    torch.testing.assert_close(loaded.projections, scan.projections, rtol=0, atol=0)
    volume = Volume(scan.volume_gt.numpy(), spacing=(2.0, 2.0, 2.0))
    write_nifti(volume, tmp_path / "v.nii.gz")
    write_npy(volume, tmp_path / "v.npy")
    np.savez(tmp_path / "v.npz", volume=volume.data)
    for name in ("v.nii.gz", "v.npy", "v.npz"):
        loaded = load_scan(tmp_path / name)
        assert isinstance(loaded, Volume)
        np.testing.assert_array_equal(loaded.data, volume.data)
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(FormatError, match="v.txt: not a recognised scan or volume"):
        load_scan(tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError):
        load_scan(tmp_path / "absent")
