// Joseph's X-ray projector and its exact adjoint on the CPU (C++17, OpenMP).
//
// The same operator as the torch twin nr/ops/_projector_twin.py (read its docstring
// first): rays start + t b (t in [0, 1]) in voxel-index coordinates, sampled on the
// voxel planes perpendicular to the dominant axis k with bilinear interpolation in
// the plane, weight |b in mm| / |b_k| per plane. Volumes are read (and, for the
// adjoint, written) as padded slabs (n_k, n_slow + 2, n_fast + 2), so that every
// bilinear corner is in bounds and each plane is contiguous.
//
// Both directions visit one detector row at a time, a tile of planes at a time, all the
// row's rays per tile: neighbouring rays sample neighbouring voxels, so a row's samples
// stay in L1 instead of each ray crossing every plane (and page) of the slab alone.
// Forward: parallel over detector rows, a gather per ray.
// Adjoint: a scatter made race-free by partitioning the output: each thread owns a
// block of planes of every axis and scatters every ray into its own planes only. The
// sample work equals the forward's.

#include "kernels.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace {

// In-plane (slow, fast) world axes per dominant axis k (x = 0, y = 1, z = 2), and the
// permutation of a (Z, Y, X) array that puts k first: identical to the twin's tables.
constexpr int kInPlane[3][2] = {{2, 1}, {2, 0}, {1, 0}};
constexpr int64_t kPermute[3][3] = {{2, 0, 1}, {1, 0, 2}, {0, 1, 2}};

struct Ray {
  int k;           // dominant axis
  int64_t lo, hi;  // planes to visit (inclusive); may be 1 wider than the samples that count
  double cs0, ds;  // slow in-plane coordinate at plane i: cs0 + i * ds
  double cf0, df;  // fast in-plane coordinate at plane i: cf0 + i * df
  double w;        // ray length per plane, mm
};

struct Setup {
  const double* vectors;  // (N, 4, 3) src, det, du, dv in voxel-index coordinates
  double size[3];         // voxel size (x, y, z), mm
  int64_t n[3];           // voxels along (x, y, z)
  int64_t n_v, n_u;
  bool parallel;
};

// The ray through pixel (v, u) of view `view`. Returns false when it meets no sample.
bool make_ray(const Setup& s, int64_t view, int64_t v, int64_t u, Ray& r) {
  const double* src = s.vectors + view * 12;
  const double* det = src + 3;
  const double* du = src + 6;
  const double* dv = src + 9;
  double start[3], b[3];
  for (int c = 0; c < 3; ++c) {
    const double p = det[c] + static_cast<double>(u) * du[c] + static_cast<double>(v) * dv[c];
    b[c] = s.parallel ? src[c] : p - src[c];
    start[c] = s.parallel ? p - b[c] : src[c];
  }
  int k = 0;  // first maximum, as torch.argmax
  if (std::abs(b[1]) > std::abs(b[k])) k = 1;
  if (std::abs(b[2]) > std::abs(b[k])) k = 2;
  const double sk = start[k], bk = b[k], ek = sk + bk;
  int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(std::min(sk, ek))));
  int64_t hi = std::min<int64_t>(s.n[k] - 1, static_cast<int64_t>(std::floor(std::max(sk, ek))));
  double c0[2], dc[2];
  for (int j = 0; j < 2; ++j) {
    const int c = kInPlane[k][j];
    dc[j] = b[c] / bk;
    c0[j] = start[c] - sk * dc[j];
    // Planes where -1 <= c0 + i dc < n_c (a bilinear corner in the grid), widened by one
    // plane each side; the per-plane test decides exactly.
    if (dc[j] == 0.0) {
      if (c0[j] < -1.0 || c0[j] >= static_cast<double>(s.n[c])) return false;
      continue;
    }
    const double ia = (-1.0 - c0[j]) / dc[j];
    const double ib = (static_cast<double>(s.n[c]) - c0[j]) / dc[j];
    const double lo_c = std::floor(std::min(ia, ib)) - 1.0;
    const double hi_c = std::ceil(std::max(ia, ib)) + 1.0;
    if (lo_c > static_cast<double>(lo)) lo = static_cast<int64_t>(std::min(lo_c, 1e18));
    if (hi_c < static_cast<double>(hi)) hi = static_cast<int64_t>(std::max(hi_c, -1e18));
  }
  if (lo > hi) return false;
  r.k = k;
  r.lo = lo;
  r.hi = hi;
  r.cs0 = c0[0];
  r.ds = dc[0];
  r.cf0 = c0[1];
  r.df = dc[1];
  const double lx = b[0] * s.size[0], ly = b[1] * s.size[1], lz = b[2] * s.size[2];
  r.w = std::sqrt(lx * lx + ly * ly + lz * lz) / std::abs(bk);
  return true;
}

