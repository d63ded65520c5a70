"""Shared test set-up: one torch thread per pytest-xdist worker, and a short Gaussian fit.

`make test` runs 2 workers on 2 cores; with torch's default of one thread per core each, the
4 OpenMP threads oversubscribe the cores and their spin-waits make the many small kernels of
the tests several times slower.
"""

import dataclasses
import os

import pytest
import torch

import nr.recon

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)


@pytest.fixture
def short_gaussian_warm_start(monkeypatch):
    """`GaussianReconConfig.default()` with a 100-step warm-start fit instead of 3,200: the
    tests that run the default recipe on tiny scans check plumbing, not the fit."""
    short = dataclasses.replace(nr.recon.DEFAULT_GAUSSIAN_WARM_START, steps=100)
    monkeypatch.setattr(nr.recon, "DEFAULT_GAUSSIAN_WARM_START", short)
    return short
