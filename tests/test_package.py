import importlib
import inspect
import re
import tomllib
from pathlib import Path

import nvfp4_compile as nc

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_names_and_signatures():
    for name in ("NVFP4Tensor", "MXFP4Tensor", "quantize", "dequantize", "rht", "nvfp4_mm", "mxfp4_mm"):
        assert hasattr(nc, name), name
    params = inspect.signature(nc.quantize).parameters
    assert list(params)[:5] == ["x", "block", "rounding", "rht", "generator"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[1:])
    assert params["rounding"].default == "rne" and params["rht"].default is False
    assert list(inspect.signature(nc.nvfp4_mm).parameters)[:3] == ["a", "b", "out_dtype"]
    fields = list(nc.NVFP4Tensor.__dataclass_fields__)
    assert fields == ["codes", "scales", "global_scale", "shape", "block"]


def test_distribution_ships_the_three_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "nvfp4-compile"
    assert set(project["tool"]["setuptools"]["packages"]) == {"nvfp4_compile", "passes", "cutlass_kernels"}
    deps = " ".join(project["project"]["dependencies"])
    for dep in ("torch", "numpy", "rich", "nvidia-cutlass-dsl"):
        assert dep in deps


def test_passes_and_kernels_never_import_the_backend():
    for package in ("passes", "cutlass_kernels"):
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text()
            imports_backend = r"^\s*(from\s+nvfp4_compile\.backend|import\s+nvfp4_compile\.backend|from\s+nvfp4_compile\s+import\s+.*\bbackend\b)"
            assert not re.search(imports_backend, source, re.M), path
        importlib.import_module(package)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    test_commands = [c.strip() for c in commands if "pytest" in c]
    assert len(test_commands) == 1
    assert test_commands[0] in ci


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "nc.quantize" in b]
    scope = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["y"].shape == (128, 64)
