"""SART, OS-SART, CGLS and ASD-POCS on a tiny sparse-view scan."""

import importlib

import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.metrics import psnr3d
from nr.ops.fdk import fdk
from nr.ops.iterative import (
    ASDPOCSConfig,
    CGLSConfig,
    SARTConfig,
    asd_pocs,
    cgls,
    minimize_tv,
    os_sart,
    sart,
    tv_gradient,
)
from nr.ops.projector import project

iterative = importlib.import_module("nr.ops.iterative")

N = 16


@pytest.fixture(scope="module")
def scan():
    """A 16^3 piecewise-constant phantom (two boxes, max 1) seen from 8 views."""
    geo = ConeBeamGeometry.default(n_voxel=N, n_views=8, n_detector=24)
    truth = torch.zeros(geo.volume_shape, dtype=torch.float64)
    truth[4:12, 3:13, 4:12] = 0.5
    truth[6:10, 6:9, 5:8] = 1.0
    return geo, truth, project(truth, geo)


def _residuals(geo, projections):
    norms = []

    def record(iteration, volume):
        norms.append(float(torch.linalg.vector_norm(project(volume, geo) - projections)))

    return norms, record


def test_cgls_residual_decreases_monotonically(scan):
    geo, _, projections = scan
    norms, record = _residuals(geo, projections)
    cgls(projections, geo, CGLSConfig(n_iter=8), callback=record, progress=False)
    assert len(norms) == 8
    assert all(b < a for a, b in zip(norms, norms[1:], strict=False))
    assert norms[-1] < 0.1 * float(torch.linalg.vector_norm(projections))


def test_sirt_weighted_residual_decreases_monotonically(scan):
    """OS-SART with one block of all views is SIRT: preconditioned projected gradient descent."""
    geo, _, projections = scan
    lengths = project(torch.ones_like(scan[1]), geo)
    w = torch.where(lengths > geo.d_voxel.min() / 2, 1 / lengths, 0.0)
    norms = []

    def record(iteration, volume):
        norms.append(float((w * (project(volume, geo) - projections) ** 2).sum()))

    config = SARTConfig(n_iter=6, block_size=geo.n_views)
    os_sart(projections, geo, config, callback=record, progress=False)
    assert all(b < a for a, b in zip(norms, norms[1:], strict=False))


@pytest.mark.parametrize(
    "solver, config",
    [
        (sart, SARTConfig(n_iter=4)),
        (os_sart, SARTConfig(n_iter=6, block_size=4)),
        (cgls, CGLSConfig(n_iter=6)),
        (asd_pocs, ASDPOCSConfig(n_iter=4, tv_iter=10)),
    ],
)
def test_iterative_beats_fdk_at_few_views(scan, solver, config):
    geo, truth, projections = scan
    baseline = psnr3d(fdk(projections, geo), truth).item()
    norms, record = _residuals(geo, projections)
    volume = solver(projections, geo, config, callback=record, progress=False)
    assert volume.shape == truth.shape and volume.dtype == truth.dtype
    assert norms[-1] < norms[0]
    assert psnr3d(volume, truth).item() > baseline + 2.0
    if solver in (sart, os_sart):
        assert volume.min() >= 0


def test_init_view_ids_and_v_cache(scan, monkeypatch):
    geo, truth, projections = scan
    exact = cgls(projections, geo, init=truth, progress=False)
    torch.testing.assert_close(exact, truth)
    ids = [0, 2, 4, 6]
    sub = os_sart(projections[ids], geo, SARTConfig(2, 2), view_ids=ids, progress=False)
    same = os_sart(projections[ids], geo.subset(ids), SARTConfig(2, 2), progress=False)
    torch.testing.assert_close(sub, same)
    monkeypatch.setattr(iterative, "V_CACHE_ELEMENTS", 0)
    recomputed = os_sart(projections[ids], geo.subset(ids), SARTConfig(2, 2), progress=False)
    torch.testing.assert_close(recomputed, same)


def test_tv_gradient_is_the_gradient_of_total_variation():
    volume = torch.rand(5, 6, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_tv(volume).sum(), volume)
    torch.testing.assert_close(tv_gradient(volume.detach()), grad, rtol=1e-5, atol=1e-6)
    smoothed = minimize_tv(volume.detach(), 0.05, 5)
    assert _tv(smoothed).sum() < _tv(volume).sum() - 0.1


def _tv(volume):
    """Isotropic TV per voxel with backward differences (0 at the first index)."""
    dz = torch.diff(volume, dim=0, prepend=volume[:1])
    dy = torch.diff(volume, dim=1, prepend=volume[:, :1])
    dx = torch.diff(volume, dim=2, prepend=volume[:, :, :1])
    # The tiny constant keeps the gradient finite at voxel (0, 0, 0), where all differences are 0.
    return torch.sqrt(dz**2 + dy**2 + dx**2 + 1e-30)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SARTConfig(n_iter=0), "n_iter"),
        (lambda: SARTConfig(lmbda=-1.0), "lmbda"),
        (lambda: CGLSConfig(n_iter=2.5), "n_iter"),
        (lambda: ASDPOCSConfig(alpha=0.0), "alpha"),
        (lambda: ASDPOCSConfig(max_l2_err=float("inf")), "max_l2_err"),
    ],
)
def test_bad_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_raise(scan):
    geo, truth, projections = scan
    with pytest.raises(ValueError, match="block_size"):
        sart(projections, geo, SARTConfig(block_size=2), progress=False)
    with pytest.raises(TypeError, match="config"):
        cgls(projections, geo, SARTConfig(), progress=False)
    with pytest.raises(ValueError, match="projections"):
        sart(projections[:3], geo, progress=False)
    with pytest.raises(ValueError, match="init"):
        cgls(projections, geo, init=truth[:4], progress=False)
    with pytest.raises(ValueError, match="view_ids"):
        os_sart(projections, geo, view_ids=list(range(1, 9)), progress=False)
    with pytest.raises(TypeError, match="geo"):
        asd_pocs(projections, geo.to_dict(), progress=False)
