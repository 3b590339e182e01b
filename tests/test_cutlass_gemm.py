"""The sm_100a CuTe-DSL NVFP4 GEMM: compiled for sm_100a on this CPU and its PTX inspected.

Nothing here runs the kernel (that needs a compute-capability 10.x GPU): the tests compile
representative configurations and read the PTX, and check the configuration choice, the
dispatch rule and the host wrapper up to the launch.
"""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cutlass_kernels import dispatch
from cutlass_kernels import nvfp4_gemm as host
from cutlass_kernels.gemm_config import DEFAULT_SM_COUNT, GemmConfig, check_problem, choose_config
from cutlass_kernels.scale_layout import from_blocked, to_blocked

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "cutlass_kernels"
HAS_CUTLASS = importlib.util.find_spec("cutlass") is not None
needs_cutlass = pytest.mark.skipif(not HAS_CUTLASS, reason="needs nvidia-cutlass-dsl (CuTe DSL)")

# A representative set, not every combination: both CTA modes, every tile shape the chooser
# returns, each output type, bias on and off (the first two differ only in bias), an A
# multicast cluster, and the sm_103a target.
COMPILED_CONFIGS = [
    GemmConfig(128, 128, 1, 1, "bfloat16", False),
    GemmConfig(128, 128, 1, 1, "bfloat16", True),
    GemmConfig(128, 256, 1, 1, "float32", True),
    GemmConfig(256, 128, 2, 1, "bfloat16", True),
    GemmConfig(256, 256, 2, 1, "float32", False),
    GemmConfig(128, 128, 1, 2, "float16", False),
    GemmConfig(128, 128, 1, 1, "bfloat16", False, "sm_103a"),
]


@pytest.fixture(scope="module")
def compiled():
    """Compile every configuration once for the module (the wrapper's cache keeps them)."""
    if not HAS_CUTLASS:
        pytest.skip("needs nvidia-cutlass-dsl (CuTe DSL)")
    return {config: host.compiled_gemm(config) for config in COMPILED_CONFIGS}


# -- a little PTX reading ---------------------------------------------------------------------

_INSTR = re.compile(r"^\s*([a-z][\w.:]*)\s+([^;]*);", re.M)


def instructions(ptx):
    """``(opcode, [operand tokens])`` for every instruction."""
    return [(op, re.findall(r"%\w+", args)) for op, args in _INSTR.findall(ptx)]


def registers_derived_from(ptx, seeds):
    """``seeds`` and every register a ``mov`` copies (or packs) them into."""
    reached = set(seeds)
    grew = True
    while grew:
        grew = False
        for op, regs in instructions(ptx):
            if op.startswith("mov") and regs and any(r in reached for r in regs[1:]) and regs[0] not in reached:
                reached.add(regs[0])
                grew = True
    return reached


def param_pointer_loads(ptx, opcode_prefix):
    """Destinations of global loads (``opcode_prefix``) whose address register came from a kernel parameter."""
    param_regs = {regs[0] for op, regs in instructions(ptx) if op.startswith("ld.param") and regs}
    return [regs[0] for op, regs in instructions(ptx)
            if op.startswith(opcode_prefix) and len(regs) >= 2 and regs[1] in param_regs]


# -- compile and inspect ----------------------------------------------------------------------

