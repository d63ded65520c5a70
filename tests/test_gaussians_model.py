"""The Gaussian model, its initialisation, density control and training (nr.train, nr.recon)."""

import ast
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from nr.gaussians.density import DensityControl
from nr.gaussians.init import (
    InitConfig,
    initial_points,
    nearest_neighbour_scales,
    sample_voxels,
    voxel_detail,
)
from nr.gaussians.model import GaussianConfig, GaussianModel
from nr.geometry import ConeBeamGeometry
from nr.ops.projector import project as project_volume
from nr.recon import GaussianReconConfig, reconstruct_gaussians
from nr.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_geometry(n: int = 16, views: int = 6, mode: str = "cone") -> ConeBeamGeometry:
    return ConeBeamGeometry(
        n_voxel=(n, n, n),
        s_voxel=(64.0,) * 3,
        n_detector=(n + 4, n + 8),
        s_detector=(1.5 * 64 * (n + 4) / n, 1.5 * 64 * (n + 8) / n),
        angles=np.linspace(0, 2 * np.pi, views, endpoint=False),
        dso=300.0,
        dsd=450.0,
        mode=mode,
    )


def blob_volume(n: int = 16) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n),) * 3, indexing="ij")
    inner = ((x / 0.6) ** 2 + (y / 0.45) ** 2 + (z / 0.5) ** 2) < 1
    core = ((x - 0.15) ** 2 + y**2 + (z + 0.1) ** 2) < 0.2**2
    return 0.5 * inner.float() + 0.4 * core.float()


def tiny_model(geo, count=40, seed=0, control=None, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(count, 3, generator=gen) - 0.5) * 40.0
    densities = torch.rand(count, generator=gen) * 0.3 + 0.05
    scales = torch.rand(count, 3, generator=gen) * 3.0 + 2.0
    quats = torch.randn(count, 4, generator=gen)
    config = GaussianConfig(density_control=control, **kwargs)
    return GaussianModel(geo, means, densities, scales, config, quats)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_projections_agree_with_the_projector_of_the_voxelised_model(mode):
    """Same geometry conventions as nr.ops: Gaussians wide against the voxels."""
    geo = tiny_geometry(32, views=3, mode=mode)
    model = tiny_model(geo, count=12)
    with torch.no_grad():
        rendered = model.render_projections(geo, [0, 1, 2])
        reference = project_volume(model.to_volume(geo), geo)
    error = (rendered - reference).abs().max() / reference.abs().max()
    assert error < 0.05


def test_voxel_rendering_projects_the_model_volume_and_feeds_densification():
    """rendering="voxel": the projector of to_volume; the densification statistic is the
    position gradient (in half-box units) of every term on the render's volume."""
    geo = tiny_geometry(views=4)
    control = DensityControl(start=0, until=10, every=1)
    model = tiny_model(geo, count=30, control=control, rendering="voxel")
    optimizer = torch.optim.Adam(model.param_groups())
    twin = copy.deepcopy(model)
    expected = twin.render_projections(geo, [0, 2])
    (expected.square().sum() + 100.0 * twin.to_volume(geo).square().sum()).backward()
    rendered = model.render_projections(geo, [0, 2])
    torch.testing.assert_close(rendered, project_volume(model.to_volume(geo), geo, [0, 2]))
    (rendered.square().sum() + 100.0 * model.to_volume(geo).square().sum()).backward()
    model.after_backward(0, optimizer)
    norms = twin.raw_means.grad.norm(dim=-1) * 32.0
    assert (norms > 0).sum() >= 25
    torch.testing.assert_close(model.grad_sum, norms)
    torch.testing.assert_close(model.grad_count, (norms > 0).float())
    model.render_projections(geo, [1]).sum().backward()
    model.after_backward(10, optimizer)  # past `until`: nothing is added
    torch.testing.assert_close(model.grad_sum, norms)


