"""Element and scale formats: FP4 E2M1 codes, their packing, and the scale casts.

FP4 E2M1 has 16 codes. Codes 0..7 are the magnitudes ``0, 0.5, 1, 1.5, 2, 3, 4, 6``;
codes 8..15 are the same magnitudes with the sign bit set (8 is -0). Two codes
share a byte: the element with the lower index sits in the low nibble.

Round-to-nearest-even onto that grid (NUMERICS.md §2 step 4) is a ladder of
decision points on ``|v|``; the ties 0.25, 1.25, 2.5 and 5 fall to the even
neighbour below (0, 1, 2, 4: even mantissa), the ties 0.75, 1.75 and 3.5 to the
even neighbour above (1, 2, 4)::

    |v| <= 0.25 -> 0     < 0.75 -> 0.5   <= 1.25 -> 1   < 1.75 -> 1.5
    <= 2.5      -> 2     < 3.5  -> 3     <= 5    -> 4   else    -> 6 (saturate)

Stochastic rounding (NUMERICS.md §3) picks the grid neighbour above ``|v|`` with
probability ``(|v| - lo) / (hi - lo)``; the steps are powers of two, so the
difference and the quotient are exact in FP32.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
FP32_MAX = torch.finfo(torch.float32).max

#: Magnitude of each E2M1 code 0..7.
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Value of each of the 16 E2M1 codes.
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES)

# Each pair is (threshold, inclusive): |v| above the threshold (or equal to it,
# when inclusive) moves one code up. Inclusive thresholds are the ties that round up.
_RNE_LADDER = ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
               (2.5, False), (3.5, True), (5.0, False))


def _sign_bit(v: torch.Tensor) -> torch.Tensor:
    # A negative value keeps its sign even when it rounds to zero (code 8, -0), but -0.0
    # itself encodes as +0: the reference quantizer's rule (golden vectors).
    return (v < 0).to(torch.uint8) << 3


def e2m1_rne(v: torch.Tensor) -> torch.Tensor:
    """FP32 ``v`` -> E2M1 codes (uint8, 0..15), round to nearest even, saturating at ±6.

    NaN maps to a zero code; callers mark NaN blocks through their scale instead.
    """
    a = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for threshold, inclusive in _RNE_LADDER:
        code += (a >= threshold if inclusive else a > threshold).to(torch.uint8)
    return code | _sign_bit(v)


def e2m1_sr(v: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """FP32 ``v`` -> E2M1 codes by stochastic rounding, saturating at ±6.

    ``uniform`` holds one draw from U[0, 1) per element; the magnitude rounds up
    when ``uniform < (|v| - lo) / (hi - lo)``, so ``E[value] = v`` for ``|v| <= 6``.
    """
    grid = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=v.device)
    a = v.abs()
    # Index of the grid point at or below |v|; 7 for |v| >= 6 (saturation), and
    # clamped to 6 so that hi = grid[lo + 1] is always defined.
    lo = torch.bucketize(a, grid, right=True) - 1
    saturated = lo >= 7
    lo = lo.clamp(0, 6)
    lo_val, hi_val = grid[lo], grid[lo + 1]
    frac = (a - lo_val) / (hi_val - lo_val)
    code = torch.where(saturated | (uniform < frac), lo + 1, lo).to(torch.uint8)
    code = torch.where(torch.isnan(v), torch.zeros_like(code), code)
    return code | _sign_bit(v)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8, 0..15) -> their FP32 values."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    return table[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` codes -> ``[..., K/2]`` bytes, the lower index in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd number of codes (last dimension {codes.shape[-1]})")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """``[..., K/2]`` bytes -> ``[..., K]`` codes; the inverse of :func:`pack_nibbles`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def e4m3_rne_satfinite(s: torch.Tensor) -> torch.Tensor:
    """FP32 -> ``torch.float8_e4m3fn``, round to nearest even, saturating at ±448.

    The clamp matters: an unclamped cast turns values above 464 into NaN. NaN stays
    NaN, which is how a block holding NaN or Inf is marked.
    """
    return s.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def e8m0_from_exponent(exponent: torch.Tensor) -> torch.Tensor:
    """Unbiased power-of-two exponents (clamped to [-127, 127]) -> ``torch.float8_e8m0fnu``."""
    biased = (exponent.clamp(-127, 127) + 127).to(torch.uint8)
    return biased.view(torch.float8_e8m0fnu)


E8M0_NAN_BITS = 0xFF
E4M3_NAN_BITS = 0x7F