@needs_cutlass
@pytest.mark.parametrize("config", COMPILED_CONFIGS, ids=lambda c: c.name)
def test_compiled_ptx_has_the_block_scaled_pipeline(compiled, config, record_property):
    entry = compiled[config]
    record_property("compile_seconds", round(entry.compile_seconds, 2))
    print(f"compiled {config.name} in {entry.compile_seconds:.2f} s (PTX {len(entry.ptx)} chars)")
    ptx = entry.ptx
    group = 2 if config.use_2cta else 1
    assert re.search(rf"^\.target {config.arch}\b", ptx, re.M)
    # The block-scaled MMA, NVFP4 kind, 16-element scale vectors, on one or two CTAs.
    mmas = re.findall(rf"tcgen05\.mma\.cta_group::{group}\.kind::mxf4nvf4\.block_scale\.block16\b", ptx)
    assert len(mmas) == 4, "four K=64 MMAs per 256-wide K tile"
    assert f"cta_group::{3 - group}" not in ptx
    # Scales: shared -> tensor memory copies.
    assert re.search(rf"tcgen05\.cp\.cta_group::{group}\.", ptx)
    # TMA loads of A, B, SFA, SFB (global -> shared, completing an mbarrier) and the TMA store of C.
    loads = re.findall(r"cp\.async\.bulk\.tensor\.\dd\.shared::\w+\.global\.[\w.:]*mbarrier::complete_tx", ptx)
    assert len(loads) == 4
    assert re.search(r"cp\.async\.bulk\.tensor\.2d\.global\.shared::cta", ptx)
    # Accumulator tensor memory -> registers in the epilogue.
    assert "tcgen05.ld.sync.aligned" in ptx
    if config.out_dtype == "bfloat16":
        assert "cvt.rn.bf16x2.f32" in ptx
    elif config.out_dtype == "float16":
        assert "cvt.rn.f16x2.f32" in ptx
    else:
        assert "cvt.rn.bf16x2.f32" not in ptx and "cvt.rn.f16x2.f32" not in ptx


@needs_cutlass
@pytest.mark.parametrize("config", COMPILED_CONFIGS[:2] + COMPILED_CONFIGS[3:5], ids=lambda c: c.name)
def test_alpha_is_loaded_from_device_memory_and_scales_the_accumulator(compiled, config):
    ptx = compiled[config].ptx
    # A 32-bit global load through a kernel-argument pointer ...
    alpha_regs = param_pointer_loads(ptx, "ld.global.b32")
    assert len(alpha_regs) == 1
    # ... whose value (or a pair of it) is an operand of the FP32 multiplies.
    reached = registers_derived_from(ptx, alpha_regs)
    multiplies = [regs for op, regs in instructions(ptx) if op.startswith("mul") and op.endswith(("f32", "f32x2"))]
    assert multiplies and all(any(r in reached for r in regs[1:]) for regs in multiplies)


@needs_cutlass
def test_bias_adds_vector_loads_and_adds_only_when_on(compiled):
    off, on = (compiled[c].ptx for c in COMPILED_CONFIGS[:2])
    assert COMPILED_CONFIGS[0].has_bias is False and COMPILED_CONFIGS[1].has_bias is True
    vector_loads = r"ld\.global\.v\d\.b\d+"
    adds = r"\badd\.(?:rn\.)?f32(?:x2)?\b"
    assert not re.search(vector_loads, off) and not re.search(adds, off)
    # Each thread loads its accumulator row's bias columns (vectorized) and adds them in FP32.
    assert len(re.findall(vector_loads, on)) >= 4
    assert re.search(adds, on)


@needs_cutlass
def test_compiled_kernels_are_cached(compiled):
    config = COMPILED_CONFIGS[0]
    assert host.compiled_gemm(config) is compiled[config]
    assert host.compile_ptx(GemmConfig(**vars(config))) == compiled[config].ptx  # equal key, same entry


# -- the scale layout the kernel reads is the one the host writes -----------------------------

@needs_cutlass
@pytest.mark.filterwarnings("ignore:This static loop")
@pytest.mark.parametrize("rows,k", [(200, 96), (128, 256), (7, 32)])
def test_host_blocked_scales_match_the_kernels_cute_layout(rows, k):
    import cutlass
    import cutlass.cute as cute
    import cutlass.utils.blockscaled_layout as blockscaled

    offsets = {}

    @cute.jit
    def probe():
        # The same call the kernel makes for SFA/SFB, with static extents.
        layout = blockscaled.tile_atom_to_shape_SF((rows, k, 1), 16)
        # Static loops (unrolled while tracing), so every offset is a Python int.
        for r in cutlass.range_constexpr(rows):
            for b in cutlass.range_constexpr(k // 16):
                offsets[r, b] = cute.crd2idx((r, 16 * b, 0), layout)

    probe()
    gen = torch.Generator().manual_seed(rows * 1000 + k)
    bits = torch.randint(1, 127, (rows, k // 16), generator=gen, dtype=torch.uint8)
    flat = to_blocked(bits.view(torch.float8_e4m3fn)).view(torch.uint8)
    assert max(offsets.values()) < flat.numel()
    got = torch.tensor([int(flat[offsets[r, b]]) for r in range(rows) for b in range(k // 16)],
                       dtype=torch.uint8).view(rows, k // 16)
    assert torch.equal(got, bits)


# -- configuration choice ---------------------------------------------------------------------

def test_small_m_picks_one_cta_and_large_problems_pick_two():
    small = choose_config(64, 4096, 4096)
    assert not small.use_2cta and small.mma_tile_m == 128 and small.cluster_size == 1
    large = choose_config(8192, 8192, 8192)
    assert large.use_2cta and large.mma_tile_m == 256 and large.cluster_m == 2
    assert large.mma_tile_n == 256


def test_choice_keeps_tiles_small_until_every_sm_has_one():
    # 1024 x 1024: 256-row pairs would make 2 * 4 * 8 = 64 CTAs < 148 SMs.
    assert choose_config(1024, 1024, 1024) == GemmConfig(128, 128, 1, 1)
    # 2048 x 2048 with 256 x 128 pairs: 2 * 8 * 16 = 256 CTAs; with 256 x 256: 128 < 148.
    assert choose_config(2048, 2048, 512) == GemmConfig(256, 128, 2, 1)
    assert choose_config(2048, 2048, 512, sm_count=128) == GemmConfig(256, 256, 2, 1)
    # One row of tiles, very wide: 256 columns once those alone outnumber the SMs.
    assert choose_config(32, 256 * 200, 64).mma_tile_n == 256
    assert choose_config(32, 256 * 100, 64).mma_tile_n == 128


def test_choice_carries_dtype_bias_and_arch():
    config = choose_config(300, 64, 64, "float32", True, arch="sm_103a")
    assert (config.out_dtype, config.has_bias, config.arch) == ("float32", True, "sm_103a")


@given(m=st.integers(1, 20000), n_units=st.integers(1, 4000), k_units=st.integers(1, 600),
       sm_count=st.integers(1, 200))
def test_chosen_configs_follow_the_rule(m, n_units, k_units, sm_count):
    n, k = 8 * n_units, 32 * k_units
    config = choose_config(m, n, k, sm_count=sm_count)
    if m <= 128:
        assert not config.use_2cta
    if config.use_2cta:
        ctas = 2 * -(-m // 256) * -(-n // config.mma_tile_n)
        assert ctas >= sm_count
    # Every configuration the chooser returns has its tile and cluster shape compiled above.
    shapes = {(c.mma_tile_m, c.mma_tile_n, c.cluster_m, c.cluster_n) for c in COMPILED_CONFIGS}
    assert (config.mma_tile_m, config.mma_tile_n, config.cluster_m, config.cluster_n) in shapes


@pytest.mark.parametrize("m,n,k,out,match", [
    (128, 128, 48, "bfloat16", "K = 48 is not a multiple of 32"),
    (128, 128, 16, "float32", "multiple of 32"),
    (128, 12, 64, "bfloat16", "N = 12 is not a multiple of 8"),
    (128, 6, 64, "float32", "N = 6 is not a multiple of 4"),
    (0, 128, 64, "bfloat16", "M must be a positive int"),
    (128, 128, 2**31, "bfloat16", "Int32"),
    (128, 128, 64, "float64", "out_dtype"),
])
def test_invalid_problems_raise_clear_errors(m, n, k, out, match):
    with pytest.raises(ValueError, match=match):
        check_problem(m, n, k, out)
    with pytest.raises(ValueError, match=match):
        choose_config(m, n, k, out)


def test_fp32_output_allows_n_multiple_of_4():
    check_problem(128, 12, 64, "float32")


@pytest.mark.parametrize("kwargs,match", [
    (dict(mma_tile_m=256, cluster_m=1), "cluster_m must be even"),
    (dict(mma_tile_m=64), "mma_tile_m"),
    (dict(mma_tile_n=192), "mma_tile_n"),
    (dict(cluster_n=3), "cluster_n"),
    (dict(out_dtype="float8"), "out_dtype"),
    (dict(arch="sm_90a"), "arch"),
])
def test_invalid_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GemmConfig(**kwargs)


# -- dispatch ---------------------------------------------------------------------------------

@pytest.fixture
def capability(monkeypatch):
    """Pretend CUDA device 0 has the given compute capability."""
    def set_capability(cap):
        def fake(device=None):
            assert torch.device(device).type == "cuda"
            return cap
        monkeypatch.setattr(torch.cuda, "get_device_capability", fake)
    monkeypatch.delenv(dispatch.REFERENCE_KERNELS_ENV, raising=False)
    return set_capability


@pytest.mark.parametrize("cap,expected", [((10, 0), True), ((10, 3), True), ((10, 1), False), ((9, 0), False),
                                          ((12, 0), False), ((8, 9), False)])
def test_sm100_path_only_on_compute_capability_10(capability, cap, expected):
    capability(cap)
    assert dispatch.use_sm100_gemm(torch.device("cuda", 0)) is expected
    assert dispatch.use_sm100_gemm("cuda:0") is expected


def test_cpu_never_takes_the_sm100_path(capability):
    capability((10, 0))
    assert dispatch.use_sm100_gemm("cpu") is False


def test_reference_kernels_env_disables_the_sm100_path(capability, monkeypatch):
    capability((10, 0))
    monkeypatch.setenv(dispatch.REFERENCE_KERNELS_ENV, "1")
    assert dispatch.use_sm100_gemm("cuda:0") is False
    monkeypatch.setenv(dispatch.REFERENCE_KERNELS_ENV, "0")
    assert dispatch.use_sm100_gemm("cuda:0") is True


def test_device_arch_names_the_target(capability):
    capability((10, 3))
    assert host.device_arch(torch.device("cuda", 0)) == "sm_103a"
    capability((9, 0))
    with pytest.raises(ValueError, match="sm_90a"):
        host.device_arch(torch.device("cuda", 0))


def _operands(m=200, n=72, k=96, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k // 2), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    sa = torch.randint(1, 127, (m, k // 16), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn)
    sb = torch.randint(1, 127, (n, k // 16), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn)
    alpha = torch.rand(1, generator=gen, dtype=torch.float32)
    return [t.to(device) for t in (a, sa, b, sb, alpha)]


def test_missing_cutlass_errors_only_when_the_path_is_taken(capability, monkeypatch):
    capability((10, 0))
    monkeypatch.setitem(sys.modules, "cutlass", None)
    monkeypatch.setitem(sys.modules, "cutlass.cute", None)
    # Choosing the path needs no CuTe DSL ...
    assert dispatch.use_sm100_gemm("cuda:0") is True
    # ... and the CPU-side preparation neither,
    host.prepare_gemm(*_operands())
    # ... but running or compiling it names the package and how to install it.
    for call in (lambda: host.nvfp4_gemm(*_operands()),
                 lambda: host.compiled_gemm(GemmConfig(128, 128, 1, 1, "float16", True, "sm_103a")),
                 lambda: host.require_cutlass()):
        with pytest.raises(host.CutlassDSLMissingError, match=r"nvidia-cutlass-dsl.*pip install nvidia-cutlass-dsl"):
            call()
    assert issubclass(host.CutlassDSLMissingError, ImportError)


def test_package_imports_without_cutlass():
    code = ("import sys; sys.modules['cutlass'] = None\n"
            "import cutlass_kernels, cutlass_kernels.dispatch, cutlass_kernels.gemm_config, "
            "cutlass_kernels.nvfp4_gemm, cutlass_kernels.scale_layout\n"
            "assert 'cutlass_kernels.sm100_nvfp4_gemm' not in sys.modules\n"
            "try:\n    import cutlass_kernels.sm100_nvfp4_gemm\nexcept ImportError:\n    print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cutlass_kernels_imports_neither_nvfp4_compile_nor_passes():
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in ("nvfp4_compile", "passes"), f"{path.name} imports {name}"
        # Only the kernel module itself may import CuTe DSL at module level.
        if path.name != "sm100_nvfp4_gemm.py":
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    assert not any(m.split(".")[0] in ("cutlass", "cuda") for m in mods), path.name


# -- host wrapper, up to the launch (CPU tensors) -----------------------------------------------

def test_prepare_converts_scales_pads_bias_and_allocates_output():
    a, sa, b, sb, alpha = _operands(m=200, n=72, k=96)
    bias = torch.randn(72, dtype=torch.bfloat16)
    plan = host.prepare_gemm(a, sa, b, sb, alpha, bias, torch.float32)
    assert (plan.m, plan.n, plan.k) == (200, 72, 96)
    assert plan.config == choose_config(200, 72, 96, "float32", True)
    # Blocked scales: 2 row tiles x 2 K-block tiles of 512 bytes, and the inverse gives them back.
    assert plan.a_scales_blocked.numel() == 2 * 2 * 512 and plan.b_scales_blocked.numel() == 1 * 2 * 512
    assert torch.equal(plan.a_scales_blocked.view(torch.uint8), to_blocked(sa).view(torch.uint8))
    assert torch.equal(from_blocked(plan.b_scales_blocked, 72, 6).view(torch.uint8), sb.view(torch.uint8))
    # Bias: FP32, zero-padded to whole N tiles.
    assert plan.bias.dtype == torch.float32 and plan.bias.numel() % plan.config.mma_tile_n == 0
    assert torch.equal(plan.bias[:72], bias.float()) and not plan.bias[72:].any()
    assert plan.alpha.shape == (1,) and plan.alpha.item() == alpha.item()
    assert plan.out.shape == (200, 72) and plan.out.dtype == torch.float32
    assert torch.equal(plan.a_codes, a) and torch.equal(plan.b_codes, b)


def test_prepare_without_bias_and_with_0dim_alpha():
    a, sa, b, sb, alpha = _operands(m=16, n=64, k=64)
    plan = host.prepare_gemm(a, sa, b, sb, alpha.reshape(()))
    assert plan.bias is None and plan.out.dtype == torch.bfloat16 and not plan.config.has_bias


def test_prepare_realigns_views_that_start_off_16_bytes():
    a, sa, b, sb, alpha = _operands(m=8, n=64, k=64)
    storage = torch.zeros(a.numel() + 1, dtype=torch.uint8)
    storage[1:] = a.flatten()
    shifted = storage[1:].view(a.shape)
    assert shifted.data_ptr() % 16
    plan = host.prepare_gemm(shifted, sa, b, sb, alpha)
    assert plan.a_codes.data_ptr() % 16 == 0 and torch.equal(plan.a_codes, a)


@pytest.mark.parametrize("change,error,match", [
    (lambda o: o.__setitem__(0, o[0].to(torch.int8)), TypeError, "a_codes must be a 2-D uint8"),
    (lambda o: o.__setitem__(1, o[1].view(torch.uint8)), TypeError, "a_scales must be a 2-D float8_e4m3fn"),
    (lambda o: o.__setitem__(2, o[2][:, :16]), ValueError, "K = 96 and B has K = 32"),
    (lambda o: o.__setitem__(3, o[3][:5]), ValueError, r"scales must be \[M, K/16\]"),
    (lambda o: o.__setitem__(4, o[4].double()), TypeError, "alpha must be a one-element float32"),
    (lambda o: o.__setitem__(4, torch.ones(2)), TypeError, "alpha must be a one-element float32"),
    (lambda o: o.append(torch.zeros(71)), ValueError, "bias must be a float vector of length N = 72"),
])
def test_prepare_rejects_bad_arguments(change, error, match):
    operands = _operands(m=200, n=72, k=96)
    change(operands)
    with pytest.raises(error, match=match):
        host.prepare_gemm(*operands)


def test_prepare_rejects_k_the_kernel_cannot_load_and_a_mismatched_config():
    a, sa, b, sb, alpha = _operands(m=64, n=64, k=48)
    with pytest.raises(ValueError, match="multiple of 32"):
        host.prepare_gemm(a, sa, b, sb, alpha)
    a, sa, b, sb, alpha = _operands(m=64, n=64, k=64)
    with pytest.raises(ValueError, match="has_bias=True"):
        host.prepare_gemm(a, sa, b, sb, alpha, config=GemmConfig(has_bias=True))
    with pytest.raises(TypeError, match="out_dtype"):
        host.prepare_gemm(a, sa, b, sb, alpha, out_dtype=torch.float64)
    plan = host.prepare_gemm(a, sa, b, sb, alpha, config=GemmConfig(256, 256, 2, 1))
    assert plan.config == GemmConfig(256, 256, 2, 1)


@needs_cutlass
def test_launch_and_nvfp4_gemm_refuse_cpu_tensors():
    operands = _operands(m=64, n=64, k=64)
    with pytest.raises(ValueError, match="CUDA tensors"):
        host.nvfp4_gemm(*operands)
    with pytest.raises(ValueError, match="CUDA tensors"):
        host.launch(host.prepare_gemm(*operands))


@needs_cutlass
@pytest.mark.parametrize("with_bias", [False, True])
def test_launch_arguments_fit_the_compiled_signature(compiled, with_bias):
    import cuda.bindings.driver as cuda

    config = COMPILED_CONFIGS[int(with_bias)]
    a, sa, b, sb, alpha = _operands(m=200, n=64, k=96)
    bias = torch.randn(64) if with_bias else None
    plan = host.prepare_gemm(a, sa, b, sb, alpha, bias, torch.bfloat16, config=config)
    args = host.launch_arguments(plan, cuda.CUstream(0), 74)
    pointers = args[:7]
    expected = [plan.a_codes, plan.b_codes, plan.a_scales_blocked, plan.b_scales_blocked, plan.out, plan.alpha,
                plan.bias]
    assert [p._pointer for p in pointers] == [0 if t is None else t.data_ptr() for t in expected]
    assert [int(v) for v in args[7:11]] == [200, 64, 96, 74]
    # The runtime marshals exactly these arguments for the compiled function (no launch).
    compiled[config].function.generate_execution_args(*args)
    with pytest.raises(Exception, match="stream"):
        compiled[config].function.generate_execution_args(*args[:-1])


@needs_cutlass
def test_launch_arguments_refuse_a_misaligned_tensor():
    import cuda.bindings.driver as cuda

    plan = host.prepare_gemm(*_operands(m=16, n=64, k=64))
    plan.a_scales_blocked = torch.zeros(513, dtype=torch.uint8)[1:].view(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="a_scales starts at .* 16-byte boundary"):
        host.launch_arguments(plan, cuda.CUstream(0), 1)


def test_gemm_for_op_forms_alpha_on_device_and_views_scale_bits(monkeypatch):
    a, sa, b, sb, _ = _operands(m=32, n=64, k=64)
    seen = {}
    monkeypatch.setattr(host, "nvfp4_gemm", lambda *args: seen.setdefault("args", args))
    a_scale, b_scale = torch.tensor(0.75), torch.tensor([3.0])
    bias = torch.zeros(64)
    host.gemm_for_op(a, sa.view(torch.uint8), a_scale, b, sb.view(torch.uint8), b_scale, bias, torch.bfloat16)
    ga, gsa, gb, gsb, alpha, gbias, out_dtype = seen["args"]
    assert ga is a and gb is b and gbias is bias and out_dtype == torch.bfloat16
    assert gsa.dtype == torch.float8_e4m3fn and torch.equal(gsa.view(torch.uint8), sa.view(torch.uint8))
    assert gsb.dtype == torch.float8_e4m3fn and torch.equal(gsb.view(torch.uint8), sb.view(torch.uint8))
    assert alpha.shape == (1,) and alpha.dtype == torch.float32 and alpha.item() == 2.25


def test_gemm_for_op_pads_k_to_a_multiple_of_32_with_zero_blocks(monkeypatch):
    a, sa, b, sb, _ = _operands(m=8, n=64, k=48)
    seen = {}
    monkeypatch.setattr(host, "nvfp4_gemm", lambda *args: seen.setdefault("args", args))
    host.gemm_for_op(a, sa.view(torch.uint8), torch.tensor(1.0), b, sb.view(torch.uint8), torch.tensor(1.0),
                     None, torch.float32)
    ga, gsa, gb, gsb = seen["args"][:4]
    assert ga.shape == (8, 32) and gb.shape == (64, 32) and gsa.shape == (8, 4) and gsb.shape == (64, 4)
    assert torch.equal(ga[:, :24], a) and not ga[:, 24:].any() and torch.equal(gb[:, :24], b)
    assert torch.equal(gsa[:, :3].view(torch.uint8), sa.view(torch.uint8)) and not gsa[:, 3:].view(torch.uint8).any()
    # The padded operands pass the kernel's checks.
    host.prepare_gemm(ga, gsa, gb, gsb, torch.ones(1), None, torch.float32)


def test_op_supported_mirrors_the_problem_checks():
    def codes(rows, k):
        return torch.zeros(rows, k // 2, dtype=torch.uint8)

    assert host.op_supported(codes(5, 64), codes(64, 64), torch.bfloat16)
    assert host.op_supported(codes(5, 48), codes(64, 48), torch.bfloat16)  # K padded to 64
    assert not host.op_supported(codes(5, 64), codes(12, 64), torch.bfloat16)  # N % 8
    assert host.op_supported(codes(5, 64), codes(12, 64), torch.float32)
    assert not host.op_supported(codes(5, 64), codes(64, 32), torch.bfloat16)  # K differs
    assert not host.op_supported(codes(5, 64), codes(64, 64), torch.float64)
    assert DEFAULT_SM_COUNT > 0


@pytest.mark.parametrize("cap, native", [((10, 0), True), ((9, 0), False)])
def test_the_gemm_op_takes_the_sm100_kernel_only_on_capability_10(capability, cap, native):
    """``nvfp4::gemm``'s CUDA kernel asks ``ops._sm100_gemm`` first; elsewhere it emulates."""
    from types import SimpleNamespace

    from nvfp4_compile import ops

    def codes(rows):  # stands in for a CUDA tensor (none exists on this machine)
        return SimpleNamespace(device=torch.device("cuda", 0), shape=(rows, 64), dim=lambda: 2)

    capability(cap)
    chosen = ops._sm100_gemm(codes(256), codes(128), torch.bfloat16)
    assert (chosen is host) is native and (chosen is None) is not native
    # A shape the kernel refuses (N not a multiple of 8 for BF16 output) keeps the emulation.
    assert ops._sm100_gemm(codes(256), codes(100), torch.bfloat16) is None
