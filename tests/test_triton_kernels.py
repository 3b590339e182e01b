"""The Triton (Hopper emulation) kernels against the reference: bit-exact codes and scales for
RNE (1D, 2D, RHT, strided), SR statistically, the emulated GEMM within FP32-accumulation order.

GPU tests run on a CUDA device; the interpreter test runs the same kernels on the CPU through
Triton's interpreter where Triton is installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nvfp4_compile as nc
from conftest import golden_cases
from nvfp4_compile.formats import e2m1_rne

ROOT = Path(__file__).resolve().parents[1]


def triton_available():
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def interpreter_usable():
    """Triton 3.6's CPU interpreter turns 1-element arrays into ints, which NumPy 2.3+ refuses."""
    import numpy

    return triton_available() and tuple(int(p) for p in numpy.__version__.split(".")[:2]) < (2, 3)


@pytest.mark.skipif(not interpreter_usable(), reason="needs Triton and NumPy < 2.3 (Triton's CPU interpreter)")
def test_kernels_under_the_triton_interpreter_match_the_golden_vectors_and_the_reference():
    code = f"""
import json, numpy as np, torch, sys
sys.path.insert(0, {str(ROOT)!r})
from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4
d = np.load({str(ROOT / 'tests/golden/nvfp4_reference.npz')!r})
bad = []
for c in json.load(open({str(ROOT / 'tests/golden/cases.json')!r})):
    name, dt, tile, mode = c.split("|")
    x = torch.from_numpy(d[c + "|x"]).to(getattr(torch, dt))
    codes, scales, s_dec = quantize_nvfp4(x, 16 if tile == "16x16" else 1, rht=mode == "rht")
    if not (torch.equal(codes, torch.from_numpy(d[c + "|codes"])) and
            torch.equal(scales, torch.from_numpy(d[c + "|scales_e4m3_bits"])) and
            s_dec.item() == float(d[c + "|global_decode_scale"])):
        bad.append(c)
import os
import nvfp4_compile as nc
for dt in (torch.bfloat16, torch.float16, torch.float32):
    x = (torch.randn(64, 96) * torch.logspace(-4, 4, 96)).to(dt)
    x[3, 5] = float("nan")
    x[40, 17] = float("-inf")
    for block_rows, rht, transposed, fused in [(1, False, False, ""), (16, False, False, ""), (1, True, True, ""),
                                               (1, True, True, "1"), (1, True, False, ""), (1, False, True, "")]:
        os.environ["NVFP4_COMPILE_FUSED_RHT"] = fused  # "1": the RHT inside the quantize kernel
        src = x.t() if transposed else x
        ref = nc.quantize(src.contiguous(), block=(block_rows, 16), rht=rht)
        codes, scales, s_dec = quantize_nvfp4(src, block_rows, rht=rht)
        if not (torch.equal(codes, ref.codes) and torch.equal(scales, ref.scales.view(torch.uint8))
                and s_dec.item() == ref.global_scale.item()):
            bad.append((str(dt), block_rows, rht, transposed, fused))
os.environ["NVFP4_COMPILE_FUSED_RHT"] = ""
from nvfp4_compile.formats import unpack_nibbles
# SR: the RNE scales, a code on one of the two grid points around each value, fresh noise per
# call, and the mean of many draws nearer the value than RNE's error (rowwise, and dY^T's RHT).
x = (torch.randn(8, 64) * torch.logspace(-2, 2, 64)).bfloat16()
draws = 96
for rht in (False, True):
    src = x.repeat(draws, 1) if not rht else x.t().repeat(1, draws).contiguous().t().contiguous().t()
    ref = nc.quantize(src.contiguous(), rht=rht)
    codes, scales, s_dec = quantize_nvfp4(src, 1, "sr", rht=rht)
    again = quantize_nvfp4(src, 1, "sr", rht=rht)[0]
    sr, rne = unpack_nibbles(codes).int(), unpack_nibbles(ref.codes).int()
    q = nc.NVFP4Tensor(codes, scales.view(torch.float8_e4m3fn), s_dec, ref.shape, (1, 16))
    target = (nc.hadamard.rht(src.contiguous()) if rht else src).float()
    err_sr, err_rne = nc.dequantize(q) - target, nc.dequantize(ref) - target
    if rht:
        err_sr, err_rne = err_sr.reshape(64, draws, 8), err_rne.reshape(64, draws, 8)
        bias = err_sr.mean(1)
    else:
        err_sr, err_rne = err_sr.reshape(draws, 8, 64), err_rne.reshape(draws, 8, 64)
        bias = err_sr.mean(0)
    if not (torch.equal(scales, ref.scales.view(torch.uint8)) and s_dec.item() == ref.global_scale.item()
            and ((sr & 7) - (rne & 7)).abs().max() <= 1 and not torch.equal(again, codes)
            and bias.abs().mean() < 0.3 * err_rne.abs().mean()):
        bad.append(("sr", rht))
from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16
for shape in [(48, 272), (32, 512)]:  # a partial tile of rows and of columns, and a whole one
    x = torch.randn(*shape) * torch.logspace(-3, 3, shape[1])
    x[5, 17] = float("nan")
    q = nc.quantize(x)
    q.codes[0, :4] = 0x88  # -0.0 codes
    want = nc.numerics.block_scaled_values(q)
    got = dequantize_to_bf16(q.codes, q.scales.view(torch.uint8)).float()
    if not (torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num().view(torch.int32),
                                                                    want.nan_to_num().view(torch.int32))):
        bad.append(("dequantize_to_bf16", shape))
from nvfp4_compile.kernels.triton_rht_transpose import rht_transpose
for shape in [(80, 200), (64, 48)]:  # partial tiles of tokens and of features
    x = (torch.randn(*shape) * torch.logspace(-3, 3, shape[1])).bfloat16()
    x[3, 5], x[40, 7] = float("nan"), float("inf")
    y, amax_bits = rht_transpose(x)
    ref = nc.hadamard.rht(x.t().contiguous())
    finite = ref.isfinite()
    if not (torch.equal(y[finite].view(torch.int16), ref[finite].view(torch.int16)) and not y[~finite].isfinite().any()
            and amax_bits.view(torch.float32).item() == ref.float().abs()[finite].max().item()):
        bad.append(("rht_transpose", shape))
from nvfp4_compile.kernels.triton_transpose import transpose_2d_nvfp4
for shape in [(96, 160), (48, 80)]:
    q = nc.quantize(torch.randn(*shape), block=(16, 16))
    codes, scales = transpose_2d_nvfp4(q.codes, q.scales.view(torch.uint8))
    if not (torch.equal(codes, q.t().codes) and torch.equal(scales, q.t().scales.view(torch.uint8))):
        bad.append(("transpose_2d", shape))
from nvfp4_compile import ops
from nvfp4_compile.kernels.triton_quantize_pair import quantize_pair_nvfp4
for shape in [(128, 96), (70, 40)]:
    x = (torch.randn(*shape) * torch.logspace(-4, 4, shape[1])).bfloat16()
    x[3, 5], x[66, 7] = float("nan"), float("inf")
    for rht_t in (False, True):
        got = quantize_pair_nvfp4(x, "rne", "rne", rht_t)
        want = ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", rht_t, "")
        if not all(torch.equal(g, w) for g, w in zip(got, want)):
            bad.append(("quantize_pair", shape, rht_t))
    if shape[0] % 16 == 0:
        from nvfp4_compile.kernels.triton_rht_transpose import quantize_pair_rht
        for layout in (x, x.t().contiguous().t()):  # row-major, and a column-major view
            if not all(torch.equal(g, w) for g, w in zip(quantize_pair_rht(layout, "rne", "rne"), want)):
                bad.append(("quantize_pair_rht", shape, layout.stride()))
# BF16 operands straight from the quantize kernel: what the dequantize kernel makes of its codes
# (1D, 2D, the RHT of a transposed view through rht_transpose, SR with one seed; the pair's halves).
x = (torch.randn(48, 96) * torch.logspace(-4, 4, 96)).bfloat16()
x[3, 5], x[40, 17] = float("nan"), float("-inf")
seed = torch.tensor(1234, dtype=torch.int32)
for block_rows, rht, src, rounding, fused in [(1, False, x, "rne", ""), (16, False, x, "rne", ""),
                                              (1, True, x.t(), "rne", ""), (1, True, x.t(), "rne", "1"),
                                              (1, False, x, "sr", ""), (1, True, x.t(), "sr", "")]:
    os.environ["NVFP4_COMPILE_FUSED_RHT"] = fused  # "1": the RHT inside the quantize kernel
    codes, scales, s_dec = quantize_nvfp4(src, block_rows, rounding, rht=rht, seed=seed)
    values, s_dec_v = quantize_nvfp4(src, block_rows, rounding, rht=rht, seed=seed, values=True)
    want = dequantize_to_bf16(codes, scales)
    if not (torch.equal(values.isnan(), want.isnan()) and torch.equal(values.nan_to_num().view(torch.int16),
                                                                      want.nan_to_num().view(torch.int16))
            and s_dec.item() == s_dec_v.item()):
        bad.append(("values", block_rows, rht, rounding, fused))
    both = quantize_nvfp4(src, block_rows, rounding, rht=rht, seed=seed, values=True, codes=True)
    if not (all(torch.equal(g, w) for g, w in zip(both[:3], (codes, scales, s_dec)))
            and torch.equal(both[3].nan_to_num().view(torch.int16), values.nan_to_num().view(torch.int16))
            and torch.equal(both[3].isnan(), values.isnan())):
        bad.append(("codes and values", block_rows, rht, rounding, fused))
os.environ["NVFP4_COMPILE_FUSED_RHT"] = ""
x = (torch.randn(64, 96) * torch.logspace(-4, 4, 96)).bfloat16()
want = ops.reference_quantize_pair_values(x, "nvfp4", "rne", "rne", True, "", True, False)
got = quantize_pair_rht(x, "rne", "rne", values=(True, False))
if not all(torch.equal(g, w) for g, w in zip(got, want)):
    bad.append(("quantize_pair_rht values",))
# The pair in two passes and in three (rht_transpose + two rowwise passes, the default): the same
# bits, SR included, on partial tiles both ways.
from nvfp4_compile.kernels import triton_rht_transpose
default_passes = triton_rht_transpose.PAIR_PASSES
x = (torch.randn(80, 48) * torch.logspace(-4, 4, 48)).bfloat16()
x[3, 5], x[66, 7] = float("nan"), float("inf")
for r, rt, v in [("sr", "sr", (True, True)), ("sr", "rne", (False, True)), ("rne", "sr", (True, False))]:
    results = []
    for passes in (2, 3):
        triton_rht_transpose.PAIR_PASSES = passes
        torch.manual_seed(3)
        results.append(quantize_pair_rht(x, r, rt, values=v))
    triton_rht_transpose.PAIR_PASSES = default_passes
    ints = {{1: torch.uint8, 2: torch.int16, 4: torch.int32}}
    for g, w in zip(*results):
        if not (g.shape == w.shape and torch.equal(g.view(ints[g.element_size()]), w.view(ints[w.element_size()]))):
            bad.append(("quantize_pair_rht two passes", r, rt, v))
from nvfp4_compile import distributed as ncd
from nvfp4_compile.kernels.triton_dequant import exact_dequantize_2d
for case in ("plain", "inf", "zero"):
    w = torch.randn(96, 160) * 0.02
    if case == "inf":
        w[5, 3] = float("inf")
    if case == "zero":
        w.zero_()
    for dt in (torch.float32, torch.bfloat16):
        amax = ncd.local_amax(w.to(dt))
        codes, tiles, s_dec = ncd.quantize_2d_with_amax(w.to(dt), amax)
        want = ncd.exact_dequantize(ncd._as_nvfp4(codes, tiles, s_dec), amax, dt)
        into = torch.full_like(want, 7.0)
        for got in (exact_dequantize_2d(codes, tiles, s_dec, amax, dt), exact_dequantize_2d(codes, tiles, s_dec,
                                                                                            amax, dt, out=into)):
            same_nan = torch.equal(got.isnan(), want.isnan())
            if not (same_nan and torch.equal(got.nan_to_num().view(torch.uint8), want.nan_to_num().view(torch.uint8))):
                bad.append(("exact_dequantize_2d", case, str(dt)))
        if exact_dequantize_2d(codes, tiles, s_dec, amax, dt, out=into) is not into:
            bad.append(("exact_dequantize_2d out", case, str(dt)))
        strided = torch.full((want.shape[1], want.shape[0]), 7.0, dtype=dt).t()  # filled through a copy
        exact_dequantize_2d(codes, tiles, s_dec, amax, dt, out=strided)
        if not (torch.equal(strided.isnan(), want.isnan())
                and torch.equal(strided.contiguous().nan_to_num().view(torch.uint8),
                                want.nan_to_num().view(torch.uint8))):
            bad.append(("exact_dequantize_2d strided out", case, str(dt)))
print("mismatches:", bad)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mismatches: []" in result.stdout


def sass_tools_usable():
    """Triton with its bundled ptxas and nvdisasm (compiling for sm_90 needs no GPU)."""
    if not triton_available() or os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter compiles nothing
        return False
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm").exists()


@pytest.mark.skipif(not sass_tools_usable(), reason="needs Triton with its CUDA tools (compiles for sm_90, no GPU)")
def test_quantize_kernels_compile_to_few_instructions_without_conversions():
    """The rowwise quantize kernels are bound by instructions on Hopper: compiled for sm_90, the
    E2M1 rounding has no float-to-integer conversion per value (a quarter-rate instruction), and
    the instructions per value stay near the rewrite's 34 (RNE) and 54 (SR): the kernels before
    it compiled to 57 and 108, a layout that computed each value in two threads among the causes."""
    sys.path.insert(0, str(ROOT))
    from bench.kernel_instructions import QUANTIZE_ARGS, sass_ops
    from nvfp4_compile.kernels import triton_quantize

    tiles = triton_quantize.QuantizeTiles()
    for sr, (rows, k, warps) in ((False, tiles.rne), (True, tiles.sr)):
        flags = dict(RHT=False, TWO_D=False, SR=sr, TRANSPOSED=False, stride_k=1, BLOCK_R=rows, BLOCK_K=k, CODES=True,
                     VALUES=False, EVEN=False, HW_FP8=True)
        ops = sass_ops(triton_quantize._quantize_kernel, QUANTIZE_ARGS, flags, warps)
        per_thread = rows * k / (32 * warps)
        conversions = sum(op.startswith(("F2I", "I2F")) for op in ops)
        assert conversions <= per_thread / 4, (sr, conversions, per_thread)  # per block or per program only
        assert len(ops) / per_thread < (45 if not sr else 65), (sr, len(ops) / per_thread)


gpu = pytest.mark.gpu


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as integers of its width (NaNs compare equal when their bits do)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


@gpu
@pytest.mark.parametrize("case", golden_cases())
def test_triton_quantize_matches_golden(golden, case):
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    name, dtype, tile, mode = case.split("|")
    g = golden[case]
    x = torch.from_numpy(g["x"]).to(getattr(torch, dtype)).cuda()
    codes, scales, s_dec = quantize_nvfp4(x, 16 if tile == "16x16" else 1, rht=mode == "rht")
    assert torch.equal(codes.cpu(), torch.from_numpy(g["codes"]))
    assert torch.equal(scales.cpu(), torch.from_numpy(g["scales_e4m3_bits"]))
    assert s_dec.item() == float(g["global_decode_scale"])


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block_rows, rht, transposed", [(1, False, False), (16, False, False), (1, True, False),
                                                         (1, True, True), (1, False, True)])
@pytest.mark.parametrize("fused_rht", ["", "1"])
def test_triton_quantize_equals_the_cpu_reference(dtype, block_rows, rht, transposed, fused_rht, monkeypatch):
    """``fused_rht``: the RHT inside the quantize kernel, or (default, for a transposed BF16 view)
    ``rht_transpose`` then the rowwise kernel with the amax given."""
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    if fused_rht and not rht:
        pytest.skip("no RHT: the two settings run the same kernels")
    monkeypatch.setenv("NVFP4_COMPILE_FUSED_RHT", fused_rht)

    x = (torch.randn(512, 768) * torch.logspace(-4, 4, 768)).to(dtype)
    x[3, 100] = float("nan")
    x[40, 7] = float("inf")
    src = x.t() if transposed else x
    ref = nc.quantize(src.contiguous(), block=(block_rows, 16), rht=rht)
    codes, scales, s_dec = quantize_nvfp4(src.cuda() if not transposed else x.cuda().t(), block_rows, rht=rht)
    assert torch.equal(codes.cpu(), ref.codes)
    assert torch.equal(scales.cpu(), ref.scales.view(torch.uint8))
    assert s_dec.item() == ref.global_scale.item()


def _philox_both_ways(device: str):
    """``_philox`` (one 64-bit product per multiply) and ``tl.philox`` on the same counters and keys."""
    from triton_probes import philox_both_ways

    n = 1024
    gen = torch.Generator().manual_seed(0)
    c0 = torch.randint(-2**31, 2**31 - 1, (n,), generator=gen, dtype=torch.int32)
    c1 = torch.randint(-2**31, 2**31 - 1, (n,), generator=gen, dtype=torch.int32)
    c0[:4] = torch.tensor([0, 1, -1, 2**31 - 1])  # the edges of the counter's range
    results = []
    for seed in (0, 1, 2**31 - 1, 1234567):  # non-negative: the kernels' seeds come from randint(0, 2^31 - 1)
        ours, tritons = (torch.empty(4 * n, dtype=torch.int32, device=device) for _ in range(2))
        philox_both_ways[(1,)](torch.tensor([seed], dtype=torch.int32, device=device), c0.to(device), c1.to(device),
                               ours, tritons, N=n)
        results.append((ours.cpu(), tritons.cpu()))
    return results


@pytest.mark.skipif(not interpreter_usable(), reason="needs Triton and NumPy < 2.3 (Triton's CPU interpreter)")
def test_philox_equals_tritons_under_the_interpreter():
    code = f"""
