"""Data-parallel training under ``backend="nvfp4"``: DDP, FSDP2, per-rank SR noise, NVFP4 weight all-gather.

DDP::

    model = torch.compile(DDP(model), backend="nvfp4")      # or DDP(torch.compile(model, ...))

Dynamo's DDP optimizer splits the graph at gradient-bucket boundaries and calls the backend
once per bucket. A bucket sees only some of the repeated blocks, so the backend takes the
block count (the first/last-blocks rules) from the module paths of the whole Dynamo graph,
which every bucket carries (:func:`model_context`), not from the bucket's own parameters.

FSDP2::

    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    model = torch.compile(model, backend="nvfp4")          # or block.compile(...) per block

FSDP2's hooks run outside the compiled graphs: each block's graph receives its weights as
the (already all-gathered) unsharded parameters, so the pass recognises fprop, dgrad and
wgrad as in one process. The hooks break the graph at every block, and Dynamo would compile
a block's ``forward`` once and reuse it for every block, with module paths relative to the
block (``fc1`` instead of ``layers.3.fc1``). :func:`model_context` names each weight by its
FSDP2 fully qualified name, counts the blocks of the whole model, and guards the graph on
the identity of its block, so that every block gets its own graph and its own decisions
(the last blocks stay in high precision, as in one process). Compile time therefore grows
with the number of blocks; Dynamo's recompile limit is raised to fit them. The root's own
forward is not compiled (the root's hooks make Dynamo fall back to eager for that frame):
its layers, typically the embedding and the output head, run eagerly in high precision,
where the backend keeps them anyway. A root that holds linears the recipe would quantize
runs them in high precision unless they are compiled separately.

Stochastic rounding draws from the device's default generator. With the same
``torch.manual_seed`` on every rank (which model initialisation usually needs), every rank
draws the same noise: the errors of the ranks' gradients are correlated and averaging them
does not shrink the noise. Call :func:`seed_per_rank` after building the model; the backend
warns when it compiles SR into a multi-rank job that has not.

NVFP4 weight all-gather (opt-in): :func:`enable_nvfp4_all_gather` before ``fully_shard``.
The 2D (16x16) weight quantization is the same for fprop and dgrad, so each rank quantizes
its shard with the global amax (an all-reduce of the shards' amaxes) and FSDP2 all-gathers
FP4 codes and one E4M3 scale per tile instead of BF16: 4.06 bits a weight instead of 16.
The gathered codes, scales and tensor scale equal the single-process quantization of the
whole weight bit for bit (:func:`all_gather_nvfp4`). The unsharded weight handed to the model
is their exact dequantization (see :class:`NVFP4AllGatherWeight` for when re-quantizing it
in the graph gives the same codes again).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch import nn

from .numerics import NVFP4Tensor, dequantize

log = logging.getLogger(__name__)

TILE = 16


# -- module paths for the pass: DDP buckets and FSDP2 blocks ------------------------------

def _module_of(fqn: str) -> str:
    return fqn.rsplit(".", 1)[0] if "." in fqn else ""


def _param_groups(state) -> list:
    groups = getattr(state, "_fsdp_param_groups", None)  # several meshes per module (newer FSDP2)
    if groups is None:
        group = getattr(state, "_fsdp_param_group", None)
        groups = [group] if group is not None else []
    return list(groups)


def _fsdp_unsharded_params() -> dict[int, tuple[str, object]]:
    """``id(unsharded parameter) -> (fully qualified name, FSDP state)`` over every FSDP2 module.

    FSDP2 keeps its states in ``torch.distributed._composable_state``; the names are the ones
    the root assigns at lazy initialisation (before the first forward compiles anything).
    """
    try:
        from torch.distributed._composable_state import _module_state_mapping
        from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
    except ImportError:  # an FSDP2 without these internals: nothing to resolve
        return {}
    found = {}
    for ref in list(_module_state_mapping.values()):
        state = ref()
        if not isinstance(state, FSDPState):
            continue
        for group in _param_groups(state):
            for fsdp_param in group.fsdp_params:
                param = getattr(fsdp_param, "_unsharded_param", None)
                fqn = getattr(fsdp_param, "_param_fqn", None)
                if param is not None and fqn:
                    found[id(param)] = (fqn, state)
    return found


def _fsdp_tree_fqns(state) -> list[str]:
    """The parameter names of every FSDP2 module under the same root as ``state``."""
    states = getattr(getattr(state, "_state_ctx", None), "all_states", None) or [state]
    return [fp._param_fqn for s in states for g in _param_groups(s)
            for fp in g.fsdp_params if getattr(fp, "_param_fqn", None)]


def _root_local(source):
    while getattr(source, "base", None) is not None:
        source = source.base
    return source


def _guard_on_frame_module(gm: torch.fx.GraphModule) -> bool:
    """Make Dynamo compile this frame again for another module object (another block)."""
    try:
        from torch._dynamo.guards import GuardBuilder
        from torch._guards import TracingContext

        ctx = TracingContext.try_get()
        for node in gm.graph.find_nodes(op="placeholder"):
            grapharg = node.meta.get("grapharg")
            if ctx is None or grapharg is None or not isinstance(grapharg.example, nn.Parameter):
                continue
            root = _root_local(grapharg.source)
            if getattr(root, "local_name", None) is None:
                continue
            ctx.guards_context.dynamo_guards.add(root.make_guard(GuardBuilder.ID_MATCH))
            return True
    except Exception as error:  # noqa: BLE001  (a Dynamo without these internals)
        log.warning("nvfp4: could not guard an FSDP block's graph on its module (%s); blocks may "
                    "share one graph and its decisions", error)
    return False


def _allow_recompiles(count: int) -> None:
    config = torch._dynamo.config
    if getattr(config, "recompile_limit", count) < count:
        log.info("nvfp4: raising torch._dynamo.config.recompile_limit to %d (one graph per block)", count)
        config.recompile_limit = count


def _frame_prefix(relative: list, absolute: list) -> str | None:
    """The path of the frame's module in the model (``layers.3``), if every renamed
    parameter agrees on it (``fc1`` became ``layers.3.fc1``)."""
    prefixes = set()
    for rel, abs_ in zip(relative, absolute):
        if rel is None or abs_ is None or rel == abs_:
            continue
        if rel.module and not abs_.module.endswith("." + rel.module):
            return None
        prefixes.add(abs_.module[: len(abs_.module) - len(rel.module)].rstrip(".") if rel.module else abs_.module)
    return prefixes.pop() if len(prefixes) == 1 else None


def _prefix_module_stacks(gm: torch.fx.GraphModule, prefix: str | None) -> None:
    """Rewrite the module paths the nodes carry (``L['self'].fc1``), from which the pass names
    GEMMs, to start at the model's root (``L['self'].layers.3.fc1``)."""
    if not prefix:
        return
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        rewritten = {}
        for key, (path, kind) in stack.items():
            match = re.match(r"^([A-Z]\['[^']*'\])\.?(.*)$", path)
            if match:
                head, rest = match.groups()
                path = f"{head}.{prefix}" + (f".{rest}" if rest else "")
            rewritten[key] = (path, kind)
        node.meta["nn_module_stack"] = rewritten