// Whether plane i's sample has a bilinear corner in the grid (the twin's `valid`:
// -1 <= c < n on both in-plane axes), tested on c + 1, the padded coordinate the samplers use.
inline bool in_grid(const Ray& r, int64_t i, int64_t n_s, int64_t n_f) {
  const double ts = r.cs0 + static_cast<double>(i) * r.ds + 1.0;
  const double tf = r.cf0 + static_cast<double>(i) * r.df + 1.0;
  return ts >= 0.0 && ts < static_cast<double>(n_s + 1) && tf >= 0.0 &&
         tf < static_cast<double>(n_f + 1);
}

// Shrink [r.lo, r.hi] to exactly the planes whose sample is in the grid. The padded
// coordinates are monotone in i (so are their roundings), so those planes form one
// interval, and make_ray's range holds it with at most a plane or two to spare each side.
// False when none is left. After this the samplers index without tests.
inline bool clip_to_grid(Ray& r, int64_t n_s, int64_t n_f) {
  while (r.lo <= r.hi && !in_grid(r, r.lo, n_s, n_f)) ++r.lo;
  while (r.hi >= r.lo && !in_grid(r, r.hi, n_s, n_f)) --r.hi;
  return r.lo <= r.hi;
}

// Bilinear sample of plane i of a clipped ray: offset of its first corner inside the
// padded plane (`row` elements per row) and the fractional parts. The truncation is
// the floor because the padded coordinates are >= 0.
inline void corner(const Ray& r, int64_t i, int64_t row, int64_t& offset, double& as, double& af) {
  const double ts = r.cs0 + static_cast<double>(i) * r.ds + 1.0;
  const double tf = r.cf0 + static_cast<double>(i) * r.df + 1.0;
  const int64_t js = static_cast<int64_t>(ts), jf = static_cast<int64_t>(tf);
  offset = js * row + jf;
  as = ts - static_cast<double>(js);
  af = tf - static_cast<double>(jf);
}

Setup make_setup(const torch::Tensor& vectors, const torch::Tensor& voxel_size, int64_t nz,
                 int64_t ny, int64_t nx, int64_t n_v, int64_t n_u, bool parallel) {
  TORCH_CHECK(vectors.dtype() == torch::kFloat64 && vectors.dim() == 3 && vectors.size(1) == 4 &&
                  vectors.size(2) == 3 && vectors.is_contiguous(),
              "vectors: expected a contiguous (N, 4, 3) float64 tensor");
  TORCH_CHECK(voxel_size.dtype() == torch::kFloat64 && voxel_size.numel() == 3,
              "voxel_size: expected 3 float64 values");
  Setup s;
  s.vectors = vectors.data_ptr<double>();
  const auto size = voxel_size.contiguous();
  for (int c = 0; c < 3; ++c) s.size[c] = size.data_ptr<double>()[c];
  s.n[0] = nx;
  s.n[1] = ny;
  s.n[2] = nz;
  s.n_v = n_v;
  s.n_u = n_u;
  s.parallel = parallel;
  return s;
}

std::array<int64_t, 3> padded_shape(const Setup& s, int k) {
  return {s.n[k], s.n[kInPlane[k][0]] + 2, s.n[kInPlane[k][1]] + 2};
}

