"""Fuse the two 1x16 quantizations of one tensor into one ``nvfp4::quantize_pair``.

Contract: runs on a graph that ``quantize_gemms`` has rewritten. A linear layer quantizes
its input X along K for fprop and X^T (a ``permute(X, [1, 0])`` or ``t(X)``) along the tokens
for wgrad; in the backward it does the same with dY for dgrad and wgrad. Where one node ``x``
feeds both ``nvfp4::quantize(x, fmt, 1, r, "", False)`` and
``nvfp4::quantize(x^T, fmt, 1, r_t, "", rht_t)``, both are replaced by one
``nvfp4::quantize_pair(x, fmt, r, r_t, rht_t, "")`` whose six outputs are the two
quantizations, bit for bit (the op's reference is the two ``quantize`` calls). One op instead
of two: one dispatch, and one place for a kernel that reads ``x`` once. Quantizations with a
``check`` label (``check_finite``), 2D blocks or an RHT on the rowwise side stay as they are.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, Node

from nvfp4_compile import ops  # noqa: F401  (registers the nvfp4:: operators)

QUANTIZE = torch.ops.nvfp4.quantize.default
PAIR = torch.ops.nvfp4.quantize_pair.default


def _transposed_source(node: Node) -> Node | None:
    """``x`` when ``node`` is ``x^T`` of a 2-D ``x`` (``permute(x, [1, 0])`` or ``t(x)``)."""
    if node.op != "call_function":
        return None
    if node.target is torch.ops.aten.t.default:
        return node.args[0]
    if node.target is torch.ops.aten.permute.default and list(node.args[1]) == [1, 0]:
        return node.args[0]
    return None


def _quantize_args(node: Node) -> tuple | None:
    """(input, format, rounding, rht) of a plain 1x16 quantize without a check label."""
    if node.op != "call_function" or node.target is not QUANTIZE:
        return None
    x, fmt, block_rows, rounding, check, *rest = node.args
    if block_rows != 1 or check:
        return None
    return x, fmt, rounding, bool(rest[0]) if rest else False


def fuse_quantize_pairs(graph: Graph) -> int:
    """Rewrite ``graph`` in place; returns how many pairs were fused."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    rowwise: dict[tuple, Node] = {}
    columnwise: dict[tuple, Node] = {}
    for node in graph.nodes:
        args = _quantize_args(node)
        if args is None:
            continue
        x, fmt, rounding, rht = args
        source = _transposed_source(x)
        if source is not None:
            columnwise.setdefault((source, fmt), node)
        elif not rht:
            rowwise.setdefault((x, fmt), node)
    fused = 0
    for key, q_rows in rowwise.items():
        q_cols = columnwise.get(key)
        if q_cols is None:
            continue
        x, fmt = key
        _, _, rounding, _ = _quantize_args(q_rows)
        _, _, rounding_t, rht_t = _quantize_args(q_cols)
        first = min(q_rows, q_cols, key=order.__getitem__)
        with graph.inserting_before(first):
            pair = graph.call_function(PAIR, (x, fmt, rounding, rounding_t, rht_t, ""))
            pair.meta.update({k: v for k, v in q_rows.meta.items() if k != "val"})
            pair.meta["val"] = (*q_rows.meta["val"], *q_cols.meta["val"])
            outputs = []
            for i in range(6):
                item = graph.call_function(operator.getitem, (pair, i))
                item.meta["val"] = pair.meta["val"][i]
                outputs.append(item)
        for offset, old in ((0, q_rows), (3, q_cols)):
            for user in list(old.users):
                if user.op == "call_function" and user.target is operator.getitem:
                    user.replace_all_uses_with(outputs[offset + user.args[1]])
                    graph.erase_node(user)
            if not old.users:
                graph.erase_node(old)
        fused += 1
    return fused
