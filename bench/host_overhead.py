"""Where the host time of a compiled NVFP4 linear fwd+bwd goes (default mode, no CUDA graphs).

    python bench/host_overhead.py [--size 2048] [--steps 30] [--rounds 7] [--top 30] [--parts]

Prints, for the BF16 layer under Inductor and the NVFP4 layer (with and without the cached
Triton launches of ``kernels/launch.py`` and the ops' autograd fallthrough), the host time a step takes to
enqueue (no synchronization inside the loop, measured with the GPU kept busy far enough ahead
that the host is the bottleneck) against the GPU time per step, the kernels launched per step,
and the Python functions that take the NVFP4 step's host time (cProfile). At small sizes the
host time decides the step time unless CUDA graphs replay the step.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.linear import step_fn  # noqa: E402


def host_ms(step, steps: int) -> tuple[float, float]:
    """(host ms per step to enqueue, wall ms per step including the GPU's work)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    enqueued = time.perf_counter()
    torch.cuda.synchronize()
    end = time.perf_counter()
    return (enqueued - start) / steps * 1e3, (end - start) / steps * 1e3


def kernels_per_step(step, steps: int = 3) -> tuple[float, float]:
    """(CUDA kernels launched per step, GPU ms per step)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(events) / steps, sum(e.device_time for e in events) / steps / 1e3


def per_call_us(fn, calls: int = 2000) -> float:
    """Host microseconds per call of ``fn`` (tiny tensors: the GPU keeps up)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def parts() -> dict:
    """Host cost of each building block of an NVFP4 op, on 64x64 tensors."""
    from nvfp4_compile.kernels import cublaslt, triton_dequant, triton_quantize

    dev = torch.device("cuda")
    x = torch.randn(64, 64, device=dev, dtype=torch.bfloat16)
    codes, scales, s_dec = triton_quantize.quantize_nvfp4(x)
    out = torch.empty(64, 64, device=dev, dtype=torch.bfloat16)
    alpha_beta = torch.tensor([1.0, 0.0], device=dev)
    kernel = triton_dequant._dequant_kernel
    hw_fp8 = triton_quantize.hardware_fp8(dev)
    launch = {"ALPHA": False, "BLOCK_R": 32, "BLOCK_K": 256, "HW_FP8": hw_fp8, "num_warps": 8}
    compiled = kernel[(2, 1)](codes, scales, out, 64, 64, out, out, out, **launch)
    runner = compiled[(2, 1, 1)]
    cases = {
        "torch.empty": lambda: torch.empty((64, 64), device=dev, dtype=torch.bfloat16),
        "torch.zeros (0-dim int32)": lambda: torch.zeros((), device=dev, dtype=torch.int32),
        "torch.randint (0-dim)": lambda: torch.randint(0, 2**31 - 1, (), device=dev, dtype=torch.int32),
        "x + x (aten, eager)": lambda: x + x,
        "Triton launch, kernel[grid](...)": lambda: kernel[(2, 1)](codes, scales, out, 64, 64, out, out, out, **launch),
        "Triton launch, CompiledKernel runner": lambda: runner(codes, scales, out, 64, 64, out, out, out, False, 32, 256,
                                                                     hw_fp8),
        "Triton launch, kernels/launch.py": lambda: triton_dequant._DEQUANT[(2, 1)](codes, scales, out, 64, 64, out, out,
                                                                                 out, **launch),
        "dequantize_to_bf16": lambda: triton_dequant.dequantize_to_bf16(codes, scales),
        "cublaslt.matmul": lambda: cublaslt.matmul(out, out, alpha_beta, None, out),
        "quantize_nvfp4 (amax + quantize)": lambda: triton_quantize.quantize_nvfp4(x),
        "torch.ops.nvfp4.quantize": lambda: torch.ops.nvfp4.quantize.default(x, "nvfp4", 1, "rne", "", False),
        "emulated_gemm": lambda: __import__("nvfp4_compile.kernels.triton_gemm", fromlist=["x"]).emulated_gemm(
            codes, scales, s_dec, codes, scales, s_dec, None, torch.bfloat16),
        "torch.ops.nvfp4.gemm": lambda: torch.ops.nvfp4.gemm.default(codes, scales, s_dec, codes, scales, s_dec, None,
                                                                   "nvfp4", torch.bfloat16),
    }
    result = {}
    for name, fn in cases.items():
        result[name] = per_call_us(fn)
        print(f"{name:40s} {result[name]:8.1f} us")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds over all variants; the median is reported")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", default=os.environ.get("OUT", "."))
    parser.add_argument("--parts", action="store_true", help="also time each building block on tiny tensors")
    args = parser.parse_args(argv)
    n = args.size
    layer = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    result = {"size": n, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.parts:
        result["parts_us"] = parts()
    profile_text = ""
    from nvfp4_compile import ops
    from nvfp4_compile.kernels import launch

    variants = {"inductor": ("inductor", True, True),  # (backend, fast launch, autograd fallthrough)
                "nvfp4, neither": ("nvfp4", False, False),
                "nvfp4, fast launch": ("nvfp4", True, False),
                "nvfp4, autograd fallthrough": ("nvfp4", False, True),
                "nvfp4": ("nvfp4", True, True)}
    steps, samples = {}, {name: [] for name in variants}
    for name, (backend, _, _) in variants.items():
        if backend not in steps:
            steps[backend] = step_fn(layer, x, backend)
            for _ in range(5):
                steps[backend]()
    # Round-robin over the variants, the median of the rounds: the host's speed drifts.
    for _ in range(args.rounds):
        for name, (backend, fast, fallthrough) in variants.items():
            launch.ENABLED = fast
            ops.set_autograd_fallthrough(fallthrough)
            steps[backend]()
            samples[name].append(host_ms(steps[backend], args.steps))
    for name, (backend, fast, fallthrough) in variants.items():
        launch.ENABLED = fast
        ops.set_autograd_fallthrough(fallthrough)
        host, wall = (statistics.median(v) for v in zip(*samples[name]))
        launches, gpu = kernels_per_step(steps[backend])
        result[name] = {"host_ms": host, "wall_ms": wall, "gpu_ms": gpu, "kernels": launches,
                        "host_ms_rounds": [h for h, _ in samples[name]]}
        print(f"{name:28s} host {host:7.3f} ms/step  wall {wall:7.3f}  GPU {gpu:7.3f}  kernels {launches:5.1f}")
    step = steps["nvfp4"]
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    for _ in range(args.steps):
        step()
    profiler.disable()
    torch.cuda.synchronize()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
        profile_text += out.getvalue()
    print(profile_text)
    Path(args.json).mkdir(parents=True, exist_ok=True)
    (Path(args.json) / f"host_overhead_{n}.json").write_text(json.dumps(result, indent=2))
    (Path(args.json) / f"host_overhead_{n}_profile.txt").write_text(profile_text)


if __name__ == "__main__":
    main()
