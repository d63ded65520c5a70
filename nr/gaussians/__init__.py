"""R2-Gaussian: 3D Gaussians for tomography, with a compiled X-ray rasterizer and voxelizer.

The reconstruction recipe that fits them through the training loop is
`nr.recon.reconstruct_gaussians` (a layer below: the model does not depend on the loop).
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
