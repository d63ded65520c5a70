"""Readers of measured projections (HDF5 Data Exchange / NXtomo, TIFF folder, FIPS .mat):
small synthetic files written in tmp_path, flat/dark/-log, zero counts, bad input."""

import json
import logging
import math

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import (
    Acquisition,
    FormatError,
    MissingGeometryError,
    load_scan,
    log_normalize,
    read_data_exchange,
    read_matlab,
    read_scan,
    read_tiff_folder,
    write_scan,
)
from nr.io.matlab import ASTRA_TO_TIGRE_DEG
from nr.ops.fdk import fdk
from nr.ops.projector import project
from nr.phantoms import shepp_logan_3d, voxelise
from pipelines import recon

N_VIEWS, N_V, N_U = 24, 3, 40
FLAT, DARK = 5000.0, 100.0


@pytest.fixture(scope="module")
def line_integrals():
    """(N, V, U) float64 line integrals in TIGRE's row order (row 0 at the bottom)."""
    rng = np.random.default_rng(0)
    return rng.uniform(0.05, 2.0, size=(N_VIEWS, N_V, N_U))


def _counts(line_integrals, flat=FLAT, dark=DARK):
    """Counts as a detector stores them: rows top first, (N, V, U)."""
    stored = line_integrals[:, ::-1, :]
    return flat * np.exp(-stored) + dark


def _fields():
    """(3 flats, 2 darks): open-beam images include the dark current."""
    flats = np.full((3, N_V, N_U), FLAT + DARK) + np.array([-1.0, 0.0, 1.0])[:, None, None]
    darks = np.full((2, N_V, N_U), DARK) + np.array([-0.5, 0.5])[:, None, None]
    return flats, darks


def _write_dxchange(path, data, flats=None, darks=None, theta=None, units="degrees", extra=None):
    with h5py.File(path, "w") as f:
        f["exchange/data"] = data.astype(np.float32)
        if flats is not None:
            f["exchange/data_white"] = flats.astype(np.float32)
        if darks is not None:
            f["exchange/data_dark"] = darks.astype(np.float32)
        if theta is not None:
            f["exchange/theta"] = theta
            f["exchange/theta"].attrs["units"] = units
        for name, (value, unit) in (extra or {}).items():
            f[name] = value
            f[name].attrs["units"] = unit


THETA = np.arange(N_VIEWS) * 180.0 / N_VIEWS


# ------------------------------------------------------------ normalisation
def test_log_normalize_counts_transmission_and_line_integrals(line_integrals):
    flats, darks = _fields()
    out, record = log_normalize(_counts(line_integrals), flats, darks)
    np.testing.assert_allclose(out, line_integrals[:, ::-1], atol=1e-5)
    assert out.dtype == np.float32
    assert (record.values, record.flats, record.darks, record.clipped) == ("counts", 3, 2, 0)
    out, _ = log_normalize(np.exp(-line_integrals), values="transmission")
    np.testing.assert_allclose(out, line_integrals, atol=1e-5)
    out, record = log_normalize(line_integrals, values="line_integrals")
    np.testing.assert_allclose(out, line_integrals, atol=1e-6)
    assert record.total == line_integrals.size


def test_zero_and_negative_counts_are_clipped_and_counted(line_integrals, caplog):
    flats, darks = _fields()
    data = _counts(line_integrals)
    data[0, 0, :5] = 0.0  # below the dark: negative after subtraction
    data[1, 1, 3] = DARK  # exactly the dark: zero transmission
    flats[:, 2, 7] = DARK  # a dead pixel: flat not above dark, in every view
    with caplog.at_level(logging.WARNING, logger="nr"):
        out, record = log_normalize(data, flats, darks.mean(0), floor=1e-4)
    assert record.dead_pixels == 1
    assert record.clipped == 5 + 1 + N_VIEWS
    assert np.isfinite(out).all()
    assert out[0, 0, :5] == pytest.approx(-math.log(1e-4))
    assert out[:, 2, 7] == pytest.approx(-math.log(1e-4))
    assert "set to 0.0001" in caplog.text and str(record.clipped) in caplog.text


