import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nvfp4_compile as nc
import oracle
from nvfp4_compile.formats import unpack_nibbles


def distributions(rows=256, k=1024, seed=0):
    """Five inputs of rows*k values each (1.3 million in all), as float32 arrays."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((rows, k))
    heavy = rng.standard_t(df=2, size=(rows, k))
    outliers = rng.standard_normal((rows, k))
    outliers[rng.choice(rows, rows // 16, replace=False)] *= 1000.0
    # Block amaxes spread over 2^-30..2^0 of the tensor amax: block scales cross E4M3's
    # subnormals (2^-9..2^-6 of 448) and underflow to zero.
    spread = rng.standard_normal((rows, k)) * np.exp2(rng.uniform(-30, 0, (rows, k // 16))).repeat(16, axis=1)
    spread[0, 0] = 8.0
    # Block amaxes within 10% of the tensor amax: block scales in E4M3's top binade,
    # rounding towards and clamping at 448.
    top = rng.uniform(-1, 1, (rows, k))
    top[:, ::16] = rng.uniform(0.9, 1.0, (rows, k // 16)) * rng.choice([-1, 1], (rows, k // 16))
    top[0, 0] = 1.0
    # A tensor amax in FP32's subnormals: 2688/amax overflows and S_enc clamps to FLT_MAX.
    subnormal = rng.uniform(-1, 1, (rows, k)) * 1e-39
    return {"normal": normal, "student_t": heavy, "outlier_rows": outliers,
            "near_e4m3_underflow": spread, "near_e4m3_overflow": top, "fp32_subnormal": subnormal}


@pytest.mark.parametrize("block", [(1, 16), (16, 16)])
def test_scales_and_codes_match_an_independent_float64_model(block):
    total = 0
    for name, x in distributions().items():
        x32 = torch.from_numpy(x.astype(np.float32))
        q = nc.quantize(x32, block=block)
        codes, s_dec_b, s_dec = oracle.nvfp4(x32.double().numpy(), block)
        got_scales = q.scales.to(torch.float32).numpy()[:: block[0]]
        assert np.array_equal(got_scales, s_dec_b), name
        assert q.global_scale.item() == s_dec, name
        assert np.array_equal(unpack_nibbles(q.codes).numpy(), codes), name
        total += x.size
    assert total >= 1_000_000


def test_the_distributions_reach_the_edges_of_e4m3():
    d = distributions()
    q = nc.quantize(torch.from_numpy(d["near_e4m3_underflow"].astype(np.float32)))
    s = q.scales.to(torch.float32)
    assert (s == 0).any() and ((s > 0) & (s < 2.0 ** -6)).any()  # underflow and subnormal scales
    q = nc.quantize(torch.from_numpy(d["near_e4m3_overflow"].astype(np.float32)))
    s = q.scales.to(torch.float32)
    assert (s >= 400).all() and (s == 448).any() and (s == 416).any()
    q = nc.quantize(torch.from_numpy(d["fp32_subnormal"].astype(np.float32)))
    assert q.global_scale.item() == (1 / torch.tensor(torch.finfo(torch.float32).max)).item()


def test_global_scale_guards():
    from nvfp4_compile.scales import global_encode_scale
    amax = torch.tensor([0.0, float("inf"), 1e-45, 2688.0, 1.0])
    s = global_encode_scale(amax)
    assert s.tolist()[:4] == [1.0, 1.0, torch.finfo(torch.float32).max, 1.0]
    # A tensor numerator: one correctly rounded division, not reciprocal-then-multiply.
    assert s[4].item() == 2688.0


def test_block_scale_grouping_is_s_enc_times_one_sixth():
    # Block amaxes within a few ulps of E4M3 rounding midpoints, where one FP32 rounding
    # more or less decides the scale: the contract's grouping amax * (S_enc * (1/6)) must
    # match the oracle, and the other grouping (amax / 6 * S_enc) must visibly differ.
    from nvfp4_compile.scales import nvfp4_block_decode_scales
    s_enc = torch.tensor(2688.0) / torch.tensor(7.3)
    factor = s_enc * (torch.tensor(1.0) / torch.tensor(6.0))
    e4m3 = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
    midpoints = (e4m3[1:] + e4m3[:-1]) / 2
    amax = midpoints / factor
    ulps = torch.arange(-32, 33, dtype=torch.int32)
    amax = (amax.view(torch.int32)[:, None] + ulps).view(torch.float32).flatten()
    good = nvfp4_block_decode_scales(amax, s_enc).to(torch.float32)
    other = (torch.div(torch.div(amax, torch.tensor(6.0)), 1) * s_enc).clamp(max=448).to(
        torch.float8_e4m3fn).to(torch.float32)
    reference = oracle.e4m3(oracle.f32(amax.double().numpy() * oracle.f32(float(s_enc) * oracle.f32(1 / 6))))
    assert torch.equal(good, torch.from_numpy(reference).float())
    assert (good != other).sum() > 0  # the grouping is observable


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [(1, 16), (16, 16)])
def test_zero_tensor_and_zero_blocks_are_exact_zeros(dtype, block):
    z = torch.zeros(32, 64, dtype=dtype)
    q = nc.quantize(z, block=block)
    assert q.global_scale.item() == 1.0
    assert torch.equal(nc.dequantize(q), torch.zeros(32, 64))
    x = torch.randn(32, 64).to(dtype)
    x[:16, :16] = 0
    x[16:, 32:48] = -0.0
    y = nc.dequantize(nc.quantize(x, block=block))
    assert not torch.isnan(y).any()
    assert torch.equal(y[:16, :16], torch.zeros(16, 16)) and torch.equal(y[16:, 32:48], torch.zeros(16, 16))


def test_two_d_dequantized_is_the_transpose_of_the_transposed_quantization():
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 96, generator=gen) * torch.rand(64, 1, generator=gen) * 10).to(torch.bfloat16)
    q = nc.quantize(w, block=(16, 16))
    qt = nc.quantize(w.t().contiguous(), block=(16, 16))
    assert torch.equal(nc.dequantize(q).t(), nc.dequantize(qt))
    moved = q.t()  # the same thing by moving codes and scales, as dgrad does
    assert torch.equal(moved.codes, qt.codes)
    assert torch.equal(moved.scales.view(torch.uint8), qt.scales.view(torch.uint8))
    assert moved.shape == qt.shape == (96, 64)
    with pytest.raises(ValueError, match="2D-scaled"):
        nc.quantize(w).t()


def test_one_d_scales_differ_from_two_d():
    w = torch.randn(32, 32) * torch.linspace(0.1, 10, 32)[:, None]
    assert not torch.equal(nc.quantize(w).scales.view(torch.uint8),
                           nc.quantize(w, block=(16, 16)).scales.view(torch.uint8))


@pytest.mark.parametrize("shape, block, rule", [
    ((4, 24), (1, 16), "multiple of 16"),
    ((24, 32), (16, 16), "number of rows 24 must be a multiple of 16"),
    ((4, 48), None, "multiple of 32"),
])
def test_shapes_that_do_not_tile_name_the_shape_and_the_rule(shape, block, rule):
    fmt = "mxfp4" if block is None else "nvfp4"
    with pytest.raises(ValueError, match=rule) as err:
        nc.quantize(torch.ones(shape), block=block, format=fmt)
    assert str(tuple(shape)) in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        nc.quantize(torch.ones(2, 4, 16))
    with pytest.raises(TypeError, match="float64"):
        nc.quantize(torch.ones(4, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="rounding"):
        nc.quantize(torch.ones(4, 16), rounding="up")
    with pytest.raises(ValueError, match="supports blocks"):
        nc.quantize(torch.ones(32, 32), block=(32, 32))
    with pytest.raises(ValueError, match="unknown format"):
        nc.quantize(torch.ones(4, 16), format="nvfp8")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("block", [(1, 16), (16, 16)])
def test_non_finite_values_poison_their_block_only(bad, block):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 64, generator=gen)
    x[3, 20] = bad
    q = nc.quantize(x, block=block)
    y = nc.dequantize(q)
    rows = slice(0, 16) if block[0] == 16 else slice(3, 4)
    assert torch.isnan(y[rows, 16:32]).all()
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[rows, 16:32] = False
    assert torch.isfinite(y[mask]).all()
    assert nc.nonfinite_blocks(q).item() == 1


def test_non_finite_values_leave_other_blocks_untouched():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 64, generator=gen)
    x[3, 20] = 0.0  # the bad value replaces a zero, so the finite amax is unchanged
    clean = nc.dequantize(nc.quantize(x))
    x[3, 20] = float("inf")
    y = nc.dequantize(nc.quantize(x))
    keep = torch.ones_like(y, dtype=torch.bool)
    keep[3, 16:32] = False
    assert torch.equal(y[keep], clean[keep])


@given(rows=st.integers(1, 4).map(lambda r: 16 * r), k_blocks=st.integers(1, 6),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       two_d=st.booleans(), log_scale=st.floats(-8, 8), seed=st.integers(0, 2**31))
def test_property_shapes_dtypes_and_error_bound(rows, k_blocks, dtype, two_d, log_scale, seed):
    k = 16 * k_blocks
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, k, generator=gen) * math.exp(log_scale)).to(dtype)
    block = (16, 16) if two_d else (1, 16)
    q = nc.quantize(x, block=block)
    assert q.codes.shape == (rows, k // 2) and q.codes.dtype == torch.uint8
    assert q.scales.shape == (rows, k // 16) and q.scales.dtype == torch.float8_e4m3fn
    assert q.shape == (rows, k) and q.block == block
    y = nc.dequantize(q, dtype)
    assert y.dtype == dtype and y.shape == x.shape
    # |x - x_hat| <= one grid step at the top of the block (2 * scale), and far less typically.
    step = 2 * q.scales.to(torch.float32).repeat_interleave(16, 1) * q.global_scale
    err = (x.float() - nc.dequantize(q)).abs()
    assert bool((err <= step * 1.0001 + (step == 0) * x.float().abs()).all())


@pytest.mark.parametrize("rows", [0, 16])
def test_empty_inputs(rows):
    q = nc.quantize(torch.zeros(rows, 0 if rows else 32))
    assert nc.dequantize(q).shape == q.shape
