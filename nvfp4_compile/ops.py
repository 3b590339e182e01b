"""The custom operators the graph pass inserts: ``nvfp4::quantize`` (with the 16-point RHT
fused when asked) and ``nvfp4::quantize_pair``, ``nvfp4::transpose_2d`` and ``nvfp4::gemm``;
their BF16-operand forms for the Hopper emulation (``quantize_values``, ``quantize_with_values``,
``quantize_pair_values``, ``dequantize``, ``gemm_values``); and ``nvfp4::rht``, the transform alone.

They are ``torch.library`` custom ops, so Inductor calls them as extern kernels and
AOTAutograd's partitioner can save their outputs (FP4 codes and scales) for the
backward pass. Every op has a fake implementation that works with symbolic shapes.
The implementations here are the reference numerics (``nvfp4_compile.numerics``),
which run on CPU and CUDA tensors alike; fast device kernels register over them.

Tensors cross the op boundary as plain tensors: codes ``uint8 [rows, Kp/2]``, scales
as their bit patterns ``uint8 [rows, Kp/block]`` (E4M3 for NVFP4, E8M0 for MXFP4) and
the FP32 decode scale (1.0 for MXFP4, which has none, so one GEMM formula serves both).
``Kp`` is ``K`` rounded up to the block: ``quantize`` pads the reduction dimension with
zeros, which change neither an amax nor a sum, so GEMMs over token counts that are not a
multiple of 16 need no fallback.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

from .gemm import mxfp4_mm, nvfp4_mm
from .hadamard import rht as _rht
from .numerics import MXFP4Tensor, NVFP4Tensor, quantize as _quantize
from .recipe import BLOCK_SIZE

log = logging.getLogger(__name__)

_SCALE_DTYPE = {"nvfp4": torch.float8_e4m3fn, "mxfp4": torch.float8_e8m0fnu}


def padded_k(k, block: int):
    return (k + block - 1) // block * block


def reference_rht(x: torch.Tensor) -> torch.Tensor:
    """The 16-point RHT along the last dimension (padded to 16 with zeros), output in BF16."""
    pad = padded_k(x.shape[-1], 16) - x.shape[-1]
    x = F.pad(x, (0, pad)) if pad else x
    # Exact sums, rounded to FP32 and then to BF16: the contract of ``quantize(..., rht=True)``.
    return _rht(x.to(torch.float32)).to(torch.bfloat16)


rht = torch.library.custom_op("nvfp4::rht", mutates_args=())(reference_rht)


@rht.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], padded_k(x.shape[-1], 16)), dtype=torch.bfloat16)


def _checked_and_padded(x: torch.Tensor, block: int, check: str) -> torch.Tensor:
    """Raise on NaN/Inf when ``check`` names the operand; zero-pad K up to the block."""
    if check and not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"non-finite values (NaN or Inf) reach the FP4 quantizer of {check}")
    pad = padded_k(x.shape[1], block) - x.shape[1]
    return F.pad(x, (0, pad)) if pad else x


def reference_quantize(x: torch.Tensor, format: str, block_rows: int, rounding: str,
                       check: str, rht: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x [rows, K]`` along K (after the 16-point RHT along K when ``rht``);
    returns (codes, scale bits, decode scale).

    ``check``, when not empty, names the GEMM operand ("layers.0.fc1 fprop A"): a NaN or
    Inf in ``x`` then raises instead of propagating (the ``check_finite`` option).
    """
    block = BLOCK_SIZE[format]
    x = _checked_and_padded(x, block, check)
    q = _quantize(x.contiguous(), block=(block_rows, block), rounding=rounding, format=format, rht=rht)
    scale = q.global_scale if format == "nvfp4" else torch.ones((), dtype=torch.float32, device=x.device)
    return q.codes, q.scales.view(torch.uint8), scale


quantize = torch.library.custom_op("nvfp4::quantize", mutates_args=())(reference_quantize)


