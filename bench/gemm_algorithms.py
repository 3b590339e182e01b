"""cuBLASLt's heuristic choice against the fastest of its other candidates, on the GEMMs of a
GPT training step, in one run; ``torch.mm`` (BF16, what the default Inductor backend runs) beside.

    python bench/gemm_algorithms.py [--dim 2048] [--tokens 8192] [--candidates 16]

Each problem as the NVFP4 linear runs it (``nvfp4_compile.kernels.cublaslt.matmul``: BF16
operands, alpha from device memory, BF16 out): fprop ``X @ W^T``, dgrad ``dY @ W`` (W read through
its transposed view), wgrad ``dY^T @ X`` on the RHT'd operands, for the four linears of a block
(qkv, proj, up, down). The heuristic's first algorithm is what ``matmul`` runs today.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import median_ms, report  # noqa: E402

from nvfp4_compile.kernels import cublaslt  # noqa: E402


def problems(dim: int, tokens: int):
    """(name, M, N, K, b transposed) of one block's GEMMs."""
    linears = {"qkv": (3 * dim, dim), "proj": (dim, dim), "up": (4 * dim, dim), "down": (dim, 4 * dim)}
    for name, (n_out, n_in) in linears.items():
        yield f"{name} fprop", tokens, n_out, n_in, False
        yield f"{name} dgrad", tokens, n_in, n_out, True
        yield f"{name} wgrad", n_out, n_in, tokens, False


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--candidates", type=int, default=16)
    args = parser.parse_args(argv)
    dev = torch.device("cuda")
    alpha = torch.tensor([1.0, 0.0], device=dev)
    rows = []
    total = {"mm": 0.0, "heuristic": 0.0, "best": 0.0}
    for name, m, n, k, b_t in problems(args.dim, args.tokens):
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=dev, dtype=torch.bfloat16).t() if b_t else torch.randn(n, k, device=dev,
                                                                                             dtype=torch.bfloat16)
        out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
        plan = cublaslt._Plan(m, n, k, torch.bfloat16, None, dev.index or 0, b_t, candidates=args.candidates)
        times = []
        for i, result in enumerate(plan.results):
            plan.result = result
            try:
                times.append(median_ms(lambda: cublaslt.matmul(a, b, alpha, None, out, plan=plan)))
            except cublaslt.CublasLtError:
                times.append(float("inf"))
        mm = median_ms(lambda: torch.mm(a, b.t()))
        best = min(range(len(times)), key=times.__getitem__)
        total["mm"] += mm
        total["heuristic"] += times[0]
        total["best"] += times[best]
        rows.append([f"{name} {m}x{n}x{k}", mm, times[0], times[best], best, len(times), times[0] / times[best]])
    rows.append(["block total", total["mm"], total["heuristic"], total["best"], -1, -1,
                 total["heuristic"] / total["best"]])
    report("cuBLASLt algorithms on a GPT block's GEMMs, ms (median)",
           ["GEMM", "torch.mm", "heuristic", "best candidate", "best index", "candidates", "heuristic / best"],
           rows, "gemm_algorithms", vars(args))


if __name__ == "__main__":
    main()