def test_a_training_step_cuts_its_boxes_from_the_rendered_volume():
    """Within a training step of voxel rendering, query_box cuts from the render's volume:
    the same values and gradients as a second voxelization (taken here through a copy of the
    geometry), and after the step (after_backward) a fresh voxelization of the new model."""
    geo = tiny_geometry(views=4)
    model = tiny_model(geo, count=30, rendering="voxel")
    twin = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.param_groups(), lr=0.1)

    def loss(m, box_geo):
        crop = m.query_box(box_geo, (2, 3, 1), (9, 7, 12))
        return m.render_projections(geo, [0, 3]).square().sum() + 50.0 * crop.abs().sum()

    loss(model, geo).backward()
    loss(twin, copy.deepcopy(geo)).backward()
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    model.after_backward(0, optimizer)
    optimizer.step()
    with torch.no_grad():
        fresh = model.query_box(copy.deepcopy(geo), (0, 0, 0), geo.volume_shape)
        torch.testing.assert_close(model.to_volume(geo), fresh)
        assert (fresh - twin.to_volume(geo)).abs().max() > 1e-3


def test_volume_and_projections_carry_the_same_mass():
    """The voxelizer's cutoff keeps the mass share of the rasterizer's (R2-Gaussian's 3 sigma
    in both differ by 1.5 % for this Gaussian of 1.5 voxels)."""
    geo = tiny_geometry(32, views=4)
    model = GaussianModel(
        geo,
        torch.tensor([[6.0, -4.0, 3.0]]),
        torch.tensor([0.3]),
        torch.full((1, 3), 3.0),
        GaussianConfig(density_control=None),
    )
    assert model.volume_cutoff == pytest.approx(3.334, abs=1e-3)
    with torch.no_grad():
        rendered = model.render_projections(geo, range(4))
        reference = project_volume(model.to_volume(geo), geo)
    assert abs(float(rendered.sum() / reference.sum()) - 1) < 0.01
    assert float((rendered - reference).norm() / reference.norm()) < 0.025


