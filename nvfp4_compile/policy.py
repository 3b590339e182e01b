"""Policy files: which GEMMs run in NVFP4, which stay in high precision, and how.

A policy is TOML (read with the standard library's ``tomllib``) or the same structure as
a dict. Every key is optional::

    [recipe]                        # the defaults for every linear layer
    format = "nvfp4"                # "nvfp4" | "mxfp4" | "bf16"
    rht = ["wgrad"]                 # GEMMs whose operands get the 16-point RHT (or true/false)
    stochastic_rounding = ["gradient"]  # operand kinds rounded stochastically (or true/false)
    weight_2d = true                # 16x16 weight scaling, shared by fprop and dgrad

    [high_precision]                # sensitive layers, kept in BF16 (the model's dtype)
    modules = ["*.router"]          # globs on module paths as named_modules() prints them
    first_blocks = 2                # an int counts repeated blocks (layers.<i>, h.<i>, ...);
    last_blocks = 0.15              # a float in (0, 1) is a fraction of them, rounded up

    [[override]]                    # per-module settings, applied in order: LATER ENTRIES WIN
    modules = ["model.layers.*.mlp.down_proj"]
    format = "bf16"                 # any [recipe] key

The output head, embeddings and attention's batched matmuls always stay in high precision.
A policy is validated whole before anything is applied: an unknown key, a wrong type or
value raises :class:`PolicyError` naming the file, the line and the key.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .recipe import Recipe

RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
HIGH_PRECISION_KEYS = ("modules", "first_blocks", "last_blocks")
TOP_LEVEL_KEYS = ("recipe", "high_precision", "override")


class PolicyError(ValueError):
    """A policy that cannot be applied; the message names the file, line and key."""


@dataclass(frozen=True)
class Override:
    modules: tuple[str, ...]
    settings: tuple[tuple[str, object], ...]  # recipe key -> value, in file order
    where: str  # "file:line" of the [[override]] table
    key_where: tuple[tuple[str, str], ...] = ()  # recipe key -> "file:line"


@dataclass(frozen=True)
class Policy:
    recipe: Recipe = field(default_factory=Recipe)
    high_precision_modules: tuple[str, ...] = ()
    first_blocks: int | float = 0
    last_blocks: int | float = 0.15
    overrides: tuple[Override, ...] = ()
    source: str = "<options>"
    locations: tuple[tuple[str, str], ...] = ()  # key path -> "file:line", for messages

    def where(self, key: str) -> str:
        return dict(self.locations).get(key, self.source)

    def to_dict(self) -> dict:
        """The policy as a dict that :func:`load_policy` reads back to an equal policy."""
        out = {"recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.recipe).items()},
               "high_precision": {"modules": list(self.high_precision_modules),
                                  "first_blocks": self.first_blocks, "last_blocks": self.last_blocks}}
        if self.overrides:
            out["override"] = [{"modules": list(o.modules), **{k: (list(v) if isinstance(v, tuple) else v)
                                                               for k, v in o.settings}} for o in self.overrides]
        return out

    def cache_key(self) -> str:
        """The content, not where it came from."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def block_counts(self, count: int) -> tuple[int, int]:
        """(first, last) block counts for a stack of ``count`` blocks."""
        def resolve(n):
            return math.ceil(n * count) if isinstance(n, float) else min(n, count)
        return resolve(self.first_blocks), resolve(self.last_blocks)

    def resolve(self, module: str, blocks: tuple[str, int] | None) -> tuple[Recipe, str | None]:
        """The recipe for a linear layer and, if it stays in high precision, why."""
        recipe, reason = self.recipe, None
        for pattern in self.high_precision_modules:
            if fnmatch.fnmatchcase(module, pattern):
                reason = f"high_precision pattern {pattern!r} ({self.where('high_precision.modules')})"
                break
        if reason is None and blocks is not None:
            prefix, count = blocks
            first, last = self.block_counts(count)
            m = re.match(re.escape(prefix) + r"\.(\d+)(\.|$)", module)
            if m and int(m.group(1)) < first:
                reason = f"in the first {first} of {count} blocks of {prefix}"
            elif m and int(m.group(1)) >= count - last:
                reason = f"in the last {last} of {count} blocks of {prefix}"
        for override in self.overrides:
            if any(fnmatch.fnmatchcase(module, p) for p in override.modules):
                settings = dict(override.settings)
                recipe = replace(recipe, **settings)
                if "format" in settings:
                    reason = f"override at {override.where}" if settings["format"] == "bf16" else None
        if reason is None and recipe.format == "bf16":
            reason = f"recipe format is bf16 ({self.where('recipe.format')})"
        return recipe, reason

    def overrides_setting(self, module: str, keys) -> tuple[str, str] | None:
        """(key, "file:line") of the last override naming ``module`` that sets one of ``keys``."""
        found = None
        for i, override in enumerate(self.overrides):
            if any(fnmatch.fnmatchcase(module, p) for p in override.modules):
                for key, _ in override.settings:
                    if key in keys:
                        found = (f"override[{i}].{key}", dict(override.key_where).get(key, override.where))
        return found

    def unmatched_patterns(self, modules) -> list[tuple[str, str, str]]:
        """(pattern, key, where) for every module pattern that matches none of ``modules``."""
        modules = list(modules)
        found = []
        candidates = [(p, "high_precision.modules", self.where("high_precision.modules"))
                      for p in self.high_precision_modules]
        candidates += [(p, "override.modules", o.where) for o in self.overrides for p in o.modules]
        for pattern, key, where in candidates:
            if not any(fnmatch.fnmatchcase(m, pattern) for m in modules):
                found.append((pattern, key, where))
        return found


