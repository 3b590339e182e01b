"""Where the time of an NVFP4 linear fwd+bwd goes: CUDA time per kernel, M=N=K.

    python bench/profile_linear.py [--size 8192]

Prints the torch.profiler table of the compiled ``backend="nvfp4"`` step (GPU time by kernel)
and the step's CPU wall time against its GPU time, which shows launch overhead at small sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.linear import step_fn  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args(argv)
    n = args.size
    layer = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    step = step_fn(layer, x, "nvfp4")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=60))
    start = time.perf_counter()
    for _ in range(20):
        step()
    host = (time.perf_counter() - start) / 20 * 1e3
    torch.cuda.synchronize()
    total = (time.perf_counter() - start) / 20 * 1e3
    print(f"size {n}: host time to issue one step {host:.3f} ms, wall per step {total:.3f} ms")


if __name__ == "__main__":
    main()
