"""Experiment: a GEMM that reads one operand as FP4 codes and decodes it in registers, against
dequantize + cuBLASLt (what the package runs) and BF16 ``torch.mm``.

    python3 bench/mixed_gemm.py [--shapes 8192x2048x8192 ...] [--configs 128x256x64x3 ...]

``C [M, N] = alpha * (A @ B^T)`` with ``A [M, K]`` given as packed E2M1 codes and E4M3 block
scales (the wgrad operand the forward saves, ``RHT(X^T)``) and ``B [N, K]`` as BF16 values. The
question it answers: can a Triton kernel fold the dequantize pass into the GEMM's operand loads
without losing more GEMM time than the pass costs? Every NVFP4 row is checked against the
package's result (same values; FP32 sums in another order, so compared with a tolerance).
The kernel here is a measurement, not a package path; it has its own loop because the
package's ``triton_gemm._gemm_kernel`` decodes both operands or neither.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import graph_median_ms, report  # noqa: E402
from nvfp4_compile.kernels import cublaslt  # noqa: E402
from nvfp4_compile.kernels.triton_dequant import _fp4_tile, dequantize_to_bf16  # noqa: E402
from nvfp4_compile.kernels.triton_quantize import _INTERPRETED, quantize_nvfp4  # noqa: E402


@triton.jit
def _gemm_fp4_a_kernel(a_codes_ptr, a_scales_ptr, a_ptr, b_ptr, c_ptr, alpha_ptr, M, N, K, FP4_A: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_N]`` tile of C; A decoded from FP4 in registers (``FP4_A``) or loaded as
    BF16 (the same kernel's baseline); B always BF16. Programs grouped along M for L2 reuse."""
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rows_a = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_b = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if FP4_A:
            a = _fp4_tile(a_codes_ptr, a_scales_ptr, rows_a, k0, M, K, BLOCK_M, BLOCK_K)
        else:
            a = tl.load(a_ptr + rows_a[:, None].to(tl.int64) * K + (k0 + ks)[None, :])
        b = tl.load(b_ptr + rows_b[:, None].to(tl.int64) * K + (k0 + ks)[None, :])
        if _INTERPRETED:  # the interpreter's BF16 product is not the GPU's: check the decode in FP32
            acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    out = acc * tl.load(alpha_ptr)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(c_ptr + rows_a[:, None].to(tl.int64) * N + cols[None, :], out.to(tl.bfloat16))


def triton_gemm(a_codes, a_scales, a_values, b, alpha, fp4_a: bool, config: tuple) -> torch.Tensor:
    bm, bn, bk, stages = config
    M, N, K = a_values.shape[0], b.shape[0], b.shape[1]
    if M % bm or N % bn or K % bk:
        raise ValueError(f"shape {M}x{N}x{K} does not tile by {config}")
    c = torch.empty((M, N), dtype=torch.bfloat16, device=b.device)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _gemm_fp4_a_kernel[grid](a_codes, a_scales, a_values, b, c, alpha, M, N, K, FP4_A=fp4_a, BLOCK_M=bm,
                             BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=8, num_stages=stages)
    return c


def package_gemm(a_codes, a_scales, b, alpha_beta) -> torch.Tensor:
    """What the package runs for a saved FP4 operand: dequantize it, then cuBLASLt with alpha."""
    a = dequantize_to_bf16(a_codes, a_scales)
    c = torch.empty((a.shape[0], b.shape[0]), dtype=torch.bfloat16, device=b.device)
    return cublaslt.matmul(a, b, alpha_beta, None, c)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["2048x2048x8192", "6144x2048x8192", "2048x8192x8192",
                                                        "8192x2048x8192", "8192x8192x8192"])
    parser.add_argument("--configs", nargs="+", default=["128x128x64x4", "128x256x64x3", "256x128x64x3"])
    args = parser.parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    torch.manual_seed(0)
    rows, results = [], {}
    for shape in args.shapes:
        M, N, K = (int(v) for v in shape.split("x"))
        a_codes, a_scales, a_sdec = quantize_nvfp4(torch.randn(M, K, device="cuda", dtype=torch.bfloat16))
        b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        a_values = dequantize_to_bf16(a_codes, a_scales)
        alpha_beta = torch.stack([a_sdec, torch.zeros_like(a_sdec)]).contiguous()
        want = package_gemm(a_codes, a_scales, b, alpha_beta).float()
        row = {"BF16 torch.mm": graph_median_ms(lambda: torch.mm(a_values, b.t())),
               "dequantize + cuBLASLt": graph_median_ms(lambda: package_gemm(a_codes, a_scales, b, alpha_beta))}
        for config in configs:
            name = "x".join(map(str, config))
            try:
                for fp4_a, label in ((False, "Triton BF16"), (True, "Triton FP4 A")):
                    got = triton_gemm(a_codes, a_scales, a_values, b, alpha_beta, fp4_a, config).float()
                    err = ((got - want).abs().max() / want.abs().max()).item()
                    if err > 1e-2:
                        raise AssertionError(f"{label} {name}: relative error {err:.2e} against the package")
                    row[f"{label} {name}"] = graph_median_ms(
                        lambda: triton_gemm(a_codes, a_scales, a_values, b, alpha_beta, fp4_a, config))
            except (OutOfResources, ValueError) as err:
                print(f"{shape} {name}: skipped ({err})")
        results[shape] = row
        base = row["BF16 torch.mm"]
        best_bf16 = min((v, k) for k, v in row.items() if k.startswith("Triton BF16"))
        best_fp4 = min((v, k) for k, v in row.items() if k.startswith("Triton FP4 A"))
        rows.append([shape, base, row["dequantize + cuBLASLt"] / base, best_bf16[0] / base, best_bf16[1],
                     best_fp4[0] / base, best_fp4[1]])
    report("GEMM with the saved FP4 operand, as a multiple of BF16 torch.mm",
           ["M x N x K", "torch.mm ms", "dequantize + cuBLASLt", "Triton BF16", "tile", "Triton FP4 A", "tile"],
           rows, "mixed_gemm", {"results_ms": results, "configs": args.configs})


if __name__ == "__main__":
    main()
