"""``bench/gluon_gemm.py``, the experiment with a GEMM that decodes the saved FP4 operand: every
variant still compiles for sm_90a (no GPU needed), fits in an H100's shared memory and issues
``wgmma``. Its timings and its check against the package's GEMM run on a GPU, in the script."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from test_triton_kernels import sass_tools_usable

ROOT = Path(__file__).resolve().parents[1]
H100_SHARED_BYTES = 227 * 1024  # the most dynamic shared memory one block may use on sm_90


def gluon_available() -> bool:
    if not sass_tools_usable():
        return False
    try:
        import triton.experimental.gluon  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not gluon_available(), reason="needs Triton with Gluon and its CUDA tools (compiles for sm_90a)")
def test_every_variant_compiles_for_sm90a_within_shared_memory():
    sys.path.insert(0, str(ROOT))
    from bench.gluon_gemm import compile_variants

    rows = compile_variants([(128, 256, 64, 3), (128, 128, 64, 4)])
    names = {(r["config"], r["variant"]) for r in rows}
    assert ("128x128x64x4", "FP4 A, 2 decoding warpgroup(s)") in names
    assert ("128x256x64x3", "FP4 A, 1 decoding warpgroup(s)") in names
    assert ("128x256x64x3", "BF16 A, TMA warp") in names
    assert ("128x256x64x3", "FP4 A, 2 decoding warpgroup(s)") not in names  # too few registers: not offered
    for r in rows:
        assert 0 < r["shared"] <= H100_SHARED_BYTES, r
        assert r["wgmma"] > 0, r
