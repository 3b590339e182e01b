"""Graph dumps: the joint graph before and after the pass, and the GEMM decisions.

For each compiled graph, into ``dump_dir`` (option or ``NVFP4_COMPILE_DUMP_DIR``):
``graph_<N>_before.py`` and ``graph_<N>_after.py`` (readable FX code), and, over all graphs
dumped there, ``gemms.json`` (the ``explain()`` records) and ``summary.txt`` (per-GEMM table,
FLOPs by precision, activation bytes saved for wgrad, FP4 against BF16). The same artifacts
go to ``torch._logging.trace_structured``, so ``TORCH_TRACE`` + tlparse show them.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch._logging import trace_structured

from .decisions import Explanation, GemmDecision


def _artifact(name: str, payload: str, encoding: str = "string") -> None:
    trace_structured("artifact", metadata_fn=lambda: {"name": name, "encoding": encoding},
                     payload_fn=lambda: payload)


def emit(dump_dir: str | None, graph_id: int, before: str, after: str, records: list[GemmDecision]) -> None:
    _artifact(f"nvfp4_graph_{graph_id}_before", before)
    _artifact(f"nvfp4_graph_{graph_id}_after", after)
    _artifact(f"nvfp4_graph_{graph_id}_gemms", json.dumps([r.to_dict() for r in records]), "json")
    if dump_dir is None:
        return
    root = Path(dump_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"graph_{graph_id}_before.py").write_text(before)
    (root / f"graph_{graph_id}_after.py").write_text(after)
    append_records(dump_dir, records)


def append_records(dump_dir: str, records: list[GemmDecision]) -> None:
    """Add records to ``gemms.json`` and rewrite ``summary.txt`` (also used on cache hits)."""
    root = Path(dump_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "gemms.json"
    existing = json.loads(path.read_text()) if path.exists() else []
    existing += [r.to_dict() for r in records]
    path.write_text(json.dumps(existing, indent=1))
    (root / "summary.txt").write_text(Explanation(GemmDecision(**d) for d in existing).summary())
