"""The compiled hash-encoding kernel against its torch twin, and the encoding's semantics."""

import dataclasses

import pytest
import torch

from nr._ext import compiled
from nr.fields.hashgrid import (
    PRIMES,
    HashGridConfig,
    HashGridEncoding,
    hash_encode,
    hash_encode_torch,
)

needs_kernel = pytest.mark.skipif(compiled("fields") is None, reason="nr.fields._C not built")

# Levels of 4, 8, 16, 32 cells: the first two dense, the last two hashed into 2^10 rows.
SMALL = HashGridConfig(n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4)


def _points(n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random points in [-0.2, 1.2]^3 plus points on cell borders and on the box faces."""
    inside_and_out = torch.rand(n, 3, generator=generator, dtype=dtype) * 1.4 - 0.2
    borders = torch.randint(0, 33, (n, 3), generator=generator).to(dtype) / 32.0
    faces = torch.rand(n, 3, generator=generator, dtype=dtype)
    faces[:, 0] = torch.randint(0, 2, (n,), generator=generator).to(dtype)
    return torch.cat([inside_and_out, borders, faces])


def _table(config: HashGridConfig, dtype: torch.dtype, generator: torch.Generator):
    rows = config.offsets()[-1]
    return torch.randn(rows, config.features_per_level, generator=generator, dtype=dtype)


def test_layout_dense_then_hashed():
    assert SMALL.resolutions() == [4, 8, 16, 32]
    assert SMALL.offsets() == [0, 125, 125 + 729, 125 + 729 + 1024, 125 + 729 + 2048]
    naf = HashGridConfig()
    assert naf.output_dim == 32 and naf.resolutions()[:3] == [16, 32, 64]
    assert naf.offsets()[-1] == 17**3 + 33**3 + 65**3 + 13 * 2**19


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("features", [2, 3])  # the kernel's unrolled F = 2 path and its general one
def test_kernel_equals_twin_forward_and_backward(dtype, features):
    config = dataclasses.replace(SMALL, features_per_level=features)
    generator = torch.Generator().manual_seed(0)
    points = _points(300, dtype, generator)
    table = _table(config, dtype, generator).requires_grad_()
    fast = hash_encode(points, table, config, backend="compiled")
    slow = hash_encode(points, table, config, backend="torch")
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    cotangent = torch.randn(fast.shape, generator=generator, dtype=dtype)
    (grad_fast,) = torch.autograd.grad(fast, table, cotangent)
    (grad_slow,) = torch.autograd.grad(slow, table, cotangent)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=10 * tol, atol=10 * tol)


@needs_kernel
def test_kernel_gradcheck_float64():
    generator = torch.Generator().manual_seed(1)
    config = HashGridConfig(n_levels=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=3)
    points = _points(5, torch.float64, generator)
    table = _table(config, torch.float64, generator).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: hash_encode(points, t, config, backend="compiled"), (table,)
    )


def test_twin_gradcheck_wrt_points_float64():
    generator = torch.Generator().manual_seed(2)
    points = torch.rand(6, 3, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    table = _table(SMALL, torch.float64, generator)
    assert torch.autograd.gradcheck(
        lambda p: hash_encode_torch(p, table, SMALL), (points.requires_grad_(),)
    )


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=needs_kernel)])
def test_vertices_read_their_rows(backend):
    """On a vertex the feature is that vertex's row: dense order at level 0, the hash at level 3."""
    table = torch.arange(SMALL.offsets()[-1] * 2, dtype=torch.float64).reshape(-1, 2)
    vertex = (3, 1, 4)  # (x, y, z) in level-0 cells of 1/4
    point = torch.tensor([[v / 4 for v in vertex]], dtype=torch.float64)
    out = hash_encode(point, table, SMALL, backend=backend)
    assert out[0, 0].tolist() == table[3 + 5 * (1 + 5 * 4)].tolist()
    scaled = [v * 8 for v in vertex]  # the same point is vertex (24, 8, 32) at 32 cells
    hashed = 0
    for coordinate, prime in zip(scaled, PRIMES, strict=True):
        hashed ^= (coordinate * prime) & 0xFFFFFFFF
    row = SMALL.offsets()[3] + hashed % 1024
    assert out[0, 3].tolist() == table[row].tolist()


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=needs_kernel)])
def test_outside_the_box_is_the_clamped_point(backend):
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(50, 3, generator=generator) * 3.0 - 1.0
    table = _table(SMALL, torch.float32, generator)
    torch.testing.assert_close(
        hash_encode(points, table, SMALL, backend=backend),
        hash_encode(points.clamp(0, 1), table, SMALL, backend=backend),
    )


@needs_kernel
def test_kernel_backward_is_deterministic():
    generator = torch.Generator().manual_seed(4)
    points = _points(2000, torch.float32, generator)
    table = _table(SMALL, torch.float32, generator).requires_grad_()
    cotangent = torch.randn(points.shape[0], 4, 2, generator=generator)
    grads = [
        torch.autograd.grad(hash_encode(points, table, SMALL, "compiled"), table, cotangent)[0]
        for _ in range(2)
    ]
    assert torch.equal(grads[0], grads[1])


def test_bad_inputs_are_rejected():
    table = torch.zeros(SMALL.offsets()[-1], 2)
    with pytest.raises(ValueError, match="points: expected shape"):
        hash_encode(torch.zeros(4, 2), table, SMALL)
    with pytest.raises(ValueError, match="table: expected shape"):
        hash_encode(torch.zeros(4, 3), table[:-1], SMALL)
    with pytest.raises(ValueError, match="finite"):
        hash_encode(torch.full((4, 3), float("nan")), table, SMALL)
    with pytest.raises(TypeError, match="dtype"):
        hash_encode(torch.zeros(4, 3, dtype=torch.float64), table, SMALL)
    with pytest.raises(ValueError, match="per_level_scale"):
        HashGridConfig(per_level_scale=0.5)
    with pytest.raises(ValueError, match="n_levels"):
        HashGridConfig(n_levels=0)


@needs_kernel
def test_compiled_rejects_points_that_need_grad():
    table = torch.zeros(SMALL.offsets()[-1], 2)
    with pytest.raises(ValueError, match="no gradient w.r.t. points"):
        hash_encode(torch.zeros(4, 3, requires_grad=True), table, SMALL, backend="compiled")


def test_module_init_is_reproducible_and_small():
    a = HashGridEncoding(SMALL, generator=torch.Generator().manual_seed(5))
    b = HashGridEncoding(SMALL, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.table, b.table)
    assert a.table.abs().max() <= SMALL.init_scale
    assert a(torch.rand(7, 3)).shape == (7, 8)
