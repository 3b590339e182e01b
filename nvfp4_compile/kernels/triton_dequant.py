"""Triton kernels for the Hopper emulation of the NVFP4 GEMM and for the standalone RHT.

``dequantize_to_bf16`` writes ``q * s_dec_b`` (without the tensor scale) as BF16: an E2M1
value (2 significant bits) times an E4M3 scale (4 bits) is exact in BF16's 8 bits, so a BF16
tensor-core GEMM with FP32 accumulation over these values, scaled once by
``alpha = S_dec^A * S_dec^B``, computes NUMERICS.md §6 up to the order of the FP32 sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_quantize import _e4m3_value, _h, _rht_tile


@triton.jit
def _e2m1_value(code):
    c = code & 7
    mag = tl.where(c < 4, c.to(tl.float32) * 0.5, tl.where(c < 6, (c - 2).to(tl.float32), tl.where(c == 6, 4.0, 6.0)))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _dequant_kernel(codes_ptr, scales_ptr, out_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    pcols = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    pmask = (rows[:, None] < R) & (pcols[None, :] < K // 2)
    packed = tl.load(codes_ptr + rows[:, None] * (K // 2) + pcols[None, :], mask=pmask, other=0).to(tl.int32)
    values = tl.join(_e2m1_value(packed & 15), _e2m1_value(packed >> 4))  # [BLOCK_R, BLOCK_K/2, 2]
    NB: tl.constexpr = BLOCK_K // 16
    scols = tl.program_id(1) * NB + tl.arange(0, NB)
    smask = (rows[:, None] < R) & (scols[None, :] < K // 16)
    bits = tl.load(scales_ptr + rows[:, None] * (K // 16) + scols[None, :], mask=smask, other=0).to(tl.int32)
    scale = _e4m3_value(bits)
    out = tl.reshape(values, (BLOCK_R, NB, 16)) * tl.reshape(scale, (BLOCK_R, NB, 1))
    out = tl.reshape(out, (BLOCK_R, BLOCK_K)).to(tl.bfloat16)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], out, mask=mask)


def dequantize_to_bf16(codes: torch.Tensor, scale_bits: torch.Tensor) -> torch.Tensor:
    R, K = codes.shape[0], codes.shape[1] * 2
    out = torch.empty((R, K), dtype=torch.bfloat16, device=codes.device)
    if R and K:
        grid = (triton.cdiv(R, 32), triton.cdiv(K, 128))
        _dequant_kernel[grid](codes.contiguous(), scale_bits.contiguous(), out, R, K, BLOCK_R=32, BLOCK_K=128)
    return out


def emulated_gemm(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, out_dtype):
    """``C = alpha * (A_deq @ B_deq^T) (+ bias)``: BF16 tensor cores, FP32 accumulation, one rounding."""
    a = dequantize_to_bf16(a_codes, a_scale_bits)
    b = dequantize_to_bf16(b_codes, b_scale_bits)
    acc = torch.mm(a, b.t(), out_dtype=torch.float32)
    acc = acc * (a_scale * b_scale)
    if bias is not None:
        acc = acc + bias.to(torch.float32)
    return acc.to(out_dtype)


@triton.jit
def _rht_kernel(x_ptr, out_ptr, R, K, stride_r, stride_k, h_ptr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=mask, other=0.0).to(tl.float32)
    hi = tl.arange(0, 16)
    h = tl.load(h_ptr + hi[:, None] * 16 + hi[None, :])
    y = _rht_tile(x, h, BLOCK_R, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], y.to(tl.bfloat16), mask=mask)


def rht_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """The 16-point RHT along the last dimension of a 2-D tensor (K a multiple of 16), in BF16."""
    R, K = x.shape
    if x.dtype != torch.bfloat16:  # FP16/FP32 sums need more than the kernel's FP32 dot
        from ..hadamard import rht

        return rht(x.to(torch.float32)).to(torch.bfloat16)
    out = torch.empty((R, K), dtype=torch.bfloat16, device=x.device)
    if R and K:
        grid = (triton.cdiv(R, 16), triton.cdiv(K, 64))
        _rht_kernel[grid](x, out, R, K, x.stride(0), x.stride(1), _h(x.device), BLOCK_R=16, BLOCK_K=64)
    return out
