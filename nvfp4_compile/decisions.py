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
    flops: int | None = None  # 2*M*N*K (batched: times the batch), None if a size has no hint
    saved_activation_elements: int = 0  # wgrad: elements of X^T that the forward saves for it

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

    def totals(self) -> dict:
        """FLOPs by precision and the bytes of activations saved for wgrad, FP4 vs BF16."""
        flops: dict[str, int] = {}
        saved_quantized = saved_bf16_equivalent = saved_high = 0
        for d in self:
            if d.flops is not None:
                flops[d.precision] = flops.get(d.precision, 0) + d.flops
            n = d.saved_activation_elements
            if d.precision in ("nvfp4", "mxfp4"):
                block = 16 if d.precision == "nvfp4" else 32
                saved_quantized += n // 2 + n // block  # codes + one scale byte per block
                saved_bf16_equivalent += 2 * n
            else:
                saved_high += _BYTES.get(d.precision, 2) * n
        return {"flops": flops, "saved_activation_bytes": {
            "fp4_codes_and_scales": saved_quantized, "bf16_if_unquantized": saved_bf16_equivalent,
            "high_precision_layers": saved_high}}

    def summary(self) -> str:
        """The table and the totals, as plain text."""
        return str(self) + self.totals_text()

    def totals_text(self) -> str:
        totals = self.totals()
        all_flops = sum(totals["flops"].values()) or 1
        lines = ["Totals"]
        for precision, f in sorted(totals["flops"].items()):
            lines.append(f"  GEMM FLOPs in {precision}: {f:,} ({100 * f / all_flops:.1f}%)")
        saved = totals["saved_activation_bytes"]
        lines.append(f"  activations saved for wgrad: {saved['fp4_codes_and_scales']:,} bytes as FP4 codes+scales "
                     f"(BF16 would be {saved['bf16_if_unquantized']:,}); "
                     f"{saved['high_precision_layers']:,} bytes for high-precision layers")
        return "\n".join(lines) + "\n"

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        console = Console(width=160, file=io.StringIO())
        console.print(self.table())
        return console.file.getvalue()


_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
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
