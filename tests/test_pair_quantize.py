"""``nvfp4::quantize_pair`` and the pass that fuses the two 1x16 quantizations of one tensor."""

import pytest
import torch

from models import MLP
from nvfp4_compile import ops

NO_SR = {"recipe": {"stochastic_rounding": []}}
pytestmark = pytest.mark.usefixtures("fresh_compile_state")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rht_t", [False, True])
def test_pair_equals_two_quantize_calls(dtype, rht_t):
    x = (torch.randn(40, 96) * torch.logspace(-2, 2, 96)).to(dtype)  # 40 rows: x^T's K is padded to 48
    pair = torch.ops.nvfp4.quantize_pair(x, "nvfp4", "rne", "rne", rht_t, "")
    rows = ops.reference_quantize(x, "nvfp4", 1, "rne", "")
    cols = ops.reference_quantize(x.t(), "nvfp4", 1, "rne", "", rht_t)
    for got, want in zip(pair, (*rows, *cols)):
        assert torch.equal(got, want)
    assert pair[3].shape == (96, 24) and pair[4].shape == (96, 3)


def test_pair_op_passes_opcheck():
    x = torch.randn(32, 64)
    torch.library.opcheck(torch.ops.nvfp4.quantize_pair.default, (x, "nvfp4", "rne", "rne", True, ""))


def _after_graphs(dump):
    return "\n".join(p.read_text() for p in sorted(dump.glob("graph_*_after.py")))


def test_the_pass_fuses_x_and_dy_pairs_and_keeps_the_results(tmp_path):
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    compiled = torch.compile(model, backend="nvfp4", options={**NO_SR, "dump_dir": str(tmp_path / "d")})
    compiled(x).square().mean().backward()
    after = _after_graphs(tmp_path / "d")
    # layers.0: X (the input) for fprop/wgrad; layers.1: X and dY; layers.2 stays high precision.
    assert after.count("torch.ops.nvfp4.quantize_pair.default(") == 3
    # Every remaining 1x16 quantize is one whose partner does not exist (layers.0's dY has no dgrad).
    assert after.count("torch.ops.nvfp4.quantize.default(") == 1 + 2  # that dY^T, and the two 2D weights
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}

    torch._dynamo.reset()
    for p in model.parameters():
        p.grad = None
    from passes import quantize_gemms

    original = quantize_gemms.fuse_quantize_pairs
    quantize_gemms.fuse_quantize_pairs = lambda graph: 0  # the same compile without the fusion
    try:  # no cache may hand back the fused graph: the pass's cache key does not see the patch
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            options = {**NO_SR, "dump_dir": str(tmp_path / "unfused")}
            torch.compile(model, backend="nvfp4", options=options)(x).square().mean().backward()
    finally:
        quantize_gemms.fuse_quantize_pairs = original
    assert "quantize_pair" not in _after_graphs(tmp_path / "unfused")
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, fused[name]), name


def test_checked_quantizations_are_not_fused(tmp_path):
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    options = {**NO_SR, "check_finite": True, "dump_dir": str(tmp_path / "d")}
    torch.compile(model, backend="nvfp4", options=options)(x).square().mean().backward()
    assert "quantize_pair" not in _after_graphs(tmp_path / "d")