// Elements between consecutive planes of a slab. A ray visits every plane at nearly the
// same in-plane position, so with a plane size close to a multiple of 4 KiB (256^2 + pad:
// 16 bytes past one) all its samples fall into the same few L1 sets and evict each other.
// Padding the stride to an odd number of cache lines modulo 4 KiB (plus a quarter turn)
// spreads consecutive planes over all 64 sets.
int64_t plane_stride(const std::array<int64_t, 3>& shape, int64_t element_size) {
  const int64_t line = 64 / element_size, page = 4096 / element_size;
  int64_t stride = (shape[1] * shape[2] + line - 1) / line * line;
  while ((stride % page) / line % 2 == 0 || stride % page < page / 4) stride += line;
  return stride;
}

// A slab: `shape`'s padded planes at `plane_stride` elements apart, as (n_k, stride).
// Returns the buffer; the padded plane (n_slow + 2, n_fast + 2) starts each row.
torch::Tensor make_slab(const std::array<int64_t, 3>& shape, const torch::TensorOptions& options) {
  const int64_t stride = plane_stride(shape, c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  return torch::zeros({shape[0], stride}, options);
}

// The (n_k, n_slow + 2, n_fast + 2) view of the padded planes of a slab.
torch::Tensor slab_planes(const torch::Tensor& slab, const std::array<int64_t, 3>& shape) {
  return slab.narrow(1, 0, shape[1] * shape[2]).view({shape[0], shape[1], shape[2]});
}

// Which dominant axes occur among all rays (a cheap pass: avoids padded copies of unused axes).
std::array<bool, 3> used_axes(const Setup& s, int64_t n_views) {
  bool x = false, y = false, z = false;
  const int64_t rows = n_views * s.n_v;
#pragma omp parallel for reduction(|| : x, y, z) num_threads(at::get_num_threads())
  for (int64_t row_id = 0; row_id < rows; ++row_id) {
    Ray r;
    for (int64_t u = 0; u < s.n_u; ++u)
      if (make_ray(s, row_id / s.n_v, row_id % s.n_v, u, r)) {
        x = x || r.k == 0;
        y = y || r.k == 1;
        z = z || r.k == 2;
      }
  }
  return {x, y, z};
}

// Planes a kernel visits for all rays of a row before moving on (ray by ray, so each
// ray's sum stays in a register): measured best among 1-64 at 128^3 and 256^3.
constexpr int64_t kPlanesPerTile = 4;

// The rays of one detector row, clipped to the grid, and which of them have each dominant
// axis. Kernels visit a row plane by plane (all its rays of one axis per plane): the rays
// of a row sample neighbouring voxels on every plane, so each cache line and page is
// fetched once per row instead of once per ray.
struct RowRays {
  std::vector<Ray> rays;                      // (n_u,), valid where `members` lists them
  std::array<std::vector<int64_t>, 3> members;  // per axis k, the columns u of its rays
  std::array<int64_t, 3> lo, hi;              // per axis k, planes any of its rays visits

  explicit RowRays(int64_t n_u) : rays(n_u) {
    for (auto& m : members) m.reserve(n_u);
  }

  void build(const Setup& s, int64_t view, int64_t v) {
    for (int k = 0; k < 3; ++k) {
      members[k].clear();
      lo[k] = s.n[k];
      hi[k] = -1;
    }
    for (int64_t u = 0; u < s.n_u; ++u) {
      Ray& r = rays[u];
      if (!make_ray(s, view, v, u, r)) continue;
      const auto shape = padded_shape(s, r.k);
      if (!clip_to_grid(r, shape[1] - 2, shape[2] - 2)) continue;
      members[r.k].push_back(u);
      lo[r.k] = std::min(lo[r.k], r.lo);
      hi[r.k] = std::max(hi[r.k], r.hi);
    }
  }
};

template <typename scalar_t>
void forward_kernel(const Setup& s, int64_t n_views, const std::array<torch::Tensor, 3>& slabs,
                    scalar_t* result) {
  std::array<const scalar_t*, 3> base{nullptr, nullptr, nullptr};
  std::array<int64_t, 3> planes{0, 0, 0};
  for (int k = 0; k < 3; ++k)
    if (slabs[k].defined()) {
      base[k] = slabs[k].data_ptr<scalar_t>();
      planes[k] = slabs[k].stride(0);
    }
  const int64_t n_v = s.n_v, n_u = s.n_u, rows = n_views * n_v;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    RowRays row_rays(n_u);
    std::vector<double> acc(n_u);
#pragma omp for schedule(dynamic, 4)
    for (int64_t row_id = 0; row_id < rows; ++row_id) {
      row_rays.build(s, row_id / n_v, row_id % n_v);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int k = 0; k < 3; ++k) {
        const auto& members = row_rays.members[k];
        if (members.empty()) continue;
        const int64_t row = padded_shape(s, k)[2];
        for (int64_t i0 = row_rays.lo[k]; i0 <= row_rays.hi[k]; i0 += kPlanesPerTile) {
          for (const int64_t u : members) {
            const Ray& r = row_rays.rays[u];
            const int64_t lo = std::max(i0, r.lo), hi = std::min(i0 + kPlanesPerTile - 1, r.hi);
            double sum = acc[u];
            const scalar_t* data = base[k] + lo * planes[k];
            for (int64_t i = lo; i <= hi; ++i, data += planes[k]) {
              int64_t offset;
              double as, af;
              corner(r, i, row, offset, as, af);
              const scalar_t* q = data + offset;
              sum += (1.0 - as) * ((1.0 - af) * q[0] + af * q[1]) +
                     as * ((1.0 - af) * q[row] + af * q[row + 1]);
            }
            acc[u] = sum;
          }
        }
        for (const int64_t u : members)
          result[row_id * n_u + u] = static_cast<scalar_t>(acc[u] * row_rays.rays[u].w);
      }
    }
  }
}

