// Additive X-ray rasterization of projected (2D) Gaussians, forward and backward.
//
// Each view's image is the sum over Gaussians of amp * exp(-power / 2), power = d^T C d,
// d = pixel - mean2d, C = [[a, b], [b, c]] (the conic), taken only where power <= cutoff^2.
// Forward: Gaussians are binned into 16x16 pixel tiles; each thread owns whole tiles, so the
// image is written without atomics and the cost follows the (pixel, Gaussian) contributions.
// Backward: each thread owns whole Gaussians and gathers over their footprint.
#include "kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace nr_gaussians {
namespace {

constexpr int64_t kTile = 16;
// Bin at most this many (tile, Gaussian) pairs at once; larger inputs run in chunks of
// Gaussians, which keeps the binning memory bounded whatever the Gaussians' sizes.
constexpr int64_t kPairBudget = int64_t(1) << 24;

struct Rect {
  int64_t u0, u1, v0, v1;  // inclusive pixel ranges; u0 > u1 means empty
};

template <typename scalar_t>
Rect footprint(const scalar_t* mean, const scalar_t* conic, scalar_t amp, double cutoff,
               int64_t height, int64_t width) {
  Rect empty{1, 0, 1, 0};
  if (amp == scalar_t(0)) return empty;
  const double a = conic[0], b = conic[1], c = conic[2];
  const double det = a * c - b * b;
  if (!(det > 0.0) || !(a > 0.0)) return empty;
  // Half extents of the ellipse d^T C d <= cutoff^2 along u and v: cutoff * sqrt(Sigma_ii).
  const double ru = cutoff * std::sqrt(c / det), rv = cutoff * std::sqrt(a / det);
  const double u = mean[0], v = mean[1];
  if (!std::isfinite(u) || !std::isfinite(v) || !std::isfinite(ru) || !std::isfinite(rv)) {
    return empty;
  }
  const double lo_u = std::max(std::floor(u - ru), 0.0);
  const double hi_u = std::min(std::ceil(u + ru), double(width - 1));
  const double lo_v = std::max(std::floor(v - rv), 0.0);
  const double hi_v = std::min(std::ceil(v + rv), double(height - 1));
  if (lo_u > hi_u || lo_v > hi_v) return empty;
  return {int64_t(lo_u), int64_t(hi_u), int64_t(lo_v), int64_t(hi_v)};
}

template <typename scalar_t>
void forward_view(const scalar_t* means, const scalar_t* conics, const scalar_t* amps, int64_t n,
                  int64_t height, int64_t width, double cutoff, scalar_t* image) {
  const scalar_t limit = scalar_t(cutoff * cutoff);
  const int64_t tiles_u = (width + kTile - 1) / kTile, tiles_v = (height + kTile - 1) / kTile;
  const int64_t n_tiles = tiles_u * tiles_v;
  std::vector<Rect> rects(n);
  std::vector<int64_t> pairs(n);
  for (int64_t g = 0; g < n; ++g) {
    rects[g] = footprint(means + 2 * g, conics + 3 * g, amps[g], cutoff, height, width);
    const Rect& r = rects[g];
    pairs[g] = r.u0 > r.u1 ? 0 : (r.u1 / kTile - r.u0 / kTile + 1) * (r.v1 / kTile - r.v0 / kTile + 1);
  }
  std::vector<int64_t> offsets(n_tiles + 1), cursor(n_tiles), list;
  for (int64_t first = 0; first < n;) {
    int64_t last = first, total = 0;
    while (last < n && (last == first || total + pairs[last] <= kPairBudget)) total += pairs[last++];
    std::fill(offsets.begin(), offsets.end(), 0);
    for (int64_t g = first; g < last; ++g) {
      const Rect& r = rects[g];
      if (pairs[g] == 0) continue;
      for (int64_t ty = r.v0 / kTile; ty <= r.v1 / kTile; ++ty)
        for (int64_t tx = r.u0 / kTile; tx <= r.u1 / kTile; ++tx) ++offsets[ty * tiles_u + tx + 1];
    }
    for (int64_t t = 0; t < n_tiles; ++t) offsets[t + 1] += offsets[t];
    std::copy(offsets.begin(), offsets.end() - 1, cursor.begin());
    list.resize(total);
    for (int64_t g = first; g < last; ++g) {
      const Rect& r = rects[g];
      if (pairs[g] == 0) continue;
      for (int64_t ty = r.v0 / kTile; ty <= r.v1 / kTile; ++ty)
        for (int64_t tx = r.u0 / kTile; tx <= r.u1 / kTile; ++tx) list[cursor[ty * tiles_u + tx]++] = g;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t tu0 = (t % tiles_u) * kTile, tv0 = (t / tiles_u) * kTile;
      for (int64_t k = offsets[t]; k < offsets[t + 1]; ++k) {
        const int64_t g = list[k];
        const Rect& r = rects[g];
        const scalar_t mu = means[2 * g], mv = means[2 * g + 1];
        const scalar_t a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
        const scalar_t amp = amps[g];
        const int64_t v_end = std::min(r.v1, tv0 + kTile - 1), u_end = std::min(r.u1, tu0 + kTile - 1);
        for (int64_t v = std::max(r.v0, tv0); v <= v_end; ++v) {
          const scalar_t dv = scalar_t(v) - mv;
          scalar_t* row = image + v * width;
          for (int64_t u = std::max(r.u0, tu0); u <= u_end; ++u) {
            const scalar_t du = scalar_t(u) - mu;
            const scalar_t power = a * du * du + scalar_t(2) * b * du * dv + c * dv * dv;
            if (power <= limit) row[u] += amp * std::exp(scalar_t(-0.5) * power);
          }
        }
      }
    }
    first = last;
  }
}

template <typename scalar_t>
void backward_gaussian(const scalar_t* mean, const scalar_t* conic, scalar_t amp,
                       const scalar_t* grad_image, int64_t height, int64_t width, double cutoff,
                       scalar_t* grad_mean, scalar_t* grad_conic, scalar_t* grad_amp) {
  const Rect r = footprint(mean, conic, amp, cutoff, height, width);
  if (r.u0 > r.u1) return;
  const scalar_t limit = scalar_t(cutoff * cutoff);
  const scalar_t mu = mean[0], mv = mean[1], a = conic[0], b = conic[1], c = conic[2];
  double g_amp = 0, g_u = 0, g_v = 0, g_a = 0, g_b = 0, g_c = 0;
  for (int64_t v = r.v0; v <= r.v1; ++v) {
    const scalar_t dv = scalar_t(v) - mv;
    const scalar_t* row = grad_image + v * width;
    for (int64_t u = r.u0; u <= r.u1; ++u) {
      const scalar_t du = scalar_t(u) - mu;
      const scalar_t power = a * du * du + scalar_t(2) * b * du * dv + c * dv * dv;
      if (!(power <= limit)) continue;
      const double w = std::exp(scalar_t(-0.5) * power);
      const double gw = double(row[u]) * w;
      g_amp += gw;
      const double g_power = -0.5 * gw * double(amp);
      g_u -= g_power * 2.0 * (double(a) * du + double(b) * dv);
      g_v -= g_power * 2.0 * (double(b) * du + double(c) * dv);
      g_a += g_power * du * du;
      g_b += g_power * 2.0 * du * dv;
      g_c += g_power * dv * dv;
    }
  }
  grad_mean[0] = scalar_t(g_u);
  grad_mean[1] = scalar_t(g_v);
  grad_conic[0] = scalar_t(g_a);
  grad_conic[1] = scalar_t(g_b);
  grad_conic[2] = scalar_t(g_c);
  *grad_amp = scalar_t(g_amp);
}

template <typename scalar_t>
void backward_all(const scalar_t* m, const scalar_t* q, const scalar_t* s, const scalar_t* gi, int64_t views,
                  int64_t n, int64_t height, int64_t width, double cutoff, scalar_t* gm, scalar_t* gq,
                  scalar_t* gs) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(at::get_num_threads())
  for (int64_t k = 0; k < views * n; ++k) {
    backward_gaussian(m + 2 * k, q + 3 * k, s[k], gi + (k / n) * height * width, height, width, cutoff,
                      gm + 2 * k, gq + 3 * k, gs + k);
  }
}

}  // namespace

