"""A GPT-style training step under backend="nvfp4" against the default Inductor backend.

    python bench/train_step.py            # ~1B parameters, sequence 2048, BF16 weights, AdamW (GPU)
    python bench/train_step.py --tiny     # a few-layer model, to check the script on a CPU
    python bench/train_step.py --runs inductor nvfp4 nvfp4:reduce-overhead inductor:reduce-overhead
    python bench/train_step.py --runs inductor nvfp4 nvfp4@plain-host nvfp4@codes   # each improvement off
    python bench/train_step.py --memory --runs inductor nvfp4    # what is live at the peak of a step

Reports tokens/s and peak memory of each run (a backend, and a torch.compile mode after a colon)
and their ratios to the first run, the default Inductor backend.
Targets (issue 5): tokens/s at least 0.87x of Inductor, peak memory at most 0.80x.
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import importlib
import io
import os
import pstats
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import lm_training_step, report, warm_up  # noqa: E402

import nvfp4_compile  # noqa: E402,F401


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def profile(name: str, step, rows: int = 30) -> None:
    """GPU time by kernel over two steps (torch.profiler), largest first, and the GPU's busy time
    per step against the wall time per step (the difference is the GPU waiting for the host)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 2 * 1e3
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 2 / 1e3
    print(f"{name}: GPU time by kernel over 2 steps")
    print(events.table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))
    print(f"{name}: GPU kernels {busy:.1f} ms per step, wall {wall:.1f} ms per step (profiled)")


VARIANT_ENV = {"codes": ("NVFP4_COMPILE_BF16_OPERANDS", "0")}
#: Variants that set a module attribute: (module, attribute, value).
VARIANT_ATTR = {"two-pass": ("nvfp4_compile.kernels.triton_rht_transpose", "PAIR_PASSES", 2),
                "three-pass": ("nvfp4_compile.kernels.triton_rht_transpose", "PAIR_PASSES", 3)}