import sys, torch
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
from test_triton_kernels import _philox_both_ways
print("equal:", all(torch.equal(a, b) for a, b in _philox_both_ways("cpu")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equal: True" in result.stdout


@gpu
def test_philox_equals_tritons_on_cuda():
    for ours, tritons in _philox_both_ways("cuda"):
        assert torch.equal(ours, tritons)


def _e2m1_both_ways(device: str):
    """The E2M1 magnitude helpers the values kernels use against the codes they shortcut, and the
    RNE code against the reference's (``formats.e2m1_rne``), on FP32 patterns from 0 to 8 at a
    stride, every grid point, midpoint and their FP32 neighbours, both signs, and SR thresholds
    drawn at random (with the distances equal to a threshold). Returns pairs that must be equal."""
    from triton_probes import e2m1_both_ways

    gen = torch.Generator().manual_seed(0)
    stride = torch.arange(0, 0x41000000, 997, dtype=torch.int32).view(torch.float32)
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    marks = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([0.25, 5.0, 7.0, 6.5, 1e-30, 1e-40])])
    bits = marks.view(torch.int32)
    near = torch.cat([bits - 1, bits, bits + 1]).clamp(min=0).view(torch.float32)
    v = torch.cat([stride, near, torch.tensor([float("inf")])])
    v = torch.cat([v, -v])
    r = (torch.randint(0, 2**16, v.shape, generator=gen, dtype=torch.int64) * 65536 + 32768)
    # Distances equal to a threshold: low 22 bits of |v| (of 1 + |v| below 1) shifted by 10 == r.
    a = v.abs().clamp(max=6.0)
    low22 = torch.where(a < 1, a + 1, a).view(torch.int32).to(torch.int64) & 0x3FFFFF
    r[::3] = (low22[::3] << 10) & 0xFFFFFFFF
    r = torch.where(r >= 2**31, r - 2**32, r).to(torch.int32)  # the uint32 bits
    n = v.numel()
    outs = [torch.empty(n, dtype=torch.int32, device=device) for _ in range(5)]
    e2m1_both_ways[((n + 4095) // 4096,)](v.to(device), r.to(device), *outs, n, BLOCK=4096)
    rne, rne_code, sr, sr_code, code = (o.cpu() for o in outs)
    return {"rne": (rne, rne_code), "sr": (sr, sr_code), "code": (code, e2m1_rne(v).to(torch.int32))}


@pytest.mark.skipif(not interpreter_usable(), reason="needs Triton and NumPy < 2.3 (Triton's CPU interpreter)")
def test_e2m1_helpers_equal_the_codes_and_the_reference_under_the_interpreter():
    code = f"""
import sys, torch
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
from test_triton_kernels import _e2m1_both_ways
print("equal:", {{name: torch.equal(*pair) for name, pair in _e2m1_both_ways("cpu").items()}})
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equal: {'rne': True, 'sr': True, 'code': True}" in result.stdout, result.stdout


@gpu
def test_e2m1_helpers_equal_the_codes_and_the_reference_on_cuda():
    for name, (ours, want) in _e2m1_both_ways("cuda").items():
        assert torch.equal(ours, want), name


@gpu
def test_e4m3_hardware_conversion_equals_the_integer_rounding_on_every_kind_of_input():
    """``_e4m3_bits`` and ``_e4m3_value`` with ``HW_FP8`` (this GPU's conversions) against the
    integer arithmetic older GPUs use: FP32 patterns from 0 past the saturation point at a stride,
    every midpoint between neighbouring E4M3 values and the 3 FP32 values on each side of it
    (subnormal ones included), 448/464/480, Inf and NaN; and every E4M3 code decoded."""
    from triton_probes import e4m3_both_ways

    from nvfp4_compile.kernels.triton_quantize import hardware_fp8

    if not hardware_fp8(torch.device("cuda")):
        pytest.skip("this GPU rounds the scales with integer arithmetic only (sm_90+ converts in hardware)")
    values = torch.arange(128, dtype=torch.uint8).view(torch.float8_e4m3fn)[:127].float()  # 0 .. 448
    mid_bits = ((values[:-1] + values[1:]) / 2).view(torch.int32)
    near_mids = (mid_bits[:, None] + torch.arange(-3, 4, dtype=torch.int32)).flatten()
    strided = torch.arange(0, torch.tensor(500.0).view(torch.int32).item(), 97, dtype=torch.int32)
    special = torch.tensor([448.0, 464.0, 464.00003, 480.0, 1e30, float("inf"), float("nan")]).view(torch.int32)
    s = torch.cat([strided, near_mids, special]).view(torch.float32).cuda()
    codes = torch.arange(128, dtype=torch.int32, device="cuda")
    bits_hw, bits_int = (torch.empty(s.numel(), dtype=torch.int32, device="cuda") for _ in range(2))
    value_hw, value_int = (torch.empty(128, dtype=torch.int32, device="cuda") for _ in range(2))
    block = 1024
    e4m3_both_ways[(-(-s.numel() // block),)](s, bits_hw, bits_int, codes, value_hw, value_int, s.numel(), 128,
                                              BLOCK=block)
    mismatch = (bits_hw != bits_int).nonzero().flatten()
    assert mismatch.numel() == 0, [(s[i].item(), bits_hw[i].item(), bits_int[i].item()) for i in mismatch[:5].tolist()]
    finite = s.isfinite()  # and against torch's own cast (RNE; torch has no saturation, hence the clamp)
    torch_bits = s[finite].clamp(max=448.0).to(torch.float8_e4m3fn).view(torch.uint8).int()
    assert torch.equal(bits_hw[finite], torch_bits)
    want = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float().view(torch.int32)
    assert torch.equal(value_hw[:127].cpu(), want) and torch.equal(value_int[:127].cpu(), want)
    assert value_hw[127:].view(torch.float32).isnan().all() and value_int[127:].view(torch.float32).isnan().all()


@gpu
@pytest.mark.parametrize("block_rows, rounding", [(1, "rne"), (16, "rne"), (1, "sr")])
def test_e4m3_scales_by_integer_arithmetic_give_the_hardware_bits(block_rows, rounding, monkeypatch):
    """GPUs before sm_89 have no E4M3 conversion: the kernels round the scales with integer
    arithmetic there (``HW_FP8=False``). On this GPU both ways give the same codes, scales and
    values (SR with one seed), and the dequantize kernel the same BF16 operand."""
    from nvfp4_compile.kernels import triton_quantize
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16

    x = (torch.randn(256, 512) * torch.logspace(-30, 30, 512)).bfloat16().cuda()  # subnormal to large scales
    x[3, 100], x[40, 7] = float("nan"), float("-inf")
    seed = torch.tensor(77, dtype=torch.int32, device="cuda")
    results = []
    for hardware in (True, False):
        monkeypatch.setattr(triton_quantize, "hardware_fp8", lambda device, hardware=hardware: hardware)
        codes, scales, s_dec, values = triton_quantize.quantize_nvfp4(x, block_rows, rounding, seed=seed, values=True,
                                                                      codes=True)
        results.append((codes, scales, s_dec, values.view(torch.int16), dequantize_to_bf16(codes, scales).view(torch.int16)))
    for hw, integer in zip(*results):
        assert torch.equal(hw, integer)
    if rounding == "rne":
        ref = nc.quantize(x.cpu(), block=(block_rows, 16))
        assert torch.equal(results[0][0].cpu(), ref.codes) and torch.equal(results[0][1].cpu(), ref.scales.view(torch.uint8))


@gpu
def test_triton_sr_is_unbiased_and_fresh():
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    x = torch.randn(16, 256, device="cuda")
    draws = 2000
    torch.manual_seed(0)
    codes, scales, s_dec = quantize_nvfp4(x.repeat(draws, 1), 1, "sr")
    q = nc.NVFP4Tensor(codes, scales.view(torch.float8_e4m3fn), s_dec, torch.Size((16 * draws, 256)), (1, 16))
    mean = nc.dequantize(q).reshape(draws, 16, 256).mean(0)
    ref = nc.quantize(x)
    scale = ref.scales.float().repeat_interleave(16, 1) * ref.global_scale
    inside = x.abs() <= 6 * scale
    assert ((mean - x).abs() <= 6 * 2 * scale / (2 * draws ** 0.5))[inside].all()
    torch.manual_seed(0)
    again, _, _ = quantize_nvfp4(x.repeat(draws, 1), 1, "sr")
    assert torch.equal(again, codes)  # reproducible under torch.manual_seed
    fresh, _, _ = quantize_nvfp4(x.repeat(draws, 1), 1, "sr")
    assert not torch.equal(fresh, codes)


@gpu
@pytest.mark.parametrize("strategy", ["cublaslt", "cublas", "triton", "fused"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(256, 384, 512), (200, 136, 80)])  # (M, N, K); the second leaves partial tiles
def test_emulated_gemm_matches_the_reference(strategy, out_dtype, shape):
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16
    from nvfp4_compile.kernels.triton_gemm import emulated_gemm

    m, n, k = shape
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda") * 100
    qa, qb = nc.quantize(a), nc.quantize(b, block=(1, 16))
    assert torch.equal(dequantize_to_bf16(qa.codes, qa.scales.view(torch.uint8)).float(),
                       nc.numerics.block_scaled_values(qa))
    bias = torch.randn(n, device="cuda")
    for with_bias in (bias, None):
        c = emulated_gemm(qa.codes, qa.scales.view(torch.uint8), qa.global_scale, qb.codes,
                          qb.scales.view(torch.uint8), qb.global_scale, with_bias, out_dtype, strategy=strategy)
        ref = nc.nvfp4_mm(qa, qb, out_dtype=torch.float32, bias=with_bias)
        assert c.dtype == out_dtype
        # FP32 sums in another order, then (for BF16) one rounding of the output.
        tol = 2 ** -8 if out_dtype == torch.bfloat16 else 1e-5
        assert ((c.float() - ref).abs() <= tol * ref.abs() + 1e-4 * ref.abs().max()).all()


@gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_cublaslt_gemm_runs_and_rounds_once(out_dtype):
    """The default GEMM is cuBLASLt with alpha read on the device (no fallback at these shapes),
    and equals alpha * (an FP32 product) + bias rounded once: against cuBLAS's FP32 product and
    the same epilogue, the two differ only by the order of the FP32 sums."""
    from nvfp4_compile.kernels import triton_gemm
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16

    m, n, k = 512, 768, 1024
    qa, qb = nc.quantize(torch.randn(m, k)), nc.quantize(torch.randn(n, k) * 3)
    sa, sb = qa.global_scale.cuda(), qb.global_scale.cuda()
    alpha_beta = torch.full((2,), float("nan"), device="cuda")
    a = dequantize_to_bf16(qa.codes.cuda(), qa.scales.view(torch.uint8).cuda())
    b = dequantize_to_bf16(qb.codes.cuda(), qb.scales.view(torch.uint8).cuda(), alpha_of=(sa, sb, alpha_beta))
    assert alpha_beta[0].item() == (sa * sb).item() and alpha_beta[1].item() == 0.0
    bias = torch.randn(n, device="cuda").to(out_dtype)
    for with_bias in (None, bias):
        got = triton_gemm._cublaslt_gemm(a, b, alpha_beta, with_bias, torch.empty(m, n, dtype=out_dtype, device="cuda"))
        assert got is not None and got.dtype == out_dtype  # None: refused, and the FP32 path would run
        want = torch.mm(a, b.t(), out_dtype=torch.float32) * (sa * sb)
        if with_bias is not None:
            want = want + with_bias.float()
        tol = 2 ** -8 if out_dtype == torch.bfloat16 else 1e-5
        assert ((got.float() - want).abs() <= tol * want.abs() + 1e-5 * want.abs().max()).all()
        # One rounding: every BF16 output is the rounding of an FP32 value within the sums' noise.
        if out_dtype == torch.bfloat16:
            assert (got.float() == want.to(torch.bfloat16).float()).float().mean() > 0.95


@gpu
def test_cublaslt_plan_candidates_each_compute_the_product():
    """``_Plan(candidates=n)`` keeps the heuristic's algorithms best first, the first being the
    one a plain plan runs (same bits), and ``matmul(plan=...)`` runs whichever is chosen: each
    gives alpha * (a @ b^T) within the sums' order (``bench/gemm_algorithms.py`` times them)."""
    from nvfp4_compile.kernels import cublaslt

    m, n, k = 256, 384, 2048
    a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    b = torch.randn(k, n, device="cuda").to(torch.bfloat16).t()  # dgrad's transposed view
    alpha_beta = torch.tensor([0.5, 0.0], device="cuda")
    plan = cublaslt._Plan(m, n, k, torch.bfloat16, None, 0, True, candidates=8)
    assert 1 <= len(plan.results) <= 8 and plan.result is plan.results[0]
    default = cublaslt.matmul(a, b, alpha_beta, None, torch.empty(m, n, dtype=torch.bfloat16, device="cuda"))
    want = torch.mm(a, b.t(), out_dtype=torch.float32) * 0.5
    for i, result in enumerate(plan.results):
        plan.result = result
        got = cublaslt.matmul(a, b, alpha_beta, None, torch.empty(m, n, dtype=torch.bfloat16, device="cuda"), plan=plan)
        assert ((got.float() - want).abs() <= 2 ** -8 * want.abs() + 1e-5 * want.abs().max()).all(), i
        if i == 0:
            assert torch.equal(got, default)


@gpu
@pytest.mark.parametrize("shape", [(256, 384), (80, 48)])  # the second leaves partial 64x64 tiles
def test_triton_transpose_2d_equals_the_reference(shape, monkeypatch):
    from nvfp4_compile import ops

    monkeypatch.delenv("NVFP4_COMPILE_TRITON_TRANSPOSE", raising=False)  # the default: the Triton kernel
    q = nc.quantize(torch.randn(*shape) * torch.logspace(-3, 3, shape[1]), block=(16, 16))
    from nvfp4_compile.kernels.triton_transpose import transpose_2d_nvfp4

    for fn in (lambda c, s: ops.transpose_2d(c, s, "nvfp4"), transpose_2d_nvfp4):
        codes, scales = fn(q.codes.cuda(), q.scales.view(torch.uint8).cuda())
        assert torch.equal(codes.cpu(), q.t().codes) and torch.equal(scales.cpu(), q.t().scales.view(torch.uint8))


@gpu
@pytest.mark.parametrize("single_pass", [True, False])
@pytest.mark.parametrize("shape", [(256, 320), (200, 72), (70, 40)])  # partial 64-row tiles, K and R padded
@pytest.mark.parametrize("dtype,rht_t", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, False),
                                         (torch.float16, True)])
def test_quantize_pair_on_cuda_equals_the_reference(single_pass, shape, dtype, rht_t, monkeypatch):
    """What the pass emits for X (fprop rowwise, wgrad X^T with the RHT) and dY, through the
    single-pass kernel and through the two-call fallback (FP16 with the RHT always takes it)."""
    from nvfp4_compile import ops

    monkeypatch.setenv("NVFP4_COMPILE_PAIR_KERNEL", "1" if single_pass else "0")
    x = (torch.randn(*shape) * torch.logspace(-3, 3, shape[1])).to(dtype)
    x[3, 5], x[66, 7] = float("nan"), float("-inf")
    got = torch.ops.nvfp4.quantize_pair(x.cuda(), "nvfp4", "rne", "rne", rht_t, "")
    want = ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", rht_t, "")
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g.cpu(), w)


