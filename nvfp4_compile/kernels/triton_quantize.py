"""Triton kernels: NVFP4 quantization (1D 1x16 or 2D 16x16 blocks, RNE or SR, optional fused
16-point RHT) of a 2-D tensor along its last dimension, read through arbitrary strides so a
transposed view (X^T for wgrad) is quantized without a copy.

Two launches, no host synchronization:
1. ``_amax_kernel``: the finite amax (after the RHT, where it applies) of the whole tensor,
   folded into one FP32 by an integer atomic max (non-negative floats order like their bits).
2. ``_quantize_kernel``: per tile, ``S_enc`` from the amax with a correctly rounded division,
   block amaxes, E4M3 block scales, ``s_enc_b`` and the E2M1 codes, packed two a byte.

Bit-exactness with the reference (NUMERICS.md): every scale step is one FP32 operation in the
contract's order, divisions use ``div_rn``, and the E4M3 and E2M1 roundings are done with
integer and comparison arithmetic rather than a hardware conversion, so that the kernels
compute the same bits under Triton's CPU interpreter as on the GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..hadamard import rht_matrix

FP32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _round_to_bf16(f):
    """fp32 -> the nearest BF16 value (ties to even), kept in fp32; NaN stays NaN."""
    bits = f.to(tl.int32, bitcast=True)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return tl.where(f == f, rounded, f)


@triton.jit
def _rht_tile(x, h, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_R, BLOCK_K] BF16 values (in fp32) -> each 16-run times H, rounded to BF16.

    For BF16 inputs the products x * (+-1/4) are exact and the IEEE FP32 dot of 16 of them is
    the exact sum unless the run spans more than 2^16 in magnitude, so the result is the
    reference's (exact, then FP32, then BF16). FP16/FP32 inputs take the reference RHT first
    (see ``quantize_nvfp4``): their sums need more than FP32."""
    runs = tl.reshape(x, (BLOCK_R * (BLOCK_K // 16), 16))
    y = tl.dot(runs, h, input_precision="ieee")
    return _round_to_bf16(tl.reshape(y, (BLOCK_R, BLOCK_K)))


@triton.jit
def _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, h_ptr, RHT: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = r0 + tl.arange(0, BLOCK_R)
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=mask, other=0.0).to(tl.float32)
    if RHT:
        hi = tl.arange(0, 16)
        h = tl.load(h_ptr + hi[:, None] * 16 + hi[None, :])
        x = _rht_tile(x, h, BLOCK_R, BLOCK_K)
    return x, rows, cols, mask


@triton.jit
def _amax_kernel(x_ptr, amax_bits_ptr, R, K, stride_r, stride_k, h_ptr, RHT: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    x, rows, cols, mask = _load_tile(x_ptr, tl.program_id(0) * BLOCK_R, tl.program_id(1) * BLOCK_K,
                                     R, K, stride_r, stride_k, h_ptr, RHT, BLOCK_R, BLOCK_K)
    a = tl.abs(x)
    a = tl.where(a <= FP32_MAX, a, 0.0)  # NaN and Inf do not count
    tile_max = tl.max(tl.max(a, axis=1), axis=0)
    tl.atomic_max(amax_bits_ptr, tile_max.to(tl.int32, bitcast=True))


@triton.jit
def _e4m3_bits(s):
    """Non-negative fp32 (or NaN) -> E4M3 bits, round to nearest even, saturating at 448."""
    bits = s.to(tl.int32, bitcast=True)
    # Normal range: drop 20 mantissa bits with round-to-nearest-even, rebias 127 -> 7.
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20
    normal = tl.minimum(rounded - (120 << 3), 126)
    # Subnormal range (s < 2^-6): m * 2^-9, m = rne(s * 512) via the 1.5 * 2^23 trick.
    m = ((s * 512.0 + 12582912.0) - 12582912.0).to(tl.int32)
    out = tl.where(s < 0.015625, m, normal)
    return tl.where(s == s, out, 0x7F)


@triton.jit
def _e4m3_value(bits):
    normal = (((bits >> 3) + 120) << 23 | (bits & 7) << 20).to(tl.float32, bitcast=True)
    value = tl.where(bits >= 8, normal, (bits & 7).to(tl.float32) * 0.001953125)
    return tl.where(bits == 0x7F, float("nan"), value)


@triton.jit
def _e2m1_rne(v):
    a = tl.abs(v)
    code = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
            + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
            + (a > 5.0).to(tl.int32))
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _e2m1_sr(v, u):
    a = tl.minimum(tl.abs(v), 6.0)
    step = tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))
    base = tl.where(a < 2.0, 0.0, tl.where(a < 4.0, 2.0, 4.0))
    lo = base + tl.floor((a - base) / step) * step  # exact: step is a power of two
    frac = (a - lo) / step
    up = u < frac
    mag = tl.where(up, lo + step, lo)
    code = tl.where(mag < 2.0, (mag * 2.0).to(tl.int32), tl.where(mag < 4.0, (mag + 2.0).to(tl.int32),
                    tl.where(mag < 6.0, 6, 7)))
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _quantize_kernel(x_ptr, codes_ptr, scales_ptr, amax_bits_ptr, s_dec_ptr, seed_ptr,
                     R, K, stride_r, stride_k, h_ptr, codes_stride, scales_stride,
                     RHT: tl.constexpr, TWO_D: tl.constexpr, SR: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_r, pid_k = tl.program_id(0), tl.program_id(1)
    r0, k0 = pid_r * BLOCK_R, pid_k * BLOCK_K
    x, rows, cols, mask = _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, h_ptr, RHT, BLOCK_R, BLOCK_K)

    amax = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    s_enc = tl.minimum(tl.math.div_rn(2688.0, amax), FP32_MAX)
    s_enc = tl.where((amax == 0.0) | (s_enc == 0.0), 1.0, s_enc)
    s_dec = tl.math.div_rn(1.0, s_enc)
    one_sixth = tl.math.div_rn(1.0, 6.0)

    finite = tl.abs(x) <= FP32_MAX
    a = tl.where(finite, tl.abs(x), 0.0)
    NB: tl.constexpr = BLOCK_K // 16
    bmax = tl.max(tl.reshape(a, (BLOCK_R, NB, 16)), axis=2)
    bad = tl.max(tl.reshape((~finite).to(tl.int32), (BLOCK_R, NB, 16)), axis=2)
    if TWO_D:  # BLOCK_R == 16: the tile's 16 rows are this program's rows
        bmax = tl.broadcast_to(tl.reshape(tl.max(bmax, axis=0), (1, NB)), (BLOCK_R, NB))
        bad = tl.broadcast_to(tl.reshape(tl.max(bad, axis=0), (1, NB)), (BLOCK_R, NB))

    scale_bits = _e4m3_bits(bmax * (s_enc * one_sixth))
    scale_bits = tl.where(bad != 0, 0x7F, scale_bits)
    s_enc_b = tl.minimum(tl.math.div_rn(1.0, _e4m3_value(scale_bits) * s_dec), FP32_MAX)

    v = tl.reshape(x, (BLOCK_R, NB, 16)) * tl.reshape(s_enc_b, (BLOCK_R, NB, 1))
    if SR:
        seed = tl.load(seed_ptr)
        offsets = rows[:, None] * K + cols[None, :]
        u = tl.reshape(tl.rand(seed, offsets), (BLOCK_R, NB, 16))
        codes = _e2m1_sr(v, u)
    else:
        codes = _e2m1_rne(v)
    codes = tl.where(tl.reshape(bad, (BLOCK_R, NB, 1)) != 0, 0, codes)
    codes = tl.reshape(codes, (BLOCK_R, BLOCK_K // 2, 2))
    low, high = tl.split(codes)
    packed = (low | (high << 4)).to(tl.uint8)

    pcols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    pmask = (rows[:, None] < R) & (pcols[None, :] < K // 2)
    tl.store(codes_ptr + rows[:, None] * codes_stride + pcols[None, :], packed, mask=pmask)
    scols = k0 // 16 + tl.arange(0, NB)
    smask = (rows[:, None] < R) & (scols[None, :] < K // 16)
    tl.store(scales_ptr + rows[:, None] * scales_stride + scols[None, :], scale_bits.to(tl.uint8), mask=smask)
    if pid_r == 0 and pid_k == 0:
        tl.store(s_dec_ptr, s_dec)


@functools.lru_cache(maxsize=None)
def _h(device) -> torch.Tensor:
    return rht_matrix(dtype=torch.float32, device=device).contiguous()


def quantize_nvfp4(x: torch.Tensor, block_rows: int = 1, rounding: str = "rne", rht: bool = False,
                   seed: torch.Tensor | None = None):
    """``x [R, K]`` (any strides, K a multiple of 16; R a multiple of 16 for 2D) ->
    (codes uint8 [R, K/2], scale bits uint8 [R, K/16], S_dec fp32 0-dim)."""
    R, K = x.shape
    if K % 16 or (block_rows == 16 and R % 16):
        raise ValueError(f"quantize_nvfp4: shape {tuple(x.shape)} does not tile into blocks of {block_rows}x16")
    if rht and x.dtype != torch.bfloat16:
        from ..hadamard import rht as reference_rht

        x, rht = reference_rht(x.to(torch.float32)).to(torch.bfloat16), False
    codes = torch.empty((R, K // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty((R, K // 16), dtype=torch.uint8, device=x.device)
    amax_bits = torch.zeros((), dtype=torch.int32, device=x.device)
    s_dec = torch.empty((), dtype=torch.float32, device=x.device)
    if rounding == "sr" and seed is None:
        seed = torch.randint(0, 2**31 - 1, (), device=x.device, dtype=torch.int64).to(torch.int32)
    if seed is None:
        seed = amax_bits  # unused
    h = _h(x.device)
    block_r, block_k = 16, 64
    grid = (triton.cdiv(R, block_r), triton.cdiv(K, block_k))
    if R and K:
        _amax_kernel[grid](x, amax_bits, R, K, x.stride(0), x.stride(1), h, RHT=rht, BLOCK_R=block_r, BLOCK_K=block_k)
        _quantize_kernel[grid](x, codes, scales, amax_bits, s_dec, seed, R, K, x.stride(0), x.stride(1), h,
                               codes.stride(0), scales.stride(0), RHT=rht, TWO_D=block_rows == 16,
                               SR=rounding == "sr", BLOCK_R=block_r, BLOCK_K=block_k)
    else:
        s_dec.fill_(1.0)
    return codes, scales, s_dec
