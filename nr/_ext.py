"""Access to the compiled CPU kernels (``nr.<package>._C``) with a clear remedy when absent."""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

import torch

REBUILD = "pip install --no-build-isolation -e . (or `make test`), after torch is installed"


@cache
def compiled(package: str) -> ModuleType | None:
    """The compiled kernel module of ``nr.<package>`` or None when it was not built."""
    try:
        return importlib.import_module(f"nr.{package}._C")
    except ImportError:
        return None


def require_compiled(package: str) -> ModuleType:
    module = compiled(package)
    if module is None:
        raise ImportError(f"the compiled kernels nr.{package}._C are not built; run: {REBUILD}")
    return module


def use_compiled(package: str, backend: str, *tensors: torch.Tensor) -> bool:
    """Decide between the compiled kernel and the torch twin.

    Args:
        package: "ops", "fields" or "gaussians".
        backend: "auto" (compiled kernel for CPU tensors when built, torch twin
            otherwise, e.g. on CUDA), "compiled" or "torch".
        tensors: the inputs; all must be on the CPU for the compiled kernel.
    """
    if backend not in ("auto", "compiled", "torch"):
        raise ValueError(f"backend: expected 'auto', 'compiled' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if backend == "compiled":
        if not on_cpu:
            raise ValueError("backend='compiled' runs on CPU tensors only; use 'auto' or 'torch'")
        require_compiled(package)
        return True
    return on_cpu and compiled(package) is not None
