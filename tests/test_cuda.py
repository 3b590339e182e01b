"""The reference numerics on a CUDA device give the CPU results (GPU only)."""

import pytest
import torch

import nvfp4_compile as nc
from conftest import golden_cases

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", golden_cases())
def test_cuda_matches_golden(golden, case):
    name, dtype, tile, mode = case.split("|")
    g = golden[case]
    x = torch.from_numpy(g["x"]).to(getattr(torch, dtype)).cuda()
    q = nc.quantize(x, block=(1, 16) if tile == "1x16" else (16, 16), rht=mode == "rht")
    assert torch.equal(q.codes.cpu(), torch.from_numpy(g["codes"]))
    assert torch.equal(q.scales.view(torch.uint8).cpu(), torch.from_numpy(g["scales_e4m3_bits"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_cuda_equals_cpu(dtype, fmt):
    x = (torch.randn(256, 512) * torch.logspace(-3, 3, 512)).to(dtype)
    for block in ((1, 16), (16, 16)) if fmt == "nvfp4" else ((1, 32), (32, 32)):
        a, b = nc.quantize(x, block=block, format=fmt), nc.quantize(x.cuda(), block=block, format=fmt)
        assert torch.equal(a.codes, b.codes.cpu())
        assert torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8).cpu())


def test_cuda_gemm_and_sr():
    a, b = torch.randn(64, 256), torch.randn(32, 256)
    qa, qb = nc.quantize(a.cuda()), nc.quantize(b.cuda())
    c = nc.nvfp4_mm(qa, qb, out_dtype=torch.float32)
    assert torch.equal(c.cpu(), nc.nvfp4_mm(nc.quantize(a), nc.quantize(b), out_dtype=torch.float32))
    gen = torch.Generator(device="cuda").manual_seed(0)
    draws = nc.dequantize(nc.quantize(a.cuda().repeat(1000, 1), rounding="sr", generator=gen))
    mean = draws.reshape(1000, 64, 256).mean(0).cpu()
    q = nc.quantize(a)
    scale = q.scales.to(torch.float32).repeat_interleave(16, 1) * q.global_scale
    inside = a.abs() <= 6 * scale
    assert ((mean - a).abs() <= 6 * scale / 1000 ** 0.5)[inside].all()
