"""Options of ``torch.compile(model, backend="nvfp4", options={...})``, validated up front."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .policy import Policy, load_policy
from .recipe import Recipe

DUMP_DIR_ENV = "NVFP4_COMPILE_DUMP_DIR"
OPTION_KEYS = ("bf16_modules", "recipe", "bf16_last_blocks_fraction", "policy", "dump_dir", "check_finite",
               "quantize_inference", "cuda_graphs")


@dataclass(frozen=True)
class BackendOptions:
    """Every option the backend takes, resolved into one :class:`~nvfp4_compile.policy.Policy`.

    Options (all optional):
        bf16_modules: glob patterns on module paths as ``named_modules()`` prints them
            (``"layers.3.*"``, ``"*.mlp.down_proj"``); matching linears stay in high precision.
            Added to the policy's ``[high_precision] modules``.
        recipe: recipe overrides (``format``, ``rht``, ``stochastic_rounding``, ``weight_2d``),
            applied over the policy's ``[recipe]``.
        bf16_last_blocks_fraction: the share of repeated blocks, counted from the end, kept in
            high precision (rounded up); replaces the policy's ``last_blocks``. Default 0.15.
        policy: a policy file path or dict (see ``nvfp4_compile.policy``).
        dump_dir: where graph dumps go; default: the ``NVFP4_COMPILE_DUMP_DIR`` environment variable.
        check_finite: raise, naming the module and GEMM role, when NaN/Inf reaches a quantizer.
        quantize_inference: quantize the forward GEMMs of graphs with no backward (default True).
        cuda_graphs: run each compiled graph as a CUDA graph (Inductor's CUDA graph trees), as
            ``mode="reduce-overhead"`` does; ``torch.compile`` takes a mode or options, not both,
            so this is the way to have both. It removes the host's cost of launching the many
            small quantize kernels. Default False.
    """

    policy: Policy = field(default_factory=Policy)
    dump_dir: str | None = None
    check_finite: bool = False
    quantize_inference: bool = True
    cuda_graphs: bool = False

    @classmethod
    def from_dict(cls, options: dict | None) -> "BackendOptions":
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown nvfp4 backend option(s) {unknown}; valid options are {list(OPTION_KEYS)}")

        policy = options.get("policy")
        if policy is not None and not isinstance(policy, (str, Path, dict)):
            raise TypeError(f"option 'policy' must be a path or a dict, got {type(policy).__name__}")
        resolved = load_policy(policy) if policy is not None else Policy()

        recipe = options.get("recipe", {})
        if isinstance(recipe, Recipe):
            resolved = replace(resolved, recipe=recipe)
        elif isinstance(recipe, dict):
            valid = [f.name for f in fields(Recipe)]
            bad = sorted(set(recipe) - set(valid))
            if bad:
                raise ValueError(f"unknown recipe key(s) {bad}; valid recipe keys are {valid}")
            resolved = replace(resolved, recipe=replace(resolved.recipe, **recipe))
        else:
            raise TypeError(f"option 'recipe' must be a dict or a Recipe, got {type(recipe).__name__}")

        patterns = options.get("bf16_modules", ())
        patterns = (patterns,) if isinstance(patterns, str) else patterns
        if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"option 'bf16_modules' must be a list of glob strings, got {patterns!r}")
        if patterns:
            resolved = replace(resolved, high_precision_modules=resolved.high_precision_modules + tuple(patterns))

        if "bf16_last_blocks_fraction" in options:
            fraction = options["bf16_last_blocks_fraction"]
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ValueError(f"option 'bf16_last_blocks_fraction' must be a number in [0, 1], got {fraction!r}")
            resolved = replace(resolved, last_blocks=float(fraction) if fraction < 1 else 1.0)

        dump_dir = options.get("dump_dir", os.environ.get(DUMP_DIR_ENV) or None)
        if dump_dir is not None and not isinstance(dump_dir, (str, Path)):
            raise TypeError(f"option 'dump_dir' must be a path, got {type(dump_dir).__name__}")
        for name in ("check_finite", "quantize_inference", "cuda_graphs"):
            if name in options and not isinstance(options[name], bool):
                raise TypeError(f"option {name!r} must be a bool, got {options[name]!r}")
        return cls(policy=resolved, dump_dir=str(dump_dir) if dump_dir is not None else None,
                   check_finite=options.get("check_finite", False),
                   quantize_inference=options.get("quantize_inference", True),
                   cuda_graphs=options.get("cuda_graphs", False))

    @property
    def recipe(self) -> Recipe:
        return self.policy.recipe

    def cache_key(self) -> str:
        """Everything that changes the compiled graph, as canonical text (the policy's content,
        not its path; dumps change no graph)."""
        return json.dumps({"policy": self.policy.cache_key(), "check_finite": self.check_finite,
                           "quantize_inference": self.quantize_inference}, sort_keys=True)