template <typename scalar_t>
void backward_kernel(const Setup& s, int64_t n_views, const scalar_t* values,
                     const std::array<torch::Tensor, 3>& slabs) {
  std::array<scalar_t*, 3> base{nullptr, nullptr, nullptr};
  std::array<int64_t, 3> planes{0, 0, 0};
  for (int k = 0; k < 3; ++k)
    if (slabs[k].defined()) {
      base[k] = slabs[k].data_ptr<scalar_t>();
      planes[k] = slabs[k].stride(0);
    }
  const int64_t n_v = s.n_v, n_u = s.n_u;
  // One parallel region: thread t owns the planes [t n_k / T, (t + 1) n_k / T) of every
  // axis and visits all rays, clipped to its planes. Rays are set up once per thread,
  // cheap next to their samples, and no barrier or shared buffer is needed.
#pragma omp parallel num_threads(at::get_num_threads())
  {
    const int64_t n_threads = omp_get_num_threads(), thread = omp_get_thread_num();
    std::array<int64_t, 3> first{}, last{};
    for (int k = 0; k < 3; ++k) {
      first[k] = thread * s.n[k] / n_threads;
      last[k] = (thread + 1) * s.n[k] / n_threads - 1;
    }
    RowRays row_rays(n_u);
    for (int64_t view = 0; view < n_views; ++view)
      for (int64_t v = 0; v < n_v; ++v) {
        const scalar_t* row_values = values + (view * n_v + v) * n_u;
        row_rays.build(s, view, v);
        for (int k = 0; k < 3; ++k) {
          const auto& members = row_rays.members[k];
          const int64_t lo = std::max(row_rays.lo[k], first[k]);
          const int64_t hi = std::min(row_rays.hi[k], last[k]);
          if (members.empty() || lo > hi) continue;
          const int64_t row = padded_shape(s, k)[2];
          for (int64_t i0 = lo; i0 <= hi; i0 += kPlanesPerTile) {
            for (const int64_t u : members) {
              const Ray& r = row_rays.rays[u];
              const double g = static_cast<double>(row_values[u]) * r.w;
              const int64_t a = std::max(i0, r.lo);
              const int64_t b = std::min({i0 + kPlanesPerTile - 1, hi, r.hi});
              if (g == 0.0) continue;
              for (int64_t i = a; i <= b; ++i) {
                int64_t offset;
                double as, af;
                corner(r, i, row, offset, as, af);
                scalar_t* q = base[k] + i * planes[k] + offset;
                const double gs0 = g * (1.0 - as), gs1 = g * as;
                q[0] += static_cast<scalar_t>(gs0 * (1.0 - af));
                q[1] += static_cast<scalar_t>(gs0 * af);
                q[row] += static_cast<scalar_t>(gs1 * (1.0 - af));
                q[row + 1] += static_cast<scalar_t>(gs1 * af);
              }
            }
          }
        }
      }
  }
}

}  // namespace