def test_query_box_is_a_crop_of_to_volume_and_checks_its_box():
    geo = tiny_geometry()
    model = tiny_model(geo)
    volume = model.to_volume(geo)
    crop = model.query_box(geo, (3, 5, 2), (8, 6, 10))
    torch.testing.assert_close(crop, volume[3:11, 5:11, 2:12], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside the grid"):
        model.query_box(geo, (10, 0, 0), (8, 8, 8))


def test_initial_points_follow_r2_gaussian():
    geo = tiny_geometry()
    volume = blob_volume()
    config = InitConfig(n_points=200, threshold=0.3, density_rescale=0.15)
    means, densities, scales = initial_points(geo, config, volume, unit=1.0)
    assert means.shape == (200, 3) and len(torch.unique(means, dim=0)) == 200
    index = np.round((means.numpy() - geo.voxel_origin_xyz()) / geo.voxel_size_xyz()).astype(int)
    values = volume.numpy()[index[:, 2], index[:, 1], index[:, 0]]
    assert (values > 0.3).all()
    np.testing.assert_allclose(densities.numpy(), 0.15 * values, rtol=1e-6)
    np.testing.assert_allclose(
        scales[:, 0].numpy(), nearest_neighbour_scales(means.numpy()), rtol=1e-6
    )
    distances = np.linalg.norm(means.numpy()[:, None] - means.numpy()[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    brute = np.sqrt(np.mean(np.sort(distances, axis=1)[:, :3] ** 2, axis=1))
    np.testing.assert_allclose(scales[:, 0].numpy(), brute, rtol=1e-5)
    random_means, _, _ = initial_points(geo, InitConfig(mode="random", n_points=100))
    assert (random_means.abs() <= 32.0).all()
    with pytest.raises(ValueError, match="threshold"):
        initial_points(geo, config, volume * 0, unit=1.0)
    with pytest.raises(ValueError, match="volume"):
        initial_points(geo, config)


def test_weighted_voxel_sampling_follows_the_weights():
    rng = np.random.default_rng(0)
    candidates = np.array([10, 20, 30, 40])
    weights = np.array([1.0, 2.0, 7.0, 0.0])
    draws = [int(sample_voxels(candidates, 1, weights, rng)[0]) for _ in range(20_000)]
    frequencies = [draws.count(c) / len(draws) for c in candidates]
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.7, 0.0], atol=0.015)
    pairs = sample_voxels(candidates, 3, weights, rng)
    assert sorted(pairs.tolist()) == [10, 20, 30]  # weight 0 comes last
    np.testing.assert_array_equal(sample_voxels(candidates, 9, weights, rng), candidates)


def test_detail_sampling_puts_more_gaussians_on_edges():
    geo = tiny_geometry()
    volume = blob_volume()
    detail = voxel_detail(volume.double().numpy())

    def chosen_detail(floor):
        config = InitConfig(n_points=50, threshold=0.3, detail_floor=floor)
        means, densities, _ = initial_points(geo, config, volume, unit=1.0)
        index = np.round((means.numpy() - geo.voxel_origin_xyz()) / geo.voxel_size_xyz())
        z, y, x = index.astype(int)[:, ::-1].T
        assert len(np.unique(np.stack([z, y, x]), axis=1).T) == 50
        assert (volume.numpy()[z, y, x] > 0.3).all()
        np.testing.assert_allclose(densities.numpy(), 0.15 * volume.numpy()[z, y, x], rtol=1e-6)
        return detail[z, y, x].mean()

    uniform, weighted = chosen_detail(None), chosen_detail(0.1)
    assert weighted > 1.15 * uniform  # 224 candidates, 50 chosen
    assert chosen_detail(0.1) == weighted  # seeded
    with pytest.raises(ValueError, match="detail_floor"):
        InitConfig(detail_floor=-1.0)


def test_density_control_edits_the_optimizer_state_consistently():
    geo = tiny_geometry()
    control = DensityControl(
        start=0, until=100, every=1, grad_threshold=1e-3, clone_scale=0.06, max_gaussians=1000
    )
    model = tiny_model(geo, count=40, control=control)
    model.raw_densities.data[:3] = model.density_to_raw(torch.full((3,), 1e-7))  # to prune
    params = list(model.parameters())
    optimizer = torch.optim.Adam(model.param_groups(), eps=1e-15)
    model.render_projections(geo, [0, 1]).square().sum().backward()
    optimizer.step()
    model.grad_sum = torch.linspace(0, 2e-3, 40)  # the upper half is densified
    model.grad_count = torch.ones(40)
    before = {
        name: (p.detach().clone(), optimizer.state[p]["exp_avg"].clone())
        for name, p in model.named_parameters()
    }
    large = model.scales.detach().amax(-1) > 0.06 * 64
    selected = model.grad_sum >= 1e-3
    clone, split = selected & ~large, selected & large
    density = model.densities.detach().clone()
    assert clone.any() and split.any()

    control.densify_and_prune(model, optimizer)

    held = [group["params"][0] for group in optimizer.param_groups]
    assert [p is q for p, q in zip(model.parameters(), held, strict=True)] == [True] * 4
    assert not any(p is q for p, q in zip(model.parameters(), params, strict=True))
    assert len(optimizer.state) == 4
    n_keep = 40 - 3 - int(split.sum())
    expected = n_keep + int(clone.sum()) + 2 * int(split.sum())
    assert model.count == expected and model.grad_sum.shape == (expected,)
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        assert state["exp_avg"].shape == p.shape == state["exp_avg_sq"].shape
        kept = ~split
        kept[:3] = False
        old_value, old_moment = before[name]
        if name != "raw_densities":
            torch.testing.assert_close(p.detach()[:n_keep], old_value[kept])
        torch.testing.assert_close(state["exp_avg"][:n_keep], old_moment[kept])
        assert (state["exp_avg"][n_keep:] == 0).all() and (state["exp_avg_sq"][n_keep:] == 0).all()
    kept_density = density[~split][3:]
    kept_clone = clone[~split][3:]
    new_density = model.densities.detach()
    torch.testing.assert_close(new_density[:n_keep][kept_clone], kept_density[kept_clone] / 2)
    n_clone = int(clone.sum())
    torch.testing.assert_close(new_density[n_keep : n_keep + n_clone], density[clone] / 2)
    torch.testing.assert_close(new_density[n_keep + n_clone :], density[split].repeat(2) / 2)
    torch.testing.assert_close(
        model.scales.detach()[n_keep + n_clone :],
        before_scales(before, model)[split].repeat(2, 1) / 1.6,
    )
    model.render_projections(geo, [0]).sum().backward()
    optimizer.step()  # the edited state is usable


def before_scales(before, model):
    s_lo, s_hi = model.scale_bounds
    return s_lo + (s_hi - s_lo) * torch.sigmoid(before["raw_scales"][0])


def test_density_control_respects_the_cap_and_prunes_outside_the_box():
    geo = tiny_geometry()
    control = DensityControl(start=0, until=100, every=1, grad_threshold=1e-3, max_gaussians=45)
    model = tiny_model(geo, count=40, control=control)
    model.raw_means.data[0] = torch.tensor([100.0, 0.0, 0.0])
    optimizer = torch.optim.Adam(model.param_groups())
    model.grad_sum, model.grad_count = torch.ones(40), torch.ones(40)
    control.densify_and_prune(model, optimizer)
    assert 40 <= model.count + 1 <= 45 and (model.means.abs() <= 32).all()
    with pytest.raises(ValueError, match="optimizer"):
        control.densify_and_prune(model, torch.optim.Adam(model.parameters()))


def test_state_dict_round_trip_across_a_change_of_size():
    geo = tiny_geometry()
    big, small = tiny_model(geo, count=50, seed=1), tiny_model(geo, count=30)
    small.load_state_dict(big.state_dict())
    assert small.count == 50
    torch.testing.assert_close(small.render_projections(geo, [1]), big.render_projections(geo, [1]))


class CrashOnce:
    """A hook that raises once at `at`, as a killed run would stop there."""

    def __init__(self, at):
        self.every, self.start, self.loss_every, self.at, self.fired = 1, 1, 1, at, False

    def __call__(self, trainer, iteration):
        if iteration == self.at and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.parametrize("rendering", ["rasterize", "voxel"])
def test_training_resumes_exactly_while_the_number_of_gaussians_changes(tmp_path, rendering):
    geo = tiny_geometry(views=4)
    projections = project_volume(blob_volume(), geo)
    control = DensityControl(start=1, until=8, every=2, grad_threshold=0.0, max_gaussians=120)
    config = GaussianReconConfig(
        init=InitConfig(n_points=40, threshold=0.2),
        model=GaussianConfig(density_control=control, rendering=rendering),
        train=TrainConfig(
            iterations=6, views_per_iteration=2, checkpoint_every=3, progress=False, eval_every=0
        ),
    )
    reference, history = reconstruct_gaussians(projections, geo, config, out_dir=tmp_path / "a")
    assert history["gaussians"] > 40
    hook = CrashOnce(at=5)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_gaussians(projections, geo, config, out_dir=tmp_path / "b", hooks=[hook])
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 3
    resumed, _ = reconstruct_gaussians(
        projections, geo, config, out_dir=tmp_path / "b", hooks=[hook]
    )
    torch.testing.assert_close(resumed, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rendering", ["rasterize", "voxel"])
def test_training_lowers_the_loss_and_trains_every_parameter(rendering):
    geo = tiny_geometry(views=8)
    volume = blob_volume()
    projections = project_volume(volume, geo)
    means, densities, scales = initial_points(geo, InitConfig(n_points=150, threshold=0.2), volume)
    config = GaussianConfig(rendering=rendering)
    model = GaussianModel(geo, means, densities * 0.5, scales, config)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(
        model,
        projections,
        geo,
        TrainConfig(iterations=30, progress=False, eval_every=0, lambda_tv=0.05, tv_crop=8),
    )
    history = trainer.run()
    losses = history["train"]["projection"]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), start[name]), name


