"""Triton kernels: both 1x16 NVFP4 quantizations a linear layer needs of one tensor, from one
read of it: ``x [R, K]`` along K (X for fprop, dY for dgrad) and ``x^T`` along R, optionally
after the 16-point RHT (X^T and dY^T for wgrad). This is ``nvfp4::quantize_pair``; its
reference is two ``nvfp4::quantize`` calls, and the codes and scales here equal theirs bit
for bit (RNE; SR draws its own noise).

Two launches, no host synchronization, and ``x`` read twice instead of four times:
1. ``_pair_amax_kernel``: the finite amax of ``x`` and of ``RHT(x^T)``, from one read.
2. ``_pair_quantize_kernel``: per ``[BLOCK_R, BLOCK_K]`` tile of ``x`` (read in memory order),
   the rowwise quantization; then the tile transposed on chip (BF16, exact), its RHT as in
   ``triton_quantize._rht_tile`` (one tensor-core product per 64x64 tile), quantized along
   the tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .launch import cdiv
from . import triton_quantize
from .triton_quantize import RHT_TILE, _finite_abs, _programs, _quantize_tile, _rht_tile


@triton.jit
def _load(x_ptr, r0, k0, R, K, stride_r, stride_k, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = r0 + tl.arange(0, BLOCK_R)
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)  # zeros past the edges: the padding
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :] * stride_k, mask=mask, other=0.0)
    return x, rows, cols


@triton.jit
def _pair_amax_kernel(x_ptr, amax_bits_ptr, R, K, stride_r, stride_k, tiles_k, n_programs,
                      tiles_per_program, RHT_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Persistent: ``amax_bits[0]`` = amax of ``x``, ``amax_bits[1]`` = amax of ``RHT(x^T)``."""
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_K, BLOCK_R), dtype=tl.float32)  # of x^T
    for i in range(0, tiles_per_program):
        t = tl.program_id(0) + i * n_programs  # past the last tile: rows >= R, all masked
        x, rows, cols = _load(x_ptr, (t // tiles_k) * BLOCK_R, (t % tiles_k) * BLOCK_K, R, K, stride_r, stride_k,
                              BLOCK_R, BLOCK_K)
        acc = tl.maximum(acc, _finite_abs(x.to(tl.float32)))
        if RHT_T:
            acc_t = tl.maximum(acc_t, _finite_abs(_rht_tile(tl.trans(x), BLOCK_K, BLOCK_R)))
    amax = tl.max(tl.max(acc, axis=1), axis=0)
    tl.atomic_max(amax_bits_ptr, amax.to(tl.int32, bitcast=True))
    if RHT_T:
        amax = tl.max(tl.max(acc_t, axis=1), axis=0)
    tl.atomic_max(amax_bits_ptr + 1, amax.to(tl.int32, bitcast=True))


@triton.jit
def _pair_quantize_kernel(x_ptr, codes_ptr, scales_ptr, s_dec_ptr, codes_t_ptr, scales_t_ptr, s_dec_t_ptr,
                          amax_bits_ptr, seed_ptr, R, K, Rp, Kp, stride_r, stride_k,
                          codes_stride, scales_stride, codes_t_stride, scales_t_stride,
                          RHT_T: tl.constexpr, SR: tl.constexpr, SR_T: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, HW_FP8: tl.constexpr):
    pid_r, pid_k = tl.program_id(0), tl.program_id(1)
    r0, k0 = pid_r * BLOCK_R, pid_k * BLOCK_K
    x, rows, cols = _load(x_ptr, r0, k0, R, K, stride_r, stride_k, BLOCK_R, BLOCK_K)
    amax = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    amax_t = tl.load(amax_bits_ptr + 1).to(tl.float32, bitcast=True)
    # Along K: rows of x are the output's rows; stores stop at R rows and Kp columns.
    s_dec = _quantize_tile(x.to(tl.float32), rows, k0, R, Kp, amax, seed_ptr, codes_ptr, scales_ptr,
                           codes_stride, scales_stride, codes_ptr, 0, False, SR, BLOCK_R, BLOCK_K, True, False, False,
                           HW_FP8)
    # x^T on chip (BF16, before any arithmetic), then the RHT as ``triton_quantize`` does it
    # for a transposed view. (The left product ``blockdiag(H)^T @ x``, which needs no
    # transpose before the MMA, measured 1.6x slower for the pair on an H100.)
    xt = tl.trans(x)
    if RHT_T:
        yt = _rht_tile(xt, BLOCK_K, BLOCK_R)
    else:
        yt = xt.to(tl.float32)
    # Along R: columns of x are the output's rows; stores stop at K rows and Rp columns.
    s_dec_t = _quantize_tile(yt, cols, r0, K, Rp, amax_t, seed_ptr + 1, codes_t_ptr, scales_t_ptr,
                             codes_t_stride, scales_t_stride, codes_t_ptr, 0, False, SR_T, BLOCK_K, BLOCK_R,
                             True, False, False, HW_FP8)
    if pid_r == 0 and pid_k == 0:
        tl.store(s_dec_ptr, s_dec)
        tl.store(s_dec_t_ptr, s_dec_t)


@dataclasses.dataclass(frozen=True)
class PairTiles:
    """Columns of ``x`` per program (its rows are ``RHT_TILE`` tokens) and warps. Eight warps
    for the quantize kernel: with four, each thread holds twice the values and the SR variant
    takes minutes to compile (ptxas), against seconds with eight."""
    amax_k: int = 128
    amax_warps: int = 4
    quantize_k: int = 64
    quantize_warps: int = 8


DEFAULT_PAIR_TILES = PairTiles()


def _padded16(n: int) -> int:
    return (n + 15) // 16 * 16


def quantize_pair_nvfp4(x: torch.Tensor, rounding: str = "rne", rounding_t: str = "rne", rht_t: bool = False,
                        seeds: torch.Tensor | None = None, tiles: PairTiles = DEFAULT_PAIR_TILES):
    """``x [R, K]`` (any strides; BF16 when ``rht_t``) -> (codes, scale bits, S_dec) of ``x`` along
    K and of ``x^T`` along R, each padded with zeros to a multiple of 16 along its K."""
    if rht_t and x.dtype != torch.bfloat16:
        raise ValueError(f"quantize_pair_nvfp4: the fused RHT reads BF16, got {x.dtype}")
    R, K = x.shape
    Rp, Kp = _padded16(R), _padded16(K)
    dev = x.device
    codes = torch.empty((R, Kp // 2), dtype=torch.uint8, device=dev)
    scales = torch.empty((R, Kp // 16), dtype=torch.uint8, device=dev)
    codes_t = torch.empty((K, Rp // 2), dtype=torch.uint8, device=dev)
    scales_t = torch.empty((K, Rp // 16), dtype=torch.uint8, device=dev)
    s_dec = torch.empty((), dtype=torch.float32, device=dev)
    s_dec_t = torch.empty((), dtype=torch.float32, device=dev)
    if not (R and K):
        s_dec.fill_(1.0)
        s_dec_t.fill_(1.0)
        return codes, scales, s_dec, codes_t, scales_t, s_dec_t
    amax_bits = torch.zeros((2,), dtype=torch.int32, device=dev)
    if seeds is None:
        if "sr" in (rounding, rounding_t):
            seeds = torch.randint(0, 2**31 - 1, (2,), device=dev, dtype=torch.int32)
        else:
            seeds = amax_bits  # unused
    br = RHT_TILE
    tiles_k = cdiv(K, tiles.amax_k)
    n_tiles = cdiv(R, br) * tiles_k
    programs = min(n_tiles, _programs(dev))
    _pair_amax_kernel[(programs,)](
        x, amax_bits, R, K, x.stride(0), x.stride(1), tiles_k, programs, cdiv(n_tiles, programs),
        RHT_T=rht_t, BLOCK_R=br, BLOCK_K=tiles.amax_k, num_warps=tiles.amax_warps)
    _pair_quantize_kernel[(cdiv(R, br), cdiv(K, tiles.quantize_k))](
        x, codes, scales, s_dec, codes_t, scales_t, s_dec_t, amax_bits, seeds, R, K, Rp, Kp,
        x.stride(0), x.stride(1), codes.stride(0), scales.stride(0), codes_t.stride(0),
        scales_t.stride(0), RHT_T=rht_t, SR=rounding == "sr", SR_T=rounding_t == "sr", BLOCK_R=br,
        BLOCK_K=tiles.quantize_k, HW_FP8=triton_quantize.hardware_fp8(dev), num_warps=tiles.quantize_warps)
    return codes, scales, s_dec, codes_t, scales_t, s_dec_t
