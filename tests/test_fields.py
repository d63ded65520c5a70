"""The hash-grid field: representation contract, renderers, MLP, backends, save/load."""

import pytest
import torch

from nr.fields import FieldConfig, HashGridConfig, HashGridField
from nr.fields.tcnn import tcnn_available
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project
from nr.representation import Representation

TINY = HashGridConfig(n_levels=3, log2_hashmap_size=10, base_resolution=4, init_scale=1.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: threads only add contention (tens of times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _geo(n: int = 16, views: int = 3) -> ConeBeamGeometry:
    return ConeBeamGeometry.default(n_voxel=n, n_views=views)


def _field(geo: ConeBeamGeometry, **changes) -> HashGridField:
    return HashGridField(geo, FieldConfig(encoding=TINY, **changes))


def test_contract_shapes_and_gradients():
    geo = _geo()
    field = _field(geo)
    assert isinstance(field, Representation)
    volume = field.to_volume(geo)
    assert volume.shape == geo.volume_shape and volume.dtype == torch.float32
    values = volume.detach()
    assert 0 < float(values.min()) and float(values.max()) < field.config.attenuation_bound
    sino = field.render_projections(geo, [2, 0])
    assert sino.shape == (2, *geo.projection_shape[1:])
    sino.sum().backward()
    groups = field.param_groups()
    assert [g["name"] for g in groups] == ["encoding", "network"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for g in groups for p in g["params"])
    n_params = sum(p.numel() for p in field.parameters())
    assert n_params == sum(p.numel() for g in groups for p in g["params"])


def test_query_box_is_a_crop_of_to_volume():
    geo = _geo()
    field = _field(geo)
    with torch.no_grad():
        volume = field.to_volume(geo)
        crop = field.query_box(geo, (1, 2, 3), (4, 5, 6))
    torch.testing.assert_close(crop, volume[1:5, 2:7, 3:9])
    with pytest.raises(ValueError, match="not inside"):
        field.query_box(geo, (0, 0, 12), (4, 4, 5))


def test_voxel_volume_projected_matches_the_voxel_renderer():
    geo = _geo()
    field = _field(geo)
    with torch.no_grad():
        torch.testing.assert_close(
            field.render_projections(geo, [1]), project(field.to_volume(geo), geo, [1])
        )


def test_coarse_to_fine_phase_renders_a_coarser_grid_then_the_grid():
    geo = _geo()
    field = _field(geo, coarse_iterations=3, coarse_factor=2)
    coarse = geo.with_volume((8, 8, 8))
    # TINY has levels of 4, 8 and 16 cells: the 16-cell level is finer than the 8^3 grid.
    assert field.coarse_mask.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        masked = field.render_projections(geo, [0])
        torch.testing.assert_close(masked, project(field.to_volume(coarse), coarse, [0]))
        table = field.encoding.table
        table[TINY.offsets()[2] :] += 5.0  # only the masked level changes
        torch.testing.assert_close(field.render_projections(geo, [0]), masked)
        field.after_step(3, None)
        assert int(field.state_dict()["steps"]) == 3
        torch.testing.assert_close(
            field.render_projections(geo, [0]), project(field.to_volume(geo), geo, [0])
        )


def test_ray_renderer_agrees_with_voxel_renderer_on_a_smooth_field():
    """Both integrate the same field: on a smooth field they agree to a few percent."""
    geo = _geo(24, 2)
    smooth = HashGridConfig(n_levels=2, log2_hashmap_size=12, base_resolution=2, init_scale=1.0)
    voxel = HashGridField(geo, FieldConfig(encoding=smooth))
    rays = HashGridField(geo, FieldConfig(encoding=smooth, rendering="rays", n_samples=48))
    rays.load_state_dict(voxel.state_dict())
    rays.eval()
    with torch.no_grad():
        a = voxel.render_projections(geo, [0, 1])
        b = rays.render_projections(geo, [0, 1])
    assert float((a - b).abs().mean() / a.abs().mean()) < 0.03
    # Rays that miss the box integrate to exactly zero.
    assert float(a[:, :, 0].abs().max()) == 0.0 and float(b[:, :, 0].abs().max()) == 0.0


def test_ray_renderer_jitters_only_in_training_mode():
    geo = _geo(12, 1)
    field = _field(geo, rendering="rays", n_samples=8)
    with torch.no_grad():
        field.eval()
        assert torch.equal(field.render_projections(geo, [0]), field.render_projections(geo, [0]))
        field.train()
        assert not torch.equal(
            field.render_projections(geo, [0]), field.render_projections(geo, [0])
        )


def test_density_is_zero_outside_the_box_and_mapped_to_world():
    geo = _geo()
    field = _field(geo)
    with torch.no_grad():
        outside = field.density(torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, -129.0]]))
        assert outside.tolist() == [0.0, 0.0]
        # The voxel (z=3, y=5, x=7) centre in world (x, y, z) mm gives the volume's value there.
        centre = torch.tensor(
            [[geo.voxel_centres(2)[7], geo.voxel_centres(1)[5], geo.voxel_centres(0)[3]]]
        )
        torch.testing.assert_close(field.density(centre.float())[0], field.to_volume(geo)[3, 5, 7])


