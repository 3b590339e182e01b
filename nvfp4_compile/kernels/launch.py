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
    """Keyword arguments with their names; a tensor's dtype and 16-byte alignment; any other
    argument's type and value (flat: a dtype never equals a type, so nothing aliases). A tensor's
    device is left out: Triton compiles and launches for the current device, which the caller
    keys on, whatever device a pointer belongs to."""
    key = [tuple(kwargs.items())]
    append = key.append
    tensor = torch.Tensor
    for a in args:
        if isinstance(a, tensor):
            append(a.dtype)
            append(not a.data_ptr() & 15)
        else:
            append(type(a))
            append(a)
    return tuple(key)


def _direct_launch(compiled):
    """Triton's C launch function and its fixed leading arguments, where the launch needs nothing
    the Python launcher adds (no global or profile scratch buffer to allocate); else None."""
    launcher = compiled.run
    launch = getattr(launcher, "launch", None)
    if launch is None or getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
        return None
    return launch, launcher.launch_cooperative_grid, launcher.launch_pdl


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
            # The parameters after the positional arguments (constexprs included: the launcher
            # takes every parameter) are fixed by the key's keyword arguments.
            trailing = tuple(kwargs.get(p.name, p.default) for p in self.fn.params[len(args):])
            self._launchers[key] = (compiled, trailing, _direct_launch(compiled))
            return compiled
        compiled, trailing, direct = entry
        grid = tuple(grid) + (1, 1)
        if direct is not None:
            launch, cooperative, pdl = direct
            launch(grid[0], grid[1], grid[2], _current_stream(device), compiled.function, cooperative, pdl,
                   None, None, compiled.packed_metadata, None, None, None, *args, *trailing)
        else:
            compiled.run(grid[0], grid[1], grid[2], _current_stream(device), compiled.function,
                         compiled.packed_metadata, None, None, None, *args, *trailing)
        return compiled


def fast_launch(fn) -> FastLaunch:
    return FastLaunch(fn)
