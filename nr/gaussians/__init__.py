"""R2-Gaussian: 3D Gaussians for tomography, with a compiled X-ray rasterizer and voxelizer.

        volume, history = reconstruct_gaussians(projections, geo, GaussianReconConfig.default())

`nr.gaussians.recon` drives `nr.train.Trainer` and is not imported here, so the model and
its kernels do not depend on the training loop.
"""

from nr.gaussians.density import DensityControl
from nr.gaussians.init import InitConfig, initial_points
from nr.gaussians.model import GaussianConfig, GaussianModel
from nr.gaussians.projection import Cameras, project, project_torch
from nr.gaussians.rasterize import rasterize, rasterize_torch
from nr.gaussians.voxelize import voxelize, voxelize_torch

__all__ = [
    "Cameras",
    "DensityControl",
    "GaussianConfig",
    "GaussianModel",
    "InitConfig",
    "initial_points",
    "project",
    "project_torch",
    "rasterize",
    "rasterize_torch",
    "voxelize",
    "voxelize_torch",
]
