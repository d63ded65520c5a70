"""Optional tinycudann backend of the hash encoding (CUDA only; untested on this CPU machine).

tinycudann's HashGrid uses its own per-level resolutions and hash layout, so
its tables are not interchangeable with `nr.fields.hashgrid` tables; fields
trained with one backend must be evaluated with the same backend.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from nr.fields.hashgrid import HashGridConfig

TCNN_BACKEND = "tcnn"
TCNN_REMEDY = (
    "tinycudann is not importable: it needs an NVIDIA GPU, CUDA and "
    "`pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch`; "
    "or use backend='auto' (compiled CPU kernel / torch twin)"
)


@cache
def tcnn_available() -> bool:
    """True when CUDA is available and tinycudann imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


class TcnnEncoding(nn.Module):
    """tinycudann's HashGrid with a `HashGridConfig`; ``forward((N, 3)) -> (N, L * F)`` float32."""

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        import tinycudann

        self.config = config
        self.encoding = tinycudann.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": config.n_levels,
                "n_features_per_level": config.features_per_level,
                "log2_hashmap_size": config.log2_hashmap_size,
                "base_resolution": config.base_resolution,
                "per_level_scale": config.per_level_scale,
            },
            dtype=torch.float32,
        )

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoding(points.clamp(0.0, 1.0)).float()


def make_tcnn_encoding(config: HashGridConfig) -> TcnnEncoding:
    """The tinycudann encoding; raises ImportError with the remedy when it cannot run."""
    if not tcnn_available():
        raise ImportError(TCNN_REMEDY)
    return TcnnEncoding(config)
