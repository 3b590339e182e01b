"""Bit-for-bit agreement with the reference quantizations (TransformerEngine's arithmetic)."""

import pytest
import torch

import nvfp4_compile as nc
from conftest import golden_cases


@pytest.mark.parametrize("case", golden_cases())
def test_matches_reference_bit_for_bit(golden, case):
    name, dtype, tile, mode = case.split("|")
    g = golden[case]
    x = torch.from_numpy(g["x"]).to(getattr(torch, dtype))
    q = nc.quantize(x, block=(1, 16) if tile == "1x16" else (16, 16), rht=mode == "rht")
    assert torch.equal(q.codes, torch.from_numpy(g["codes"]))
    assert torch.equal(q.scales.view(torch.uint8), torch.from_numpy(g["scales_e4m3_bits"]))
    assert q.global_scale.dtype == torch.float32 and q.global_scale.dim() == 0
    assert q.global_scale.item() == float(g["global_decode_scale"])
