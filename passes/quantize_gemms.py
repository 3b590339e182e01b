"""The joint-graph pass that puts every eligible linear-layer GEMM in NVFP4 (or MXFP4).

Contract: runs on the joint forward+backward graph (before partitioning) as Inductor's
``joint_custom_pre_pass``. For every fprop/dgrad/wgrad GEMM of a linear layer (see
``gemm_roles``) that the configuration does not keep in high precision, it replaces the
``mm``/``addmm`` node by ``nvfp4::quantize`` (with the RHT fused where it applies) of both operands and an
``nvfp4::gemm``, per the recipe table (``nvfp4_compile.recipe``). The 2D-quantized weight
is computed once per graph and reused, transposed by ``nvfp4::transpose_2d``, by dgrad.
Because this happens before partitioning, the forward saves the FP4 codes and scales of
X^T for wgrad instead of the high-precision X. The two 1x16 quantizations of one tensor (X and
X^T, dY and dY^T) are then fused into one ``nvfp4::quantize_pair`` (``pair_quantize``).
Every GEMM, quantized or not, is recorded
with its reason (``nvfp4_compile.explain()``). Nothing else in the graph changes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import operator
import os
import sys
import warnings
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx import Graph, Node
from torch.utils._pytree import tree_map

from nvfp4_compile import decisions, dumps, ops
from nvfp4_compile.options import BackendOptions
from nvfp4_compile.policy import PolicyError
from nvfp4_compile.recipe import OperandTreatment, Recipe, treatment

from .bf16_operands import use_bf16_operands
from .gemm_roles import Gemm, ParamInfo, find_gemms
from .pair_quantize import fuse_quantize_pairs

log = logging.getLogger(__name__)

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


@functools.lru_cache(maxsize=None)
def _sources_digest() -> str:
    h = hashlib.sha256()
    import nvfp4_compile
    roots = [Path(__file__).parent, Path(nvfp4_compile.__file__).parent]
    for root in roots:
        for path in sorted(root.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


BF16_OPERANDS_ENV = "NVFP4_COMPILE_BF16_OPERANDS"


def _bf16_operands(placeholders: list[Node]) -> bool:
    """Whether ``bf16_operands`` applies: by default where the GEMMs run emulated (a CUDA device
    that is not one the sm_100a GEMM serves), unless the NVFP4 weight all-gather is on in this
    process (``nvfp4_compile.distributed.fp4_all_gather_enabled``: its peak memory grew with BF16
    operands in one measurement; a later one gave the same peak either way and BF16 operands no
    faster there, bench/RESULTS.md); ``NVFP4_COMPILE_BF16_OPERANDS=0`` never, ``=1`` always (on
    CPUs too: the references of both forms agree bit for bit)."""
    setting = os.environ.get(BF16_OPERANDS_ENV, "")
    if setting in ("0", "1"):
        return setting == "1"
    devices = {v.device for n in placeholders if isinstance(v := n.meta.get("val"), torch.Tensor)}
    cuda = [d for d in devices if d.type == "cuda"]
    return bool(cuda) and bf16_operands_by_default(cuda[0])


def _fp4_all_gather_enabled() -> bool:
    distributed = sys.modules.get("nvfp4_compile.distributed")  # never enabled unless imported
    return distributed is not None and distributed.fp4_all_gather_enabled


def bf16_operands_by_default(device: torch.device) -> bool:
    if _fp4_all_gather_enabled():
        log.info("nvfp4: GEMM operands stay FP4 codes: the NVFP4 weight all-gather is enabled")
        return False
    from cutlass_kernels.dispatch import use_sm100_gemm

    return not use_sm100_gemm(device)


def _size_hint(d) -> int | None:
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else None


def _sizes(g: Gemm) -> dict:
    """FLOPs and, for wgrad, the activation elements the forward saves for it."""
    dims = [_size_hint(d) for d in g.shape]
    if any(d is None for d in dims):
        return {}
    out = {"flops": 2 * math.prod(dims)}
    if g.role == "wgrad":
        act = g.b if g.gradient_operand == "a" else g.a
        out["saved_activation_elements"] = math.prod(_size_hint(d) or 0 for d in act.meta["val"].shape)
    return out


class QuantizeGemmsPass(CustomGraphPass):
    """Rewrites one compiled graph's GEMMs; one instance per graph Dynamo hands the backend."""

    def __init__(self, options: BackendOptions, params: list[ParamInfo | None], graph_id: int,
                 model_modules=None):
        self.options = options
        self.params = params
        # Every module path of the model when the graph holds only part of it (a DDP bucket,
        # an FSDP2 block): the repeated blocks are counted there, not in this graph.
        self.model_modules = tuple(sorted(set(model_modules))) if model_modules else None
        self.graph_id = graph_id
        self.decisions: list[decisions.GemmDecision] = []
        self.ran = False

    def uuid(self) -> str:
        h = hashlib.sha256(_sources_digest().encode())
        h.update(self.options.cache_key().encode())
        h.update(repr(self.params).encode())
        h.update(repr(self.model_modules).encode())
        h.update(os.environ.get(BF16_OPERANDS_ENV, "").encode())
        h.update(b"fp4-all-gather" if _fp4_all_gather_enabled() else b"")
        return h.hexdigest()

    # -- decisions -------------------------------------------------------------------

    def _decide(self, g: Gemm, blocks, tied: set[Node], inference: bool) -> tuple[Recipe, str | None]:
        """The recipe for this GEMM and, if it stays in high precision, why."""
        policy = self.options.policy
        if g.role == "batched":
            return policy.recipe, "batched matmul (attention) stays in high precision"
        if g.role == "other":
            return policy.recipe, "not a linear layer's fprop/dgrad/wgrad"
        if g.role == "fprop" and g.weight is None:
            return policy.recipe, "no weight operand (activation x activation)"
        if g.fprop is not None and g.fprop is not g:
            return g.fprop.recipe, g.fprop.keep_reason  # dgrad and wgrad follow their layer
        if inference and not self.options.quantize_inference:
            return policy.recipe, "inference graph and quantize_inference is off"
        if g.module.split(".")[-1] in HEAD_NAMES:
            return policy.recipe, "output head"
        if g.weight is not None and g.weight.placeholder in tied:
            return policy.recipe, "weight tied to an embedding (output head)"
        recipe, reason = policy.resolve(g.module, blocks)
        if reason is not None:
            return recipe, reason
        dtypes = {g.a.meta["val"].dtype, g.b.meta["val"].dtype}
        if not dtypes <= set(SUPPORTED_DTYPES):
            return recipe, f"operand dtype {sorted(map(str, dtypes))} is not bf16/fp16/fp32"
        if g.weight is not None:
            w_shape = g.weight.param.shape
            if g.weight.transposed is None:
                return recipe, "the weight reaches the GEMM through a reshape"
            if recipe.weight_2d and any(d % recipe.block for d in w_shape):
                message = f"weight {list(w_shape)} does not tile into {recipe.block}x{recipe.block} blocks"
                named = policy.overrides_setting(g.module, ("weight_2d", "format"))
                if named is not None:
                    raise PolicyError(f"{named[1]}: key '{named[0]}': module {g.module}: {message} "
                                      "(2D weight scaling is impossible here)")
                return recipe, message
        return recipe, None

    def _warn_unmatched(self, params: dict) -> None:
        modules = set(self.model_modules or ()) | {info.module for info in params.values()}
        for pattern, key, where in self.options.policy.unmatched_patterns(modules):
            warnings.warn(f"{where}: key '{key}': pattern {pattern!r} matches no module in graph {self.graph_id}",
                          stacklevel=2)

    def _padding_note(self, k, recipe: Recipe) -> str:
        block = recipe.block
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
                  label: str, recipe: Recipe) -> tuple[Node, Node, Node]:
        if transpose:
            x = self._emit(graph, like, torch.ops.aten.permute.default, (x, [1, 0]))
        check = label if self.options.check_finite else ""
        block_rows = recipe.block if t.block_rows > 1 else 1
        # The RHT is fused into the quantizer: the transformed BF16 tensor never reaches memory.
        q = self._emit(graph, like, torch.ops.nvfp4.quantize.default,
                       (x, recipe.format, block_rows, t.rounding, check, t.rht))
        return tuple(self._emit(graph, like, operator.getitem, (q, i)) for i in range(3))

    def _weight(self, graph: Graph, g: Gemm, operand: str, t: OperandTreatment, label: str):
        """The quantized weight operand (as K-major [N, K]); 2D weights are cached per orientation."""
        node = g.a if operand == "a" else g.b
        transpose = operand == "b"  # B enters the GEMM as B^T
        if t.block_rows == 1:
            return self._quantize(graph, g.node, node, t, transpose, label, g.recipe)
        orientation = g.weight.transposed != transpose  # True: the tensor needed is W^T
        key = (g.weight.placeholder, orientation, g.recipe.format, t.rht)
        if key not in self._weights:
            # A 2D tile reads the same both ways, so the transposed quantization is a move,
            # unless an RHT along K was applied first.
            other = (g.weight.placeholder, not orientation, g.recipe.format, t.rht)
            if other in self._weights and not t.rht:
                codes, scales, scale = self._weights[other]
                tq = self._emit(graph, g.node, torch.ops.nvfp4.transpose_2d.default,
                                (codes, scales, g.recipe.format))
                self._weights[key] = (self._emit(graph, g.node, operator.getitem, (tq, 0)),
                                      self._emit(graph, g.node, operator.getitem, (tq, 1)), scale)
            else:
                self._weights[key] = self._quantize(graph, g.node, node, t, transpose, label, g.recipe)
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
                qa = self._quantize(graph, g.node, g.a, ta, False, label + " A", g.recipe)
            if g.weight_operand == "b":
                qb = self._weight(graph, g, "b", tb, label + " B")
            else:
                qb = self._quantize(graph, g.node, g.b, tb, True, label + " B", g.recipe)
            out_dtype = g.node.meta["val"].dtype
            out = self._emit(graph, g.node, torch.ops.nvfp4.gemm.default,
                             (*qa, *qb, g.bias, g.recipe.format, out_dtype))
        g.node.replace_all_uses_with(out)
        self._replaced[g.node] = out
        graph.erase_node(g.node)

    def __call__(self, graph: Graph) -> None:
        dumping = self.options.dump_dir is not None
        tracing = bool(torch._logging._internal.trace_log.handlers)
        before = graph.python_code("self").src if dumping or tracing else None
        self._rewrite_graph(graph)
        if before is not None:
            after = graph.python_code("self").src
            dumps.emit(self.options.dump_dir, self.graph_id, before, after, self.decisions)
        decisions.record(self.decisions)
        self.ran = True

    def _rewrite_graph(self, graph: Graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        params = {node: info for node, info in zip(placeholders, self.params) if info is not None}
        self._fake_mode = torch._guards.detect_fake_mode([n.meta.get("val") for n in placeholders])
        self._weights = {}
        self._replaced: dict[Node, Node] = {}
        inference = not any(n.name.startswith("tangents") for n in placeholders)
        tied = {n for n in params if any(u.target is torch.ops.aten.embedding.default for u in n.users)}
        blocks = repeated_blocks(self.model_modules or [info.module for info in params.values()])
        gemms = find_gemms(graph, params)
        # Decide everything (and raise on an impossible policy) before changing anything.
        for g in gemms:
            g.recipe, g.keep_reason = self._decide(g, blocks, tied, inference)
        self._warn_unmatched(params)
        for g in gemms:
            recipe = g.recipe
            dtype = _SHORT_DTYPE.get(g.node.meta["val"].dtype, str(g.node.meta["val"].dtype))
            shape = "x".join(str(d) for d in g.shape)
            kinds = {"a_operand": g.operand_kind("a"), "b_operand": g.operand_kind("b"), **_sizes(g)}
            if g.keep_reason is not None:
                self.decisions.append(decisions.GemmDecision(
                    self.graph_id, g.module, g.role, dtype, dtype, dtype, g.keep_reason, shape, **kinds))
                continue
            ta, tb = (treatment(recipe, g.role, kinds[f"{x}_operand"]) for x in "ab")
            self._rewrite(graph, g, ta, tb)
            self.decisions.append(decisions.GemmDecision(
                self.graph_id, g.module, g.role, ta.describe(recipe.block), tb.describe(recipe.block),
                recipe.format, "recipe" + self._padding_note(g.shape[-1], recipe), shape, **kinds))
        fuse_quantize_pairs(graph)
        if _bf16_operands(placeholders):
            use_bf16_operands(graph)
        graph.eliminate_dead_code()
        graph.lint()
