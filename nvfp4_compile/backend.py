"""The ``nvfp4`` torch.compile backend: wires the graph pass into Inductor.

``torch.compile(model, backend="nvfp4", options={...})`` calls :func:`nvfp4_backend` for
every graph Dynamo captures. It reads which graph inputs are parameters (and of which
module) off the Dynamo graph, then hands the graph to Inductor's ``compile_fx`` with
our pass as ``joint_custom_pre_pass`` (composed with any pass the user set there),
through ``config_patches`` so that the lazily compiled backward sees it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from passes.gemm_roles import ParamInfo, param_info_from_source
from passes.quantize_gemms import QuantizeGemmsPass

from . import decisions, distributed, dumps, ops  # noqa: F401  (ops registers the nvfp4:: operators)
from .options import BackendOptions

log = logging.getLogger(__name__)


class ComposedPass(CustomGraphPass):
    """Runs the user's joint passes, then ours; its uuid covers all of them."""

    def __init__(self, passes):
        self.passes = passes

    def __call__(self, graph):
        for p in self.passes:
            p(graph)

    def uuid(self):
        h = hashlib.sha256()
        for p in self.passes:
            uuid = p.uuid() if isinstance(p, CustomGraphPass) else None
            if uuid is None:
                return None  # a pass without a uuid: Inductor must bypass the cache
            h.update(str(uuid).encode())
        return h.hexdigest()


def _user_joint_passes() -> list:
    existing = inductor_config.joint_custom_pre_pass
    if existing is None:
        return []
    return list(existing) if isinstance(existing, (list, tuple)) else [existing]


def graph_params(gm: torch.fx.GraphModule) -> list[ParamInfo | None]:
    """For each placeholder of the Dynamo graph, in order: the parameter it holds, or None."""
    infos = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        grapharg = node.meta.get("grapharg")
        example = getattr(grapharg, "example", None)
        info = None
        if isinstance(example, torch.nn.Parameter) and grapharg.source is not None:
            source = grapharg.source.name
            source = source() if callable(source) else source
            info = param_info_from_source(source, example.shape)
        infos.append(info)
    return infos


def _decisions_file(our_pass: QuantizeGemmsPass, gm: torch.fx.GraphModule, example_inputs) -> Path:
    """Where this graph's decisions are kept, so that ``explain()`` survives Inductor cache hits
    (a hit skips the joint graph, and with it the pass)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    h = hashlib.sha256(our_pass.uuid().encode())
    h.update(gm.code.encode())
    for t in example_inputs:
        h.update(repr((getattr(t, "shape", t), getattr(t, "dtype", None))).encode())
    return Path(cache_dir()) / "nvfp4_decisions" / f"{h.hexdigest()}.json"


def nvfp4_backend(gm: torch.fx.GraphModule, example_inputs, *, options: dict | None = None, mode=None):
    """The ``nvfp4`` backend. ``options``: see :class:`nvfp4_compile.options.BackendOptions`;
    ``mode``: Inductor's (``"reduce-overhead"`` turns on CUDA graphs, as the ``cuda_graphs`` option does)."""
    config = BackendOptions.from_dict(options)
    graph_id = decisions.new_graph_id()
    # Module paths from the model's root, and all of them: a DDP bucket or an FSDP2 block
    # sees only part of the model (see nvfp4_compile.distributed).
    params, model_modules = distributed.model_context(gm, graph_params(gm))
    our_pass = QuantizeGemmsPass(config, params, graph_id, model_modules=model_modules)
    joint = ComposedPass([*_user_joint_passes(), our_pass])
    log.debug("nvfp4: compiling graph %d", graph_id)
    patches = {"joint_custom_pre_pass": joint}
    if mode is not None:
        from torch._inductor import list_mode_options
        patches.update(list_mode_options(mode))
    if config.cuda_graphs:
        patches["triton.cudagraphs"] = True
    if config.dump_dir is not None:
        # A hit in AOTAutograd's cache skips the joint graph, and with it the graphs to dump.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            compiled = compile_fx(gm, example_inputs, config_patches=patches)
    else:
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
    saved = _decisions_file(our_pass, gm, example_inputs)
    if our_pass.ran:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps([d.to_dict() for d in our_pass.decisions]))
        distributed.warn_if_ranks_share_sr_noise(our_pass.decisions)
    elif saved.exists():  # an Inductor cache hit: the pass did not run this time
        records = [decisions.GemmDecision(**{**d, "graph": graph_id}) for d in json.loads(saved.read_text())]
        decisions.record(records)
        distributed.warn_if_ranks_share_sr_noise(records)
        if config.dump_dir is not None:
            dumps.append_records(config.dump_dir, records)
            log.info("nvfp4: graph %d came from Inductor's cache; its graphs are not re-dumped", graph_id)
    else:
        log.warning("nvfp4: graph %d came from a cache without recorded decisions; explain() will miss it",
                    graph_id)
    return compiled


def register() -> None:
    """Register ``nvfp4`` with Dynamo unless the installed entry point already provides it."""
    from importlib.metadata import entry_points

    if any(ep.name == "nvfp4" for ep in entry_points(group="torch_dynamo_backends")):
        return
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "nvfp4" not in _BACKENDS:
        register_backend(compiler_fn=nvfp4_backend, name="nvfp4")
