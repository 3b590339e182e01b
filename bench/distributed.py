"""Data-parallel training step: BF16 (Inductor) against NVFP4, with and without the NVFP4 weight all-gather.

    torchrun --nproc_per_node 2 bench/distributed.py                          # GPUs, NCCL, ~1B GPT, FSDP2
    torchrun --nproc_per_node 2 bench/distributed.py --parallel ddp           # DDP instead of FSDP2
    torchrun --nproc_per_node 2 bench/distributed.py --tiny --device cpu      # gloo smoke test on a CPU

FSDP2 shards every block and the root, keeps FP32 master weights and computes in BF16
(``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), so the plain all-gather moves
BF16 weights. Configurations:

- ``bf16``: ``torch.compile(model)`` with Inductor;
- ``nvfp4``: ``backend="nvfp4"``, weights all-gathered in BF16;
- ``nvfp4 + fp4 all-gather`` (FSDP2 only): the quantized layers' weights all-gathered as FP4
  codes and E4M3 tile scales (``nvfp4_compile.distributed.enable_nvfp4_all_gather``), their
  amaxes reduced in one all-reduce after each optimizer step (``precompute_amax``).

Reports, on rank 0, tokens/s over all ranks and the bytes each rank hands to collectives per
step (all-gather: what it contributes; reduce-scatter and all-reduce: its input), counted
in the Python collective calls (FSDP2) or a DDP communication hook; a rich table and JSON
(``bench/out/distributed_<parallel>_<size>.json``, ``distributed_tiny.json`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nvfp4_compile  # noqa: F401
from bench.common import lm_training_step, report, warm_up
from bench.train_step import GPT
from nvfp4_compile import distributed as ncd

CONFIGS = {"bf16": ("inductor", False), "nvfp4": ("nvfp4", False), "nvfp4 + fp4 all-gather": ("nvfp4", True)}


def build(config: dict, device: torch.device, parallel: str, backend: str, fp4_all_gather: bool, counter):
    torch.manual_seed(0)
    model = GPT(**config["model"]).to(device)
    enabled = []
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if fp4_all_gather:
            enabled = ncd.enable_nvfp4_all_gather(model)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        wrapped = model
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = model.to(torch.bfloat16)
        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped.register_comm_hook(None, ncd.counting_allreduce_hook(counter))
    return model, torch.compile(wrapped, backend=backend), enabled


def profile(name: str, step, device: torch.device, rows: int = 25) -> dict:
    """Two steps under torch.profiler on every rank, printed by rank 0: device time by kernel (NCCL
    kernels run on their own streams, so the sum can exceed the wall time), host time by op, and
    the wall time per step against the compute kernels' time per step (NCCL kernels left out:
    the difference is time the compute stream waits for the host or for a collective)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 2 * 1e3
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    compute = sum(e.device_time for e in kernels if "nccl" not in e.name.lower()) / 2 / 1e3
    nccl = sum(e.device_time for e in kernels if "nccl" in e.name.lower()) / 2 / 1e3
    if dist.get_rank() == 0:
        if device.type == "cuda":
            print(f"{name}: device time by kernel over 2 steps")
            print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))
        print(f"{name}: host time by op over 2 steps")
        print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70))
        print(f"{name}: wall {wall:.1f} ms a step (profiled); compute kernels {compute:.1f} ms, "
              f"NCCL kernels {nccl:.1f} ms a step")
    return {"wall_ms": wall, "compute_kernels_ms": compute, "nccl_kernels_ms": nccl}


