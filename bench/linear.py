"""NVFP4 linear layer forward+backward against the BF16 linear, M=N=K, in one run.

    python bench/linear.py [--sizes 2048 4096 8192] [--modes default reduce-overhead]

NVFP4 is ``torch.compile(nn.Linear, backend="nvfp4")`` (every quantization, RHT, SR and the
three emulated GEMMs); BF16 is the same layer under the default Inductor backend. With
``--modes reduce-overhead`` both are also timed under CUDA graphs (``mode="reduce-overhead"``).
Targets: within 1.10x of BF16 at 8192, 1.25x at 4096.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import median_ms, report  # noqa: E402

import nvfp4_compile  # noqa: E402,F401
from nvfp4_compile.kernels import triton_gemm  # noqa: E402


def step_fn(layer, x, backend, mode="default"):
    torch._dynamo.reset()
    mode = None if mode == "default" else mode
    if backend == "nvfp4":  # a mode excludes options: CUDA graphs through the backend's option
        compiled = torch.compile(layer, backend=backend, options={"bf16_last_blocks_fraction": 0.0,
                                                                  "cuda_graphs": mode is not None})
    else:
        compiled = torch.compile(layer, backend=backend, mode=mode)
    grad = torch.randn(x.shape[0], layer.out_features, device="cuda", dtype=torch.bfloat16)

    def step():
        if mode is not None:
            torch.compiler.cudagraph_mark_step_begin()
        layer.weight.grad = None
        x.grad = None
        compiled(x).backward(grad)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--strategies", nargs="+", default=list(triton_gemm.STRATEGIES),
                        help="emulated GEMM strategies to time (nvfp4_compile.kernels.triton_gemm)")
    parser.add_argument("--modes", nargs="+", default=["default"], choices=["default", "reduce-overhead"],
                        help="torch.compile modes, each timed for both backends")
    parser.add_argument("--operands", nargs="+", default=["values"], choices=["values", "codes"],
                        help="GEMM operands: BF16 values from the quantizers (the default) or dequantized "
                             "FP4 codes (NVFP4_COMPILE_BF16_OPERANDS=0)")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        layer = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        tflops = 3 * 2 * n ** 3 / 1e12
        for mode in args.modes:
            bf16 = median_ms(step_fn(layer, x, "inductor", mode))
            for operands in args.operands:
                os.environ["NVFP4_COMPILE_BF16_OPERANDS"] = "0" if operands == "codes" else ""
                step = step_fn(layer, x, "nvfp4", mode)  # compiles now: the setting is read by the graph pass
                step()
                for strategy in args.strategies:
                    triton_gemm.DEFAULT_STRATEGY = strategy  # read at every call of the GEMM op
                    nvfp4 = median_ms(step)
                    rows.append([n, mode, operands, strategy, bf16, nvfp4, nvfp4 / bf16, tflops / (bf16 / 1e3),
                                 tflops / (nvfp4 / 1e3)])
    report("Linear fwd+bwd, M=N=K, BF16 weights and inputs", ["size", "mode", "operands", "gemm", "bf16 ms",
                                                              "nvfp4 ms", "nvfp4/bf16", "bf16 TFLOP/s",
                                                              "nvfp4 TFLOP/s"],
           rows, "linear", {})


if __name__ == "__main__":
    main()
