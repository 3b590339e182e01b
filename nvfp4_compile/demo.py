"""Train a small GPT in high precision and in NVFP4 and compare them: ``nvfp4-compile demo``.

This module holds the whole training study, shared by the ``demo`` subcommand (two runs:
the baseline and the paper's recipe) and ``bench/convergence.py`` (the recipe's ablations
too):

- the corpus: the CPython standard library's ``*.py`` sources on this machine, byte-level
  tokens, split into train and validation by file (a hash of the relative path), with the
  file list and a SHA-256 recorded;
- a warmup-stable-decay learning rate (linear warmup, constant, linear decay over the last
  20% of the steps), AdamW;
- the runs: the same initialization, data order and schedule; only the backend and its
  options differ;
- the report: validation loss at regular steps, relative gap to the baseline, tokens/s,
  peak memory, and the GEMMs each run put in FP4 or kept in high precision (from
  :func:`nvfp4_compile.explain`); a rich table, a JSON file and a loss-curve PNG
  (matplotlib, optional).

The validation loss is computed by the training graph's forward pass (no backward), so no
second graph is compiled: that forward quantizes deterministically (round-to-nearest; SR
only touches gradients) and equals an inference graph's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import logging
import math
import platform
import sys
import sysconfig
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import decisions
from .gpt import GPT, GPTConfig, parameter_count

log = logging.getLogger(__name__)

# -- configurations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """A model and its training budget."""

    model: GPTConfig
    batch: int
    steps: int
    lr: float
    warmup: int
    eval_every: int
    eval_batches: int
    note: str = ""

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.model.seq_len


SIZES = {
    # A few minutes on a 2-core CPU for two runs, compilation included.
    "tiny": Size(GPTConfig(dim=64, depth=4, heads=4, hidden=192, seq_len=64), batch=8, steps=100, lr=3e-3,
                 warmup=10, eval_every=10, eval_batches=4, note="CPU: demo and CI"),
    # ~32M parameters; the seven runs of bench/convergence.py within 8 minutes on one H100, compilation
    # included, at the current kernel speed (an NVFP4 step is ~8x a BF16 one, MXFP4 runs the reference).
    "small": Size(GPTConfig(dim=512, depth=10, heads=8, hidden=1376, seq_len=512), batch=32, steps=80, lr=1e-3,
                  warmup=8, eval_every=16, eval_batches=4, note="one GPU"),
    # ~127M parameters: a longer study (hours of GPU time for all runs at the current kernel speed).
    "medium": Size(GPTConfig(dim=768, depth=18, heads=12, hidden=2048, seq_len=1024), batch=32, steps=4000,
                   lr=6e-4, warmup=200, eval_every=200, eval_batches=16, note="one GPU, long"),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a backend and its options."""

    backend: str
    options: dict = field(default_factory=dict)
    description: str = ""


BASELINE = "baseline"
RUNS = {
    BASELINE: RunSpec("inductor", {}, "default Inductor backend, high precision throughout"),
    "nvfp4": RunSpec("nvfp4", {}, "the paper's recipe: 2D weights, RHT on wgrad, SR on gradients, BF16 tail"),
    "no_sr": RunSpec("nvfp4", {"recipe": {"stochastic_rounding": False}}, "recipe without stochastic rounding"),
    "no_rht": RunSpec("nvfp4", {"recipe": {"rht": False}}, "recipe without the RHT on wgrad inputs"),
    "weight_1d": RunSpec("nvfp4", {"recipe": {"weight_2d": False}}, "recipe with 1x16 weight scaling, not 16x16"),
    "no_bf16_tail": RunSpec("nvfp4", {"bf16_last_blocks_fraction": 0},
                            "recipe with every block quantized (no high-precision last blocks)"),
    "mxfp4": RunSpec("nvfp4", {"recipe": {"format": "mxfp4"}}, "the recipe in MXFP4 (32-element blocks, E8M0 scales)"),
    "baseline_repeat": RunSpec("inductor", {}, "the baseline again: its gap is the run-to-run noise "
                               "(nondeterministic GPU kernels), the scale against which the other gaps are read"),
}
DEMO_RUNS = (BASELINE, "nvfp4")