def warmed_up_step(name: str, config: dict, device: torch.device, parallel: str, counter):
    """``name``'s model built and compiled, with its optimizer: (the training step, compiled and
    warmed up; the layers whose weights FSDP2 all-gathers as NVFP4)."""
    backend, fp4_all_gather = CONFIGS[name]
    torch._dynamo.reset()
    model, compiled, enabled = build(config, device, parallel, backend, fp4_all_gather, counter)
    ncd.seed_per_rank(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    tokens = torch.randint(0, config["model"]["vocab"], (config["batch"], config["seq"] + 1), device=device)
    after = (lambda: ncd.precompute_amax(model, torch.bfloat16)) if fp4_all_gather else None
    step = lm_training_step(compiled, opt, tokens, after)
    warm_up(step, device)
    return step, enabled


def profile_run(name: str, config: dict, device: torch.device, parallel: str) -> dict:
    """``name`` built, compiled and warmed up again, then profiled (:func:`profile`): after every
    configuration's timed steps, so that no timing follows a profiler session."""
    step, _ = warmed_up_step(name, config, device, parallel, ncd.CommBytes())
    return profile(name, step, device)


def run(name: str, config: dict, steps: int, device: torch.device, parallel: str, memory: bool = False) -> dict:
    counter = ncd.CommBytes()
    step, enabled = warmed_up_step(name, config, device, parallel, counter)
    batch, seq = config["batch"], config["seq"]
    dist.barrier()
    counter.__init__()
    start = time.perf_counter()
    with ncd.count_collectives(counter):
        for _ in range(steps):
            loss = step()
    loss = loss.detach()
    dist.all_reduce(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    elapsed_max = torch.tensor(elapsed, device=device)
    dist.all_reduce(elapsed_max, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    per_step = {k: v / steps for k, v in counter.input.items()}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    at_peak = None
    if memory and device.type == "cuda":  # every rank steps (the collectives need both); rank 0 prints
        from bench.train_step import memory_at_peak

        with contextlib.redirect_stdout(sys.stdout if dist.get_rank() == 0 else io.StringIO()):
            print(f"{name}: memory at the peak of one step (rank 0)")
            at_peak = memory_at_peak(step)
    return {
        "memory": at_peak,
        "tokens_per_s": world * steps * batch * seq / elapsed_max.item(),
        "all_gather_mb": per_step.get("all_gather", 0) / 2**20,
        "reduce_scatter_mb": per_step.get("reduce_scatter", 0) / 2**20,
        "all_reduce_mb": (per_step.get("all_reduce", 0) + per_step.get("ddp_all_reduce", 0)) / 2**20,
        "calls_per_step": {k: v / steps for k, v in counter.calls.items()},
        "fp4_all_gather_layers": len(enabled),
        "peak_gib": peak,
        "loss": loss.item() / world,
    }


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a few-layer model, to check the script")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", choices=["fsdp", "ddp"], default="fsdp")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true",
                        help="after every configuration's timed steps, each one built again and two of its "
                             "steps profiled (printed by rank 0); a configuration timed after a profiled one once "
                             "measured slower (bench/RESULTS.md), so no timing follows a profile")
    parser.add_argument("--memory", action="store_true",
                        help="after the timed steps, what is live at the peak of one step (rank 0)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--size", choices=["1b", "small"], default="1b",
                        help="small: 4 blocks of width 2048 (each block is its own graph under FSDP2)")
    args = parser.parse_args(argv)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.tiny:
        config = {"model": {"vocab": 256, "dim": 64, "depth": 4, "heads": 4}, "batch": 2, "seq": 32}
        steps = min(args.steps, 3)
    else:  # 1b: ~1.1B parameters, 24 blocks of width 2048 with a 32k vocabulary; small: 4 such blocks
        depth = 24 if args.size == "1b" else 4
        config = {"model": {"vocab": 32768, "dim": 2048, "depth": depth, "heads": 16}, "batch": 4, "seq": 2048}
        steps = args.steps
    names = [n for n in args.configs if args.parallel == "fsdp" or not CONFIGS[n][1]]
    results = {name: run(name, config, steps, device, args.parallel, args.memory) for name in names}
    if args.profile:
        for name in names:
            results[name]["profile"] = profile_run(name, config, device, args.parallel)
    if dist.get_rank() == 0:
        base = results.get("bf16")
        rows = [[name, r["tokens_per_s"], r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan"), r["all_gather_mb"],
                 r["reduce_scatter_mb"], r["all_reduce_mb"], r["peak_gib"], r["loss"]]
                for name, r in results.items()]
        report(f"{args.parallel.upper()} training step, {dist.get_world_size()} ranks on {device.type}",
               ["configuration", "tokens/s", "vs bf16", "all-gather MiB/step", "reduce-scatter MiB/step",
                "all-reduce MiB/step", "peak GiB", "loss"], rows,
               "distributed_tiny" if args.tiny else f"distributed_{args.parallel}_{args.size}",
               {"config": config, "steps": steps, "parallel": args.parallel, "world_size": dist.get_world_size(),
                "results": results, "bytes": "per rank and step: what the rank hands to each kind of collective"})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
