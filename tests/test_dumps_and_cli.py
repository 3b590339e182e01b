import ast
import json
import textwrap
from pathlib import Path

import pytest
import torch

import nvfp4_compile as nc
from models import MLP
from nvfp4_compile import cli, dumps

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = '''
import sys
sys.path.insert(0, {tests!r})
from models import MLP, TinyGPT

def mlp():
    return MLP()

def gpt():
    return TinyGPT(depth=4)

def odd():
    return MLP(dims=(64, 48, 32))  # layers.0 weight [48, 64]: no 32x32 tiling
'''


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(FACTORIES.format(tests=str(ROOT / "tests")))
    return path


def check_dump(dump: Path):
    records = json.loads((dump / "gemms.json").read_text())
    befores, afters = sorted(dump.glob("graph_*_before.py")), sorted(dump.glob("graph_*_after.py"))
    assert befores and len(befores) == len(afters)
    for path in befores + afters:
        ast.parse(path.read_text())  # readable, valid Python
    after = afters[0].read_text()
    assert "torch.ops.nvfp4.gemm.default" in after and "torch.ops.nvfp4.gemm" not in befores[0].read_text()
    assert "torch.ops.nvfp4.quantize.default" in after and "'sr', '', True)" in after  # wgrad dY^T: SR + fused RHT
    assert [nc.decisions.GemmDecision(**r) for r in records] == list(nc.explain())
    summary = (dump / "summary.txt").read_text()
    assert "GEMM FLOPs in nvfp4" in summary and "activations saved for wgrad" in summary
    return records


def test_dump_dir_option_writes_graphs_and_decisions(tmp_path):
    torch.manual_seed(0)
    torch.compile(MLP(), backend="nvfp4", options={"dump_dir": str(tmp_path / "d")})(torch.randn(32, 64)).sum().backward()
    records = check_dump(tmp_path / "d")
    assert len(records) == 8
    totals = nc.explain().totals()
    # 32 tokens x (64 + 128) input features saved as FP4 for the two NVFP4 wgrads.
    assert totals["saved_activation_bytes"]["bf16_if_unquantized"] == 2 * 32 * (64 + 128)
    assert totals["saved_activation_bytes"]["fp4_codes_and_scales"] == 32 * (64 + 128) * 9 // 16


def test_dump_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NVFP4_COMPILE_DUMP_DIR", str(tmp_path / "env"))
    torch.manual_seed(0)
    torch.compile(MLP(), backend="nvfp4")(torch.randn(32, 64)).sum().backward()
    check_dump(tmp_path / "env")


def test_dumps_go_to_structured_trace(monkeypatch):
    seen = []
    monkeypatch.setattr(dumps, "trace_structured",
                        lambda kind, metadata_fn, payload_fn: seen.append((metadata_fn()["name"], payload_fn())))
    dumps.emit(None, 7, "before code", "after code", [])
    assert [name for name, _ in seen] == ["nvfp4_graph_7_before", "nvfp4_graph_7_after", "nvfp4_graph_7_gemms"]
    assert seen[0][1] == "before code"


def test_plan_prints_the_table_and_exits_zero(factories, capsys, tmp_path):
    out_json = tmp_path / "plan.json"
    code = cli.main(["plan", f"{factories}:gpt", "--shape", "2,16", "--policy", str(ROOT / "policies/paper_12b.toml"),
                     "--json", str(out_json)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "lm_head" in printed and "nvfp4" in printed and "Totals" in printed
    report = json.loads(out_json.read_text())
    kept = {g["module"] for g in report["gemms"] if g["role"] == "fprop" and g["precision"] != "nvfp4"}
    assert kept == {"lm_head"} | {f"h.{i}.{n}" for i in (0, 3) for n in ("qkv", "proj", "fc1", "fc2")}


def test_plan_with_options(factories, capsys):
    code = cli.main(["plan", f"{factories}:mlp", "--shape", "16,64", "--dtype", "float32",
                     "--option", 'bf16_modules=["layers.0"]', "--option", "bf16_last_blocks_fraction=0"])
    assert code == 0
    assert {d.module for d in nc.explain() if d.precision != "nvfp4"} == {"layers.0"}


def test_plan_bad_policy_exits_two_with_the_message(factories, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent("""
        [recipe]
        format = "fp8"
    """))
    assert cli.main(["plan", f"{factories}:mlp", "--shape", "16,64", "--dtype", "float32", "--policy", str(bad)]) == 2
    assert f"{bad}:3" in capsys.readouterr().err.replace("\n", "")


def test_plan_impossible_policy_exits_two(factories, tmp_path, capsys):
    bad = tmp_path / "impossible.toml"
    bad.write_text('[high_precision]\nlast_blocks = 0\n[[override]]\nmodules = ["layers.0"]\nformat = "mxfp4"\n')
    code = cli.main(["plan", f"{factories}:odd", "--shape", "16,64", "--dtype", "float32", "--policy", str(bad)])
    assert code == 2
    assert "override[0].format" in capsys.readouterr().err.replace("\n", "")


def test_plan_is_a_console_command(factories):
    import shutil
    import subprocess

    import sys

    exe = shutil.which("nvfp4-compile") or shutil.which("nvfp4-compile", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the package is not installed (run from a source tree)")
    result = subprocess.run([exe, "plan", f"{factories}:mlp", "--shape", "16,64", "--dtype", "float32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layers.0" in result.stdout
