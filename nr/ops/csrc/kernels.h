// Compiled CPU kernels of nr.ops: Joseph's projector and its adjoint, FDK's backprojection.
#pragma once

#include <torch/extension.h>

namespace nr_ops {

torch::Tensor projector_forward(const torch::Tensor& volume, const torch::Tensor& vectors,
                                const torch::Tensor& voxel_size, int64_t n_v, int64_t n_u,
                                bool parallel);

torch::Tensor projector_backward(const torch::Tensor& projections, const torch::Tensor& vectors,
                                 const torch::Tensor& voxel_size, int64_t nz, int64_t ny,
                                 int64_t nx, bool parallel);

torch::Tensor fdk_backproject(const torch::Tensor& filtered, const torch::Tensor& maps,
                              const torch::Tensor& x, const torch::Tensor& y,
                              const torch::Tensor& z);

}  // namespace nr_ops
