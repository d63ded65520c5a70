"""DiffNR's training data for SliceFixer: underfit reconstructions paired with clean slices.

    from data_curation import CurationConfig, curate, PairDataset
    curate(["volumes/"], "dataset", CurationConfig(), workers=2)
    pairs = PairDataset("dataset", exclude=["held_out_volume"])

docs/curation.md describes the recipe, the options and the on-disk format.
"""

from data_curation.config import CurationConfig
from data_curation.dataset import PairDataset
from data_curation.engine import curate, find_volumes, read_data_manifest
from data_curation.reconstructors import Reconstructor, available, get_reconstructor, register
from data_curation.volume import VolumeSource, curate_volume

__all__ = [
    "CurationConfig",
    "PairDataset",
    "Reconstructor",
    "VolumeSource",
    "available",
    "curate",
    "curate_volume",
    "find_volumes",
    "get_reconstructor",
    "read_data_manifest",
    "register",
]
