"""An unchanged Hugging Face LlamaForCausalLM (tiny config) under backend="nvfp4"."""

import inspect
import string

import pytest
import torch

import nvfp4_compile as nc
from emulation import emulate

transformers = pytest.importorskip("transformers")

LAYERS = 4
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def tiny_llama(dtype=torch.float32):
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype)


def stdlib_bytes(n):
    """Real text nobody here wrote: the source of a standard-library module, as byte tokens."""
    return torch.tensor(list(inspect.getsource(string).encode()[:n]), dtype=torch.long)


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


def test_llama_gemms_are_all_accounted_for_and_match_the_emulation():
    model = tiny_llama()
    tokens = stdlib_bytes(2 * 32).reshape(2, 32)
    compiled = torch.compile(model, backend="nvfp4", options={"recipe": {"stochastic_rounding": False}})
    loss = compiled(input_ids=tokens, labels=tokens).loss
    loss.backward()
    kept = {"lm_head"} | {f"model.layers.{LAYERS - 1}.{name}" for name in LINEARS}
    reference = emulate(model, keep=kept)
    ref_loss = reference(input_ids=tokens, labels=tokens).loss
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-3 * ref_loss.item()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert ((p.grad - q.grad).norm() / q.grad.norm()) < 3e-2, name

    records = nc.explain()
    fprops = {d.module: d for d in records if d.role == "fprop"}
    assert set(fprops) == {f"model.layers.{i}.{n}" for i in range(LAYERS) for n in LINEARS} | {"lm_head"}
    for role in ("fprop", "dgrad", "wgrad"):
        assert sum(d.role == role for d in records) == LAYERS * len(LINEARS) + 1, role
    assert {d.module for d in records if d.role != "batched" and d.precision != "nvfp4"} == kept
    batched = [d for d in records if d.role == "batched"]
    assert sum("self_attn" in d.module for d in batched) == LAYERS * 6  # QK^T, AV and their backward
    # Some transformers versions compute the rotary frequencies with a batched matmul too.
    assert all("self_attn" in d.module or "rotary" in d.module for d in batched)
    assert all(d.precision == "fp32" for d in batched)


def test_llama_trains_on_real_text_and_stays_close_to_bf16():
    data = stdlib_bytes(4096)
    batches = [data[i:i + 16 * 32].reshape(16, 32) for i in range(0, 3 * 16 * 32, 16 * 32)]

    def train(backend, steps):
        torch._dynamo.reset()
        model = tiny_llama(torch.bfloat16)
        compiled = torch.compile(model, backend=backend)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        torch.manual_seed(1)
        for step in range(steps):
            tokens = batches[step % len(batches)]
            loss = compiled(input_ids=tokens, labels=tokens).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    nvfp4 = train("nvfp4", 50)
    bf16 = train("inductor", 1)
    assert abs(nvfp4[0] - bf16[0]) < 0.02 * bf16[0]  # one step: close to BF16
    assert sum(nvfp4[-5:]) / 5 < 0.7 * nvfp4[0]  # and it learns
