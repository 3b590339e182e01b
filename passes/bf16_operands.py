"""Hand the emulated GEMMs BF16 operands straight from the quantize kernels (Hopper emulation).

Contract: runs on a graph that ``quantize_gemms`` and ``pair_quantize`` have rewritten, where the
GEMMs run emulated (a CUDA device without FP4 tensor cores). Every ``nvfp4::gemm`` becomes
``nvfp4::gemm_values``, whose operands are BF16 tensors of ``q * s_dec_b`` (exact), and each
operand is made one of two ways:

- by the quantizer itself (``quantize`` -> ``quantize_values``, a half of ``quantize_pair`` ->
  that half of ``quantize_pair_values``) when its codes and scales feed this GEMM alone and both
  run in the same pass (forward or backward). X for fprop, dY for dgrad and dY^T for wgrad: the
  codes never reach memory and no dequantize pass runs;
- by ``nvfp4::dequantize`` otherwise: codes the forward saves for the backward (X^T for wgrad,
  the 2D weight), or shared by two GEMMs. FP4 stays what crosses from forward to backward.

A ``quantize`` whose codes another node reads as well (the 2D weight: fprop takes it now, dgrad
later) becomes ``nvfp4::quantize_with_values``: the values for this GEMM and the codes for the
others from one pass. Dgrad's weight, ``nvfp4::transpose_2d`` of those codes, is instead the
dequantized codes as saved, ``[N, K]``, handed over as the transposed view ``[K, N]`` (a 2D
tile reads the same both ways, so the values are the same; cuBLASLt reads the view in place):
no transpose pass, and the same bytes saved.

Numerics are unchanged bit for bit: every new op's reference is the code-based ops composed
(``nvfp4_compile.ops``), and the GEMM multiplies the same exact values with the same alpha.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, Node
from torch.utils._pytree import tree_map

from nvfp4_compile import ops  # noqa: F401  (registers the nvfp4:: operators)

GEMM = torch.ops.nvfp4.gemm.default
QUANTIZE = torch.ops.nvfp4.quantize.default
PAIR = torch.ops.nvfp4.quantize_pair.default
TRANSPOSE_2D = torch.ops.nvfp4.transpose_2d.default


def _backward_nodes(graph: Graph) -> set[Node]:
    """Nodes that depend on a tangent: the backward's side of a joint graph."""
    backward: set[Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name.startswith("tangents"):
                backward.add(node)
        elif any(arg in backward for arg in node.all_input_nodes):
            backward.add(node)
    return backward


class _Rewriter:
    def __init__(self, graph: Graph):
        self.graph = graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        self.fake_mode = torch._guards.detect_fake_mode([n.meta.get("val") for n in placeholders])
        self.backward = _backward_nodes(graph)
        self.values_of: dict[tuple[Node, int], tuple[Node, Node]] = {}  # (quantizer, half) -> (values, scale)
        self.pair_halves: dict[Node, set[int]] = {}  # quantize_pair -> halves (0 rows, 1 columns) to make values
        self.keep_codes: set[Node] = set()  # quantize nodes whose codes other nodes read too
        self.moved: dict[Node, Node] = {}  # an old quantizer's getitem -> the new one's
        self.transposes: list[Node] = []  # transpose_2d nodes whose readers now dequantize the codes

    def emit(self, like: Node, target, args) -> Node:
        node = self.graph.call_function(target, args)
        node.meta.update({k: v for k, v in like.meta.items() if k != "val"})
        with self.fake_mode:
            node.meta["val"] = target(*tree_map(lambda a: a.meta["val"] if isinstance(a, Node) else a, args))
        return node

    def source(self, gemm: Node, codes: Node, scale_bits: Node) -> tuple[Node, int] | None:
        """(quantizer, half) when ``codes`` can come as values: a getitem of a ``quantize`` or a
        ``quantize_pair`` in the GEMM's own pass; a pair's half only when this GEMM alone reads it."""
        if not all(n.op == "call_function" and n.target is operator.getitem for n in (codes, scale_bits)):
            return None
        q, index = codes.args
        if scale_bits.args != (q, index + 1) or (q in self.backward) != (gemm in self.backward):
            return None
        if q.target is QUANTIZE and index == 0:
            return q, 0
        if q.target is PAIR and index in (0, 3) and set(codes.users) | set(scale_bits.users) == {gemm}:
            return q, index // 3
        return None

    def plan(self, gemms: list[Node]) -> list[tuple[Node, list]]:
        plans = []
        takers: dict[Node, set[Node]] = {}  # quantize -> the GEMMs that take its values
        for gemm in gemms:
            operands = []
            for codes, scale_bits, scale in (gemm.args[0:3], gemm.args[3:6]):
                src = self.source(gemm, codes, scale_bits)
                if src is not None and src[0].target is PAIR:
                    self.pair_halves.setdefault(src[0], set()).add(src[1])
                elif src is not None:
                    takers.setdefault(src[0], set()).add(gemm)
                operands.append((codes, scale_bits, scale, src))
            plans.append((gemm, operands))
        for q, gemms_taking in takers.items():  # users of a multi-output node are its getitems
            if any(set(item.users) - gemms_taking for item in q.users if item.args[1] in (0, 1)):
                self.keep_codes.add(q)
        return plans

    def move_readers(self, q: Node, items: dict[int, Node]) -> None:
        """Readers of ``q``'s outputs named in ``items`` (old index -> new getitem) move to the new node."""
        for old in list(q.users):
            if old.args[1] in items:
                old.replace_all_uses_with(items[old.args[1]])
                self.moved[old] = items[old.args[1]]

    def quantizer_values(self, q: Node, half: int) -> tuple[Node, Node]:
        if (q, half) not in self.values_of:
            with self.graph.inserting_before(q):
                if q.target is QUANTIZE:
                    keep = q in self.keep_codes  # the codes stay for other readers: both from one pass
                    op = torch.ops.nvfp4.quantize_with_values if keep else torch.ops.nvfp4.quantize_values
                    vq = self.emit(q, op.default, q.args)
                    items = [self.emit(q, operator.getitem, (vq, i)) for i in range(4 if keep else 2)]
                    self.move_readers(q, {0: items[0], 1: items[1], 2: items[2]} if keep else {2: items[1]})
                    self.values_of[(q, 0)] = (items[3], items[2]) if keep else (items[0], items[1])
                else:
                    halves = self.pair_halves[q]
                    vq = self.emit(q, torch.ops.nvfp4.quantize_pair_values.default,
                                   (*q.args, 0 in halves, 1 in halves))
                    items = [self.emit(q, operator.getitem, (vq, i)) for i in range(6)]
                    self.move_readers(q, {i: items[i] for i in range(6) if i // 3 not in halves})
                    for h in halves:
                        self.values_of[(q, h)] = (items[3 * h], items[3 * h + 2])
        return self.values_of[(q, half)]

    def transposed_2d(self, gemm: Node, codes: Node, scale_bits: Node) -> Node | None:
        """The ``transpose_2d`` node whose codes and scales are this operand, read by this GEMM alone."""
        if not all(n.op == "call_function" and n.target is operator.getitem for n in (codes, scale_bits)):
            return None
        t, index = codes.args
        if (t.target is not TRANSPOSE_2D or (index, scale_bits.args) != (0, (t, 1))
                or set(codes.users) | set(scale_bits.users) != {gemm}):
            return None
        return t

    def rewrite(self, gemm: Node, operands: list) -> None:
        made = []
        for codes, scale_bits, scale, src in operands:
            codes, scale_bits, scale = (self.moved.get(n, n) for n in (codes, scale_bits, scale))
            if src is not None:
                made.extend(self.quantizer_values(*src))
                continue
            with self.graph.inserting_before(gemm):
                t = self.transposed_2d(gemm, codes, scale_bits)
                if t is not None:  # W^T's values are W's, transposed: dequantize what was saved, read it as a view
                    w_codes, w_scale_bits, _ = t.args
                    values = self.emit(gemm, torch.ops.nvfp4.dequantize.default, (w_codes, w_scale_bits, "nvfp4"))
                    made.extend((self.emit(gemm, torch.ops.aten.permute.default, (values, [1, 0])), scale))
                    self.transposes.append(t)
                else:
                    made.extend((self.emit(gemm, torch.ops.nvfp4.dequantize.default, (codes, scale_bits, "nvfp4")),
                                 scale))
        bias, _, out_dtype = gemm.args[6:9]
        with self.graph.inserting_before(gemm):
            new = self.emit(gemm, torch.ops.nvfp4.gemm_values.default, (*made, bias, out_dtype))
        gemm.replace_all_uses_with(new)
        self.graph.erase_node(gemm)


def use_bf16_operands(graph: Graph) -> int:
    """Rewrite ``graph`` in place (module docstring); returns how many operands the quantizers now
    hand over as BF16 values (the others are dequantized)."""
    gemms = [n for n in graph.nodes if n.op == "call_function" and n.target is GEMM and n.args[7] == "nvfp4"]
    if not gemms:
        return 0
    rewriter = _Rewriter(graph)
    plans = rewriter.plan(gemms)
    for gemm, operands in plans:
        rewriter.rewrite(gemm, operands)
    # The replaced quantizers go explicitly: dead-code elimination need not remove a custom op
    # (a dead one would still run and quantize its input a second time).
    for q in [*dict.fromkeys(q for q, _ in rewriter.values_of), *rewriter.transposes]:  # each once, in order
        for item in list(q.users):
            if item.target is operator.getitem and not item.users:
                graph.erase_node(item)
        if not q.users:
            graph.erase_node(q)
    return sum(src is not None for _, operands in plans for *_, src in operands)
