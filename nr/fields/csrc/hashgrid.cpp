// Multiresolution hash encoding (instant-NGP / NAF) on the CPU: forward and backward.
//
// The readable reference is nr/fields/hashgrid.py::hash_encode_torch; both must agree.
// Layout: points (N, 3) in the unit cube (clamped to [0, 1]), table (E, F) holding the
// levels one after another (level l owns rows offsets[l] .. offsets[l+1]), output (L, N, F).
// Level l has resolution R = resolutions[l] cells per axis and (R+1)^3 vertices; it is
// indexed densely when they fit its rows, else by the spatial hash of instant-NGP.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr uint32_t kPrimeZ = 805459861u;
constexpr int64_t kBlock = 4096;  // points per forward work item

struct Level {
  int64_t offset;
  int64_t size;
  int64_t resolution;
  bool dense;
  uint64_t mask;  // size - 1 when size is a power of two (then h % size == h & mask), else 0
};

std::vector<Level> make_levels(const torch::Tensor& offsets, const torch::Tensor& resolutions) {
  TORCH_CHECK(offsets.dtype() == torch::kInt64 && resolutions.dtype() == torch::kInt64,
              "offsets and resolutions must be int64");
  const int64_t n_levels = resolutions.numel();
  TORCH_CHECK(offsets.numel() == n_levels + 1, "offsets must have n_levels + 1 entries");
  auto off = offsets.contiguous();
  auto res = resolutions.contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t* r = res.data_ptr<int64_t>();
  std::vector<Level> levels(n_levels);
  for (int64_t l = 0; l < n_levels; ++l) {
    const int64_t side = r[l] + 1;
    const int64_t size = o[l + 1] - o[l];
    TORCH_CHECK(r[l] >= 1 && size >= 1, "level ", l, ": bad resolution or size");
    const bool pow2 = (size & (size - 1)) == 0;
    levels[l] = {o[l], size, r[l], side * side * side <= size,
                 pow2 ? static_cast<uint64_t>(size - 1) : 0};
  }
  return levels;
}

// The 8 corner rows of the cell holding `p` and their trilinear weights.
template <typename scalar_t>
inline void corners(const scalar_t* p, const Level& level, int64_t rows[8], scalar_t weights[8]) {
  int64_t cell[3];
  scalar_t frac[3];
  const scalar_t res = static_cast<scalar_t>(level.resolution);
  for (int d = 0; d < 3; ++d) {
    const scalar_t x = std::min(std::max(p[d], scalar_t(0)), scalar_t(1));
    const scalar_t pos = x * res;
    const int64_t c = std::min(static_cast<int64_t>(std::floor(pos)), level.resolution - 1);
    cell[d] = c;
    frac[d] = pos - static_cast<scalar_t>(c);
  }
  const int64_t side = level.resolution + 1;
  for (int c = 0; c < 8; ++c) {
    const int64_t ix = cell[0] + (c & 1), iy = cell[1] + ((c >> 1) & 1),
                  iz = cell[2] + ((c >> 2) & 1);
    const scalar_t wx = (c & 1) ? frac[0] : scalar_t(1) - frac[0];
    const scalar_t wy = ((c >> 1) & 1) ? frac[1] : scalar_t(1) - frac[1];
    const scalar_t wz = ((c >> 2) & 1) ? frac[2] : scalar_t(1) - frac[2];
    weights[c] = wx * wy * wz;
    int64_t index;
    if (level.dense) {
      index = ix + side * (iy + side * iz);
    } else {
      const uint32_t h = static_cast<uint32_t>(ix) ^ (static_cast<uint32_t>(iy) * kPrimeY) ^
                         (static_cast<uint32_t>(iz) * kPrimeZ);
      index = static_cast<int64_t>(level.mask ? (h & level.mask)
                                              : (h % static_cast<uint64_t>(level.size)));
    }
    rows[c] = level.offset + index;
  }
}

