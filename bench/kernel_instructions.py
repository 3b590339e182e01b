"""Static instruction counts of the quantize, RHT and dequantize kernels for sm_90 (no GPU needed).

    python bench/kernel_instructions.py

Each kernel is compiled for sm_90 with Triton's own ptxas, disassembled with its nvdisasm, and
its SASS instructions are divided by the elements each thread handles. The quantize kernels
are bound by instructions on an H100 (most of them run on the integer pipe, at half the FP32
rate), so this count is what a change to them has to lower. A count, not a timing: the kernels'
times are in ``bench/kernels.py``.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from bench.common import report  # noqa: E402
from nvfp4_compile.kernels import triton_dequant, triton_quantize, triton_rht_transpose  # noqa: E402

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
QUANTIZE_ARGS = {"x_ptr": "*bf16", "codes_ptr": "*u8", "scales_ptr": "*u8", "values_ptr": "*bf16",
                 "amax_bits_ptr": "*i32", "s_dec_ptr": "*fp32", "seed_ptr": "*i32", "R": "i32", "K": "i32",
                 "stride_r": "i32", "stride_k": "i32", "codes_stride": "i32", "scales_stride": "i32",
                 "values_stride": "i32"}


#: The integer arguments divisible by 16 at the shapes counted (8192 x 8192; scale rows K / 16 = 512).
SPECIALIZED = {"R", "K", "T", "F", "stride_r", "stride_k", "stride_t", "codes_stride", "values_stride", "y_stride",
               "scales_stride", "codes_t_stride", "scales_t_stride", "values_t_stride"}


def sass_ops(fn, args: dict, constexprs: dict, num_warps: int) -> list[str]:
    signature = {**args, **{name: "constexpr" for name in constexprs}}
    # Pointers, sizes and strides divisible by 16, as Triton specializes them at these shapes.
    attrs = {(i,): [["tt.divisibility", 16]] for i, (name, kind) in enumerate(args.items())
             if name not in constexprs and (kind.startswith("*") or name in SPECIALIZED)}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    sass = subprocess.run([str(NVDISASM), "-c", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    return [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
            if m.group(1) != "NOP"]


def main():
    t = triton_quantize.QuantizeTiles()
    quantize = [("1x16 RNE", dict(RHT=False, TWO_D=False, SR=False, TRANSPOSED=False), t.rne),
                ("1x16 SR", dict(RHT=False, TWO_D=False, SR=True, TRANSPOSED=False), t.sr),
                ("16x16 RNE", dict(RHT=False, TWO_D=True, SR=False, TRANSPOSED=False), t.two_d),
                ("X^T RHT RNE, RHT in the kernel", dict(RHT=True, TWO_D=False, SR=False, TRANSPOSED=True), t.rht),
                ("dY^T RHT SR, RHT in the kernel", dict(RHT=True, TWO_D=False, SR=True, TRANSPOSED=True), t.rht_sr)]
    quantize += [("1x16 RNE to BF16 values", dict(RHT=False, TWO_D=False, SR=False, TRANSPOSED=False, VALUES=True),
                  t.rne_values),
                 ("1x16 SR to BF16 values", dict(RHT=False, TWO_D=False, SR=True, TRANSPOSED=False, VALUES=True),
                  t.sr_values),
                 ("16x16 RNE, codes and BF16 values",
                  dict(RHT=False, TWO_D=True, SR=False, TRANSPOSED=False, VALUES=True, CODES=True), t.two_d)]
    rows = []
    for name, flags, (r, k, warps) in quantize:
        fixed = {"stride_r": 1} if flags["TRANSPOSED"] else {"stride_k": 1}
        values = flags.setdefault("VALUES", False)
        flags.setdefault("CODES", not values)
        flags.setdefault("EVEN", True)  # 8192 x 8192: every tile inside the tensor
        flags.setdefault("HW_FP8", True)  # sm_90
        ops = sass_ops(triton_quantize._quantize_kernel, QUANTIZE_ARGS,
                       {**flags, **fixed, "BLOCK_R": r, "BLOCK_K": k}, warps)
        rows.append((f"quantize {name}", ops, r * k / (32 * warps)))
    r, k, warps = t.rht_transpose
    ops = sass_ops(triton_rht_transpose._rht_transpose_kernel,
                   {"x_ptr": "*bf16", "y_ptr": "*bf16", "amax_bits_ptr": "*i32", "T": "i32", "F": "i32",
                    "stride_t": "i32", "stride_f": "i32", "y_stride": "i32", "tiles_f": "i32", "n_tiles": "i32"},
                   {"stride_f": 1, "X_AMAX": True, "BLOCK_T": r, "BLOCK_F": k, "EVEN": True, "STORE_Y": True}, warps)
    rows.append(("rht_transpose (one tile of its loop)", ops, r * k / (32 * warps)))
    ops = sass_ops(triton_rht_transpose._rht_transpose_kernel,
                   {"x_ptr": "*bf16", "y_ptr": "*bf16", "amax_bits_ptr": "*i32", "T": "i32", "F": "i32",
                    "stride_t": "i32", "stride_f": "i32", "y_stride": "i32", "tiles_f": "i32", "n_tiles": "i32"},
                   {"stride_f": 1, "X_AMAX": True, "BLOCK_T": r, "BLOCK_F": k, "EVEN": True, "STORE_Y": False}, warps)
    rows.append(("RHT pair, pass 1: both amaxes (one tile of its loop)", ops, r * k / (32 * warps)))
    pair_args = {"x_ptr": "*bf16", "codes_ptr": "*u8", "scales_ptr": "*u8", "values_ptr": "*bf16",
                 "codes_t_ptr": "*u8", "scales_t_ptr": "*u8", "values_t_ptr": "*bf16", "amax_bits_ptr": "*i32",
                 "s_dec_ptr": "*fp32", "s_dec_t_ptr": "*fp32", "seed_ptr": "*i32", "T": "i32", "F": "i32",
                 "stride_t": "i32", "stride_f": "i32", "codes_stride": "i32", "scales_stride": "i32",
                 "values_stride": "i32", "codes_t_stride": "i32", "scales_t_stride": "i32", "values_t_stride": "i32"}
    for name, sr, as_values in (("X: values, RHT(X^T) codes", False, (True, False)),
                                ("dY, SR: values both ways", True, (True, True))):
        r, k, warps = t.rht_pair_sr if sr else t.rht_pair
        ops = sass_ops(triton_rht_transpose._rht_pair_kernel, pair_args,
                       {"stride_f": 1, "SR": sr, "SR_T": sr, "VALUES": as_values[0], "VALUES_T": as_values[1],
                        "BLOCK_T": r, "BLOCK_F": k, "EVEN": True, "HW_FP8": True}, warps)
        rows.append((f"RHT pair, pass 2, {name} (per element of x)", ops, r * k / (32 * warps)))
    r, k, warps = t.amax
    ops = sass_ops(triton_quantize._amax_kernel,
                   {"x_ptr": "*bf16", "amax_bits_ptr": "*i32", "R": "i32", "K": "i32", "stride_r": "i32",
                    "stride_k": "i32", "tiles_k": "i32", "n_tiles": "i32"},
                   {"stride_k": 1, "RHT": False, "TRANSPOSED": False, "BLOCK_R": r, "BLOCK_K": k, "EVEN": True}, warps)
    rows.append(("amax (one tile of its loop)", ops, r * k / (32 * warps)))
    ops = sass_ops(triton_dequant._dequant_kernel,
                   {"codes_ptr": "*u8", "scales_ptr": "*u8", "out_ptr": "*bf16", "R": "i32", "K": "i32",
                    "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "alpha_beta_ptr": "*fp32"},
                   {"ALPHA": False, "BLOCK_R": 32, "BLOCK_K": 256, "HW_FP8": True}, 8)
    rows.append(("dequantize_to_bf16", ops, 32 * 256 / (32 * 8)))
    table = []
    for name, ops, per_thread in rows:
        kinds = collections.Counter(op.split(".")[0] for op in ops)
        common = ", ".join(f"{op} {n / per_thread:.1f}" for op, n in kinds.most_common(4))
        table.append([name, len(ops), per_thread, len(ops) / per_thread, common])
    report("SASS instructions per element (sm_90)", ["kernel", "instructions", "elements a thread", "per element",
                                                      "most common, per element"], table, "kernel_instructions", {})


if __name__ == "__main__":
    main()
