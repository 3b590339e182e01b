"""``nvfp4_compile.ops``: how the custom ops are registered with the dispatcher."""

import pytest
import torch

from nvfp4_compile import ops

OPS = ("quantize", "quantize_pair", "rht", "transpose_2d", "gemm")


def _autograd_entry(op: str, key: str) -> str:
    return next(line for line in torch._C._dispatch_dump_table(f"nvfp4::{op}").splitlines()
                if line.startswith(f"{key}:"))


@pytest.mark.parametrize("op", OPS)
def test_cuda_calls_fall_through_autograd_and_cpu_calls_keep_it(op):
    assert "fallthrough" in _autograd_entry(op, "AutogradCUDA")
    assert "autograd kernel" in _autograd_entry(op, "AutogradCPU")
    try:
        ops.set_autograd_fallthrough(False)
        assert "autograd kernel" in _autograd_entry(op, "AutogradCUDA")
    finally:
        ops.set_autograd_fallthrough(True)
    assert "fallthrough" in _autograd_entry(op, "AutogradCUDA")


def test_cpu_calls_still_refuse_to_differentiate():
    x = torch.randn(16, 32, requires_grad=True)
    out = torch.ops.nvfp4.gemm(*torch.ops.nvfp4.quantize(x, "nvfp4", 1, "rne", "", False),
                               *torch.ops.nvfp4.quantize(x, "nvfp4", 1, "rne", "", False), None, "nvfp4",
                               torch.float32)
    with pytest.raises(RuntimeError, match="autograd"):
        out.sum().backward()


def test_tensors_beyond_32_bit_offsets_take_the_reference_with_a_logged_reason(caplog):
    """The Triton kernels index with 32-bit element offsets: a tensor with an element (or, through a
    broadcast view, an output element) past 2^31 - 1 is refused, logged once with the op and shape."""
    meta = dict(device="meta", dtype=torch.bfloat16)
    assert ops._kernel_addressable("quantize", torch.empty(2**16, 2**15, **meta))  # last offset 2^31 - 1
    with caplog.at_level("WARNING", logger="nvfp4_compile.ops"):
        assert not ops._kernel_addressable("quantize", torch.empty(2**16, 2**15 + 16, **meta))
        assert not ops._kernel_addressable("quantize", torch.empty(2**16, 2**15 + 16, **meta))
        assert not ops._kernel_addressable("gemm", torch.empty(64, 16, **meta),
                                           torch.empty(1, 16, **meta).expand(2**28, 16))  # 2^32 elements, 16 stored
        wide = torch.empty(2**15 + 16, 2**16, **meta).t()  # a transposed view: offsets as large as the storage
        assert not ops._kernel_addressable("quantize_pair", wide)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # once per op and shape
    assert "nvfp4::quantize on a tensor of shape (65536, 32784)" in messages[0] and "reference" in messages[0]
    assert "(268435456, 16)" in messages[1] and "nvfp4::quantize_pair" in messages[2]
