// EWA projection of 3D Gaussians into detector views (per view x Gaussian), forward and backward.
//
// The twin is nr/gaussians/projection.py::project_torch; the maths is in its module docstring.
// Per Gaussian the inputs are the centre m, the covariance Sigma (6 packed entries xx, xy, xz,
// yy, yz, zz) and w = rho sqrt(2 pi) s1 s2 s3; per view the camera rows (P_u, P_v, n), the
// (u, v) offsets and, for cone beams, the source. Outputs: the pixel centre (u, v), the conic
// (inverse of the 2x2 footprint covariance S2 = J2 Sigma J2^T) and amp = w |det J| / sqrt(det S2).
// Internally in double precision; the backward is the hand-derived chain rule of the forward.
#include "kernels.h"

#include <omp.h>

#include <array>
#include <cmath>

namespace nr_gaussians {
namespace {

using Vec = std::array<double, 3>;

inline double dot(const Vec& a, const Vec& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
inline Vec cross(const Vec& a, const Vec& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
inline Vec scaled(const Vec& a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }
inline void add_to(Vec& a, const Vec& b, double s = 1.0) {
  for (int i = 0; i < 3; ++i) a[i] += s * b[i];
}

struct Sym3 {
  double m[3][3];
  explicit Sym3(const double* p) {  // packed xx, xy, xz, yy, yz, zz
    m[0][0] = p[0]; m[0][1] = m[1][0] = p[1]; m[0][2] = m[2][0] = p[2];
    m[1][1] = p[3]; m[1][2] = m[2][1] = p[4]; m[2][2] = p[5];
  }
  Vec apply(const Vec& v) const {
    return {dot({m[0][0], m[0][1], m[0][2]}, v), dot({m[1][0], m[1][1], m[1][2]}, v),
            dot({m[2][0], m[2][1], m[2][2]}, v)};
  }
};

struct Camera {
  Vec source, pu, pv, normal;
  double u0, v0;
  bool cone;
};

template <typename scalar_t>
Camera camera(const scalar_t* source, const scalar_t* rows, const scalar_t* offset, bool cone) {
  Camera c;
  for (int i = 0; i < 3; ++i) {
    c.source[i] = source[i];
    c.pu[i] = rows[i];
    c.pv[i] = rows[3 + i];
    c.normal[i] = rows[6 + i];
  }
  c.u0 = offset[0];
  c.v0 = offset[1];
  c.cone = cone;
  return c;
}

// Everything the backward needs about one (view, Gaussian) pair.
struct Projected {
  Vec a, j0, j1, j2;
  double A, B, Z, r, s00, s01, s11, det2, det_j;
  bool in_front;
  double u, v, conic[3], amp;
};

Projected project_one(const Vec& m, const Sym3& cov, double w, const Camera& c) {
  Projected p;
  if (c.cone) {
    p.a = {m[0] - c.source[0], m[1] - c.source[1], m[2] - c.source[2]};
    p.Z = dot(p.a, c.normal);
    p.in_front = p.Z > 0;
    if (!p.in_front) p.Z = 1.0;  // as the twin: finite values, zero amplitude
    p.A = dot(p.a, c.pu);
    p.B = dot(p.a, c.pv);
    p.r = std::sqrt(dot(p.a, p.a));
    const double uA = p.A / p.Z, vB = p.B / p.Z;
    p.u = c.u0 + uA;
    p.v = c.v0 + vB;
    for (int k = 0; k < 3; ++k) {
      p.j0[k] = (c.pu[k] - uA * c.normal[k]) / p.Z;
      p.j1[k] = (c.pv[k] - vB * c.normal[k]) / p.Z;
      p.j2[k] = p.a[k] / p.r;
    }
  } else {
    p.in_front = true;
    p.u = c.u0 + dot(c.pu, m);
    p.v = c.v0 + dot(c.pv, m);
    p.j0 = c.pu;
    p.j1 = c.pv;
    p.j2 = c.normal;
  }
  const Vec sj0 = cov.apply(p.j0), sj1 = cov.apply(p.j1);
  p.s00 = dot(p.j0, sj0);
  p.s01 = dot(p.j0, sj1);
  p.s11 = dot(p.j1, sj1);
  p.det2 = p.s00 * p.s11 - p.s01 * p.s01;
  p.conic[0] = p.s11 / p.det2;
  p.conic[1] = -p.s01 / p.det2;
  p.conic[2] = p.s00 / p.det2;
  p.det_j = dot(p.j0, cross(p.j1, p.j2));
  p.amp = p.in_front ? w * std::fabs(p.det_j) / std::sqrt(p.det2) : 0.0;
  return p;
}

template <typename scalar_t>
void forward_all(const scalar_t* means, const scalar_t* covs, const scalar_t* weights, const scalar_t* sources,
                 const scalar_t* rows, const scalar_t* offsets, bool cone, int64_t views, int64_t n,
                 scalar_t* means2d, scalar_t* conics, scalar_t* amps) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t g = 0; g < n; ++g) {
    double packed[6];
    for (int i = 0; i < 6; ++i) packed[i] = covs[6 * g + i];
    const Sym3 cov(packed);
    const Vec m{double(means[3 * g]), double(means[3 * g + 1]), double(means[3 * g + 2])};
    for (int64_t k = 0; k < views; ++k) {
      const Camera c = camera(sources + 3 * k, rows + 9 * k, offsets + 2 * k, cone);
      const Projected p = project_one(m, cov, double(weights[g]), c);
      const int64_t i = k * n + g;
      means2d[2 * i] = scalar_t(p.u);
      means2d[2 * i + 1] = scalar_t(p.v);
      for (int j = 0; j < 3; ++j) conics[3 * i + j] = scalar_t(p.conic[j]);
      amps[i] = scalar_t(p.amp);
    }
  }
}

template <typename scalar_t>
void backward_all(const scalar_t* means, const scalar_t* covs, const scalar_t* weights, const scalar_t* sources,
                  const scalar_t* rows, const scalar_t* offsets, bool cone, int64_t views, int64_t n,
                  const scalar_t* g_means2d, const scalar_t* g_conics, const scalar_t* g_amps,
                  scalar_t* g_means, scalar_t* g_covs, scalar_t* g_weights) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t g = 0; g < n; ++g) {
    double packed[6];
    for (int i = 0; i < 6; ++i) packed[i] = covs[6 * g + i];
    const Sym3 cov(packed);
    const Vec m{double(means[3 * g]), double(means[3 * g + 1]), double(means[3 * g + 2])};
    const double w = weights[g];
    Vec gm{0, 0, 0};
    double gcov[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
    double gw = 0;
    for (int64_t k = 0; k < views; ++k) {
      const Camera c = camera(sources + 3 * k, rows + 9 * k, offsets + 2 * k, cone);
      const Projected p = project_one(m, cov, w, c);
      if (!p.in_front) continue;  // Gaussians behind the source are inert (as in the twin)
      const int64_t i = k * n + g;
      const double gu = g_means2d[2 * i], gv = g_means2d[2 * i + 1];
      const double ga = g_conics[3 * i], gb = g_conics[3 * i + 1], gc = g_conics[3 * i + 2];
      const double gamp = g_amps[i];
      // conic = S2^-1: dL/dS2 = -C G C with G the symmetric gradient of the conic matrix.
      const double c00 = p.conic[0], c01 = p.conic[1], c11 = p.conic[2];
      const double G00 = ga, G01 = 0.5 * gb, G11 = gc;
      const double t00 = c00 * G00 + c01 * G01, t01 = c00 * G01 + c01 * G11;
      const double t10 = c01 * G00 + c11 * G01, t11 = c01 * G01 + c11 * G11;
      double gs00 = -(t00 * c00 + t01 * c01);
      double gs01 = -(t00 * c01 + t01 * c11) - (t10 * c00 + t11 * c01);  // both off-diagonals
      double gs11 = -(t10 * c01 + t11 * c11);
      // amp = w |det J| det2^(-1/2).
      const double root = std::sqrt(p.det2);
      gw += gamp * std::fabs(p.det_j) / root;
      const double g_detj = gamp * w * (p.det_j < 0 ? -1.0 : 1.0) / root;
      const double g_det2 = -0.5 * gamp * p.amp / p.det2;
      gs00 += g_det2 * p.s11;
      gs11 += g_det2 * p.s00;
      gs01 += -2.0 * g_det2 * p.s01;
      // S2_ij = J_i Sigma J_j.
      const Vec sj0 = cov.apply(p.j0), sj1 = cov.apply(p.j1);
      for (int r = 0; r < 3; ++r)
        for (int q = 0; q < 3; ++q)
          gcov[r][q] += gs00 * p.j0[r] * p.j0[q] + gs11 * p.j1[r] * p.j1[q] +
                        0.5 * gs01 * (p.j0[r] * p.j1[q] + p.j1[r] * p.j0[q]);
      if (!cone) {
        add_to(gm, c.pu, gu);
        add_to(gm, c.pv, gv);
        continue;
      }
      Vec gj0 = scaled(sj0, 2.0 * gs00), gj1 = scaled(sj1, 2.0 * gs11);
      add_to(gj0, sj1, gs01);
      add_to(gj1, sj0, gs01);
      add_to(gj0, cross(p.j1, p.j2), g_detj);
      add_to(gj1, cross(p.j2, p.j0), g_detj);
      const Vec gj2 = scaled(cross(p.j0, p.j1), g_detj);
      // J0 = (P_u - (A/Z) n) / Z, J1 likewise with (P_v, B); J2 = a / |a|; u = u0 + A/Z.
      const double Z = p.Z, Z2 = Z * Z, Z3 = Z2 * Z;
      const double g0n = dot(gj0, c.normal), g1n = dot(gj1, c.normal);
      Vec ga_{0, 0, 0};
      add_to(ga_, c.normal, -dot(gj0, c.pu) / Z2 + 2.0 * p.A * g0n / Z3);
      add_to(ga_, c.pu, -g0n / Z2);
      add_to(ga_, c.normal, -dot(gj1, c.pv) / Z2 + 2.0 * p.B * g1n / Z3);
      add_to(ga_, c.pv, -g1n / Z2);
      add_to(ga_, gj2, 1.0 / p.r);
      add_to(ga_, p.a, -dot(gj2, p.a) / (p.r * p.r * p.r));
      add_to(ga_, c.pu, gu / Z);
      add_to(ga_, c.normal, -(gu * p.A + gv * p.B) / Z2);
      add_to(ga_, c.pv, gv / Z);
      add_to(gm, ga_);
    }
    for (int i = 0; i < 3; ++i) g_means[3 * g + i] = scalar_t(gm[i]);
    g_covs[6 * g + 0] = scalar_t(gcov[0][0]);
    g_covs[6 * g + 1] = scalar_t(gcov[0][1] + gcov[1][0]);
    g_covs[6 * g + 2] = scalar_t(gcov[0][2] + gcov[2][0]);
    g_covs[6 * g + 3] = scalar_t(gcov[1][1]);
    g_covs[6 * g + 4] = scalar_t(gcov[1][2] + gcov[2][1]);
    g_covs[6 * g + 5] = scalar_t(gcov[2][2]);
    g_weights[g] = scalar_t(gw);
  }
}

}  // namespace

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& covs,
                                           const torch::Tensor& weights, const torch::Tensor& sources,
                                           const torch::Tensor& rows, const torch::Tensor& offsets, bool cone) {
  const auto m = means.contiguous(), cv = covs.contiguous(), w = weights.contiguous();
  const auto s = sources.contiguous(), r = rows.contiguous(), o = offsets.contiguous();
  const int64_t views = s.size(0), n = m.size(0);
  auto means2d = torch::empty({views, n, 2}, m.options());
  auto conics = torch::empty({views, n, 3}, m.options());
  auto amps = torch::empty({views, n}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "project_forward", [&] {
    forward_all(m.data_ptr<scalar_t>(), cv.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                r.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), cone, views, n, means2d.data_ptr<scalar_t>(),
                conics.data_ptr<scalar_t>(), amps.data_ptr<scalar_t>());
  });
  return {means2d, conics, amps};
}

std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& covs,
                                            const torch::Tensor& weights, const torch::Tensor& sources,
                                            const torch::Tensor& rows, const torch::Tensor& offsets, bool cone,
                                            const torch::Tensor& grad_means2d, const torch::Tensor& grad_conics,
                                            const torch::Tensor& grad_amps) {
  const auto m = means.contiguous(), cv = covs.contiguous(), w = weights.contiguous();
  const auto s = sources.contiguous(), r = rows.contiguous(), o = offsets.contiguous();
  const auto gm2 = grad_means2d.contiguous(), gc = grad_conics.contiguous(), ga = grad_amps.contiguous();
  const int64_t views = s.size(0), n = m.size(0);
  auto g_means = torch::empty_like(m), g_covs = torch::empty_like(cv), g_weights = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "project_backward", [&] {
    backward_all(m.data_ptr<scalar_t>(), cv.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                 r.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), cone, views, n, gm2.data_ptr<scalar_t>(),
                 gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), g_means.data_ptr<scalar_t>(),
                 g_covs.data_ptr<scalar_t>(), g_weights.data_ptr<scalar_t>());
  });
  return {g_means, g_covs, g_weights};
}

}  // namespace nr_gaussians
