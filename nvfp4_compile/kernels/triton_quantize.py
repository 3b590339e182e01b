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
integer and comparison arithmetic rather than a hardware conversion (E2M1 has none on Hopper),
so that the kernels compute the same bits under Triton's CPU interpreter as on the GPU; the
E4M3 scales use the hardware's conversions on sm_90+ (``HW_FP8``, ``hardware_fp8``), which give
the same bits there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..hadamard import DEFAULT_RHT_SIGNS
from .launch import cdiv, fast_launch

FP32_MAX = tl.constexpr(3.4028234663852886e38)


# Triton's CPU interpreter: its BF16 dot is not exact and its BF16 cast truncates, so there the RHT
# products run in FP32 and the rounding to BF16 is done on the bits.
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _round_to_bf16(f):
    """fp32 -> the nearest BF16 value (ties to even), kept in fp32; NaN stays NaN."""
    if _INTERPRETED:
        bits = f.to(tl.int32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        return tl.where(f == f, rounded, f)
    return f.to(tl.bfloat16).to(tl.float32)  # cvt.rn: one instruction for two values


# Bit i set where the RHT's sign vector has -1 at row i (``hadamard.DEFAULT_RHT_SIGNS``).
_RHT_NEGATIVE_ROWS = tl.constexpr(sum(1 << i for i, sign in enumerate(DEFAULT_RHT_SIGNS) if sign < 0))


@triton.jit
def _rht_matrix():
    """``H [16, 16]``, built in registers: ``H[i, j] = s_i (-1)^popcount(i & j) / 4`` (exact in
    BF16). Nothing is loaded, so no device tensor has to be cached between calls (a CUDA graph's
    memory pool would keep it)."""
    i = tl.arange(0, 16)[:, None]
    j = tl.arange(0, 16)[None, :]
    both = i & j
    negative = ((both ^ (both >> 1) ^ (both >> 2) ^ (both >> 3)) & 1) ^ ((_RHT_NEGATIVE_ROWS >> i) & 1)
    h = tl.where(negative == 1, -0.25, 0.25)
    if _INTERPRETED:
        return h
    return h.to(tl.bfloat16)


@triton.jit
def _rht_tile(x, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[BLOCK_R, BLOCK_K]`` BF16 values -> each 16-run times H, rounded to BF16 (kept in fp32).

    One tensor-core product of all the tile's runs, ``[BLOCK_R * BLOCK_K / 16, 16]``, with H:
    the products are exact (entries ±1/4) and FP32 accumulation gives the exact sum whenever it
    fits FP32's 24 bits (a run spanning less than about 2^12 in magnitude), so the result is the
    reference's (exact, then FP32, then BF16). A NaN or Inf stays in its own run, where it makes
    every output non-finite, as in the reference. FP16/FP32 inputs take the reference RHT first
    (see ``quantize_nvfp4``)."""
    h = _rht_matrix()
    runs = tl.reshape(x, (BLOCK_R * (BLOCK_K // 16), 16))
    if _INTERPRETED:
        y = tl.dot(runs.to(tl.float32), h, input_precision="ieee")
    else:
        y = tl.dot(runs.to(tl.bfloat16), h)
    return tl.reshape(_round_to_bf16(y), (BLOCK_R, BLOCK_K))


@triton.jit
def _finite_abs(v):
    a = tl.abs(v)
    return tl.where(a <= FP32_MAX, a, 0.0)  # NaN and Inf do not count


@triton.jit
def _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, RHT: tl.constexpr, TRANSPOSED: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """The ``[BLOCK_R, BLOCK_K]`` tile at ``(r0, k0)`` in fp32 (after the RHT where it applies).

    ``TRANSPOSED``: memory runs along the rows (``stride_r == 1``, a transposed view such as
    X^T for wgrad). The tile is then loaded as ``[BLOCK_K, BLOCK_R]``, so that neighbouring
    threads read neighbouring addresses, and transposed on chip. ``EVEN``: the tile lies inside
    the tensor (its shape is a multiple of the tile's), so nothing is masked."""
    rows = r0 + tl.arange(0, BLOCK_R)
    cols = k0 + tl.arange(0, BLOCK_K)
    if TRANSPOSED:
        ptrs = x_ptr + cols[:, None] * stride_k + rows[None, :] * stride_r
        if EVEN:
            xt = tl.load(ptrs)
        else:
            xt = tl.load(ptrs, mask=(cols[:, None] < K) & (rows[None, :] < R), other=0.0)
        x = tl.trans(xt)
    else:
        ptrs = x_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k
        if EVEN:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < R) & (cols[None, :] < K), other=0.0)
    if RHT:
        x = _rht_tile(x, BLOCK_R, BLOCK_K)
    else:
        x = x.to(tl.float32)
    return x, rows, cols


@triton.jit
def _amax_key(v):
    """FP32 ``v`` -> a uint32 whose order is that of ``|v|`` among finite values, with NaN and Inf
    below every finite value: the bits without the sign, doubled, plus 2^24, so that Inf and
    NaN (the only doubled bits at or above 0xFF000000) wrap below 2^24. Two instructions where a
    finite test, a select and a float maximum take three."""
    return (v.to(tl.uint32, bitcast=True) << 1) + 0x1000000


@triton.jit
def _amax_bits(key):
    """The largest ``_amax_key`` -> the FP32 bits (int32) of that finite ``|v|``; 0 if there was none."""
    return tl.where(key >= 0x1000000, (key - 0x1000000) >> 1, 0).to(tl.int32)


@triton.jit
def _amax_kernel(x_ptr, amax_bits_ptr, R, K, stride_r, stride_k, tiles_k, n_tiles, RHT: tl.constexpr,
                 TRANSPOSED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """Persistent: each program folds tiles ``pid, pid + programs, ...`` into a register maximum,
    then one atomic. ``EVEN``: the tiles cover the tensor exactly, so no load is masked."""
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.uint32)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        x, rows, cols = _load_tile(x_ptr, (t // tiles_k) * BLOCK_R, (t % tiles_k) * BLOCK_K, R, K,
                                   stride_r, stride_k, RHT, TRANSPOSED, BLOCK_R, BLOCK_K, EVEN)
        acc = tl.maximum(acc, _amax_key(x))
    tl.atomic_max(amax_bits_ptr, _amax_bits(tl.max(tl.max(acc, axis=1), axis=0)))


@triton.jit
def _maximum_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)  # one max.NaN instruction on sm_80+


@triton.jit
def _e4m3_bits(s, HW_FP8: tl.constexpr):
    """Non-negative fp32 (or NaN) -> E4M3 bits, round to nearest even, saturating at 448. With
    ``HW_FP8`` (sm_90+, ``hardware_fp8``) the hardware conversion, ``cvt.rn.satfinite.e4m3x2.f32``;
    otherwise, and under the interpreter, the same rounding on the bits."""
    if HW_FP8 and not _INTERPRETED:
        return s.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
    bits = s.to(tl.int32, bitcast=True)
    # Normal range: drop 20 mantissa bits with round-to-nearest-even, rebias 127 -> 7.
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20
    normal = tl.minimum(rounded - (120 << 3), 126)
    # Subnormal range (s < 2^-6): m * 2^-9, m = rne(s * 512) via the 1.5 * 2^23 trick.
    m = ((s * 512.0 + 12582912.0) - 12582912.0).to(tl.int32)
    out = tl.where(s < 0.015625, m, normal)
    return tl.where(s == s, out, 0x7F)


@triton.jit
def _e4m3_value(bits, HW_FP8: tl.constexpr):
    """E4M3 bits (int32) -> their FP32 value (0x7F: NaN); ``HW_FP8`` as in ``_e4m3_bits``."""
    if HW_FP8 and not _INTERPRETED:  # exact: E4M3 -> FP16 -> FP32
        return bits.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    normal = (((bits >> 3) + 120) << 23 | (bits & 7) << 20).to(tl.float32, bitcast=True)
    value = tl.where(bits >= 8, normal, (bits & 7).to(tl.float32) * 0.001953125)
    return tl.where(bits == 0x7F, float("nan"), value)


@triton.jit
def _e2m1_value(code):
    """E2M1 code (int32, sign in bit 3) -> its FP32 value (code 8 -> -0.0), decoded on the bits:
    codes 2..7 are ``2^(e - 1) * (1 + m / 2)``, i.e. the code shifted into FP32's exponent and top
    mantissa bit and rebased; code 1 is 0.5 and code 0 is 0."""
    c = code & 7
    magnitude = tl.where(c >= 2, (c << 22) + 0x3F000000, c * 0x3F000000)
    return (magnitude | ((code & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_binade_and_sum(a):
    """``a`` in [0, 6] -> (the FP32 bits of ``max(2^e, 1)``, ``2^e`` the binade of ``a``; the FP32
    bits of ``a + c``, ``c = 1.5 * 2^22 * max(2^e, 1)``). The ulp of ``c`` is the E2M1 grid step
    there (0.5 below 2, 1 in [2, 4), 2 in [4, 6]), so that one addition rounds ``a`` to the grid,
    ties to the even multiple of the step, which is the even code (codes count steps: 0.5 = 1,
    1.0 = 2, 1.5 = 3; 2 = 4, 3 = 5; 4 = 6, 6 = 7). The sum stays in ``c``'s binade. No
    float-to-integer conversion (a quarter-rate instruction on Hopper)."""
    binade = tl.maximum((a.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True), 1.0)
    return binade.to(tl.int32, bitcast=True), (a + binade * 6291456.0).to(tl.int32, bitcast=True)


@triton.jit
def _e2m1_rne(v):
    """Round to the nearest E2M1 code, ties to the even code, saturating at 6; sign in bit 3.

    With ``_e2m1_binade_and_sum``: the sum is ``k`` ulps above ``c`` (bits of the sum less those
    of ``c``, which are the binade's plus 22 in the exponent and 0x400000), and the code is ``k``
    plus two per binade above 1 (``2 log2(2^e)``: the binade's bits shifted by 22, less 254)."""
    a = tl.minimum(tl.abs(v), 6.0)
    binade, total = _e2m1_binade_and_sum(a)
    code = total - binade - ((22 << 23) + 0x400000 + 254) + (binade >> 22)
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _e2m1_sr(v, r):
    """Round up with probability equal to the distance from the grid point below, in steps.

    ``r``: ``_random_bits``' thresholds. Written as bits, ``w`` holds the code of the grid point
    below in bits 22 and up and the distance from it, in units of 2^-22 steps, in the 22 bits
    below (``|v| >= 1``: the FP32 bits rebased; below 1, where the step is 0.5: the mantissa of
    ``1 + |v|``, rounded to 2^-23 by that addition, far below ``r``'s resolution); shifted left by
    10 those bits are the distance in 2^-32 steps, and exceeding ``r`` happens with probability
    equal to that distance (to 2^-17)."""
    a = tl.minimum(tl.abs(v), 6.0)
    w = tl.where(a < 1.0, (a + 1.0).to(tl.int32, bitcast=True) - 0x3F800000,
                 a.to(tl.int32, bitcast=True) - (252 << 22))
    code = (w >> 22) + ((w << 10).to(tl.uint32, bitcast=True) > r).to(tl.int32)
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _e2m1_rne_magnitude(v):
    """``|_e2m1_value(_e2m1_rne(v))|`` without the code: the sum of ``_e2m1_binade_and_sum`` less
    ``c`` (exact). The caller applies the sign (``_signed_scale``)."""
    a = tl.minimum(tl.abs(v), 6.0)
    binade, total = _e2m1_binade_and_sum(a)
    return total.to(tl.float32, bitcast=True) - binade.to(tl.float32, bitcast=True) * 6291456.0


@triton.jit
def _e2m1_sr_magnitude(v, r):
    """``|_e2m1_value(_e2m1_sr(v, r))|`` without the code, with ``_e2m1_sr``'s decision: ``t``, the
    bits of ``a`` (or of ``1 + a`` below 1, where the step is 0.5), holds the grid point below in
    bits 22 and up and the distance from it in the 22 bits below; one step up is ``2^22`` added
    to ``t`` (a carry into the exponent lands on the next binade's first point, as the grid
    does). The grid point is ``t`` with the 22 bits cleared, less the 1 added below 1."""
    a = tl.minimum(tl.abs(v), 6.0)
    small = a < 1.0
    t = tl.where(small, (a + 1.0).to(tl.int32, bitcast=True), a.to(tl.int32, bitcast=True))
    t = tl.where((t << 10).to(tl.uint32, bitcast=True) > r, t + 0x400000, t)
    point = (t & -4194304).to(tl.float32, bitcast=True)
    return tl.where(small, point - 1.0, point)


@triton.jit
def _signed_scale(v, scale):
    """The block scale carrying the code's sign (``v < 0``, so -0.0 counts as positive, as in
    ``_e2m1_rne``): ``magnitude * _signed_scale`` is ``_e2m1_value(code) * scale`` bit for bit,
    zeros included (the negation is a product by -1, not ``0 - scale``)."""
    return tl.where(v < 0, scale * -1.0, scale)


@triton.jit
def _mul_wide(a, M: tl.constexpr):
    """``a * M`` (uint32) as its high and low 32 bits: one ``mul.wide.u32`` (IMAD.WIDE.U32) where
    ``umulhi`` and a separate multiply take two instructions. Written in PTX on the GPU: from a
    ``uint32 -> uint64`` product LLVM keeps the 32-bit form for one Philox multiplier but widens
    the other's operand through the round's XORs into a 64-bit multiply (an extra IMAD and add)."""
    if _INTERPRETED:
        product = a.to(tl.uint64) * M
        return (product >> 32).to(tl.uint32), product.to(tl.uint32)
    return tl.inline_asm_elementwise(
        "{ .reg .b64 p; mul.wide.u32 p, $2, $3; mov.b64 {$1, $0}, p; }", "=r,=r,r,r",
        [a, tl.full(a.shape, M, tl.uint32)], dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)


@triton.jit
def _philox(key, c0, c1):
    """Philox4x32-10 of the counter ``(c0, c1, 0, 0)`` under the key ``(key, 0)``: the bits of
    ``tl.philox(key, c0, c1, 0, 0)`` for a non-negative int32 key, with each round's two products
    computed as ``_mul_wide`` pairs (Salmon et al., SC'11: multipliers 0xD2511F53, 0xCD9E8D57,
    key increments 0x9E3779B9, 0xBB67AE85)."""
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    k1 = tl.zeros_like(key)
    for _ in tl.static_range(10):
        hi_b, lo_b = _mul_wide(c2, 0xCD9E8D57)
        hi_a, lo_a = _mul_wide(c0, 0xD2511F53)
        c0 = hi_b ^ c1 ^ key
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        key = key + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _random_bits(seed_ptr, rows, k0, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[BLOCK_R, BLOCK_K // 16, 16]`` rounding thresholds, uint32 ``u * 2^16 + 2^15`` for 16 random
    bits ``u``: a distance in 2^-32 steps (``_e2m1_sr``) exceeds one with probability equal to it,
    exact to 2^-17 (the threshold sits mid-way between the 2^-16 steps ``u`` resolves). One Philox
    call gives 128 bits, eight thresholds, keyed by (row, group of eight columns), so any tensor
    size gets distinct counters."""
    seed = tl.load(seed_ptr)
    groups = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    c0 = rows[:, None] + 0 * groups[None, :]
    c1 = groups[None, :] + 0 * rows[:, None]
    r0, r1, r2, r3 = _philox(seed.to(tl.uint32, bitcast=True), c0.to(tl.uint32), c1.to(tl.uint32))
    words = tl.join(tl.join(r0, r1), tl.join(r2, r3))  # uint32 [BLOCK_R, BLOCK_K // 8, 2, 2]
    halves = tl.join((words << 16) | 0x8000, (words & 0xFFFF0000) | 0x8000)  # low and high 16 bits
    return tl.reshape(halves, (BLOCK_R, BLOCK_K // 16, 16))


@triton.jit
def _quantize_tile(x, rows, k0, R, K, amax, seed_ptr, codes_ptr, scales_ptr, codes_stride, scales_stride,
                   values_ptr, values_stride, TWO_D: tl.constexpr, SR: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_K: tl.constexpr, CODES: tl.constexpr, VALUES: tl.constexpr, EVEN: tl.constexpr,
                   HW_FP8: tl.constexpr):
    """Quantize the fp32 tile ``x [BLOCK_R, BLOCK_K]`` (rows ``rows``, columns from ``k0``) of a
    tensor whose finite amax is ``amax``; with ``CODES`` store its packed codes and scale bits,
    with ``VALUES`` its block-scaled values ``q * s_dec_b`` in BF16 (exact; NaN in a non-finite
    block) at ``values_ptr`` with row stride ``values_stride``, or both; ``EVEN``: no store is
    masked (the tile lies inside the outputs); ``HW_FP8``: E4M3 conversions by the hardware
    (``hardware_fp8``). Returns S_dec."""
    s_enc = tl.minimum(tl.math.div_rn(2688.0, amax), FP32_MAX)
    s_enc = tl.where((amax == 0.0) | (s_enc == 0.0), 1.0, s_enc)
    s_dec = tl.math.div_rn(1.0, s_enc)
    one_sixth = tl.math.div_rn(1.0, 6.0)

    # Everything below works on [BLOCK_R, NB, 16]: one reshape of the loaded tile, none after it,
    # so that no layout conversion (and no replicated work) comes between the load and the stores.
    NB: tl.constexpr = BLOCK_K // 16
    x = tl.reshape(x, (BLOCK_R, NB, 16))
    # The maximum propagates NaN, so a block holding NaN or Inf has a non-finite amax.
    amax_b = tl.reduce(tl.abs(x), 2, _maximum_nan)
    if TWO_D:  # BLOCK_R == 16: the tile's 16 rows are this program's rows; one scale per 16x16
        amax_b = tl.reduce(amax_b, 0, _maximum_nan, keep_dims=True)
    bad = ~(amax_b <= FP32_MAX)

    scale_bits = _e4m3_bits(amax_b * (s_enc * one_sixth), HW_FP8)  # [BLOCK_R or 1, NB]
    scale_bits = tl.where(bad, 0x7F, scale_bits)
    s_enc_b = tl.minimum(tl.math.div_rn(1.0, _e4m3_value(scale_bits, HW_FP8) * s_dec), FP32_MAX)

    v = x * s_enc_b[:, :, None]
    if SR:
        r = _random_bits(seed_ptr, rows, k0, BLOCK_R, BLOCK_K)
    if CODES:
        if SR:
            codes = _e2m1_sr(v, r)
        else:
            codes = _e2m1_rne(v)
    if VALUES:  # what the dequantize kernel would make of the codes and scales, without reading them
        scale = _e4m3_value(scale_bits, HW_FP8)[:, :, None]
        if CODES:
            values = _e2m1_value(codes) * scale
        elif SR:
            values = _e2m1_sr_magnitude(v, r) * _signed_scale(v, scale)
        else:
            values = _e2m1_rne_magnitude(v) * _signed_scale(v, scale)
        values = values.to(tl.bfloat16)
        r3 = rows[:, None, None]
        cols3 = k0 + tl.arange(0, NB)[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]
        if EVEN:
            tl.store(values_ptr + r3.to(tl.int64) * values_stride + cols3, values)
        else:
            tl.store(values_ptr + r3.to(tl.int64) * values_stride + cols3, values, mask=(r3 < R) & (cols3 < K))
    if CODES:
        low, high = tl.split(tl.reshape(codes, (BLOCK_R, NB, 8, 2)))
        packed = tl.where(bad[:, :, None], 0, low | (high << 4)).to(tl.uint8)  # a non-finite block keeps zero codes

        # Stored as runs of 4 bytes (a thread's share of two 8-byte blocks' codes): a wider run would
        # make Triton store through another layout and convert the tile into it through shared memory.
        packed = tl.reshape(packed, (BLOCK_R, BLOCK_K // 8, 4))
        r3 = rows[:, None, None]
        pcols = k0 // 2 + tl.arange(0, BLOCK_K // 8)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
        scale_bits = tl.broadcast_to(scale_bits, (BLOCK_R, NB))  # a 2D tile's scale repeats on its 16 rows
        scols = k0 // 16 + tl.arange(0, NB)
        if EVEN:
            tl.store(codes_ptr + r3 * codes_stride + pcols, packed)
            tl.store(scales_ptr + rows[:, None] * scales_stride + scols[None, :], scale_bits.to(tl.uint8))
        else:
            tl.store(codes_ptr + r3 * codes_stride + pcols, packed, mask=(r3 < R) & (pcols < K // 2))
            smask = (rows[:, None] < R) & (scols[None, :] < K // 16)
            tl.store(scales_ptr + rows[:, None] * scales_stride + scols[None, :], scale_bits.to(tl.uint8), mask=smask)
    return s_dec


@triton.jit
def _quantize_kernel(x_ptr, codes_ptr, scales_ptr, values_ptr, amax_bits_ptr, s_dec_ptr, seed_ptr,
                     R, K, stride_r, stride_k, codes_stride, scales_stride, values_stride,
                     RHT: tl.constexpr, TWO_D: tl.constexpr, SR: tl.constexpr, TRANSPOSED: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, CODES: tl.constexpr, VALUES: tl.constexpr,
                     EVEN: tl.constexpr, HW_FP8: tl.constexpr):
    pid_r, pid_k = tl.program_id(0), tl.program_id(1)
    r0, k0 = pid_r * BLOCK_R, pid_k * BLOCK_K
    x, rows, cols = _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, RHT, TRANSPOSED, BLOCK_R, BLOCK_K, EVEN)
    amax = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    s_dec = _quantize_tile(x, rows, k0, R, K, amax, seed_ptr, codes_ptr, scales_ptr, codes_stride, scales_stride,
                           values_ptr, values_stride, TWO_D, SR, BLOCK_R, BLOCK_K, CODES, VALUES, EVEN, HW_FP8)
    if pid_r == 0 and pid_k == 0:
        tl.store(s_dec_ptr, s_dec)


_AMAX = fast_launch(_amax_kernel)
_QUANTIZE = fast_launch(_quantize_kernel)

RHT_TILE = 64  # K-extent (tokens) of the RHT tiles of the pair and dequantize kernels


#: Programs per SM of the persistent kernels (amax, ``rht_transpose``); ``bench/kernels.py
#: --programs-per-sm`` times others.
PROGRAMS_PER_SM = 4


def _programs(device) -> int:
    """How many programs a persistent kernel launches: a few per SM."""
    if device.type != "cuda":
        return 4
    return PROGRAMS_PER_SM * _multiprocessors(device)


@functools.lru_cache(maxsize=None)
def hardware_fp8(device) -> bool:
    """Whether the kernels convert the scales to and from E4M3 with the hardware's instructions on
    ``device`` (``HW_FP8``): sm_90 and later, where Triton lowers FP32 -> E4M3 to one correctly
    rounded ``cvt.rn.satfinite.e4m3x2.f32``. Not sm_89: there Triton goes through FP16, rounding
    toward zero first, and a value just above a midpoint can land on the even side (1.0627441 ->
    0x38, not 0x39). Other GPUs (and ROCm) round with integer arithmetic, to the reference's bits."""
    return (device.type == "cuda" and torch.version.hip is None
            and torch.cuda.get_device_capability(device) >= (9, 0))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class Tile(NamedTuple):
    """One kernel's tile: ``rows x k`` elements per program, and its warps."""
    rows: int
    k: int
    warps: int


@dataclasses.dataclass(frozen=True)
class QuantizeTiles:
    """The tile of each quantize kernel (and of the two amax passes).

    The defaults are the fastest of ``bench/kernels.py --sweep`` on an H100 for each kernel
    (bench/RESULTS.md). 2D scaling takes 16 rows a program (one row of 16x16 tiles)."""
    amax: Tile = Tile(32, 256, 4)
    rht_amax: Tile = Tile(64, 64, 8)
    rne: Tile = Tile(16, 256, 4)
    sr: Tile = Tile(16, 128, 4)
    two_d: Tile = Tile(16, 512, 4)
    rht: Tile = Tile(64, 64, 8)
    rht_sr: Tile = Tile(64, 64, 8)
    rht_transpose: Tile = Tile(64, 64, 4)  # rows: tokens, k: features (``triton_rht_transpose``)
    rht_pair: Tile = Tile(64, 64, 4)  # rows: tokens (a multiple of 16), k: features (``_rht_pair_kernel``)
    rht_pair_sr: Tile = Tile(64, 32, 2)  # the same, rounding stochastically (more registers a value)
    rne_values: Tile = Tile(16, 256, 4)  # the two rowwise kernels writing BF16 values (``values=True``)
    sr_values: Tile = Tile(8, 128, 2)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            rows, k, warps = getattr(self, field.name)
            if not all(n > 0 and n & (n - 1) == 0 for n in (rows, k, warps)) or k % 16:
                raise ValueError(f"QuantizeTiles.{field.name}: rows, k and warps must be powers of two, "
                                 f"k a multiple of 16; got {getattr(self, field.name)}")
        for name in ("rht_pair", "rht_pair_sr"):
            if getattr(self, name).rows < 16:
                raise ValueError(f"QuantizeTiles.{name}: the RHT needs whole 16-token runs; got {getattr(self, name)}")
        if self.two_d.rows != 16:
            raise ValueError(f"QuantizeTiles.two_d: a 2D tile has 16 rows (one row of 16x16 blocks); got {self.two_d}")


DEFAULT_TILES = QuantizeTiles()


def is_transposed(x: torch.Tensor) -> bool:
    """True when memory runs along dim 0 (a transposed view of a row-major tensor)."""
    return x.stride(0) == 1 and x.stride(1) != 1 and x.shape[1] > 1


def quantize_nvfp4(x: torch.Tensor, block_rows: int = 1, rounding: str = "rne", rht: bool = False,
                   seed: torch.Tensor | None = None, tiles: QuantizeTiles = DEFAULT_TILES,
                   amax_bits: torch.Tensor | None = None, values: bool = False, codes: bool | None = None):
    """``x [R, K]`` (any strides, K a multiple of 16; R a multiple of 16 for 2D) ->
    (codes uint8 [R, K/2], scale bits uint8 [R, K/16], S_dec fp32 0-dim); with ``values``,
    (``q * s_dec_b`` in BF16 [R, K], S_dec): the GEMM operand the dequantize kernel would make of
    the codes and scales, written by the quantize kernel itself (``nvfp4::quantize_values``);
    with ``values`` and ``codes`` both, (codes, scale bits, S_dec, values) from the one pass
    (``nvfp4::quantize_with_values``: a 2D weight's fprop operand and the codes saved for dgrad).

    ``amax_bits``: the finite amax of ``x`` (after the RHT where it applies) as FP32 bits in an
    int32 0-dim device tensor, when the caller has it; the amax pass is then skipped.

    The RHT of a transposed BF16 view (X^T and dY^T for wgrad) takes two passes: ``rht_transpose``
    reads ``x`` in its own order, transforms, folds the amax and writes the result transposed in
    BF16; the rowwise kernel quantizes that. Fewer instructions than transforming twice (amax,
    then quantize) on transposed reads; ``NVFP4_COMPILE_FUSED_RHT=1`` keeps the one-kernel way."""
    R, K = x.shape
    if K % 16 or (block_rows == 16 and R % 16):
        raise ValueError(f"quantize_nvfp4: shape {tuple(x.shape)} does not tile into blocks of {block_rows}x16")
    if rht and x.dtype != torch.bfloat16:
        from ..hadamard import rht as reference_rht

        x, rht = reference_rht(x.to(torch.float32)).to(torch.bfloat16), False
    if (rht and amax_bits is None and is_transposed(x) and R and K
            and os.environ.get("NVFP4_COMPILE_FUSED_RHT") != "1"):
        from .triton_rht_transpose import rht_transpose

        y, y_amax = rht_transpose(x.t(), *tiles.rht_transpose)
        return quantize_nvfp4(y, block_rows, rounding, False, seed, tiles, y_amax, values, codes)
    codes = not values if codes is None else codes
    if not (codes or values):
        raise ValueError("quantize_nvfp4: nothing to write (codes=False, values=False)")
    dev = x.device
    values_out = torch.empty((R, K), dtype=torch.bfloat16, device=dev) if values else None
    if codes:
        codes_out = torch.empty((R, K // 2), dtype=torch.uint8, device=dev)
        scales = torch.empty((R, K // 16), dtype=torch.uint8, device=dev)
    else:
        codes_out = scales = values_out  # unused
    s_dec = torch.empty((), dtype=torch.float32, device=dev)
    if not codes:
        out = (values_out, s_dec)
    else:
        out = (codes_out, scales, s_dec, values_out) if values else (codes_out, scales, s_dec)
    given_amax = amax_bits is not None
    if not given_amax:
        amax_bits = torch.zeros((), dtype=torch.int32, device=dev)
    if rounding == "sr" and seed is None:
        seed = torch.randint(0, 2**31 - 1, (), device=x.device, dtype=torch.int32)
    if seed is None:
        seed = amax_bits  # unused
    if not (R and K):
        s_dec.fill_(1.0)
        return out
    transposed = is_transposed(x)
    if not given_amax:
        # Without the RHT the amax does not depend on the orientation: read memory in its order.
        src = x.t() if transposed and not rht else x
        ar, ak, amax_warps = tiles.rht_amax if rht else tiles.amax
        tiles_k = cdiv(src.shape[1], ak)
        n_tiles = cdiv(src.shape[0], ar) * tiles_k
        programs = min(n_tiles, _programs(x.device))
        _AMAX[(programs,)](
            src, amax_bits, src.shape[0], src.shape[1], src.stride(0), src.stride(1), tiles_k, n_tiles,
            RHT=rht, TRANSPOSED=transposed and rht, BLOCK_R=ar, BLOCK_K=ak,
            EVEN=src.shape[0] % ar == 0 and src.shape[1] % ak == 0, num_warps=amax_warps)
    sr = rounding == "sr"
    if block_rows == 16:
        qr, qk, warps = tiles.two_d
    elif rht:
        qr, qk, warps = tiles.rht_sr if sr else tiles.rht
    elif values:
        qr, qk, warps = tiles.sr_values if sr else tiles.rne_values
    else:
        qr, qk, warps = tiles.sr if sr else tiles.rne
    _QUANTIZE[(cdiv(R, qr), cdiv(K, qk))](
        x, codes_out, scales, values_out if values else codes_out, amax_bits, s_dec, seed, R, K,
        x.stride(0), x.stride(1), codes_out.stride(0), scales.stride(0), values_out.stride(0) if values else 0,
        RHT=rht, TWO_D=block_rows == 16, SR=sr, TRANSPOSED=transposed, BLOCK_R=qr, BLOCK_K=qk, CODES=codes,
        VALUES=values, EVEN=R % qr == 0 and K % qk == 0, HW_FP8=hardware_fp8(dev), num_warps=warps)
    return out
