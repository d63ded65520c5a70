"""The fixed held-out split and the training and curation commands that refuse it."""

import numpy as np
import pytest

from data_curation.splits import load_splits, refuse_heldout, volume_name
from pipelines import curate, train_blend


def test_the_split_is_fixed_and_disjoint():
    splits = load_splits()
    assert len(splits.heldout) == 5 and splits.validation and splits.train
    assert not set(splits.heldout) & set(splits.validation + splits.train)


def test_volume_names_ignore_folders_suffixes_and_dataset_hashes():
    assert volume_name("/data/corpus/lidc_idri_0314_chest.npz") == "lidc_idri_0314_chest"
    assert volume_name("head.nii.gz") == "head"
    assert volume_name("lidc_idri_0314_chest-0a1b2c3d") == "lidc_idri_0314_chest"
    assert volume_name("ibsi_sts_049_extremity_crop") == "ibsi_sts_049_extremity_crop"


def test_held_out_volumes_are_refused_by_name_path_or_dataset_id():
    refuse_heldout(["totalseg_example_ct_hu.npz", "my_scan-0a1b2c3d"], "--volumes")
    for item in ("x/tcia_crlm_1006_abdomen.npz", "opensciviz_engine_industrial-0a1b2c3d"):
        with pytest.raises(ValueError, match="held-out split"):
            refuse_heldout(["totalseg_example_ct_hu.npz", item], "--volumes")


@pytest.fixture
def folder_with_a_held_out_volume(tmp_path):
    folder = tmp_path / "volumes"
    folder.mkdir()
    volume = np.random.default_rng(0).random((12, 16, 16), dtype=np.float32)
    for name in ("mine", "lidc_idri_0314_chest"):
        np.savez(folder / f"{name}.npz", volume=volume)
    return folder


def test_curation_refuses_a_held_out_volume_and_writes_nothing(
    folder_with_a_held_out_volume, tmp_path, capsys
):
    out = tmp_path / "dataset"
    with pytest.raises(SystemExit) as exit_info:
        curate.main(["--volumes", str(folder_with_a_held_out_volume), "--out", str(out)])
    assert exit_info.value.code == 2 and not out.exists()
    assert "lidc_idri_0314_chest" in capsys.readouterr().err


def test_diffusionblend_training_refuses_a_held_out_volume(folder_with_a_held_out_volume):
    with pytest.raises(ValueError, match="held-out split"):
        train_blend.volume_files([str(folder_with_a_held_out_volume)], [])
    kept = train_blend.volume_files([str(folder_with_a_held_out_volume / "mine.npz")], [])
    assert [path.name for path in kept] == ["mine.npz"]
