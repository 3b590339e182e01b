"""Quantize kernels on an NxN BF16 tensor against ``x.clone()`` in the same run.

    python bench/kernels.py [--size 8192]

Rows: the Triton kernels (1D RNE, 1D SR, 2D 16x16, RHT on a transposed view as wgrad
needs it), the plain-PyTorch reference compiled by Inductor (the naive baseline), and
torchao's NVFP4 quantize where torchao is installed. Target: each kernel within 1.5x clone.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import graph_median_ms, median_ms, report  # noqa: E402

import nvfp4_compile as nc  # noqa: E402
from nvfp4_compile import ops  # noqa: E402
from nvfp4_compile.kernels import triton_quantize, triton_rht_transpose  # noqa: E402
from nvfp4_compile.kernels.triton_quantize import QuantizeTiles, Tile, quantize_nvfp4  # noqa: E402
from nvfp4_compile.kernels.triton_quantize_pair import PairTiles, quantize_pair_nvfp4  # noqa: E402
from nvfp4_compile.kernels.triton_rht_transpose import quantize_pair_rht  # noqa: E402

# Candidate tiles (rows, k, warps) for each kernel; --sweep times each kernel with each of its own
# candidates, the other kernels at their defaults. Per-thread work against registers and occupancy:
# the kernels are bound by instructions, so the sweep, not a model, picks.
SWEEP = {
    "rne": [Tile(16, 256, 4), Tile(16, 512, 8), Tile(16, 512, 4), Tile(16, 128, 2), Tile(32, 256, 8), Tile(16, 256, 8)],
    "sr": [Tile(16, 128, 4), Tile(16, 256, 4), Tile(16, 512, 8), Tile(16, 64, 2), Tile(32, 128, 8), Tile(16, 128, 8)],
    "two_d": [Tile(16, 512, 4), Tile(16, 256, 4), Tile(16, 512, 8), Tile(16, 128, 2), Tile(16, 1024, 8)],
    "rht": [Tile(64, 64, 8), Tile(128, 64, 8), Tile(64, 128, 8), Tile(128, 64, 4), Tile(64, 64, 4), Tile(128, 128, 8)],
    "rht_sr": [Tile(64, 64, 8), Tile(128, 64, 8), Tile(64, 128, 8), Tile(128, 64, 4), Tile(64, 64, 4)],
    "amax": [Tile(32, 256, 4), Tile(64, 256, 8), Tile(32, 512, 8), Tile(16, 512, 4)],
    "rht_amax": [Tile(64, 64, 8), Tile(64, 64, 4), Tile(128, 64, 4), Tile(128, 64, 8)],
    "rne_values": [Tile(16, 256, 4), Tile(16, 512, 8), Tile(32, 256, 8), Tile(16, 128, 2), Tile(8, 256, 2),
                   Tile(16, 256, 8), Tile(32, 128, 4)],
    "sr_values": [Tile(8, 128, 2), Tile(16, 128, 4), Tile(16, 256, 8), Tile(32, 128, 8), Tile(16, 64, 2),
                  Tile(16, 128, 8)],
    "rht_pair": [Tile(64, 64, 4), Tile(64, 32, 2), Tile(128, 64, 8), Tile(64, 32, 4), Tile(32, 64, 4),
                 Tile(32, 32, 2), Tile(128, 32, 4)],
    "rht_transpose": [Tile(64, 64, 4), Tile(64, 128, 4), Tile(128, 64, 4), Tile(64, 64, 8), Tile(128, 128, 8),
                      Tile(32, 128, 4), Tile(64, 256, 8)],
}


def fused_rht(fn):
    """``fn`` with the RHT inside the quantize kernel (``NVFP4_COMPILE_FUSED_RHT=1``). The variable
    is set and restored around each call by hand: ``mock.patch.dict(os.environ)`` rewrites the
    whole environment each time, host time that the timed rows would then include."""
    def call(*args):
        before = os.environ.get("NVFP4_COMPILE_FUSED_RHT")
        os.environ["NVFP4_COMPILE_FUSED_RHT"] = "1"
        try:
            return fn(*args)
        finally:
            if before is None:
                del os.environ["NVFP4_COMPILE_FUSED_RHT"]
            else:
                os.environ["NVFP4_COMPILE_FUSED_RHT"] = before
    return call


# (quantize_k=32, 4 warps) made an illegal memory access on an H100 with Triton 3.6 (not understood;
# the same tile with 8 warps runs and is tested): not in the sweep, and PairTiles refuses it.
PAIR_SWEEP = [PairTiles(), PairTiles(128, 4, 64, 4), PairTiles(256, 8, 64, 16)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=None,
                        help="rows of the tensor (default: --size); e.g. 8192 with --size 2048, a GPT block's X")
    parser.add_argument("--sweep", action="store_true", help="time every tile configuration in SWEEP")
    parser.add_argument("--sweep-pair", action="store_true", help="time every tile configuration in PAIR_SWEEP")
    parser.add_argument("--only", nargs="+", default=None, help="time only the kernels whose names contain one of these")
    parser.add_argument("--graphs", action="store_true",
                        help="time each case as a replayed CUDA graph (no host time in the rows: small shapes)")
    parser.add_argument("--programs-per-sm", type=int, nargs="+", default=None,
                        help="also time the kernels with their own amax pass and the RHT pairs with each of these "
                             "numbers of persistent programs per SM (amax, rht_transpose)")
    parser.add_argument("--knobs", nargs="+", default=(),
                        help="also time X^T RHT and the RHT pairs with these settings of module attributes of "
                             "triton_rht_transpose (or else triton_quantize), each a comma-separated list, "
                             "e.g. PROGRAMS_PER_SM=8")
    args = parser.parse_args(argv)
    n = args.size
    tokens = args.tokens or n
    x = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)
    timer = graph_median_ms if args.graphs else median_ms
    clone = timer(lambda: x.clone())
    gbytes = 2 * x.numel() * 2 / 1e9
    cases = {"x.clone() (read+write)": lambda: x.clone()}
    amax = x.float().abs().max().view(torch.int32)  # FP32 bits, as the amax passes leave them
    kernels = {  # name: (call, the tile fields it uses)
        "1x16 RNE": (lambda t: quantize_nvfp4(x, 1, "rne", tiles=t), ("rne", "amax")),
        "1x16 SR": (lambda t: quantize_nvfp4(x, 1, "sr", tiles=t), ("sr",)),
        "1x16 RNE, amax given": (lambda t: quantize_nvfp4(x, 1, "rne", tiles=t, amax_bits=amax), ("rne",)),
        "1x16 RNE, amax given, BF16 values out": (
            lambda t: quantize_nvfp4(x, 1, "rne", tiles=t, amax_bits=amax, values=True), ("rne_values",)),
        "1x16 SR, amax given": (lambda t: quantize_nvfp4(x, 1, "sr", tiles=t, amax_bits=amax), ("sr",)),
        "1x16 SR, amax given, BF16 values out": (
            lambda t: quantize_nvfp4(x, 1, "sr", tiles=t, amax_bits=amax, values=True), ("sr_values",)),
        "16x16 RNE (2D weight)": (lambda t: quantize_nvfp4(x, 16, "rne", tiles=t), ("two_d",)),
        "16x16 RNE (2D weight), codes and BF16 values out": (
            lambda t: quantize_nvfp4(x, 16, "rne", tiles=t, values=True, codes=True), ("two_d",)),
        "X^T RHT 1x16 RNE (wgrad)": (lambda t: quantize_nvfp4(x.t(), 1, "rne", rht=True, tiles=t),
                                     ("rht_transpose", "rne")),
        "dY^T RHT 1x16 SR (wgrad)": (lambda t: quantize_nvfp4(x.t(), 1, "sr", rht=True, tiles=t), ("sr",)),
        "X^T RHT 1x16 RNE (wgrad), RHT in the quantize kernel": (
            fused_rht(lambda t: quantize_nvfp4(x.t(), 1, "rne", rht=True, tiles=t)), ("rht", "rht_amax")),
        "dY^T RHT 1x16 SR (wgrad), RHT in the quantize kernel": (
            fused_rht(lambda t: quantize_nvfp4(x.t(), 1, "sr", rht=True, tiles=t)), ("rht_sr",)),
    }
    for name, (fn, fields) in kernels.items():
        if args.only and not any(o in name for o in args.only):
            continue
        variants = [("", QuantizeTiles())]
        if args.sweep:
            variants += [(f" {f}={tuple(tile)}", QuantizeTiles(**{f: tile})) for f in fields for tile in SWEEP[f][1:]]
        for suffix, tiles in variants:
            cases[f"triton {name}{suffix}"] = (lambda f, t: lambda: f(t))(fn, tiles)
    # Both quantizations of X (fprop rowwise RNE, wgrad X^T with the RHT) and of dY (both SR), as
    # the training step runs them: BF16 values for the operands used in the same pass (X rowwise;
    # dY both ways), codes for RHT(X^T), which the forward saves.
    pairs = {"X pair (X values, RHT(X^T) codes)": ("rne", "rne", (True, False)),
             "dY pair (SR, values both ways)": ("sr", "sr", (True, True))}
    for name, (r, rt, values) in pairs.items():
        if args.only and not any(o in name for o in args.only):
            continue
        for passes in (3, 2):
            tiles = [("", QuantizeTiles())]
            if args.sweep and passes == 2:
                field = "rht_pair_sr" if "sr" in (r, rt) else "rht_pair"
                default = getattr(QuantizeTiles(), field)
                tiles += [(f" {field}={tuple(t)}", QuantizeTiles(**{field: t})) for t in SWEEP["rht_pair"] if t != default]
                # the first pass (both amaxes) runs on the rht_transpose tile
                tiles += [(f" rht_transpose={tuple(t)}", QuantizeTiles(rht_transpose=t)) for t in SWEEP["rht_transpose"][1:]]
            for suffix, t in tiles:
                call = (lambda r, rt, v, t: lambda: quantize_pair_rht(x, r, rt, tiles=t, values=v))(r, rt, values, t)
                call = mock.patch.object(triton_rht_transpose, "PAIR_PASSES", passes)(call)
                cases[f"triton {name}, {passes} passes{suffix}"] = call
    if not args.only:  # the older pair forms, transpose and peer rows
        pairs = {"X pair: 1x16 RNE + X^T RHT RNE": ("rne", "rne"), "dY pair: 1x16 SR + dY^T RHT SR": ("sr", "sr")}
        for name, (r, rt) in pairs.items():
            for tiles in PAIR_SWEEP if args.sweep_pair else [PairTiles()]:
                label = f"triton {name}, one pass" + (f" amax k{tiles.amax_k}w{tiles.amax_warps} q k{tiles.quantize_k}"
                                                      f"w{tiles.quantize_warps}" if args.sweep_pair else "")
                cases[label] = (lambda r, rt, t: lambda: quantize_pair_nvfp4(x, r, rt, True, tiles=t))(r, rt, tiles)
            cases[f"triton {name}, two quantize calls"] = (lambda r, rt: lambda: (quantize_nvfp4(x, 1, r),
                                                                                quantize_nvfp4(x.t(), 1, rt, rht=True)))(r, rt)
            cases[f"triton {name}, all codes"] = (lambda r, rt: lambda: quantize_pair_rht(x, r, rt))(r, rt)
        from nvfp4_compile.kernels.triton_transpose import transpose_2d_nvfp4

        w_codes, w_scales, _ = quantize_nvfp4(x, 16, "rne")
        cases["triton transpose_2d (W^T from 2D W)"] = lambda: transpose_2d_nvfp4(w_codes, w_scales)
        cases["reference transpose_2d (PyTorch)"] = lambda: ops._reference_transpose_2d(w_codes, w_scales, "nvfp4")
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16

    codes, scales, _ = quantize_nvfp4(x, 1, "rne")
    cases["dequantize_to_bf16 (GEMM operand)"] = lambda: dequantize_to_bf16(codes, scales)
    if not args.only:
        naive = torch.compile(lambda t: nc.quantize(t))
        cases["reference, torch.compile (naive)"] = lambda: naive(x)
        try:
            from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

            compiled_ao = torch.compile(lambda t: nvfp4_quantize(t, per_tensor_scale=per_tensor_amax_to_scale(t.abs().max())))
            cases["torchao nvfp4_quantize (compiled)"] = lambda: compiled_ao(x)
        except Exception as err:  # torchao missing or its API moved
            print(f"torchao peer not run: {err}")
    # Programs per SM of the persistent passes, timed on the kernels that run such a pass.
    persistent = {"1x16 RNE": lambda: quantize_nvfp4(x, 1, "rne"),
                  "X^T RHT 1x16 RNE (wgrad)": lambda: quantize_nvfp4(x.t(), 1, "rne", rht=True),
                  "X pair (X values, RHT(X^T) codes)": lambda: quantize_pair_rht(x, "rne", "rne", values=(True, False)),
                  "dY pair (SR, values both ways)": lambda: quantize_pair_rht(x, "sr", "sr", values=(True, True))}
    for per_sm in args.programs_per_sm or ():
        with_programs = mock.patch.object(triton_quantize, "PROGRAMS_PER_SM", per_sm)
        for name, fn in persistent.items():
            cases[f"triton {name}, {per_sm} programs/SM"] = with_programs(fn)
    # name: (call, settings it needs besides the knobs)
    knobbed = {"X^T RHT 1x16 RNE (wgrad)": (lambda: quantize_nvfp4(x.t(), 1, "rne", rht=True), []),
               "X pair (X values, RHT(X^T) codes), 3 passes": (
                   lambda: quantize_pair_rht(x, "rne", "rne", values=(True, False)), [("PAIR_PASSES", 3)]),
               "X pair (X values, RHT(X^T) codes), 2 passes": (
                   lambda: quantize_pair_rht(x, "rne", "rne", values=(True, False)), [("PAIR_PASSES", 2)]),
               "dY pair (SR, values both ways), 2 passes": (
                   lambda: quantize_pair_rht(x, "sr", "sr", values=(True, True)), [("PAIR_PASSES", 2)])}
    for knobs in args.knobs:
        settings = [(k, ast.literal_eval(v)) for k, v in (kv.split("=") for kv in knobs.split(","))]
        for name, (fn, needed) in knobbed.items():
            if args.only and not any(o in name for o in args.only):
                continue
            for attr, value in needed + settings:
                module = triton_rht_transpose if hasattr(triton_rht_transpose, attr) else triton_quantize
                fn = mock.patch.object(module, attr, value)(fn)
            cases[f"triton {name}, {knobs}"] = fn
    rows = []
    for name, fn in cases.items():
        print(f"timing {name}", flush=True)
        ms = clone if name.startswith("x.clone") else timer(fn)
        rows.append([name, ms, ms / clone, gbytes / (ms / 1e3) if name.startswith("x.clone") else float("nan")])
    report(f"Quantize {tokens}x{n} BF16, ms (median{', CUDA graphs' if args.graphs else ''}) and ratio to clone",
           ["kernel", "ms", "x clone", "clone GB/s"], rows, "kernels", {"size": n, "tokens": tokens, "graphs": args.graphs})


if __name__ == "__main__":
    main()
