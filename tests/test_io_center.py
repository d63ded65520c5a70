"""Rotation-axis (centre-of-rotation) estimation on simulated scans with a known offset."""

import json
import math

import numpy as np
import pytest
import torch

from nr.geometry import ConeBeamGeometry
from nr.io import (
    CenterSearch,
    Scan,
    estimate_center,
    resolve_center,
    with_center_offset,
    write_scan,
)
from nr.metrics import psnr3d
from nr.ops.fdk import fdk
from nr.ops.projector import project
from nr.phantoms import shepp_logan_3d, voxelise
from pipelines import recon

OFFSET = 3.3  # pixels, TIGRE's sign: the axis projects 3.3 columns left of the centre


def _scan(mode: str, n_views: int, total_deg: float, offset: float = OFFSET):
    """(projections simulated with the axis `offset` pixels off, the same geometry with
    offset 0, the phantom volume)."""
    angles = np.deg2rad(np.arange(n_views) * total_deg / n_views)
    if mode == "parallel":
        geo = ConeBeamGeometry(
            mode="parallel", dso=200.0, dsd=400.0, n_voxel=(12, 48, 48), d_voxel=(1.0, 1.0, 1.0),
            n_detector=(12, 64), d_detector=(1.0, 1.0), angles=angles,
        )  # fmt: skip
    else:  # fan beam: a cone with one detector row, magnification 1.5
        geo = ConeBeamGeometry(
            mode="cone", dso=100.0, dsd=150.0, n_voxel=(1, 48, 48), d_voxel=(1.0, 1.0, 1.0),
            n_detector=(1, 96), d_detector=(1.0, 1.5), angles=angles,
        )  # fmt: skip
    volume = voxelise(shepp_logan_3d(geo), geo, supersample=2)
    shifted = with_center_offset(geo, offset)
    return project(volume, shifted), geo, volume


@pytest.mark.parametrize(
    ("mode", "n_views", "total_deg"),
    [("parallel", 90, 180.0), ("parallel", 120, 360.0), ("cone", 120, 360.0)],
)
def test_sharpness_finds_a_known_offset(mode, n_views, total_deg):
    projections, geo, _ = _scan(mode, n_views, total_deg)
    estimate = estimate_center(projections, geo)
    assert estimate.method == "sharpness"
    assert estimate.offset_px == pytest.approx(OFFSET, abs=0.3)
    n_u = int(geo.n_detector[1])
    assert estimate.axis_column == pytest.approx(n_u / 2 - 0.5 - OFFSET, abs=0.3)
    assert len(estimate.candidates) == len(estimate.scores) > 3


def test_sharpness_is_not_fooled_by_the_geometry_s_own_offset():
    projections, geo, _ = _scan("parallel", 90, 180.0, offset=-4.6)
    wrong = with_center_offset(geo, 10.0)
    assert estimate_center(projections, wrong).offset_px == pytest.approx(-4.6, abs=0.3)


def test_half_scan_fbp_with_the_estimated_axis_reconstructs_the_phantom():
    projections, geo, volume = _scan("parallel", 90, 180.0)
    found = with_center_offset(geo, estimate_center(projections, geo).offset_px)
    good = psnr3d(fdk(projections, found), volume).item()
    centred = psnr3d(fdk(projections, geo), volume).item()
    # A 180-degree parallel scan weighted modulo pi; the axis is worth several dB.
    assert good > 25.0 and good > centred + 3.0


def test_mirror_matches_opposite_views_of_a_parallel_scan():
    projections, geo, _ = _scan("parallel", 120, 360.0)
    estimate = estimate_center(projections, geo, CenterSearch(method="mirror"))
    assert estimate.method == "mirror"
    assert estimate.offset_px == pytest.approx(OFFSET, abs=0.2)


def test_mirror_needs_a_parallel_beam_and_an_opposite_view():
    projections, geo, _ = _scan("cone", 120, 360.0)
    with pytest.raises(ValueError, match="parallel beam"):
        estimate_center(projections, geo, CenterSearch(method="mirror"))
    projections, geo, _ = _scan("parallel", 7, 180.0)  # closest pair 25.7 degrees off
    with pytest.raises(ValueError, match="180 \\+- 0.5 degrees"):
        estimate_center(projections, geo, CenterSearch(method="mirror"))


def test_resolve_center_choices():
    projections, geo, volume = _scan("parallel", 30, 180.0)
    test_geo = geo.with_angles([0.3])
    scan = Scan(projections, geo, volume, project(volume, test_geo), test_geo)
    kept, record = resolve_center(scan, None)  # axis not declared unknown: keep it
    assert kept is scan and record["choice"] == "none"
    given, record = resolve_center(scan, 2.5)
    assert given.geo.off_detector[1] == given.test_geo.off_detector[1] == 2.5
    assert record == {"choice": "given", "offset_px": 2.5, "source": "given"}
    assert given.metadata["center"]["offset_px"] == 2.5
    unknown = Scan(projections, geo, metadata={"center": {"source": "unknown"}})
    estimated, record = resolve_center(unknown, None)
    assert record["choice"] == "auto" and record["source"] == "estimated"
    assert record["offset_px"] == pytest.approx(OFFSET, abs=0.4)
    assert estimated.geo.off_detector[1] == pytest.approx(record["offset_px"])
    with pytest.raises(ValueError, match="center"):
        resolve_center(scan, "left")
    with pytest.raises(TypeError, match="scan"):
        resolve_center(projections, "auto")


def test_bad_search_settings_raise():
    with pytest.raises(ValueError, match="method"):
        CenterSearch(method="entropy")
    with pytest.raises(ValueError, match="fine_step"):
        CenterSearch(fine_step=0)
    with pytest.raises(ValueError, match="width"):
        CenterSearch(width=4)
    projections, geo, _ = _scan("parallel", 30, 180.0)
    with pytest.raises(ValueError, match="row"):
        estimate_center(projections, geo, CenterSearch(row=20))
    with pytest.raises(ValueError, match="projections"):
        estimate_center(projections[:, :, :10], geo)
    with pytest.raises(ValueError, match="offset_px"):
        with_center_offset(geo, math.nan)


def test_recon_command_estimates_the_axis(tmp_path):
    projections, geo, volume = _scan("parallel", 90, 180.0)
    write_scan(Scan(projections, geo, volume), tmp_path / "scan")
    metrics = recon.main(
        [str(tmp_path / "scan"), "--method", "fdk", "--center", "auto", "--views", "90",
         "--out", str(tmp_path / "auto")]
    )  # fmt: skip
    assert metrics["center_offset_px"] == pytest.approx(OFFSET, abs=0.3)
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["scan"]["center"]["source"] == "estimated"
    assert config["geometry"]["off_detector"][1] == pytest.approx(OFFSET, abs=0.3)
    fixed = recon.main(
        [str(tmp_path / "scan"), "--method", "fdk", "--center", "3.3", "--views", "90",
         "--out", str(tmp_path / "given")]
    )  # fmt: skip
    assert fixed["center_offset_px"] == 3.3 and fixed["psnr"] > metrics["psnr"] - 0.5
    with pytest.raises(SystemExit):
        recon.main([str(tmp_path / "scan"), "--method", "fdk", "--center", "x", "--out", "o"])


def test_estimate_takes_float64_and_leaves_the_input_alone():
    projections, geo, _ = _scan("parallel", 45, 180.0)
    before = projections.clone()
    estimate = estimate_center(projections.double(), geo, CenterSearch(search_range=6.0))
    assert torch.equal(projections, before)
    assert estimate.offset_px == pytest.approx(OFFSET, abs=0.4)