namespace nr_ops {

torch::Tensor projector_forward(const torch::Tensor& volume, const torch::Tensor& vectors,
                                const torch::Tensor& voxel_size, int64_t n_v, int64_t n_u,
                                bool parallel) {
  TORCH_CHECK(volume.device().is_cpu() && volume.dim() == 3,
              "volume: expected a (Z, Y, X) CPU tensor");
  const int64_t n_views = vectors.size(0);
  const Setup s = make_setup(vectors, voxel_size, volume.size(0), volume.size(1), volume.size(2),
                             n_v, n_u, parallel);
  const auto used = used_axes(s, n_views);
  std::array<torch::Tensor, 3> slabs;
  for (int k = 0; k < 3; ++k)
    if (used[k]) {
      const auto shape = padded_shape(s, k);
      slabs[k] = make_slab(shape, volume.options());
      slab_planes(slabs[k], shape)
          .slice(1, 1, -1)
          .slice(2, 1, -1)
          .copy_(volume.permute({kPermute[k][0], kPermute[k][1], kPermute[k][2]}));
    }
  auto out = torch::zeros({n_views, n_v, n_u}, volume.options());
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "projector_forward", [&] {
    forward_kernel<scalar_t>(s, n_views, slabs, out.data_ptr<scalar_t>());
  });
  return out;
}

torch::Tensor projector_backward(const torch::Tensor& projections, const torch::Tensor& vectors,
                                 const torch::Tensor& voxel_size, int64_t nz, int64_t ny,
                                 int64_t nx, bool parallel) {
  TORCH_CHECK(projections.device().is_cpu() && projections.dim() == 3 &&
                  projections.is_contiguous(),
              "projections: expected a contiguous (N, V, U) CPU tensor");
  const int64_t n_views = vectors.size(0), n_v = projections.size(1), n_u = projections.size(2);
  TORCH_CHECK(projections.size(0) == n_views, "projections: expected one row per view");
  const Setup s = make_setup(vectors, voxel_size, nz, ny, nx, n_v, n_u, parallel);
  const auto used = used_axes(s, n_views);
  std::array<torch::Tensor, 3> slabs;
  for (int k = 0; k < 3; ++k)
    if (used[k]) {
      const auto shape = padded_shape(s, k);
      slabs[k] = make_slab(shape, projections.options());
    }
  AT_DISPATCH_FLOATING_TYPES(projections.scalar_type(), "projector_backward", [&] {
    backward_kernel<scalar_t>(s, n_views, projections.data_ptr<scalar_t>(), slabs);
  });
  auto volume = torch::zeros({nz, ny, nx}, projections.options());
  for (int k = 0; k < 3; ++k) {
    if (!used[k]) continue;
    const auto inner = slab_planes(slabs[k], padded_shape(s, k)).slice(1, 1, -1).slice(2, 1, -1);
    std::array<int64_t, 3> inverse{};
    for (int64_t d = 0; d < 3; ++d) inverse[kPermute[k][d]] = d;
    volume += inner.permute({inverse[0], inverse[1], inverse[2]});
  }
  return volume;
}

}  // namespace nr_ops
