"""The nvfp4 backend end to end on CPU: recipe placement, exactness against an eager emulation,
and the torch.compile features a training run meets."""

import pytest
import torch
import torch.nn as nn
from torch._inductor import config as inductor_config

import nvfp4_compile as nc
from nvfp4_compile import decisions
from conftest import saved_bytes
from emulation import emulate
from models import MLP, Block, TinyGPT

NO_SR = {"recipe": {"stochastic_rounding": False}}


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


def by_role(records):
    out = {}
    for d in records:
        out.setdefault((d.module, d.role), d)
    return out


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_mlp_matches_the_eager_emulation_bit_for_bit():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    reference = emulate(model, keep=("layers.2",))  # the last of 3 blocks stays in high precision
    compiled = torch.compile(model, backend="nvfp4", options=NO_SR)
    loss = compiled(x).square().mean()
    loss.backward()
    ref_loss = reference(x).square().mean()
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=2**-23, atol=0)
    got, want = grads(model), grads(reference)
    for name in got:
        if name.endswith("weight"):  # GEMM outputs: bit-exact
            assert torch.equal(got[name], want[name]), name
        else:  # bias gradients are sums over tokens, in another order
            assert torch.allclose(got[name], want[name], rtol=1e-6, atol=1e-6), name
    roles = by_role(nc.explain())
    assert len(nc.explain()) == 8  # 3 fprop, 3 wgrad, 2 dgrad (no dgrad into the input)
    assert roles[("layers.0", "fprop")].b == "16x16 RNE" and roles[("layers.0", "fprop")].precision == "nvfp4"
    assert roles[("layers.1", "dgrad")].a == "1x16 RNE"
    assert roles[("layers.1", "wgrad")].a.startswith("RHT")
    assert roles[("layers.2", "fprop")].precision == "fp32"
    assert "last 1 of 3 blocks" in roles[("layers.2", "wgrad")].reason


def test_compile_mode_reaches_inductor_and_keeps_the_recipe(monkeypatch):
    """``mode="reduce-overhead"`` and the ``cuda_graphs`` option turn on Inductor's CUDA graphs (a
    no-op on CPU, where the graph runs as usual) and change no result."""
    from nvfp4_compile import backend

    seen = []
    original = backend.compile_fx

    def spy(gm, example_inputs, config_patches=None, **kw):
        seen.append(dict(config_patches or {}))
        return original(gm, example_inputs, config_patches=config_patches, **kw)

    monkeypatch.setattr(backend, "compile_fx", spy)
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    results = []
    for how in ({"mode": "reduce-overhead"}, {"options": {**NO_SR, "cuda_graphs": True}}, {"options": NO_SR}):
        torch._dynamo.reset()
        decisions.reset()
        out = torch.compile(model, backend="nvfp4", **how)(x)
        out.square().mean().backward()
        results.append((out.detach(), grads(model), len(nc.explain())))
        model.zero_grad(set_to_none=True)
    assert seen[0].get("triton.cudagraphs") is True and seen[1].get("triton.cudagraphs") is True
    assert "triton.cudagraphs" not in seen[-1]
    (out_mode, _, n_mode), (out_option, grads_option, n_option), (out_plain, grads_plain, n_plain) = results
    assert n_mode == n_option == n_plain == 8
    # A mode excludes options, so that run has the default recipe: SR on gradients, RNE forward.
    assert torch.equal(out_mode, out_plain) and torch.equal(out_option, out_plain)
    assert all(torch.equal(grads_option[k], grads_plain[k]) for k in grads_plain)


