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

from . import triton_quantize
from .launch import cdiv, fast_launch
from .triton_quantize import (DEFAULT_TILES, _INTERPRETED, QuantizeTiles, Tile, _amax_bits, _amax_key, _programs,
                              _quantize_tile, _rht_matrix, _round_to_bf16, quantize_nvfp4)


@triton.jit
def _rht_matrix_per_run(BLOCK_T: tl.constexpr):
    """``H^T`` once for each 16-token run of a ``BLOCK_T``-token tile: ``[BLOCK_T / 16, 16, 16]``."""
    return tl.broadcast_to(tl.trans(_rht_matrix())[None, :, :], (BLOCK_T // 16, 16, 16))


@triton.jit
def _rht_along_tokens(x, ht, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
    """``x [BLOCK_T, BLOCK_F]`` BF16 -> each 16-token run of each column times H, rounded to BF16
    (kept in fp32), still ``[BLOCK_T, BLOCK_F]``: ``H^T @ run`` for all runs in one batched
    tensor-core product, which reads the tile as loaded (nothing transposed before it)."""
    runs = tl.reshape(x, (BLOCK_T // 16, 16, BLOCK_F))
    if _INTERPRETED:
        y = tl.dot(ht, runs.to(tl.float32), input_precision="ieee")
    else:
        y = tl.dot(ht, runs)
    return tl.reshape(_round_to_bf16(y), (BLOCK_T, BLOCK_F))


@triton.jit
def _rht_along_tokens_transposed(x, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
    """``_rht_along_tokens(x)`` transposed, ``[BLOCK_F, BLOCK_T]``, computed as the batched right
    product ``run^T @ H``: its output holds each 16-token run of a feature in 4 threads, 4 values
    each, where the left product's holds it in 8 threads, 2 each, so a quantization along the
    tokens reduces and scales each block in half the instructions. The same 16 products summed by
    the same instruction as the left product, so the same bits (tested where the sums round)."""
    h = tl.broadcast_to(_rht_matrix()[None, :, :], (BLOCK_T // 16, 16, 16))
    runs_t = tl.permute(tl.reshape(x, (BLOCK_T // 16, 16, BLOCK_F)), (0, 2, 1))  # [runs, F, 16]
    if _INTERPRETED:
        y = tl.dot(runs_t.to(tl.float32), h, input_precision="ieee")
    else:
        y = tl.dot(runs_t, h)
    y = tl.reshape(tl.permute(y, (1, 0, 2)), (BLOCK_F, BLOCK_T))
    return _round_to_bf16(y)


@triton.jit
def _rht_transpose_kernel(x_ptr, y_ptr, amax_bits_ptr, T, F, stride_t, stride_f, y_stride, tiles_f, n_tiles,
                          X_AMAX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, EVEN: tl.constexpr,
                          STORE_Y: tl.constexpr = True):
    """``STORE_Y=False``: the amaxes only (the first pass of ``_rht_pair_kernel``)."""
    ht = _rht_matrix_per_run(BLOCK_T)
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
        y = _rht_along_tokens(x, ht, BLOCK_T, BLOCK_F)
        acc = tl.maximum(acc, _amax_key(y))
        if STORE_Y:
            if EVEN:
                tl.store(y_ptrs, y.to(tl.bfloat16))
            else:
                tl.store(y_ptrs, y.to(tl.bfloat16), mask=mask)
    tl.atomic_max(amax_bits_ptr, _amax_bits(tl.max(tl.max(acc, axis=1), axis=0)))
    if X_AMAX:
        tl.atomic_max(amax_bits_ptr + 1, _amax_bits(tl.max(tl.max(acc_x, axis=1), axis=0)))


@triton.jit
def _rht_pair_kernel(x_ptr, codes_ptr, scales_ptr, values_ptr, codes_t_ptr, scales_t_ptr, values_t_ptr,
                     amax_bits_ptr, s_dec_ptr, s_dec_t_ptr, seed_ptr, T, F, stride_t, stride_f,
                     codes_stride, scales_stride, values_stride, codes_t_stride, scales_t_stride, values_t_stride,
                     SR: tl.constexpr, SR_T: tl.constexpr, VALUES: tl.constexpr, VALUES_T: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, EVEN: tl.constexpr, HW_FP8: tl.constexpr):
    """Both quantizations of one ``[BLOCK_T, BLOCK_F]`` tile of ``x [T, F]`` from one read of it: along F
    (rows: tokens) and, after the RHT along the tokens (``_rht_along_tokens_transposed``), along T
    (rows: features, stored in ``[F, T]`` order), each as codes and scale bits or, with ``VALUES`` /
    ``VALUES_T``, as BF16 values. The amaxes come from ``_rht_transpose_kernel(STORE_Y=False)``:
    ``amax_bits[0]`` of ``RHT(x^T)``, ``amax_bits[1]`` of ``x``. SR draws from ``seed[0]`` along F and
    ``seed[1]`` along T, keyed by the output's (row, column) as in the rowwise kernel, so the bits equal
    those of ``rht_transpose`` followed by two rowwise passes with the same seeds."""
    t0 = tl.program_id(0) * BLOCK_T
    f0 = tl.program_id(1) * BLOCK_F
    tokens = t0 + tl.arange(0, BLOCK_T)
    features = f0 + tl.arange(0, BLOCK_F)
    x_ptrs = x_ptr + tokens[:, None] * stride_t + features[None, :] * stride_f
    if EVEN:
        x = tl.load(x_ptrs)
    else:  # zeros past the edges; T and F are multiples of 16, so a run is never cut
        x = tl.load(x_ptrs, mask=(tokens[:, None] < T) & (features[None, :] < F), other=0.0)
    amax_t = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    amax = tl.load(amax_bits_ptr + 1).to(tl.float32, bitcast=True)
    s_dec = _quantize_tile(x.to(tl.float32), tokens, f0, T, F, amax, seed_ptr, codes_ptr, scales_ptr, codes_stride,
                           scales_stride, values_ptr, values_stride, False, SR, BLOCK_T, BLOCK_F, not VALUES, VALUES,
                           EVEN, HW_FP8)
    yt = _rht_along_tokens_transposed(x, BLOCK_T, BLOCK_F)
    s_dec_t = _quantize_tile(yt, features, t0, F, T, amax_t, seed_ptr + 1, codes_t_ptr, scales_t_ptr,
                             codes_t_stride, scales_t_stride, values_t_ptr, values_t_stride, False, SR_T, BLOCK_F,
                             BLOCK_T, not VALUES_T, VALUES_T, EVEN, HW_FP8)
    if tl.program_id(0) == 0 and tl.program_id(1) == 0:
        tl.store(s_dec_ptr, s_dec)
        tl.store(s_dec_t_ptr, s_dec_t)


_RHT_TRANSPOSE = fast_launch(_rht_transpose_kernel)
_RHT_PAIR = fast_launch(_rht_pair_kernel)


def rht_transpose(x: torch.Tensor, block_t: int = 64, block_f: int = 64, num_warps: int = 4, x_amax: bool = False):
    """``x [T, F]`` BF16 (any strides, T a multiple of 16) -> (``RHT(x^T)`` as ``[F, T]`` BF16,
    contiguous; the finite amax of that as FP32 bits in an int32 0-dim tensor, and with
    ``x_amax`` a second one, the finite amax of ``x``)."""
    _check(x, "rht_transpose")
    y = torch.empty((x.shape[1], x.shape[0]), dtype=torch.bfloat16, device=x.device)
    amax_bits = _rht_amaxes(x, Tile(block_t, block_f, num_warps), x_amax, y)
    return (y, *(amax_bits[i] for i in range(amax_bits.numel())))


def _check(x: torch.Tensor, name: str):
    if x.dtype != torch.bfloat16 or x.shape[0] % 16:
        raise ValueError(f"{name}: needs BF16 with a multiple of 16 tokens; got {x.dtype} {tuple(x.shape)}")


def _rht_amaxes(x: torch.Tensor, tile: Tile, x_amax: bool, y: torch.Tensor | None = None) -> torch.Tensor:
    """One persistent pass over ``x``: ``[amax of RHT(x^T)]`` (and with ``x_amax`` the amax of ``x``
    after it) as FP32 bits in int32; with ``y`` it also writes ``RHT(x^T)`` there."""
    T, F = x.shape
    amax_bits = torch.zeros((2 if x_amax else 1,), dtype=torch.int32, device=x.device)
    if T == 0 or F == 0:
        return amax_bits
    block_t, block_f, num_warps = tile
    tiles_f = cdiv(F, block_f)
    n_tiles = cdiv(T, block_t) * tiles_f
    programs = min(n_tiles, _programs(x.device))
    # Triton pipelines the loop's loads in 3 stages (it holds a product). The transform alone,
    # written out (the wgrad operand without its rowwise pair), runs faster unpipelined: 0.183
    # against 0.198 ms at 8192x8192 on an H100; the pairs' passes, with both amaxes, do not
    # (bench/RESULTS.md, ninth cut).
    stages = 1 if y is not None and not x_amax else 3
    _RHT_TRANSPOSE[(programs,)](x, x if y is None else y, amax_bits, T, F, x.stride(0), x.stride(1),
                                0 if y is None else y.stride(0), tiles_f, n_tiles, X_AMAX=x_amax, BLOCK_T=block_t,
                                BLOCK_F=block_f, EVEN=T % block_t == 0 and F % block_f == 0, STORE_Y=y is not None,
                                num_warps=num_warps, num_stages=stages)
    return amax_bits


#: How ``quantize_pair_rht`` runs: 3 passes (``rht_transpose`` writing ``RHT(x^T)`` in BF16, then
#: the rowwise kernel on x and on that) or 2 (the amaxes, then ``_rht_pair_kernel``: x read twice
#: and nothing else, 6.6 bytes a value against 10.6 for the X pair, 8 against 12 for dY's).
#: ``None``: the measured choice per pair (``pair_passes``). ``bench/kernels.py`` times both.
PAIR_PASSES: int | None = None


def pair_passes(rounding: str, rounding_t: str, values: tuple[bool, bool]) -> int:
    """The passes ``quantize_pair_rht`` takes (``PAIR_PASSES`` where set). Measured on an H100
    (bench/RESULTS.md, eighth cut): two for dY's pair as the training step runs it, SR and BF16
    values both ways (0.280 against 0.312 ms at 8192x8192, 0.076 against 0.086 at 8192x2048),
    three otherwise (X's pair, values and codes: 0.278 against 0.283 and 0.074 against 0.073, no
    gain at a GPT block's shape; SR codes both ways: 0.491 against 0.321 before the second pass
    took the right product). The second pass is bound by instructions; it wins where it saves the
    most bytes, two BF16 outputs (8 bytes a value against 12)."""
    if PAIR_PASSES is not None:
        return PAIR_PASSES
    return 2 if rounding == rounding_t == "sr" and all(values) else 3


def quantize_pair_rht(x: torch.Tensor, rounding: str = "rne", rounding_t: str = "rne",
                      tiles: QuantizeTiles = DEFAULT_TILES, values: tuple[bool, bool] = (False, False)):
    """Both quantizations of ``x [T, F]`` (BF16, T and F multiples of 16): rowwise 1x16 along F,
    and ``RHT(x^T)`` 1x16 along T; the six outputs of ``nvfp4::quantize_pair``. ``values``: which
    of the two come as block-scaled BF16 values instead (``nvfp4::quantize_pair_values``: the
    values, an empty uint8 tensor in place of the scale bits, S_dec).

    ``pair_passes``: three passes (``rht_transpose``, then the rowwise kernel on x and on
    ``RHT(x^T)``), or two (both amaxes with the RHT computed but not stored, then one pass that
    quantizes each tile both ways). The same bits either way, SR included."""
    _check(x, "quantize_pair_rht")
    if x.shape[1] % 16:
        raise ValueError(f"quantize_pair_rht: needs a multiple of 16 features; got {tuple(x.shape)}")
    seeds = None
    if "sr" in (rounding, rounding_t):  # one draw for both (host time: every launch counts)
        seeds = torch.randint(0, 2**31 - 1, (2,), device=x.device, dtype=torch.int32)
    if pair_passes(rounding, rounding_t, values) == 3 or x.numel() == 0:
        return _three_passes(x, rounding, rounding_t, tiles, values, seeds)
    T, F = x.shape
    dev = x.device
    amax_bits = _rht_amaxes(x, tiles.rht_transpose, x_amax=True)
    outs = []
    for rows, cols, as_values in ((T, F, values[0]), (F, T, values[1])):
        if as_values:
            outs.append((torch.empty((rows, cols), dtype=torch.bfloat16, device=dev), no_scale_bits(dev),
                         torch.empty((), dtype=torch.float32, device=dev)))
        else:
            outs.append((torch.empty((rows, cols // 2), dtype=torch.uint8, device=dev),
                         torch.empty((rows, cols // 16), dtype=torch.uint8, device=dev),
                         torch.empty((), dtype=torch.float32, device=dev)))
    (a, a_scales, s_dec), (b, b_scales, s_dec_t) = outs
    block_t, block_f, warps = tiles.rht_pair_sr if "sr" in (rounding, rounding_t) else tiles.rht_pair
    _RHT_PAIR[(cdiv(T, block_t), cdiv(F, block_f))](
        x, a, a_scales, a, b, b_scales, b, amax_bits, s_dec, s_dec_t, amax_bits if seeds is None else seeds, T, F,
        x.stride(0), x.stride(1), a.stride(0), a_scales.stride(0) if not values[0] else 0, a.stride(0),
        b.stride(0), b_scales.stride(0) if not values[1] else 0, b.stride(0),
        SR=rounding == "sr", SR_T=rounding_t == "sr", VALUES=values[0], VALUES_T=values[1], BLOCK_T=block_t,
        BLOCK_F=block_f, EVEN=T % block_t == 0 and F % block_f == 0, HW_FP8=triton_quantize.hardware_fp8(dev),
        num_warps=warps)
    return (*outs[0], *outs[1])


def _three_passes(x, rounding, rounding_t, tiles, values, seeds):
    """``rht_transpose`` (both amaxes and ``RHT(x^T)`` in BF16), then the rowwise kernel on x and on
    that, each with its amax given."""
    y, y_amax, x_amax = rht_transpose(x, *tiles.rht_transpose, x_amax=True)
    seeds = (None, None) if seeds is None else seeds.unbind()
    out = []
    for src, how, seed, amax, as_values in ((x, rounding, seeds[0], x_amax, values[0]),
                                            (y, rounding_t, seeds[1], y_amax, values[1])):
        q = quantize_nvfp4(src, 1, how, seed=seed, tiles=tiles, amax_bits=amax, values=as_values)
        out.extend((q[0], no_scale_bits(x.device), q[1]) if as_values else q)
    return tuple(out)


def no_scale_bits(device) -> torch.Tensor:
    return torch.empty((0,), dtype=torch.uint8, device=device)