def test_bad_inputs_raise_clear_errors():
    geo = tiny_geometry()
    with pytest.raises(ValueError, match="scales"):
        GaussianModel(geo, torch.zeros(2, 3), torch.ones(2), -torch.ones(2, 3))
    with pytest.raises(ValueError, match="densities"):
        GaussianModel(geo, torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="scale_min"):
        GaussianConfig(scale_min=0.6)
    with pytest.raises(ValueError, match="rendering"):
        GaussianConfig(rendering="splat")
    with pytest.raises(ValueError, match="split_count"):
        DensityControl(split_count=1)
    with pytest.raises(ValueError, match="mode"):
        InitConfig(mode="fdk")
    with pytest.raises(ValueError, match="projections"):
        reconstruct_gaussians(torch.zeros(3, 4, 4), geo)


LOWER_LAYERS = (
    "nr.train",
    "nr.recon",
    "nr.guard",
    "nr.priors",
    "slicefixer",
    "data_curation",
    "pipelines",
)


def test_representations_do_not_import_lower_layers():
    """DESIGN.md's layers: nr.fields and nr.gaussians (layer 3) import nothing below them."""
    offenders = []
    for package in ("fields", "gaussians"):
        for path in sorted((ROOT / "nr" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    module = node.module or ""
                    names = [module] + [f"{module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                offenders += [
                    f"{path.relative_to(ROOT)}: {name}"
                    for name in names
                    if any(name == m or name.startswith(m + ".") for m in LOWER_LAYERS)
                ]
    assert offenders == []


def test_default_recipe_is_sized_to_the_grid():
    base = GaussianReconConfig.default()
    # Up to 64^3 voxels: the base recipe, whatever the shape.
    for shape in [(32, 32, 32), (64, 64, 64), (16, 64, 128)]:
        assert GaussianReconConfig.default(shape=shape) == base
    assert (base.init.n_points, base.train.iterations, base.train.views_per_iteration) == (
        20_000,
        500,
        4,
    )
    large = GaussianReconConfig.default(shape=(128, 128, 128))
    assert large.init.n_points == 128**3 // 20
    assert large.model.density_control.max_gaussians == 2 * large.init.n_points
    assert (large.train.iterations, large.train.views_per_iteration) == (125, 16)
    # The loop's rates: R2-Gaussian's start doubled and held (the fit's stay 3x R2-Gaussian's).
    assert large.warm_start == dataclasses.replace(
        base.warm_start, crop_sampling="attenuation", lr_factor=1.5
    )
    for name in ("lr_position", "lr_density", "lr_scale", "lr_rotation"):
        rate = getattr(base.model, name)
        assert getattr(large.model, name) == getattr(large.model, f"{name}_final") == 2 * rate
        assert getattr(base.model, f"{name}_final") == pytest.approx(rate / 10)
    assert base.warm_start.crop_sampling == "uniform"
    assert (base.init.detail_floor, large.init.detail_floor) == (None, 0.1)
    assert large.model.density_control.until == 62
    # TV: R2-Gaussian's (0.05 on 32^3 crops) up to 64^3; above, on the whole grid with a
    # weight falling with the views.
    assert (base.train.lambda_tv, base.train.tv_crop) == (0.05, 32)
    assert GaussianReconConfig.default(shape=(64,) * 3, views=75) == base
    assert (large.train.lambda_tv, large.train.tv_crop) == (0.05, 128)
    weights = [
        GaussianReconConfig.default(shape=(96, 128, 112), views=v).train.lambda_tv
        for v in (10, 25, 50, 75)
    ]
    assert weights == pytest.approx([0.05, 0.05, 0.025, 1.25 / 75])
    assert GaussianReconConfig.default(shape=(96, 128, 112)).train.tv_crop == 128
    # An explicit iteration count wins; the densification schedule follows it.
    assert GaussianReconConfig.default(100, (128, 128, 128)).model.density_control.until == 50
    for bad in [(128, 128), (0, 64, 64)]:
        with pytest.raises(ValueError, match="shape"):
            GaussianReconConfig.default(shape=bad)
    with pytest.raises(ValueError, match="views"):
        GaussianReconConfig.default(shape=(128,) * 3, views=0)
