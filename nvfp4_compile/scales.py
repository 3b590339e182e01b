"""Tensor and block scales of NVFP4 (NUMERICS.md §2) and MXFP4.

NVFP4 uses two levels of scale. With ``amax = max|x|`` over the tensor::

    S_enc   = min(448 * 6 / amax, FLT_MAX)      (1.0 when amax == 0 or S_enc == 0)
    S_dec   = 1 / S_enc
    s_dec_b = e4m3_rne_satfinite(block_amax * (S_enc * fp32(1/6)))
    s_enc_b = min(1 / (fp32(s_dec_b) * S_dec), FLT_MAX)

Every operation is one FP32 operation with one rounding, in exactly this order;
the grouping ``S_enc * (1/6)`` is part of the contract. There is no lower clamp:
a block whose scale underflows E4M3 gets scale 0, ``s_enc_b = FLT_MAX`` and zero
codes.

MXFP4 (OCP Microscaling v1.0) has one level: each 32-element block gets the
power of two ``2^(floor(log2(block_amax)) - 2)`` (2 is E2M1's largest exponent),
stored as E8M0, clamped to ``[2^-127, 2^127]``.
"""

from __future__ import annotations

import torch

from .formats import E2M1_MAX, E4M3_MAX, FP32_MAX, e4m3_rne_satfinite, e8m0_from_exponent

E2M1_EMAX = 2


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def global_encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """``S_enc`` from an FP32 ``amax`` (0-dim or any shape, elementwise).

    A tensor numerator keeps this one correctly rounded division: PyTorch computes
    ``python_float / tensor`` as ``reciprocal(tensor) * python_float``, which rounds twice.
    """
    amax = amax.to(torch.float32)
    s_enc = torch.div(_f32(E4M3_MAX * E2M1_MAX, amax), amax).clamp(max=FP32_MAX)
    unusable = (amax == 0) | (s_enc == 0)
    return torch.where(unusable, _f32(1.0, amax), s_enc)


def one_sixth(like: torch.Tensor) -> torch.Tensor:
    """``1/6`` rounded to FP32 by an FP32 division, as a kernel computes ``1.0f / 6.0f``."""
    return torch.div(_f32(1.0, like), _f32(E2M1_MAX, like))


def nvfp4_block_decode_scales(block_amax: torch.Tensor, s_enc: torch.Tensor) -> torch.Tensor:
    """``s_dec_b`` (``torch.float8_e4m3fn``) from FP32 block amaxes and ``S_enc``.

    A NaN block amax (used to mark blocks holding NaN or Inf) gives a NaN scale.
    """
    return e4m3_rne_satfinite(block_amax * (s_enc * one_sixth(s_enc)))


def nvfp4_block_encode_scales(s_dec_b: torch.Tensor, s_dec: torch.Tensor) -> torch.Tensor:
    """``s_enc_b = min(1 / (fp32(s_dec_b) * S_dec), FLT_MAX)`` in FP32."""
    return torch.reciprocal(s_dec_b.to(torch.float32) * s_dec).clamp(max=FP32_MAX)


def mxfp4_block_scales(block_amax: torch.Tensor) -> torch.Tensor:
    """E8M0 block scales (``torch.float8_e8m0fnu``) from FP32 block amaxes.

    ``frexp`` gives ``amax = m * 2^e`` with ``m`` in [0.5, 1), so ``floor(log2(amax)) = e - 1``
    exactly, subnormal amaxes included. A zero block gets the smallest scale, 2^-127.
    """
    _, exponent = torch.frexp(block_amax.to(torch.float32))
    shared = torch.where(block_amax > 0, exponent.to(torch.int32) - 1 - E2M1_EMAX,
                         torch.full_like(exponent, -127, dtype=torch.int32))
    return e8m0_from_exponent(shared)
