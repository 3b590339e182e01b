"""The reference NVFP4 and MXFP4 quantizers: plain, readable, bit-exact.

This module is the ground truth every fast path is tested against
(NUMERICS.md §1-§5). It is pure PyTorch and runs on any device; it favours
clarity over speed.

Quantizing ``x`` (``[rows, K]``, blocks along ``K``) to NVFP4, round to nearest even::

    amax    = max|x|                                   (finite values only, see below)
    S_enc   = min(2688 / amax, FLT_MAX)  or 1.0        (scales.global_encode_scale)
    s_dec_b = e4m3(block_amax * (S_enc * (1/6)))       one per 1x16 or 16x16 block
    s_enc_b = min(1 / (s_dec_b * S_dec), FLT_MAX)
    q       = e2m1_rne(x * s_enc_b)
    x_hat   = q * s_dec_b * S_dec                      (dequantize)

With ``rht=True`` the 16-point Random Hadamard Transform is applied along ``K``
first, its exact output rounded to FP32 and then to BF16; the amaxes are then those of the
transformed tensor. ``rounding="sr"`` replaces the last rounding by stochastic
rounding, with uniform draws from ``generator`` (or the device's default
generator, so ``torch.manual_seed`` makes it reproducible).

Non-finite input. FP4 has no NaN or Inf, and the hardware conversion maps NaN
to a finite code, so a non-finite value could silently become a finite one.
Instead, every block that holds a NaN or an Inf gets a NaN block scale (E4M3
``0x7F``; E8M0 ``0xFF`` for MXFP4) and zero codes: it dequantizes to NaN and
poisons exactly the GEMM outputs that read it, as BF16 arithmetic would (an Inf
comes out as NaN, not Inf). The tensor amax is taken over the finite values,
so one bad element does not change the scales of the other blocks.
:func:`nonfinite_blocks` counts the poisoned blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import scales as _scales
from .formats import (E4M3_NAN_BITS, E8M0_NAN_BITS, e2m1_decode, e2m1_rne, e2m1_sr, pack_nibbles,
                      unpack_nibbles)
from .hadamard import rht as _rht

SUPPORTED_INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ROUNDINGS = ("rne", "sr")


class _BlockScaledFP4:
    """What NVFP4 and MXFP4 tensors share: a device, dequantization and the 2D transpose."""

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    def t(self):
        """The quantization of ``x.T``, for a 2D-scaled tensor, by moving codes and scales.

        A square tile shares one scale whichever way it is read, so this equals
        ``quantize(x.T, block=(16, 16))`` bit for bit: the weight that Dgrad reads is
        the very weight Fprop read. 1D scaling has no such transpose.
        """
        if self.block[0] != self.block[1]:
            raise ValueError(
                f"only 2D-scaled tensors can be transposed in place (block {self.block}); "
                "quantize the transposed tensor instead")
        return replace(self, codes=_transpose_codes(self.codes),
                       scales=_transpose_tile_scales(self.scales, self.block[0]),
                       shape=torch.Size((self.shape[1], self.shape[0])))


@dataclass
class NVFP4Tensor(_BlockScaledFP4):
    """A 2-D tensor in NVFP4, quantized in blocks along its last dimension ``K``.

    Attributes:
        codes: ``uint8 [rows, K/2]``, two E2M1 codes a byte, the lower index in the low nibble.
        scales: ``float8_e4m3fn [rows, K/16]``, the block decode scales ``s_dec_b``, row-major,
            not swizzled. With 16x16 blocks each tile's scale is repeated on its 16 rows.
        global_scale: ``float32`` 0-dim, the tensor decode scale ``S_dec = 1/S_enc``.
        shape: the logical shape ``(rows, K)``.
        block: ``(1, 16)`` (1D scaling) or ``(16, 16)`` (2D scaling, for weights).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    shape: torch.Size
    block: tuple[int, int]


