"""Triton kernel: the NVFP4 quantization of ``W^T`` from the 2D (16x16) quantization of ``W``.

A 16x16 tile has one scale, so transposing a 2D-quantized weight rounds nothing: the E2M1
codes move (unpacked, transposed, packed again along the new K) and each tile's scale moves
to the transposed tile, repeated on its 16 rows as ``NVFP4Tensor`` stores it. This is what
dgrad reads; the plain-PyTorch version (``NVFP4Tensor.t``) is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, fast_launch
from .triton_dequant import _load_codes


@triton.jit
def _transpose_2d_kernel(codes_ptr, scales_ptr, codes_t_ptr, scales_t_ptr, R, K,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tile ``[BLOCK_R, BLOCK_K]`` of W (codes) -> tile ``[BLOCK_K, BLOCK_R]`` of W^T."""
    r0, k0 = tl.program_id(0) * BLOCK_R, tl.program_id(1) * BLOCK_K
    rows = r0 + tl.arange(0, BLOCK_R)
    codes = _load_codes(codes_ptr, rows, k0, R, K, BLOCK_R, BLOCK_K)
    low, high = tl.split(tl.reshape(tl.trans(codes), (BLOCK_K, BLOCK_R // 2, 2)))
    cols = k0 + tl.arange(0, BLOCK_K)  # rows of W^T
    prows = r0 // 2 + tl.arange(0, BLOCK_R // 2)  # byte columns of W^T
    tl.store(codes_t_ptr + cols[:, None].to(tl.int64) * (R // 2) + prows[None, :], (low | (high << 4)).to(tl.uint8),
             mask=(cols[:, None] < K) & (prows[None, :] < R // 2))

    tiles_r = r0 // 16 + tl.arange(0, BLOCK_R // 16)
    tiles_k = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    scale = tl.load(scales_ptr + (tiles_r[None, :] * 16).to(tl.int64) * (K // 16) + tiles_k[:, None],
                    mask=(tiles_r[None, :] < R // 16) & (tiles_k[:, None] < K // 16), other=0)  # [K tiles, R tiles]
    repeated = tl.reshape(tl.broadcast_to(tl.reshape(scale, (BLOCK_K // 16, 1, BLOCK_R // 16)),
                                          (BLOCK_K // 16, 16, BLOCK_R // 16)), (BLOCK_K, BLOCK_R // 16))
    tl.store(scales_t_ptr + cols[:, None].to(tl.int64) * (R // 16) + tiles_r[None, :], repeated,
             mask=(cols[:, None] < K) & (tiles_r[None, :] < R // 16))


_TRANSPOSE_2D = fast_launch(_transpose_2d_kernel)


def transpose_2d_nvfp4(codes: torch.Tensor, scale_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``codes uint8 [R, K/2]``, ``scale_bits uint8 [R, K/16]`` of a 16x16-quantized W -> those of W^T."""
    R, K = codes.shape[0], codes.shape[1] * 2
    if R % 16 or K % 16:
        raise ValueError(f"transpose_2d_nvfp4: a 2D-quantized tensor has 16x16 tiles, got {R}x{K}")
    codes_t = torch.empty((K, R // 2), dtype=torch.uint8, device=codes.device)
    scales_t = torch.empty((K, R // 16), dtype=torch.uint8, device=codes.device)
    if R and K:
        grid = (cdiv(R, 64), cdiv(K, 64))
        _TRANSPOSE_2D[grid](codes.contiguous(), scale_bits.contiguous(), codes_t, scales_t, R, K,
                            BLOCK_R=64, BLOCK_K=64, num_warps=4)
    return codes_t, scales_t
