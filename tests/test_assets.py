"""The shipped assets load with their classes and run on the paths that use them by default."""

import numpy as np
import torch

from nr.assets import asset_path, embedded_volume
from nr.geometry import ConeBeamGeometry
from nr.priors.blend_model import BlendPrior
from slicefixer.model import SliceFixer
from slicefixer.repair import repair_volume


def test_embedded_volume_is_a_normalised_128_cube():
    volume = embedded_volume()
    assert volume.shape == (128, 128, 128) and volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() <= 1.0 and volume.max() > 0.5


def test_shipped_slicefixer_repairs_a_volume_in_float32():
    model = SliceFixer.from_pretrained(asset_path("slicefixer-compact"))
    assert model.config.preset == "compact" and model.config.resolution == 64
    assert all(p.dtype == torch.float32 for p in model.parameters())
    geo = ConeBeamGeometry.default(n_voxel=64, n_views=8, n_detector=32)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, 64),) * 3, indexing="ij")
    volume = 0.6 * (x**2 + y**2 / 0.8 + z**2 / 0.9 < 0.7).float() + 0.05
    projections = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(0))
    out = repair_volume(model, volume, projections, geo, batch_size=32)
    assert out.shape == volume.shape and torch.isfinite(out).all()
    # A trained residual model changes the slices; an untrained one returns them unchanged.
    assert float((out - volume).abs().mean()) > 1e-4


def test_shipped_diffusionblend_predicts_noise_of_its_patches():
    model = BlendPrior.from_pretrained(asset_path("diffusionblend")).eval()
    config = model.config
    patches = torch.randn(2, config.slices, config.resolution, config.resolution)
    with torch.no_grad():
        epsilon = model(patches, torch.tensor([999, 10]), config.gaps[0])
    assert epsilon.shape == patches.shape and epsilon.dtype == torch.float32
    assert torch.isfinite(epsilon).all()
