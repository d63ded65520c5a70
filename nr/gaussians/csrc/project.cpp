// EWA projection of 3D Gaussians into detector views (per view x Gaussian), forward and backward.
//
// The twin is nr/gaussians/projection.py::project_torch; the maths is in its module docstring.
// Per Gaussian the inputs are the centre m, the scales s, the quaternion q (normalised here) and
// the density rho, from which the covariance Sigma = R diag(s^2) R^T and the weight
// w = rho sqrt(2 pi) s1 s2 s3 are formed once; per view the camera rows (P_u, P_v, n), the (u, v)
// offsets and, for cone beams, the source. Outputs: the pixel centre (u, v), the conic (inverse
// of the 2x2 footprint covariance S2 = J2 Sigma J2^T) and amp = w |det J| / sqrt(det S2).
// Internally in double precision; the backward is the hand-derived chain rule of the forward,
// down to the scales, the unnormalised quaternion and the density.
#include "kernels.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace nr_gaussians {
namespace {

using Vec = std::array<double, 3>;

constexpr double kSqrt2Pi = 2.5066282746310002;
constexpr double kNormEps = 1e-12;  // torch.nn.functional.normalize's default eps

inline double dot(const Vec& a, const Vec& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
inline Vec cross(const Vec& a, const Vec& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
inline Vec scaled(const Vec& a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }
inline void add_to(Vec& a, const Vec& b, double s = 1.0) {
  for (int i = 0; i < 3; ++i) a[i] += s * b[i];
}

// One Gaussian's shape: normalised quaternion, rotation, scales, covariance and weight.
struct Shape {
  double q[4], norm, rot[3][3], s[3], cov[3][3], w;

  template <typename scalar_t>
  Shape(const scalar_t* scales, const scalar_t* quat, double rho) {
    norm = std::sqrt(double(quat[0]) * quat[0] + double(quat[1]) * quat[1] +
                     double(quat[2]) * quat[2] + double(quat[3]) * quat[3]);
    const double inv = 1.0 / std::max(norm, kNormEps);
    for (int i = 0; i < 4; ++i) q[i] = quat[i] * inv;
    const double qw = q[0], x = q[1], y = q[2], z = q[3];
    rot[0][0] = 1 - 2 * (y * y + z * z);
    rot[0][1] = 2 * (x * y - qw * z);
    rot[0][2] = 2 * (x * z + qw * y);
    rot[1][0] = 2 * (x * y + qw * z);
    rot[1][1] = 1 - 2 * (x * x + z * z);
    rot[1][2] = 2 * (y * z - qw * x);
    rot[2][0] = 2 * (x * z - qw * y);
    rot[2][1] = 2 * (y * z + qw * x);
    rot[2][2] = 1 - 2 * (x * x + y * y);
    for (int i = 0; i < 3; ++i) s[i] = scales[i];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) {
        double sum = 0;
        for (int k = 0; k < 3; ++k) sum += rot[r][k] * s[k] * s[k] * rot[c][k];
        cov[r][c] = sum;
      }
    w = rho * kSqrt2Pi * s[0] * s[1] * s[2];
  }

  Vec apply(const Vec& v) const {
    return {cov[0][0] * v[0] + cov[0][1] * v[1] + cov[0][2] * v[2],
            cov[1][0] * v[0] + cov[1][1] * v[1] + cov[1][2] * v[2],
            cov[2][0] * v[0] + cov[2][1] * v[1] + cov[2][2] * v[2]};
  }

  // Gradients w.r.t. scales, raw quaternion and density from those w.r.t. the (symmetric)
  // covariance `gcov` (dL = sum gcov_rc dSigma_rc) and the weight `gw`.
  void backward(const double gcov[3][3], double gw, double rho, double g_scales[3], double g_quat[4],
                double* g_rho) const {
    // Sigma = M M^T with M = R diag(s): dL/dM = (G + G^T) M.
    double g[3][3];  // dL/dR
    for (int j = 0; j < 3; ++j) g_scales[j] = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double gm = 0;
        for (int k = 0; k < 3; ++k) gm += (gcov[i][k] + gcov[k][i]) * rot[k][j] * s[j];
        g_scales[j] += gm * rot[i][j];
        g[i][j] = gm * s[j];
      }
    g_scales[0] += gw * rho * kSqrt2Pi * s[1] * s[2];
    g_scales[1] += gw * rho * kSqrt2Pi * s[0] * s[2];
    g_scales[2] += gw * rho * kSqrt2Pi * s[0] * s[1];
    *g_rho = gw * kSqrt2Pi * s[0] * s[1] * s[2];
    const double qw = q[0], x = q[1], y = q[2], z = q[3];
    const double gq[4] = {
        2 * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]),
        2 * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2 * x * g[1][1] - qw * g[1][2] + z * g[2][0] +
             qw * g[2][1] - 2 * x * g[2][2]),
        2 * (-2 * y * g[0][0] + x * g[0][1] + qw * g[0][2] + x * g[1][0] + z * g[1][2] - qw * g[2][0] +
             z * g[2][1] - 2 * y * g[2][2]),
        2 * (-2 * z * g[0][0] - qw * g[0][1] + x * g[0][2] + qw * g[1][0] - 2 * z * g[1][1] + y * g[1][2] +
             x * g[2][0] + y * g[2][1])};
    // q_hat = q / max(|q|, eps): project out the radial part (none when the norm is clamped).
    if (norm > kNormEps) {
      const double radial = q[0] * gq[0] + q[1] * gq[1] + q[2] * gq[2] + q[3] * gq[3];
      for (int i = 0; i < 4; ++i) g_quat[i] = (gq[i] - q[i] * radial) / norm;
    } else {
      for (int i = 0; i < 4; ++i) g_quat[i] = gq[i] / kNormEps;
    }
  }
};

