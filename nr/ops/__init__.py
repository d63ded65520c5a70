"""The X-ray transform and the classical reconstructions built on it.

- `project` / `backproject`: the cone/parallel-beam X-ray transform and its exact adjoint
  (compiled CPU kernel, torch twin elsewhere); differentiable. `XRayOperator` holds both for
  one scan (forward / adjoint), for solvers and samplers.
- `fdk`: FDK (cone) / FBP (parallel) with TIGRE's filters.
- `sart`, `os_sart`, `cgls`, `asd_pocs`: iterative baselines with TIGRE's defaults.
- `add_tigre_noise`, `simulate_projections`: TIGRE's CTnoise model.

`nr.ops.rtk` (not imported here; needs `pip install itk-rtk`) runs RTK's filters on the same
geometry: the independent reference of the tests and of `python -m pipelines.benchmark rtk`.
"""

from nr.ops.fdk import FILTERS, fdk
from nr.ops.iterative import (
    ASDPOCSConfig,
    CGLSConfig,
    SARTConfig,
    asd_pocs,
    cgls,
    os_sart,
    sart,
)
from nr.ops.noise import NoiseConfig, add_tigre_noise, simulate_projections
from nr.ops.projector import XRayOperator, backproject, project

__all__ = [
    "FILTERS",
    "ASDPOCSConfig",
    "CGLSConfig",
    "NoiseConfig",
    "SARTConfig",
    "XRayOperator",
    "add_tigre_noise",
    "asd_pocs",
    "backproject",
    "cgls",
    "fdk",
    "os_sart",
    "project",
    "sart",
    "simulate_projections",
]