@gpu
def test_rht_pair_two_passes_give_the_three_pass_bits_where_the_rht_sums_are_inexact():
    """Runs whose 16 tokens span 2^-60..2^60, so the transform's FP32 sums round (outside the
    reference's exact domain): both forms compute each output from the same products by the same
    tensor-core product (``_rht_along_tokens``), so their bits still agree."""
    from nvfp4_compile.kernels import triton_rht_transpose

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(256, 128, generator=gen) * 2.0 ** torch.randint(-60, 61, (256, 128), generator=gen)
    x = x.bfloat16().cuda()
    results = {}
    for passes in (2, 3):
        triton_rht_transpose.PAIR_PASSES = passes
        try:
            torch.manual_seed(5)
            results[passes] = triton_rht_transpose.quantize_pair_rht(x, "sr", "rne", values=(False, True))
        finally:
            triton_rht_transpose.PAIR_PASSES = None
    for got, want in zip(results[2], results[3]):
        assert got.dtype == want.dtype
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


@gpu
@pytest.mark.parametrize("shape", [(512, 384), (336, 208), (64, 16)])  # the second leaves partial tiles both ways
@pytest.mark.parametrize("rounding, rounding_t, values", [("rne", "rne", (False, False)), ("rne", "rne", (True, False)),
                                                          ("sr", "sr", (True, True)), ("sr", "rne", (False, True))])
