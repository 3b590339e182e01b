import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

GOLDEN_DIR = Path(__file__).parent / "golden"

settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_compile_state():
    """Dynamo's caches and the recorded GEMM decisions cleared around a test that compiles.

    Test modules that compile use it for every test: ``pytestmark = pytest.mark.usefixtures(...)``."""
    import nvfp4_compile

    torch._dynamo.reset()
    nvfp4_compile.decisions.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def golden():
    """The reference quantizations: ``{case: {field: array}}`` for every case in cases.json."""
    data = np.load(GOLDEN_DIR / "nvfp4_reference.npz")
    cases = json.loads((GOLDEN_DIR / "cases.json").read_text())
    return {case: {key.rsplit("|", 1)[1]: data[key] for key in data.files if key.startswith(case + "|")}
            for case in cases}


def golden_cases():
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn()`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
