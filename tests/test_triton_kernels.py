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
import nvfp4_compile as nc
for dt in (torch.bfloat16, torch.float16, torch.float32):
    x = (torch.randn(64, 96) * torch.logspace(-4, 4, 96)).to(dt)
    x[3, 5] = float("nan")
    for block_rows, rht, transposed in [(1, False, False), (16, False, False), (1, True, True), (1, False, True)]:
        src = x.t() if transposed else x
        ref = nc.quantize(src.contiguous(), block=(block_rows, 16), rht=rht)
        codes, scales, s_dec = quantize_nvfp4(src, block_rows, rht=rht)
        if not (torch.equal(codes, ref.codes) and torch.equal(scales, ref.scales.view(torch.uint8))
                and s_dec.item() == ref.global_scale.item()):
            bad.append((str(dt), block_rows, rht, transposed))
from nvfp4_compile.kernels.triton_transpose import transpose_2d_nvfp4
for shape in [(96, 160), (48, 80)]:
    q = nc.quantize(torch.randn(*shape), block=(16, 16))
    codes, scales = transpose_2d_nvfp4(q.codes, q.scales.view(torch.uint8))
    if not (torch.equal(codes, q.t().codes) and torch.equal(scales, q.t().scales.view(torch.uint8))):
        bad.append(("transpose_2d", shape))
print("mismatches:", bad)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mismatches: []" in result.stdout


gpu = pytest.mark.gpu


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
def test_triton_quantize_equals_the_cpu_reference(dtype, block_rows, rht, transposed):
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    x = (torch.randn(512, 768) * torch.logspace(-4, 4, 768)).to(dtype)
    x[3, 100] = float("nan")
    x[40, 7] = float("inf")
    src = x.t() if transposed else x
    ref = nc.quantize(src.contiguous(), block=(block_rows, 16), rht=rht)
    codes, scales, s_dec = quantize_nvfp4(src.cuda() if not transposed else x.cuda().t(), block_rows, rht=rht)
    assert torch.equal(codes.cpu(), ref.codes)
    assert torch.equal(scales.cpu(), ref.scales.view(torch.uint8))
    assert s_dec.item() == ref.global_scale.item()


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
@pytest.mark.parametrize("strategy", ["cublas", "triton", "fused"])
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
@pytest.mark.parametrize("shape", [(256, 384), (80, 48)])  # the second leaves partial 64x64 tiles
def test_triton_transpose_2d_equals_the_reference(shape, monkeypatch):
    from nvfp4_compile import ops

    monkeypatch.setenv("NVFP4_COMPILE_TRITON_TRANSPOSE", "1")
    q = nc.quantize(torch.randn(*shape) * torch.logspace(-3, 3, shape[1]), block=(16, 16))
    codes, scales = ops.transpose_2d(q.codes.cuda(), q.scales.view(torch.uint8).cuda(), "nvfp4")
    assert torch.equal(codes.cpu(), q.t().codes) and torch.equal(scales.cpu(), q.t().scales.view(torch.uint8))


@gpu
def test_quantize_pair_on_cuda_equals_the_reference():
    """What the pass emits for X (fprop rowwise, wgrad X^T with the RHT) and dY."""
    from nvfp4_compile import ops

    x = torch.randn(256, 320, dtype=torch.bfloat16) * torch.logspace(-3, 3, 320).bfloat16()
    got = torch.ops.nvfp4.quantize_pair(x.cuda(), "nvfp4", "rne", "rne", True, "")
    want = ops.reference_quantize_pair(x, "nvfp4", "rne", "rne", True, "")
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)


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
