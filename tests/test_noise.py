"""TIGRE's CT noise model: photon statistics, reproducibility, clipping, bad input."""

import math

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.ops.noise import NoiseConfig, add_tigre_noise, simulate_projections
from nr.ops.projector import project


def _levels() -> torch.Tensor:
    """(4, 64, 64) projections: one constant level per view, the largest 4.0."""
    levels = torch.tensor([4.0, 1.0, 2.0, 3.0])
    return levels[:, None, None].expand(4, 64, 64).clone()


def test_photon_counts_have_poisson_plus_gaussian_statistics():
    i0, sigma, peak = 1e4, 10.0, 4.0
    noisy = add_tigre_noise(_levels(), i0=i0, gaussian=(0.0, sigma), seed=1)
    counts = i0 * torch.exp(-noisy.double() / peak)
    n = counts[0].numel()
    for view, level in enumerate([4.0, 1.0, 2.0, 3.0]):
        expected = i0 * math.exp(-level / peak)
        variance = expected + sigma**2
        mean = counts[view].mean().item()
        assert abs(mean - expected) < 5 * math.sqrt(variance / n)
        # Sample variance of 4096 values: relative standard error sqrt(2 / n) ~ 2.2%.
        assert counts[view].var().item() == pytest.approx(variance, rel=0.12)


def test_gaussian_mean_shifts_counts():
    i0, shift = 1e6, 500.0
    noisy = add_tigre_noise(_levels(), i0=i0, gaussian=(shift, 0.0), seed=0)
    counts = i0 * torch.exp(-noisy.double() / 4.0)
    expected = i0 * math.exp(-2.0 / 4.0) + shift
    assert counts[2].mean().item() == pytest.approx(expected, rel=2e-3)


def test_same_seed_same_noise_other_seed_other_noise():
    projections = _levels()
    a = add_tigre_noise(projections, seed=7)
    b = add_tigre_noise(projections, seed=7)
    c = add_tigre_noise(projections, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == projections.dtype and a.shape == projections.shape


def test_negative_line_integrals_are_clipped_and_low_dose_stays_finite():
    projections = _levels()
    projections[1] = 0.0  # unattenuated rays: half of the noisy counts exceed i0
    noisy = add_tigre_noise(projections, i0=1e4, seed=2)
    assert noisy.min() >= 0
    zero_fraction = (noisy[1] == 0).double().mean().item()
    assert 0.4 < zero_fraction < 0.6
    starved = add_tigre_noise(_levels(), i0=5.0, gaussian=(0.0, 10.0), seed=3)
    assert torch.isfinite(starved).all()


def test_float64_projections_keep_their_dtype():
    noisy = add_tigre_noise(_levels().double(), seed=0)
    assert noisy.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"i0": 0.0}, "i0"),
        ({"i0": float("nan")}, "i0"),
        ({"gaussian": (0.0,)}, "gaussian"),
        ({"gaussian": (0.0, -1.0)}, "std"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        add_tigre_noise(_levels(), **kwargs)


def test_bad_projections_raise():
    with pytest.raises(TypeError, match="projections"):
        add_tigre_noise(np.ones((2, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="projections"):
        add_tigre_noise(torch.ones(3, 3))
    with pytest.raises(ValueError, match="finite"):
        add_tigre_noise(torch.full((2, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="maximum"):
        add_tigre_noise(torch.zeros(2, 3, 3))


def test_simulate_projections_matches_project_and_adds_noise():
    geo = ConeBeamGeometry.default(n_voxel=12, n_views=4)
    volume = torch.zeros(geo.volume_shape)
    volume[3:9, 3:9, 3:9] = 0.02
    clean = simulate_projections(volume, geo)
    torch.testing.assert_close(clean, project(volume, geo))
    noisy = simulate_projections(volume, geo, noise=NoiseConfig(i0=1e5), seed=4)
    again = simulate_projections(volume, geo, noise=NoiseConfig(i0=1e5), seed=4)
    assert torch.equal(noisy, again)
    assert not torch.equal(noisy, clean)
    assert (noisy - clean).abs().mean() < 0.1 * clean.mean()
    subset = simulate_projections(volume, geo, noise=True, view_ids=[1, 3])
    assert subset.shape == (2, *clean.shape[1:])
    with pytest.raises(TypeError, match="noise"):
        simulate_projections(volume, geo, noise="yes")
