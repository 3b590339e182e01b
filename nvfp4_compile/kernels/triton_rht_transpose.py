"""Triton kernel: the RHT of ``x^T`` along its rows (the token dimension of ``x``), written out
transposed in BF16, with its finite amax; the wgrad operand's first pass.

``x [T, F]`` (tokens x features, row-major) is read in its own order: each ``[BLOCK_T,
BLOCK_F]`` tile is transformed run by run, ``H^T @ x[16 r : 16 r + 16, :]``, as one batched
tensor-core product (``[BLOCK_T / 16, 16, 16] x [BLOCK_T / 16, 16, BLOCK_F]``), so that nothing
is transposed before the product and a NaN or Inf stays in its own run (where it makes every
output non-finite, as in the reference). The result is rounded to BF16 (the contract's RHT
output), folded into an integer atomic max (non-negative floats order like their bits) and
stored as ``y [F, T]``: the rowwise 1x16 quantize kernel then reads it in its own order with
the amax given, so the RHT'd operand costs one read of ``x``, one write and one read of ``y``
instead of two transposed reads with the transform computed twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, fast_launch
from .triton_quantize import (DEFAULT_TILES, _INTERPRETED, QuantizeTiles, _amax_bits, _amax_key, _programs,
                              _rht_matrix, _round_to_bf16, quantize_nvfp4)


@triton.jit
def _rht_transpose_kernel(x_ptr, y_ptr, amax_bits_ptr, T, F, stride_t, stride_f, y_stride, tiles_f, n_tiles,
                          X_AMAX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, EVEN: tl.constexpr):
    RUNS: tl.constexpr = BLOCK_T // 16
    ht = tl.broadcast_to(tl.trans(_rht_matrix())[None, :, :], (RUNS, 16, 16))
    acc = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.uint32)
    acc_x = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.uint32)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        tokens = (tile // tiles_f) * BLOCK_T + tl.arange(0, BLOCK_T)
        features = (tile % tiles_f) * BLOCK_F + tl.arange(0, BLOCK_F)
        x_ptrs = x_ptr + tokens[:, None] * stride_t + features[None, :] * stride_f
        y_ptrs = y_ptr + features[None, :] * y_stride + tokens[:, None]
        if EVEN:  # the tiles cover x exactly: nothing masked
            x = tl.load(x_ptrs)
        else:
            mask = (tokens[:, None] < T) & (features[None, :] < F)
            x = tl.load(x_ptrs, mask=mask, other=0.0)
        if X_AMAX:  # the amax of x itself, for its rowwise quantization: no second read of x
            acc_x = tl.maximum(acc_x, _amax_key(x.to(tl.float32)))
        runs = tl.reshape(x, (RUNS, 16, BLOCK_F))
        if _INTERPRETED:
            y = tl.dot(ht, runs.to(tl.float32), input_precision="ieee")
        else:
            y = tl.dot(ht, runs)
        y = tl.reshape(_round_to_bf16(y), (BLOCK_T, BLOCK_F))
        acc = tl.maximum(acc, _amax_key(y))
        if EVEN:
            tl.store(y_ptrs, y.to(tl.bfloat16))
        else:
            tl.store(y_ptrs, y.to(tl.bfloat16), mask=mask)
    tl.atomic_max(amax_bits_ptr, _amax_bits(tl.max(tl.max(acc, axis=1), axis=0)))
    if X_AMAX:
        tl.atomic_max(amax_bits_ptr + 1, _amax_bits(tl.max(tl.max(acc_x, axis=1), axis=0)))


_RHT_TRANSPOSE = fast_launch(_rht_transpose_kernel)


def rht_transpose(x: torch.Tensor, block_t: int = 64, block_f: int = 64, num_warps: int = 4, x_amax: bool = False):
    """``x [T, F]`` BF16 (any strides, T a multiple of 16) -> (``RHT(x^T)`` as ``[F, T]`` BF16,
    contiguous; the finite amax of that as FP32 bits in an int32 0-dim tensor, and with
    ``x_amax`` a second one, the finite amax of ``x``)."""
    T, F = x.shape
    if x.dtype != torch.bfloat16 or T % 16:
        raise ValueError(f"rht_transpose: needs BF16 with a multiple of 16 tokens; got {x.dtype} {tuple(x.shape)}")
    y = torch.empty((F, T), dtype=torch.bfloat16, device=x.device)
    amax_bits = torch.zeros((2 if x_amax else 1,), dtype=torch.int32, device=x.device)
    amaxes = tuple(amax_bits[i] for i in range(amax_bits.numel()))
    if T == 0 or F == 0:
        return (y, *amaxes)
    tiles_f = cdiv(F, block_f)
    n_tiles = cdiv(T, block_t) * tiles_f
    programs = min(n_tiles, _programs(x.device))
    _RHT_TRANSPOSE[(programs,)](x, y, amax_bits, T, F, x.stride(0), x.stride(1), y.stride(0), tiles_f, n_tiles,
                                X_AMAX=x_amax, BLOCK_T=block_t, BLOCK_F=block_f,
                                EVEN=T % block_t == 0 and F % block_f == 0, num_warps=num_warps)
    return (y, *amaxes)


def quantize_pair_rht(x: torch.Tensor, rounding: str = "rne", rounding_t: str = "rne",
                      tiles: QuantizeTiles = DEFAULT_TILES, values: tuple[bool, bool] = (False, False)):
    """Both quantizations of ``x [T, F]`` (BF16, T and F multiples of 16): rowwise 1x16 along F,
    and ``RHT(x^T)`` 1x16 along T; the six outputs of ``nvfp4::quantize_pair``. ``values``: which
    of the two come as block-scaled BF16 values instead (``nvfp4::quantize_pair_values``: the
    values, an empty uint8 tensor in place of the scale bits, S_dec).

    Three passes: ``rht_transpose`` (one read of x: both amaxes and ``RHT(x^T)`` in BF16), then
    the rowwise kernel on x and on that, each with its amax given (no amax pass of its own)."""
    y, y_amax, x_amax = rht_transpose(x, *tiles.rht_transpose, x_amax=True)
    seeds = (None, None)
    if "sr" in (rounding, rounding_t):  # one draw for both (host time: every launch counts)
        seeds = torch.randint(0, 2**31 - 1, (2,), device=x.device, dtype=torch.int32).unbind()
    out = []
    for src, how, seed, amax, as_values in ((x, rounding, seeds[0], x_amax, values[0]),
                                            (y, rounding_t, seeds[1], y_amax, values[1])):
        q = quantize_nvfp4(src, 1, how, seed=seed, tiles=tiles, amax_bits=amax, values=as_values)
        out.extend((q[0], no_scale_bits(x.device), q[1]) if as_values else q)
    return tuple(out)


def no_scale_bits(device) -> torch.Tensor:
    return torch.empty((0,), dtype=torch.uint8, device=device)
