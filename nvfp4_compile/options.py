"""Options of ``torch.compile(model, backend="nvfp4", options={...})``, validated up front."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .recipe import Recipe


@dataclass(frozen=True)
class BackendOptions:
    """Every option the backend takes.

    Attributes:
        bf16_modules: glob patterns on module paths as ``named_modules()`` prints them
            (``"layers.3.*"``, ``"*.mlp.down_proj"``); matching linears stay in high precision.
        recipe: the recipe switches (``format``, ``rht``, ``stochastic_rounding``, ``weight_2d``).
        bf16_last_blocks_fraction: the share of repeated blocks, counted from the end, whose
            linears stay in high precision (rounded up; the paper's guidance is about 15%).
        policy: a policy file path or dict (its format belongs to the policy module).
        dump_dir: where graph dumps go.
        check_finite: raise, naming the module and GEMM role, when NaN/Inf reaches a quantizer.
        quantize_inference: quantize the forward GEMMs of graphs with no backward.
    """

    bf16_modules: tuple[str, ...] = ()
    recipe: Recipe = field(default_factory=Recipe)
    bf16_last_blocks_fraction: float = 0.15
    policy: str | dict | None = None
    dump_dir: str | None = None
    check_finite: bool = False
    quantize_inference: bool = True

    @classmethod
    def from_dict(cls, options: dict | None) -> "BackendOptions":
        options = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown nvfp4 backend option(s) {unknown}; valid options are {valid}")
        if "recipe" in options:
            recipe = options["recipe"]
            if isinstance(recipe, dict):
                recipe_keys = [f.name for f in fields(Recipe)]
                bad = sorted(set(recipe) - set(recipe_keys))
                if bad:
                    raise ValueError(f"unknown recipe key(s) {bad}; valid recipe keys are {recipe_keys}")
                options["recipe"] = Recipe(**recipe)
            elif not isinstance(recipe, Recipe):
                raise TypeError(f"option 'recipe' must be a dict or a Recipe, got {type(recipe).__name__}")
        patterns = options.get("bf16_modules", ())
        if isinstance(patterns, str):
            patterns = (patterns,)
        if not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"option 'bf16_modules' must be a list of glob strings, got {patterns!r}")
        options["bf16_modules"] = tuple(patterns)
        fraction = options.get("bf16_last_blocks_fraction", 0.15)
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
            raise ValueError(f"option 'bf16_last_blocks_fraction' must be a number in [0, 1], got {fraction!r}")
        policy = options.get("policy")
        if policy is not None and not isinstance(policy, (str, Path, dict)):
            raise TypeError(f"option 'policy' must be a path or a dict, got {type(policy).__name__}")
        if isinstance(policy, Path):
            options["policy"] = str(policy)
        dump_dir = options.get("dump_dir")
        if dump_dir is not None and not isinstance(dump_dir, (str, Path)):
            raise TypeError(f"option 'dump_dir' must be a path, got {type(dump_dir).__name__}")
        if dump_dir is not None:
            options["dump_dir"] = str(dump_dir)
        for name in ("check_finite", "quantize_inference"):
            if name in options and not isinstance(options[name], bool):
                raise TypeError(f"option {name!r} must be a bool, got {options[name]!r}")
        return cls(**options)

    def cache_key(self) -> str:
        """Everything that changes what the pass does, as canonical text."""
        return json.dumps(asdict(self), sort_keys=True, default=str)