def test_chunked_checkpointed_evaluation_equals_one_chunk():
    geo = _geo()
    whole = _field(geo)
    chunked = _field(geo, chunk_size=1000)
    chunked.load_state_dict(whole.state_dict())
    a, b = whole.to_volume(geo), chunked.to_volume(geo)
    torch.testing.assert_close(a, b)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    for p, q in zip(whole.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


def test_skip_layer_equals_a_concatenation():
    geo = _geo()
    field = _field(geo, n_layers=4, skips=(2,))
    points = torch.rand(50, 3)
    encoded = field.encoding(points)
    x = encoded
    for i, layer in enumerate(field.layers):
        x = layer(torch.cat([encoded, x], dim=1) if i == 2 else x)
        x = torch.sigmoid(x) if i == 3 else torch.nn.functional.leaky_relu(x)
    expected = x[:, 0] * field.config.attenuation_bound
    torch.testing.assert_close(field._density_unit(points), expected)


def test_torch_and_compiled_backends_agree():
    geo = _geo()
    a = _field(geo, backend="torch")
    b = _field(geo, backend="auto")
    torch.testing.assert_close(a.to_volume(geo), b.to_volume(geo))


def test_same_seed_same_field_and_state_dict_round_trip():
    geo = _geo()
    a, b = _field(geo, seed=3), _field(geo, seed=3)
    torch.testing.assert_close(a.to_volume(geo), b.to_volume(geo))
    c = _field(geo, seed=4)
    assert not torch.equal(a.to_volume(geo), c.to_volume(geo))
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.to_volume(geo), c.to_volume(geo))


def test_initial_attenuation_makes_a_constant_field():
    geo = _geo()
    field = _field(geo, attenuation_bound=2.0, initial_attenuation=0.3)
    with torch.no_grad():
        volume = field.to_volume(geo)
    torch.testing.assert_close(volume, torch.full_like(volume, 0.3))
    volume = field.to_volume(geo)
    volume.sum().backward()
    assert field.layers[-1].weight.grad.abs().sum() > 0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="rendering"):
        FieldConfig(rendering="splat")
    with pytest.raises(ValueError, match="skips"):
        FieldConfig(n_layers=3, skips=(3,))
    with pytest.raises(ValueError, match="attenuation_bound"):
        FieldConfig(attenuation_bound=0.0)
    with pytest.raises(ValueError, match="initial_attenuation"):
        FieldConfig(attenuation_bound=1.0, initial_attenuation=1.0)
    with pytest.raises(TypeError, match="geo"):
        HashGridField("geo", FieldConfig())


@pytest.mark.skipif(not tcnn_available(), reason="tinycudann needs CUDA; not testable on this CPU")
def test_tcnn_backend_runs_on_cuda():
    geo = _geo()
    field = _field(geo, backend="tcnn").cuda()
    assert field.to_volume(geo).shape == geo.volume_shape


@pytest.mark.skipif(tcnn_available(), reason="checks the error raised without tinycudann")
def test_tcnn_backend_without_tinycudann_names_the_remedy():
    with pytest.raises(ImportError, match="tiny-cuda-nn"):
        _field(_geo(), backend="tcnn")
