// FDK's voxel-driven weighted backprojection on the CPU (C++17, OpenMP).
//
// The same sum as the torch twin `_weighted_backprojection` in nr/ops/fdk.py (read its
// docstring and `_projective_maps` first): per view a 4x3 map M takes a voxel centre
// (x, y, z, 1) to (p_u, p_v, d); the voxel sees the detector at pixel indices
// (p_u / d, p_v / d) and weighs the bilinear sample there (zero outside the detector)
// by 1 / d^2. Two paths with the same sum (each voxel sums its views in order, in double):
// `backproject_columns` when no view's p_u or d depends on z (the usual circular orbit),
// `backproject_rows` otherwise. The views are padded by one zero pixel on each side so
// that every bilinear corner of a sample in [-1, n) is in bounds.

#include "kernels.h"

#include <omp.h>

#include <vector>

namespace {

// Bilinear interpolation of the 2 x 2 pixels from q (rows `row` apart) at fractions (au, av).
template <typename scalar_t>
inline double interpolate(const scalar_t* q, int64_t row, double au, double av) {
  return (1.0 - av) * ((1.0 - au) * q[0] + au * q[1]) + av * ((1.0 - au) * q[row] + au * q[row + 1]);
}

// The bilinear sample of a padded view at padded indices (tu, tv), or false when no
// corner is on the detector (a corner is in the padded view iff 0 <= t < n + 1).
template <typename scalar_t>
inline bool bilinear(const scalar_t* view, int64_t row, double u_end, double v_end, double tu,
                     double tv, double& sample) {
  if (!(tu >= 0.0 && tu < u_end && tv >= 0.0 && tv < v_end)) return false;
  const int64_t iu = static_cast<int64_t>(tu), iv = static_cast<int64_t>(tv);
  sample = interpolate(view + iv * row + iu, row, tu - static_cast<double>(iu),
                       tv - static_cast<double>(iv));
  return true;
}

// Any geometry: parallel over (z, y) rows, every view per row. A row samples a narrow band
// of each view's detector rows and the next row nearly the same band, so the views stay
// in cache although all of them are read for every row.
template <typename scalar_t>
void backproject_rows(const scalar_t* padded, int64_t n_views, int64_t n_v, int64_t n_u,
                      const double* maps, const double* xs, const double* ys, const double* zs,
                      int64_t nz, int64_t ny, int64_t nx, scalar_t* volume) {
  const int64_t row = n_u + 2, image = (n_v + 2) * row;
  const double u_end = static_cast<double>(n_u + 1), v_end = static_cast<double>(n_v + 1);
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<double> acc(nx);
#pragma omp for schedule(static)
    for (int64_t zy = 0; zy < nz * ny; ++zy) {
      const double z = zs[zy / ny], y = ys[zy % ny];
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < n_views; ++n) {
        const double* m = maps + n * 12;  // rows x, y, z, 1; columns p_u, p_v, d
        const double pu0 = y * m[3] + z * m[6] + m[9];
        const double pv0 = y * m[4] + z * m[7] + m[10];
        const double d0 = y * m[5] + z * m[8] + m[11];
        const scalar_t* view = padded + n * image;
        for (int64_t j = 0; j < nx; ++j) {
          const double inverse = 1.0 / (d0 + xs[j] * m[2]);
          double sample;
          if (bilinear(view, row, u_end, v_end, (pu0 + xs[j] * m[0]) * inverse + 1.0,
                       (pv0 + xs[j] * m[1]) * inverse + 1.0, sample))
            acc[j] += sample * inverse * inverse;
        }
      }
      scalar_t* out = volume + zy * nx;
      for (int64_t j = 0; j < nx; ++j) out[j] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// Maps whose p_u and d do not depend on z (a circular orbit with an upright detector: the
// usual case): parallel over y; per (y, view) the column index and the weight of every x
// are computed once and reused for every z, which leaves no division per voxel and view.
template <typename scalar_t>
void backproject_columns(const scalar_t* padded, int64_t n_views, int64_t n_v, int64_t n_u,
                         const double* maps, const double* xs, const double* ys,
                         const double* zs, int64_t nz, int64_t ny, int64_t nx,
                         scalar_t* volume) {
  const int64_t row = n_u + 2, image = (n_v + 2) * row;
  const double u_end = static_cast<double>(n_u + 1), v_end = static_cast<double>(n_v + 1);
  // Per (view, x) at the thread's y: what the samples of every z share.
  struct Column {
    double weight;   // 1 / d
    double tv_x;     // the x part of the padded row index: x m_v / d + 1
    double au;       // fractional padded column index
    int64_t offset;  // padded column index, -1 when no corner is on the detector
  };
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<Column> columns(n_views * nx);
    std::vector<double> acc(nx);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < ny; ++k) {
      const double y = ys[k];
      for (int64_t n = 0; n < n_views; ++n) {
        const double* m = maps + n * 12;
        for (int64_t j = 0; j < nx; ++j) {
          Column& c = columns[n * nx + j];
          c.weight = 1.0 / (y * m[5] + m[11] + xs[j] * m[2]);
          c.tv_x = xs[j] * m[1] * c.weight + 1.0;
          const double tu = (y * m[3] + m[9] + xs[j] * m[0]) * c.weight + 1.0;
          c.offset = tu >= 0.0 && tu < u_end ? static_cast<int64_t>(tu) : -1;
          c.au = tu - static_cast<double>(c.offset);
        }
      }
      for (int64_t i = 0; i < nz; ++i) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < n_views; ++n) {
          const double* m = maps + n * 12;
          const double pv0 = y * m[4] + zs[i] * m[7] + m[10];
          const scalar_t* view = padded + n * image;
          const Column* c = columns.data() + n * nx;
          for (int64_t j = 0; j < nx; ++j) {
            const double tv = pv0 * c[j].weight + c[j].tv_x;
            if (c[j].offset < 0 || !(tv >= 0.0 && tv < v_end)) continue;
            const int64_t iv = static_cast<int64_t>(tv);
            const double sample = interpolate(view + iv * row + c[j].offset, row, c[j].au,
                                              tv - static_cast<double>(iv));
            acc[j] += sample * c[j].weight * c[j].weight;
          }
        }
        scalar_t* out = volume + (i * ny + k) * nx;
        for (int64_t j = 0; j < nx; ++j) out[j] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// Whether any view's p_u or d changes with z (entries (z, p_u) and (z, d) of the maps).
bool depends_on_z(const torch::Tensor& maps) {
  const double* m = maps.data_ptr<double>();
  for (int64_t n = 0; n < maps.size(0); ++n)
    if (m[n * 12 + 6] != 0.0 || m[n * 12 + 8] != 0.0) return true;
  return false;
}

}  // namespace

namespace nr_ops {

torch::Tensor fdk_backproject(const torch::Tensor& filtered, const torch::Tensor& maps,
                              const torch::Tensor& x, const torch::Tensor& y,
                              const torch::Tensor& z) {
  TORCH_CHECK(filtered.device().is_cpu() && filtered.dim() == 3,
              "filtered: expected an (N, V, U) CPU tensor");
  const int64_t n_views = filtered.size(0), n_v = filtered.size(1), n_u = filtered.size(2);
  TORCH_CHECK(maps.dtype() == torch::kFloat64 && maps.dim() == 3 && maps.size(0) == n_views &&
                  maps.size(1) == 4 && maps.size(2) == 3 && maps.is_contiguous(),
              "maps: expected a contiguous (N, 4, 3) float64 tensor, one map per view");
  for (const auto* axis : {&x, &y, &z})
    TORCH_CHECK(axis->dtype() == torch::kFloat64 && axis->dim() == 1 && axis->is_contiguous(),
                "x, y, z: expected contiguous 1-D float64 voxel centres");
  const auto padded = torch::constant_pad_nd(filtered, {1, 1, 1, 1}).contiguous();
  auto volume = torch::empty({z.size(0), y.size(0), x.size(0)}, filtered.options());
  AT_DISPATCH_FLOATING_TYPES(filtered.scalar_type(), "fdk_backproject", [&] {
    const auto kernel = depends_on_z(maps) ? backproject_rows<scalar_t> : backproject_columns<scalar_t>;
    kernel(padded.data_ptr<scalar_t>(), n_views, n_v, n_u, maps.data_ptr<double>(),
           x.data_ptr<double>(), y.data_ptr<double>(), z.data_ptr<double>(), z.size(0), y.size(0),
           x.size(0), volume.data_ptr<scalar_t>());
  });
  return volume;
}

}  // namespace nr_ops
