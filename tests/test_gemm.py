import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nvfp4_compile as nc
import oracle

OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def float64_reference(q, has_global_scale=True):
    """sum_b s_b * q over K, decoded independently of the package: returns (values, S_dec)."""
    packed = q.codes.numpy()
    codes = np.stack((packed & 0x0F, packed >> 4), axis=-1).reshape(packed.shape[0], -1)
    signed_grid = np.concatenate((oracle.E2M1_GRID, -oracle.E2M1_GRID))
    scales = q.scales.to(torch.float64).numpy().repeat(q.block[1], axis=1)
    s_dec = float(q.global_scale) if has_global_scale else 1.0
    return signed_grid[codes] * scales, s_dec


MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}


def spacing(values, dtype):
    info = torch.finfo(dtype)
    exponent = np.floor(np.log2(np.maximum(np.abs(values), info.smallest_normal)))
    return 2.0 ** (exponent - MANTISSA_BITS[dtype])


@given(m=st.integers(1, 40), n=st.integers(1, 40), k_blocks=st.integers(1, 8),
       out_dtype=st.sampled_from(OUT_DTYPES), in_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 2**31))
def test_nvfp4_mm_matches_a_float64_evaluation_within_one_output_rounding(m, n, k_blocks, out_dtype,
                                                                         in_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    k = 16 * k_blocks
    a = (torch.randn(m, k, generator=gen) * 3).to(in_dtype)
    b = (torch.randn(n, k, generator=gen) / 7).to(in_dtype)
    qa, qb = nc.quantize(a), nc.quantize(b)
    c = nc.nvfp4_mm(qa, qb, out_dtype=out_dtype)
    assert c.shape == (m, n) and c.dtype == out_dtype
    va, sa = float64_reference(qa)
    vb, sb = float64_reference(qb)
    alpha = float(np.float32(sa) * np.float32(sb))  # alpha is an FP32 product (NUMERICS.md §6)
    reference = (va @ vb.T) * alpha
    error = np.abs(c.to(torch.float64).numpy() - reference)
    # One rounding to the output dtype is half a spacing; FP32 accumulation and the alpha
    # multiply add a few FP32 ulps, far below a BF16/FP16 spacing. For FP32 output allow
    # one spacing for those.
    allowed = spacing(reference, out_dtype) * (1.0 if out_dtype == torch.float32 else 0.5)
    allowed = allowed + 4 * spacing(reference, torch.float32)
    assert (error <= allowed).all()


def test_nvfp4_mm_is_the_product_of_the_dequantized_operands():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 128, generator=gen), torch.randn(48, 128, generator=gen)
    qa, qb = nc.quantize(a), nc.quantize(b, block=(16, 16))
    c = nc.nvfp4_mm(qa, qb, out_dtype=torch.float32)
    expected = nc.dequantize(qa).double() @ nc.dequantize(qb).double().t()
    assert torch.allclose(c.double(), expected, rtol=1e-6, atol=1e-6)
    # And it approximates the unquantized product.
    exact = a.double() @ b.double().t()
    assert ((c.double() - exact).norm() / exact.norm()) < 0.2


def test_two_d_weight_reused_transposed_gives_the_dgrad_product():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 32, generator=gen)  # [out, in]
    dy = torch.randn(8, 64, generator=gen)  # dgrad: dX = dY @ W, reduction over out
    qw = nc.quantize(w, block=(16, 16))
    dx = nc.nvfp4_mm(nc.quantize(dy), qw.t(), out_dtype=torch.float32)
    direct = nc.nvfp4_mm(nc.quantize(dy), nc.quantize(w.t().contiguous(), block=(16, 16)),
                         out_dtype=torch.float32)
    assert torch.equal(dx, direct)


def test_nan_rows_propagate_only_to_their_outputs():
    a, b = torch.randn(4, 32), torch.randn(6, 32)
    a[2, 5] = float("nan")
    c = nc.nvfp4_mm(nc.quantize(a), nc.quantize(b), out_dtype=torch.float32)
    assert torch.isnan(c[2]).all()
    assert torch.isfinite(c[[0, 1, 3]]).all()


def test_zero_operands_give_exact_zeros():
    c = nc.nvfp4_mm(nc.quantize(torch.zeros(4, 32)), nc.quantize(torch.randn(3, 32)))
    assert torch.equal(c, torch.zeros(4, 3, dtype=torch.bfloat16))


def test_operand_errors():
    qa = nc.quantize(torch.randn(4, 32))
    with pytest.raises(ValueError, match="K differ"):
        nc.nvfp4_mm(qa, nc.quantize(torch.randn(4, 48)))
    with pytest.raises(TypeError, match="mxfp4_mm"):
        nc.nvfp4_mm(qa, nc.quantize(torch.randn(4, 32), format="mxfp4"))
    with pytest.raises(TypeError, match="nvfp4_mm"):
        nc.mxfp4_mm(qa, qa)
    with pytest.raises(TypeError, match="out_dtype"):
        nc.nvfp4_mm(qa, qa, out_dtype=torch.int32)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_mxfp4_mm_matches_a_float64_evaluation(out_dtype):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(24, 96, generator=gen), torch.randn(16, 96, generator=gen) * 100
    qa, qb = nc.quantize(a, format="mxfp4"), nc.quantize(b, format="mxfp4")
    c = nc.mxfp4_mm(qa, qb, out_dtype=out_dtype)
    va, _ = float64_reference(qa, has_global_scale=False)
    vb, _ = float64_reference(qb, has_global_scale=False)
    reference = va @ vb.T
    allowed = spacing(reference, out_dtype) + 4 * spacing(reference, torch.float32)
    assert (np.abs(c.to(torch.float64).numpy() - reference) <= allowed).all()