// Level-major work items keep one level's rows hot in the cache; `out` is (L, N, F).
// kF > 0 fixes the feature count at compile time (unrolled inner loops); 0 reads `f`.
template <typename scalar_t, int kF>
void forward_loop(const scalar_t* pts, const scalar_t* tab, scalar_t* out,
                  const std::vector<Level>& levels, int64_t n, int64_t runtime_f) {
  const int64_t f = kF > 0 ? kF : runtime_f;
  const int64_t n_levels = levels.size();
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < n_levels * n_blocks; ++item) {
    const int64_t l = item / n_blocks;
    const int64_t begin = (item % n_blocks) * kBlock, end = std::min(n, begin + kBlock);
    int64_t rows[8];
    scalar_t weights[8];
    for (int64_t i = begin; i < end; ++i) {
      corners(pts + 3 * i, levels[l], rows, weights);
      scalar_t* dst = out + (l * n + i) * f;
      for (int64_t k = 0; k < f; ++k) dst[k] = scalar_t(0);
      for (int c = 0; c < 8; ++c) {
        const scalar_t* src = tab + rows[c] * f;
        for (int64_t k = 0; k < f; ++k) dst[k] += weights[c] * src[k];
      }
    }
  }
}

// d(out)/d(table) from `grad` (L, N, F): one thread per level, so that the scatter is
// race-free and its summation order (point order) is fixed: the result is deterministic.
template <typename scalar_t, int kF>
void backward_loop(const scalar_t* grad, const scalar_t* pts, scalar_t* grad_table,
                   const std::vector<Level>& levels, int64_t n, int64_t runtime_f) {
  const int64_t f = kF > 0 ? kF : runtime_f;
  const int64_t n_levels = levels.size();
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t l = 0; l < n_levels; ++l) {
    int64_t rows[8];
    scalar_t weights[8];
    for (int64_t i = 0; i < n; ++i) {
      corners(pts + 3 * i, levels[l], rows, weights);
      const scalar_t* src = grad + (l * n + i) * f;
      for (int c = 0; c < 8; ++c) {
        scalar_t* dst = grad_table + rows[c] * f;
        for (int64_t k = 0; k < f; ++k) dst[k] += weights[c] * src[k];
      }
    }
  }
}

void check_inputs(const torch::Tensor& points, const torch::Tensor& table) {
  TORCH_CHECK(points.device().is_cpu() && table.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "points must be (N, 3)");
  TORCH_CHECK(table.dim() == 2, "table must be (E, F)");
  TORCH_CHECK(points.scalar_type() == table.scalar_type(), "points and table dtypes differ");
}

torch::Tensor forward(torch::Tensor points, torch::Tensor table, torch::Tensor offsets,
                      torch::Tensor resolutions) {
  check_inputs(points, table);
  const auto levels = make_levels(offsets, resolutions);
  TORCH_CHECK(levels.back().offset + levels.back().size == table.size(0),
              "table rows do not match offsets");
  points = points.contiguous();
  table = table.contiguous();
  const int64_t n = points.size(0), n_levels = levels.size(), f = table.size(1);
  auto out = torch::empty({n_levels, n, f}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hash_encode_forward", [&] {
    const auto loop = f == 2 ? forward_loop<scalar_t, 2> : forward_loop<scalar_t, 0>;
    loop(points.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
         levels, n, f);
  });
  return out;
}

torch::Tensor backward(torch::Tensor grad_out, torch::Tensor points, torch::Tensor offsets,
                       torch::Tensor resolutions, int64_t n_rows) {
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(1) == points.size(0),
              "grad_out must be (L, N, F)");
  check_inputs(points, grad_out[0]);
  const auto levels = make_levels(offsets, resolutions);
  TORCH_CHECK(grad_out.size(0) == static_cast<int64_t>(levels.size()), "grad_out levels");
  TORCH_CHECK(levels.back().offset + levels.back().size == n_rows, "n_rows vs offsets");
  points = points.contiguous();
  grad_out = grad_out.contiguous();
  const int64_t n = points.size(0), f = grad_out.size(2);
  auto grad_table = torch::zeros({n_rows, f}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "hash_encode_backward", [&] {
    const auto loop = f == 2 ? backward_loop<scalar_t, 2> : backward_loop<scalar_t, 0>;
    loop(grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
         grad_table.data_ptr<scalar_t>(), levels, n, f);
  });
  return grad_table;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multiresolution hash encoding: CPU forward and backward (grad w.r.t. the table)";
  m.def("hash_encode_forward", &forward, "(N,3) points, (E,F) table -> (L,N,F) features");
  m.def("hash_encode_backward", &backward, "(L,N,F) grad -> (E,F) grad of the table");
}
