"""The block-scale layout that Blackwell's block-scaled MMA reads (``tcgen05.mma ... block_scale``).

Scale factors of an operand with ``rows`` rows and ``k_blocks`` 16-element blocks along K are
stored in 128x4 tiles (128 rows by 4 K-blocks, 512 bytes each). Inside a tile, the scale of
row ``r = 32 * r1 + r0`` (``r0 < 32``, ``r1 < 4``) and K-block ``c < 4`` sits at byte
``16 * r0 + 4 * r1 + c``; tiles follow one another K-block-tile fastest, then row tile. As a
CuTe layout this is shape ``(32, 4, restM, 4, restK)`` with strides
``(16, 4, 512 * restK, 1, 512)``. Rows are padded to a multiple of 128 and K-blocks to a
multiple of 4 with zero scales (a zero scale contributes nothing to the sum).

This module is plain PyTorch: the reference and the run-time path are the same reshape and
permute (one copy), and the test checks them against a per-element index computation.
"""

from __future__ import annotations

import torch

TILE_ROWS, TILE_COLS = 128, 4


def blocked_shape(rows: int, k_blocks: int) -> tuple[int, int]:
    """(row tiles, K-block tiles) after padding."""
    return -(-rows // TILE_ROWS), -(-k_blocks // TILE_COLS)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """``[rows, k_blocks]`` row-major scales (any 1-byte dtype) -> the flat blocked layout."""
    if scales.dim() != 2 or scales.element_size() != 1:
        raise ValueError(f"expected a 2-D tensor of 1-byte scales, got {tuple(scales.shape)} {scales.dtype}")
    rows, k_blocks = scales.shape
    row_tiles, col_tiles = blocked_shape(rows, k_blocks)
    bits = scales.view(torch.uint8)
    padded = torch.zeros((row_tiles * TILE_ROWS, col_tiles * TILE_COLS), dtype=torch.uint8, device=scales.device)
    padded[:rows, :k_blocks] = bits
    # [row_tile, r1, r0, col_tile, c] -> [row_tile, col_tile, r0, r1, c]
    tiles = padded.view(row_tiles, 4, 32, col_tiles, TILE_COLS).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(-1).view(scales.dtype)


def from_blocked(blocked: torch.Tensor, rows: int, k_blocks: int) -> torch.Tensor:
    """The inverse of :func:`to_blocked`: the flat layout -> ``[rows, k_blocks]``."""
    row_tiles, col_tiles = blocked_shape(rows, k_blocks)
    expected = row_tiles * col_tiles * TILE_ROWS * TILE_COLS
    if blocked.numel() != expected:
        raise ValueError(f"a blocked layout for {rows}x{k_blocks} scales holds {expected} bytes, got {blocked.numel()}")
    tiles = blocked.view(torch.uint8).view(row_tiles, col_tiles, 32, 4, TILE_COLS).permute(0, 3, 2, 1, 4)
    full = tiles.reshape(row_tiles * TILE_ROWS, col_tiles * TILE_COLS)
    return full[:rows, :k_blocks].contiguous().view(blocked.dtype)
