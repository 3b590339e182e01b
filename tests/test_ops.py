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