struct Camera {
  Vec source, pu, pv, normal;
  double u0, v0;
  bool cone;
};

template <typename scalar_t>
std::vector<Camera> cameras(const scalar_t* sources, const scalar_t* rows, const scalar_t* offsets,
                            int64_t views, bool cone) {
  std::vector<Camera> out(views);
  for (int64_t k = 0; k < views; ++k) {
    Camera& c = out[k];
    for (int i = 0; i < 3; ++i) {
      c.source[i] = sources[3 * k + i];
      c.pu[i] = rows[9 * k + i];
      c.pv[i] = rows[9 * k + 3 + i];
      c.normal[i] = rows[9 * k + 6 + i];
    }
    c.u0 = offsets[2 * k];
    c.v0 = offsets[2 * k + 1];
    c.cone = cone;
  }
  return out;
}

// Everything the backward needs about one (view, Gaussian) pair.
struct Projected {
  Vec j0, j1, j2;
  double uA, vB, inv_z, inv_r, s00, s01, s11, det2, det_j;
  bool in_front;
  double u, v, conic[3], amp;
};

Projected project_one(const Vec& m, const Shape& shape, const Camera& c) {
  Projected p;
  if (c.cone) {
    const Vec a{m[0] - c.source[0], m[1] - c.source[1], m[2] - c.source[2]};
    const double depth = dot(a, c.normal);
    p.in_front = depth > 0;
    p.inv_z = p.in_front ? 1.0 / depth : 1.0;  // as the twin: finite values, zero amplitude
    p.inv_r = 1.0 / std::sqrt(dot(a, a));
    p.uA = dot(a, c.pu) * p.inv_z;
    p.vB = dot(a, c.pv) * p.inv_z;
    p.u = c.u0 + p.uA;
    p.v = c.v0 + p.vB;
    for (int k = 0; k < 3; ++k) {
      p.j0[k] = (c.pu[k] - p.uA * c.normal[k]) * p.inv_z;
      p.j1[k] = (c.pv[k] - p.vB * c.normal[k]) * p.inv_z;
      p.j2[k] = a[k] * p.inv_r;
    }
  } else {
    p.in_front = true;
    p.u = c.u0 + dot(c.pu, m);
    p.v = c.v0 + dot(c.pv, m);
    p.j0 = c.pu;
    p.j1 = c.pv;
    p.j2 = c.normal;
  }
  const Vec sj0 = shape.apply(p.j0), sj1 = shape.apply(p.j1);
  p.s00 = dot(p.j0, sj0);
  p.s01 = dot(p.j0, sj1);
  p.s11 = dot(p.j1, sj1);
  p.det2 = p.s00 * p.s11 - p.s01 * p.s01;
  const double inv_det2 = 1.0 / p.det2;
  p.conic[0] = p.s11 * inv_det2;
  p.conic[1] = -p.s01 * inv_det2;
  p.conic[2] = p.s00 * inv_det2;
  p.det_j = dot(p.j0, cross(p.j1, p.j2));
  p.amp = p.in_front ? shape.w * std::fabs(p.det_j) / std::sqrt(p.det2) : 0.0;
  return p;
}

