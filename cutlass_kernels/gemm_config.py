"""Configurations of the sm_100a block-scaled NVFP4 GEMM, and the choice of one per problem.

Plain Python (no CuTe DSL import): the problem checks and the choice run, and are tested,
where nvidia-cutlass-dsl is not installed.

The kernel computes ``C[M, N] = alpha * (A @ B^T) (+ bias)`` with A ``[M, K]`` and B ``[N, K]``
both packed E2M1 and K-major, one E4M3 scale per 16 elements along K (``SF_VEC_SIZE``).
One MMA tile is ``mma_tile_m x mma_tile_n x K_TILE``: four ``tcgen05.mma ... block16``
instructions of K = 64 per tile (a K = 64 step is 32 bytes of codes a row and 4 scales).

Problem limits, all coming from TMA (tensor copies need 16-byte aligned row strides and
base addresses):

* K a multiple of 32: a row of A or B is ``K / 2`` bytes.
* N times the output element size a multiple of 16 bytes: N a multiple of 8 for BF16/FP16
  and of 4 for FP32.
* M, N, K below 2**31 (they travel as Int32).

M and N need not be multiples of a tile: TMA loads fill rows past the edge with zeros and
TMA stores drop them. K need not be a multiple of ``K_TILE`` for the same reason; the scale
padding of ``scale_layout.to_blocked`` is zero, so padded K blocks add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Elements of K that share one E4M3 scale (NVFP4).
SF_VEC_SIZE = 16
#: K extent of one MMA tile: four K = 64 block-scaled MMA instructions.
K_TILE = 256
#: Output element types the epilogue writes, by name, with their size in bytes.
OUT_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: Targets the kernel is built for: both are Blackwell data-center parts (compute capability 10.x).
ARCHS = ("sm_100a", "sm_103a")
#: Streaming multiprocessors assumed when the caller gives none (a B200 has 148).
DEFAULT_SM_COUNT = 148

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class GemmConfig:
    """One compiled variant of the kernel; hashable, so it keys the cache of compiled kernels.

    ``mma_tile_m`` is the M extent of one MMA: 128 runs on one CTA (``cta_group::1``), 256 runs
    on a pair of CTAs in one cluster (``cta_group::2``), each CTA holding 128 rows of A and of
    the accumulator and half of B's tile. ``cluster_m`` must then be even. ``cluster_n > 1``
    multicasts A tiles to the CTAs of a cluster that share them.
    """

    mma_tile_m: int = 128
    mma_tile_n: int = 128
    cluster_m: int = 1
    cluster_n: int = 1
    out_dtype: str = "bfloat16"
    has_bias: bool = False
    arch: str = "sm_100a"

    def __post_init__(self):
        if self.mma_tile_m not in (128, 256):
            raise ValueError(f"mma_tile_m must be 128 (1-CTA) or 256 (2-CTA), got {self.mma_tile_m}")
        if self.mma_tile_n not in (128, 256):
            raise ValueError(f"mma_tile_n must be 128 or 256, got {self.mma_tile_n}")
        for name in ("cluster_m", "cluster_n"):
            value = getattr(self, name)
            if value not in (1, 2, 4):
                raise ValueError(f"{name} must be 1, 2 or 4, got {value}")
        if self.use_2cta and self.cluster_m % 2:
            raise ValueError(f"a 256-row MMA spans two CTAs: cluster_m must be even, got {self.cluster_m}")
        if self.out_dtype not in OUT_DTYPE_BYTES:
            raise ValueError(f"out_dtype must be one of {tuple(OUT_DTYPE_BYTES)}, got {self.out_dtype!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")

    @property
    def use_2cta(self) -> bool:
        return self.mma_tile_m == 256

    @property
    def cta_tile_m(self) -> int:
        """Rows of C one CTA owns."""
        return self.mma_tile_m // (2 if self.use_2cta else 1)

    @property
    def cluster_size(self) -> int:
        return self.cluster_m * self.cluster_n

    @property
    def name(self) -> str:
        bias = "_bias" if self.has_bias else ""
        ctas = "2cta" if self.use_2cta else "1cta"
        return (f"nvfp4_gemm_{self.arch}_{ctas}_{self.mma_tile_m}x{self.mma_tile_n}"
                f"_c{self.cluster_m}x{self.cluster_n}_{self.out_dtype}{bias}")


def check_problem(m: int, n: int, k: int, out_dtype: str) -> None:
    """Raise ``ValueError`` naming the first limit (see the module docstring) the problem breaks."""
    for label, value in (("M", m), ("N", n), ("K", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
        if value > _INT32_MAX:
            raise ValueError(f"{label} = {value} does not fit the kernel's Int32 problem sizes")
    if out_dtype not in OUT_DTYPE_BYTES:
        raise ValueError(f"out_dtype must be one of {tuple(OUT_DTYPE_BYTES)}, got {out_dtype!r}")
    if k % 32:
        raise ValueError(
            f"K = {k} is not a multiple of 32: TMA needs the {k // 2}-byte code rows of A and B "
            "to be a multiple of 16 bytes (pad K with zero codes and zero scales)")
    per_16_bytes = 16 // OUT_DTYPE_BYTES[out_dtype]
    if n % per_16_bytes:
        raise ValueError(
            f"N = {n} is not a multiple of {per_16_bytes}: TMA needs the {out_dtype} output rows "
            "to be a multiple of 16 bytes")


def problem_supported(m: int, n: int, k: int, out_dtype: str) -> bool:
    """``True`` when :func:`check_problem` accepts the problem (for callers that fall back)."""
    try:
        check_problem(m, n, k, out_dtype)
    except ValueError:
        return False
    return True


def _tiles(extent: int, tile: int) -> int:
    return -(-extent // tile)


def choose_config(m: int, n: int, k: int, out_dtype: str = "bfloat16", has_bias: bool = False,
                  *, sm_count: int = DEFAULT_SM_COUNT, arch: str = "sm_100a") -> GemmConfig:
    """A configuration for an ``M x N x K`` problem; ``ValueError`` when the kernel cannot run it.

    The rule keeps every SM busy before it makes tiles bigger:

    * ``M <= 128`` (one tile row): 1-CTA 128-row tiles; 256 columns only when even 256-column
      tiles outnumber the SMs.
    * otherwise 2-CTA 256-row tiles (a cluster of two shares each B tile, halving B's
      shared-memory traffic per CTA) when they still give every SM a tile: 256 columns if
      that already does, else 128.
    * a problem too small to fill the SMs with 2-CTA tiles takes 1-CTA 128 x 128 tiles,
      the most tiles any configuration makes.

    K does not enter the choice (every configuration loops over K the same way); it is checked.
    """
    check_problem(m, n, k, out_dtype)
    if sm_count <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    common = dict(out_dtype=out_dtype, has_bias=has_bias, arch=arch)
    if m <= 128:
        wide = _tiles(n, 256) >= sm_count
        return GemmConfig(128, 256 if wide else 128, 1, 1, **common)
    for tile_n in (256, 128):
        ctas = 2 * _tiles(m, 256) * _tiles(n, tile_n)
        if ctas >= sm_count:
            return GemmConfig(256, tile_n, 2, 1, **common)
    return GemmConfig(128, 128, 1, 1, **common)
