"""``passes/bf16_operands.py`` and the ops it uses: the emulated GEMMs take BF16 operands that the
quantizers write directly, with numerics unchanged bit for bit, and FP4 still what the forward
saves for the backward. On CPU the pass runs when ``NVFP4_COMPILE_BF16_OPERANDS=1`` forces it."""

import pytest
import torch
import torch.nn as nn
from torch._inductor import config as inductor_config

import nvfp4_compile as nc
from conftest import saved_bytes
from nvfp4_compile import ops
from models import MLP

pytestmark = pytest.mark.usefixtures("fresh_compile_state")

NVFP4 = torch.ops.nvfp4


def run(model, x, monkeypatch, bf16_operands: str, options=None, seed=0):
    monkeypatch.setenv("NVFP4_COMPILE_BF16_OPERANDS", bf16_operands)
    torch._dynamo.reset()
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    loss = torch.compile(model, backend="nvfp4", options=options)(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("sr", [False, True])
def test_training_step_is_bit_identical_with_and_without(monkeypatch, sr):
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(48, 64)
    options = {"recipe": {"stochastic_rounding": sr}}
    loss_codes, grads_codes = run(model, x, monkeypatch, "0", options)
    loss_values, grads_values = run(model, x, monkeypatch, "1", options)
    assert torch.equal(loss_codes, loss_values)
    for name, g in grads_codes.items():
        assert torch.equal(g, grads_values[name]), name


class SharedWeight(nn.Module):
    """One weight in two fprops (its codes read by two GEMMs and two dgrads), then a biased layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64, bias=False)
        self.out = nn.Linear(64, 32)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


@pytest.mark.parametrize("sr", [False, True])
def test_a_weight_used_twice_gives_the_same_bits(monkeypatch, sr):
    torch.manual_seed(0)
    model, x = SharedWeight(), torch.randn(48, 64, requires_grad=True)
    options = {"recipe": {"stochastic_rounding": sr}, "bf16_last_blocks_fraction": 0.0}
    results = []
    for setting in ("0", "1"):
        x.grad = None
        loss, grads = run(model, x, monkeypatch, setting, options)
        results.append((loss, grads, x.grad.clone()))
    (loss_codes, grads_codes, dx_codes), (loss_values, grads_values, dx_values) = results
    assert torch.equal(loss_codes, loss_values) and torch.equal(dx_codes, dx_values)
    for name, g in grads_codes.items():
        assert torch.equal(g, grads_values[name]), name


def graphs_after(monkeypatch, model, x, bf16_operands: str):
    """The forward and backward graphs Inductor lowers (after partitioning)."""
    seen = []
    monkeypatch.setenv("NVFP4_COMPILE_BF16_OPERANDS", bf16_operands)
    with inductor_config.patch(post_grad_custom_post_pass=lambda g: seen.append(
            [(n.target, n.args) for n in g.nodes if n.op == "call_function"])):
        torch.compile(model, backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})(x).sum().backward()
    return seen


def test_quantizers_hand_over_values_and_saved_operands_stay_fp4(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128, bias=False), nn.Linear(128, 32, bias=False))
    x = torch.randn(48, 64, requires_grad=True)
    forward, backward = graphs_after(monkeypatch, model, x, "1")
    ops_of = lambda g: [t for t, _ in g]  # noqa: E731
    for g in (forward, backward):
        assert NVFP4.gemm.default not in ops_of(g) and NVFP4.gemm_values.default in ops_of(g)
        assert NVFP4.quantize_pair.default not in ops_of(g)  # replaced, not left to run twice
    assert ops_of(forward).count(NVFP4.quantize_pair_values.default) == 2  # X of each layer, once
    # The 2D weights: values for fprop and codes (saved for dgrad) from one pass, none quantized twice.
    assert ops_of(forward).count(NVFP4.quantize_with_values.default) == 2
    assert NVFP4.quantize.default not in ops_of(forward) + ops_of(backward)
    assert NVFP4.quantize_pair_values.default in ops_of(backward)
    # Forward: X rowwise as values (fprop), X^T as codes (saved for wgrad); nothing dequantized.
    pairs = [a for t, a in forward if t is NVFP4.quantize_pair_values.default]
    assert pairs and all(a[-2:] == (True, False) for a in pairs)
    assert NVFP4.dequantize.default not in ops_of(forward)
    # Backward: dY both ways as values; X^T and the saved W codes dequantized (W^T read as a view
    # of W's values: no transpose pass on either side).
    pairs = [a for t, a in backward if t is NVFP4.quantize_pair_values.default]
    assert pairs and all(a[-2:] == (True, True) for a in pairs)
    assert ops_of(backward).count(NVFP4.dequantize.default) == 4  # X^T and W of each layer
    assert NVFP4.transpose_2d.default not in ops_of(forward) + ops_of(backward)
    # dgrad (x requires grad: both layers): the weight's values [N, K] enter as the view [K, N].
    views = [a[2] for t, a in backward if t is NVFP4.gemm_values.default
             and a[2].target is torch.ops.aten.permute.default]
    assert len(views) == 2
    assert all(v.args[1] == [1, 0] and v.args[0].target is NVFP4.dequantize.default for v in views)


def test_forward_saves_the_same_bytes(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(3)]).to(torch.bfloat16)
    x = torch.randn(512, 256, dtype=torch.bfloat16, requires_grad=True)
    saved = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("NVFP4_COMPILE_BF16_OPERANDS", setting)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})
        saved[setting] = saved_bytes(lambda: compiled(x))
    assert saved["1"] == saved["0"], saved


def test_value_ops_equal_the_code_ops_composed():
    torch.manual_seed(0)
    x = torch.randn(40, 72) * torch.logspace(-3, 3, 72)
    x[3, 5] = float("nan")
    codes, bits, scale = ops.reference_quantize(x, "nvfp4", 1, "rne", "")
    values, scale_v = NVFP4.quantize_values(x, "nvfp4", 1, "rne", "", False)
    want = nc.numerics.block_scaled_values(ops._as_tensor(codes, bits, scale, "nvfp4", 1))
    assert values.dtype == torch.bfloat16 and values.shape == (40, 80)  # K padded to 80
    assert torch.equal(values.float().isnan(), want.isnan())
    assert torch.equal(values.float().nan_to_num(), want.nan_to_num()) and torch.equal(scale, scale_v)
    assert torch.equal(NVFP4.dequantize(codes, bits, "nvfp4").view(torch.int16), values.view(torch.int16))

    w = torch.randn(48, 72)
    w[20, 33] = float("inf")
    both = NVFP4.quantize_with_values(w, "nvfp4", 16, "rne", "", False)  # 2D: a weight
    codes_2d = ops.reference_quantize(w, "nvfp4", 16, "rne", "")
    assert len(both) == 4 and all(torch.equal(a, b) for a, b in zip(both[:3], codes_2d))
    want = NVFP4.dequantize(codes_2d[0], codes_2d[1], "nvfp4")
    assert torch.equal(both[3].isnan(), want.isnan()) and both[3].isnan().any()  # the Inf's tile
    assert torch.equal(both[3].nan_to_num().view(torch.int16), want.nan_to_num().view(torch.int16))

    pair = NVFP4.quantize_pair(x, "nvfp4", "rne", "rne", True, "")
    mixed = NVFP4.quantize_pair_values(x, "nvfp4", "rne", "rne", True, "", True, False)
    assert torch.equal(mixed[0].view(torch.int16), NVFP4.dequantize(pair[0], pair[1], "nvfp4").view(torch.int16))
    assert mixed[1].numel() == 0 and all(torch.equal(a, b) for a, b in zip(mixed[2:], pair[2:]))

    b = torch.randn(24, 72)
    qb = NVFP4.quantize(b, "nvfp4", 1, "rne", "", False)
    bias = torch.randn(24)
    clean = x.nan_to_num()
    qa = NVFP4.quantize(clean, "nvfp4", 1, "rne", "", False)
    for out_dtype in (torch.bfloat16, torch.float32):
        want = NVFP4.gemm(*qa, *qb, bias, "nvfp4", out_dtype)
        got = NVFP4.gemm_values(NVFP4.dequantize(qa[0], qa[1], "nvfp4"), qa[2],
                                NVFP4.dequantize(qb[0], qb[1], "nvfp4"), qb[2], bias, out_dtype)
        assert torch.equal(got, want)


def test_mxfp4_has_no_bf16_operands():
    with pytest.raises(ValueError, match="NVFP4 only"):
        NVFP4.quantize_values(torch.randn(4, 32), "mxfp4", 1, "rne", "", False)


@pytest.mark.gpu
@pytest.mark.parametrize("sr", [False, True])
def test_cuda_training_step_is_bit_identical_with_and_without(monkeypatch, sr):
    """The Triton kernels and cuBLASLt: the quantizers' BF16 operands give the bits the dequantize
    kernel's gave, so a seeded step matches the code path exactly (default: on for CUDA)."""
    torch.manual_seed(0)
    model = MLP(dims=(256, 512, 384, 128)).cuda().to(torch.bfloat16)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    options = {"recipe": {"stochastic_rounding": sr}, "bf16_last_blocks_fraction": 0.0}
    loss_codes, grads_codes = run(model, x, monkeypatch, "0", options)
    loss_values, grads_values = run(model, x, monkeypatch, "", options)
    assert torch.equal(loss_codes, loss_values)
    for name, g in grads_codes.items():
        assert torch.equal(g, grads_values[name]), name


def test_on_by_default_only_for_emulated_cuda_gemms_without_the_fp4_all_gather(monkeypatch):
    from cutlass_kernels import dispatch
    from nvfp4_compile import distributed
    from passes import quantize_gemms

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(dispatch, "use_sm100_gemm", lambda device: False)  # Hopper: emulated GEMMs
    assert quantize_gemms.bf16_operands_by_default(cuda)
    monkeypatch.setattr(dispatch, "use_sm100_gemm", lambda device: True)  # the native FP4 GEMM takes codes
    assert not quantize_gemms.bf16_operands_by_default(cuda)
    monkeypatch.setattr(dispatch, "use_sm100_gemm", lambda device: False)
    monkeypatch.setattr(distributed, "fp4_all_gather_enabled", True)
    assert not quantize_gemms.bf16_operands_by_default(cuda)


def test_enabling_the_fp4_all_gather_turns_the_default_off(monkeypatch):
    from nvfp4_compile import distributed

    monkeypatch.setattr(distributed, "fp4_all_gather_enabled", False)
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))
    assert distributed.enable_nvfp4_all_gather(model, world_size=2)
    assert distributed.fp4_all_gather_enabled


