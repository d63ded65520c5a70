// Voxelization of 3D Gaussians (density sums on a regular box of voxels), forward and backward.
//
// Voxel value = sum over Gaussians of rho * exp(-power / 2), power = d^T P d, d = centre - mean,
// P the precision (inverse covariance), taken only where power <= cutoff^2.
// Forward: Gaussians are binned into blocks of whole x rows by 8 x 8 (y, z); each thread owns
// whole blocks.
// Backward: each thread owns whole Gaussians and gathers over their footprint.
// Both walk rows of voxels along x (`row_walk`): no exp per voxel, and within a z plane the
// rows' starting exponentials follow from the previous row's (`RowStarts`): no exp per row.
#include "kernels.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace nr_gaussians {
namespace {

constexpr int64_t kBlock = 8;
constexpr int64_t kPairBudget = int64_t(1) << 24;

struct Box {
  std::array<int64_t, 3> lo, hi;  // inclusive voxel ranges along (x, y, z); lo > hi means empty
  bool empty() const { return lo[0] > hi[0] || lo[1] > hi[1] || lo[2] > hi[2]; }
};

struct Grid {
  std::array<double, 3> origin, spacing;  // (x, y, z) centre of voxel (0, 0, 0) and voxel size
  std::array<int64_t, 3> size;            // voxels along (x, y, z)
};

// Precision entries are stored as [xx, xy, xz, yy, yz, zz].
// det P and its cofactor of P_xx (so Sigma_xx = cof_x / det).
template <typename scalar_t>
std::array<double, 2> det_and_cof_x(const scalar_t* p) {
  const double xx = p[0], xy = p[1], xz = p[2], yy = p[3], yz = p[4], zz = p[5];
  const double cof_x = yy * zz - yz * yz;
  return {xx * cof_x - xy * (xy * zz - yz * xz) + xz * (xy * yz - yy * xz), cof_x};
}

template <typename scalar_t>
Box footprint(const scalar_t* mean, const scalar_t* p, scalar_t rho, double cutoff, const Grid& grid) {
  Box box{{1, 1, 1}, {0, 0, 0}};
  if (rho == scalar_t(0)) return box;
  const double xx = p[0], xy = p[1], xz = p[2], yy = p[3], zz = p[5];
  const auto [det, cof_x] = det_and_cof_x(p);
  const double cof_y = xx * zz - xz * xz, cof_z = xx * yy - xy * xy;
  if (!(det > 0.0)) return box;
  // Half extent of the ellipsoid d^T P d <= cutoff^2 along axis i: cutoff * sqrt(Sigma_ii).
  const std::array<double, 3> extent{cutoff * std::sqrt(cof_x / det), cutoff * std::sqrt(cof_y / det),
                                     cutoff * std::sqrt(cof_z / det)};
  for (int i = 0; i < 3; ++i) {
    const double centre = (double(mean[i]) - grid.origin[i]) / grid.spacing[i];
    const double radius = extent[i] / grid.spacing[i];
    if (!std::isfinite(centre) || !std::isfinite(radius)) return Box{{1, 1, 1}, {0, 0, 0}};
    const double lo = std::max(std::floor(centre - radius), 0.0);
    const double hi = std::min(std::ceil(centre + radius), double(grid.size[i] - 1));
    if (lo > hi) return Box{{1, 1, 1}, {0, 0, 0}};
    box.lo[i] = int64_t(lo);
    box.hi[i] = int64_t(hi);
  }
  return box;
}

// y offset from the mean of voxel row y, mm (in the voxels' precision, as the twin).
template <typename scalar_t>
inline scalar_t y_offset(const Grid& grid, const scalar_t* m, int64_t y) {
  return scalar_t(grid.origin[1]) + scalar_t(y) * scalar_t(grid.spacing[1]) - m[1];
}

template <typename scalar_t>
inline scalar_t power_at(const scalar_t* p, scalar_t dx, scalar_t dy, scalar_t dz) {
  return p[0] * dx * dx + p[3] * dy * dy + p[5] * dz * dz +
         scalar_t(2) * (p[1] * dx * dy + p[2] * dx * dz + p[4] * dy * dz);
}

// One row of voxels (fixed y, z) of one Gaussian. The power is a convex quadratic in x, so
// exp(-power / 2) follows a two-multiplication recurrence along the row (the power's second
// difference is constant) instead of one exp per voxel, and the voxels where power <= limit
// form an interval.
template <typename scalar_t>
struct Row {
  int64_t first = 1, last = 0;  // inclusive voxel range of the walk; empty when first > last
  double weight = 0, ratio = 0;  // exp(-power / 2) at `first` and its ratio to the next voxel's
  scalar_t dx_first = 0;         // x offset from the mean at `first`, mm
  bool test = false;             // walk tests each voxel (power_at <= limit); else all are inside
};

// The recurrence's constant factor exp(-P_xx h^2) of one Gaussian: each step multiplies the
// ratio by it.
template <typename scalar_t>
double row_factor(const scalar_t* p, const Grid& grid) {
  return std::exp(-double(p[0]) * grid.spacing[0] * grid.spacing[0]);
}

// Rows whose power stays below this everywhere in [lo, hi] keep every weight (>= e^-500) and
// ratio of the recurrence within double range, so the walk can start at `lo`.
constexpr double kWalkPowerLimit = 1000.0;

// Whether the rows of a Gaussian are walked whole, testing each voxel of its box: when its
// longest inside interval along x is at least 1 / sqrt(2) of its box's width (P_xx Sigma_xx
// <= 2; 1 for a round Gaussian), little of the walk is wasted and no interval is searched.
// Elongated, tilted Gaussians fill little of their box rows: they search the interval.
template <typename scalar_t>
bool walk_whole_rows(const scalar_t* p) {
  const auto [det, cof_x] = det_and_cof_x(p);
  return double(p[0]) * cof_x <= 2.0 * det;
}

// The two exponentials a row walk starts from at x = lo (exp(-power / 2) and the ratio to the
// next voxel's), for the rows y = lo_y, lo_y + 1, ... of one z plane, by recurrence along y:
// both are exponentials of quadratics in y, so each row's follow from the previous row's by
// multiplications (three exps per plane instead of two per row, which cost more than the
// walk of a small Gaussian's row). Valid only where every row start and its next voxel have
// a power of at most kWalkPowerLimit: every factor then stays within double range.
struct RowStarts {
  bool valid = false;
  double weight = 0, step = 0, step_factor = 0;  // exp(-power / 2) at (lo, y); its ratio to
                                                 // y + 1's; that ratio's factor per row
  double ratio = 0, ratio_factor = 0;            // the walk's x ratio at (lo, y); its factor

