"""Shared benchmark helpers: timing with CUDA events (median), result tables and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def median_ms(fn, warmup=5, reps=20) -> float:
    """Median time of ``fn()`` in ms, by CUDA events (or a host clock on the CPU)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup * 10, rep=reps * 10, return_mode="median")


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
