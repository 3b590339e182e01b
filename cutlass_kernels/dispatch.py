"""When to take the sm_100a CuTe-DSL GEMM (``nvfp4_gemm``) instead of the other CUDA kernels.

Only a CUDA device of compute capability 10.x (B200/GB200: 10.0, B300/GB300: 10.3) has the
block-scaled ``tcgen05.mma``. ``NVFP4_COMPILE_REFERENCE_KERNELS=1`` turns every fast path
off, this one included. Whether CuTe DSL is installed is not consulted here: choosing this
path without it is an error that names the package (``nvfp4_gemm.CutlassDSLMissingError``),
raised when the GEMM is called, never at import.
"""

from __future__ import annotations

import os

import torch

REFERENCE_KERNELS_ENV = "NVFP4_COMPILE_REFERENCE_KERNELS"


def use_sm100_gemm(device: torch.device | str) -> bool:
    """``True`` for a CUDA device of compute capability major 10, unless the env var opts out."""
    if os.environ.get(REFERENCE_KERNELS_ENV) == "1":
        return False
    device = torch.device(device)
    if device.type != "cuda":
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major == 10
