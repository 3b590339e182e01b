"""Triton GEMMs for the Hopper emulation of ``C = alpha * (A @ B^T) (+ bias)`` (NUMERICS.md §6).

Hopper has no FP4 tensor cores, but every ``q * s_dec_b`` (an E2M1 value times an E4M3 block
scale) is exact in BF16, so a BF16 tensor-core product with FP32 accumulation over those
values, scaled once by ``alpha = S_dec^A * S_dec^B``, computes the block-scaled FP4 product up
to the order of the FP32 sums. Three ways to run it, all with the same single rounding:

- ``"cublaslt"`` (the default): dequantize both operands to BF16 (``triton_dequant``), then one
  cuBLASLt GEMM that reads alpha from device memory and applies it and the bias in its FP32
  epilogue before rounding to ``out_dtype`` (``cublaslt.py``). Where cuBLASLt refuses the
  problem (or cannot be loaded), the call logs why and takes ``"cublas"``.
- ``"cublas"``: dequantize both operands to BF16, cuBLAS ``mm`` with an FP32 output, then one
  Triton pass ``alpha * acc (+ bias) -> out_dtype``.
- ``"triton"``: dequantize both operands to BF16, then a Triton tensor-core GEMM whose
  epilogue applies alpha and bias: no FP32 output in memory.
- ``"fused"``: a Triton GEMM that reads the packed codes and E4M3 scales and dequantizes
  in registers before each MMA: neither BF16 operand nor FP32 output touches memory.

``alpha`` and the bias are read on the device (no host round trip). Which one is fastest
depends on the GPU and the shape; ``bench/gemm.py`` measures them, ``DEFAULT_STRATEGY``
records the choice.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
import triton
import triton.language as tl

from . import cublaslt
from .launch import cdiv, fast_launch
from .triton_dequant import _fp4_tile, dequantize_to_bf16

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GemmTiles:
    block_m: int = 128
    block_n: int = 256
    block_k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3


DEFAULT_TILES = GemmTiles()
STRATEGIES = ("cublaslt", "cublas", "triton", "fused")
#: ``NVFP4_COMPILE_GEMM=cublaslt|cublas|triton|fused`` overrides the measured choice.
DEFAULT_STRATEGY = os.environ.get("NVFP4_COMPILE_GEMM", "cublaslt")


_refusals_logged: set = set()


def _cublaslt_gemm(a, b, alpha, bias, out):
    """The cuBLASLt GEMM into ``out`` (``alpha``: FP32 on the device, ``[alpha, 0]`` (beta beside
    it) or 0-dim (beta the device's zero)), or None (logged once per reason) where it does not apply."""
    if not cublaslt.supported(a, b, out.dtype, bias):
        reason = "operands or bias it does not take (dtype, alignment, K or N not a multiple of 8)"
    else:
        try:
            beta = cublaslt.device_zero(a.device) if alpha.numel() == 1 else None
            return cublaslt.matmul(a, b, alpha, bias, out, beta)
        except cublaslt.CublasLtError as err:
            reason = str(err)
    key = reason.split(" for M=")[0]
    if key not in _refusals_logged:
        _refusals_logged.add(key)
        log.warning("nvfp4 GEMM: cuBLASLt not used (%s; M=%d N=%d K=%d); taking cuBLAS with an FP32 output "
                    "and a separate epilogue", reason, a.shape[0], b.shape[0], a.shape[1])
    return None


@triton.jit
def _gemm_kernel(a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
                 M, N, K, FP4_INPUTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_N]`` tile of C; programs grouped along M so B tiles stay in L2."""
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rows_a = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_b = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if FP4_INPUTS:
            a = _fp4_tile(a_ptr, a_scales_ptr, rows_a, k0, M, K, BLOCK_M, BLOCK_K)
            b = _fp4_tile(b_ptr, b_scales_ptr, rows_b, k0, N, K, BLOCK_N, BLOCK_K)
        else:
            kmask = (k0 + ks)[None, :] < K
            a = tl.load(a_ptr + rows_a[:, None].to(tl.int64) * K + (k0 + ks)[None, :],
                        mask=(rows_a[:, None] < M) & kmask, other=0.0)
            b = tl.load(b_ptr + rows_b[:, None].to(tl.int64) * K + (k0 + ks)[None, :],
                        mask=(rows_b[:, None] < N) & kmask, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)

    alpha = tl.load(a_scale_ptr) * tl.load(b_scale_ptr)
    out = acc * alpha
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    mask = (rows_a[:, None] < M) & (cols[None, :] < N)
    tl.store(c_ptr + rows_a[:, None].to(tl.int64) * N + cols[None, :], out.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _epilogue_kernel(acc_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, out_ptr, M, N, HAS_BIAS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``alpha * acc (+ bias)`` in FP32, one rounding to the output dtype."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    out = tl.load(acc_ptr + offsets, mask=mask, other=0.0) * (tl.load(a_scale_ptr) * tl.load(b_scale_ptr))
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


_EPILOGUE = fast_launch(_epilogue_kernel)


def _fp32_scalar(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an FP32 0-dim tensor; as it comes, without a dispatched op, when it is one already
    (the ops' own S_dec: every GEMM call pays for this check)."""
    return t if t.dtype == torch.float32 and t.dim() == 0 else t.reshape(()).to(torch.float32)


def _prepare(a_scale, b_scale, M, N, K, bias, out_dtype, device, strategy):
    """(strategy, FP32 scales, the output, whether it is already complete: an empty product)."""
    strategy = strategy or DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown GEMM strategy {strategy!r}; expected one of {STRATEGIES}")
    a_scale, b_scale = _fp32_scalar(a_scale), _fp32_scalar(b_scale)
    out = torch.empty((M, N), dtype=out_dtype, device=device)
    if M and N and K == 0:  # an empty sum: the bias (or zero), rounded once
        out.copy_(bias.expand(M, N)) if bias is not None else out.zero_()
    return strategy, a_scale, b_scale, out, not (M and N and K)


def _gemm_kernel_launch(a, a_s, b, b_s, a_scale, b_scale, bias, out, K, fp4_inputs: bool, tiles: GemmTiles):
    M, N = out.shape
    bias_arg = bias.contiguous() if bias is not None else a_scale  # unread without HAS_BIAS
    t = tiles
    grid = (cdiv(M, t.block_m) * cdiv(N, t.block_n),)
    _gemm_kernel[grid](a, a_s, b, b_s, a_scale, b_scale, bias_arg, out, M, N, K,
                       FP4_INPUTS=fp4_inputs, HAS_BIAS=bias is not None,
                       BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, GROUP_M=t.group_m,
                       num_warps=t.num_warps, num_stages=t.num_stages)
    return out


def _gemm_on_values(a, b, a_scale, b_scale, alpha, bias, out, strategy: str, tiles: GemmTiles) -> torch.Tensor:
    """``out = alpha * (a @ b^T) (+ bias)`` for row-major BF16 ``q * s_dec_b`` operands (``b`` may be
    a ``cublaslt.transposed_view`` for ``"cublaslt"``, cuBLAS reads it too): cuBLASLt
    with ``alpha`` (FP32 on the device) for ``"cublaslt"``, the Triton GEMM for ``"triton"``,
    otherwise (or where cuBLASLt refuses) cuBLAS with an FP32 output and the epilogue kernel."""
    if strategy == "cublaslt" and _cublaslt_gemm(a, b, alpha, bias, out) is not None:
        return out
    if strategy == "triton":
        return _gemm_kernel_launch(a, a, b, b, a_scale, b_scale, bias, out, a.shape[1], False, tiles)
    M, N = out.shape
    bias_arg = bias.contiguous() if bias is not None else a_scale  # unread without HAS_BIAS
    acc = torch.mm(a, b.t(), out_dtype=torch.float32)
    _EPILOGUE[(cdiv(M, 32), cdiv(N, 256))](acc, a_scale, b_scale, bias_arg, out, M, N, HAS_BIAS=bias is not None,
                                           BLOCK_M=32, BLOCK_N=256, num_warps=8)
    return out


def emulated_gemm(a_codes, a_scale_bits, a_scale, b_codes, b_scale_bits, b_scale, bias, out_dtype,
                  strategy: str | None = None, tiles: GemmTiles = DEFAULT_TILES) -> torch.Tensor:
    """``alpha * (A_deq @ B_deq^T) (+ bias)`` in ``out_dtype``; ``A [M, K/2]``, ``B [N, K/2]`` packed codes."""
    M, N, K = a_codes.shape[0], b_codes.shape[0], a_codes.shape[1] * 2
    strategy, a_scale, b_scale, out, done = _prepare(a_scale, b_scale, M, N, K, bias, out_dtype, a_codes.device,
                                                     strategy)
    if done:
        return out
    if strategy == "fused":
        return _gemm_kernel_launch(a_codes.contiguous(), a_scale_bits.contiguous(), b_codes.contiguous(),
                                   b_scale_bits.contiguous(), a_scale, b_scale, bias, out, K, True, tiles)
    a = dequantize_to_bf16(a_codes, a_scale_bits)
    alpha = None
    if strategy == "cublaslt":  # the second dequantize launch also writes [alpha, 0] for cuBLASLt
        alpha = torch.empty(2, dtype=torch.float32, device=a_codes.device)
        b = dequantize_to_bf16(b_codes, b_scale_bits, alpha_of=(a_scale, b_scale, alpha))
    else:
        b = dequantize_to_bf16(b_codes, b_scale_bits)
    return _gemm_on_values(a, b, a_scale, b_scale, alpha, bias, out, strategy, tiles)


def emulated_gemm_values(a, a_scale, b, b_scale, bias, out_dtype, strategy: str | None = None,
                         tiles: GemmTiles = DEFAULT_TILES) -> torch.Tensor:
    """``alpha * (a @ b^T) (+ bias)`` in ``out_dtype`` for BF16 operands ``a [M, K]``, ``b [N, K]``
    holding ``q * s_dec_b`` (``nvfp4::gemm_values``): ``emulated_gemm`` without the dequantize
    passes (``"fused"``, which reads codes, takes cuBLAS). ``alpha = a_scale * b_scale`` is one
    FP32 product on the device, as there. ``b`` may be the transposed view of a row-major
    ``[K, N]`` (dgrad's weight, ``[N_out, K_out]`` dequantized as it was saved): cuBLASLt reads it
    in place; the other strategies copy it to row-major first."""
    M, N, K = a.shape[0], b.shape[0], a.shape[1]
    strategy, a_scale, b_scale, out, done = _prepare(a_scale, b_scale, M, N, K, bias, out_dtype, a.device, strategy)
    if done:
        return out
    alpha = a_scale * b_scale if strategy == "cublaslt" else None
    if not (strategy == "cublaslt" and cublaslt.transposed_view(b)):
        b = b.contiguous()
    return _gemm_on_values(a.contiguous(), b, a_scale, b_scale, alpha, bias, out, strategy, tiles)
