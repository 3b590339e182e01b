"""Triton kernels: dequantization to BF16 (the operands of the emulated GEMM) and the standalone RHT.

``dequantize_to_bf16`` writes ``q * s_dec_b`` (without the tensor scale) as BF16: an E2M1
value (2 significant bits) times an E4M3 scale (4 bits) is exact in BF16's 8 bits, so a BF16
tensor-core GEMM with FP32 accumulation over these values, scaled once by
``alpha = S_dec^A * S_dec^B``, computes NUMERICS.md §6 up to the order of the FP32 sums
(``triton_gemm``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, fast_launch
from . import triton_quantize
from .triton_quantize import RHT_TILE, _e2m1_value, _e4m3_value, _load_tile, _round_to_bf16, is_transposed


@triton.jit
def _load_codes(codes_ptr, rows, k0, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_R, BLOCK_K]`` E2M1 codes (int32) at rows ``rows``, columns from ``k0``, of a
    packed ``uint8 [R, K/2]`` tensor (low nibble first); zeros past the edges."""
    pcols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(codes_ptr + rows[:, None].to(tl.int64) * (K // 2) + pcols[None, :],
                     mask=(rows[:, None] < R) & (pcols[None, :] < K // 2), other=0).to(tl.int32)
    return tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_R, BLOCK_K))


@triton.jit
def _fp4_tile(codes_ptr, scales_ptr, rows, k0, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[len(rows), BLOCK_K]`` BF16 values ``q * s_dec_b`` (exact) of a packed FP4 operand."""
    values = tl.reshape(_e2m1_value(_load_codes(codes_ptr, rows, k0, R, K, BLOCK_R, BLOCK_K)),
                        (BLOCK_R, BLOCK_K // 16, 16))
    scols = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    bits = tl.load(scales_ptr + rows[:, None].to(tl.int64) * (K // 16) + scols[None, :],
                   mask=(rows[:, None] < R) & (scols[None, :] < K // 16), other=0).to(tl.int32)
    scaled = values * tl.reshape(_e4m3_value(bits, False), (BLOCK_R, BLOCK_K // 16, 1))
    return tl.reshape(scaled, (BLOCK_R, BLOCK_K)).to(tl.bfloat16)


@triton.jit
def _dequant_kernel(codes_ptr, scales_ptr, out_ptr, R, K, a_scale_ptr, b_scale_ptr, alpha_beta_ptr,
                    ALPHA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, HW_FP8: tl.constexpr):
    # [BLOCK_R, blocks, 16] from the load to the store: no layout conversion between them.
    NB: tl.constexpr = BLOCK_K // 16
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None, None]
    blocks = (tl.program_id(1) * NB + tl.arange(0, NB))[None, :, None]
    inside = (rows < R) & (blocks < K // 16)
    packed = tl.load(codes_ptr + rows.to(tl.int64) * (K // 2) + blocks * 8 + tl.arange(0, 8)[None, None, :],
                     mask=inside, other=0).to(tl.int32)
    values = tl.reshape(tl.join(_e2m1_value(packed & 15), _e2m1_value(packed >> 4)), (BLOCK_R, NB, 16))
    bits = tl.load(scales_ptr + rows.to(tl.int64) * (K // 16) + blocks, mask=inside, other=0).to(tl.int32)
    out = (values * _e4m3_value(bits, HW_FP8)).to(tl.bfloat16)  # exact: 2 x 4 significant bits
    tl.store(out_ptr + rows.to(tl.int64) * K + blocks * 16 + tl.arange(0, 16)[None, None, :], out, mask=inside)
    if ALPHA and tl.program_id(0) == 0 and tl.program_id(1) == 0:
        tl.store(alpha_beta_ptr, tl.load(a_scale_ptr) * tl.load(b_scale_ptr))
        tl.store(alpha_beta_ptr + 1, 0.0)


_DEQUANT = fast_launch(_dequant_kernel)


def dequantize_to_bf16(codes: torch.Tensor, scale_bits: torch.Tensor, alpha_of=None) -> torch.Tensor:
    """``q * s_dec_b`` as BF16. ``alpha_of=(a_scale, b_scale, alpha_beta)``: the same launch also
    writes ``[a_scale * b_scale, 0.0]`` (FP32) into ``alpha_beta``, the GEMM's alpha and beta."""
    R, K = codes.shape[0], codes.shape[1] * 2
    out = torch.empty((R, K), dtype=torch.bfloat16, device=codes.device)
    a_scale, b_scale, alpha_beta = alpha_of if alpha_of is not None else (out, out, out)
    if R and K:
        grid = (cdiv(R, 32), cdiv(K, 256))
        _DEQUANT[grid](codes.contiguous(), scale_bits.contiguous(), out, R, K, a_scale, b_scale, alpha_beta,
                       ALPHA=alpha_of is not None, BLOCK_R=32, BLOCK_K=256,
                       HW_FP8=triton_quantize.hardware_fp8(codes.device), num_warps=8)
    elif alpha_of is not None:
        torch.stack([a_scale * b_scale, torch.zeros_like(a_scale)], out=alpha_beta)
    return out


@triton.jit
def _rht_kernel(x_ptr, out_ptr, R, K, stride_r, stride_k, TRANSPOSED: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    y, rows, cols = _load_tile(x_ptr, tl.program_id(0) * BLOCK_R, tl.program_id(1) * BLOCK_K, R, K,
                               stride_r, stride_k, True, TRANSPOSED, BLOCK_R, BLOCK_K, False)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], y.to(tl.bfloat16), mask=mask)


def rht_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """The 16-point RHT along the last dimension of a 2-D tensor (K a multiple of 16), in BF16."""
    R, K = x.shape
    if x.dtype != torch.bfloat16:  # FP16/FP32 sums need more than the kernel's FP32 dot
        from ..hadamard import rht

        return rht(x.to(torch.float32)).to(torch.bfloat16)
    out = torch.empty((R, K), dtype=torch.bfloat16, device=x.device)
    if R and K:
        grid = (cdiv(R, 64), cdiv(K, RHT_TILE))
        _rht_kernel[grid](x, out, R, K, x.stride(0), x.stride(1), TRANSPOSED=is_transposed(x),
                          BLOCK_R=64, BLOCK_K=RHT_TILE, num_warps=4)
    return out


@triton.jit
def _exact_dequant_2d_kernel(codes_ptr, tiles_ptr, s_dec_ptr, amax_ptr, top_ptr, out_ptr, R, K,
                             BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``q * s_dec_b`` (exact in FP32) ``* S_dec`` (one rounding), the largest magnitude ``top``
    replaced by ``amax``, cast to the output's dtype: ``distributed.exact_dequantize``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k0 = tl.program_id(1) * BLOCK_K
    codes = _load_codes(codes_ptr, rows, k0, R, K, BLOCK_R, BLOCK_K)
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    tile_bits = tl.load(tiles_ptr + (rows[:, None] // 16).to(tl.int64) * (K // 16) + cols[None, :] // 16,
                        mask=mask, other=0).to(tl.int32)
    w = _e2m1_value(codes) * _e4m3_value(tile_bits, False) * tl.load(s_dec_ptr)
    amax = tl.load(amax_ptr)
    w = tl.where(tl.abs(w) == tl.load(top_ptr), tl.where((codes & 8) != 0, -amax, amax), w)  # NaN: no pin
    if out_ptr.dtype.element_ty == tl.bfloat16:  # round to nearest even explicitly: the conversion is then exact
        w = _round_to_bf16(w)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def exact_dequantize_2d(codes: torch.Tensor, tile_bits: torch.Tensor, s_dec: torch.Tensor, amax: torch.Tensor,
                        dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """The exact dequantization of a 16x16-quantized weight (``codes [R, K/2]``, one E4M3 scale a
    tile ``[R/16, K/16]``), its largest magnitude pinned to ``amax``, in ``dtype``: one pass.

    The largest magnitude of the dequantized tensor is ``6 * 448 * S_dec`` (code 6 in a tile of
    scale 448 holds the amax; no value exceeds it) unless a tile is non-finite (a NaN scale:
    the maximum is NaN and nothing is pinned), decided here without a host sync. A zero weight
    has no element of that magnitude, so nothing is pinned either.

    ``out``: an ``[R, K]`` tensor of ``dtype`` on the same device to fill (FSDP2's unsharded
    parameter, from the second all-gather on) instead of a new one; written by the kernel where
    it is contiguous, through a copy where not."""
    R, K = codes.shape[0], codes.shape[1] * 2
    if out is not None and not (out.shape == (R, K) and out.dtype == dtype and out.device == codes.device):
        raise ValueError(f"exact_dequantize_2d: out must be a {dtype} tensor of shape {(R, K)} on {codes.device}; "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    target = out if out is not None and out.is_contiguous() else torch.empty((R, K), dtype=dtype, device=codes.device)
    if not (R and K):
        return target if out is None else out
    s_dec = s_dec.to(torch.float32)
    top = torch.where((tile_bits == 0x7F).any(), torch.full_like(s_dec, float("nan")), s_dec * 2688.0)
    grid = (cdiv(R, 32), cdiv(K, 128))
    _exact_dequant_2d_kernel[grid](codes.contiguous(), tile_bits.contiguous(), s_dec, amax.to(torch.float32), top,
                                   target, R, K, BLOCK_R=32, BLOCK_K=128, num_warps=4)
    if out is not None and target is not out:
        out.copy_(target)
    return target if out is None else out
