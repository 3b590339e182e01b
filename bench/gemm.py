"""The emulated NVFP4 GEMM against the BF16 cuBLAS GEMM, M=N=K, in one run.

    python bench/gemm.py [--sizes 2048 4096 8192] [--sweep]

Rows: BF16 ``torch.mm`` (BF16 out, the baseline), and the three strategies of
``nvfp4_compile.kernels.triton_gemm`` on pre-quantized operands (``cublas``: dequantize +
cuBLAS FP32 out + epilogue pass; ``triton``: dequantize + Triton GEMM with the alpha/bias
epilogue; ``fused``: dequantization inside the Triton GEMM). ``--sweep`` times every tile
configuration in ``SWEEP`` for the Triton strategies and reports the best.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import median_ms, report  # noqa: E402

import nvfp4_compile as nc  # noqa: E402
from nvfp4_compile.kernels.triton_gemm import DEFAULT_TILES, GemmTiles, emulated_gemm  # noqa: E402

SWEEP = [GemmTiles(128, 256, 64, 8, 8, 3), GemmTiles(128, 256, 64, 8, 8, 4), GemmTiles(128, 128, 64, 8, 4, 4),
         GemmTiles(128, 128, 128, 8, 8, 3), GemmTiles(256, 128, 64, 8, 8, 3), GemmTiles(128, 256, 128, 8, 8, 2),
         GemmTiles(64, 256, 64, 8, 4, 4)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--shapes", nargs="+", default=[], metavar="MxNxK",
                        help="M x N x K problems (a 1B model's linears: 8192x8192x2048 ...) instead of --sizes")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    problems = [tuple(map(int, s.split("x"))) for s in args.shapes] or [(n, n, n) for n in args.sizes]
    for m, n, k in problems:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        qa, qb = nc.quantize(a), nc.quantize(b, block=(16, 16))
        ops = (qa.codes, qa.scales.view(torch.uint8), qa.global_scale, qb.codes, qb.scales.view(torch.uint8),
               qb.global_scale, None, torch.bfloat16)
        bf16 = median_ms(lambda: torch.mm(a, b.t()))
        tflop = 2 * m * n * k / 1e12
        size = f"{m}x{n}x{k}"
        rows.append([size, "bf16 torch.mm", "", bf16, 1.0, tflop / (bf16 / 1e3)])
        for strategy in ("cublaslt", "cublas", "triton", "fused"):
            configs = SWEEP if args.sweep and strategy not in ("cublas", "cublaslt") else [DEFAULT_TILES]
            for tiles in configs:
                try:
                    ms = median_ms(lambda: emulated_gemm(*ops, strategy=strategy, tiles=tiles))
                except Exception as err:  # a tile shape that does not fit shared memory
                    print(f"{strategy} {tiles}: {type(err).__name__}: {str(err)[:200]}")
                    continue
                label = "" if strategy in ("cublas", "cublaslt") else f"{tiles.block_m}x{tiles.block_n}x{tiles.block_k} " \
                    f"w{tiles.num_warps} s{tiles.num_stages}"
                rows.append([size, strategy, label, ms, ms / bf16, tflop / (ms / 1e3)])
    report("Emulated NVFP4 GEMM (BF16 out) vs BF16 mm", ["MxNxK", "kernel", "tiles", "ms", "x bf16",
                                                                 "TFLOP/s"], rows, "gemm", {})


if __name__ == "__main__":
    main()
