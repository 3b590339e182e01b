"""The joint-graph pass that puts every eligible linear-layer GEMM in NVFP4 (or MXFP4).

Contract: runs on the joint forward+backward graph (before partitioning) as Inductor's
``joint_custom_pre_pass``. For every fprop/dgrad/wgrad GEMM of a linear layer (see
``gemm_roles``) that the configuration does not keep in high precision, it replaces the
``mm``/``addmm`` node by ``nvfp4::quantize`` (and ``nvfp4::rht``) of both operands and an
``nvfp4::gemm``, per the recipe table (``nvfp4_compile.recipe``). The 2D-quantized weight
is computed once per graph and reused, transposed by ``nvfp4::transpose_2d``, by dgrad.
Because this happens before partitioning, the forward saves the FP4 codes and scales of
X^T for wgrad instead of the high-precision X. Every GEMM, quantized or not, is recorded
with its reason (``nvfp4_compile.explain()``). Nothing else in the graph changes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import operator
import re
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx import Graph, Node
from torch.utils._pytree import tree_map

from nvfp4_compile import decisions, ops
from nvfp4_compile.options import BackendOptions
from nvfp4_compile.recipe import OperandTreatment, treatments

from .gemm_roles import Gemm, ParamInfo, find_gemms

HEAD_NAMES = {"lm_head", "head", "output", "classifier", "score", "embed_out", "output_layer"}
COPIED_META = ("nn_module_stack", "fwd_nn_module_stack", "stack_trace", "seq_nr", "autograd_backward",
               "recompute", "ac_graph_id", "partitioner_tag", "custom")
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_SHORT_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def repeated_blocks(module_paths) -> tuple[str, int] | None:
    """The longest stack of numbered blocks, e.g. ``("model.layers", 32)``, among module paths."""
    counts: dict[str, set[int]] = {}
    for path in module_paths:
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part.isdigit() and i > 0:
                counts.setdefault(".".join(parts[:i]), set()).add(int(part))
    counts = {k: v for k, v in counts.items() if len(v) >= 2}
    if not counts:
        return None
    prefix = max(counts, key=lambda k: (len(counts[k]), -k.count(".")))
    return prefix, max(counts[prefix]) + 1


def _sources_digest() -> str:
    h = hashlib.sha256()
    import nvfp4_compile
    roots = [Path(__file__).parent, Path(nvfp4_compile.__file__).parent]
    for root in roots:
        for path in sorted(root.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


class QuantizeGemmsPass(CustomGraphPass):
    """Rewrites one compiled graph's GEMMs; one instance per graph Dynamo hands the backend."""

    def __init__(self, options: BackendOptions, params: list[ParamInfo | None], graph_id: int):
        self.options = options
        self.params = params
        self.graph_id = graph_id
        self.decisions: list[decisions.GemmDecision] = []
        self.ran = False

    def uuid(self) -> str:
        h = hashlib.sha256(_sources_digest().encode())
        h.update(self.options.cache_key().encode())
        h.update(repr(self.params).encode())
        return h.hexdigest()

    # -- decisions -------------------------------------------------------------------

    def _keep_reason(self, g: Gemm, blocks, tied: set[Node], inference: bool) -> str | None:
        """Why this GEMM stays in high precision, or None to quantize it."""
        opts, recipe = self.options, self.options.recipe
        if g.role == "batched":
            return "batched matmul (attention) stays in high precision"
        if g.role == "other":
            return "not a linear layer's fprop/dgrad/wgrad"
        if g.role == "fprop" and g.weight is None:
            return "no weight operand (activation x activation)"
        if g.fprop is not None and g.fprop is not g and g.fprop.keep_reason is not None:
            return g.fprop.keep_reason
        if recipe.format == "bf16":
            return "recipe format is bf16"
        if inference and not opts.quantize_inference:
            return "inference graph and quantize_inference is off"
        for pattern in opts.bf16_modules:
            if fnmatch.fnmatchcase(g.module, pattern):
                return f"bf16_modules pattern {pattern!r}"
        if g.module.split(".")[-1] in HEAD_NAMES:
            return "output head"
        if g.weight is not None and g.weight.placeholder in tied:
            return "weight tied to an embedding (output head)"
        if blocks is not None:
            prefix, count = blocks
            tail = math.ceil(opts.bf16_last_blocks_fraction * count)
            m = re.match(re.escape(prefix) + r"\.(\d+)(\.|$)", g.module)
            if m and int(m.group(1)) >= count - tail:
                return f"in the last {tail} of {count} blocks of {prefix}"
        dtypes = {g.a.meta["val"].dtype, g.b.meta["val"].dtype}
        if not dtypes <= set(SUPPORTED_DTYPES):
            return f"operand dtype {sorted(map(str, dtypes))} is not bf16/fp16/fp32"
        if g.weight is not None:
            w_shape = g.weight.param.shape
            if g.weight.transposed is None:
                return "the weight reaches the GEMM through a reshape"
            if recipe.weight_2d and any(d % recipe.block for d in w_shape):
                return f"weight {list(w_shape)} does not tile into {recipe.block}x{recipe.block} blocks"
        return None

    def _padding_note(self, k) -> str:
        block = self.options.recipe.block
        if not isinstance(k, int):
            return f" (K={k} padded to a multiple of {block} at run time)"
        if k % block:
            return f" (K padded from {k} to {ops.padded_k(k, block)})"
        return ""

    # -- graph surgery ---------------------------------------------------------------

    def _emit(self, graph: Graph, like: Node, target, args) -> Node:
        node = graph.call_function(target, args)
        for key in COPIED_META:
            if key in like.meta:
                node.meta[key] = like.meta[key]
        with self._fake_mode:
            node.meta["val"] = target(*tree_map(lambda a: a.meta["val"] if isinstance(a, Node) else a, args))
        return node

    def _quantize(self, graph: Graph, like: Node, x: Node, t: OperandTreatment, transpose: bool,
                  label: str) -> tuple[Node, Node, Node]:
        recipe = self.options.recipe
        if transpose:
            x = self._emit(graph, like, torch.ops.aten.permute.default, (x, [1, 0]))
        if t.rht:
            x = self._emit(graph, like, torch.ops.nvfp4.rht.default, (x,))
        check = label if self.options.check_finite else ""
        block_rows = recipe.block if t.block_rows > 1 else 1
        q = self._emit(graph, like, torch.ops.nvfp4.quantize.default, (x, recipe.format, block_rows, t.rounding, check))
        return tuple(self._emit(graph, like, operator.getitem, (q, i)) for i in range(3))

    def _weight(self, graph: Graph, g: Gemm, operand: str, t: OperandTreatment, label: str):
        """The quantized weight operand (as K-major [N, K]); 2D weights are cached per orientation."""
        node = g.a if operand == "a" else g.b
        transpose = operand == "b"  # B enters the GEMM as B^T
        if t.block_rows == 1:
            return self._quantize(graph, g.node, node, t, transpose, label)
        orientation = g.weight.transposed != transpose  # True: the tensor needed is W^T
        key = (g.weight.placeholder, orientation)
        if key not in self._weights:
            other = (g.weight.placeholder, not orientation)
            if other in self._weights:
                codes, scales, scale = self._weights[other]
                tq = self._emit(graph, g.node, torch.ops.nvfp4.transpose_2d.default,
                                (codes, scales, self.options.recipe.format))
                self._weights[key] = (self._emit(graph, g.node, operator.getitem, (tq, 0)),
                                      self._emit(graph, g.node, operator.getitem, (tq, 1)), scale)
            else:
                self._weights[key] = self._quantize(graph, g.node, node, t, transpose, label)
        return self._weights[key]

    def _rewrite(self, graph: Graph, g: Gemm, ta: OperandTreatment, tb: OperandTreatment) -> None:
        label = f"{g.module} {g.role}"
        # An operand may be the output of a GEMM rewritten before this one.
        g.a, g.b = self._replaced.get(g.a, g.a), self._replaced.get(g.b, g.b)
        if g.bias is not None:
            g.bias = self._replaced.get(g.bias, g.bias)
        with graph.inserting_before(g.node):
            if g.weight_operand == "a":
                qa = self._weight(graph, g, "a", ta, label + " A")
            else:
                qa = self._quantize(graph, g.node, g.a, ta, False, label + " A")
            if g.weight_operand == "b":
                qb = self._weight(graph, g, "b", tb, label + " B")
            else:
                qb = self._quantize(graph, g.node, g.b, tb, True, label + " B")
            out_dtype = g.node.meta["val"].dtype
            out = self._emit(graph, g.node, torch.ops.nvfp4.gemm.default,
                             (*qa, *qb, g.bias, self.options.recipe.format, out_dtype))
        g.node.replace_all_uses_with(out)
        self._replaced[g.node] = out
        graph.erase_node(g.node)

    def __call__(self, graph: Graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        params = {node: info for node, info in zip(placeholders, self.params) if info is not None}
        self._fake_mode = torch._guards.detect_fake_mode([n.meta.get("val") for n in placeholders])
        self._weights = {}
        self._replaced: dict[Node, Node] = {}
        inference = not any(n.name.startswith("tangents") for n in placeholders)
        tied = {n for n in params if any(u.target is torch.ops.aten.embedding.default for u in n.users)}
        blocks = repeated_blocks(info.module for info in params.values())
        gemms = find_gemms(graph, params)
        recipe = self.options.recipe
        for g in gemms:
            g.keep_reason = self._keep_reason(g, blocks, tied, inference)
        for g in gemms:
            dtype = _SHORT_DTYPE.get(g.node.meta["val"].dtype, str(g.node.meta["val"].dtype))
            shape = "x".join(str(d) for d in g.shape)
            kinds = {"a_operand": g.operand_kind("a"), "b_operand": g.operand_kind("b")}
            if g.keep_reason is not None:
                self.decisions.append(decisions.GemmDecision(
                    self.graph_id, g.module, g.role, dtype, dtype, dtype, g.keep_reason, shape, **kinds))
                continue
            ta, tb = treatments(recipe, g.role, gradient_is_a=g.gradient_operand != "b")
            if g.role != "wgrad" and g.weight_operand == "a":
                ta, tb = tb, ta
            self._rewrite(graph, g, ta, tb)
            self.decisions.append(decisions.GemmDecision(
                self.graph_id, g.module, g.role, ta.describe(recipe.block), tb.describe(recipe.block),
                recipe.format, "recipe" + self._padding_note(g.shape[-1]), shape, **kinds))
        graph.eliminate_dead_code()
        graph.lint()
        decisions.record(self.decisions)
        self.ran = True
