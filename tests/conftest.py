"""One torch thread per pytest-xdist worker.

`make test` runs 2 workers on 2 cores; with torch's default of one thread per core each, the
4 OpenMP threads oversubscribe the cores and their spin-waits make the many small kernels of
the tests several times slower.
"""

import os

import torch

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)