  void next() {
    weight *= step;
    step *= step_factor;
    ratio *= ratio_factor;
  }
};

template <typename scalar_t>
RowStarts row_starts(const scalar_t* p, scalar_t dx, scalar_t dy_first, scalar_t dy_last,
                     scalar_t dz, const Grid& grid) {
  RowStarts r;
  const double hx = grid.spacing[0], hy = grid.spacing[1];
  for (const scalar_t x_offset : {dx, scalar_t(dx + scalar_t(hx))})
    for (const scalar_t y_offset : {dy_first, dy_last})
      if (!(double(power_at(p, x_offset, y_offset, dz)) <= kWalkPowerLimit)) return r;
  const double a = p[0], pxy = p[1], pxz = p[2], pyy = p[3], pyz = p[4];
  const double x = dx, y = dy_first, z = dz;
  const double b = pxy * y + pxz * z;
  r.weight = std::exp(-0.5 * double(power_at(p, dx, dy_first, dz)));
  r.step = std::exp(-0.5 * (pyy * (2.0 * y * hy + hy * hy) + 2.0 * (pxy * x + pyz * z) * hy));
  r.step_factor = std::exp(-pyy * hy * hy);
  r.ratio = std::exp(-0.5 * (a * (2.0 * x * hx + hx * hx) + 2.0 * b * hx));
  r.ratio_factor = std::exp(-pxy * hy * hx);
  r.valid = true;
  return r;
}

template <typename scalar_t>
Row<scalar_t> row_walk(const scalar_t* m, const scalar_t* p, bool whole, scalar_t dy, scalar_t dz,
                       scalar_t limit, const Grid& grid, int64_t lo, int64_t hi,
                       const RowStarts& starts) {
  Row<scalar_t> row;
  const scalar_t x0 = scalar_t(grid.origin[0]) - m[0], h = scalar_t(grid.spacing[0]);
  auto inside = [&](int64_t x) { return power_at(p, x0 + scalar_t(x) * h, dy, dz) <= limit; };
  const double a = p[0], b = double(p[1]) * dy + double(p[2]) * dz;
  const double c = double(p[3]) * dy * dy + double(p[5]) * dz * dz + 2.0 * double(p[4]) * dy * dz;
  // disc = a (limit - the row's smallest power). A row whose smallest power exceeds the limit by
  // far more than the rounding of the power's terms has no voxel inside.
  const double disc = b * b - a * (c - double(limit));
  if (!(disc >= -1e-4 * (a * (double(limit) + std::abs(c)) + b * b))) return row;
  const scalar_t dx_lo = x0 + scalar_t(lo) * h;
  const double power_lo = power_at(p, dx_lo, dy, dz), power_hi = power_at(p, x0 + scalar_t(hi) * h, dy, dz);
  if (whole && power_lo <= kWalkPowerLimit && power_hi <= kWalkPowerLimit) {
    row.first = lo;
    row.last = hi;
    row.test = true;
  } else {
    // The power is smallest at dx = -b / a: its nearest voxels decide whether the row is empty.
    const double centre = (-b / a - double(x0)) / double(h);
    if (!std::isfinite(centre)) return row;
    int64_t seed = int64_t(std::floor(std::min(std::max(centre, double(lo)), double(hi))));
    if (!inside(seed)) {
      if (seed + 1 <= hi && inside(seed + 1))
        ++seed;
      else
        return row;
    }
    const double half = std::sqrt(std::max(disc, 0.0)) / a / double(h);
    // The analytic ends, then corrected voxel by voxel so that the set is exactly the voxels
    // whose power passes the test (rounding), which the twin also uses.
    int64_t first = std::max(lo, std::min(seed, int64_t(std::ceil(centre - half))));
    int64_t last = std::min(hi, std::max(seed, int64_t(std::floor(centre + half))));
    while (first > lo && inside(first - 1)) --first;
    while (first < seed && !inside(first)) ++first;
    while (last < hi && inside(last + 1)) ++last;
    while (last > seed && !inside(last)) --last;
    row.first = first;
    row.last = last;
  }
  row.dx_first = x0 + scalar_t(row.first) * h;
  if (row.first == lo && starts.valid) {
    row.weight = starts.weight;
    row.ratio = starts.ratio;
    return row;
  }
  const double dx = row.dx_first, step = h;
  row.weight = std::exp(-0.5 * double(power_at(p, row.dx_first, dy, dz)));
  // power(dx + h) - power(dx) = a (2 dx h + h^2) + 2 b h; its own step is 2 a h^2.
  row.ratio = std::exp(-0.5 * (a * (2.0 * dx * step + step * step) + 2.0 * b * step));
  return row;
}

template <typename scalar_t>
void forward(const scalar_t* means, const scalar_t* precisions, const scalar_t* rhos, int64_t n,
             const Grid& grid, double cutoff, scalar_t* volume) {
  const scalar_t limit = scalar_t(cutoff * cutoff);
  // Blocks span whole rows along x (long rows amortise `row_walk`) and kBlock voxels in y, z.
  const std::array<int64_t, 3> side{grid.size[0], kBlock, kBlock};
  std::array<int64_t, 3> blocks;
  for (int i = 0; i < 3; ++i) blocks[i] = (grid.size[i] + side[i] - 1) / side[i];
  const int64_t n_blocks = blocks[0] * blocks[1] * blocks[2];
  std::vector<Box> boxes(n);
  std::vector<int64_t> pairs(n);
  std::vector<double> factors(n);
  std::vector<char> whole(n);  // walk_whole_rows, once per Gaussian (it meets several blocks)
  for (int64_t g = 0; g < n; ++g) {
    boxes[g] = footprint(means + 3 * g, precisions + 6 * g, rhos[g], cutoff, grid);
    factors[g] = row_factor(precisions + 6 * g, grid);
    whole[g] = walk_whole_rows(precisions + 6 * g);
    const Box& b = boxes[g];
    pairs[g] = 1;
    for (int i = 0; i < 3; ++i) pairs[g] *= b.empty() ? 0 : b.hi[i] / side[i] - b.lo[i] / side[i] + 1;
  }
  auto for_each_block = [&](const Box& b, auto&& visit) {
    for (int64_t bz = b.lo[2] / side[2]; bz <= b.hi[2] / side[2]; ++bz)
      for (int64_t by = b.lo[1] / side[1]; by <= b.hi[1] / side[1]; ++by)
        for (int64_t bx = b.lo[0] / side[0]; bx <= b.hi[0] / side[0]; ++bx)
          visit((bz * blocks[1] + by) * blocks[0] + bx);
  };
  std::vector<int64_t> offsets(n_blocks + 1), cursor(n_blocks), list;
  for (int64_t first = 0; first < n;) {
    int64_t last = first, total = 0;
    while (last < n && (last == first || total + pairs[last] <= kPairBudget)) total += pairs[last++];
    std::fill(offsets.begin(), offsets.end(), 0);
    for (int64_t g = first; g < last; ++g)
      if (pairs[g] > 0) for_each_block(boxes[g], [&](int64_t k) { ++offsets[k + 1]; });
    for (int64_t k = 0; k < n_blocks; ++k) offsets[k + 1] += offsets[k];
    std::copy(offsets.begin(), offsets.end() - 1, cursor.begin());
    list.resize(total);
    for (int64_t g = first; g < last; ++g)
      if (pairs[g] > 0) for_each_block(boxes[g], [&](int64_t k) { list[cursor[k]++] = g; });
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
    for (int64_t k = 0; k < n_blocks; ++k) {
      const std::array<int64_t, 3> start{(k % blocks[0]) * side[0], ((k / blocks[0]) % blocks[1]) * side[1],
                                         (k / (blocks[0] * blocks[1])) * side[2]};
      for (int64_t j = offsets[k]; j < offsets[k + 1]; ++j) {
        const int64_t g = list[j];
        const Box& b = boxes[g];
        const scalar_t* m = means + 3 * g;
        const scalar_t* p = precisions + 6 * g;
        const double rho = rhos[g], factor = factors[g];
        const scalar_t x0 = scalar_t(grid.origin[0]) - m[0], h = scalar_t(grid.spacing[0]);
        std::array<int64_t, 3> lo, hi;
        for (int i = 0; i < 3; ++i) {
          lo[i] = std::max(b.lo[i], start[i]);
          hi[i] = std::min(b.hi[i], start[i] + side[i] - 1);
        }
        for (int64_t z = lo[2]; z <= hi[2]; ++z) {
          const scalar_t dz = scalar_t(grid.origin[2]) + scalar_t(z) * scalar_t(grid.spacing[2]) - m[2];
          RowStarts starts = row_starts(p, x0 + scalar_t(lo[0]) * h, y_offset(grid, m, lo[1]),
                                        y_offset(grid, m, hi[1]), dz, grid);
          for (int64_t y = lo[1]; y <= hi[1]; ++y, starts.next()) {
            const scalar_t dy = y_offset(grid, m, y);
            const Row<scalar_t> row =
                row_walk(m, p, bool(whole[g]), dy, dz, limit, grid, lo[0], hi[0], starts);
            scalar_t* out = volume + (z * grid.size[1] + y) * grid.size[0];
            double weight = rho * row.weight, ratio = row.ratio;
            for (int64_t x = row.first; x <= row.last; ++x) {
              if (!row.test || power_at(p, x0 + scalar_t(x) * h, dy, dz) <= limit) out[x] += scalar_t(weight);
              weight *= ratio;
              ratio *= factor;
            }
          }
        }
      }
    }
    first = last;
  }
}

template <typename scalar_t>
void backward_gaussian(const scalar_t* m, const scalar_t* p, scalar_t rho, const scalar_t* grad_volume,
                       const Grid& grid, double cutoff, scalar_t* grad_mean, scalar_t* grad_p,
                       scalar_t* grad_rho) {
  const Box b = footprint(m, p, rho, cutoff, grid);
  if (b.empty()) return;
  const scalar_t limit = scalar_t(cutoff * cutoff);
  std::array<double, 3> g_mean{0, 0, 0};
  std::array<double, 6> g_p{0, 0, 0, 0, 0, 0};
  double g_rho = 0;
  const double h = grid.spacing[0], factor = row_factor(p, grid);
  const scalar_t x0 = scalar_t(grid.origin[0]) - m[0];
  const bool whole = walk_whole_rows(p);
  for (int64_t z = b.lo[2]; z <= b.hi[2]; ++z) {
    const scalar_t dz = scalar_t(grid.origin[2]) + scalar_t(z) * scalar_t(grid.spacing[2]) - m[2];
    RowStarts starts = row_starts(p, x0 + scalar_t(b.lo[0]) * scalar_t(h), y_offset(grid, m, b.lo[1]),
                                  y_offset(grid, m, b.hi[1]), dz, grid);
    for (int64_t y = b.lo[1]; y <= b.hi[1]; ++y, starts.next()) {
      const scalar_t dy = y_offset(grid, m, y);
      const Row<scalar_t> row = row_walk(m, p, whole, dy, dz, limit, grid, b.lo[0], b.hi[0], starts);
      if (row.first > row.last) continue;
      const scalar_t* in = grad_volume + (z * grid.size[1] + y) * grid.size[0];
      // The row's moments sum_x g w dx^k (k = 0, 1, 2), with dx counted from `first`.
      double s0 = 0, s1 = 0, s2 = 0, weight = row.weight, ratio = row.ratio;
      for (int64_t x = row.first; x <= row.last; ++x) {
        if (!row.test || power_at(p, x0 + scalar_t(x) * scalar_t(h), dy, dz) <= limit) {
          const double gw = double(in[x]) * weight, t = double(x - row.first);
          s0 += gw;
          s1 += gw * t;
          s2 += gw * t * t;
        }
        weight *= ratio;
        ratio *= factor;
      }
      const double d0 = row.dx_first;
      const double m1 = d0 * s0 + h * s1, m2 = d0 * d0 * s0 + 2.0 * d0 * h * s1 + h * h * s2;
      g_rho += s0;
      // With g_power = -rho / 2 * sum g w: d power / d mean = -2 P d, d power / d P = d d^T.
      const double k = -0.5 * double(rho), t0 = k * s0, t1 = k * m1, t2 = k * m2;
      const double ey = dy, ez = dz;
      g_mean[0] -= 2.0 * (double(p[0]) * t1 + (double(p[1]) * ey + double(p[2]) * ez) * t0);
      g_mean[1] -= 2.0 * (double(p[1]) * t1 + (double(p[3]) * ey + double(p[4]) * ez) * t0);
      g_mean[2] -= 2.0 * (double(p[2]) * t1 + (double(p[4]) * ey + double(p[5]) * ez) * t0);
      g_p[0] += t2;
      g_p[1] += 2.0 * ey * t1;
      g_p[2] += 2.0 * ez * t1;
      g_p[3] += ey * ey * t0;
      g_p[4] += 2.0 * ey * ez * t0;
      g_p[5] += ez * ez * t0;
    }
  }
  for (int i = 0; i < 3; ++i) grad_mean[i] = scalar_t(g_mean[i]);
  for (int i = 0; i < 6; ++i) grad_p[i] = scalar_t(g_p[i]);
  *grad_rho = scalar_t(g_rho);
}

// Gaussian indices ordered by the (z, y) row of voxels that holds their mean (a counting sort;
// means off the grid count as its nearest row). Visited in this order, consecutive Gaussians
// read overlapping rows of the gradient volume from cache; in the model's order (random
// positions) each reads its own rows from memory.
template <typename scalar_t>
std::vector<int64_t> row_order(const scalar_t* means, int64_t n, const Grid& grid) {
  const int64_t rows = grid.size[1] * grid.size[2];
  std::vector<int64_t> key(n), start(rows + 1, 0), order(n);
  for (int64_t g = 0; g < n; ++g) {
    int64_t index[2];
    for (int i = 1; i < 3; ++i) {
      const double v = (double(means[3 * g + i]) - grid.origin[i]) / grid.spacing[i] + 0.5;
      index[i - 1] = std::isfinite(v) ? int64_t(std::min(std::max(v, 0.0), double(grid.size[i] - 1))) : 0;
    }
    key[g] = index[1] * grid.size[1] + index[0];
    ++start[key[g] + 1];
  }
  for (int64_t k = 0; k < rows; ++k) start[k + 1] += start[k];
  for (int64_t g = 0; g < n; ++g) order[start[key[g]]++] = g;
  return order;
}

template <typename scalar_t>
void backward_all(const scalar_t* m, const scalar_t* p, const scalar_t* r, const scalar_t* gv, int64_t n,
                  const Grid& grid, double cutoff, scalar_t* gm, scalar_t* gp, scalar_t* gr) {
  const std::vector<int64_t> order = row_order(m, n, grid);
#pragma omp parallel for schedule(dynamic, 64) num_threads(at::get_num_threads())
  for (int64_t k = 0; k < n; ++k) {
    const int64_t g = order[k];
    backward_gaussian(m + 3 * g, p + 6 * g, r[g], gv, grid, cutoff, gm + 3 * g, gp + 6 * g, gr + g);
  }
}

Grid make_grid(const std::vector<double>& origin, const std::vector<double>& spacing,
               const std::vector<int64_t>& shape_zyx) {
  TORCH_CHECK(origin.size() == 3 && spacing.size() == 3 && shape_zyx.size() == 3,
              "voxelize: origin, spacing and shape need 3 values each");
  return Grid{{origin[0], origin[1], origin[2]},
              {spacing[0], spacing[1], spacing[2]},
              {shape_zyx[2], shape_zyx[1], shape_zyx[0]}};
}

}  // namespace

