// Python bindings of nr.ops._C (inputs are validated by the Python wrappers).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled CPU kernels of nr.ops";
  m.def("projector_forward", &nr_ops::projector_forward,
        "Joseph projection: (Z, Y, X) volume -> (N, V, U) line integrals", py::arg("volume"),
        py::arg("vectors"), py::arg("voxel_size"), py::arg("n_v"), py::arg("n_u"),
        py::arg("parallel"));
  m.def("projector_backward", &nr_ops::projector_backward,
        "Exact adjoint of projector_forward: (N, V, U) -> (Z, Y, X)", py::arg("projections"),
        py::arg("vectors"), py::arg("voxel_size"), py::arg("nz"), py::arg("ny"), py::arg("nx"),
        py::arg("parallel"));
  m.def("fdk_backproject", &nr_ops::fdk_backproject,
        "FDK's weighted voxel-driven backprojection: (N, V, U) -> (Z, Y, X)",
        py::arg("filtered"), py::arg("maps"), py::arg("x"), py::arg("y"), py::arg("z"));
}