@dataclass
class MXFP4Tensor(_BlockScaledFP4):
    """A 2-D tensor in MXFP4 (OCP Microscaling): E2M1 codes, one E8M0 scale per 32 elements.

    Attributes:
        codes: ``uint8 [rows, K/2]``, packed as in :class:`NVFP4Tensor`.
        scales: ``float8_e8m0fnu [rows, K/32]``, powers of two; 32x32 tiles repeat on their rows.
        shape: the logical shape ``(rows, K)``.
        block: ``(1, 32)`` or ``(32, 32)``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    block: tuple[int, int]


#: Blocks each format supports; the first is the default.
FORMAT_BLOCKS = {"nvfp4": ((1, 16), (16, 16)), "mxfp4": ((1, 32), (32, 32))}


def _transpose_codes(codes: torch.Tensor) -> torch.Tensor:
    return pack_nibbles(unpack_nibbles(codes).t().contiguous())


def _transpose_tile_scales(scales: torch.Tensor, tile: int) -> torch.Tensor:
    # Keep one row per tile (bit patterns, so NaN scales survive), transpose, repeat.
    bits = scales.view(torch.uint8)[::tile].t()
    return bits.repeat_interleave(tile, dim=0).contiguous().view(scales.dtype)


def _check_input(x: torch.Tensor, fmt: str, block: tuple[int, int]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_INPUT_DTYPES:
        raise TypeError(f"quantize supports bfloat16, float16 and float32 inputs, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"quantize expects a 2-D tensor [rows, K] with blocks along K, got shape {tuple(x.shape)}; "
            "reshape leading dimensions into rows first")
    rows, k = x.shape
    block_rows, block_cols = block
    if k % block_cols:
        raise ValueError(
            f"cannot quantize shape {tuple(x.shape)} to {fmt} with block {block}: the last dimension "
            f"K={k} must be a multiple of {block_cols}")
    if rows % block_rows:
        raise ValueError(
            f"cannot quantize shape {tuple(x.shape)} to {fmt} with 2D block {block}: the number of rows "
            f"{rows} must be a multiple of {block_rows}")


def _block_view(t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``[rows, K]`` -> ``[rows/br, br, K/bc, bc]``."""
    rows, k = t.shape
    br, bc = block
    return t.reshape(rows // br, br, k // bc, bc)


def _per_element(block_values: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``[rows/br, K/bc]`` -> ``[rows, K]``, each block's value on each of its elements."""
    br, bc = block
    return block_values.repeat_interleave(br, dim=0).repeat_interleave(bc, dim=1)


def _round_codes(v: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor:
    if rounding == "rne":
        return e2m1_rne(v)
    uniform = torch.rand(v.shape, generator=generator, dtype=torch.float32, device=v.device)
    return e2m1_sr(v, uniform)


def quantize(x: torch.Tensor, *, block: tuple[int, int] | None = None, rounding: str = "rne",
             rht: bool = False, generator: torch.Generator | None = None,
             format: str = "nvfp4") -> NVFP4Tensor | MXFP4Tensor:
    """Quantize a 2-D tensor to NVFP4 (default) or MXFP4, blocks along the last dimension.

    Args:
        x: ``[rows, K]`` in bfloat16, float16 or float32, on any device.
        block: NVFP4: ``(1, 16)`` (default) or ``(16, 16)`` (2D weight scaling).
            MXFP4: ``(1, 32)`` (default) or ``(32, 32)``.
        rounding: ``"rne"`` (round to nearest even) or ``"sr"`` (stochastic rounding).
        rht: apply the 16-point RHT along ``K`` first (output rounded to BF16).
        generator: the random source for ``"sr"``; the device's default generator if None.
        format: ``"nvfp4"`` or ``"mxfp4"``.

    Raises:
        ValueError: a shape that does not tile into blocks, an unknown format, block or rounding.
        TypeError: a non-tensor or an unsupported dtype.
    """
    if format not in FORMAT_BLOCKS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMAT_BLOCKS)}")
    block = FORMAT_BLOCKS[format][0] if block is None else tuple(block)
    if block not in FORMAT_BLOCKS[format]:
        raise ValueError(f"{format} supports blocks {FORMAT_BLOCKS[format]}, got {block}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    _check_input(x, format, block)

    if rht:
        # The exact transform, rounded to FP32 and then to BF16 (for every input dtype).
        x = _rht(x.to(torch.float32)).to(torch.bfloat16)
    xf = x.to(torch.float32)
    finite = torch.isfinite(xf)
    magnitude = torch.where(finite, xf.abs(), torch.zeros((), device=xf.device))
    block_amax = _block_view(magnitude, block).amax(dim=(1, 3))
    block_bad = ~_block_view(finite, block).all(dim=3).all(dim=1)
    bad = _per_element(block_bad, block)
    shape = torch.Size(x.shape)

    if format == "mxfp4":
        block_scales = _scales.mxfp4_block_scales(block_amax)
        block_scales = torch.where(block_bad, E8M0_NAN_BITS, block_scales.view(torch.uint8)).view(
            torch.float8_e8m0fnu)
        v = xf / _per_element(block_scales.to(torch.float32), block)
    else:
        amax = magnitude.amax() if magnitude.numel() else torch.zeros((), device=xf.device)
        s_enc = _scales.global_encode_scale(amax)
        s_dec = torch.reciprocal(s_enc)
        block_scales = _scales.nvfp4_block_decode_scales(block_amax, s_enc)
        block_scales = torch.where(block_bad, E4M3_NAN_BITS, block_scales.view(torch.uint8)).view(
            torch.float8_e4m3fn)
        v = xf * _per_element(_scales.nvfp4_block_encode_scales(block_scales, s_dec), block)

    codes = _round_codes(v, rounding, generator)
    codes = torch.where(bad, torch.zeros((), dtype=torch.uint8, device=codes.device), codes)
    packed = pack_nibbles(codes)
    row_scales = block_scales.view(torch.uint8).repeat_interleave(block[0], dim=0).view(block_scales.dtype)
    if format == "mxfp4":
        return MXFP4Tensor(codes=packed, scales=row_scales, shape=shape, block=block)
    return NVFP4Tensor(codes=packed, scales=row_scales, global_scale=s_dec, shape=shape, block=block)


def block_scaled_values(q: NVFP4Tensor | MXFP4Tensor) -> torch.Tensor:
    """FP32 ``q * s_dec_b`` for every element: exact (E2M1 x E4M3 or x 2^k needs few bits).

    The tensor scale ``S_dec`` is not applied; a GEMM applies it once, as alpha.
    """
    if not isinstance(q, (NVFP4Tensor, MXFP4Tensor)):
        raise TypeError(f"expected an NVFP4Tensor or MXFP4Tensor, got {type(q).__name__}")
    values = e2m1_decode(unpack_nibbles(q.codes))
    block_cols = q.block[1]
    scales = q.scales.to(torch.float32).repeat_interleave(block_cols, dim=1)
    return values * scales


def dequantize(q: NVFP4Tensor | MXFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x_hat = q * fp32(s_dec_b) * S_dec`` (MXFP4: ``q * 2^e``), in FP32, then cast to ``dtype``."""
    values = block_scaled_values(q)
    if isinstance(q, NVFP4Tensor):
        values = values * q.global_scale
    return values.to(dtype)


def nonfinite_blocks(q: NVFP4Tensor | MXFP4Tensor) -> torch.Tensor:
    """Number of blocks marked non-finite (NaN scale), as a 0-dim int64 tensor (no host sync)."""
    br = q.block[0]
    return torch.isnan(q.scales[::br].to(torch.float32)).sum()
