"""Triton kernels that run the quantize kernels' helpers beside what they must equal, for
tests/test_triton_kernels.py: the E4M3 helpers both ways (hardware conversion, integer rounding),
``_philox`` beside ``tl.philox``, and the E2M1 magnitude helpers beside the codes they shortcut.
Imported only where Triton is installed."""

import triton
import triton.language as tl

from nvfp4_compile.kernels.triton_quantize import (_e2m1_rne, _e2m1_rne_magnitude, _e2m1_sr, _e2m1_sr_magnitude,
                                                   _e2m1_value, _e4m3_bits, _e4m3_value, _philox)


@triton.jit
def e4m3_both_ways(s_ptr, bits_hw_ptr, bits_int_ptr, codes_ptr, value_hw_ptr, value_int_ptr, n, n_codes,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    s = tl.load(s_ptr + offs, mask=inside, other=0.0)
    tl.store(bits_hw_ptr + offs, _e4m3_bits(s, True), mask=inside)
    tl.store(bits_int_ptr + offs, _e4m3_bits(s, False), mask=inside)
    code_inside = offs < n_codes
    codes = tl.load(codes_ptr + offs, mask=code_inside, other=0)
    tl.store(value_hw_ptr + offs, _e4m3_value(codes, True).to(tl.int32, bitcast=True), mask=code_inside)
    tl.store(value_int_ptr + offs, _e4m3_value(codes, False).to(tl.int32, bitcast=True), mask=code_inside)


@triton.jit
def philox_both_ways(seed_ptr, c0_ptr, c1_ptr, ours_ptr, tritons_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    seed = tl.load(seed_ptr)
    c0 = tl.load(c0_ptr + i)
    c1 = tl.load(c1_ptr + i)
    ours = _philox(seed.to(tl.uint32, bitcast=True), c0.to(tl.uint32, bitcast=True), c1.to(tl.uint32, bitcast=True))
    tritons = tl.philox(seed, c0, c1, 0 * c0, 0 * c0)
    for w in tl.static_range(4):
        tl.store(ours_ptr + w * N + i, ours[w].to(tl.int32, bitcast=True))
        tl.store(tritons_ptr + w * N + i, tritons[w].to(tl.int32, bitcast=True))


@triton.jit
def e2m1_both_ways(v_ptr, r_ptr, rne_ptr, rne_code_ptr, sr_ptr, sr_code_ptr, code_ptr, n, BLOCK: tl.constexpr):
    """Per value: ``_e2m1_rne_magnitude`` and ``|_e2m1_value(_e2m1_rne)|``, ``_e2m1_sr_magnitude``
    and ``|_e2m1_value(_e2m1_sr)|`` with the thresholds ``r``, as FP32 bits; the code ``_e2m1_rne``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    v = tl.load(v_ptr + offs, mask=inside, other=0.0)
    r = tl.load(r_ptr + offs, mask=inside, other=0).to(tl.uint32, bitcast=True)
    tl.store(rne_ptr + offs, _e2m1_rne_magnitude(v).to(tl.int32, bitcast=True), mask=inside)
    tl.store(rne_code_ptr + offs, tl.abs(_e2m1_value(_e2m1_rne(v))).to(tl.int32, bitcast=True), mask=inside)
    tl.store(sr_ptr + offs, _e2m1_sr_magnitude(v, r).to(tl.int32, bitcast=True), mask=inside)
    tl.store(sr_code_ptr + offs, tl.abs(_e2m1_value(_e2m1_sr(v, r))).to(tl.int32, bitcast=True), mask=inside)
    tl.store(code_ptr + offs, _e2m1_rne(v), mask=inside)
