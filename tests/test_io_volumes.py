import dataclasses
import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nr.io import (
    FormatError,
    Volume,
    clip,
    hu_to_mu,
    normalize_minmax,
    normalize_window,
    read_volume,
    write_nifti,
    write_npy,
)
from nr.io import volumes as volumes_module


def _data(shape=(3, 4, 5), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_round_trip_keeps_array_spacing_and_units(tmp_path, name):
    volume = Volume(_data(), spacing=(3.0, 2.0, 0.5), units="HU")
    write_nifti(volume, tmp_path / name)
    back = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back.data, volume.data)
    assert back.spacing == (3.0, 2.0, 0.5)
    assert back.units == "HU"
    assert _listing(tmp_path) == [name]


def test_nifti_written_file_maps_index_to_lps(tmp_path):
    volume = Volume(_data(), spacing=(3.0, 2.0, 0.5))
    write_nifti(volume, tmp_path / "v.nii")
    image = nib.load(tmp_path / "v.nii")
    assert image.shape == (5, 4, 3)
    np.testing.assert_allclose(np.diag(image.affine)[:3], [-0.5, -2.0, 3.0])
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.data.transpose(2, 1, 0))


def test_nifti_in_ras_order_is_reoriented_to_lps(tmp_path):
    data_xyz = _data((5, 4, 3))
    nib.save(nib.Nifti1Image(data_xyz, np.diag([0.5, 2.0, 3.0, 1.0])), tmp_path / "ras.nii")
    volume = read_volume(tmp_path / "ras.nii")
    # RAS index -> LPS index flips x and y; z (superior) is kept.
    np.testing.assert_array_equal(volume.data, data_xyz[::-1, ::-1, :].transpose(2, 1, 0))
    assert volume.spacing == (3.0, 2.0, 0.5)
    assert volume.units == "unknown"


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd"])
def test_itk_formats_read_in_zyx_lps_order(tmp_path, suffix):
    data = _data()
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.5, 2.0, 3.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # x index grows towards the right (R)
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    volume = read_volume(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(volume.data, data[:, :, ::-1])
    assert volume.spacing == (3.0, 2.0, 0.5)


def _write_dicom_series(folder, hu, spacing, order, modality="CT"):
    """A CT series of int16 slices written in `order`; SimpleITK stores HU + 1024 with
    rescale intercept -1024, so reading back HU exercises the rescale."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    dz, dy, dx = spacing
    for count, z in enumerate(order):
        image = sitk.GetImageFromArray(hu[z].astype(np.int16))
        image.SetSpacing((dx, dy))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.9.{z + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.8",
            "0020|0013": str(z + 1),
            "0020|0032": f"0\\0\\{z * dz}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{dy}\\{dx}",
            "0018|0050": str(dz),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{count:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_is_sorted_rescaled_to_hu(tmp_path):
    hu = np.random.default_rng(1).integers(-1000, 1000, size=(4, 5, 6)).astype(np.float32)
    _write_dicom_series(tmp_path / "ct", hu, (2.5, 0.7, 0.7), order=[2, 0, 3, 1])
    volume = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(volume.data, hu)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.7))
    assert volume.units == "HU"


def test_dicom_series_with_a_missing_slice_is_an_error(tmp_path):
    hu = np.zeros((5, 4, 4), np.float32)
    _write_dicom_series(tmp_path / "ct", hu, (1.0, 1.0, 1.0), order=[0, 1, 3, 4])
    with pytest.raises(FormatError, match="unevenly spaced"):
        read_volume(tmp_path / "ct")


def test_unreadable_dicom_file_is_named(tmp_path):
    hu = np.zeros((3, 4, 4), np.float32)
    _write_dicom_series(tmp_path / "ct", hu, (1.0, 1.0, 1.0), order=[0, 1, 2])
    (tmp_path / "ct" / "broken.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(FormatError, match="broken.dcm"):
        read_volume(tmp_path / "ct")


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(FormatError, match="no readable DICOM series"):
        read_volume(tmp_path / "empty")


def test_npy_and_npz_round_trip_and_key_selection(tmp_path):
    volume = Volume(_data())
    write_npy(volume, tmp_path / "v.npy")
    np.testing.assert_array_equal(read_volume(tmp_path / "v.npy").data, volume.data)
    assert read_volume(tmp_path / "v.npy").spacing is None
    np.savez(tmp_path / "one.npz", anything=volume.data)
    np.testing.assert_array_equal(read_volume(tmp_path / "one.npz").data, volume.data)
    np.savez(tmp_path / "two.npz", volume=volume.data, other=volume.data * 2)
    np.testing.assert_array_equal(read_volume(tmp_path / "two.npz").data, volume.data)
    np.testing.assert_array_equal(
        read_volume(tmp_path / "two.npz", key="other").data, volume.data * 2
    )
    np.savez(tmp_path / "ambiguous.npz", a=volume.data, b=volume.data)
    with pytest.raises(FormatError, match="ambiguous.npz.*pass key"):
        read_volume(tmp_path / "ambiguous.npz")


def test_integer_arrays_are_converted_explicitly_to_float32(tmp_path):
    np.save(tmp_path / "int.npy", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    volume = read_volume(tmp_path / "int.npy")
    assert volume.data.dtype == np.float32


@pytest.mark.parametrize("name", ["v.npy", "v.npz"])
def test_truncated_numpy_file_names_the_file(tmp_path, name):
    np.save(tmp_path / "v.npy", _data())
    np.savez(tmp_path / "v.npz", volume=_data())
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match=name):
        read_volume(tmp_path / name)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 4), np.float32), "3-D"),
        (np.full((2, 2, 2), np.nan, np.float32), "NaN"),
        (np.zeros((2, 2, 2), np.complex64), "real numbers"),
    ],
)
def test_bad_npy_contents_are_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(FormatError, match=f"bad.npy.*{message}"):
        read_volume(tmp_path / "bad.npy")


def test_truncated_nifti_gz_names_the_file(tmp_path):
    write_nifti(Volume(_data((8, 8, 8)), spacing=(1, 1, 1)), tmp_path / "v.nii.gz")
    raw = gzip.decompress((tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(FormatError, match="cut.nii.gz"):
        read_volume(tmp_path / "cut.nii.gz")


def test_garbage_itk_file_names_the_file(tmp_path):
    (tmp_path / "v.mha").write_bytes(b"garbage" * 20)
    with pytest.raises(FormatError, match="v.mha"):
        read_volume(tmp_path / "v.mha")


def test_unknown_suffix_and_missing_path(tmp_path):
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(FormatError, match="unknown volume format"):
        read_volume(tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "absent.nii")


def test_writers_validate_and_leave_nothing_on_failure(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="spacing"):
        write_nifti(Volume(_data()), tmp_path / "v.nii")
    with pytest.raises(ValueError, match=".npy"):
        write_npy(Volume(_data()), tmp_path / "v.nii")

    def failing_save(image, path):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(volumes_module.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(Volume(_data(), spacing=(1, 1, 1)), tmp_path / "v.nii")
    assert _listing(tmp_path) == []


def test_volume_validation():
    with pytest.raises(TypeError, match="float32"):
        Volume(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((2, 2, 2), np.float32), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        Volume(np.full((2, 2, 2), np.inf, np.float32))


def test_hu_to_mu_clip_and_normalisation():
    hu = Volume(np.array([-1000.0, 0.0, 1000.0, 3000.0], np.float32).reshape(1, 1, 4), units="HU")
    mu = hu_to_mu(hu)
    np.testing.assert_allclose(mu.data.ravel(), [0.0, 0.0206, 0.0412, 0.0824], rtol=1e-6)
    assert mu.units == "1/mm"
    naf = hu_to_mu(hu, mu_water=0.0206, mu_air=0.00004)
    np.testing.assert_allclose(naf.data.ravel()[:2], [0.00004, 0.0206], rtol=1e-5)
    window = normalize_window(hu, -1000, 1000)
    np.testing.assert_allclose(window.data.ravel(), [0.0, 0.5, 1.0, 1.0])
    assert window.units == "normalized"
    np.testing.assert_allclose(normalize_minmax(hu).data.ravel(), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(clip(hu, None, 0.0).data.ravel(), [-1000.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="units"):
        hu_to_mu(dataclasses.replace(hu, units="unknown"))
    with pytest.raises(ValueError, match="constant"):
        normalize_minmax(Volume(np.ones((2, 2, 2), np.float32)))
    with pytest.raises(ValueError, match="low < high"):
        normalize_window(hu, 10, -10)
