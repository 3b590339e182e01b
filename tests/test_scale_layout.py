import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cutlass_kernels.scale_layout import blocked_shape, from_blocked, to_blocked


def blocked_offset(r: int, c: int, k_blocks: int) -> int:
    """Independent index computation: the byte of scale (r, c) in the CuTe layout
    (32, 4, restM, 4, restK) : (16, 4, 512 * restK, 1, 512)."""
    rest_k = -(-k_blocks // 4)
    r0, r1, rm = r % 32, (r // 32) % 4, r // 128
    c0, ck = c % 4, c // 4
    return r0 * 16 + r1 * 4 + rm * 512 * rest_k + c0 * 1 + ck * 512


@given(rows=st.integers(1, 300), k_blocks=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_every_scale_lands_where_the_index_computation_says(rows, k_blocks, seed):
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(1, 255, (rows, k_blocks), generator=gen, dtype=torch.uint8)
    scales = bits.view(torch.float8_e4m3fn)
    flat = to_blocked(scales).view(torch.uint8)
    row_tiles, col_tiles = blocked_shape(rows, k_blocks)
    assert flat.numel() == row_tiles * col_tiles * 512
    expected = torch.zeros_like(flat)  # padding: zero scales
    for r in range(rows):
        for c in range(k_blocks):
            expected[blocked_offset(r, c, k_blocks)] = bits[r, c]
    assert torch.equal(flat, expected)
    assert torch.equal(from_blocked(to_blocked(scales), rows, k_blocks).view(torch.uint8), bits)


def test_one_full_tile_by_hand():
    bits = torch.arange(512, dtype=torch.int64).remainder(251).to(torch.uint8).view(128, 4)
    flat = to_blocked(bits)
    # Row 33 = 32 * 1 + 1, K-block 2 -> byte 16 * 1 + 4 * 1 + 2 = 22.
    assert flat[22] == bits[33, 2]
    assert flat[16 * 31 + 4 * 3 + 3] == bits[127, 3]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="1-byte"):
        to_blocked(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="holds 512 bytes"):
        from_blocked(torch.zeros(100, dtype=torch.uint8), 4, 4)
