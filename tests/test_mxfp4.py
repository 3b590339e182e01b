import numpy as np
import pytest
import torch

import nvfp4_compile as nc
import oracle
from nvfp4_compile.formats import unpack_nibbles
from test_quantize import distributions


@pytest.mark.parametrize("block", [(1, 32), (32, 32)])
def test_mxfp4_matches_an_independent_model(block):
    for name, x in distributions(rows=128, k=512, seed=1).items():
        x32 = torch.from_numpy(x.astype(np.float32))
        q = nc.quantize(x32, format="mxfp4", block=block)
        assert q.scales.dtype == torch.float8_e8m0fnu and q.scales.shape == (128, 512 // 32)
        codes, scales = oracle.mxfp4(x32.double().numpy(), block)
        assert np.array_equal(q.scales.to(torch.float64).numpy()[:: block[0]], scales), name
        assert np.array_equal(unpack_nibbles(q.codes).numpy(), codes), name


def test_mxfp4_scales_are_powers_of_two_and_zero_blocks_are_exact():
    x = torch.randn(4, 64)
    x[1, :32] = 0
    q = nc.quantize(x, format="mxfp4")
    bits = q.scales.view(torch.uint8)
    assert bits[1, 0].item() == 0  # 2^-127 for a zero block
    y = nc.dequantize(q)
    assert torch.equal(y[1, :32], torch.zeros(32))
    s = q.scales.to(torch.float32)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)


def test_mxfp4_non_finite_blocks_are_nan():
    x = torch.randn(2, 64)
    x[0, 40] = float("inf")
    q = nc.quantize(x, format="mxfp4")
    y = nc.dequantize(q)
    assert torch.isnan(y[0, 32:]).all() and torch.isfinite(y[0, :32]).all() and torch.isfinite(y[1]).all()
    assert nc.nonfinite_blocks(q).item() == 1


def test_mxfp4_two_d_transposes():
    w = torch.randn(64, 96) * torch.rand(64, 1) * 5
    q = nc.quantize(w, format="mxfp4", block=(32, 32))
    qt = nc.quantize(w.t().contiguous(), format="mxfp4", block=(32, 32))
    assert torch.equal(nc.dequantize(q).t(), nc.dequantize(qt))
    assert torch.equal(q.t().codes, qt.codes)


def sqnr_db(x, y):
    return (10 * torch.log10(x.double().pow(2).sum() / (x.double() - y.double()).pow(2).sum())).item()


@pytest.mark.parametrize("kind", ["normal", "student_t", "outlier_rows"])
def test_nvfp4_is_more_accurate_than_mxfp4(kind):
    x = torch.from_numpy(distributions(rows=128, k=512, seed=2)[kind].astype(np.float32))
    nv = sqnr_db(x, nc.dequantize(nc.quantize(x)))
    mx = sqnr_db(x, nc.dequantize(nc.quantize(x, format="mxfp4")))
    assert nv > mx + 1.0
