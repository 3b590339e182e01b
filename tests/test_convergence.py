"""The convergence study and ``nvfp4-compile demo``: the pieces, not the science.

The training tests share one model configuration and batch shape (the ``tiny`` size), so
after the first compilation the others hit Inductor's graph cache.
"""

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console

import nvfp4_compile as nc
from nvfp4_compile import cli, demo
from nvfp4_compile.gpt import GPT

ROOT = Path(__file__).resolve().parents[1]
TINY = demo.SIZES["tiny"]


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_stdlib(root: Path) -> set[str]:
    """Forty modules, and files the corpus must skip; returns the modules' relative paths."""
    kept = set()
    for i in range(40):
        rel = f"pkg{i % 3}/mod_{i}.py" if i % 2 else f"mod_{i}.py"
        _write(root, rel, f"# module {i}\nx = {i}\n" * (i + 1))
        kept.add(rel)
    _write(root, "site-packages/thirdparty.py", "skipped = True\n")
    _write(root, "test/test_mod.py", "skipped = True\n")
    _write(root, "pkg1/tests/test_x.py", "skipped = True\n")
    _write(root, "notes.txt", "not python\n")
    return kept


def test_corpus_split_is_deterministic_disjoint_by_file_and_hashed(tmp_path):
    kept = _fake_stdlib(tmp_path)
    a = demo.load_corpus(tmp_path, val_fraction=0.25)
    b = demo.load_corpus(tmp_path, val_fraction=0.25)
    assert (a.train_files, a.val_files, a.sha256) == (b.train_files, b.val_files, b.sha256)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not set(a.train_files) & set(a.val_files)
    assert set(a.train_files) | set(a.val_files) == kept  # skipped dirs and non-.py files are out
    assert a.train_files == sorted(a.train_files) and a.val_files == sorted(a.val_files)
    for rel in kept:
        assert (rel in a.val_files) == demo.is_validation_file(rel, 0.25)
    # Each stream is exactly its files' bytes, joined by one separator byte.
    for files, stream in ((a.train_files, a.train), (a.val_files, a.val)):
        expected = demo.FILE_SEPARATOR.join((tmp_path / f).read_bytes() for f in files)
        assert bytes(stream.tolist()) == expected
    described = a.describe()
    assert described["sha256"] == a.sha256 and len(a.sha256) == 64
    assert described["train_files"] == a.train_files and described["val_files"] == a.val_files

    (tmp_path / sorted(kept)[0]).write_text("changed\n")
    assert demo.load_corpus(tmp_path, val_fraction=0.25).sha256 != a.sha256


def test_stdlib_corpus_is_deterministic():
    a, b = demo.load_corpus(), demo.load_corpus()
    assert a.root == str(demo.stdlib_root())
    assert a.sha256 == b.sha256 and a.train_files == b.train_files and a.val_files == b.val_files
    assert len(a.val_files) > 0 and len(a.train_files) > 10 * len(a.val_files)
    assert not any(set(Path(f).parts) & demo.SKIPPED_DIRS for f in a.train_files + a.val_files)
    assert all(f.endswith(".py") for f in a.train_files)


def test_batches_are_the_same_for_every_run_and_come_from_the_streams(tmp_path):
    _fake_stdlib(tmp_path)
    corpus = demo.load_corpus(tmp_path, val_fraction=0.25)
    size = demo.SIZES["tiny"]
    size = replace(size, model=replace(size.model, seq_len=16), batch=2, eval_batches=2)
    one, two = demo.Batches(corpus, size, 5, seed=3), demo.Batches(corpus, size, 5, seed=3)
    for step in range(5):
        x1, y1 = one.train(step, "cpu")
        x2, _ = two.train(step, "cpu")
        assert torch.equal(x1, x2) and x1.shape == (2, 16)
        assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one byte
        start = int(one.offsets[step, 0])
        assert x1[0].tolist() == corpus.train[start:start + 16].tolist()
    assert not torch.equal(demo.Batches(corpus, size, 5, seed=4).offsets, one.offsets)
    val = list(one.val("cpu"))
    assert len(val) == 2 and all(x.shape == (2, 16) for x, _ in val)


def test_wsd_schedule_warms_up_holds_and_decays_to_the_end_value():
    total, peak, warmup = 100, 1e-3, 10
    lrs = [demo.wsd_lr(s, total, peak, warmup, final=1e-5) for s in range(total + 1)]
    start = demo.decay_start_step(total)
    assert start == 80
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))  # warmup rises
    assert lrs[0] > 0 and lrs[warmup - 1] == pytest.approx(peak)
    assert all(lr == peak for lr in lrs[warmup:start + 1])  # stable
    assert all(a > b for a, b in zip(lrs[start:], lrs[start + 1:]))  # decay falls...
    assert lrs[total] == pytest.approx(1e-5)  # ...to the end value
    assert lrs[total - 1] < 0.1 * peak
    assert demo.eval_steps(total, 30) == [30, 60, 80, 90, 100]