template <typename scalar_t>
void forward_all(const scalar_t* means, const scalar_t* scales, const scalar_t* quats, const scalar_t* densities,
                 const std::vector<Camera>& cams, int64_t n, scalar_t* means2d, scalar_t* conics,
                 scalar_t* amps) {
  const int64_t views = cams.size();
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t g = 0; g < n; ++g) {
    const Shape shape(scales + 3 * g, quats + 4 * g, double(densities[g]));
    const Vec m{double(means[3 * g]), double(means[3 * g + 1]), double(means[3 * g + 2])};
    for (int64_t k = 0; k < views; ++k) {
      const Projected p = project_one(m, shape, cams[k]);
      const int64_t i = k * n + g;
      means2d[2 * i] = scalar_t(p.u);
      means2d[2 * i + 1] = scalar_t(p.v);
      for (int j = 0; j < 3; ++j) conics[3 * i + j] = scalar_t(p.conic[j]);
      amps[i] = scalar_t(p.amp);
    }
  }
}

template <typename scalar_t>
void backward_all(const scalar_t* means, const scalar_t* scales, const scalar_t* quats, const scalar_t* densities,
                  const std::vector<Camera>& cams, int64_t n, const scalar_t* g_means2d,
                  const scalar_t* g_conics, const scalar_t* g_amps, scalar_t* g_means, scalar_t* g_scales,
                  scalar_t* g_quats, scalar_t* g_densities) {
  const int64_t views = cams.size();
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t g = 0; g < n; ++g) {
    const double rho = densities[g];
    const Shape shape(scales + 3 * g, quats + 4 * g, rho);
    const Vec m{double(means[3 * g]), double(means[3 * g + 1]), double(means[3 * g + 2])};
    const double w = shape.w;
    Vec gm{0, 0, 0};
    double gcov[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};  // upper triangle until mirrored
    double gw = 0;
    for (int64_t k = 0; k < views; ++k) {
      const Camera& c = cams[k];
      const Projected p = project_one(m, shape, c);
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
      const double inv_root = 1.0 / std::sqrt(p.det2);
      gw += gamp * std::fabs(p.det_j) * inv_root;
      const double g_detj = gamp * w * (p.det_j < 0 ? -1.0 : 1.0) * inv_root;
      const double g_det2 = -0.5 * gamp * p.amp / p.det2;
      gs00 += g_det2 * p.s11;
      gs11 += g_det2 * p.s00;
      gs01 += -2.0 * g_det2 * p.s01;
      // S2_ij = J_i Sigma J_j.
      for (int r = 0; r < 3; ++r)
        for (int q = r; q < 3; ++q)
          gcov[r][q] += gs00 * p.j0[r] * p.j0[q] + gs11 * p.j1[r] * p.j1[q] +
                        0.5 * gs01 * (p.j0[r] * p.j1[q] + p.j1[r] * p.j0[q]);
      if (!c.cone) {
        add_to(gm, c.pu, gu);
        add_to(gm, c.pv, gv);
        continue;
      }
      const Vec sj0 = shape.apply(p.j0), sj1 = shape.apply(p.j1);
      Vec gj0 = scaled(sj0, 2.0 * gs00), gj1 = scaled(sj1, 2.0 * gs11);
      add_to(gj0, sj1, gs01);
      add_to(gj1, sj0, gs01);
      add_to(gj0, cross(p.j1, p.j2), g_detj);
      add_to(gj1, cross(p.j2, p.j0), g_detj);
      const Vec gj2 = scaled(cross(p.j0, p.j1), g_detj);
      // With a = m - source, A = P_u.a, B = P_v.a, Z = n.a: J0 = (P_u - (A/Z) n) / Z, J1
      // likewise with (P_v, B), J2 = a / |a|, u = u0 + A/Z, v = v0 + B/Z.
      const double iz = p.inv_z, iz2 = iz * iz;
      const double g0n = dot(gj0, c.normal), g1n = dot(gj1, c.normal);
      add_to(gm, c.normal,
             (2.0 * (p.uA * g0n + p.vB * g1n) - dot(gj0, c.pu) - dot(gj1, c.pv)) * iz2 -
                 (gu * p.uA + gv * p.vB) * iz);
      add_to(gm, c.pu, gu * iz - g0n * iz2);
      add_to(gm, c.pv, gv * iz - g1n * iz2);
      add_to(gm, gj2, p.inv_r);
      add_to(gm, p.j2, -dot(gj2, p.j2) * p.inv_r);
    }
    for (int i = 0; i < 3; ++i) g_means[3 * g + i] = scalar_t(gm[i]);
    for (int r = 1; r < 3; ++r)
      for (int q = 0; q < r; ++q) gcov[r][q] = gcov[q][r];
    double gs[3], gq[4], grho;
    shape.backward(gcov, gw, rho, gs, gq, &grho);
    for (int i = 0; i < 3; ++i) g_scales[3 * g + i] = scalar_t(gs[i]);
    for (int i = 0; i < 4; ++i) g_quats[4 * g + i] = scalar_t(gq[i]);
    g_densities[g] = scalar_t(grho);
  }
}

}  // namespace

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& scales,
                                           const torch::Tensor& quaternions, const torch::Tensor& densities,
                                           const torch::Tensor& sources, const torch::Tensor& rows,
                                           const torch::Tensor& offsets, bool cone) {
  const auto m = means.contiguous(), s = scales.contiguous(), q = quaternions.contiguous();
  const auto d = densities.contiguous(), src = sources.contiguous(), r = rows.contiguous();
  const auto o = offsets.contiguous();
  const int64_t views = src.size(0), n = m.size(0);
  auto means2d = torch::empty({views, n, 2}, m.options());
  auto conics = torch::empty({views, n, 3}, m.options());
  auto amps = torch::empty({views, n}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "project_forward", [&] {
    const auto cams = cameras(src.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), views, cone);
    forward_all(m.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                cams, n, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), amps.data_ptr<scalar_t>());
  });
  return {means2d, conics, amps};
}