def test_rht_pair_two_passes_give_the_three_pass_bits(shape, rounding, rounding_t, values, monkeypatch):
    """``quantize_pair_rht`` in two passes (the amaxes, then both quantizations of each tile from one
    read) against the three-pass form (``rht_transpose`` writing RHT(x^T), then two rowwise passes):
    the same bits, SR included (the same seeds, the same draw for each output element), for a
    row-major x and a column-major view of it; RNE also against the reference."""
    from nvfp4_compile import ops
    from nvfp4_compile.kernels import triton_rht_transpose

    x = (torch.randn(*shape) * torch.logspace(-4, 4, shape[1])).bfloat16()
    x[3, 5], x[40, 7] = float("nan"), float("-inf")
    for layout in (x.cuda(), x.cuda().t().contiguous().t()):
        results = {}
        for passes in (2, 3):
            monkeypatch.setattr(triton_rht_transpose, "PAIR_PASSES", passes)
            torch.manual_seed(7)
            results[passes] = triton_rht_transpose.quantize_pair_rht(layout, rounding, rounding_t, values=values)
        for got, want in zip(results[2], results[3]):
            assert got.shape == want.shape and got.dtype == want.dtype and torch.equal(bits(got), bits(want))
    if rounding == rounding_t == "rne" and not any(values):
        want = ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", True, "")
        for g, w in zip(results[2], want):
            assert torch.equal(g.cpu(), w)