def test_log_normalize_rejects_bad_input(line_integrals):
    flats, darks = _fields()
    data = _counts(line_integrals)
    with pytest.raises(FormatError, match="no flat field"):
        log_normalize(data)
    with pytest.raises(FormatError, match="flat field: images of shape"):
        log_normalize(data, flats[:, :, :-1], darks)
    bad = data.copy()
    bad[3, 1, 1] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        log_normalize(bad, flats, darks)
    with pytest.raises(ValueError, match="values"):
        log_normalize(data, flats, values="counts per second")
    with pytest.raises(ValueError, match="floor"):
        log_normalize(data, flats, floor=0.0)


# ------------------------------------------------------------ Data Exchange / NXtomo
def test_data_exchange_reads_counts_flats_darks_and_theta(tmp_path, line_integrals):
    flats, darks = _fields()
    path = tmp_path / "scan.h5"
    _write_dxchange(path, _counts(line_integrals), flats, darks, THETA)
    scan = read_data_exchange(path)
    torch.testing.assert_close(
        scan.projections, torch.from_numpy(line_integrals).float(), atol=1e-5, rtol=0
    )
    assert scan.geo.mode == "parallel"
    np.testing.assert_allclose(scan.geo.angles, np.deg2rad(THETA))
    assert scan.geo.volume_shape == (N_V, N_U, N_U)
    meta = scan.metadata
    assert meta["format"] == "data_exchange" and meta["measured"] is True
    assert meta["length_unit"] == "pixel" and meta["center"]["source"] == "unknown"
    assert meta["normalization"]["flats"] == 3 and meta["normalization"]["clipped"] == 0
    assert load_scan(path).geo == scan.geo  # load_scan recognises it


def test_data_exchange_pixel_size_radians_and_overrides(tmp_path, line_integrals):
    path = tmp_path / "scan.hdf5"
    extra = {
        "measurement/instrument/detector/x_pixel_size": (6.5, "um"),
        "measurement/instrument/detector/y_pixel_size": (6.5, "microns"),
    }
    _write_dxchange(path, _counts(line_integrals), *_fields(), np.deg2rad(THETA), "radians", extra)
    scan = read_data_exchange(path)
    np.testing.assert_allclose(scan.geo.d_detector, [0.0065, 0.0065])
    assert scan.metadata["length_unit"] == "mm"
    np.testing.assert_allclose(scan.geo.angles, np.deg2rad(THETA))
    # The user's geometry wins over the file: a rotation axis, other angles, a coarser grid.
    user = {"center_offset": 2.5, "angular_range_deg": 360.0, "voxels": 20, "voxel_size": 0.013}
    scan = read_data_exchange(path, user)
    assert scan.geo.off_detector[1] == pytest.approx(2.5 * 0.0065)
    assert scan.metadata["center"]["source"] == "file or geometry"
    np.testing.assert_allclose(scan.geo.angles[1], 2 * np.pi / N_VIEWS)
    assert scan.geo.volume_shape == (N_V, 20, 20)
    column = Acquisition(axis_column=N_U / 2 - 0.5 - 4.0)
    assert read_data_exchange(path, column).geo.off_detector[1] == pytest.approx(4.0 * 0.0065)