# -- corpus --------------------------------------------------------------------------------

SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
FILE_SEPARATOR = b"\0"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_validation_file(relative_path: str, val_fraction: float) -> bool:
    """The split: a file is validation when the first 4 bytes of SHA-256(path) fall below the fraction."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:4], "big") < val_fraction * 2**32


@dataclass
class Corpus:
    """Byte streams of the train and validation files (files joined by a NUL byte)."""

    root: str
    train_files: list[str]
    val_files: list[str]
    sha256: str
    train: torch.Tensor  # uint8
    val: torch.Tensor

    def describe(self) -> dict:
        return {"root": self.root, "sha256": self.sha256, "python": platform.python_version(),
                "skipped_dirs": sorted(SKIPPED_DIRS), "separator": "one NUL byte between files",
                "train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel()),
                "train_files": self.train_files, "val_files": self.val_files}


def load_corpus(root: str | Path | None = None, val_fraction: float = 0.05) -> Corpus:
    """Every ``*.py`` under ``root`` (default: the standard library), sorted by relative path,
    skipping the directories in :data:`SKIPPED_DIRS`.

    The SHA-256 covers each file's relative path, its split and its content, in order.
    """
    root = Path(root) if root is not None else stdlib_root()
    paths = sorted((p for p in root.rglob("*.py") if p.is_file()
                    and not set(p.relative_to(root).parts[:-1]) & SKIPPED_DIRS),
                   key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise FileNotFoundError(f"no *.py files under {root}")
    digest = hashlib.sha256()
    parts = {"train": [], "val": []}
    names = {"train": [], "val": []}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        split = "val" if is_validation_file(rel, val_fraction) else "train"
        data = path.read_bytes()
        for chunk in (rel.encode(), b"\0", split.encode(), b"\0", str(len(data)).encode(), b"\0", data):
            digest.update(chunk)
        parts[split].append(data)
        names[split].append(rel)
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"{root}: {len(paths)} files give an empty split; use more files or another val_fraction")

    def stream(chunks):
        return torch.frombuffer(bytearray(FILE_SEPARATOR.join(chunks)), dtype=torch.uint8)

    return Corpus(str(root), names["train"], names["val"], digest.hexdigest(), stream(parts["train"]),
                  stream(parts["val"]))


class Batches:
    """The training windows of every step, drawn up front from a seeded generator (the same for
    every run), and fixed validation windows spread evenly over the validation stream."""

    def __init__(self, corpus: Corpus, size: Size, steps: int, seed: int):
        seq = size.model.seq_len
        if corpus.train.numel() <= seq + 1 or corpus.val.numel() <= seq + 1:
            raise ValueError(f"corpus too small for windows of {seq + 1} bytes")
        g = torch.Generator().manual_seed(seed)
        self.corpus, self.seq, self.batch = corpus, seq, size.batch
        self.offsets = torch.randint(0, corpus.train.numel() - seq - 1, (steps, size.batch), generator=g)
        n_val = size.eval_batches * size.batch
        self.val_offsets = torch.linspace(0, corpus.val.numel() - seq - 2, n_val).long().view(size.eval_batches,
                                                                                            size.batch)

    def _windows(self, stream: torch.Tensor, offsets: torch.Tensor, device):
        idx = offsets[:, None] + torch.arange(self.seq + 1)
        w = stream[idx].long().to(device, non_blocking=True)
        return w[:, :-1], w[:, 1:]

    def train(self, step: int, device):
        return self._windows(self.corpus.train, self.offsets[step], device)

    def val(self, device):
        for offsets in self.val_offsets:
            yield self._windows(self.corpus.val, offsets, device)


# -- schedule ------------------------------------------------------------------------------


def wsd_lr(step: float, total: int, peak: float, warmup: int, decay_fraction: float = 0.2,
           final: float = 0.0) -> float:
    """Warmup-stable-decay: linear from ``peak/warmup`` to ``peak`` over the first ``warmup``
    updates, constant, then linear down to ``final``, reached at ``step == total``, over the
    last ``decay_fraction`` of the steps. Update ``s`` (0-based) uses ``wsd_lr(s, ...)``."""
    decay_start = decay_start_step(total, decay_fraction)
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return peak + (final - peak) * progress


def decay_start_step(total: int, decay_fraction: float = 0.2) -> int:
    return total - int(round(decay_fraction * total))


def eval_steps(total: int, every: int, decay_fraction: float = 0.2) -> list[int]:
    """Steps after which validation runs (counted in completed updates): every ``every``, at
    the start of the decay and at the end."""
    steps = set(range(every, total + 1, every)) | {decay_start_step(total, decay_fraction), total}
    return sorted(s for s in steps if 0 < s <= total)


# -- one run -------------------------------------------------------------------------------


def gemm_summary(records) -> dict:
    """Linear-layer GEMMs (fprop, dgrad, wgrad) by precision, batched matmuls, and FLOP shares."""
    linear = [d for d in records if d.role in ("fprop", "dgrad", "wgrad")]
    by_precision: dict[str, int] = {}
    for d in linear:
        by_precision[d.precision] = by_precision.get(d.precision, 0) + 1
    totals = decisions.Explanation(records).totals()
    flops = totals["flops"]
    all_flops = sum(flops.values())
    fp4 = sum(f for p, f in flops.items() if p in ("nvfp4", "mxfp4"))
    return {"linear_gemms": len(linear), "by_precision": by_precision,
            "fp4_gemms": sum(n for p, n in by_precision.items() if p in ("nvfp4", "mxfp4")),
            "batched": sum(d.role == "batched" for d in records),
            "flops_by_precision": flops, "fp4_flop_share": fp4 / all_flops if all_flops else 0.0,
            "high_precision_modules": sorted({d.module for d in linear if d.precision not in ("nvfp4", "mxfp4")})}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def train_run(name: str, spec: RunSpec, size: Size, batches: Batches, *, steps: int, device: torch.device,
              dtype: torch.dtype, seed: int, progress: Progress | None = None, dump_dir: str | None = None) -> dict:
    """Train one run from the seeded initialization; returns its curves and measurements."""
    torch._dynamo.reset()
    decisions.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(seed)
    model = GPT(size.model).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=size.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    options = dict(spec.options)
    if dump_dir is not None and spec.backend == "nvfp4":
        options["dump_dir"] = str(dump_dir)
    compiled = torch.compile(model, backend=spec.backend, options=options or None)
    amp = dtype != torch.float32
    torch.manual_seed(seed + 1)  # stochastic rounding draws from here on, the same start for every run

    def forward(x, y):
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            return compiled(x, y)

    evals = eval_steps(steps, size.eval_every)
    task = progress.add_task(f"{name}: compiling", total=steps, loss="") if progress is not None else None
    train_curve: list[list] = []
    val_curve: list[list] = []
    pending: list[tuple[int, torch.Tensor]] = []
    gemms = None
    eval_s = 0.0
    start = time.perf_counter()
    timed_from = None
    diverged_at = None

    for step in range(steps):
        lr = wsd_lr(step, steps, size.lr, size.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batches.train(step, device)
        loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        pending.append((step + 1, loss.detach()))
        if step == 0:
            _sync(device)
            gemms = gemm_summary(decisions.explain()) if spec.backend == "nvfp4" else None
            compile_s = time.perf_counter() - start
            timed_from = time.perf_counter()
            if progress is not None:
                progress.update(task, description=name)
        done = step + 1
        if done in evals:
            _sync(device)  # the queued training steps count as training time
            t0 = time.perf_counter()
            values = torch.stack([v for _, v in pending]).float().tolist()
            train_curve += [[s, v] for (s, _), v in zip(pending, values)]
            pending.clear()
            total = torch.zeros((), device=device)
            for vx, vy in batches.val(device):
                total += forward(vx, vy).detach().float()
            val = (total / size.eval_batches).item()
            val_curve.append([done, val])
            eval_s += time.perf_counter() - t0
            if progress is not None:
                progress.update(task, loss=f"val {val:.4f}")
            if not _finite(val):
                diverged_at = done
                log.warning("%s: validation loss %s at step %d; stopping this run", name, val, done)
                if progress is not None:
                    progress.update(task, completed=done, description=f"{name} (diverged)")
                break
        if progress is not None:
            progress.update(task, advance=1)
    _sync(device)
    if pending:
        values = torch.stack([v for _, v in pending]).float().tolist()
        train_curve += [[s, v] for (s, _), v in zip(pending, values)]
    elapsed = time.perf_counter() - timed_from - eval_s
    timed_steps = (val_curve[-1][0] if diverged_at else steps) - 1
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "backend": spec.backend, "options": spec.options, "description": spec.description,
        "final_val_loss": val_curve[-1][1] if val_curve and diverged_at is None else None,
        "diverged_at": diverged_at,
        "tokens_per_s": timed_steps * size.tokens_per_step / elapsed if timed_steps > 0 and elapsed > 0 else None,
        "compile_and_first_step_s": compile_s, "train_s": elapsed, "eval_s": eval_s,
        "peak_memory_gib": peak, "gemms": gemms, "train_loss": train_curve, "val_loss": val_curve,
    }
    torch._dynamo.reset()
    return result


# -- the study -----------------------------------------------------------------------------


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"CPU ({name})"


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def default_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def run_study(run_names, *, size_name: str, steps: int | None = None, device: str | None = None,
              dtype: str | None = None, seed: int = 0, out: str | Path, threads: int | None = None,
              dump: bool = False, corpus_root: str | Path | None = None, console: Console | None = None,
              command: str | None = None) -> dict:
    """Train ``run_names`` (keys of :data:`RUNS`) one after another and write ``results.json``,
    ``loss_curves.png`` and ``summary.txt`` under ``out``. Returns the results."""
    console = console or Console()
    unknown = [r for r in run_names if r not in RUNS]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    size = SIZES[size_name]
    steps = steps or size.steps
    if steps < 2:
        raise ValueError("steps must be at least 2")
    size = replace(size, warmup=min(size.warmup, max(1, steps // 10)),
                   eval_every=min(size.eval_every, max(1, steps // 5)))
    dev = pick_device(device)
    dtype = dtype or default_dtype(dev)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        corpus = load_corpus(corpus_root)
        batches = Batches(corpus, size, steps, seed)
        meta = {
            "size": size_name, "model": size.model.to_dict(),
            "parameters": parameter_count(GPT(size.model)), "steps": steps, "batch": size.batch,
            "seq_len": size.model.seq_len, "tokens_per_step": size.tokens_per_step, "lr": size.lr,
            "schedule": {"kind": "warmup-stable-decay", "warmup": size.warmup, "decay_fraction": 0.2,
                         "decay_start": decay_start_step(steps), "final_lr": 0.0},
            "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1 on matrices), clip 1.0",
            "eval_every": size.eval_every, "eval_batches": size.eval_batches,
            "eval_steps": eval_steps(steps, size.eval_every), "seed": seed, "dtype": dtype,
            "device": str(dev), "device_name": device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(sys.argv), "baseline": BASELINE,
        }
        console.print(f"[bold]{size_name}[/bold]: {meta['parameters'] / 1e6:.2f}M parameters, {steps} steps of "
                      f"{size.tokens_per_step} tokens, {dtype} on {dev} ({meta['device_name']}); corpus "
                      f"{len(corpus.train_files)} train / {len(corpus.val_files)} validation files from "
                      f"{corpus.root} (sha256 {corpus.sha256[:12]})")
        runs = {}
        columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
        quantized = [name for name in run_names if RUNS[name].backend == "nvfp4"]
        with Progress(*columns, console=console) as progress:
            for name in run_names:
                dump_dir = None
                if dump and name in quantized:
                    dump_dir = out / ("nvfp4_dump" if len(quantized) == 1 else f"dump_{name}")
                runs[name] = train_run(name, RUNS[name], size, batches, steps=steps, device=dev,
                                       dtype=DTYPES[dtype], seed=seed, progress=progress, dump_dir=dump_dir)
        add_gaps(runs)
        results = {"meta": meta, "corpus": corpus.describe(), "runs": runs}
    finally:
        torch.set_num_threads(old_threads)
    write_results(results, out, console)
    return results


def _gap(value, base):
    return (value - base) / base if _finite(value) and _finite(base) and base else None


def add_gaps(runs: dict) -> None:
    """Relative gaps to the baseline: at the end, and at the last validation before the decay."""
    base = runs.get(BASELINE)
    for run in runs.values():
        run["rel_gap_final"] = _gap(run["final_val_loss"], base["final_val_loss"]) if base else None
        run["rel_gap_curve"] = ([[s, _gap(v, dict(base["val_loss"]).get(s))] for s, v in run["val_loss"]]
                                if base else [])


def _stable_phase_point(results: dict, run: dict):
    """The validation loss at the start of the decay, and its gap to the baseline."""
    step = results["meta"]["schedule"]["decay_start"]
    value = dict(run["val_loss"]).get(step)
    base = results["runs"].get(BASELINE)
    gap = _gap(value, dict(base["val_loss"]).get(step)) if base else None
    return value, gap


def _fmt(value, spec: str, missing: str = "-") -> str:
    return format(value, spec) if _finite(value) else missing


def _loss_cell(value, gap, name: str, missing: str = "-") -> str:
    if not _finite(value):
        return missing
    return f"{value:.4f}" if name == BASELINE or not _finite(gap) else f"{value:.4f} ({100 * gap:+.2f}%)"


def summary_table(results: dict) -> Table:
    meta = results["meta"]
    decay, steps = meta["schedule"]["decay_start"], meta["steps"]
    table = Table(title=f"{meta['size']} GPT, {steps} steps, {meta['dtype']} on {meta['device_name']}",
                  box=box.SIMPLE_HEAD, caption=(
                      f"Validation loss (nats/byte) at the decay start (step {decay}) and at the end; in brackets "
                      f"the gap relative to {BASELINE}. GEMMs: linear-layer fprop/dgrad/wgrad in FP4 / in high "
                      "precision; FP4 FLOPs: their share of the GEMM FLOPs. compile s: compilation and first "
                      "step. Peak memory on CUDA only."))
    columns = ("run", f"val @ {decay}", f"val @ {steps}", "tokens/s", "peak GiB", "GEMMs FP4/high",
               "FP4 FLOPs", "compile s")
    rows = []
    for name, run in results["runs"].items():
        stable, stable_gap = _stable_phase_point(results, run)
        g = run["gemms"]
        if g is not None:
            gemm_text = f"{g['fp4_gemms']}/{g['linear_gemms'] - g['fp4_gemms']}"
            share = f"{100 * g['fp4_flop_share']:.1f}%"
        else:
            gemm_text, share = "0/all", "0.0%"
        final = _loss_cell(run["final_val_loss"], run["rel_gap_final"], name,
                           f"diverged @ {run['diverged_at']}")
        rows.append((name, _loss_cell(stable, stable_gap, name), final, _fmt(run["tokens_per_s"], ",.0f"),
                     _fmt(run["peak_memory_gib"], ".2f", "n/a"), gemm_text, share,
                     _fmt(run["compile_and_first_step_s"], ".1f")))
    for i, column in enumerate(columns):
        width = max(len(r[i]) for r in rows) if rows else 0  # numbers are never cut or wrapped
        table.add_column(column, justify="left" if i == 0 else "right", min_width=width, no_wrap=i > 0)
    for row in rows:
        table.add_row(*row)
    return table


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_results(results: dict, out: Path, console: Console) -> None:
    table = summary_table(results)
    natural = Measurement.get(console, console.options.update(max_width=400), table).maximum
    width = console.width
    console.width = max(width, natural)  # wider than the terminal rather than cut
    try:
        console.print(table)
    finally:
        console.width = width
    text = Console(width=max(natural, 100), file=io.StringIO(), color_system=None)
    text.print(table)
    (out / "summary.txt").write_text(text.file.getvalue())
    (out / "results.json").write_text(json.dumps(_json_safe(results), indent=1))
    plotted = plot_curves(results, out / "loss_curves.png")
    console.print(f"wrote {out / 'results.json'}, {out / 'summary.txt'}"
                  + (f", {plotted}" if plotted else " (no plot: matplotlib is not installed; "
                     f"`python bench/convergence.py --plot {out / 'results.json'}` draws it where it is)"))


def plot_curves(results: dict, path: Path) -> Path | None:
    """Validation loss per run and its relative gap to the baseline, against the step."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s not written", path)
        return None
    meta = results["meta"]
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, run in results["runs"].items():
        steps_, values = zip(*run["val_loss"]) if run["val_loss"] else ((), ())
        style = {"color": "grey", "linestyle": "--"} if RUNS.get(name, RUNS[BASELINE]).backend == "inductor" \
            and name != BASELINE else {}
        (line,) = ax_loss.plot(steps_, values, marker="o", markersize=3, label=name, **style)
        if run["train_loss"]:
            ts, tv = zip(*run["train_loss"])
            ax_loss.plot(ts, _smooth(tv), color=line.get_color(), alpha=0.25, linewidth=1)
        gaps = [(s, 100 * g) for s, g in run.get("rel_gap_curve", []) if g is not None]
        if gaps and name != BASELINE:
            ax_gap.plot(*zip(*gaps), marker="o", markersize=3, label=name,
                        **{"color": line.get_color(), **style})
    for ax in (ax_loss, ax_gap):
        ax.axvline(meta["schedule"]["decay_start"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_gap.axhline(0, color="black", linewidth=0.8)
    ax_loss.set_ylabel("validation loss (nats/byte); faint: train loss, running mean")
    ax_gap.set_ylabel(f"validation loss gap to {BASELINE} (%)")
    ax_loss.legend()
    if ax_gap.lines[2:]:
        ax_gap.legend()
    fig.suptitle(f"{meta['size']} GPT ({meta['parameters'] / 1e6:.1f}M), {meta['steps']} steps, {meta['dtype']} on "
                 f"{meta['device_name']}; dotted: decay start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values, window: int | None = None):
    """Trailing mean over ``window`` points (default: a twentieth of the curve)."""
    window = window or max(1, len(values) // 20)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# -- the ``demo`` subcommand -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="nvfp4_demo", help="output directory (default: ./nvfp4_demo)")
    parser.add_argument("--size", choices=sorted(SIZES), help="default: tiny on a CPU, small on a GPU")
    parser.add_argument("--steps", type=int, help="training steps (default: the size's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="high-precision compute: bf16 autocast (default on GPU) or fp32 (default on CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the tiny model's tensors gain little from more, "
                             "and lose much when cores are shared)")
    parser.add_argument("--seed", type=int, default=0)


def main_from_args(args) -> int:
    device = pick_device(args.device)
    size = args.size or ("small" if device.type == "cuda" else "tiny")
    console = Console()
    console.print(f"nvfp4-compile demo: {size} GPT, the default Inductor backend in high precision "
                  "(baseline) against backend=\"nvfp4\" (the paper's recipe), same data, seed and schedule")
    run_study(DEMO_RUNS, size_name=size, steps=args.steps, device=str(device), dtype=args.dtype, seed=args.seed,
              out=args.out, threads=args.threads, dump=True, console=console,
              command="nvfp4-compile demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None)
    console.print(f"graph dumps and per-GEMM decisions of the NVFP4 run: {Path(args.out) / 'nvfp4_dump'}")
    return 0
