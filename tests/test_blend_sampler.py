"""DiffusionBlend model and sampler: blending, CG data consistency, DDIM, save/load."""

import pytest
import torch

from nr.priors.blend_model import PRESETS, BlendModelConfig, BlendPrior
from nr.priors.partitions import adjacent_partition, jumping_partition
from nr.priors.sampler import (
    BlendSampler,
    BlendSamplerConfig,
    IntensityMap,
    blended_epsilon,
    cg_normal_equations,
)

SHAPE = (9, 16, 16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BlendPrior(PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def operator():
    """A fixed random underdetermined matrix: 300 measurements of a 9x16x16 volume."""
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(300, SHAPE[0] * SHAPE[1] * SHAPE[2], generator=generator) / 48.0

    def A(volume):
        return (matrix @ volume.reshape(-1)).reshape(3, 10, 10)

    def AT(projections):
        return (matrix.T @ projections.reshape(-1)).reshape(SHAPE)

    return A, AT


def phantom():
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return ((x**2 + y**2 + 0.5 * z**2) < 0.6).float() * 0.02


def residual(A, volume, y):
    return float((A(volume) - y).norm() / y.norm())


def test_operator_fixture_is_adjoint(operator):
    A, AT = operator
    x, p = torch.randn(SHAPE), torch.randn(3, 10, 10)
    assert torch.allclose(
        torch.dot(A(x).flatten(), p.flatten()), torch.dot(x.flatten(), AT(p).flatten()), rtol=1e-4
    )


def test_cg_residual_falls_with_iterations(operator):
    A, AT = operator
    y = A(phantom())
    x0 = torch.zeros(SHAPE)
    residuals = [residual(A, cg_normal_equations(A, AT, y, x0, n), y) for n in (0, 1, 3, 10, 30)]
    assert all(b < a for a, b in zip(residuals, residuals[1:], strict=False)), residuals
    assert residuals[-1] < 0.05 * residuals[0]


def test_cg_z_term_smooths_along_z(operator):
    A, AT = operator
    y = A(phantom())
    plain = cg_normal_equations(A, AT, y, torch.zeros(SHAPE), 20)
    smooth = cg_normal_equations(A, AT, y, torch.zeros(SHAPE), 20, rho=10.0)
    jump = lambda v: float((v[1:] - v[:-1]).abs().sum())  # noqa: E731
    assert jump(smooth) < jump(plain)


def test_blended_epsilon_takes_each_slice_from_its_owning_patch(model):
    x = torch.randn(11, 16, 16)
    for patches in (jumping_partition(11), adjacent_partition(11, 2)):
        eps = blended_epsilon(model, x, 500, patches, batch_size=2)
        for patch in patches:
            with torch.no_grad():
                out = model(x[list(patch.indices)][None], 500, patch.gap)[0]
            for slot, (z, owned) in enumerate(zip(patch.indices, patch.owned, strict=True)):
                if owned:
                    torch.testing.assert_close(eps[z], out[slot], rtol=1e-4, atol=1e-5)


def test_sampler_residual_falls_with_cg_iterations(model, operator):
    A, AT = operator
    y = A(phantom())
    intensity = IntensityMap(0.0, 0.03)
    residuals = []
    for cg_iters in (0, 2, 10):
        sampler = BlendSampler(model, BlendSamplerConfig(steps=4, cg_iters=cg_iters))
        out = sampler.sample(A, AT, y, SHAPE, intensity, torch.Generator().manual_seed(0))
        assert out.shape == SHAPE and torch.isfinite(out).all()
        residuals.append(residual(A, out, y))
    assert residuals[0] > residuals[1] > residuals[2], residuals
    assert sampler.stats.steps == 4
    # steps 0, 2 jumping (9 patches of 3 slices each: 3 per block of 9) and 1, 3 adjacent (3 or 4)
    assert 3 * 2 + 3 * 2 <= sampler.stats.patch_evaluations <= 3 * 2 + 4 * 2


def test_sample_from_intermediate_time_stays_near_start(model, operator):
    A, AT = operator
    truth = phantom()
    y = A(truth)
    intensity = IntensityMap(0.0, 0.03)
    sampler = BlendSampler(model, BlendSamplerConfig(steps=3, cg_iters=0, eta=0.0))
    near = sampler.sample_from(A, AT, y, truth, 20, intensity, torch.Generator().manual_seed(0))
    far = sampler.sample_from(A, AT, y, truth, 900, intensity, torch.Generator().manual_seed(0))
    assert sampler.timesteps(20) == [20, 10, 0]
    assert (near - truth).abs().mean() < (far - truth).abs().mean()


def test_sampler_is_reproducible(model, operator):
    A, AT = operator
    y = A(phantom())
    sampler = BlendSampler(model, BlendSamplerConfig(steps=3, cg_iters=2))
    runs = [
        sampler.sample(A, AT, y, SHAPE, IntensityMap(0, 0.03), torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_save_load_same_output(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = BlendPrior.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 300, 3), model(x, 300, 3), rtol=0, atol=0)
        assert not torch.allclose(model(x, 300, 1), model(x, 300, 3))


def test_bad_inputs_raise(model, operator, tmp_path):
    A, AT = operator
    y = A(phantom())
    sampler = BlendSampler(model, BlendSamplerConfig(steps=2))
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(A, AT, y, (9, 15, 16), IntensityMap(), torch.Generator())
    with pytest.raises(ValueError, match="Z must be"):
        sampler.sample(A, AT, y, (8, 16, 16), IntensityMap(), torch.Generator())
    with pytest.raises(ValueError, match="t0"):
        sampler.sample_from(A, AT, y, phantom(), 1000, IntensityMap(), torch.Generator())
    with pytest.raises(ValueError, match="gaps"):
        model(torch.randn(1, 3, 16, 16), 10, 2)
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(1, 4, 16, 16), 10, 1)
    with pytest.raises(ValueError, match="eta"):
        BlendSamplerConfig(eta=1.5)
    with pytest.raises(ValueError, match="IntensityMap"):
        IntensityMap(1.0, 1.0)
    with pytest.raises(ValueError, match="norm_num_groups"):
        BlendModelConfig(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(FileNotFoundError, match="train_blend"):
        BlendPrior.from_pretrained(tmp_path / "missing")
