"""nvfp4-compile: NVFP4 pretraining for unchanged PyTorch models through ``torch.compile``.

The reference numerics (NUMERICS.md) are exported here; the backend builds on them.
"""

from .gemm import mxfp4_mm, nvfp4_mm
from .hadamard import DEFAULT_RHT_SIGNS, rht, rht_matrix
from .numerics import MXFP4Tensor, NVFP4Tensor, dequantize, nonfinite_blocks, quantize
from .recipe import Recipe
from .decisions import explain
from .backend import nvfp4_backend, register as _register

_register()

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RHT_SIGNS",
    "Recipe",
    "explain",
    "nvfp4_backend",
    "MXFP4Tensor",
    "NVFP4Tensor",
    "dequantize",
    "mxfp4_mm",
    "nonfinite_blocks",
    "nvfp4_mm",
    "quantize",
    "rht",
    "rht_matrix",
]