def test_default_recipe_uses_sr_on_gradients_only_and_fresh_noise_every_step():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    compiled = torch.compile(model, backend="nvfp4")
    roles = None
    steps = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        model.zero_grad()
        compiled(x).square().mean().backward()
        steps.append(grads(model)["layers.0.weight"])
        roles = roles or by_role(nc.explain())
    assert torch.equal(steps[0], steps[1])  # reproducible under torch.manual_seed
    assert not torch.equal(steps[1], steps[2])  # fresh random bits, not a constant seed
    assert roles[("layers.1", "dgrad")].a == "1x16 SR" and roles[("layers.1", "dgrad")].b == "16x16 RNE"
    assert roles[("layers.0", "wgrad")].a == "RHT 1x16 SR" and roles[("layers.0", "wgrad")].b == "RHT 1x16 RNE"
    assert roles[("layers.0", "fprop")].a == "1x16 RNE"
    model.zero_grad()
    compiled(x).square().mean().backward()
    third = grads(model)["layers.0.weight"]
    assert not torch.equal(third, steps[2])  # consecutive steps without reseeding differ too


def test_sr_gradients_match_the_sr_emulation_statistically():
    """With SR on, compiled and emulated gradients are different draws of the same random
    variable: their means over N steps agree within a few standard errors."""
    torch.manual_seed(0)
    model, x = MLP(dims=(64, 64, 64)), torch.randn(64, 64)
    reference = emulate(model, keep=("layers.1",), sr=True)
    compiled = torch.compile(model, backend="nvfp4")
    runs = 30

    def draws(m, fn):
        out = []
        for _ in range(runs):
            m.zero_grad()
            fn(x).square().mean().backward()
            out.append(grads(m)["layers.0.weight"])
        return torch.stack(out)

    c, e = draws(model, compiled), draws(reference, reference)
    assert c.std(0).mean() > 0  # SR is on: the draws differ
    stderr = ((c.var(0) + e.var(0)) / runs).sqrt()
    within = (c.mean(0) - e.mean(0)).abs() <= 5 * stderr + 1e-12
    assert within.float().mean() > 0.995


@pytest.mark.parametrize("bias", [True, False])
def test_transformer_block_matches_the_emulation(bias):
    torch.manual_seed(0)
    model, x = Block(bias=bias), torch.randn(2, 16, 64)
    reference = emulate(model)
    compiled = torch.compile(model, backend="nvfp4", options=NO_SR)
    out = compiled(x)
    out.square().mean().backward()
    ref = reference(x)
    ref.square().mean().backward()
    # Norms, softmax and GELU are fused by Inductor, so their last bits can differ from eager
    # and occasionally move a value across an FP4 rounding boundary: compare closely, not bitwise.
    assert ((out - ref).norm() / ref.norm()) < 1e-3
    wanted = grads(reference)
    for name, g in grads(model).items():
        want = wanted[name]
        assert ((g - want).norm() / want.norm()) < 2e-2, name
    records = nc.explain()
    assert sum(d.role == "batched" for d in records) == 2 + 4  # QK^T, AV; and their 4 backward bmms
    assert all(d.precision == "fp32" for d in records if d.role == "batched")
    quantized = [d for d in records if d.precision == "nvfp4"]
    assert len(quantized) == 4 * 3  # 4 linears x (fprop, dgrad, wgrad): the block is not repeated


def test_gpt_keeps_embeddings_head_and_last_blocks_in_high_precision():
    torch.manual_seed(0)
    model, tokens = TinyGPT(depth=8), torch.randint(0, 256, (2, 16))
    compiled = torch.compile(model, backend="nvfp4")
    nn.functional.cross_entropy(compiled(tokens).flatten(0, 1), tokens.flatten()).backward()
    records = nc.explain()
    linears = {d.module for d in records if d.role == "fprop"}
    assert len(linears) == 8 * 4 + 1
    kept = {d.module for d in records if d.role != "batched" and d.precision != "nvfp4"}
    assert kept == {"lm_head"} | {f"h.{i}.{n}" for i in (6, 7) for n in ("qkv", "proj", "fc1", "fc2")}
    reasons = {d.module: d.reason for d in records}
    assert reasons["lm_head"] == "output head" and "last 2 of 8 blocks" in reasons["h.7.fc1"]
    # Every GEMM is accounted for: 33 fprop, 33 dgrad, 33 wgrad, and 6 bmm per block.
    counts = {role: sum(d.role == role for d in records) for role in ("fprop", "dgrad", "wgrad", "batched")}
    assert counts == {"fprop": 33, "dgrad": 33, "wgrad": 33, "batched": 8 * 6}
    assert len(records) == sum(counts.values())


