"""An independent NumPy model of NUMERICS.md §2 and of MXFP4, for cross-checking the quantizer.

It shares no code with the package. FP32 operations are emulated in float64 and
rounded to FP32 after each step: for a single +, *, / of FP32 operands the
float64 result rounded to FP32 is the correctly rounded FP32 result (53 >= 2*24 + 2).
E4M3 and E2M1 rounding is done by nearest-neighbour search over the full value
tables, ties to the even code, instead of the package's threshold ladder.
"""

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


def f32(a):
    with np.errstate(over="ignore"):  # overflow to inf is the FP32 result
        return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def _e4m3_table():
    values, mantissas = [], []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # NaN
            values.append(m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
            mantissas.append(m)
    return np.array(values), np.array(mantissas)


E4M3_VALUES, E4M3_MANTISSAS = _e4m3_table()
E2M1_GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def round_to_table(a, table, even):
    """Nearest entry of a sorted non-negative ``table`` to ``a >= 0``, ties to ``even``; saturating."""
    a = np.minimum(a, table[-1])
    hi = np.clip(np.searchsorted(table, a, side="left"), 0, len(table) - 1)
    lo = np.clip(hi - 1, 0, len(table) - 1)
    d_lo, d_hi = a - table[lo], table[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & even[hi] & ~even[lo])
    return np.where(pick_hi, hi, lo)


def e4m3(s):
    idx = round_to_table(s, E4M3_VALUES, E4M3_MANTISSAS % 2 == 0)
    return E4M3_VALUES[idx]


def e2m1_codes(v):
    idx = round_to_table(np.abs(v), E2M1_GRID, np.arange(8) % 2 == 0)
    return np.where(v < 0, idx + 8, idx).astype(np.uint8)


def nvfp4(x, block=(1, 16)):
    """Return (codes [R, K] unpacked, block decode scales [R/br, K/bc], S_dec) for float array x."""
    x = np.asarray(x, dtype=np.float64)
    rows, k = x.shape
    br, bc = block
    amax = np.abs(x).max() if x.size else 0.0
    s_enc = f32(2688.0 / amax) if amax > 0 else np.inf
    s_enc = min(float(s_enc), FLT_MAX)
    if amax == 0 or s_enc == 0:
        s_enc = 1.0
    s_dec = f32(1.0 / s_enc)
    tiles = np.abs(x).reshape(rows // br, br, k // bc, bc).max(axis=(1, 3))
    factor = f32(s_enc * f32(1.0 / 6.0))
    s_dec_b = e4m3(f32(tiles * factor))
    with np.errstate(divide="ignore"):
        s_enc_b = np.minimum(f32(1.0 / f32(s_dec_b * s_dec)), FLT_MAX)
    per_elem = np.repeat(np.repeat(s_enc_b, br, axis=0), bc, axis=1)
    v = f32(x * per_elem)
    return e2m1_codes(v), s_dec_b, float(s_dec)


def mxfp4(x, block=(1, 32)):
    """Return (codes [R, K] unpacked, block scales as float [R/br, K/bc]) per OCP MX v1.0."""
    x = np.asarray(x, dtype=np.float64)
    rows, k = x.shape
    br, bc = block
    tiles = np.abs(x).reshape(rows // br, br, k // bc, bc).max(axis=(1, 3))
    with np.errstate(divide="ignore"):
        exponent = np.where(tiles > 0, np.floor(np.log2(tiles)) - 2, -127)
    scale = 2.0 ** np.clip(exponent, -127, 127)
    v = x / np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)
    return e2m1_codes(v), scale
