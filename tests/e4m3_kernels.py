"""A Triton kernel that runs the quantize kernels' E4M3 helpers both ways (hardware conversion,
integer rounding) on the same inputs, for tests/test_triton_kernels.py. Imported only where
Triton is installed."""

import triton
import triton.language as tl

from nvfp4_compile.kernels.triton_quantize import _e4m3_bits, _e4m3_value


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
