"""The ``nvfp4-compile`` command.

``nvfp4-compile plan MODULE:FACTORY [options]`` builds the model, compiles it with
``backend="nvfp4"``, runs one forward and backward pass on an example input (no optimizer
step: nothing is trained) and prints the per-GEMM decision table with totals. It is how a
user checks a policy before a long run. Exit codes: 0 on success, 2 on a bad policy or bad
arguments (with the message).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
from rich.console import Console

from . import decisions, demo
from .options import BackendOptions
from .policy import PolicyError

DTYPES = {"long": torch.long, "int": torch.int, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def load_object(spec: str):
    """``package.module:name`` or ``path/to/file.py:name`` -> the object."""
    if ":" not in spec:
        raise ValueError(f"expected MODULE:NAME, got {spec!r}")
    module_name, name = spec.rsplit(":", 1)
    if module_name.endswith(".py"):
        path = Path(module_name)
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None:
            raise ValueError(f"cannot load {path}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {name!r}") from None


def _example_input(args, model):
    if args.input:
        return load_object(args.input)()
    if not args.shape:
        raise ValueError("give an example input: --input MODULE:FACTORY or --shape D0,D1,...")
    shape = tuple(int(d) for d in args.shape.split(","))
    dtype = DTYPES[args.dtype]
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.randint(0, args.high, shape, dtype=dtype)


def _scalar(out):
    if hasattr(out, "loss") and out.loss is not None:
        return out.loss
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    return out.float().square().mean()


def _options(args) -> dict:
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.policy:
        options["policy"] = args.policy
    return options


def _policy_error(err: BaseException) -> PolicyError | None:
    while err is not None:
        if isinstance(err, PolicyError):
            return err
        err = err.__cause__ or err.__context__
    return None


def plan(args) -> int:
    console, errors = Console(), Console(stderr=True)
    try:
        options = _options(args)
        BackendOptions.from_dict(options)  # validate before building anything
        model = load_object(args.model)()
        example = _example_input(args, model)
    except (PolicyError, ValueError, TypeError) as err:
        errors.print(f"[red]nvfp4-compile plan:[/red] {err}")
        return 2
    torch._dynamo.reset()
    decisions.reset()
    compiled = torch.compile(model, backend="nvfp4", options=options)
    try:
        out = compiled(**example) if isinstance(example, dict) else compiled(*(
            example if isinstance(example, tuple) else (example,)))
        loss = _scalar(out)
        if loss.requires_grad:
            loss.backward()
    except Exception as err:  # a policy made impossible by the model shows up during compilation
        policy_error = _policy_error(err)
        if policy_error is None:
            raise
        errors.print(f"[red]nvfp4-compile plan:[/red] {policy_error}")
        return 2
    explanation = decisions.explain()
    console.print(explanation.table())
    console.print(explanation.totals_text())
    if args.json:
        Path(args.json).write_text(json.dumps({"gemms": [d.to_dict() for d in explanation],
                                               "totals": explanation.totals()}, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nvfp4-compile", description="NVFP4 pretraining through torch.compile")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print what the backend would quantize, without training")
    p.add_argument("model", help="MODULE:FACTORY (or path/to/file.py:FACTORY) returning the model")
    p.add_argument("--input", help="MODULE:FACTORY returning the example input (tensor, tuple or dict)")
    p.add_argument("--shape", help="example input shape, e.g. 2,128")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="long")
    p.add_argument("--high", type=int, default=256, help="token ids are drawn from [0, HIGH)")
    p.add_argument("--policy", help="a policy TOML file")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option; VALUE is JSON (e.g. --option 'bf16_modules=[\"*.head\"]')")
    p.add_argument("--json", help="also write the decisions and totals to this JSON file")
    d = sub.add_parser("demo", help="train a small GPT in high precision and in NVFP4 and compare them (CPU or GPU)")
    demo.add_arguments(d)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.main_from_args(args)
    return plan(args)


if __name__ == "__main__":
    sys.exit(main())
