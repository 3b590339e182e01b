"""Shared benchmark helpers: timing with CUDA events (median), a language-model training step,
result tables and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table


def median_ms(fn, warmup=5, reps=20) -> float:
    """Median time of ``fn()`` in ms, by CUDA events (or a host clock on the CPU)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup * 10, rep=reps * 10, return_mode="median")


def graph_median_ms(fn, reps=20) -> float:
    """Median time of ``fn()`` in ms, replayed from a CUDA graph (no host time in it)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=reps * 10, return_mode="median")


def lm_training_step(compiled, optimizer, tokens: torch.Tensor, after=None):
    """A closure running one next-token step on ``tokens [batch, seq + 1]``: forward, FP32
    cross-entropy, backward, optimizer step (then ``after()``, if given); it returns the loss."""
    def step():
        logits = compiled(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after is not None:
            after()
        return loss
    return step


def warm_up(step, device, steps: int = 2, reset_peak: bool = True) -> None:
    """Compile and warm up ``step``; on CUDA, then drain the queue and (unless told not to) reset
    the peak memory. Under CUDA graphs the graphs' memory pool is allocated during the warm-up
    and replays allocate nothing, so a reset there would hide it: pass ``reset_peak=False``."""
    for _ in range(steps):
        step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()


def out_dir() -> Path:
    path = Path(os.environ.get("OUT", "bench/out"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def report(title: str, columns: list[str], rows: list[list], name: str, meta: dict) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console = Console(width=140)
    console.print(table)
    meta = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, **meta}
    (out_dir() / f"{name}.json").write_text(json.dumps({"meta": meta, "columns": columns, "rows": rows}, indent=1))
