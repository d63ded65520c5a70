// Compiled CPU kernels of nr.gaussians: X-ray projection, rasterization and voxelization of Gaussians.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace nr_gaussians {

torch::Tensor rasterize_forward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                const torch::Tensor& amps, int64_t height, int64_t width,
                                double cutoff);

std::vector<torch::Tensor> rasterize_backward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                              const torch::Tensor& amps, const torch::Tensor& grad_image,
                                              double cutoff);

torch::Tensor voxelize_forward(const torch::Tensor& means, const torch::Tensor& precisions,
                               const torch::Tensor& densities, const std::vector<double>& origin,
                               const std::vector<double>& spacing, const std::vector<int64_t>& shape,
                               double cutoff);

std::vector<torch::Tensor> voxelize_backward(const torch::Tensor& means, const torch::Tensor& precisions,
                                             const torch::Tensor& densities, const torch::Tensor& grad_volume,
                                             const std::vector<double>& origin,
                                             const std::vector<double>& spacing, double cutoff);

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& scales,
                                           const torch::Tensor& quaternions, const torch::Tensor& densities,
                                           const torch::Tensor& sources, const torch::Tensor& rows,
                                           const torch::Tensor& offsets, bool cone);

std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& scales,
                                            const torch::Tensor& quaternions, const torch::Tensor& densities,
                                            const torch::Tensor& sources, const torch::Tensor& rows,
                                            const torch::Tensor& offsets, bool cone,
                                            const torch::Tensor& grad_means2d, const torch::Tensor& grad_conics,
                                            const torch::Tensor& grad_amps);

}  // namespace nr_gaussians
