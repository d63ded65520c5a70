import math
from types import SimpleNamespace

import numpy as np
import pytest

from nr.geometry import ConeBeamGeometry


def _geo(**overrides):
    fields = dict(
        n_voxel=(4, 6, 8),
        s_voxel=(40.0, 60.0, 80.0),
        n_detector=(10, 12),
        d_detector=(2.0, 3.0),
        angles=[0.0, math.pi / 2],
        dso=100.0,
        dsd=150.0,
    )
    fields.update(overrides)
    return ConeBeamGeometry(**fields)


def test_sizes_are_completed_and_shapes_follow_tigre_order():
    geo = _geo()
    np.testing.assert_allclose(geo.d_voxel, [10.0, 10.0, 10.0])
    np.testing.assert_allclose(geo.s_detector, [20.0, 36.0])
    assert geo.volume_shape == (4, 6, 8)
    assert geo.projection_shape == (2, 10, 12)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(d_voxel=(1.0, 1.0, 1.0)), "n_voxel \\* d_voxel"),
        (dict(dsd=90.0), "dsd"),
        (dict(angles=[0.0, float("nan")]), "angles"),
        (dict(angles=np.zeros((3, 3))), "angles"),
        (dict(mode="fan"), "mode"),
        (dict(n_voxel=(4, 6)), "n_voxel"),
        (dict(n_detector=(0, 12)), "n_detector"),
        (dict(off_origin=(0.0, np.inf, 0.0)), "off_origin"),
        (dict(s_voxel=None), "d_voxel / s_voxel"),
    ],
)
def test_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        _geo(**overrides)


def test_json_round_trip_and_unknown_keys():
    geo = _geo(off_origin=(1.0, 2.0, 3.0), off_detector=(0.5, -1.5), cor=0.25, mode="parallel")
    assert ConeBeamGeometry.from_json(geo.to_json()) == geo
    with pytest.raises(ValueError, match="unknown geometry keys"):
        ConeBeamGeometry.from_dict({**geo.to_dict(), "nVoxel": [1, 1, 1]})


def test_from_tigre_reads_camel_case_fields():
    tigre_geo = SimpleNamespace(
        DSD=1536,
        DSO=1000,
        nVoxel=np.array([64, 64, 64]),
        sVoxel=np.array([256, 256, 256]),
        dVoxel=np.array([4.0, 4.0, 4.0]),
        nDetector=np.array([128, 96]),
        dDetector=np.array([3.2, 3.2]),
        sDetector=np.array([409.6, 307.2]),
        offOrigin=np.array([0, 0, 0]),
        offDetector=np.array([1.0, 2.0]),
        accuracy=0.5,
        mode="cone",
        COR=0,
    )
    geo = ConeBeamGeometry.from_tigre(tigre_geo, angles=np.linspace(0, np.pi, 5))
    assert geo.projection_shape == (5, 128, 96)
    np.testing.assert_allclose(geo.off_detector, [1.0, 2.0])
    with pytest.raises(ValueError, match="angles"):
        ConeBeamGeometry.from_tigre(tigre_geo)


def test_view_vectors_follow_tigre_conventions():
    geo = _geo()
    vectors = geo.view_vectors()
    src, det, du, dv = vectors[0]
    # Angle 0: source on +x, detector plane at x = -(dsd - dso), u along +y, v along +z.
    np.testing.assert_allclose(src, [100.0, 0.0, 0.0])
    np.testing.assert_allclose(det, [-50.0, (0 - 6 + 0.5) * 3.0, (0 - 5 + 0.5) * 2.0])
    np.testing.assert_allclose(du, [0.0, 3.0, 0.0])
    np.testing.assert_allclose(dv, [0.0, 0.0, 2.0])
    # Angle pi/2: counter-clockwise rotation about +z takes the source to +y.
    np.testing.assert_allclose(vectors[1, 0], [0.0, 100.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(vectors[1, 2], [-3.0, 0.0, 0.0], atol=1e-12)


def test_detector_offset_cor_and_parallel_mode():
    geo = _geo(off_detector=(1.0, 2.0), cor=5.0)
    src, det, _, _ = geo.view_vectors()[0]
    np.testing.assert_allclose(src, [100.0, 5.0, 0.0])
    np.testing.assert_allclose(det, [-50.0, -16.5 + 2.0 + 5.0, -9.0 + 1.0])
    parallel = _geo(mode="parallel").view_vectors()[1]
    np.testing.assert_allclose(parallel[0], [0.0, -150.0, 0.0], atol=1e-12)


def test_voxel_centres_include_offsets():
    geo = _geo(off_origin=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(geo.voxel_centres(0), [-14.0, -4.0, 6.0, 16.0])
    np.testing.assert_allclose(geo.voxel_origin_xyz(), [-32.0, -23.0, -14.0])
    assert geo.subset([1]).angles.tolist() == [math.pi / 2]
    with pytest.raises(ValueError, match="view_ids"):
        geo.subset([2])


def test_for_volume_scales_with_the_box_and_covers_it():
    geo = ConeBeamGeometry.for_volume((93, 64, 64), (1.5, 3.2, 3.2), n_views=25)
    assert geo.dsd / geo.dso == pytest.approx(1.4)
    assert geo.n_views == 25 and geo.projection_shape[1:] == (93, 93)
    # The inscribed cylinder's shadow (magnified at its nearest point) fits on the detector.
    radius = 64 * 3.2 / 2
    shadow = radius * geo.dsd / (geo.dso - radius)
    assert 2 * shadow <= geo.s_detector[1]
    assert ConeBeamGeometry.default(64, 10) == ConeBeamGeometry.for_volume(
        (64,) * 3, (4.0,) * 3, 10
    )