std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& scales,
                                            const torch::Tensor& quaternions, const torch::Tensor& densities,
                                            const torch::Tensor& sources, const torch::Tensor& rows,
                                            const torch::Tensor& offsets, bool cone,
                                            const torch::Tensor& grad_means2d, const torch::Tensor& grad_conics,
                                            const torch::Tensor& grad_amps) {
  const auto m = means.contiguous(), s = scales.contiguous(), q = quaternions.contiguous();
  const auto d = densities.contiguous(), src = sources.contiguous(), r = rows.contiguous();
  const auto o = offsets.contiguous();
  const auto gm2 = grad_means2d.contiguous(), gc = grad_conics.contiguous(), ga = grad_amps.contiguous();
  const int64_t views = src.size(0), n = m.size(0);
  auto g_means = torch::empty_like(m), g_scales = torch::empty_like(s);
  auto g_quats = torch::empty_like(q), g_densities = torch::empty_like(d);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "project_backward", [&] {
    const auto cams = cameras(src.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), views, cone);
    backward_all(m.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                 cams, n, gm2.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(),
                 g_means.data_ptr<scalar_t>(), g_scales.data_ptr<scalar_t>(), g_quats.data_ptr<scalar_t>(),
                 g_densities.data_ptr<scalar_t>());
  });
  return {g_means, g_scales, g_quats, g_densities};
}

}  // namespace nr_gaussians