torch::Tensor voxelize_forward(const torch::Tensor& means, const torch::Tensor& precisions,
                               const torch::Tensor& densities, const std::vector<double>& origin,
                               const std::vector<double>& spacing, const std::vector<int64_t>& shape,
                               double cutoff) {
  const Grid grid = make_grid(origin, spacing, shape);
  const auto m = means.contiguous(), p = precisions.contiguous(), r = densities.contiguous();
  auto volume = torch::zeros({shape[0], shape[1], shape[2]}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "voxelize_forward", [&] {
    forward(m.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), m.size(0), grid, cutoff,
            volume.data_ptr<scalar_t>());
  });
  return volume;
}

std::vector<torch::Tensor> voxelize_backward(const torch::Tensor& means, const torch::Tensor& precisions,
                                             const torch::Tensor& densities, const torch::Tensor& grad_volume,
                                             const std::vector<double>& origin,
                                             const std::vector<double>& spacing, double cutoff) {
  const auto gv = grad_volume.contiguous();
  const Grid grid = make_grid(origin, spacing, {gv.size(0), gv.size(1), gv.size(2)});
  const auto m = means.contiguous(), p = precisions.contiguous(), r = densities.contiguous();
  auto grad_means = torch::zeros_like(m), grad_precisions = torch::zeros_like(p);
  auto grad_densities = torch::zeros_like(r);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "voxelize_backward", [&] {
    backward_all(m.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(),
                 m.size(0), grid, cutoff, grad_means.data_ptr<scalar_t>(),
                 grad_precisions.data_ptr<scalar_t>(), grad_densities.data_ptr<scalar_t>());
  });
  return {grad_means, grad_precisions, grad_densities};
}

}  // namespace nr_gaussians
