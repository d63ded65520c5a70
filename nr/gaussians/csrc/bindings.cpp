// Python bindings of nr.gaussians._C (inputs are validated by the Python wrappers).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "X-ray rasterizer and voxelizer of 3D Gaussians (CPU, OpenMP)";
  m.def("project_forward", &nr_gaussians::project_forward, "(G, 3), (G, 3), (G, 4), (G,), cameras -> 2D Gaussians");
  m.def("project_backward", &nr_gaussians::project_backward, "gradients of project_forward");
  m.def("rasterize_forward", &nr_gaussians::rasterize_forward, "(N, G, 2), (N, G, 3), (N, G) -> (N, H, W)");
  m.def("rasterize_backward", &nr_gaussians::rasterize_backward, "gradients of rasterize_forward");
  m.def("voxelize_forward", &nr_gaussians::voxelize_forward, "(G, 3), (G, 6), (G,) -> (Z, Y, X)");
  m.def("voxelize_backward", &nr_gaussians::voxelize_backward, "gradients of voxelize_forward");
}
