"""Quantize kernels on an NxN BF16 tensor against ``x.clone()`` in the same run.

    python bench/kernels.py [--size 8192]

Rows: the Triton kernels (1D RNE, 1D SR, 2D 16x16, RHT on a transposed view as wgrad
needs it), the plain-PyTorch reference compiled by Inductor (the naive baseline), and
torchao's NVFP4 quantize where torchao is installed. Target: each kernel within 1.5x clone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import median_ms, report  # noqa: E402

import nvfp4_compile as nc  # noqa: E402
from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args(argv)
    n = args.size
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    clone = median_ms(lambda: x.clone())
    gbytes = 2 * n * n * 2 / 1e9
    cases = {
        "x.clone() (read+write)": lambda: x.clone(),
        "triton 1x16 RNE": lambda: quantize_nvfp4(x, 1, "rne"),
        "triton 1x16 SR": lambda: quantize_nvfp4(x, 1, "sr"),
        "triton 16x16 RNE (2D weight)": lambda: quantize_nvfp4(x, 16, "rne"),
        "triton X^T RHT 1x16 RNE (wgrad)": lambda: quantize_nvfp4(x.t(), 1, "rne", rht=True),
        "triton dY^T RHT 1x16 SR (wgrad)": lambda: quantize_nvfp4(x.t(), 1, "sr", rht=True),
    }
    naive = torch.compile(lambda t: nc.quantize(t))
    cases["reference, torch.compile (naive)"] = lambda: naive(x)
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

        compiled_ao = torch.compile(lambda t: nvfp4_quantize(t, per_tensor_scale=per_tensor_amax_to_scale(t.abs().max())))
        cases["torchao nvfp4_quantize (compiled)"] = lambda: compiled_ao(x)
    except Exception as err:  # torchao missing or its API moved
        print(f"torchao peer not run: {err}")
    rows = []
    for name, fn in cases.items():
        ms = clone if name.startswith("x.clone") else median_ms(fn)
        rows.append([name, ms, ms / clone, gbytes / (ms / 1e3) if name.startswith("x.clone") else float("nan")])
    report(f"Quantize {n}x{n} BF16, ms (median) and ratio to clone", ["kernel", "ms", "x clone", "clone GB/s"],
           rows, "kernels", {"size": n})


if __name__ == "__main__":
    main()