torch::Tensor rasterize_forward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                const torch::Tensor& amps, int64_t height, int64_t width,
                                double cutoff) {
  const auto means_c = means2d.contiguous(), conics_c = conics.contiguous(), amps_c = amps.contiguous();
  const int64_t views = means_c.size(0), n = means_c.size(1);
  auto image = torch::zeros({views, height, width}, means_c.options());
  AT_DISPATCH_FLOATING_TYPES(means_c.scalar_type(), "rasterize_forward", [&] {
    for (int64_t i = 0; i < views; ++i) {
      forward_view(means_c.data_ptr<scalar_t>() + i * n * 2, conics_c.data_ptr<scalar_t>() + i * n * 3,
                   amps_c.data_ptr<scalar_t>() + i * n, n, height, width, cutoff,
                   image.data_ptr<scalar_t>() + i * height * width);
    }
  });
  return image;
}

std::vector<torch::Tensor> rasterize_backward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                              const torch::Tensor& amps, const torch::Tensor& grad_image,
                                              double cutoff) {
  const auto means_c = means2d.contiguous(), conics_c = conics.contiguous(), amps_c = amps.contiguous();
  const auto grad_c = grad_image.contiguous();
  const int64_t views = means_c.size(0), n = means_c.size(1);
  const int64_t height = grad_c.size(1), width = grad_c.size(2);
  auto grad_means = torch::zeros_like(means_c), grad_conics = torch::zeros_like(conics_c);
  auto grad_amps = torch::zeros_like(amps_c);
  AT_DISPATCH_FLOATING_TYPES(means_c.scalar_type(), "rasterize_backward", [&] {
    backward_all(means_c.data_ptr<scalar_t>(), conics_c.data_ptr<scalar_t>(), amps_c.data_ptr<scalar_t>(),
                 grad_c.data_ptr<scalar_t>(), views, n, height, width, cutoff,
                 grad_means.data_ptr<scalar_t>(), grad_conics.data_ptr<scalar_t>(),
                 grad_amps.data_ptr<scalar_t>());
  });
  return {grad_means, grad_conics, grad_amps};
}

}  // namespace nr_gaussians