def test_model_has_named_blocks_and_explain_shows_fp4_gemms_and_the_high_precision_tail():
    torch.manual_seed(0)
    model = GPT(TINY.model)
    depth = TINY.model.depth
    names = {n for n, _ in model.named_modules()}
    assert {f"blocks.{i}" for i in range(depth)} <= names and "lm_head" in names
    assert all(p.shape[0] % 32 == 0 and p.shape[1] % 32 == 0
               for n, p in model.named_parameters() if n.startswith("blocks") and p.dim() == 2)

    x = torch.randint(0, 256, (TINY.batch, TINY.model.seq_len + 1))
    compiled = torch.compile(model, backend="nvfp4")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study runs it: the later tests then hit this compilation in the cache
    try:
        loss = compiled(x[:, :-1], x[:, 1:])
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in model.parameters())

    records = nc.explain()
    tail = math.ceil(0.15 * depth)
    linear = [d for d in records if d.role in ("fprop", "dgrad", "wgrad")]
    per_block = 5  # attn.qkv, attn.proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj
    assert len(linear) == 3 * (per_block * depth + 1)
    for d in linear:
        block = int(d.module.split(".")[1]) if d.module.startswith("blocks.") else None
        if d.module == "lm_head":
            assert d.precision != "nvfp4" and d.reason == "output head"
        elif block >= depth - tail:
            assert d.precision != "nvfp4" and f"last {tail} of {depth} blocks" in d.reason, d
        else:
            assert d.precision == "nvfp4" and d.reason.startswith("recipe"), d
    summary = demo.gemm_summary(records)
    assert summary["fp4_gemms"] == 3 * per_block * (depth - tail)
    assert summary["linear_gemms"] - summary["fp4_gemms"] == 3 * (per_block * tail + 1)
    assert 0 < summary["fp4_flop_share"] < 1
    assert summary["high_precision_modules"][0] == f"blocks.{depth - 1}.attn.proj"


def _check_results(out: Path, runs, steps):
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"meta", "corpus", "runs"}
    assert list(results["runs"]) == list(runs)
    meta = results["meta"]
    assert meta["steps"] == steps and meta["baseline"] == "baseline" and meta["size"] == "tiny"
    assert results["corpus"]["sha256"] == demo.load_corpus().sha256
    for name, run in results["runs"].items():
        keys = {"final_val_loss", "rel_gap_final", "tokens_per_s", "peak_memory_gib", "gemms", "val_loss",
                "train_loss", "compile_and_first_step_s", "backend", "options"}
        assert keys <= set(run), name
        assert [s for s, _ in run["val_loss"]] == meta["eval_steps"]
        assert all(math.isfinite(v) for _, v in run["val_loss"] + run["train_loss"])
        assert len(run["train_loss"]) == steps
        assert math.isfinite(run["final_val_loss"]) and run["final_val_loss"] == run["val_loss"][-1][1]
        assert run["tokens_per_s"] > 0
    base = results["runs"]["baseline"]
    assert base["backend"] == "inductor" and base["gemms"] is None and base["rel_gap_final"] == 0
    quantized = results["runs"]["nvfp4"]
    assert quantized["backend"] == "nvfp4" and quantized["gemms"]["fp4_gemms"] > 0
    gap = (quantized["final_val_loss"] - base["final_val_loss"]) / base["final_val_loss"]
    assert quantized["rel_gap_final"] == pytest.approx(gap)
    png = (out / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (out / "summary.txt").read_text()
    assert all(name in text for name in runs)
    return results


def test_tiny_study_of_two_runs_writes_the_json_plot_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    steps = 3
    demo.run_study(["baseline", "nvfp4"], size_name="tiny", steps=steps, device="cpu", out=tmp_path,
                   threads=1, console=Console(width=160, record=True))
    results = _check_results(tmp_path, ["baseline", "nvfp4"], steps)
    assert results["meta"]["dtype"] == "fp32" and results["meta"]["threads"] == 1


def test_convergence_script_rejects_an_unknown_run(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench import convergence

    with pytest.raises(ValueError, match="unknown run"):
        convergence.main(["--runs", "baseline,nvfp5", "--out", str(tmp_path)])


def test_demo_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--out", "--steps", "--device", "--size"):
        assert flag in usage


def test_demo_trains_both_runs_and_writes_table_plot_and_dump(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "nvfp4" in printed and "tokens/s" in printed
    _check_results(out, ["baseline", "nvfp4"], 3)
    gemms = json.loads((out / "nvfp4_dump" / "gemms.json").read_text())
    assert any(g["precision"] == "nvfp4" for g in gemms)
    assert (out / "nvfp4_dump" / "summary.txt").exists()
