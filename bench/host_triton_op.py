"""Host time of one NVFP4 op called from a compiled graph: through ``torch.library.custom_op`` (how
the package registers its ops) against the same Triton kernel behind ``torch.library.triton_op``,
which Inductor traces into its own generated code (the kernel launched from Inductor's wrapper,
no dispatcher and no Python op body at run time). Default mode, no CUDA graphs: what a step
without ``mode="reduce-overhead"`` pays a call.

    python bench/host_triton_op.py [--calls 32] [--steps 200]

The op is the dequantize of a small tensor (``nvfp4::dequantize``: codes and scale bits -> BF16
values), so the GPU work is negligible and the time per call is the host's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.library import triton_op, wrap_triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402
from bench.host_overhead import per_call_us  # noqa: E402

import nvfp4_compile  # noqa: E402,F401  (registers nvfp4::dequantize)
from nvfp4_compile.kernels import triton_quantize  # noqa: E402
from nvfp4_compile.kernels.launch import cdiv  # noqa: E402
from nvfp4_compile.kernels.triton_dequant import _dequant_kernel  # noqa: E402


@triton_op("nvfp4_bench::dequantize", mutates_args=())
def dequantize_triton_op(codes: torch.Tensor, scale_bits: torch.Tensor) -> torch.Tensor:
    R, K = codes.shape[0], codes.shape[1] * 2
    out = torch.empty((R, K), dtype=torch.bfloat16, device=codes.device)
    wrap_triton(_dequant_kernel)[(cdiv(R, 32), cdiv(K, 256))](
        codes, scale_bits, out, R, K, out, out, out, ALPHA=False, BLOCK_R=32, BLOCK_K=256,
        HW_FP8=triton_quantize.hardware_fp8(codes.device), num_warps=8)
    return out


def chain(op, calls: int):
    def f(codes, scales):
        total = None
        for _ in range(calls):
            y = op(codes, scales)
            total = y if total is None else total + y  # each result used: nothing is dead code
        return total
    return f


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=32, help="op calls in the compiled function")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    codes = torch.randint(0, 256, (64, 128), dtype=torch.uint8, device="cuda")
    scales = torch.full((64, 16), 0x38, dtype=torch.uint8, device="cuda")
    ops = {"custom_op (the package's)": lambda c, s: torch.ops.nvfp4.dequantize(c, s, "nvfp4"),
           "triton_op": torch.ops.nvfp4_bench.dequantize}
    outs, rows = {}, []
    for name, op in ops.items():
        torch._dynamo.reset()
        fn = torch.compile(chain(op, args.calls))
        outs[name] = fn(codes, scales)
        ms = per_call_us(lambda: fn(codes, scales), args.steps) / 1e3
        rows.append([name, ms, ms / args.calls * 1e3])
    first, second = outs.values()
    assert torch.equal(first, second), "the two ops disagree"
    report(f"Host time of {args.calls} dequantize calls in a compiled function (default mode)",
           ["op", "ms a call of the function", "us an op"], rows, "host_triton_op", vars(args))


if __name__ == "__main__":
    main()
