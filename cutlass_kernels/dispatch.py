"""When to take the sm_100a CuTe-DSL GEMM (``nvfp4_gemm``) instead of the other CUDA kernels.

The kernel uses the block-scaled ``tcgen05.mma`` of compute capability 10.x and is compiled
for 10.0 (B200/GB200, ``sm_100a``) and 10.3 (B300/GB300, ``sm_103a``); other devices,
including other 10.x minors, keep the existing kernels. ``NVFP4_COMPILE_REFERENCE_KERNELS=1`` turns every fast path
off, this one included. Whether CuTe DSL is installed is not consulted here: choosing this
path without it is an error that names the package (``nvfp4_gemm.CutlassDSLMissingError``),
raised when the GEMM is called, never at import.
"""

from __future__ import annotations

import os

import torch

REFERENCE_KERNELS_ENV = "NVFP4_COMPILE_REFERENCE_KERNELS"
#: Compute capabilities the kernel is compiled for (``sm_100a``, ``sm_103a``).
SM100_CAPABILITIES = ((10, 0), (10, 3))


def use_sm100_gemm(device: torch.device | str) -> bool:
    """``True`` for a CUDA device of compute capability 10.0 or 10.3, unless the env var opts out."""
    if os.environ.get(REFERENCE_KERNELS_ENV) == "1":
        return False
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) in SM100_CAPABILITIES
