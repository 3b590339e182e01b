import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nvfp4_compile.formats import (E2M1_VALUES, e2m1_decode, e2m1_rne, e2m1_sr, e4m3_rne_satfinite,
                                   pack_nibbles, unpack_nibbles)


def rne(values):
    return e2m1_rne(torch.tensor(values, dtype=torch.float32)).tolist()


def test_every_code_decodes_to_its_value_and_encodes_back():
    codes = torch.arange(16, dtype=torch.uint8)
    values = e2m1_decode(codes)
    assert values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    # Every value re-encodes to its own code (-0.0 to +0: the reference rule).
    assert rne(values.tolist()) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15]


@pytest.mark.parametrize("tie, code", [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6)])
def test_ties_round_to_even_in_both_signs(tie, code):
    assert rne([tie]) == [code]
    expected_negative = code | 8 if code else 8  # a negative value rounding to 0 keeps its sign
    assert rne([-tie]) == [expected_negative]


@pytest.mark.parametrize("tie", [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
def test_a_hair_either_side_of_a_tie_rounds_to_the_nearer_value(tie):
    t = torch.tensor(tie, dtype=torch.float32)
    above = torch.nextafter(t, torch.tensor(math.inf)).item()
    below = torch.nextafter(t, torch.tensor(-math.inf)).item()
    grid = [v for v in E2M1_VALUES[:8]]
    nearest_above = min(grid, key=lambda g: (abs(g - above), g))
    nearest_below = min(grid, key=lambda g: (abs(g - below), -g))
    assert e2m1_decode(torch.tensor(rne([above, below]), dtype=torch.uint8)).tolist() == [nearest_above, nearest_below]


def test_saturation_at_six():
    big = [5.0001, 6.0, 6.5, 7.0, 100.0, 1e30, float("inf")]
    assert rne(big) == [7] * len(big)
    assert rne([-x for x in big]) == [15] * len(big)


def test_sr_saturates_and_keeps_exact_grid_points():
    grid = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -6], dtype=torch.float32)
    for u in (0.0, 0.5, 0.999999):
        codes = e2m1_sr(grid, torch.full_like(grid, u))
        assert e2m1_decode(codes).tolist() == grid.tolist()
    over = torch.tensor([6.5, 1e9, -7.0])
    assert e2m1_decode(e2m1_sr(over, torch.zeros(3))).tolist() == [6.0, 6.0, -6.0]


def test_sr_rounds_up_exactly_when_the_draw_is_below_the_fraction():
    v = torch.tensor([2.25, 2.25, 0.1, 0.1, 4.5, 4.5])  # fractions 0.25, 0.2, 0.25
    u = torch.tensor([0.2499, 0.25, 0.19, 0.21, 0.24, 0.26])
    assert e2m1_decode(e2m1_sr(v, u)).tolist() == [3.0, 2.0, 0.5, 0.0, 6.0, 4.0]


@given(st.lists(st.integers(0, 15), min_size=0, max_size=64).filter(lambda c: len(c) % 2 == 0))
def test_pack_unpack_round_trip(codes):
    t = torch.tensor(codes, dtype=torch.uint8).reshape(1, -1)
    packed = pack_nibbles(t)
    assert packed.shape == (1, len(codes) // 2)
    assert torch.equal(unpack_nibbles(packed), t)
    if codes:
        assert packed[0, 0].item() == codes[0] | (codes[1] << 4)  # lower index in the low nibble


def test_pack_rejects_odd_length():
    with pytest.raises(ValueError, match="odd"):
        pack_nibbles(torch.zeros(1, 3, dtype=torch.uint8))


def test_e4m3_cast_saturates_instead_of_nan():
    s = torch.tensor([447.0, 448.0, 464.0, 465.0, 1e10, float("inf"), float("nan")])
    out = e4m3_rne_satfinite(s).to(torch.float32)
    assert out[:6].tolist() == [448.0] * 6
    assert math.isnan(out[6].item())
