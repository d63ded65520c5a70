"""Curation's random plan, config validation and reconstructor registry (no volumes needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from data_curation import CurationConfig, Reconstructor, available, get_reconstructor, register
from data_curation.plan import apportion, biplanar_views, plan_volume, select_views, volume_seed
from data_curation.reconstructors import _REGISTRY
from nr.geometry import ConeBeamGeometry


def test_uniform_subsets_are_equispaced_from_a_random_start():
    starts = set()
    for seed in range(20):
        ids = select_views("uniform", 25, 300, np.random.default_rng(seed))
        assert len(ids) == 25 and np.all(np.diff(ids) == 12)
        starts.add(int(ids[0]))
    assert len(starts) > 3


def test_random_subsets_are_distinct_sorted_and_irregular():
    ids = select_views("random", 50, 300, np.random.default_rng(0))
    assert len(set(ids.tolist())) == 50 and np.all(np.diff(ids) > 0)
    assert ids.min() >= 0 and ids.max() < 300 and len(set(np.diff(ids).tolist())) > 5
    with pytest.raises(ValueError, match="n: expected"):
        select_views("random", 301, 300, np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind"):
        select_views("clustered", 5, 300, np.random.default_rng(0))


def test_biplanar_views_are_nearest_to_0_and_90_degrees():
    angles = np.radians(np.arange(0, 360, 10.0))
    ids = np.array([2, 8, 17, 35])  # 20, 80, 170, 350 degrees
    assert biplanar_views(angles, ids).tolist() == [35, 8]


def test_apportion_follows_the_mix():
    assert apportion((1.0, 1.0), 6) == [3, 3]
    assert apportion((1.0, 1.0), 5) == [3, 2]
    assert apportion((2.0, 1.0), 6) == [4, 2]
    assert apportion((1.0, 0.0), 4) == [4, 0]


def test_plan_mixes_representations_and_underfits():
    config = CurationConfig(representations=("a", "b"), mix=(1, 1))
    jobs = plan_volume(config, 7, {"a": 1000, "b": 30000})
    assert len(jobs) == 3 * 2
    assert sorted(j.representation for j in jobs) == ["a"] * 3 + ["b"] * 3
    for job in jobs:
        assert 0.25 <= job.fraction <= 0.5
        assert job.iterations == round(job.fraction * job.standard_iterations)
    assert plan_volume(config, 7, {"a": 1000, "b": 30000}) == jobs
    assert plan_volume(config, 8, {"a": 1000, "b": 30000}) != jobs


def test_volume_seed_depends_on_seed_and_content():
    assert volume_seed(0, "ab") == volume_seed(0, "ab")
    assert len({volume_seed(0, "ab"), volume_seed(1, "ab"), volume_seed(0, "ac")}) == 3
    assert 0 <= volume_seed(0, "ab") < 2**63


@pytest.mark.parametrize(
    "change, match",
    [
        ({"views": (25, 400)}, "dense_views"),
        ({"subsets": ("uniform", "arc")}, "subsets"),
        ({"mix": (1.0,)}, "mix"),
        ({"mix": (0.0, 0.0)}, "mix"),
        ({"iters_fraction": (0.5, 0.25)}, "iters_fraction"),
        ({"axes": ("z", "w")}, "axes"),
        ({"slice_dtype": "int8"}, "slice_dtype"),
        ({"standard_iterations": {"sart": 0}}, "standard_iterations"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_rejects_bad_values(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CurationConfig(), **change)


def test_registry():
    assert {"sart", "hashgrid", "gaussians"} <= set(available())
    sart = get_reconstructor("sart")
    geo = ConeBeamGeometry.default(8, 6)
    volume = sart(torch.zeros(geo.projection_shape), geo, 2, 0)
    assert volume.shape == (8, 8, 8) and volume.dtype == torch.float32
    with pytest.raises(ValueError, match="iterations"):
        sart(torch.zeros(geo.projection_shape), geo, 0, 0)
    with pytest.raises(ValueError, match="already registered"):
        register(Reconstructor("hashgrid", lambda *a: None, 10))
    with pytest.raises(ValueError, match="representation: expected one of"):
        get_reconstructor("nope")
    register(Reconstructor("wrong_shape", lambda p, g, i, s: torch.zeros(2, 2, 2), 10))
    try:
        with pytest.raises(ValueError, match="returned shape"):
            get_reconstructor("wrong_shape")(torch.zeros(geo.projection_shape), geo, 1, 0)
    finally:
        _REGISTRY.pop("wrong_shape")


@pytest.mark.parametrize("name", ["hashgrid", "gaussians"])
def test_neural_reconstructors_are_seeded(name, short_gaussian_warm_start):
    try:
        reconstructor = get_reconstructor(name)
    except ImportError as error:
        pytest.skip(f"{name} not available: {error}")
    assert reconstructor.standard_iterations > 100
    geo = ConeBeamGeometry.default(16, 6)
    projections = torch.rand(geo.projection_shape) * 10
    first = reconstructor(projections, geo, 1, 1)
    assert first.shape == (16, 16, 16) and torch.isfinite(first).all()
    assert torch.equal(first, reconstructor(projections, geo, 1, 1))
    assert not torch.equal(first, reconstructor(projections, geo, 1, 2))
