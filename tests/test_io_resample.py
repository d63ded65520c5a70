import numpy as np
import pytest

from nr.io.resample import resample_cube


def test_resample_cube_shape_range_and_identity():
    data = np.random.default_rng(0).random((10, 20, 30)).astype(np.float32)
    cube = resample_cube(data, 16)
    assert cube.shape == (16, 16, 16) and cube.dtype == np.float32
    assert data.min() <= cube.min() and cube.max() <= data.max()  # linear: no overshoot
    assert resample_cube(cube, 16) is not None and np.array_equal(resample_cube(cube, 16), cube)
    constant = np.full((5, 7, 9), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resample_cube(constant, 12), 0.25)


def test_resample_cube_rejects_bad_input():
    with pytest.raises(ValueError, match="size"):
        resample_cube(np.zeros((4, 4, 4)), 1)
    with pytest.raises(ValueError, match="data"):
        resample_cube(np.zeros((4, 4)), 8)