def model_context(gm: torch.fx.GraphModule, params: list) -> tuple[list, tuple[str, ...] | None]:
    """The graph's parameters with module paths from the model's root, and every module path
    of the model (for the first/last-blocks rules and pattern warnings), or None if unknown.

    - A DDP bucket (and any graph Dynamo hands over) carries the parameter names of the
      whole Dynamo graph in ``gm.meta["dynamo_flat_name_to_original_fqn"]``.
    - A graph of an FSDP2 block names its parameters from the block (``fc1``); FSDP2 knows
      their names from the root (``layers.3.fc1.weight``). Such a graph is also guarded on
      its block, so that each block is compiled with its own decisions.
    """
    from passes.gemm_roles import ParamInfo
    from passes.quantize_gemms import repeated_blocks

    fqns = (gm.meta or {}).get("dynamo_flat_name_to_original_fqn") or {}
    modules = {_module_of(f) for f in fqns.values()}

    fsdp = _fsdp_unsharded_params()
    if fsdp:
        placeholders = list(gm.graph.find_nodes(op="placeholder"))
        renamed, tree = list(params), None
        for i, (node, info) in enumerate(zip(placeholders, params)):
            example = getattr(node.meta.get("grapharg"), "example", None)
            hit = fsdp.get(id(example)) if example is not None else None
            if info is None or hit is None:
                continue
            fqn, state = hit
            renamed[i] = ParamInfo(module=_module_of(fqn), name=fqn.rsplit(".", 1)[-1], shape=info.shape)
            tree = tree or _fsdp_tree_fqns(state)
        if tree is not None:
            if renamed != list(params):
                _prefix_module_stacks(gm, _frame_prefix(params, renamed))
                if _guard_on_frame_module(gm):
                    blocks = repeated_blocks({_module_of(f) for f in tree})
                    _allow_recompiles(2 * (blocks[1] if blocks else 1) + 8)
            return renamed, tuple(sorted({_module_of(f) for f in tree} | modules))
    return params, tuple(sorted(modules)) if modules else None