def test_bf16_modules_option_and_format_override():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(32, 64)
    options = {"bf16_modules": ["layers.0"], "bf16_last_blocks_fraction": 0.0, "recipe": {"format": "mxfp4"}}
    torch.compile(model, backend="nvfp4", options=options)(x).sum().backward()
    roles = by_role(nc.explain())
    assert roles[("layers.0", "fprop")].reason.startswith("high_precision pattern 'layers.0'")
    assert roles[("layers.1", "fprop")].precision == "mxfp4" and roles[("layers.1", "fprop")].b == "32x32 RNE"
    assert roles[("layers.2", "wgrad")].precision == "mxfp4"


def test_unknown_option_lists_the_valid_keys():
    model = MLP()
    with pytest.raises(Exception, match="valid options are .*bf16_modules"):
        torch.compile(model, backend="nvfp4", options={"bf16_moduls": []})(torch.randn(16, 64))
    with pytest.raises(ValueError, match="valid recipe keys"):
        nc.backend.BackendOptions.from_dict({"recipe": {"rhtt": True}})
    with pytest.raises(ValueError, match="format"):
        nc.backend.BackendOptions.from_dict({"recipe": {"format": "fp8"}})
    with pytest.raises(TypeError, match="policy"):
        nc.backend.BackendOptions.from_dict({"policy": 3})
    with pytest.raises(TypeError, match="dump_dir"):
        nc.backend.BackendOptions.from_dict({"dump_dir": 3})
    with pytest.raises(TypeError, match="check_finite"):
        nc.backend.BackendOptions.from_dict({"check_finite": "yes"})
    with pytest.raises(TypeError, match="cuda_graphs"):
        nc.backend.BackendOptions.from_dict({"cuda_graphs": 1})


def test_backend_is_registered_once():
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    import torch._dynamo
    assert "nvfp4" in torch._dynamo.list_backends()
    try:
        distribution("nvfp4-compile")
    except PackageNotFoundError:  # run from a source tree: __init__ registered it
        return
    assert any(ep.name == "nvfp4" for ep in entry_points(group="torch_dynamo_backends"))
    nc.backend.register()  # idempotent: no "duplicate name"


def test_forward_saves_fp4_activations_instead_of_bf16():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(4)]).to(torch.bfloat16)
    x = torch.randn(512, 256, dtype=torch.bfloat16, requires_grad=True)
    options = {"bf16_last_blocks_fraction": 0.0}
    plain = saved_bytes(lambda: torch.compile(model, backend="inductor")(x))
    torch._dynamo.reset()
    ours = saved_bytes(lambda: torch.compile(model, backend="nvfp4", options=options)(x))
    # BF16 saves X (2 bytes/value) per layer; NVFP4 saves codes + E4M3 scales of X^T
    # (0.5 + 1/16 bytes/value) plus the 2D weight codes.
    assert ours < 0.45 * plain, (ours, plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_model_dtypes(dtype):
    torch.manual_seed(0)
    model = MLP().to(dtype)
    out = torch.compile(model, backend="nvfp4")(torch.randn(16, 64, dtype=dtype))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == dtype for p in model.parameters())


