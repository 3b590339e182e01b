"""Reference block-scaled FP4 GEMMs, ``C = A @ B^T`` with both operands quantized along K (TN).

NVFP4 (NUMERICS.md §6)::

    C = alpha * sum_b (s_dec_b^A * s_dec_b^B * sum_{k in b} qA_k * qB_k),   alpha = S_dec^A * S_dec^B

Each ``q * s_dec_b`` is exact in FP32 (a 2-bit by 4-bit significand product), and so is
the product of two of them, so the only roundings are in the sums, in ``alpha``'s
FP32 product and its application, and in the final cast to ``out_dtype``. Here the
sums are formed in float64 and rounded once to FP32: the exact-order limit of an
FP32 accumulation, independent of TF32 settings. MXFP4 is the same without alpha.
"""

from __future__ import annotations

import torch

from .numerics import MXFP4Tensor, NVFP4Tensor, block_scaled_values

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_operands(a, b, kind: type, out_dtype: torch.dtype, name: str) -> None:
    for label, operand in (("a", a), ("b", b)):
        if not isinstance(operand, kind):
            sibling = {MXFP4Tensor: "mxfp4_mm", NVFP4Tensor: "nvfp4_mm"}.get(type(operand))
            hint = f" (use {sibling} for {type(operand).__name__} operands)" if sibling else ""
            raise TypeError(f"{name}: operand {label} must be a {kind.__name__}, got {type(operand).__name__}{hint}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name} computes A @ B^T with both operands quantized along K; got A {tuple(a.shape)} "
            f"and B {tuple(b.shape)} whose K differ")
    if a.block[1] != b.block[1]:
        raise ValueError(f"{name}: operand blocks {a.block} and {b.block} cover different K runs")
    if a.device != b.device:
        raise ValueError(f"{name}: operands are on {a.device} and {b.device}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{name}: out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def _block_scaled_product(a, b) -> torch.Tensor:
    """``sum_k (qA*sA)(qB*sB)`` over K in FP32, via an exact float64 accumulation."""
    a_vals = block_scaled_values(a).to(torch.float64)
    b_vals = block_scaled_values(b).to(torch.float64)
    return (a_vals @ b_vals.t()).to(torch.float32)


def _epilogue(acc: torch.Tensor, alpha: torch.Tensor | None, bias: torch.Tensor | None,
              out_dtype: torch.dtype) -> torch.Tensor:
    """``alpha * acc (+ bias)`` in FP32, then one rounding to ``out_dtype``."""
    if alpha is not None:
        acc = acc * alpha
    if bias is not None:
        acc = acc + bias.to(torch.float32)
    return acc.to(out_dtype)


def nvfp4_mm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """``C = A @ B^T (+ bias)`` for ``A [M, K]`` and ``B [N, K]`` in NVFP4: ``[M, N]`` in ``out_dtype``.

    The optional ``bias`` (``[N]``) is added in FP32 before the single rounding, as an epilogue does.
    """
    _check_operands(a, b, NVFP4Tensor, out_dtype, "nvfp4_mm")
    alpha = a.global_scale.to(torch.float32) * b.global_scale.to(torch.float32)
    return _epilogue(_block_scaled_product(a, b), alpha, bias, out_dtype)


def mxfp4_mm(a: MXFP4Tensor, b: MXFP4Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """``C = A @ B^T (+ bias)`` for ``A [M, K]`` and ``B [N, K]`` in MXFP4 (no tensor scale)."""
    _check_operands(a, b, MXFP4Tensor, out_dtype, "mxfp4_mm")
    return _epilogue(_block_scaled_product(a, b), None, bias, out_dtype)
