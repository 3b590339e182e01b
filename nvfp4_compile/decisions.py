"""What the pass decided for each GEMM, and ``explain()``, which shows it."""

from __future__ import annotations

import io
import threading
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class GemmDecision:
    """One matmul of one compiled graph.

    ``role`` is fprop, dgrad, wgrad, batched or other; ``a_operand``/``b_operand`` say what
    each operand is (activation, weight or gradient); ``a``/``b`` describe their treatment
    ("1x16 RNE", "RHT 1x16 SR", "16x16 RNE", or the high-precision dtype); ``precision`` is
    the format the GEMM runs in; ``reason`` says why.
    """

    graph: int
    module: str
    role: str
    a: str
    b: str
    precision: str
    reason: str
    shape: str  # "MxNxK": C[M, N] = A[M, K] @ B[K, N]
    a_operand: str = "activation"
    b_operand: str = "activation"

    def to_dict(self) -> dict:
        return asdict(self)


class Explanation(list):
    """A list of :class:`GemmDecision` that prints as a table."""

    def table(self) -> Table:
        table = Table(title=f"nvfp4: {len(self)} GEMMs")
        for column in ("graph", "module", "role", "A", "B", "precision", "reason", "M x N x K"):
            table.add_column(column)
        for d in self:
            table.add_row(str(d.graph), d.module, d.role, f"{d.a_operand}: {d.a}", f"{d.b_operand}: {d.b}",
                          d.precision, d.reason, d.shape)
        return table

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        console = Console(width=160, file=io.StringIO())
        console.print(self.table())
        return console.file.getvalue()


_lock = threading.Lock()
_records: list[GemmDecision] = []
_graph_count = 0


def new_graph_id() -> int:
    global _graph_count
    with _lock:
        _graph_count += 1
        return _graph_count


def record(decisions: list[GemmDecision]) -> None:
    with _lock:
        _records.extend(decisions)


def explain() -> Explanation:
    """The decisions for every GEMM of every graph compiled so far in this process."""
    with _lock:
        return Explanation(_records)


def reset() -> None:
    """Forget the recorded decisions (graph numbering continues)."""
    with _lock:
        _records.clear()