@gpu
def test_quantize_pair_kernel_reads_strided_input_and_rounds_stochastically():
    """A non-contiguous x gives the contiguous result; SR (dY's pair) keeps the RNE scales, lands
    on a neighbouring grid point, draws fresh noise each call and is unbiased on average."""
    from nvfp4_compile import ops
    from nvfp4_compile.formats import unpack_nibbles
    from nvfp4_compile.kernels.triton_quantize_pair import quantize_pair_nvfp4

    x = torch.randn(512, 256, dtype=torch.bfloat16) * torch.logspace(-2, 2, 256).bfloat16()
    strided = x.cuda().t().contiguous().t()
    want = ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", True, "")
    for g, w in zip(quantize_pair_nvfp4(strided, "rne", "rne", True), want):
        assert torch.equal(g.cpu(), w)

    first, second = (quantize_pair_nvfp4(x.cuda(), "sr", "sr", True) for _ in range(2))
    for i in (0, 3):  # the codes of x and of x^T
        sr, rne = (unpack_nibbles(c).int() for c in (first[i].cpu(), want[i]))
        assert ((sr & 7) - (rne & 7)).abs().max() <= 1
        assert not torch.equal(first[i], second[i])
    for i in (1, 2, 4, 5):
        assert torch.equal(first[i].cpu(), want[i])
    # Unbiased: the mean over many draws of the dequantized x^T approaches RHT(x^T) itself.
    rht_xt = ops.reference_rht(x.t()).float()
    draws = [quantize_pair_nvfp4(x.cuda(), "rne", "sr", True) for _ in range(64)]
    mean = sum(nc.NVFP4Tensor(d[3], d[4].view(torch.float8_e4m3fn), d[5], rht_xt.shape, (1, 16)).dequantize().cpu()
               for d in draws) / len(draws)
    rne = nc.NVFP4Tensor(want[3], want[4].view(torch.float8_e4m3fn), want[5], rht_xt.shape, (1, 16)).dequantize()
    assert (mean - rht_xt).abs().mean() < 0.5 * (rne - rht_xt).abs().mean()