# -- stochastic rounding noise per rank ---------------------------------------------------

_seeded_per_rank = False
_warned_shared_noise = False


def _rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def seed_per_rank(seed: int | None = None, group=None) -> int:
    """Reseed this rank's default generators (CPU and every CUDA device) with a seed that
    differs from rank to rank, so that stochastic rounding (and dropout) draws independent
    noise on each rank. Call it after the model is built: initialisation must be the same
    everywhere. Returns the seed used: ``seed`` (default ``torch.initial_seed()``) mixed with
    the rank, reproducible from run to run.
    """
    global _seeded_per_rank
    base = torch.initial_seed() if seed is None else int(seed)
    mixed = (base * 0x9E3779B97F4A7C15 + (_rank(group) + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    torch.manual_seed(mixed)
    _seeded_per_rank = True
    return mixed


def warn_if_ranks_share_sr_noise(records) -> None:
    """Warn once when SR is compiled into a job of several ranks that share one seed."""
    global _warned_shared_noise
    if _seeded_per_rank or _warned_shared_noise:
        return
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    if any(d.a.endswith("SR") or d.b.endswith("SR") for d in records):
        _warned_shared_noise = True
        warnings.warn("nvfp4: stochastic rounding draws from the default generator; with the same seed on "
                      "every rank all ranks draw the same noise. Call nvfp4_compile.distributed.seed_per_rank() "
                      "after building the model.", stacklevel=2)


# -- NVFP4 quantization of a shard with the global amax -----------------------------------

def local_amax(x: torch.Tensor) -> torch.Tensor:
    """FP32 largest finite magnitude (0 for an empty tensor), as the quantizer computes it."""
    xf = x.detach().to(torch.float32)
    if xf.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return torch.where(torch.isfinite(xf), xf.abs(), torch.zeros((), device=xf.device)).amax()


def quantize_2d_with_amax(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x [rows, K]`` (rows and K multiples of 16) in 16x16 tiles, RNE, as if its
    tensor amax were ``amax`` (``>=`` the shard's own): returns codes ``uint8 [rows, K/2]``,
    tile scales ``uint8 [rows/16, K/16]`` (E4M3 bits, one per tile) and ``S_dec``.

    Tiles are quantized independently given the tensor scale, so the rows of a shard come
    out exactly as in the quantization of the whole tensor when ``amax`` is the whole
    tensor's. On CUDA the Triton kernel is given the amax; elsewhere it is imposed by quantizing
    one extra tile that holds it with the backend's own ``nvfp4::quantize`` (the reference).
    """
    from . import ops  # registers nvfp4::quantize

    rows, k = x.shape
    if rows % TILE or k % TILE:
        raise ValueError(f"a 2D-quantized weight shard must tile into {TILE}x{TILE}, got {tuple(x.shape)}")
    if ops._fast_path_available("quantize", x):  # the Triton kernel takes the amax: no copy, no amax pass
        from .kernels.triton_quantize import quantize_nvfp4

        amax_bits = amax.to(device=x.device, dtype=torch.float32).reshape(()).contiguous().view(torch.int32)
        codes, scale_bits, s_dec = quantize_nvfp4(x, TILE, "rne", amax_bits=amax_bits)
        return codes, scale_bits[::TILE].contiguous(), s_dec
    pin = torch.zeros((TILE, k), dtype=x.dtype, device=x.device)
    pin[0, 0] = amax.to(x.dtype)
    codes, scale_bits, s_dec = torch.ops.nvfp4.quantize(torch.cat([x, pin]), "nvfp4", TILE, "rne", "")
    return codes[:rows], scale_bits[:rows:TILE].contiguous(), s_dec


def _global_amax(x: torch.Tensor, group) -> torch.Tensor:
    amax = local_amax(x)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
    return amax


def _as_nvfp4(codes, tile_scales, s_dec) -> NVFP4Tensor:
    rows = codes.shape[0]
    scales = tile_scales.repeat_interleave(TILE, dim=0).view(torch.float8_e4m3fn)
    return NVFP4Tensor(codes, scales, s_dec, torch.Size((rows, codes.shape[1] * 2)), (TILE, TILE))


def all_gather_nvfp4(shard: torch.Tensor, group=None, amax: torch.Tensor | None = None) -> NVFP4Tensor:
    """All-gather a weight sharded along dim 0 (equal shards, each a multiple of 16 rows) as
    NVFP4: equal, bit for bit, to ``quantize(full_weight, block=(16, 16))`` on one process.

    ``amax``: the whole weight's amax if already known; otherwise one all-reduce (MAX).
    """
    amax = _global_amax(shard, group) if amax is None else amax
    codes, tiles, s_dec = quantize_2d_with_amax(shard, amax)
    world = dist.get_world_size(group)
    all_codes = codes.new_empty((world * codes.shape[0], codes.shape[1]))
    all_tiles = tiles.new_empty((world * tiles.shape[0], tiles.shape[1]))
    dist.all_gather_into_tensor(all_codes, codes.contiguous(), group=group)
    dist.all_gather_into_tensor(all_tiles, tiles, group=group)
    return _as_nvfp4(all_codes, all_tiles, s_dec)


def exact_dequantize(q: NVFP4Tensor, amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight in ``dtype``, with its largest magnitude set back to ``amax``.

    ``dequantize`` gives ``6 * 448 * S_dec`` for the largest elements, which can differ from
    ``amax`` in the last FP32 bit; pinning it makes a re-quantization find the same tensor
    scale. (Those elements still quantize to code 6 in a tile of scale 448.)
    """
    w = dequantize(q)
    top = w.abs().amax() if w.numel() else w.new_zeros(())
    w = torch.where((w.abs() == top) & (top > 0), w.sign() * amax.to(w.dtype), w)
    return w.to(dtype)


def _exact_dequantize_tiles(codes, tiles, s_dec, amax, dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`exact_dequantize` from codes and one scale a tile: one Triton pass on CUDA (the
    FSDP2 post-all-gather runs eagerly, where the reference's FP32 passes cost a step dearly).
    With ``out``, written into it (``exact_dequantize_2d``'s ``out``; a copy on the reference path)."""
    from .ops import _fast_path_available

    if _fast_path_available("exact_dequantize", codes):
        from .kernels.triton_dequant import exact_dequantize_2d

        return exact_dequantize_2d(codes, tiles, s_dec, amax, dtype, out=out)
    weight = exact_dequantize(_as_nvfp4(codes, tiles, s_dec), amax, dtype)
    return weight if out is None else out.copy_(weight)


# -- FSDP2 all-gather extension -----------------------------------------------------------

# Ops that FSDP2 applies to a parameter's local tensor when it shards, pads and moves it,
# and that must keep the subclass; every other op sees the plain tensor.
_KEEP_SUBCLASS = {
    torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.view.default,
    torch.ops.aten._unsafe_view.default, torch.ops.aten.as_strided.default, torch.ops.aten.slice.Tensor,
    torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default, torch.ops.aten.new_zeros.default,
    torch.ops.aten.new_empty.default, torch.ops.aten.empty_like.default, torch.ops.aten.zeros_like.default,
    torch.ops.aten.clone.default, torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default,
    torch.ops.aten._pin_memory.default,
}


class NVFP4AllGatherWeight(torch.Tensor):
    """A weight shard (FSDP2's local tensor) that FSDP2 all-gathers as NVFP4.

    It behaves as the plain tensor it wraps (the optimizer updates that tensor in place).
    ``fsdp_pre_all_gather`` quantizes the shard in 16x16 tiles with the global amax (an
    all-reduce over the shard group, or the value :func:`precompute_amax` cached for this
    version of the weight) and hands FSDP2 the FP4 codes and the tile scales;
    ``fsdp_post_all_gather`` dequantizes the gathered weight exactly (:func:`exact_dequantize`),
    in the parameter dtype (FSDP2's ``param_dtype`` under mixed precision).

    The graph quantizes that unsharded weight again for its fprop and dgrad GEMMs. This gives
    the gathered codes (up to the sign of zero codes), tile scales and tensor scale again, so
    the GEMMs equal those of the plain all-gather bit for bit, whenever every nonzero tile's
    E4M3 scale is a normal number, i.e. no 16x16 tile's amax is below about 1/28,000 of the
    weight's amax. A tile below that (subnormal scale) is re-quantized slightly differently.
    """

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, data.size(), strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            layout=data.layout, device=data.device, requires_grad=data.requires_grad)

    def __init__(self, data: torch.Tensor):
        self._data = data
        self._amax: torch.Tensor | None = None
        self._amax_key: tuple | None = None  # (weight version, dtype) the cached amax is of

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        args, kwargs = pytree.tree_map_only(cls, lambda t: t._data, (args, kwargs or {}))
        out = func(*args, **kwargs)
        if func not in _KEEP_SUBCLASS:
            return out
        return pytree.tree_map_only(torch.Tensor, cls, out)

    def __tensor_flatten__(self):
        return ["_data"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return NVFP4AllGatherWeight(inner["_data"])

    def __repr__(self):
        return f"NVFP4AllGatherWeight({self._data!r})"

    def _cached_amax(self, dtype: torch.dtype) -> torch.Tensor | None:
        return self._amax if self._amax_key == (self._data._version, dtype) else None

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        dtype = getattr(mp_policy, "param_dtype", None) or self.dtype
        shard = self._data.to(dtype)
        amax = self._cached_amax(dtype)
        if amax is None:
            amax = _global_amax(shard, mesh.get_group())
        codes, tiles, s_dec = quantize_2d_with_amax(shard, amax)
        return (codes, tiles), (s_dec, amax)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        codes, tiles = all_gather_outputs
        s_dec, amax = metadata
        if out is not None:  # FSDP2's unsharded parameter, from the second all-gather on: fill it in place
            with torch.no_grad():
                _exact_dequantize_tiles(codes, tiles, s_dec, amax, param_dtype, out=out)
            return None
        weight = _exact_dequantize_tiles(codes, tiles, s_dec, amax, param_dtype)
        return weight, (weight,)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def nvfp4_all_gather_weights(model: nn.Module) -> dict[str, NVFP4AllGatherWeight]:
    """The weights of ``model`` that FSDP2 all-gathers as NVFP4, by module path."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and isinstance(_local(weight), NVFP4AllGatherWeight):
            out[name] = _local(weight)
    return out


ONE_RANK = "one rank: nothing is all-gathered"


def eligible_weights(model: nn.Module, options: dict | None = None, world_size: int | None = None) -> dict[str, str | None]:
    """For every ``nn.Linear`` of ``model``: None if its weight can be all-gathered as NVFP4
    under these backend ``options``, else why not. Eligible: a linear the backend quantizes
    with the NVFP4 recipe and 2D weights (not an output head, not tied, not kept in high
    precision by the policy), whose weight tiles into 16x16 and shards along dim 0 into
    ``world_size`` equal parts of whole tiles.
    """
    from passes.quantize_gemms import HEAD_NAMES, repeated_blocks

    from .options import BackendOptions

    config = BackendOptions.from_dict(options)
    world = world_size or (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    paths = [name for name, _ in model.named_modules()]
    blocks = repeated_blocks(paths)
    verdicts = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        recipe, reason = config.policy.resolve(name, blocks)
        rows, k = module.weight.shape
        if name.split(".")[-1] in HEAD_NAMES:
            reason = "output head"
        elif uses.get(id(module.weight), 0) > 1:
            reason = "tied weight"
        elif reason is None and recipe.format != "nvfp4":
            reason = f"format {recipe.format}"
        elif reason is None and not recipe.weight_2d:
            reason = "1D weight scaling: fprop and dgrad quantize different tensors"
        elif reason is None and world == 1:
            # FSDP2 skips the all-gather on one rank and reads a single all-gather input, which
            # an extension handing over codes and scales does not fit; there is nothing to save.
            reason = ONE_RANK
        elif reason is None and (k % TILE or rows % (TILE * world)):
            reason = f"weight {[rows, k]} does not shard into {world} parts of whole {TILE}x{TILE} tiles"
        verdicts[name] = reason
    return verdicts


def enable_nvfp4_all_gather(model: nn.Module, options: dict | None = None, world_size: int | None = None) -> list[str]:
    """Opt in to the NVFP4 weight all-gather: call before ``fully_shard``, with the options
    given to ``torch.compile(..., backend="nvfp4", options=...)``. Wraps the eligible weights
    (:func:`eligible_weights`) in :class:`NVFP4AllGatherWeight`; returns their module paths.
    """
    enabled = []
    verdicts = eligible_weights(model, options, world_size)
    if ONE_RANK in verdicts.values():
        log.warning("nvfp4: NVFP4 all-gather not enabled: %s", ONE_RANK)
    for name, reason in verdicts.items():
        if reason is not None:
            continue
        module = model.get_submodule(name)
        weight = module.weight
        if isinstance(_local(weight), NVFP4AllGatherWeight):
            enabled.append(name)
            continue
        module.weight = nn.Parameter(NVFP4AllGatherWeight(weight.data), requires_grad=weight.requires_grad)
        enabled.append(name)
    global fp4_all_gather_enabled
    fp4_all_gather_enabled = fp4_all_gather_enabled or bool(enabled)
    return enabled


#: Set once ``enable_nvfp4_all_gather`` has wrapped a weight in this process. The graph pass then
#: keeps FP4 codes for every GEMM operand (``passes/bf16_operands.py`` off): with the BF16
#: operands, FSDP2 + this all-gather peaked 2.5 GiB higher for the 1342M GPT on 2 x H200
#: (bench/RESULTS.md), a cause not yet found.
fp4_all_gather_enabled = False


@torch.no_grad()
def precompute_amax(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """One all-reduce for the amaxes of every NVFP4-gathered weight (call after the optimizer
    step); the next all-gathers use them instead of one all-reduce per weight and gather.
    ``dtype``: FSDP2's ``param_dtype`` under mixed precision (the weights are quantized in it).
    A cached amax is used only while the weight is unchanged (its version counter)."""
    groups: dict[object, list[NVFP4AllGatherWeight]] = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if w is not None and isinstance(_local(w), NVFP4AllGatherWeight):
            mesh = getattr(w, "device_mesh", None)
            groups.setdefault(mesh.get_group() if mesh is not None else None, []).append(_local(w))
    for group, members in groups.items():
        amaxes = torch.stack([local_amax(m._data.to(dtype or m.dtype)) for m in members])
        if group is not None:
            dist.all_reduce(amaxes, op=dist.ReduceOp.MAX, group=group)
        for m, a in zip(members, amaxes):
            m._amax, m._amax_key = a, (m._data._version, dtype or m.dtype)


# -- counting the bytes collectives move --------------------------------------------------

@dataclass
class CommBytes:
    """Bytes handed to collectives on this rank, by kind: ``input`` is what this rank
    contributes, ``output`` what it receives into (an all-gather's whole tensor)."""

    calls: dict[str, int] = field(default_factory=dict)
    input: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, inp: torch.Tensor | None, out: torch.Tensor | None) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        for store, t in ((self.input, inp), (self.output, out)):
            if t is not None:
                store[kind] = store.get(kind, 0) + t.numel() * t.element_size()

    def to_dict(self) -> dict:
        return {"calls": dict(self.calls), "input": dict(self.input), "output": dict(self.output)}


# name -> (kind, index of the argument this rank contributes, index of the one it receives into)
_COUNTED = {"all_gather_single": ("all_gather", 1, 0), "all_gather_into_tensor": ("all_gather", 1, 0),
            "reduce_scatter_single": ("reduce_scatter", 1, 0), "reduce_scatter_tensor": ("reduce_scatter", 1, 0),
            "all_reduce": ("all_reduce", 0, 0)}


def _counting(original, kind: str, inp: int, out: int, counter: CommBytes):
    signature = inspect.signature(original)
    names = list(signature.parameters)

    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        counter.add(kind, bound.get(names[inp]), bound.get(names[out]))
        return original(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_collectives(counter: CommBytes | None = None):
    """Count the bytes of ``torch.distributed`` all-gathers, reduce-scatters and all-reduces
    called from Python (FSDP2's collectives, the amax all-reduces). DDP's gradient all-reduce
    runs in C++: count it with :func:`counting_allreduce_hook`."""
    counter = counter if counter is not None else CommBytes()
    originals = {name: getattr(dist, name) for name in _COUNTED if hasattr(dist, name)}
    try:
        for name, original in originals.items():
            setattr(dist, name, _counting(original, *_COUNTED[name], counter))
        yield counter
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def counting_allreduce_hook(counter: CommBytes):
    """A DDP communication hook: the default averaging all-reduce, counting each bucket."""

    def hook(state, bucket):
        buffer = bucket.buffer()
        counter.add("ddp_all_reduce", buffer, buffer)
        buffer.div_(dist.get_world_size(state))
        work = dist.all_reduce(buffer, group=state, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    return hook


def bf16_equivalent_bytes(weights: dict[str, NVFP4AllGatherWeight], world: int) -> tuple[int, int]:
    """(NVFP4 bytes, 16-bit bytes) one full all-gather of these weights puts in each rank's
    output: codes and one scale per 16x16 tile, against two bytes a value."""
    fp4 = bf16 = 0
    for w in weights.values():
        n = w.shape[0] * world * w.shape[1]
        fp4 += n // 2 + n // (TILE * TILE)
        bf16 += 2 * n
    return fp4, bf16


__all__ = [
    "CommBytes", "NVFP4AllGatherWeight", "all_gather_nvfp4", "bf16_equivalent_bytes", "count_collectives",
    "counting_allreduce_hook", "eligible_weights", "enable_nvfp4_all_gather", "exact_dequantize", "local_amax",
    "model_context", "nvfp4_all_gather_weights", "precompute_amax", "quantize_2d_with_amax", "seed_per_rank",
    "warn_if_ranks_share_sr_noise",
]