@quantize.register_fake
def _quantize_fake(x, format, block_rows, rounding, check, rht=False):
    block = BLOCK_SIZE[format]
    kp = padded_k(x.shape[1], block)
    rows = x.shape[0]
    return (x.new_empty((rows, kp // 2), dtype=torch.uint8), x.new_empty((rows, kp // block), dtype=torch.uint8),
            x.new_empty((), dtype=torch.float32))


def reference_quantize_pair(x: torch.Tensor, format: str, rounding: str, rounding_t: str, rht_t: bool,
                            check: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both 1x16 quantizations a linear layer needs of one tensor ``x [rows, K]``: along K
    (``rounding``; X for fprop, dY for dgrad) and along the rows, i.e. of ``x^T``
    (``rounding_t``, after the RHT when ``rht_t``; X^T and dY^T for wgrad). Returns the
    (codes, scale bits, decode scale) of each, exactly as two ``quantize`` calls would."""
    return (*reference_quantize(x, format, 1, rounding, check),
            *reference_quantize(x.t(), format, 1, rounding_t, check, rht_t))


quantize_pair = torch.library.custom_op("nvfp4::quantize_pair", mutates_args=())(reference_quantize_pair)


@quantize_pair.register_fake
def _(x, format, rounding, rounding_t, rht_t, check):
    return (*_quantize_fake(x, format, 1, rounding, check), *_quantize_fake(x.t(), format, 1, rounding_t, check, rht_t))


def _as_tensor(codes, scale_bits, scale, format, block_rows):
    block = BLOCK_SIZE[format]
    shape = torch.Size((codes.shape[0], codes.shape[1] * 2))
    scales = scale_bits.view(_SCALE_DTYPE[format])
    if format == "nvfp4":
        return NVFP4Tensor(codes, scales, scale, shape, (block_rows, block))
    return MXFP4Tensor(codes, scales, shape, (block_rows, block))


def _reference_transpose_2d(codes: torch.Tensor, scale_bits: torch.Tensor,
                            format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantization of ``W^T`` from the 2D quantization of ``W``: codes and tiles move, nothing rounds."""
    block = BLOCK_SIZE[format]
    t = _as_tensor(codes, scale_bits, torch.ones(()), format, block).t()
    return t.codes, t.scales.view(torch.uint8)


transpose_2d = torch.library.custom_op("nvfp4::transpose_2d", mutates_args=())(_reference_transpose_2d)


@transpose_2d.register_fake
def _(codes, scale_bits, format):
    block = BLOCK_SIZE[format]
    rows, k = codes.shape[0], codes.shape[1] * 2
    return codes.new_empty((k, rows // 2)), scale_bits.new_empty((k, rows // block))


def reference_gemm(a_codes: torch.Tensor, a_scale_bits: torch.Tensor, a_scale: torch.Tensor,
         b_codes: torch.Tensor, b_scale_bits: torch.Tensor, b_scale: torch.Tensor,
         bias: torch.Tensor | None, format: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``C = A @ B^T (+ bias)`` for A and B quantized along K (NUMERICS.md §6); ``[M, N]`` in ``out_dtype``."""
    a = _as_tensor(a_codes, a_scale_bits, a_scale, format, 1)
    b = _as_tensor(b_codes, b_scale_bits, b_scale, format, 1)
    mm = nvfp4_mm if format == "nvfp4" else mxfp4_mm
    return mm(a, b, out_dtype=out_dtype, bias=bias)


gemm = torch.library.custom_op("nvfp4::gemm", mutates_args=())(reference_gemm)


@gemm.register_fake
def _(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, format, out_dtype):
    return a_codes.new_empty((a_codes.shape[0], b_codes.shape[0]), dtype=out_dtype)


# -- BF16 operands (Hopper emulation) ------------------------------------------------------
# An NVFP4 operand consumed by one GEMM, in the pass that quantizes it, need not exist as codes
# in memory: the emulated GEMM multiplies the BF16 values ``q * s_dec_b`` (exact), so the
# quantize kernel writes those directly and the dequantize pass is skipped
# (``passes/bf16_operands.py``). These ops are that form; their references are the code-based
# ops above, composed, so both forms agree bit for bit.


def reference_dequantize(codes: torch.Tensor, scale_bits: torch.Tensor, format: str) -> torch.Tensor:
    """``q * s_dec_b`` of 1x16 NVFP4 codes in BF16 ``[rows, Kp]``: exact (2 x 4 significant bits).
    S_dec is not applied: the GEMM applies it as alpha."""
    if format != "nvfp4":
        raise ValueError(f"BF16 operands are NVFP4 only (E8M0 scales overflow BF16); got {format!r}")
    from .numerics import block_scaled_values

    return block_scaled_values(_as_tensor(codes, scale_bits, torch.ones(()), format, 1)).to(torch.bfloat16)


def reference_quantize_values(x: torch.Tensor, format: str, block_rows: int, rounding: str, check: str,
                              rht: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize`` followed by ``dequantize``: (``q * s_dec_b`` in BF16 ``[rows, Kp]``, S_dec)."""
    codes, scale_bits, scale = reference_quantize(x, format, block_rows, rounding, check, rht)
    return reference_dequantize(codes, scale_bits, format), scale


quantize_values = torch.library.custom_op("nvfp4::quantize_values", mutates_args=())(reference_quantize_values)


@quantize_values.register_fake
def _(x, format, block_rows, rounding, check, rht=False):
    kp = padded_k(x.shape[1], BLOCK_SIZE[format])
    return x.new_empty((x.shape[0], kp), dtype=torch.bfloat16), x.new_empty((), dtype=torch.float32)


def reference_quantize_with_values(x: torch.Tensor, format: str, block_rows: int, rounding: str, check: str,
                                   rht: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize`` and its ``dequantize``, both kept: (codes, scale bits, S_dec, ``q * s_dec_b`` in
    BF16). For an operand one GEMM takes now and another later (a 2D weight: fprop reads the
    values, the forward saves the codes for dgrad)."""
    codes, scale_bits, scale = reference_quantize(x, format, block_rows, rounding, check, rht)
    return codes, scale_bits, scale, reference_dequantize(codes, scale_bits, format)


quantize_with_values = torch.library.custom_op("nvfp4::quantize_with_values", mutates_args=())(
    reference_quantize_with_values)


@quantize_with_values.register_fake
def _(x, format, block_rows, rounding, check, rht=False):
    codes, scale_bits, scale = _quantize_fake(x, format, block_rows, rounding, check, rht)
    return codes, scale_bits, scale, x.new_empty((x.shape[0], codes.shape[1] * 2), dtype=torch.bfloat16)


def _pair_outputs(pair: tuple, values: tuple[bool, bool], format: str, dequantize_fn) -> tuple:
    """``quantize_pair``'s six outputs with the halves named by ``values`` dequantized."""
    out = []
    for (codes, scale_bits, scale), as_values in zip((pair[:3], pair[3:]), values):
        if as_values:
            out.extend((dequantize_fn(codes, scale_bits, format), codes.new_empty((0,)), scale))
        else:
            out.extend((codes, scale_bits, scale))
    return tuple(out)


def reference_quantize_pair_values(x: torch.Tensor, format: str, rounding: str, rounding_t: str, rht_t: bool,
                                   check: str, rows_as_values: bool, cols_as_values: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize_pair`` with either half as ``quantize_values`` returns it: (BF16 values, an empty
    uint8 tensor where the scale bits were, S_dec)."""
    pair = reference_quantize_pair(x, format, rounding, rounding_t, rht_t, check)
    return _pair_outputs(pair, (rows_as_values, cols_as_values), format, reference_dequantize)


quantize_pair_values = torch.library.custom_op("nvfp4::quantize_pair_values", mutates_args=())(
    reference_quantize_pair_values)


@quantize_pair_values.register_fake
def _(x, format, rounding, rounding_t, rht_t, check, rows_as_values, cols_as_values):
    out = []
    for src, as_values in ((x, rows_as_values), (x.t(), cols_as_values)):
        codes, scale_bits, scale = _quantize_fake(src, format, 1, "rne", check)
        if as_values:
            out.extend((src.new_empty((src.shape[0], codes.shape[1] * 2), dtype=torch.bfloat16),
                        src.new_empty((0,), dtype=torch.uint8), scale))
        else:
            out.extend((codes, scale_bits, scale))
    return tuple(out)


dequantize = torch.library.custom_op("nvfp4::dequantize", mutates_args=())(reference_dequantize)


@dequantize.register_fake
def _(codes, scale_bits, format):
    return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=torch.bfloat16)


def reference_gemm_values(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                          bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``gemm`` on BF16 operands ``a [M, Kp]``, ``b [N, Kp]`` holding ``q * s_dec_b``: the same
    arithmetic (exact products, an FP32 sum, alpha and bias in FP32, one rounding)."""
    from .gemm import _epilogue

    acc = (a.to(torch.float64) @ b.to(torch.float64).t()).to(torch.float32)
    alpha = a_scale.to(torch.float32) * b_scale.to(torch.float32)
    return _epilogue(acc, alpha, bias, out_dtype)


gemm_values = torch.library.custom_op("nvfp4::gemm_values", mutates_args=())(reference_gemm_values)


@gemm_values.register_fake
def _(a, a_scale, b, b_scale, bias, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# -- CUDA: Triton kernels (Hopper emulation); the CuTe-DSL GEMM on sm_100a/sm_103a --------
# Set NVFP4_COMPILE_REFERENCE_KERNELS=1 to run the reference implementations on CUDA too.

# The CUDA kernels are registered on the dispatcher's CUDA key directly rather than through
# ``custom_op.register_kernel``, which adds a Python wrapper to every call (an aliasing check, a
# dynamo guard). Host time matters here: without CUDA graphs a linear layer below 8192 is bound
# by it (on an H100, 2048: 3.75 -> 3.59 ms per fwd+bwd with this change; bench/RESULTS.md).
_CUDA_IMPLS = torch.library.Library("nvfp4", "IMPL")


def _cuda_kernel(op):
    """Register ``fn`` as ``op``'s CUDA kernel (fake tensors and the CPU reference stay with
    ``custom_op``)."""
    def register(fn):
        _CUDA_IMPLS.impl(op._name, fn, "CUDA")
        _CUDA_OPS.append(op._name)
        return fn
    return register


_CUDA_OPS: list[str] = []
_autograd_fallthrough: torch.library.Library | None = None


def set_autograd_fallthrough(enabled: bool) -> None:
    """Let CUDA calls of the ops fall through the autograd key (the default), or not.

    The ops run inside compiled graphs, after AOTAutograd has built the backward: nothing
    differentiates through them. ``custom_op``'s autograd kernel is Python (a grad-mode check and
    a redispatch: tens of microseconds a call on an H100 host, ``bench/host_overhead.py``); the
    fallthrough skips it in C++. On CUDA an op called eagerly on tensors that require grad so
    returns a result without a ``grad_fn``; on CPU ``custom_op``'s error on backward stays."""
    global _autograd_fallthrough
    if _autograd_fallthrough is not None:
        _autograd_fallthrough._destroy()
        _autograd_fallthrough = None
    if enabled:
        _autograd_fallthrough = torch.library.Library("nvfp4", "IMPL")
        for name in _CUDA_OPS:
            _autograd_fallthrough.impl(name, torch.library.fallthrough_kernel, "AutogradCUDA")


@functools.cache
def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


#: The Triton kernels address their tensors with 32-bit element offsets.
MAX_KERNEL_OFFSET = 2**31 - 1
_too_large_logged: set = set()


def _largest_offset(t: torch.Tensor) -> int:
    """The largest element offset of ``t`` or of an output with as many elements (a broadcast view
    stores fewer than it has); 2-D, the ops' case, without a loop (every op call pays for this)."""
    n = t.numel()
    if n == 0:
        return 0
    if t.is_contiguous():  # the common case, and the cheapest to decide
        return n - 1
    if t.dim() == 2:
        (rows, cols), (row_stride, col_stride) = t.shape, t.stride()
        return max(n - 1, (rows - 1) * abs(row_stride) + (cols - 1) * abs(col_stride))
    return max(n - 1, sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())))


def _kernel_addressable(op: str, *tensors: torch.Tensor) -> bool:
    """Whether every element of ``tensors`` (and of an output as large as one of them) lies within
    the kernels' 32-bit offsets; if not, logged once per op and shapes, and the caller runs the
    PyTorch reference (64-bit indexing) instead of wrapping around an offset."""
    too_large = [tuple(t.shape) for t in tensors if _largest_offset(t) > MAX_KERNEL_OFFSET]
    if too_large and (op, *too_large) not in _too_large_logged:
        _too_large_logged.add((op, *too_large))
        log.warning("nvfp4::%s on a tensor of shape %s: beyond the Triton kernels' 32-bit element offsets "
                    "(2^31 elements); running the PyTorch reference for it", op, too_large[0])
    return not too_large


def _fast_path_available(op: str, *tensors: torch.Tensor) -> bool:
    """Whether ``op`` takes the Triton/cuBLASLt path for ``tensors`` (on one CUDA device): Triton
    installed, not opted out (``NVFP4_COMPILE_REFERENCE_KERNELS=1``), every tensor addressable."""
    if not tensors[0].is_cuda or os.environ.get("NVFP4_COMPILE_REFERENCE_KERNELS") == "1":
        return False
    return _triton_installed() and _kernel_addressable(op, *tensors)


def _quantize_cuda(x, format, block_rows, rounding, check, rht, values: bool, codes: bool):
    """``quantize`` (codes), ``quantize_values`` (BF16 values) or ``quantize_with_values`` (both) on CUDA."""
    if format != "nvfp4" or not _fast_path_available("quantize", x):
        reference = {(False, True): reference_quantize, (True, False): reference_quantize_values,
                     (True, True): reference_quantize_with_values}[values, codes]
        return reference(x, format, block_rows, rounding, check, rht)
    from .kernels.triton_quantize import quantize_nvfp4

    return quantize_nvfp4(_checked_and_padded(x, 16, check), block_rows, rounding, rht=rht, values=values,
                          codes=codes)


@_cuda_kernel(quantize)
def _(x, format, block_rows, rounding, check, rht=False):
    return _quantize_cuda(x, format, block_rows, rounding, check, rht, values=False, codes=True)


@_cuda_kernel(quantize_values)
def _(x, format, block_rows, rounding, check, rht=False):
    return _quantize_cuda(x, format, block_rows, rounding, check, rht, values=True, codes=False)


@_cuda_kernel(quantize_with_values)
def _(x, format, block_rows, rounding, check, rht=False):
    return _quantize_cuda(x, format, block_rows, rounding, check, rht, values=True, codes=True)


def _quantize_pair_cuda(x, format, rounding, rounding_t, rht_t, check, values: tuple[bool, bool]):
    """``quantize_pair`` on CUDA; ``values`` names the halves that come as BF16 values
    (``quantize_pair_values``)."""
    fast = format == "nvfp4" and not check and _fast_path_available("quantize_pair", x)
    # NVFP4_COMPILE_PAIR_KERNEL=1: one single-pass kernel for both (triton_quantize_pair): bit-identical
    # but slower on an H100 (bench/RESULTS.md): transposing and transforming a tile on chip costs
    # more instructions than the second read of x saves (not with FP16/FP32 + RHT). Codes only.
    if (fast and not any(values) and (x.dtype == torch.bfloat16 or not rht_t)
            and os.environ.get("NVFP4_COMPILE_PAIR_KERNEL") == "1"):
        from .kernels.triton_quantize_pair import quantize_pair_nvfp4

        return quantize_pair_nvfp4(x, rounding, rounding_t, rht_t)
    # The default with the RHT: one pass reads x for both amaxes and writes RHT(x^T) in BF16, then
    # the rowwise kernel quantizes x and that (NVFP4_COMPILE_FUSED_RHT=1: the RHT inside the kernel).
    if (fast and rht_t and x.dtype == torch.bfloat16 and x.shape[0] % 16 == 0 and x.shape[1] % 16 == 0
            and x.numel() and os.environ.get("NVFP4_COMPILE_FUSED_RHT") != "1"):
        from .kernels.triton_rht_transpose import quantize_pair_rht

        return quantize_pair_rht(x, rounding, rounding_t, values=values)
    quantize_cuda = torch.ops.nvfp4.quantize.default
    pair = (*quantize_cuda(x, format, 1, rounding, check), *quantize_cuda(x.t(), format, 1, rounding_t, check, rht_t))
    return _pair_outputs(pair, values, format, torch.ops.nvfp4.dequantize.default)


@_cuda_kernel(quantize_pair)
def _(x, format, rounding, rounding_t, rht_t, check):
    return _quantize_pair_cuda(x, format, rounding, rounding_t, rht_t, check, values=(False, False))


@_cuda_kernel(quantize_pair_values)
def _(x, format, rounding, rounding_t, rht_t, check, rows_as_values, cols_as_values):
    return _quantize_pair_cuda(x, format, rounding, rounding_t, rht_t, check, values=(rows_as_values, cols_as_values))


@_cuda_kernel(rht)
def _(x):
    if x.dim() != 2 or not _fast_path_available("rht", x):
        return reference_rht(x)
    from .kernels.triton_dequant import rht_to_bf16

    pad = padded_k(x.shape[-1], 16) - x.shape[-1]
    return rht_to_bf16(F.pad(x, (0, pad)) if pad else x)


@_cuda_kernel(transpose_2d)
def _(codes, scale_bits, format):
    # NVFP4_COMPILE_TRITON_TRANSPOSE=0 takes the plain-PyTorch reference instead.
    opted_out = os.environ.get("NVFP4_COMPILE_TRITON_TRANSPOSE") == "0"
    if format != "nvfp4" or opted_out or not _fast_path_available("transpose_2d", codes, scale_bits):
        return _reference_transpose_2d(codes, scale_bits, format)
    from .kernels.triton_transpose import transpose_2d_nvfp4

    return transpose_2d_nvfp4(codes, scale_bits)


def _sm100_gemm(a_codes, b_codes, out_dtype):
    """The CuTe-DSL block-scaled GEMM module on compute capability 10.0/10.3 (Blackwell) for a
    shape it supports, else None. Compiled and inspected on CPUs only: never run by this project."""
    from cutlass_kernels.dispatch import use_sm100_gemm

    if not use_sm100_gemm(a_codes.device):
        return None
    from cutlass_kernels import nvfp4_gemm

    return nvfp4_gemm if nvfp4_gemm.op_supported(a_codes, b_codes, out_dtype) else None


@_cuda_kernel(gemm)
def _(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, format, out_dtype):
    native = _sm100_gemm(a_codes, b_codes, out_dtype) if format == "nvfp4" else None
    if native is not None:  # raises CutlassDSLMissingError, naming the package, without cutlass-dsl
        return native.gemm_for_op(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, out_dtype)
    if format != "nvfp4" or not _fast_path_available("gemm", a_codes, b_codes):
        return reference_gemm(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, format, out_dtype)
    from .kernels.triton_gemm import emulated_gemm

    return emulated_gemm(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, out_dtype)


@_cuda_kernel(dequantize)
def _(codes, scale_bits, format):
    if format != "nvfp4" or not _fast_path_available("dequantize", codes):
        return reference_dequantize(codes, scale_bits, format)
    from .kernels.triton_dequant import dequantize_to_bf16

    return dequantize_to_bf16(codes, scale_bits)


@_cuda_kernel(gemm_values)
def _(a, a_scale, b, b_scale, bias, out_dtype):
    if not _fast_path_available("gemm_values", a, b):
        return reference_gemm_values(a, a_scale, b, b_scale, bias, out_dtype)
    from .kernels.triton_gemm import emulated_gemm_values

    return emulated_gemm_values(a, a_scale, b, b_scale, bias, out_dtype)


# NVFP4_COMPILE_AUTOGRAD_FALLTHROUGH=0 keeps custom_op's autograd kernel on CUDA (slower host).
set_autograd_fallthrough(os.environ.get("NVFP4_COMPILE_AUTOGRAD_FALLTHROUGH", "1") != "0")