def _key_lines(text: str) -> dict[str, int]:
    """``"table.key"`` (and ``"override[i].key"``) -> line number, from the TOML source."""
    lines, table, overrides = {}, "", -1
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if m := re.fullmatch(r"\[\[\s*([\w.]+)\s*\]\]", line):
            overrides += m.group(1) == "override"
            table = f"override[{overrides}]" if m.group(1) == "override" else m.group(1)
            lines.setdefault(table, number)
        elif m := re.fullmatch(r"\[\s*([\w.]+)\s*\]", line):
            table = m.group(1)
            lines.setdefault(table, number)
        elif m := re.match(r"([\w\"'.-]+)\s*=", line):
            key = m.group(1).strip("\"'")
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def load_policy(policy: str | Path | dict) -> Policy:
    """Read and validate a policy from a TOML file path or a dict."""
    if isinstance(policy, dict):
        return _parse(policy, "<policy dict>", {})
    path = Path(policy)
    try:
        text = path.read_text()
    except OSError as err:
        raise PolicyError(f"{path}: cannot read the policy file ({err.strerror})") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{path}: not valid TOML: {err}") from err
    return _parse(data, str(path), _key_lines(text))


def _parse(data: dict, source: str, lines: dict[str, int]) -> Policy:
    def where(key: str) -> str:
        line = lines.get(key) or lines.get(key.split(".")[0])
        return f"{source}:{line}" if line else source

    def fail(key: str, message: str):
        raise PolicyError(f"{where(key)}: key '{key}': {message}")

    def check_keys(table: dict, prefix: str, valid):
        if not isinstance(table, dict):
            fail(prefix, f"must be a table, got {type(table).__name__}")
        for key in table:
            if key not in valid:
                fail(f"{prefix}.{key}" if prefix else key, f"unknown key; valid keys are {list(valid)}")

    def recipe_settings(table: dict, prefix: str) -> dict:
        settings = {k: v for k, v in table.items() if k in RECIPE_KEYS}
        for key, value in settings.items():
            try:
                Recipe(**{key: value})
            except (TypeError, ValueError) as err:
                fail(f"{prefix}.{key}", str(err))
        return settings

    def module_list(value, key: str) -> tuple[str, ...]:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            fail(key, f"must be a glob string or a list of them, got {value!r}")
        return tuple(value)

    def block_count(value, key: str):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(key, f"must be a block count (int >= 0) or a fraction (float in [0, 1)), got {value!r}")
        if isinstance(value, int) and value < 0:
            fail(key, f"a block count must be >= 0, got {value}")
        if isinstance(value, float) and not 0 <= value < 1:
            fail(key, f"a fraction of blocks must be in [0, 1), got {value}")
        return value

    check_keys(data, "", TOP_LEVEL_KEYS)
    recipe_table = data.get("recipe", {})
    check_keys(recipe_table, "recipe", RECIPE_KEYS)
    recipe = Recipe(**recipe_settings(recipe_table, "recipe"))

    hp = data.get("high_precision", {})
    check_keys(hp, "high_precision", HIGH_PRECISION_KEYS)
    modules = module_list(hp.get("modules", []), "high_precision.modules")
    first = block_count(hp.get("first_blocks", 0), "high_precision.first_blocks")
    last = block_count(hp.get("last_blocks", 0.15), "high_precision.last_blocks")

    raw_overrides = data.get("override", [])
    if not isinstance(raw_overrides, list):
        fail("override", "must be an array of tables ([[override]])")
    overrides = []
    for i, entry in enumerate(raw_overrides):
        prefix = f"override[{i}]"
        check_keys(entry, prefix, ("modules", *RECIPE_KEYS))
        if "modules" not in entry:
            fail(prefix, "needs a 'modules' key naming the modules it applies to")
        settings = recipe_settings(entry, prefix)
        overrides.append(Override(module_list(entry["modules"], f"{prefix}.modules"),
                                  tuple(settings.items()), where(prefix),
                                  tuple((k, where(f"{prefix}.{k}")) for k in settings)))

    locations = {"high_precision.modules": where("high_precision.modules"), "recipe.format": where("recipe.format")}
    return Policy(recipe, modules, first, last, tuple(overrides), source, tuple(sorted(locations.items())))