def test_dynamic_shapes_with_changing_sequence_lengths():
    torch.manual_seed(0)
    model = TinyGPT(depth=2)
    compiled = torch.compile(model, backend="nvfp4", dynamic=True)
    for seq in (8, 13, 21):  # token counts that are not multiples of 16: wgrad pads
        tokens = torch.randint(0, 256, (2, seq))
        model.zero_grad()
        loss = nn.functional.cross_entropy(compiled(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(model.h[0].fc1.weight.grad).all()
    assert any(d.precision == "nvfp4" and d.role == "wgrad" for d in nc.explain())


def test_graph_break_in_the_middle():
    class Broken(MLP):
        def forward(self, x):
            x = torch.relu(self.layers[0](x))
            torch._dynamo.graph_break()
            return self.layers[2](torch.relu(self.layers[1](x)))

    torch.manual_seed(0)
    model = Broken()
    torch.compile(model, backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})(torch.randn(16, 64)).sum().backward()
    records = nc.explain()
    assert len({d.graph for d in records}) == 2
    assert {d.module for d in records if d.precision == "nvfp4"} == {"layers.0", "layers.1", "layers.2"}


def test_inference_under_no_grad_quantizes_fprop():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(16, 64)
    options = {"bf16_last_blocks_fraction": 0.0, **NO_SR}
    with torch.no_grad():
        out = torch.compile(model, backend="nvfp4", options=options)(x)
    records = nc.explain()
    assert {d.role for d in records} == {"fprop"} and all(d.precision == "nvfp4" for d in records)
    with torch.no_grad():
        assert torch.equal(out, emulate(model)(x))


def test_check_finite_names_the_module_and_role():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(16, 64)
    x[3, 5] = float("nan")
    out = torch.compile(model, backend="nvfp4")(x)
    assert torch.isnan(out[3]).all()  # propagates, never a silent finite value
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"layers\.0 fprop A"):
        torch.compile(model, backend="nvfp4", options={"check_finite": True})(x)


def test_activation_checkpointing_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(MLP):
        def forward(self, x):
            return checkpoint(super().forward, x, use_reentrant=False)

    torch.manual_seed(0)
    plain, x = MLP(), torch.randn(32, 64)
    ckpt = Checkpointed()
    ckpt.load_state_dict(plain.state_dict())
    for m in (plain, ckpt):
        torch.compile(m, backend="nvfp4", options=NO_SR)(x).square().mean().backward()
        torch._dynamo.reset()
    wanted = grads(ckpt)
    for name, g in grads(plain).items():
        assert torch.equal(g, wanted[name]), name
    assert sum(d.precision == "nvfp4" for d in nc.explain()) == 2 * 5


@inductor_config.patch(fx_graph_cache=True)
def test_fx_graph_cache_hits_on_the_same_config_and_misses_on_a_change(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(16, 64)

    def compile_once(options):
        torch._dynamo.reset()
        counters.clear()
        torch.compile(model, backend="nvfp4", options=options)(x).sum().backward()
        return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]

    assert compile_once(NO_SR)[1] > 0
    hits, misses = compile_once(NO_SR)
    assert hits > 0 and misses == 0
    assert len(nc.explain()) == 2 * 8  # decisions are recorded on a cache hit too
    assert compile_once({"recipe": {"stochastic_rounding": True}})[1] > 0
    assert compile_once({**NO_SR, "bf16_modules": ["layers.1"]})[1] > 0
    # A policy is part of the key by content: the same content as a dict or a file hits.
    policy = {"recipe": {"rht": False}}
    assert compile_once({"policy": policy})[1] > 0
    path = tmp_path / "same.toml"
    path.write_text("[recipe]\nrht = false\n")
    hits, misses = compile_once({"policy": str(path)})
    assert hits > 0 and misses == 0