def host_profile(name: str, step, steps: int = 3, rows: int = 35) -> dict:
    """The host's Python time over ``steps`` steps under cProfile (functions by their own time,
    then by cumulative time), and the wall time per step with and without the profiler. A step
    with more host work than GPU work is bound by the host unless CUDA graphs replay it."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps * 1e3
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    enqueued = (time.perf_counter() - start) / steps * 1e3
    torch.cuda.synchronize()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)
    print(f"{name}: wall {wall:.1f} ms a step; under cProfile the host took {enqueued:.1f} ms a step to enqueue")
    print(text.getvalue())
    return {"wall_ms": wall, "cprofile_enqueue_ms": enqueued}


def memory_at_peak(step, rows: int = 25) -> dict:
    """One step under the allocator's history recording: the allocations live at the step's
    peak, grouped by size and by where they were made (the innermost frame outside torch: a
    line of Inductor's generated code, or of this benchmark), largest groups first. What was
    live before the step (weights, optimizer state) counts as one line. Default mode only: CUDA
    graph replays allocate nothing, so their trace holds no allocations."""
    import linecache
    from collections import defaultdict

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
    try:
        step()
        torch.cuda.synchronize()
        trace = torch.cuda.memory._snapshot()["device_traces"][torch.cuda.current_device()]
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    live, total, peak, at_peak = {}, 0, 0, {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]

    def site(event) -> str:
        for frame in event.get("frames", ()):
            name = frame["filename"]
            if "/torch/" in name or "site-packages" in name or name.startswith("<"):
                continue
            line = linecache.getline(name, frame["line"]).strip()
            if "torchinductor" in name:  # Inductor's generated code: one line per buffer, grouped by what it is
                return "Inductor buffer: " + line.partition("=")[2].strip()[:80]
            return f"{Path(name).name}:{frame['line']} {line[:70]}"
        return "(no frame outside torch: eager ATen ops)"

    groups = defaultdict(lambda: [0, 0])
    for event in at_peak.values():
        g = groups[(event["size"], site(event))]
        g[0] += 1
        g[1] += event["size"]
    ordered = sorted(groups.items(), key=lambda kv: -kv[1][1])
    print(f"live before the step: {before / 2**30:.2f} GiB; allocated in the step at its peak: "
          f"{peak / 2**30:.2f} GiB ({len(at_peak)} allocations); peak {(before + peak) / 2**30:.2f} GiB")
    for (size, where), (count, nbytes) in ordered[:rows]:
        print(f"  {nbytes / 2**30:6.2f} GiB = {count:3d} x {size / 2**20:8.1f} MiB  {where}")
    rest = ordered[rows:]
    if rest:
        print(f"  {sum(g[1][1] for g in rest) / 2**30:6.2f} GiB in {sum(g[1][0] for g in rest)} other allocations")
    return {"before_gib": before / 2**30, "step_peak_gib": peak / 2**30,
            "groups": [[count, size, nbytes, where] for (size, where), (count, nbytes) in ordered]}


def run(name: str, config: dict, steps: int, device: str, profile_steps: bool = False,
        memory: bool = False, host: bool = False) -> dict:
    """One run: ``backend[:mode][@variant,...]``. Variants turn off one improvement to measure it:
    ``plain-host`` the host-time savings of the NVFP4 ops (cached Triton launches, the autograd
    fallthrough), ``codes`` the BF16 operands written by the quantizers (every GEMM operand
    dequantized from FP4 codes, ``NVFP4_COMPILE_BF16_OPERANDS=0``), ``two-pass`` the RHT pairs
    in two passes, the amaxes then both quantizations from one read (``PAIR_PASSES = 2``; by
    default only dY's pair takes two), ``three-pass`` every pair in three (``PAIR_PASSES = 3``)."""

    from nvfp4_compile import ops
    from nvfp4_compile.kernels import launch

    spec, _, variants = name.partition("@")
    variants = set(filter(None, variants.split(",")))
    known = {"plain-host", *VARIANT_ENV, *VARIANT_ATTR}
    if variants - known:
        raise SystemExit(f"unknown variant(s) {sorted(variants - known)} in {name!r}")
    launch.ENABLED = "plain-host" not in variants
    ops.set_autograd_fallthrough("plain-host" not in variants)
    try:
        with contextlib.ExitStack() as patches:
            patches.enter_context(mock.patch.dict(os.environ, dict(VARIANT_ENV[v] for v in variants & set(VARIANT_ENV))))
            for v in variants & set(VARIANT_ATTR):
                module, attr, value = VARIANT_ATTR[v]
                patches.enter_context(mock.patch.object(importlib.import_module(module), attr, value))
            return _run(name, spec, config, steps, device, profile_steps, memory, host)
    finally:
        launch.ENABLED = True
        ops.set_autograd_fallthrough(True)


def _run(name: str, spec: str, config: dict, steps: int, device: str, profile_steps: bool, memory: bool,
         host: bool = False) -> dict:
    backend, _, mode = spec.partition(":")
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = GPT(**config["model"]).to(device=device, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    compiled = torch.compile(model, backend=backend, mode=mode or None)
    batch, seq = config["batch"], config["seq"]
    tokens = torch.randint(0, config["model"]["vocab"], (batch, seq + 1), device=device)

    lm_step = lm_training_step(compiled, opt, tokens)

    def step():
        if mode == "reduce-overhead":  # CUDA graphs: tell the graph trees where each step begins
            torch.compiler.cudagraph_mark_step_begin()
        return lm_step()
    warm_up(step, device, reset_peak=mode != "reduce-overhead")
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = loss.item()  # one synchronization, after the timed steps
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    if profile_steps and device == "cuda":
        profile(name, step)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {steps * batch * seq / elapsed:.0f} tokens/s, peak {peak:.2f} GiB, loss {loss:.4f}", flush=True)
    result = {"tokens_per_s": steps * batch * seq / elapsed, "peak_gib": peak, "loss": loss, "params": params}
    if host and device == "cuda":
        result["host"] = host_profile(name, step)
    if memory and device == "cuda":
        if mode == "reduce-overhead":
            print(f"{name}: no memory breakdown under CUDA graphs (replays allocate nothing)")
        else:
            print(f"{name}: memory at the peak of one step")
            result["memory"] = memory_at_peak(step)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print each run's GPU time by kernel")
    parser.add_argument("--memory", action="store_true",
                        help="print what is live at the peak of one step (runs in default mode)")
    parser.add_argument("--host", action="store_true",
                        help="print each run's host time by Python function (cProfile over 3 steps)")
    parser.add_argument("--runs", nargs="+", default=["inductor", "nvfp4"],
                        help="backend[:mode] to run; the first is the baseline of the ratios")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        config = {"model": dict(vocab=256, dim=64, depth=4, heads=4), "batch": 2, "seq": 64}
    else:  # ~1.1B parameters: 24 blocks of width 2048 with a 32k vocabulary
        config = {"model": dict(vocab=32768, dim=2048, depth=24, heads=16), "batch": 4, "seq": 2048}
    results = {name: run(name, config, args.steps, device, args.profile, args.memory, args.host)
               for name in args.runs}
    base = results[args.runs[0]]
    rows = [[name, r["params"] / 1e6, r["tokens_per_s"], r["peak_gib"], r["loss"],
             r["tokens_per_s"] / base["tokens_per_s"], r["peak_gib"] / base["peak_gib"]]
            for name, r in results.items()]
    report(f"Training step on {device}", ["run", "params (M)", "tokens/s", "peak GiB", "loss",
                                          f"tokens/s / {args.runs[0]}", f"peak / {args.runs[0]}"], rows,
           "train_step", {"config": config, "steps": args.steps,
                          "memory": {name: r["memory"] for name, r in results.items() if "memory" in r}})


if __name__ == "__main__":
    main()