@gpu
@pytest.mark.parametrize("rounding", ["rne", "sr"])
def test_quantize_op_with_fused_rht_on_a_transposed_view(rounding):
    """What the graph pass emits for wgrad: ``nvfp4::quantize(permute(x), ..., rht=True)``."""
    from nvfp4_compile import ops

    x = torch.randn(256, 320, dtype=torch.bfloat16) * torch.logspace(-3, 3, 320).bfloat16()
    torch.manual_seed(1)
    codes, scales, s_dec = ops.quantize(x.cuda().t(), "nvfp4", 1, rounding, "", True)
    ref_codes, ref_scales, ref_s_dec = ops.reference_quantize(x.t(), "nvfp4", 1, "rne", "", True)
    assert torch.equal(scales.cpu(), ref_scales) and s_dec.item() == ref_s_dec.item()
    if rounding == "rne":
        assert torch.equal(codes.cpu(), ref_codes)
    else:  # SR lands on one of the two grid points around the value, RNE on the nearer one
        from nvfp4_compile.formats import unpack_nibbles

        sr, rne = (unpack_nibbles(c).int() for c in (codes.cpu(), ref_codes))
        assert ((sr & 7) - (rne & 7)).abs().max() <= 1  # neighbouring magnitudes on the E2M1 grid
        both_nonzero = ((sr & 7) != 0) & ((rne & 7) != 0)
        assert torch.equal((sr & 8)[both_nonzero], (rne & 8)[both_nonzero]) and not torch.equal(sr, rne)


