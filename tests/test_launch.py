"""``kernels/launch.py``: a cached launch runs the kernel Triton chose for the same launch key, and
anything Triton specializes on (a tensor's dtype or alignment, an integer, a constexpr) makes a
new key. A stand-in for the JIT function records what each path was called with (no GPU needed)."""

from __future__ import annotations

import types

import pytest
import torch

from nvfp4_compile.kernels import launch


class Compiled:
    function = "function-handle"
    packed_metadata = "packed-metadata"

    def __init__(self):
        self.launches = []

    def run(self, *args):
        self.launches.append(args)


class Launcher:
    """Triton's Python launcher: its C ``launch`` and the metadata that decides whether the
    Python layer has work to do (a scratch buffer to allocate)."""

    launch_cooperative_grid = False
    launch_pdl = True

    def __init__(self, scratch: int):
        self.global_scratch_size = scratch
        self.profile_scratch_size = 0
        self.python_calls, self.c_calls = [], []
        self.launch = lambda *args: self.c_calls.append(args)

    def __call__(self, *args):
        self.python_calls.append(args)


class CompiledWithLauncher(Compiled):
    def __init__(self, scratch: int):
        super().__init__()
        self.run = Launcher(scratch)


class Kernel:
    """Parameters ``(x_ptr, n, BLOCK, FLAG=True)``, the last two constexprs."""

    def __init__(self, compiled=Compiled):
        self.make_compiled = compiled
        self.device_caches = {}
        self.params = [types.SimpleNamespace(name=n, default=d) for n, d in
                       (("x_ptr", None), ("n", None), ("BLOCK", None), ("FLAG", True))]
        self.compiled = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.compiled.append((grid, args, kwargs, self.make_compiled()))
            return self.compiled[-1][3]
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(launch, "_hooks_set", lambda: False)
    monkeypatch.setattr(launch, "_current_stream", lambda device: 1234 + device)
    monkeypatch.setattr(launch, "_current_device", lambda: 0)
    monkeypatch.setattr(launch, "ENABLED", True)
    return Kernel()


def test_second_launch_with_the_same_key_calls_the_compiled_launcher(kernel):
    fast = launch.fast_launch(kernel)
    x = torch.zeros(64)
    first = fast[(3,)](x, 64, BLOCK=32, num_warps=4)
    second = fast[(5, 2)](x, 64, BLOCK=32, num_warps=4)
    assert len(kernel.compiled) == 1 and first is second
    # Every parameter in order, the constexprs and defaults included; the grid padded to 3-D.
    assert first.launches == [(5, 2, 1, 1234, "function-handle", "packed-metadata", None, None, None, x, 64, 32, True)]


@pytest.mark.parametrize("scratch", [0, 256])
def test_a_launcher_with_nothing_to_allocate_is_called_in_c(monkeypatch, scratch):
    """Without a scratch buffer Triton's Python launcher only forwards to its C ``launch``: the
    cached launch calls that directly, with the launcher's fixed arguments and no scratch; with
    one, the Python launcher (which allocates it) is called."""
    monkeypatch.setattr(launch, "_hooks_set", lambda: False)
    monkeypatch.setattr(launch, "_current_stream", lambda device: 1234 + device)
    monkeypatch.setattr(launch, "_current_device", lambda: 0)
    monkeypatch.setattr(launch, "ENABLED", True)
    kernel = Kernel(lambda: CompiledWithLauncher(scratch))
    fast = launch.fast_launch(kernel)
    x = torch.zeros(64)
    compiled = fast[(3,)](x, 64, BLOCK=32)
    fast[(5, 2)](x, 64, BLOCK=32, FLAG=False)  # another key: Triton again
    fast[(7,)](x, 64, BLOCK=32)
    launcher = compiled.run
    args = (x, 64, 32, True)
    if scratch:
        assert launcher.c_calls == []
        assert launcher.python_calls == [(7, 1, 1, 1234, "function-handle", "packed-metadata", None, None, None, *args)]
    else:
        assert launcher.python_calls == []
        assert launcher.c_calls == [(7, 1, 1, 1234, "function-handle", False, True, None, None, "packed-metadata",
                                     None, None, None, *args)]


@pytest.mark.parametrize("change", ["misaligned tensor", "dtype", "integer", "constexpr", "option"])
def test_what_triton_specializes_on_makes_a_new_key(kernel, change):
    fast = launch.fast_launch(kernel)
    x = torch.zeros(64)
    fast[(1,)](x, 64, BLOCK=32, num_warps=4)
    args, kwargs = [x, 64], {"BLOCK": 32, "num_warps": 4}
    if change == "misaligned tensor":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "dtype":
        args[0] = torch.zeros(64, dtype=torch.float64)
    elif change == "integer":
        args[1] = 65
    elif change == "constexpr":
        kwargs["BLOCK"] = 64
    else:
        kwargs["num_warps"] = 8
    fast[(1,)](*args, **kwargs)
    assert len(kernel.compiled) == 2
    assert kernel.compiled[0][3].launches == []


@pytest.mark.parametrize("reason", ["disabled", "hooks", "interpreted"])
def test_triton_launches_every_time_when_the_cache_does_not_apply(kernel, monkeypatch, reason):
    if reason == "disabled":
        monkeypatch.setattr(launch, "ENABLED", False)
    elif reason == "hooks":
        monkeypatch.setattr(launch, "_hooks_set", lambda: True)
    else:
        del kernel.device_caches
    fast = launch.fast_launch(kernel)
    x = torch.zeros(64)
    for _ in range(3):
        fast[(1,)](x, 64, BLOCK=32)
    assert len(kernel.compiled) == 3


def test_the_current_device_is_part_of_the_key_and_the_cache_is_bounded(kernel, monkeypatch):
    fast = launch.fast_launch(kernel)
    x = torch.zeros(64)
    fast[(1,)](x, 64, BLOCK=32)
    monkeypatch.setattr(launch, "_current_device", lambda: 1)
    fast[(1,)](x, 64, BLOCK=32)  # another device: Triton's own kernel for it
    fast[(1,)](x, 64, BLOCK=32)
    assert len(kernel.compiled) == 2 and kernel.compiled[1][3].launches[0][3] == 1235  # device 1's stream
    monkeypatch.setattr(launch, "MAX_LAUNCHERS", 3)
    for n in range(5):
        fast[(1,)](x, 100 + n, BLOCK=32)
    assert len(fast._launchers) <= 3
