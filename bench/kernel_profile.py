"""Each NVFP4 pass of one GPT block's linear layers, run a few times, for a kernel profiler
(Nsight Compute) to attach to: nothing is timed here.

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        -k regex:'_rht_pair_kernel|_rht_transpose_kernel|_quantize_kernel' python3 bench/kernel_profile.py

The passes as the training step runs them (bench/train_step.py): X's pair (X rowwise as BF16
values, RHT(X^T) as codes), dY's pair (SR, BF16 values both ways), the 2D weight's amax and codes
and values, and the dequantization of RHT(X^T)'s codes in the backward.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nvfp4_compile.kernels import triton_rht_transpose  # noqa: E402
from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16  # noqa: E402
from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4  # noqa: E402
from nvfp4_compile.kernels.triton_rht_transpose import quantize_pair_rht  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--features", type=int, default=2048, help="X's features (a GPT block's width)")
    parser.add_argument("--out-features", type=int, default=2048, help="dY's features")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--knobs", default="",
                        help="settings of triton_rht_transpose's module attributes, e.g. PAIR_PASSES=2")
    args = parser.parse_args(argv)
    for kv in filter(None, args.knobs.split(",")):
        k, v = kv.split("=")
        setattr(triton_rht_transpose, k, ast.literal_eval(v))
    x = torch.randn(args.tokens, args.features, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(args.tokens, args.out_features, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(args.out_features, args.features, device="cuda", dtype=torch.bfloat16)
    for _ in range(args.repeat):
        xq = quantize_pair_rht(x, "rne", "rne", values=(True, False))
        quantize_pair_rht(dy, "sr", "sr", values=(True, True))
        quantize_nvfp4(w, 16, "rne", values=True, codes=True)
        dequantize_to_bf16(xq[3], xq[4])
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