@gpu
def test_training_step_has_no_host_sync():
    from models import MLP

    torch.manual_seed(0)
    model = MLP().cuda().to(torch.bfloat16)
    compiled = torch.compile(model, backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    compiled(x).float().square().mean().backward()  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        compiled(x).float().square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _mlp_grads(cuda_graphs, steps, sr=False):
    """Outputs and gradients of ``steps`` training steps of the MLP on one input."""
    from models import MLP

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MLP().cuda().to(torch.bfloat16)
    compiled = torch.compile(model, backend="nvfp4", options={
        "bf16_last_blocks_fraction": 0.0, "recipe": {"stochastic_rounding": sr}, "cuda_graphs": cuda_graphs})
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    results = []
    for _ in range(steps):
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(x)
        out.float().square().mean().backward()
        results.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    return results


@gpu
def test_cuda_graphs_as_the_first_nvfp4_work_of_a_process():
    """The GEMM's kept tensors (the cuBLASLt workspace, the device zero), first made while a CUDA-graph
    tree warms up, stay out of the graph's memory pool: a fresh process whose first NVFP4 GEMM runs
    under Inductor's CUDA graphs records and replays (it raised "tensor(s) in the cudagraph pool not
    tracked as outputs" when they were allocated on the warming thread)."""
    code = f"""
import sys, torch
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
from models import MLP
from torch._dynamo.utils import counters
from nvfp4_compile.kernels import cublaslt
torch.manual_seed(0)
model = MLP().cuda().to(torch.bfloat16)
compiled = torch.compile(model, backend="nvfp4", options={{"bf16_last_blocks_fraction": 0.0, "cuda_graphs": True}})
x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
for _ in range(4):
    torch.compiler.cudagraph_mark_step_begin()
    compiled(x).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
torch.cuda.synchronize()
assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
assert cublaslt._workspaces and cublaslt._zeros  # the GEMMs ran through cuBLASLt
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@gpu
def test_cuda_graphs_capture_the_nvfp4_ops_and_change_no_bit():
    """The ``cuda_graphs`` option: Inductor's CUDA graphs record the forward and backward with
    every nvfp4:: kernel in them (no graph skipped), and replays give the eager-launch results."""
    from torch._dynamo.utils import counters

    from torch._inductor.cudagraph_trees import get_container

    counters.clear()
    graphed = _mlp_grads(True, 4)  # warm-up, record, then replays
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    manager = get_container(torch.cuda.current_device()).tree_manager

    def recorded(nodes):
        return sum(1 + recorded([c for cs in n.children.values() for c in cs]) for n in nodes)
    assert manager is not None and recorded([n for ns in manager.roots.values() for n in ns]) >= 2  # fwd + bwd
    launched = _mlp_grads(False, 4)
    for (out_g, grads_g), (out_l, grads_l) in zip(graphed, launched):
        assert torch.equal(out_g, out_l) and all(torch.equal(a, b) for a, b in zip(grads_g, grads_l))


@gpu
def test_cuda_graph_replays_draw_fresh_sr_noise():
    """SR inside a CUDA graph: each replay draws new noise (the seeds come from the graph-safe
    CUDA generator), so the same input gives different gradients in every step."""
    steps = _mlp_grads(True, 5, sr=True)
    for (_, a), (_, b) in zip(steps[2:], steps[3:]):  # replays
        assert not all(torch.equal(x, y) for x, y in zip(a, b))


@gpu
@pytest.mark.parametrize("shape", [(8192, 2048), (2048, 8192)])
def test_kernels_match_the_reference_at_training_shapes(shape):
    """The shapes of a 1B model's linears (tokens x width): every kernel bit for bit."""
    from nvfp4_compile import ops
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4
    from nvfp4_compile.kernels.triton_quantize_pair import quantize_pair_nvfp4
    from nvfp4_compile.kernels.triton_transpose import transpose_2d_nvfp4

    torch.manual_seed(0)
    x = (torch.randn(*shape, device="cuda") * torch.logspace(-3, 3, shape[1], device="cuda")).bfloat16()
    cases = [(quantize_nvfp4(x, 1), ops.reference_quantize(x, "nvfp4", 1, "rne", "")),
             (quantize_nvfp4(x, 16), ops.reference_quantize(x, "nvfp4", 16, "rne", "")),
             (quantize_nvfp4(x.t(), 1, rht=True), ops.reference_quantize(x.t(), "nvfp4", 1, "rne", "", True)),
             (quantize_pair_nvfp4(x, "rne", "rne", True), ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", True, ""))]
    codes, scales, _ = cases[1][1]
    cases.append((transpose_2d_nvfp4(codes, scales), ops._reference_transpose_2d(codes, scales, "nvfp4")))
    for i, (got, want) in enumerate(cases):
        assert all(torch.equal(g, w) for g, w in zip(got, want)), i


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shard_quantization_with_a_given_amax_equals_the_reference(dtype):
    """FSDP2's pre-all-gather: on CUDA the kernel is given the whole weight's amax (no pinned
    tile, no amax pass); codes, tile scales and S_dec equal the CPU reference's bit for bit."""
    from nvfp4_compile import distributed as ncd

    torch.manual_seed(0)
    shard = (torch.randn(256, 384) * torch.logspace(-3, 1, 384)).to(dtype)
    for amax in (ncd.local_amax(shard), ncd.local_amax(shard) * 4):  # its own, and a larger whole-weight amax
        want = ncd.quantize_2d_with_amax(shard, amax)
        got = ncd.quantize_2d_with_amax(shard.cuda(), amax.cuda())
        assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_dequantize_kernel_equals_the_reference(dtype):
    """The FSDP2 NVFP4 all-gather's dequantization: one Triton pass, bit for bit (NaN tiles stay
    NaN, zero signs kept, the amax pinned)."""
    from nvfp4_compile import distributed as ncd
    from nvfp4_compile.kernels.triton_dequant import exact_dequantize_2d

    torch.manual_seed(0)
    w = torch.randn(512, 384) * torch.logspace(-3, 1, 384)
    w[100, 7], w[0:16, 16:32] = float("nan"), 0.0
    for x in (w, torch.nan_to_num(w, nan=0.5)):
        x = x.to(dtype)
        amax = ncd.local_amax(x)
        codes, tiles, s_dec = ncd.quantize_2d_with_amax(x, amax)
        want = ncd.exact_dequantize(ncd._as_nvfp4(codes, tiles, s_dec), amax, dtype)
        into = torch.full(want.shape, 7.0, dtype=dtype, device="cuda")
        args = (codes.cuda(), tiles.cuda(), s_dec.cuda(), amax.cuda(), dtype)
        assert exact_dequantize_2d(*args, out=into) is into  # FSDP2's unsharded parameter, filled in place
        for got in (exact_dequantize_2d(*args).cpu(), into.cpu()):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num().view(torch.uint8), want.nan_to_num().view(torch.uint8))
        strided = torch.full((want.shape[1], want.shape[0]), 7.0, dtype=dtype, device="cuda").t()
        assert exact_dequantize_2d(*args, out=strided) is strided  # not contiguous: filled through a copy
        got = strided.contiguous().cpu()
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num().view(torch.uint8), want.nan_to_num().view(torch.uint8))
        with pytest.raises(ValueError, match="out must be"):
            exact_dequantize_2d(*args, out=into.t())  # the wrong shape


@gpu
def test_cached_launches_follow_alignment_and_shape_changes():
    """The quantize and dequantize kernels launched again and again through ``kernels/launch.py``'s
    cache, alternating 16-byte aligned and misaligned inputs and two shapes: every launch equals the
    reference (a launch that reused a kernel specialized for aligned pointers or another size would not)."""
    from nvfp4_compile.kernels import launch
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    assert launch.ENABLED
    torch.manual_seed(0)
    storage = torch.randn(257 * 512, dtype=torch.bfloat16)
    for _ in range(3):
        for offset, rows in ((0, 256), (1, 256), (8, 128), (0, 128)):  # element offset 1: 2 bytes past alignment
            x = storage[offset:offset + rows * 512].view(rows, 512)
            ref = nc.quantize(x.contiguous(), block=(1, 16))
            on_gpu = storage.cuda()[offset:offset + rows * 512].view(rows, 512)
            assert (on_gpu.data_ptr() % 16 == 0) == (offset % 8 == 0)
            codes, scales, s_dec = quantize_nvfp4(on_gpu)
            assert torch.equal(codes.cpu(), ref.codes) and torch.equal(scales.cpu(), ref.scales.view(torch.uint8))
            assert s_dec.item() == ref.global_scale.item()
            values = dequantize_to_bf16(codes, scales).float().cpu()
            assert torch.equal(values, nc.numerics.block_scaled_values(ref))