def test_transposed_weights_and_tied_weights():
    """HF GPT-2's Conv1D stores W as [in, out] and computes addmm(b, x, W); a tied head
    shares the embedding's weight. Both are recognised."""
    from transformers.pytorch_utils import Conv1D

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(64, 32)
            self.h = nn.ModuleList(Conv1D(32, 32) for _ in range(2))  # nf=32 outputs, nx=32 inputs
            self.out = nn.Linear(32, 64, bias=False)
            self.out.weight = self.wte.weight

        def forward(self, t):
            x = self.wte(t)
            for layer in self.h:
                x = torch.relu(layer(x))
            return self.out(x)

    torch.manual_seed(0)
    model = Net()
    tokens = torch.randint(0, 64, (2, 16))
    torch.compile(model, backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})(tokens).sum().backward()
    roles = by_role(nc.explain())
    for role in ("fprop", "dgrad", "wgrad"):
        assert roles[("h.0", role)].precision == "nvfp4", role
    assert roles[("h.0", "fprop")].b == "16x16 RNE"
    assert roles[("out", "fprop")].precision == "fp32"
    assert "tied" in roles[("out", "fprop")].reason or roles[("out", "fprop")].reason == "output head"


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["reference", "triton"])
def test_cuda_mlp_matches_the_emulation(kernels, monkeypatch):
    """Reference kernels on CUDA: bit-exact. Triton kernels: the same codes and scales, GEMMs
    summed in cuBLAS's FP32 order instead of exactly, so equal within FP32 rounding."""
    monkeypatch.setenv("NVFP4_COMPILE_REFERENCE_KERNELS", "1" if kernels == "reference" else "0")
    torch.manual_seed(0)
    model, x = MLP().cuda(), torch.randn(32, 64, device="cuda")
    reference = emulate(model, keep=("layers.2",))
    compiled = torch.compile(model, backend="nvfp4", options=NO_SR)
    compiled(x).square().mean().backward()
    reference(x).square().mean().backward()
    wanted = grads(reference)
    for name, g in grads(model).items():
        want = wanted[name]
        if kernels == "triton":
            assert torch.allclose(g, want, rtol=1e-4, atol=1e-6), name
        elif name.endswith("weight"):
            assert torch.equal(g, want), name


def test_operand_kinds_and_padding_are_recorded():
    torch.manual_seed(0)
    model = MLP(dims=(64, 64, 48))
    options = {"bf16_last_blocks_fraction": 0.0, "recipe": {"weight_2d": False}}
    torch.compile(model, backend="nvfp4", options=options)(torch.randn(24, 64)).sum().backward()
    roles = by_role(nc.explain())
    assert (roles[("layers.1", "fprop")].a_operand, roles[("layers.1", "fprop")].b_operand) == ("activation", "weight")
    assert (roles[("layers.1", "dgrad")].a_operand, roles[("layers.1", "dgrad")].b_operand) == ("gradient", "weight")
    assert (roles[("layers.1", "wgrad")].a_operand, roles[("layers.1", "wgrad")].b_operand) == ("gradient", "activation")
    assert roles[("layers.1", "wgrad")].reason == "recipe (K padded from 24 to 32)"  # 24 tokens
    assert roles[("layers.1", "fprop")].b == "1x16 RNE"  # weight_2d off


def test_composes_with_a_user_joint_pass(tmp_path, monkeypatch):
    from torch._inductor.custom_graph_pass import CustomGraphPass

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cached graph would skip both passes

    class CountMatmuls(CustomGraphPass):
        seen = []

        def __call__(self, graph):
            self.seen.append(sum(n.target is torch.ops.aten.mm.default for n in graph.nodes))

        def uuid(self):
            return "count-matmuls"

    torch.manual_seed(0)
    with inductor_config.patch(joint_custom_pre_pass=CountMatmuls()):
        torch.compile(MLP(), backend="nvfp4", options={"bf16_last_blocks_fraction": 0.0})(torch.randn(16, 64)).sum().backward()
    assert CountMatmuls.seen and CountMatmuls.seen[0] > 0  # the user's pass ran, before ours
    assert all(d.precision == "nvfp4" for d in nc.explain())


@pytest.mark.parametrize("order", ["import first", "compile first"])
def test_backend_name_without_or_before_importing_the_package(order):
    import subprocess
    import sys
    import textwrap

    from importlib.metadata import PackageNotFoundError, distribution

    if order == "compile first":
        try:
            distribution("nvfp4-compile")
        except PackageNotFoundError:
            pytest.skip("the backend name resolves without an import only when the package is installed")
    head = "import nvfp4_compile\n" if order == "import first" else ""
    tail = "" if order == "import first" else "import nvfp4_compile\n"
    code = head + textwrap.dedent("""
        import torch
        out = torch.compile(torch.nn.Linear(32, 16), backend="nvfp4")(torch.randn(16, 32))
        assert out.shape == (16, 16)
        """) + tail + "print('ok', len(__import__('nvfp4_compile').explain()))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout
