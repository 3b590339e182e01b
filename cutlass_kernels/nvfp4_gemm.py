"""Host wrapper of the sm_100a NVFP4 GEMM (``sm100_nvfp4_gemm``): torch tensors in, C out.

Compiled and inspected, not run: no Blackwell GPU has been available to this project, so
the launch below has never executed; the argument checks, the scale-layout conversion and
the compilation (which needs no GPU) are what the tests exercise.

``C = alpha * (A @ B^T) (+ bias)`` for

* ``a_codes`` ``uint8 [M, K/2]`` and ``b_codes`` ``uint8 [N, K/2]``: two E2M1 codes a byte,
  the lower K index in the low nibble;
* ``a_scales`` ``float8_e4m3fn [M, K/16]`` and ``b_scales`` ``[N, K/16]``, row-major, one
  scale per 16 elements along K; converted here to the 128x4 blocked layout the MMA reads
  (``scale_layout.to_blocked``, one copy each);
* ``alpha`` an FP32 CUDA tensor of one element (``S_dec^A * S_dec^B``), read by the kernel;
* ``bias`` an optional ``[N]`` vector of any float type, added in FP32.

CuTe DSL (``cutlass``) is imported only here, when a GEMM is compiled or launched: the
package imports without it, and a missing install is reported by
:class:`CutlassDSLMissingError` only when this path is taken.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from .gemm_config import DEFAULT_SM_COUNT, GemmConfig, check_problem, choose_config, problem_supported
from .scale_layout import to_blocked

INSTALL_HINT = (
    "the sm_100a NVFP4 GEMM needs NVIDIA CuTe DSL (the nvidia-cutlass-dsl package, imported as "
    "`cutlass`), which cannot be imported: install it with `pip install nvidia-cutlass-dsl`, "
    "or set NVFP4_COMPILE_REFERENCE_KERNELS=1 to use the reference kernels")

#: torch output dtypes and their names in :class:`GemmConfig`.
OUT_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
#: Global pointers must be 16-byte aligned for TMA.
_ALIGN = 16


class CutlassDSLMissingError(ImportError):
    """The sm_100a GEMM was chosen but CuTe DSL (``nvidia-cutlass-dsl``) cannot be imported."""


def require_cutlass() -> None:
    """Raise :class:`CutlassDSLMissingError` unless ``cutlass.cute`` imports."""
    try:
        import cutlass  # noqa: F401
        import cutlass.cute  # noqa: F401
    except ImportError as err:
        raise CutlassDSLMissingError(INSTALL_HINT) from err


# -- compiled kernels, one per configuration -------------------------------------------------

@dataclass(frozen=True)
class CompiledGemm:
    config: GemmConfig
    function: object
    ptx: str
    compile_seconds: float


_COMPILED: dict[GemmConfig, CompiledGemm] = {}
_COMPILE_LOCK = threading.Lock()


def compiled_gemm(config: GemmConfig) -> CompiledGemm:
    """The compiled kernel for ``config``, compiled on first use and kept for the process."""
    hit = _COMPILED.get(config)
    if hit is not None:
        return hit
    require_cutlass()
    from .sm100_nvfp4_gemm import compile_gemm

    with _COMPILE_LOCK:
        hit = _COMPILED.get(config)
        if hit is None:
            start = time.perf_counter()
            function, ptx = compile_gemm(config)
            hit = _COMPILED[config] = CompiledGemm(config, function, ptx, time.perf_counter() - start)
    return hit


def compile_ptx(config: GemmConfig) -> str:
    """The PTX text of ``config``'s kernel (compiled for ``config.arch``; no GPU needed)."""
    return compiled_gemm(config).ptx


# -- argument checks and layout conversion (CPU or CUDA tensors) -----------------------------

@dataclass
class GemmLaunch:
    """Everything one launch passes to the kernel, in the layouts the kernel reads."""

    config: GemmConfig
    m: int
    n: int
    k: int
    a_codes: torch.Tensor
    b_codes: torch.Tensor
    a_scales_blocked: torch.Tensor
    b_scales_blocked: torch.Tensor
    alpha: torch.Tensor
    bias: torch.Tensor | None
    out: torch.Tensor


def _aligned(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    # A view into the middle of a buffer may start off a 16-byte boundary; a fresh copy does not.
    return t if t.data_ptr() % _ALIGN == 0 else t.clone()


def prepare_gemm(a_codes: torch.Tensor, a_scales: torch.Tensor, b_codes: torch.Tensor, b_scales: torch.Tensor,
                 alpha: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                 *, config: GemmConfig | None = None, sm_count: int = DEFAULT_SM_COUNT,
                 arch: str = "sm_100a") -> GemmLaunch:
    """Check the arguments, pick (or check) a configuration and build the kernel's inputs.

    Raises ``ValueError`` for shapes, devices or a ``config`` that do not fit, ``TypeError``
    for dtypes. Works on CPU tensors too (nothing here launches).
    """
    for label, codes in (("a_codes", a_codes), ("b_codes", b_codes)):
        if codes.dtype != torch.uint8 or codes.dim() != 2:
            raise TypeError(f"{label} must be a 2-D uint8 tensor of packed E2M1 codes, got "
                            f"{codes.dtype} {tuple(codes.shape)}")
    for label, scales in (("a_scales", a_scales), ("b_scales", b_scales)):
        if scales.dtype != torch.float8_e4m3fn or scales.dim() != 2:
            raise TypeError(f"{label} must be a 2-D float8_e4m3fn tensor of block scales, got "
                            f"{scales.dtype} {tuple(scales.shape)}")
    if out_dtype not in OUT_DTYPE_NAMES:
        raise TypeError(f"out_dtype must be one of {tuple(OUT_DTYPE_NAMES)}, got {out_dtype}")
    m, n, k = a_codes.shape[0], b_codes.shape[0], 2 * a_codes.shape[1]
    if 2 * b_codes.shape[1] != k:
        raise ValueError(f"A has K = {k} and B has K = {2 * b_codes.shape[1]}; C = A @ B^T needs them equal")
    if k % 16:
        raise ValueError(f"K = {k} is not a multiple of the 16-element scale block")
    if tuple(a_scales.shape) != (m, k // 16) or tuple(b_scales.shape) != (n, k // 16):
        raise ValueError(f"scales must be [M, K/16] = {(m, k // 16)} and [N, K/16] = {(n, k // 16)}, got "
                         f"{tuple(a_scales.shape)} and {tuple(b_scales.shape)}")
    if alpha.dtype != torch.float32 or alpha.numel() != 1:
        raise TypeError(f"alpha must be a one-element float32 tensor, got {alpha.dtype} {tuple(alpha.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n or not bias.dtype.is_floating_point):
        raise ValueError(f"bias must be a float vector of length N = {n}, got {bias.dtype} {tuple(bias.shape)}")
    tensors = [a_codes, a_scales, b_codes, b_scales, alpha] + ([bias] if bias is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")

    out_name = OUT_DTYPE_NAMES[out_dtype]
    check_problem(m, n, k, out_name)
    if config is None:
        config = choose_config(m, n, k, out_name, bias is not None, sm_count=sm_count, arch=arch)
    elif config.out_dtype != out_name or config.has_bias != (bias is not None):
        raise ValueError(f"config {config.name} is for out_dtype={config.out_dtype}, has_bias={config.has_bias}; "
                         f"the call has out_dtype={out_name}, has_bias={bias is not None}")

    device = a_codes.device
    padded_bias = None
    if bias is not None:
        # Zero padding to whole N tiles: the epilogue reads bias without bounds checks.
        n_padded = -(-n // config.mma_tile_n) * config.mma_tile_n
        padded_bias = torch.zeros(n_padded, dtype=torch.float32, device=device)
        padded_bias[:n] = bias
    return GemmLaunch(
        config=config, m=m, n=n, k=k,
        a_codes=_aligned(a_codes), b_codes=_aligned(b_codes),
        a_scales_blocked=to_blocked(a_scales), b_scales_blocked=to_blocked(b_scales),
        alpha=_aligned(alpha.reshape(1)), bias=padded_bias,
        out=torch.empty((m, n), dtype=out_dtype, device=device),
    )


# -- launch (CUDA, compute capability 10.x) --------------------------------------------------

def device_arch(device: torch.device) -> str:
    """``sm_100a`` / ``sm_103a`` for a compute-capability 10.0 / 10.3 device."""
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm_{major}{minor}a"
    if arch not in ("sm_100a", "sm_103a"):
        raise ValueError(f"the NVFP4 GEMM is built for sm_100a and sm_103a; {device} is {arch}")
    return arch


def launch_arguments(plan: GemmLaunch, stream, max_active_clusters: int) -> tuple:
    """The compiled kernel's arguments for ``plan``: seven pointers, ``m, n, k``, the number of
    clusters to launch at most, and the stream (a ``cuda.bindings.driver.CUstream``).

    Builds pointers only (nothing is dereferenced), so it works on CPU tensors too. Raises
    ``ValueError`` if a tensor breaks the alignment its pointer is compiled for.
    """
    require_cutlass()
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    from .sm100_nvfp4_gemm import pointer_specs

    tensors = (("a_codes", plan.a_codes), ("b_codes", plan.b_codes), ("a_scales", plan.a_scales_blocked),
               ("b_scales", plan.b_scales_blocked), ("out", plan.out), ("alpha", plan.alpha), ("bias", plan.bias))
    pointers = []
    for (dtype, align), (label, tensor) in zip(pointer_specs(plan.config), tensors, strict=True):
        # Without bias the kernel never reads that pointer (the bias code is not compiled in).
        address = 0 if tensor is None else tensor.data_ptr()
        if address % align:
            raise ValueError(f"{label} starts at {address:#x}, not on the {align}-byte boundary the kernel assumes")
        pointers.append(make_ptr(dtype, address, cute.AddressSpace.gmem, assumed_align=align))
    sizes = (cutlass.Int32(plan.m), cutlass.Int32(plan.n), cutlass.Int32(plan.k), cutlass.Int32(max_active_clusters))
    return (*pointers, *sizes, stream)


def launch(plan: GemmLaunch) -> torch.Tensor:
    """Run the compiled kernel for ``plan`` on the current CUDA stream; returns ``plan.out``."""
    require_cutlass()
    import cuda.bindings.driver as cuda

    device = plan.out.device
    if device.type != "cuda":
        raise ValueError(f"the sm_100a NVFP4 GEMM runs on CUDA tensors, got {device}")
    kernel = compiled_gemm(plan.config)
    # One CTA fits an SM (the stages fill shared memory), so this many clusters run at once.
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    max_clusters = max(1, sm_count // plan.config.cluster_size)
    stream = cuda.CUstream(torch.cuda.current_stream(device).cuda_stream)
    kernel.function(*launch_arguments(plan, stream, max_clusters))
    return plan.out


def nvfp4_gemm(a_codes: torch.Tensor, a_scales: torch.Tensor, b_codes: torch.Tensor, b_scales: torch.Tensor,
               alpha: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
               *, config: GemmConfig | None = None) -> torch.Tensor:
    """``alpha * (A @ B^T) (+ bias)`` on a compute-capability 10.x GPU; see the module docstring."""
    require_cutlass()
    device = a_codes.device
    if device.type != "cuda":
        raise ValueError(f"the sm_100a NVFP4 GEMM runs on CUDA tensors, got {device}")
    arch = device_arch(device)
    if config is not None and config.arch != arch:
        raise ValueError(f"config {config.name} is compiled for {config.arch}; {device} needs {arch}")
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    plan = prepare_gemm(a_codes, a_scales, b_codes, b_scales, alpha, bias, out_dtype,
                        config=config, sm_count=sm_count, arch=arch)
    return launch(plan)


# -- the nvfp4::gemm custom op's arguments ---------------------------------------------------

def _padded_k(k: int) -> int:
    """K rounded up to the kernel's multiple of 32 (``nvfp4::gemm`` pads K to 16 only)."""
    return -(-k // 32) * 32


def op_supported(a_codes: torch.Tensor, b_codes: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether :func:`gemm_for_op` takes these operands (else keep the existing kernel).

    K is padded to 32 there, so only N's output-row alignment and the dtype can refuse.
    """
    if out_dtype not in OUT_DTYPE_NAMES or a_codes.dim() != 2 or b_codes.dim() != 2:
        return False
    if a_codes.shape[1] != b_codes.shape[1] or 0 in (a_codes.shape[0], b_codes.shape[0], a_codes.shape[1]):
        return False
    k = _padded_k(2 * a_codes.shape[1])
    return problem_supported(a_codes.shape[0], b_codes.shape[0], k, OUT_DTYPE_NAMES[out_dtype])


def gemm_for_op(a_codes: torch.Tensor, a_scale_bits: torch.Tensor, a_scale: torch.Tensor,
                b_codes: torch.Tensor, b_scale_bits: torch.Tensor, b_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``nvfp4::gemm``'s NVFP4 arguments -> :func:`nvfp4_gemm`.

    ``*_codes`` are ``uint8 [rows, Kp/2]``, ``*_scale_bits`` the ``uint8`` bit patterns of the
    E4M3 block scales ``[rows, Kp/16]``, ``*_scale`` the FP32 per-tensor decode scales (0-dim
    or one element); ``alpha`` is their product, formed on the device (no host sync). A ``Kp``
    that is an odd multiple of 16 is padded by one zero block (zero codes, zero scale: it adds
    nothing) because TMA needs 16-byte code rows.
    """
    k = 2 * a_codes.shape[1]
    if k % 32:
        pad_bytes, pad_blocks = (_padded_k(k) - k) // 2, (_padded_k(k) - k) // 16
        a_codes, b_codes = (torch.nn.functional.pad(c, (0, pad_bytes)) for c in (a_codes, b_codes))
        a_scale_bits, b_scale_bits = (torch.nn.functional.pad(s, (0, pad_blocks)) for s in (a_scale_bits, b_scale_bits))
    alpha = (a_scale.to(torch.float32) * b_scale.to(torch.float32)).reshape(1)
    return nvfp4_gemm(a_codes, a_scale_bits.view(torch.float8_e4m3fn), b_codes,
                      b_scale_bits.view(torch.float8_e4m3fn), alpha, bias, out_dtype)
