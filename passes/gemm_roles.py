"""Find the matmuls of a joint forward+backward graph and say what each one is.

Contract: reads the graph, changes nothing. For every ``aten.mm`` / ``aten.addmm`` /
``aten.bmm`` node it returns a :class:`Gemm` with

- ``role``: ``fprop`` (not downstream of the tangents), ``dgrad`` (backward, one operand
  roots at a weight), ``wgrad`` (backward, the other GEMM of a weighted fprop with the same
  ``seq_nr``), ``batched`` (``bmm``: attention), or ``other`` (a backward matmul of two
  activations, a double backward, ...);
- the weight operand, traced through view/permute/reshape/clone/convert to the graph input
  that holds the parameter, with whether the operand is W or W^T;
- the module path of the linear layer that calls the GEMM (``layers.0.fc1``, as
  ``named_modules()`` prints it), from the node's module stack, else from the weight's
  source in the Dynamo graph; dgrad and wgrad take their fprop's.

A weight stored transposed (HF GPT-2's ``Conv1D`` computes ``x @ W``) is the same weight with
the other orientation; a tied weight is one input used by several GEMMs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten

TRANSPOSES = {aten.t.default, aten.transpose.int, aten.permute.default}
RESHAPES = {aten.view.default, aten._unsafe_view.default, aten.reshape.default}
SAME_VALUE = {aten.clone.default, aten._to_copy.default, aten.alias.default, aten.detach.default,
              torch.ops.prims.convert_element_type.default}
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default}


@dataclass(frozen=True)
class ParamInfo:
    """A graph input that is an ``nn.Parameter``: its module path and attribute name."""

    module: str
    name: str
    shape: tuple[int, ...]


def param_info_from_source(source_name: str, shape) -> ParamInfo | None:
    """``L['self']._modules['layers']._modules['0']._parameters['weight']`` -> ``layers.0``, ``weight``."""
    body = re.sub(r"^[A-Z]\['[^']*'\]", "", source_name)
    parts = re.findall(r"\.?_modules\['([^']+)'\]|\.?_parameters\['([^']+)'\]|\.([A-Za-z_]\w*)|\[(\d+)\]", body)
    names = [next(p for p in groups if p) for groups in parts]
    names = [n for n in names if n not in ("_modules", "_parameters")]
    if not names:
        return None
    return ParamInfo(module=".".join(names[:-1]), name=names[-1], shape=tuple(shape))


@dataclass(frozen=True)
class WeightRef:
    placeholder: Node
    param: ParamInfo
    transposed: bool | None  # operand is W^T (True) or W (False); None if a reshape intervenes


@dataclass
class Gemm:
    node: Node
    role: str
    a: Node
    b: Node
    bias: Node | None = None
    weight: WeightRef | None = None
    weight_operand: str | None = None  # "a" or "b"
    gradient_operand: str | None = None  # wgrad: which operand is dY
    module: str = ""
    fprop: "Gemm | None" = field(default=None, repr=False)
    keep_reason: str | None = None
    recipe: object = None  # the Recipe that applies, set by the pass

    def operand_kind(self, operand: str) -> str:
        """activation, weight or gradient."""
        if self.weight_operand == operand:
            return "weight"
        if self.role == "dgrad" or (self.role == "wgrad" and self.gradient_operand == operand):
            return "gradient"
        return "activation"

    @property
    def shape(self) -> tuple:
        a, b = self.a.meta["val"], self.b.meta["val"]
        if self.role == "batched":
            return (a.shape[0], a.shape[1], b.shape[2], a.shape[2])
        return (a.shape[0], b.shape[1], a.shape[1])


def _is_transpose(node: Node) -> bool:
    if node.target is aten.permute.default:
        return list(node.args[1]) == [1, 0]
    if node.target is aten.transpose.int:
        return sorted(int(d) % 2 for d in node.args[1:3]) == [0, 1]
    return node.target is aten.t.default


def trace_to_weight(node: Node, params: dict[Node, ParamInfo]) -> WeightRef | None:
    """Follow view-like ops from a matmul operand to a 2-D parameter input, if there is one."""
    transposed, exact = False, True
    while node.op == "call_function":
        if node.target in TRANSPOSES and _is_transpose(node):
            transposed = not transposed
        elif node.target in RESHAPES:
            before, after = node.args[0].meta.get("val"), node.meta.get("val")
            if before is None or after is None or tuple(before.shape) != tuple(after.shape):
                exact = False
        elif node.target not in SAME_VALUE:
            return None
        node = node.args[0]
    info = params.get(node)
    if info is None or len(info.shape) != 2:
        return None
    return WeightRef(node, info, transposed if exact else None)


def downstream_of_tangents(graph: Graph) -> set[Node]:
    seen: set[Node] = set()
    stack = [n for n in graph.nodes if n.op == "placeholder" and n.name.startswith("tangents")]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.users)
    return seen


def module_from_stack(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^[A-Z]\['[^']*'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("._modules.", ".")


def find_gemms(graph: Graph, params: dict[Node, ParamInfo]) -> list[Gemm]:
    backward = downstream_of_tangents(graph)
    fprops: dict[int, Gemm] = {}
    gemms = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in MATMULS:
            continue
        if node.target is aten.bmm.default:
            gemms.append(Gemm(node, "batched", *node.args[:2], module=module_from_stack(node)))
            continue
        bias, (a, b) = (node.args[0], node.args[1:3]) if node.target is aten.addmm.default else (None, node.args[:2])
        wa, wb = trace_to_weight(a, params), trace_to_weight(b, params)
        weight, which = (wb, "b") if wb is not None else (wa, "a") if wa is not None else (None, None)
        seq = node.meta.get("seq_nr")
        if node not in backward:
            g = Gemm(node, "fprop", a, b, bias, weight, which)
            # The calling module, not the weight's owner: a tied head is "lm_head", not "embed".
            g.module = module_from_stack(node) or (weight.param.module if weight else "")
            if seq is not None and weight is not None:
                fprops[seq] = g
        elif weight is not None:
            fprop = fprops.get(seq)
            g = Gemm(node, "dgrad", a, b, bias, weight, which, fprop=fprop,
                     module=fprop.module if fprop else weight.param.module)
        elif seq in fprops and (a in backward) != (b in backward):
            g = Gemm(node, "wgrad", a, b, bias, gradient_operand="a" if a in backward else "b",
                     module=fprops[seq].module, fprop=fprops[seq])
        else:
            g = Gemm(node, "other", a, b, bias, module=module_from_stack(node))
        gemms.append(g)
    return gemms
