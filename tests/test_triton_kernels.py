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


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_kernels_under_the_triton_interpreter_match_the_golden_vectors():
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
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_emulated_gemm_matches_the_reference(out_dtype):
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16, emulated_gemm

    a, b = torch.randn(256, 512, device="cuda"), torch.randn(384, 512, device="cuda")
    qa, qb = nc.quantize(a), nc.quantize(b, block=(16, 16))
    assert torch.equal(dequantize_to_bf16(qa.codes, qa.scales.view(torch.uint8)).float(),
                       nc.numerics.block_scaled_values(qa))
    bias = torch.randn(384, device="cuda")
    c = emulated_gemm(qa.codes, qa.scales.view(torch.uint8), qa.global_scale, qb.codes,
                      qb.scales.view(torch.uint8), qb.global_scale, bias, out_dtype)
    ref = nc.nvfp4_mm(qa, qb, out_dtype=torch.float32, bias=bias)
    tol = 2 ** -7 if out_dtype == torch.bfloat16 else 1e-5
    assert ((c.float() - ref).abs() <= tol * ref.abs() + 1e-4).all()


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
