import re
import textwrap
from pathlib import Path

import pytest
import torch

import nvfp4_compile as nc
from models import MLP
from nvfp4_compile.policy import PolicyError, load_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "policies" / "paper_12b.toml"


@pytest.fixture(autouse=True)
def fresh():
    torch._dynamo.reset()
    nc.decisions.reset()


def write(tmp_path, text, name="policy.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_example_policy_round_trips_through_a_dict():
    policy = load_policy(EXAMPLE)
    assert policy.recipe == nc.Recipe()
    assert (policy.first_blocks, policy.last_blocks) == (0.03, 0.12)
    assert policy.block_counts(62) == (2, 8)  # the paper's 12B setup
    again = load_policy(policy.to_dict())
    assert again.cache_key() == policy.cache_key()
    assert again.to_dict() == policy.to_dict()


def test_file_and_dict_give_the_same_policy(tmp_path):
    path = write(tmp_path, """
        [recipe]
        rht = false
        stochastic_rounding = ["gradient", "activation"]
        [high_precision]
        modules = ["a.*"]
        last_blocks = 2
        [[override]]
        modules = "b"
        format = "mxfp4"
        """)
    from_file = load_policy(path)
    from_dict = load_policy({"recipe": {"rht": False, "stochastic_rounding": ["gradient", "activation"]},
                             "high_precision": {"modules": ["a.*"], "last_blocks": 2},
                             "override": [{"modules": "b", "format": "mxfp4"}]})
    assert from_file.cache_key() == from_dict.cache_key()
    assert from_file.recipe.rht == () and from_file.recipe.stochastic_rounding == ("activation", "gradient")


@pytest.mark.parametrize("text, line, key", [
    ("[recipe]\nformat = 'nvfp4'\nrhtt = true\n", 3, "recipe.rhtt"),
    ("[recipes]\nrht = true\n", 1, "recipes"),
    ("[recipe]\n\nweight_2d = 'yes'\n", 3, "recipe.weight_2d"),
    ("[recipe]\nformat = 'fp8'\n", 2, "recipe.format"),
    ("[recipe]\nrht = ['attention']\n", 2, "recipe.rht"),
    ("[high_precision]\nmodules = ['x']\nlast_blocks = -1\n", 3, "high_precision.last_blocks"),
    ("[high_precision]\nfirst_blocks = 1.5\n", 2, "high_precision.first_blocks"),
    ("[high_precision]\nmodules = [3]\n", 2, "high_precision.modules"),
    ("[[override]]\nmodules = ['a']\n[[override]]\nformat = 'bf16'\n", 3, "override[1]"),
    ("[[override]]\nmodules = ['a']\nrounding = 'sr'\n", 3, "override[0].rounding"),
])
def test_validation_errors_name_file_line_and_key(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert f"'{key}'" in message


def test_bad_policy_is_rejected_before_compiling(tmp_path):
    path = write(tmp_path, "[recipe]\nformat = 'fp8'\n")
    with pytest.raises(Exception, match=re.escape(f"{path}:2")):
        torch.compile(MLP(), backend="nvfp4", options={"policy": str(path)})(torch.randn(16, 64))
    assert len(nc.explain()) == 0


def test_overrides_apply_in_order_later_entries_win():
    policy = load_policy({"high_precision": {"last_blocks": 0},
                          "override": [{"modules": "layers.*", "format": "bf16"},
                                       {"modules": "layers.1", "format": "nvfp4", "rht": False}]})
    recipe, reason = policy.resolve("layers.1", ("layers", 3))
    assert reason is None and recipe.rht == ()
    recipe, reason = policy.resolve("layers.0", ("layers", 3))
    assert reason is not None and "override" in reason
    torch.manual_seed(0)
    torch.compile(MLP(), backend="nvfp4", options={"policy": policy.to_dict()})(torch.randn(16, 64)).sum().backward()
    precisions = {(d.module, d.role): (d.precision, d.a) for d in nc.explain()}
    assert precisions[("layers.1", "wgrad")] == ("nvfp4", "1x16 SR")  # no RHT for this module
    assert precisions[("layers.0", "fprop")][0] == "fp32"


def test_a_pattern_that_matches_nothing_warns_with_file_line_key(tmp_path):
    path = write(tmp_path, "[high_precision]\nlast_blocks = 0\nmodules = ['layers.9', 'layers.0']\n")
    with pytest.warns(UserWarning, match=re.escape(f"{path}:3: key 'high_precision.modules': pattern 'layers.9'")):
        torch.compile(MLP(), backend="nvfp4", options={"policy": str(path)})(torch.randn(16, 64))


def test_an_impossible_gemm_is_an_error_and_nothing_is_half_applied(tmp_path):
    def forcing_2d_on(module):
        return write(tmp_path, f"[high_precision]\nlast_blocks = 0\n[[override]]\nmodules = [\"{module}\"]\n"
                               "weight_2d = true\n", f"{module}.toml")

    model = MLP(dims=(40, 64, 48, 32))  # layers.0 weight is [64, 40]: 40 does not tile 16x16
    path, path2 = forcing_2d_on("layers.1"), forcing_2d_on("layers.0")
    torch.compile(model, backend="nvfp4", options={"policy": str(path)})(torch.randn(16, 40))
    assert "does not tile" in {(d.module, d.role): d for d in nc.explain()}[("layers.0", "fprop")].reason
    torch._dynamo.reset()
    nc.decisions.reset()
    with pytest.raises(Exception, match=re.escape(f"{path2}:5: key 'override[0].weight_2d'")):
        torch.compile(model, backend="nvfp4", options={"policy": str(path2)})(torch.randn(16, 40))
    assert len(nc.explain()) == 0


def test_example_policy_on_hf_llama_keeps_exactly_the_expected_layers():
    pytest.importorskip("transformers")
    from test_hf_llama import LAYERS, LINEARS, stdlib_bytes, tiny_llama

    model, tokens = tiny_llama(), stdlib_bytes(64).reshape(2, 32)
    compiled = torch.compile(model, backend="nvfp4", options={"policy": str(EXAMPLE)})
    compiled(input_ids=tokens, labels=tokens).loss.backward()
    kept = {d.module for d in nc.explain() if d.role != "batched" and d.precision != "nvfp4"}
    # 4 blocks: ceil(0.03 * 4) = 1 first block, ceil(0.12 * 4) = 1 last block, and the head.
    assert kept == {"lm_head"} | {f"model.layers.{i}.{n}" for i in (0, LAYERS - 1) for n in LINEARS}


def test_policy_content_not_path_is_in_the_cache_key(tmp_path):
    from nvfp4_compile.options import BackendOptions

    a = write(tmp_path, "[recipe]\nrht = false\n", "a.toml")
    b = write(tmp_path, "[recipe]\nrht = false\n", "b.toml")
    c = write(tmp_path, "[recipe]\nrht = true\n", "c.toml")
    key = lambda p: BackendOptions.from_dict({"policy": str(p)}).cache_key()  # noqa: E731
    assert key(a) == key(b) != key(c)
