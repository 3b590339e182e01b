"""The 16-point Random Hadamard Transform applied to Wgrad inputs (NUMERICS.md §5).

``H = diag(s) @ H16 / 4`` with ``H16`` the Sylvester Hadamard matrix
(``H16[i, j] = (-1)^popcount(i & j)``) and ``s`` a fixed sign vector. ``H`` is
orthogonal (``H @ H.T = I``), so transforming both operands of a GEMM along its
reduction dimension leaves the product unchanged while spreading outliers over
16 elements, which lowers the block amax that sets the FP4 scale.

Every 16-element run ``r`` of the last dimension becomes ``r @ H``.
"""

from __future__ import annotations

import functools

import torch

RHT_SIZE = 16

#: TransformerEngine's sign vector; the same for every layer and every step.
DEFAULT_RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


@functools.lru_cache(maxsize=None)
def _sylvester16() -> torch.Tensor:
    idx = torch.arange(RHT_SIZE)
    parity = torch.zeros(RHT_SIZE, RHT_SIZE, dtype=torch.int64)
    both = idx[:, None] & idx[None, :]
    for bit in range(4):
        parity ^= (both >> bit) & 1
    return (1 - 2 * parity).to(torch.float64)


def rht_matrix(sign=None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``diag(sign) @ H16 / 4`` as a 16x16 tensor (entries ±1/4, exact in any float dtype)."""
    signs = torch.tensor(DEFAULT_RHT_SIGNS if sign is None else sign, dtype=torch.float64).flatten()
    if signs.numel() != RHT_SIZE or not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError(f"the RHT sign vector must hold 16 entries of +1 or -1, got {sign!r}")
    return (signs[:, None] * _sylvester16() / 4).to(dtype=dtype, device=device)


def rht(x: torch.Tensor, sign=None) -> torch.Tensor:
    """Apply the 16-point RHT to each 16-element run of ``x``'s last dimension.

    The products are exact (``x * ±1/4``) and the 16-term sums are formed in
    float64, so the result is the exact transform rounded once to ``x.dtype``.
    """
    if x.dim() == 0 or x.shape[-1] % RHT_SIZE:
        raise ValueError(
            f"rht needs the last dimension to be a multiple of {RHT_SIZE}; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"rht expects a floating-point tensor, got {x.dtype}")
    h = rht_matrix(sign, device=x.device)
    runs = x.reshape(-1, RHT_SIZE).to(torch.float64)
    return (runs @ h).to(x.dtype).reshape(x.shape)