@pytest.mark.gpu
@pytest.mark.parametrize("block_rows", [1, 16])
def test_cuda_quantize_with_values_equals_the_reference(block_rows):
    """One kernel pass writes the codes and the values; both equal the CPU reference."""
    torch.manual_seed(0)
    w = (torch.randn(256, 384) * torch.logspace(-3, 3, 384)).to(torch.bfloat16)
    w[17, 40] = float("inf")
    got = NVFP4.quantize_with_values(w.cuda(), "nvfp4", block_rows, "rne", "", False)
    want = ops.reference_quantize_with_values(w, "nvfp4", block_rows, "rne", "")
    assert got[3].isnan().any()  # the Inf's block
    for g, r in zip(got, want):
        g = g.cpu()
        assert g.dtype == r.dtype and g.shape == r.shape
        if g.is_floating_point():
            assert torch.equal(g.isnan(), r.isnan())
            g, r = g.nan_to_num(), r.nan_to_num()
        assert torch.equal(g, r)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_cuda_gemm_values_reads_a_transposed_weight_in_place(out_dtype):
    """dgrad's weight comes as the transposed view of W's values: cuBLASLt takes it without a copy
    and without falling back, and the product equals the one on the row-major copy."""
    from nvfp4_compile.kernels import cublaslt, triton_gemm

    torch.manual_seed(0)
    m, n, k = 512, 768, 1024
    a = NVFP4.quantize_values(torch.randn(m, k, device="cuda"), "nvfp4", 1, "rne", "", False)
    w = NVFP4.quantize_values(torch.randn(k, n, device="cuda"), "nvfp4", 16, "rne", "", False)  # [K, N] saved
    b_view = w[0].t()  # [N, K], memory [K, N]
    assert cublaslt.transposed_view(b_view) and cublaslt.supported(a[0], b_view, out_dtype, None)
    calls = []
    real = cublaslt.matmul
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cublaslt, "matmul", lambda *args, **kw: calls.append(args[1].stride()) or real(*args, **kw))
        got = triton_gemm.emulated_gemm_values(a[0], a[1], b_view, w[1], None, out_dtype)
    assert calls == [(1, n)]  # the view itself reached cuBLASLt
    want = triton_gemm.emulated_gemm_values(a[0], a[1], b_view.contiguous(), w[1], None, out_dtype)
    ref = torch.mm(a[0].float(), b_view.float().t()) * (a[1] * w[1])
    tol = 2 ** -8 if out_dtype == torch.bfloat16 else 1e-5
    for c in (got, want):
        assert ((c.float() - ref).abs() <= tol * ref.abs() + 1e-5 * ref.abs().max()).all()
    assert torch.equal(got, want)  # the same sums in the same order: the layouts' kernels agree bit for bit
