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

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl

from ..hadamard import DEFAULT_RHT_SIGNS

FP32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _round_to_bf16(f):
    """fp32 -> the nearest BF16 value (ties to even), kept in fp32; NaN stays NaN."""
    bits = f.to(tl.int32, bitcast=True)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return tl.where(f == f, rounded, f)


# Bit i set where the RHT's sign vector has -1 at row i (``hadamard.DEFAULT_RHT_SIGNS``).
_RHT_NEGATIVE_ROWS = tl.constexpr(sum(1 << i for i, sign in enumerate(DEFAULT_RHT_SIGNS) if sign < 0))
# Triton's CPU interpreter: its BF16 dot is not exact, so the RHT products run in FP32 there.
_RHT_IN_FP32 = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _rht_matrices(N: tl.constexpr):
    """``blockdiag(H, ..., H)`` and ``blockdiag(ones(16, 16), ...)``, ``[N, N]``, built in registers:
    ``H[i, j] = s_i (-1)^popcount(i & j) / 4`` (exact in BF16). Nothing is loaded, so no
    device tensor has to be cached between calls (a CUDA graph's memory pool would keep it)."""
    i = tl.arange(0, N)[:, None]
    j = tl.arange(0, N)[None, :]
    same_run = (i // 16) == (j // 16)
    both = i & j & 15
    negative = ((both ^ (both >> 1) ^ (both >> 2) ^ (both >> 3)) & 1) ^ ((_RHT_NEGATIVE_ROWS >> (i & 15)) & 1)
    h = tl.where(same_run, tl.where(negative == 1, -0.25, 0.25), 0.0)
    runs = tl.where(same_run, 1.0, 0.0)
    if _RHT_IN_FP32:
        return h, runs
    return h.to(tl.bfloat16), runs.to(tl.bfloat16)


@triton.jit
def _rht_tile(x, BLOCK_K: tl.constexpr):
    """``[BLOCK_R, BLOCK_K]`` BF16 values -> each 16-run times H, rounded to BF16 (kept in fp32).

    One tensor-core product with ``blockdiag(H, ..., H)`` (``[BLOCK_K, BLOCK_K]``, entries
    ±1/4 and 0, exact in BF16): the products are exact and FP32 accumulation gives the exact
    sum whenever it fits FP32's 24 bits (a run spanning less than about 2^12 in magnitude),
    so the result is the reference's (exact, then FP32, then BF16). FP16/FP32 inputs take
    the reference RHT first (see ``quantize_nvfp4``). A NaN or Inf would leak into the other
    runs of the tile through the zeros (0 * Inf = NaN), so non-finite inputs are zeroed and a
    second product with ``blockdiag(ones(16, 16))`` counts them per run; a run that held one
    comes out NaN, as the reference's does."""
    h, runs = _rht_matrices(BLOCK_K)
    xf = x.to(tl.float32)
    nonfinite = ~(tl.abs(xf) <= FP32_MAX)
    clean = tl.where(nonfinite, 0.0, xf).to(h.dtype)
    if _RHT_IN_FP32:
        y = tl.dot(clean, h, input_precision="ieee")
        bad = tl.dot(nonfinite.to(tl.float32), runs, input_precision="ieee")
    else:
        y = tl.dot(clean, h)
        bad = tl.dot(nonfinite.to(h.dtype), runs)
    return tl.where(bad > 0.0, float("nan"), _round_to_bf16(y))


@triton.jit
def _finite_abs(v):
    a = tl.abs(v)
    return tl.where(a <= FP32_MAX, a, 0.0)  # NaN and Inf do not count


@triton.jit
def _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, RHT: tl.constexpr, TRANSPOSED: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_R, BLOCK_K]`` tile at ``(r0, k0)`` in fp32 (after the RHT where it applies).

    ``TRANSPOSED``: memory runs along the rows (``stride_r == 1``, a transposed view such as
    X^T for wgrad). The tile is then loaded as ``[BLOCK_K, BLOCK_R]``, so that neighbouring
    threads read neighbouring addresses, and transposed on chip."""
    rows = r0 + tl.arange(0, BLOCK_R)
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    if TRANSPOSED:
        xt = tl.load(x_ptr + cols[:, None] * stride_k + rows[None, :] * stride_r,
                     mask=(cols[:, None] < K) & (rows[None, :] < R), other=0.0)
        x = tl.trans(xt)
    else:
        x = tl.load(x_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=mask, other=0.0)
    if RHT:
        x = _rht_tile(x, BLOCK_K)
    else:
        x = x.to(tl.float32)
    return x, rows, cols, mask


@triton.jit
def _amax_kernel(x_ptr, amax_bits_ptr, R, K, stride_r, stride_k, tiles_k, n_programs, tiles_per_program, RHT: tl.constexpr,
                 TRANSPOSED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Persistent: each program folds many tiles into a register maximum, then one atomic."""
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for i in range(0, tiles_per_program):
        t = tl.program_id(0) + i * n_programs  # past the last tile: rows >= R, all masked
        x, rows, cols, mask = _load_tile(x_ptr, (t // tiles_k) * BLOCK_R, (t % tiles_k) * BLOCK_K, R, K,
                                         stride_r, stride_k, RHT, TRANSPOSED, BLOCK_R, BLOCK_K)
        acc = tl.maximum(acc, _finite_abs(x))
    tile_max = tl.max(tl.max(acc, axis=1), axis=0)
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
def _e2m1_value(code):
    c = code & 7
    mag = tl.where(c < 4, c.to(tl.float32) * 0.5, tl.where(c < 6, (c - 2).to(tl.float32), tl.where(c == 6, 4.0, 6.0)))
    return tl.where((code & 8) != 0, mag * -1.0, mag)  # code 8 is -0.0 (Triton lowers -x to 0 - x, giving +0.0)


@triton.jit
def _e2m1_scaled(a):
    """``|v|`` -> (``|v|`` in units of its E2M1 grid step, the code of the grid's start there).

    The grid steps are 0.5 on [0, 2), 1 on [2, 4) and 2 on [4, 6]: scaling by 2, 1 or 1/2 is
    exact, so integer rounding of the scaled value is rounding to the grid, and the code is
    that integer plus 0, 2 or 4 (code 4 = 2.0, code 6 = 4.0). Few instructions a value: this
    is the inner loop of every quantizer."""
    small, mid = a < 2.0, a < 4.0
    scaled = tl.where(small, a * 2.0, tl.where(mid, a, a * 0.5))
    offset = tl.where(small, 0, tl.where(mid, 2, 4))
    return scaled, offset


@triton.jit
def _e2m1_rne(v):
    """Round to nearest, ties to the even code (the even integer in scaled units), saturate at 6."""
    scaled, offset = _e2m1_scaled(tl.minimum(tl.abs(v), 8.0))  # bounded before the integer conversion
    nearest = ((scaled + 12582912.0) - 12582912.0).to(tl.int32)  # 1.5 * 2^23: RNE to an integer
    code = tl.minimum(nearest + offset, 7)
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _e2m1_sr(v, u):
    """Round up with probability equal to the distance from the grid point below, in steps."""
    scaled, offset = _e2m1_scaled(tl.minimum(tl.abs(v), 6.0))
    below = tl.floor(scaled)
    code = tl.minimum(below.to(tl.int32) + (u < scaled - below).to(tl.int32) + offset, 7)
    return code | tl.where(v < 0, 8, 0)


@triton.jit
def _uniforms(seed_ptr, rows, k0, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[BLOCK_R, BLOCK_K // 16, 16]`` uniforms in [0, 1): one Philox call gives four, keyed by
    (row, group of four columns), so any tensor size gets distinct counters."""
    seed = tl.load(seed_ptr)
    groups = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    c0 = rows[:, None] + 0 * groups[None, :]
    c1 = groups[None, :] + 0 * rows[:, None]
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, 0 * c0, 0 * c0)
    bits = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BLOCK_R, BLOCK_K // 16, 16))
    return tl.uint_to_uniform_float(bits)


@triton.jit
def _quantize_tile(x, rows, k0, R, K, amax, seed_ptr, codes_ptr, scales_ptr, codes_stride, scales_stride,
                   TWO_D: tl.constexpr, SR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Quantize the fp32 tile ``x [BLOCK_R, BLOCK_K]`` (rows ``rows``, columns from ``k0``) of a
    tensor whose finite amax is ``amax``; store its packed codes and scale bits. Returns S_dec."""
    s_enc = tl.minimum(tl.math.div_rn(2688.0, amax), FP32_MAX)
    s_enc = tl.where((amax == 0.0) | (s_enc == 0.0), 1.0, s_enc)
    s_dec = tl.math.div_rn(1.0, s_enc)
    one_sixth = tl.math.div_rn(1.0, 6.0)

    # A NaN counts as Inf, so a block holding NaN or Inf has an infinite amax.
    a = tl.where(x == x, tl.abs(x), float("inf"))
    NB: tl.constexpr = BLOCK_K // 16
    if TWO_D:  # BLOCK_R == 16: the tile's 16 rows are this program's rows; one scale per 16x16
        SR_: tl.constexpr = 1
        amax_b = tl.reshape(tl.max(tl.reshape(tl.max(a, axis=0), (NB, 16)), axis=1), (1, NB))
    else:
        SR_: tl.constexpr = BLOCK_R
        amax_b = tl.max(tl.reshape(a, (BLOCK_R, NB, 16)), axis=2)
    bad = ~(amax_b <= FP32_MAX)

    scale_bits = _e4m3_bits(amax_b * (s_enc * one_sixth))  # [SR_, NB]
    scale_bits = tl.where(bad, 0x7F, scale_bits)
    s_enc_b = tl.minimum(tl.math.div_rn(1.0, _e4m3_value(scale_bits) * s_dec), FP32_MAX)

    v = tl.reshape(x, (BLOCK_R, NB, 16)) * tl.reshape(s_enc_b, (SR_, NB, 1))
    if SR:
        codes = _e2m1_sr(v, _uniforms(seed_ptr, rows, k0, BLOCK_R, BLOCK_K))
    else:
        codes = _e2m1_rne(v)
    codes = tl.where(tl.reshape(bad, (SR_, NB, 1)), 0, codes)
    codes = tl.reshape(codes, (BLOCK_R, BLOCK_K // 2, 2))
    low, high = tl.split(codes)
    packed = (low | (high << 4)).to(tl.uint8)

    pcols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    pmask = (rows[:, None] < R) & (pcols[None, :] < K // 2)
    tl.store(codes_ptr + rows[:, None] * codes_stride + pcols[None, :], packed, mask=pmask)
    scols = k0 // 16 + tl.arange(0, NB)
    smask = (rows[:, None] < R) & (scols[None, :] < K // 16)
    scale_bits = tl.broadcast_to(scale_bits, (BLOCK_R, NB))  # a 2D tile's scale repeats on its 16 rows
    tl.store(scales_ptr + rows[:, None] * scales_stride + scols[None, :], scale_bits.to(tl.uint8), mask=smask)
    return s_dec


@triton.jit
def _quantize_kernel(x_ptr, codes_ptr, scales_ptr, amax_bits_ptr, s_dec_ptr, seed_ptr,
                     R, K, stride_r, stride_k, codes_stride, scales_stride,
                     RHT: tl.constexpr, TWO_D: tl.constexpr, SR: tl.constexpr, TRANSPOSED: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_r, pid_k = tl.program_id(0), tl.program_id(1)
    r0, k0 = pid_r * BLOCK_R, pid_k * BLOCK_K
    x, rows, cols, mask = _load_tile(x_ptr, r0, k0, R, K, stride_r, stride_k, RHT, TRANSPOSED,
                                     BLOCK_R, BLOCK_K)
    amax = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    s_dec = _quantize_tile(x, rows, k0, R, K, amax, seed_ptr, codes_ptr, scales_ptr, codes_stride, scales_stride,
                           TWO_D, SR, BLOCK_R, BLOCK_K)
    if pid_r == 0 and pid_k == 0:
        tl.store(s_dec_ptr, s_dec)


RHT_TILE = 64  # K-extent of a tile when the RHT is fused: blockdiag(H) is RHT_TILE x RHT_TILE


@functools.lru_cache(maxsize=None)
def _programs(device) -> int:
    """How many programs a persistent kernel launches: a few per SM."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


@dataclasses.dataclass(frozen=True)
class QuantizeTiles:
    """Tile shapes of the quantize kernels (rows x K elements per program) and their warps.

    The defaults are the fastest of ``bench/kernels.py --sweep`` on an H100 for each kernel
    (bench/RESULTS.md). 2D scaling takes 16 rows a program (one row of 16x16 tiles), SR its
    own tile (Philox is the costly part there), the fused RHT 64x64 tiles with
    ``quantize_warps``."""
    amax_rows: int = 32
    amax_k: int = 256
    amax_warps: int = 4
    quantize_rows: int = 16
    quantize_k: int = 512
    quantize_warps: int = 8
    two_d_k: int = 64
    two_d_warps: int = 1
    sr_k: int = 128
    sr_warps: int = 4


DEFAULT_TILES = QuantizeTiles()


def is_transposed(x: torch.Tensor) -> bool:
    """True when memory runs along dim 0 (a transposed view of a row-major tensor)."""
    return x.stride(0) == 1 and x.stride(1) != 1 and x.shape[1] > 1


def quantize_nvfp4(x: torch.Tensor, block_rows: int = 1, rounding: str = "rne", rht: bool = False,
                   seed: torch.Tensor | None = None, tiles: QuantizeTiles = DEFAULT_TILES):
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
    if not (R and K):
        s_dec.fill_(1.0)
        return codes, scales, s_dec
    transposed = is_transposed(x)
    # Without the RHT the amax does not depend on the orientation: read memory in its order.
    src = x.t() if transposed and not rht else x
    ar, ak = tiles.amax_rows, tiles.amax_k
    if rht:
        ar, ak = max(ar, RHT_TILE), RHT_TILE
    tiles_k = triton.cdiv(src.shape[1], ak)
    n_tiles = triton.cdiv(src.shape[0], ar) * tiles_k
    programs = min(n_tiles, _programs(x.device))
    _amax_kernel[(programs,)](
        src, amax_bits, src.shape[0], src.shape[1], src.stride(0), src.stride(1), tiles_k, programs, triton.cdiv(n_tiles, programs), RHT=rht,
        TRANSPOSED=transposed and rht, BLOCK_R=ar, BLOCK_K=ak, num_warps=tiles.amax_warps)
    qr, qk, warps = tiles.quantize_rows, tiles.quantize_k, tiles.quantize_warps
    if block_rows == 16:
        qr, qk, warps = 16, tiles.two_d_k, tiles.two_d_warps
    elif rounding == "sr" and not rht:
        qk, warps = tiles.sr_k, tiles.sr_warps
    if rht:
        qr, qk, warps = max(qr, RHT_TILE), RHT_TILE, tiles.quantize_warps
    _quantize_kernel[(triton.cdiv(R, qr), triton.cdiv(K, qk))](
        x, codes, scales, amax_bits, s_dec, seed, R, K, x.stride(0), x.stride(1),
        codes.stride(0), scales.stride(0), RHT=rht, TWO_D=block_rows == 16, SR=rounding == "sr",
        TRANSPOSED=transposed, BLOCK_R=qr, BLOCK_K=qk, num_warps=warps)
    return codes, scales, s_dec
