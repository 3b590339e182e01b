"""Launching the Triton kernels with less host work than ``kernel[grid](...)``.

Without CUDA graphs a compiled NVFP4 step below ~8192 is bound by host time (bench/RESULTS.md):
an NVFP4 linear layer launches ~20 kernels from Python. ``kernel[grid](...)`` binds and
specializes every argument, builds a cache key, checks the kernel's globals and calls the
launch hooks each time (23-27 us a launch on an H100 host, ``bench/host_overhead.py --parts``).

``fast_launch(kernel)`` wraps a ``triton.jit`` function with the same ``[grid](*args, **kwargs)``
syntax. The first launch of a given *launch key* goes through Triton, which compiles (or finds)
the kernel; the ``CompiledKernel`` it returns is kept, and later launches with the same key call
its launcher directly, on the current device's current stream as Triton would. The launch key
holds the current device, every keyword argument (constexprs, ``num_warps``),
every non-tensor argument's type and value, and every tensor argument's dtype, device and
whether its address is 16-byte aligned: a superset of what Triton specializes a kernel on (a
pointer's dtype and 16-byte alignment; an integer equal to 1, divisible by 16, or beyond 32
bits), so a cached launch runs the kernel that ``kernel[grid](...)`` would have chosen.

Launches with Triton's launch hooks set (its profiler), and kernels under Triton's interpreter,
take ``kernel[grid](...)``. ``NVFP4_COMPILE_FAST_LAUNCH=0`` (read at import) or ``ENABLED =
False`` turns the cache off.
"""

from __future__ import annotations

import os

import torch

ENABLED = os.environ.get("NVFP4_COMPILE_FAST_LAUNCH", "1") != "0"


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for the host's grid arithmetic (``triton.cdiv`` costs a JIT-function call)."""
    return -(-a // b)


_knobs = None


def _hooks_set() -> bool:
    global _knobs
    if _knobs is None:
        from triton import knobs as _knobs
    runtime = _knobs.runtime
    return bool(getattr(runtime.launch_enter_hook, "calls", runtime.launch_enter_hook)
                or getattr(runtime.launch_exit_hook, "calls", runtime.launch_exit_hook))


def _current_device() -> int:
    return torch._C._cuda_getDevice()


def _current_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


#: Launch keys kept per kernel; an integer argument is keyed by its value, so a run over many
#: sizes would otherwise keep one entry for each.
MAX_LAUNCHERS = 4096


def _launch_key(args, kwargs) -> tuple:
    """Keyword arguments with their names; a tensor's dtype, device and 16-byte alignment; any
    other argument's type and value (flat: a dtype never equals a type, so nothing aliases)."""
    key = [tuple(kwargs.items())]
    append = key.append
    for a in args:
        if isinstance(a, torch.Tensor):
            append(a.dtype)
            append(a.get_device())
            append(a.data_ptr() % 16 == 0)
        else:
            append(type(a))
            append(a)
    return tuple(key)


class FastLaunch:
    """A ``triton.jit`` function whose compiled launchers are kept per launch key (module docstring)."""

    def __init__(self, fn):
        self.fn = fn
        # Under Triton's interpreter ``triton.jit`` returns an interpreted function: nothing to cache.
        self.cacheable = hasattr(fn, "device_caches")
        self._launchers: dict[tuple, tuple] = {}

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args, kwargs):
        if not (ENABLED and self.cacheable) or _hooks_set():
            return self.fn[grid](*args, **kwargs)
        # Triton compiles and launches for the current device, on its current stream: so do we.
        device = _current_device()
        key = (device, _launch_key(args, kwargs))
        entry = self._launchers.get(key)
        if entry is None:
            compiled = self.fn[grid](*args, **kwargs)
            if compiled is None or hasattr(compiled, "result"):  # not compiled synchronously: no cache
                return compiled
            if len(self._launchers) >= MAX_LAUNCHERS:  # many shapes (dynamic sizes): start over
                self._launchers.clear()
            self._launchers[key] = (compiled, self._trailing_arguments(len(args)))
            return compiled
        compiled, trailing = entry
        values = args + tuple(kwargs.get(name, default) for name, default in trailing)
        grid = tuple(grid) + (1, 1)
        compiled.run(grid[0], grid[1], grid[2], _current_stream(device), compiled.function,
                     compiled.packed_metadata, None, None, None, *values)
        return compiled

    def _trailing_arguments(self, positional: int) -> tuple:
        """(name, default) of the kernel parameters after the positional arguments, in order: the
        launcher takes every parameter, constexprs included."""
        params = self.fn.params[positional:]
        return tuple((p.name, p.default) for p in params)


def fast_launch(fn) -> FastLaunch:
    return FastLaunch(fn)