def test_nxtomo_layout(tmp_path, line_integrals):
    flats, darks = _fields()
    images = np.concatenate([darks, flats, _counts(line_integrals)])
    keys = np.array([2] * 2 + [1] * 3 + [0] * N_VIEWS)
    angles = np.concatenate([np.zeros(5), THETA])
    path = tmp_path / "scan.nxs"
    with h5py.File(path, "w") as f:
        f["entry/instrument/detector/data"] = images.astype(np.float32)
        f["entry/instrument/detector/image_key"] = keys
        f["entry/sample/rotation_angle"] = angles
        f["entry/sample/rotation_angle"].attrs["units"] = "degree"
    scan = load_scan(path)
    assert scan.metadata["format"] == "nxtomo"
    torch.testing.assert_close(
        scan.projections, torch.from_numpy(line_integrals).float(), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(scan.geo.angles, np.deg2rad(THETA))


def test_data_exchange_bad_input(tmp_path, line_integrals):
    flats, darks = _fields()
    counts = _counts(line_integrals)
    cases = {
        "missing": ({"exchange/other": counts}, "no Data Exchange projections"),
        "flat_shape": (None, "flat field: images of shape"),
        "nan": (None, "NaN"),
        "theta": (None, "23 angles for 24 projections"),
    }
    path = tmp_path / "missing.h5"
    with h5py.File(path, "w") as f:
        f["exchange/other"] = counts
    with pytest.raises(FormatError, match=cases["missing"][1]):
        read_data_exchange(path)
    _write_dxchange(tmp_path / "flat.h5", counts, flats[:, :2], darks, THETA)
    with pytest.raises(FormatError, match=cases["flat_shape"][1]):
        read_data_exchange(tmp_path / "flat.h5")
    bad = counts.copy()
    bad[2, 0, 0] = np.nan
    _write_dxchange(tmp_path / "nan.h5", bad, flats, darks, THETA)
    with pytest.raises(FormatError, match=f"nan.h5.*{cases['nan'][1]}"):
        read_data_exchange(tmp_path / "nan.h5")
    _write_dxchange(tmp_path / "theta.h5", counts, flats, darks, THETA[:-1])
    with pytest.raises(FormatError, match=cases["theta"][1]):
        read_data_exchange(tmp_path / "theta.h5")
    _write_dxchange(tmp_path / "noflat.h5", counts, None, None, THETA)
    with pytest.raises(FormatError, match="no flat field.*--geometry"):
        read_data_exchange(tmp_path / "noflat.h5")
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(FormatError, match="text.h5"):
        read_data_exchange(tmp_path / "text.h5")


def test_missing_numbers_name_themselves_and_the_remedy(tmp_path, line_integrals):
    path = tmp_path / "fan.h5"
    _write_dxchange(path, _counts(line_integrals), *_fields(), THETA)
    fan = {"mode": "cone", "dso": 100.0, "dsd": 150.0}
    with pytest.raises(MissingGeometryError) as error:
        read_data_exchange(path, fan)
    message = str(error.value)
    assert "fan.h5" in message and "pixel size" in message
    assert "pixel_size" in message and "--geometry FILE" in message
    with pytest.raises(MissingGeometryError, match="source-to-detector distance \\(dsd"):
        read_data_exchange(path, {"mode": "cone", "dso": 100.0, "pixel_size": 0.1})
    _write_dxchange(tmp_path / "angles.h5", _counts(line_integrals), *_fields())
    with pytest.raises(MissingGeometryError, match="view angles.*angular_range_deg"):
        read_data_exchange(tmp_path / "angles.h5")
    with pytest.raises(FormatError, match="one detector row"):
        read_data_exchange(path, {"mode": "fan", "dso": 1.0, "dsd": 2.0, "pixel_size": 0.1})


def test_acquisition_validation(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        Acquisition(mode="helical")
    with pytest.raises(ValueError, match="center_offset, axis_column"):
        Acquisition(center_offset=1.0, axis_column=3.0)
    with pytest.raises(ValueError, match="pixel_size"):
        Acquisition(pixel_size=(-1.0, 1.0))
    with pytest.raises(ValueError, match="dso"):
        Acquisition(dso=math.nan)
    (tmp_path / "g.json").write_text(json.dumps({"mode": "cone", "pixel_pitch": 0.1}))
    with pytest.raises(FormatError, match="g.json: unknown keys \\['pixel_pitch'\\]"):
        Acquisition.from_json(tmp_path / "g.json")
    (tmp_path / "bad.json").write_text("{mode: cone")
    with pytest.raises(FormatError, match="bad.json: invalid JSON"):
        Acquisition.from_json(tmp_path / "bad.json")
    merged = Acquisition(dso=5.0).over(Acquisition(dso=1.0, dsd=9.0))
    assert (merged.dso, merged.dsd) == (5.0, 9.0)


# ------------------------------------------------------------ TIFF folder
def _tiff_folder(folder, line_integrals, geometry, stacked=False):
    folder.mkdir()
    counts = np.round(_counts(line_integrals)).astype(np.uint16)
    if stacked:
        tifffile.imwrite(folder / "projections.tif", counts, photometric="minisblack")
    else:
        for i, image in enumerate(counts):
            tifffile.imwrite(folder / f"proj_{i}.tif", image)  # natural order: 2 before 10
    flats, darks = _fields()
    tifffile.imwrite(folder / "flat_0.tif", flats.astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(folder / "dark_0.tif", np.round(darks[0]).astype(np.uint16))
    if geometry is not None:
        (folder / "geometry.json").write_text(json.dumps(geometry))
    return folder


@pytest.mark.parametrize("stacked", [False, True])
def test_tiff_folder(tmp_path, line_integrals, stacked):
    geometry = {"mode": "parallel", "pixel_size": 0.1, "angular_range_deg": 180.0}
    folder = _tiff_folder(tmp_path / "tiffs", line_integrals, geometry, stacked)
    scan = load_scan(folder)
    assert scan.metadata["format"] == "tiff_folder"
    assert scan.metadata["flat_files"] == 1 and scan.metadata["normalization"]["flats"] == 3
    # uint16 rounding of the counts: about 1e-3 in line integral at the darkest pixels
    torch.testing.assert_close(
        scan.projections, torch.from_numpy(line_integrals).float(), atol=3e-3, rtol=0
    )
    np.testing.assert_allclose(scan.geo.d_detector, [0.1, 0.1])
    np.testing.assert_allclose(np.rad2deg(scan.geo.angles), THETA)
    # The toolkit's own scan format holds it from then on.
    write_scan(scan, tmp_path / "as_scan")
    again = read_scan(tmp_path / "as_scan")
    assert again.geo == scan.geo and again.metadata == scan.metadata
    torch.testing.assert_close(again.projections, scan.projections, atol=0, rtol=0)


def test_tiff_cone_geometry_and_errors(tmp_path, line_integrals):
    geometry = {
        "mode": "cone", "pixel_size": [0.2, 0.1], "dso": 100.0, "dsd": 250.0,
        "angles_deg": list(THETA * 2), "offset_v": 0.5, "flip_u": True,
    }  # fmt: skip
    folder = _tiff_folder(tmp_path / "cone", line_integrals, geometry)
    scan = read_tiff_folder(folder)
    geo = scan.geo
    assert geo.mode == "cone" and (geo.dso, geo.dsd) == (100.0, 250.0)
    np.testing.assert_allclose(geo.d_voxel, [0.2 / 2.5, 0.1 / 2.5, 0.1 / 2.5])
    np.testing.assert_allclose(geo.off_detector, [0.5 * 0.2, 0.0])
    flipped = torch.from_numpy(line_integrals[:, :, ::-1].copy()).float()
    torch.testing.assert_close(scan.projections, flipped, atol=3e-3, rtol=0)
    # A geometry file elsewhere (--geometry) overrides the folder's, key by key.
    (tmp_path / "other.json").write_text(json.dumps({"dsd": 300.0}))
    assert read_tiff_folder(folder, tmp_path / "other.json").geo.dsd == 300.0
    # No geometry at all: the error says where it goes.
    folder = _tiff_folder(tmp_path / "bare", line_integrals, None)
    with pytest.raises(MissingGeometryError, match="bare: no geometry.json.*--geometry"):
        read_tiff_folder(folder)
    # Images of another size.
    folder = _tiff_folder(tmp_path / "odd", line_integrals, {"mode": "parallel"})
    tifffile.imwrite(folder / "proj_99.tif", np.zeros((N_V, N_U + 1), np.uint16))
    with pytest.raises(FormatError, match="proj_99.tif: images of shape"):
        read_tiff_folder(folder)
    (folder / "proj_99.tif").unlink()
    tifffile.imwrite(folder / "proj_98.tif", np.zeros((N_V, N_U, 3), np.uint8))
    with pytest.raises(FormatError, match="proj_98.tif: a colour image"):
        read_tiff_folder(folder)
    # Transmissions without flats must be declared.
    folder = tmp_path / "noflat"
    folder.mkdir()
    stack = np.exp(-line_integrals).astype(np.float32)
    tifffile.imwrite(folder / "p.tif", stack, photometric="minisblack")
    (folder / "geometry.json").write_text(json.dumps({"mode": "parallel"}))
    with pytest.raises(FormatError, match="no flat-field TIFFs"):
        read_tiff_folder(folder)
    (folder / "geometry.json").write_text(
        json.dumps({"mode": "parallel", "values": "transmission", "angular_range_deg": 180})
    )
    out = read_tiff_folder(folder)
    torch.testing.assert_close(
        out.projections, torch.from_numpy(line_integrals[:, ::-1].copy()).float(), atol=1e-5,
        rtol=0,
    )  # fmt: skip


# ------------------------------------------------------------ MATLAB (FIPS / HTC)
def _fan_scan():
    """A fan-beam scan of a phantom slice in TIGRE's convention, 360 degrees."""
    geo = ConeBeamGeometry(
        mode="cone", dso=100.0, dsd=150.0, n_voxel=(1, 32, 32), d_voxel=(1.0, 1.0, 1.0),
        n_detector=(1, 64), d_detector=(1.5, 1.5),
        angles=np.deg2rad(np.arange(0, 360, 5.0)),
    )  # fmt: skip
    volume = voxelise(shepp_logan_3d(geo), geo, supersample=2)
    return geo, volume, project(volume, geo)


def test_matlab_htc_struct_maps_to_tigre(tmp_path):
    geo, volume, projections = _fan_scan()
    # What HelTomo writes: ASTRA angles t = a + 90 degrees, effective pixel at the axis.
    parameters = {
        "distanceSourceOrigin": 100.0, "distanceSourceDetector": 150.0,
        "geometricMagnification": 1.5, "effectivePixelSizePost": 1.0, "pixelSizePost": 1.5,
        "angles": np.rad2deg(geo.angles) - ASTRA_TO_TIGRE_DEG, "numDetectorsPost": 64,
    }  # fmt: skip
    struct = {"type": "2D", "sinogram": projections[:, 0].numpy().astype(np.float64),
              "parameters": parameters}  # fmt: skip
    scipy.io.savemat(tmp_path / "htc.mat", {"CtDataFull": struct})
    scan = load_scan(tmp_path / "htc.mat")
    assert scan.metadata["format"] == "matlab" and scan.metadata["variable"] == "CtDataFull"
    assert scan.metadata["mode"] == "fan" and scan.geo.mode == "cone"
    assert (scan.geo.dso, scan.geo.dsd) == (100.0, 150.0)
    np.testing.assert_allclose(scan.geo.d_detector[1], 1.5)
    np.testing.assert_allclose(scan.geo.angles, geo.angles, atol=1e-12)
    torch.testing.assert_close(scan.projections, projections, atol=1e-6, rtol=0)
    # FDK on the read geometry (on the phantom's grid) recovers the slice.
    scan = load_scan(tmp_path / "htc.mat", {"voxels": 32, "voxel_size": 1.0})
    recon_volume = fdk(scan.projections, scan.geo)
    corr = np.corrcoef(recon_volume.numpy().ravel(), volume.numpy().ravel())[0, 1]
    assert corr > 0.9


def test_matlab_3d_layout_plain_variables_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    views = rng.uniform(size=(5, 4, 6))  # (N, V, U) in TIGRE's row order
    stored = np.transpose(views[:, ::-1, :], (2, 0, 1))  # (U, N, V), rows top first
    parameters = {"distanceSourceOrigin": 50.0, "distanceSourceDetector": 80.0,
                  "pixelSize": 0.2, "angles": np.arange(5) * 72.0}  # fmt: skip
    scipy.io.savemat(
        tmp_path / "cone.mat",
        {"CtData": {"type": "3D", "sinogram": stored, "parameters": parameters}},
    )
    scan = read_matlab(tmp_path / "cone.mat")
    assert scan.geo.mode == "cone" and scan.geo.projection_shape == (5, 4, 6)
    torch.testing.assert_close(scan.projections, torch.from_numpy(views).float())
    np.testing.assert_allclose(scan.geo.d_detector, [0.2, 0.2])
    # Top-level variables, geometry from the user's file.
    scipy.io.savemat(tmp_path / "plain.mat", {"sinogram": views[:, 0]})
    with pytest.raises(MissingGeometryError, match="plain.mat.*dso.*--geometry"):
        read_matlab(tmp_path / "plain.mat", {"pixel_size": 0.1, "angular_range_deg": 360})
    scan = read_matlab(
        tmp_path / "plain.mat",
        {"pixel_size": 0.1, "dso": 10.0, "dsd": 20.0, "angular_range_deg": 360.0},
    )
    assert scan.geo.projection_shape == (5, 1, 6)
    # No pixel size anywhere: one clear error naming the file and the remedy.
    scipy.io.savemat(
        tmp_path / "nopix.mat",
        {"CtData": {"sinogram": views[:, 0], "parameters": {
            "distanceSourceOrigin": 5.0, "distanceSourceDetector": 8.0,
            "angles": np.arange(5.0)}}},
    )  # fmt: skip
    with pytest.raises(MissingGeometryError, match="nopix.mat: the detector pixel size"):
        read_matlab(tmp_path / "nopix.mat")
    scipy.io.savemat(tmp_path / "none.mat", {"data": views[:, 0]})
    with pytest.raises(FormatError, match="no sinogram.*\\['data'\\]"):
        read_matlab(tmp_path / "none.mat")
    bad = views[:, 0].copy()
    bad[0, 0] = np.inf
    scipy.io.savemat(tmp_path / "inf.mat", {"sinogram": bad})
    with pytest.raises(FormatError, match="inf.mat.*NaN or infinite"):
        read_matlab(tmp_path / "inf.mat", {"mode": "parallel", "angular_range_deg": 180.0})
    (tmp_path / "junk.mat").write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="junk.mat"):
        read_matlab(tmp_path / "junk.mat")


# ------------------------------------------------------------ the command
def test_recon_command_on_a_measured_file_uses_all_views(tmp_path, line_integrals):
    path = tmp_path / "scan.h5"
    _write_dxchange(path, _counts(line_integrals), *_fields(), THETA)
    metrics = recon.main([str(path), "--method", "fdk", "--center", "none",
                          "--out", str(tmp_path / "out")])  # fmt: skip
    assert metrics["views"] == N_VIEWS  # not the command's default of 50 or fewer
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["scan"]["normalization"]["flats"] == 3
    (tmp_path / "g.json").write_text(json.dumps({"center_offset": 1.5}))
    metrics = recon.main([str(path), "--method", "fdk", "--views", "8", "--geometry",
                          str(tmp_path / "g.json"), "--out", str(tmp_path / "out8")])  # fmt: skip
    assert metrics["views"] == 8
    config = json.loads((tmp_path / "out8" / "config.json").read_text())
    assert config["geometry"]["off_detector"][1] == 1.5  # given: not estimated
    with pytest.raises(ValueError, match="acquisition \\(--geometry\\): applies to measured"):
        load_scan(tmp_path / "out8" / "volume.nii.gz", {"mode": "parallel"})


def test_measured_benchmark_needs_a_scan(tmp_path):
    from pipelines.benchmarks import measured

    with pytest.raises(ValueError, match="--scan PATH"):
        measured.run(quick=True)
    np.save(tmp_path / "volume.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="holds a volume"):
        measured.run(quick=True, scan=tmp_path / "volume.npy")
