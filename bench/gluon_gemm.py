"""Experiment: the saved FP4 operand decoded inside a hand-pipelined Hopper GEMM (Gluon, wgmma).

    python3 bench/gluon_gemm.py [--shapes 8192x2048x8192 ...] [--configs 128x256x64x4 ...] [--probes]
    python3 bench/gluon_gemm.py --compile-only     # no GPU: compile every variant for sm_90a

``C [M, N] = alpha * (A @ B^T)`` with ``A [M, K]`` as packed E2M1 codes and E4M3 block scales (the
wgrad operand the forward saves, ``RHT(X^T)``) and ``B [N, K]`` as BF16 values, as in
``bench/mixed_gemm.py``. That script's Triton kernel decoded A in the warps that issue the
tensor-core products, between them, and ran at 2.3x ``torch.mm``. Here the loop is written by hand
in Gluon (Triton's lower-level language, shipped with Triton): B arrives by TMA into a ring of
shared-memory stages and ``wgmma`` runs asynchronously. A is decoded to BF16 (``q * s_b``, exact)
into shared memory either by the warps that issue the ``wgmma`` (``_gemm_kernel``: each step's
codes loaded one step ahead and decoded while the previous step's ``wgmma`` runs) or by one or two
warpgroups of their own (``_ws_gemm_kernel``, warp specialization). The same loop with A loaded as
BF16 by TMA is the baseline; ``--probes`` times two variants that isolate the decode (wrong
results, timing only).

The question it answers: does a GEMM that reads the saved FP4 operand beat dequantize + cuBLASLt
(what the package runs)? A measurement, not a package path. Every NVFP4 result is checked against
the package's (same values; FP32 sums in another order, so compared with a tolerance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@gluon.jit
def _tile_offsets(M, N, BM: gl.constexpr, BN: gl.constexpr, GROUP_M: gl.constexpr):
    """This program's output tile: tiles grouped along M, so that neighbouring programs share B's
    tiles in L2."""
    pid = gl.program_id(0)
    tiles_m = gl.cdiv(M, BM)
    per_group = GROUP_M * gl.cdiv(N, BN)
    first_m = (pid // per_group) * GROUP_M
    group_rows = gl.minimum(tiles_m - first_m, GROUP_M)
    return (first_m + (pid % per_group) % group_rows) * BM, ((pid % per_group) // group_rows) * BN


@gluon.jit
def _store_tile(acc, c_desc, alpha_ptr, off_m, off_n):
    """``alpha * acc`` rounded once to C's type, written by TMA through shared memory."""
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    c_smem.store((acc * gl.load(alpha_ptr)).to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _load_a(codes_ptr, scales_ptr, off_m, k0, stride_codes, stride_scales, BM: gl.constexpr, BK: gl.constexpr,
            num_warps: gl.constexpr):
    """A's codes ``[BM, BK // 16, 8]`` (bytes) and scale bits ``[BM, BK // 16]`` of rows from
    ``off_m``, columns from ``k0``. Each thread holds two 16-value blocks of one row and each warp
    runs of 16 rows: with 8 warps and 128 rows, warp ``w`` holds rows ``16w`` to ``16w + 15``, so
    the rows a warpgroup decodes are the rows its own ``wgmma`` reads."""
    L3: gl.constexpr = gl.BlockedLayout([1, 2, 8], [16, 2, 1], [num_warps, 1, 1], [2, 1, 0])
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    blocks = k0 // 16 + gl.arange(0, BK // 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    within = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    row_off = gl.expand_dims(gl.expand_dims(rows * stride_codes, 1), 2)
    codes = gl.load(codes_ptr + row_off + gl.expand_dims(gl.expand_dims(blocks * 8, 0), 2)
                    + gl.expand_dims(gl.expand_dims(within, 0), 1))
    scale_bits = gl.load(scales_ptr + gl.expand_dims(rows * stride_scales, 1) + gl.expand_dims(blocks, 0))
    return codes, scale_bits


@gluon.jit
def _decode_a(codes, scale_bits, BM: gl.constexpr, BK: gl.constexpr):
    """``[BM, BK]`` BF16 values ``q * s_b`` (exact: E2M1 x E4M3 fits BF16's significand)."""
    values = gl.fp4_to_fp(codes, gl.bfloat16, 2)  # [BM, BK // 16, 16], the lower nibble first
    scale = scale_bits.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
    scale = gl.convert_layout(scale, gl.SliceLayout(2, values.type.layout))
    return gl.reshape(values * gl.expand_dims(scale, 2), [BM, BK])


@gluon.jit
def _gemm_kernel(a_desc, a_codes_ptr, a_scales_ptr, b_desc, c_desc, alpha_ptr, M, N, K, stride_codes,
                 stride_scales, FP4_A: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                 PROBE: gl.constexpr, num_warps: gl.constexpr):
    """One ``[BM, BN]`` tile of C; A by TMA as BF16, or (``FP4_A``) decoded from its codes into one
    of two shared-memory buffers by the warps that issue the ``wgmma``. ``PROBE`` (timing only,
    wrong results): 1 stores a constant A tile each step instead of loading and decoding codes; 2
    decodes and stores A but drops the barrier before the ``wgmma``."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = b_desc.block_type.shape[1]
    off_m, off_n = _tile_offsets(M, N, BM, BN, GROUP_M)

    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    acc = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    if FP4_A:
        a_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BM, BK], a_desc.layout)
        stage_bytes: gl.constexpr = b_desc.block_type.nbytes
    else:
        a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
        stage_bytes: gl.constexpr = b_desc.block_type.nbytes + a_desc.block_type.nbytes
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(STAGES):
        mbarrier.init(bars.index(p), count=1)

    n_k = gl.cdiv(K, BK)
    # STAGES - 2 steps in flight ahead of the one computed: a stage is refilled two steps after
    # its wgmma was issued, when both warpgroups have waited for it (the barrier below).
    for p in gl.static_range(STAGES - 2):
        if p < n_k:
            mbarrier.expect(bars.index(p), stage_bytes)
            tma.async_copy_global_to_shared(b_desc, [off_n, p * BK], bars.index(p), b_smem.index(p))
            if not FP4_A:
                tma.async_copy_global_to_shared(a_desc, [off_m, p * BK], bars.index(p), a_smem.index(p))
    if FP4_A:  # each step's codes are loaded one step ahead, under the previous step's wgmma
        codes, scale_bits = _load_a(a_codes_ptr, a_scales_ptr, off_m, 0, stride_codes, stride_scales, BM, BK,
                                    num_warps)
    for i in range(n_k):
        s = i % STAGES
        if FP4_A:
            if PROBE == 1:
                a_tile = gl.full([BM, BK], 1.0, gl.bfloat16,
                                 layout=gl.BlockedLayout([1, 16], [16, 2], [num_warps, 1], [1, 0]))
            else:
                a_tile = _decode_a(codes, scale_bits, BM, BK)
            a = a_smem.index(i % 2)
            a.store(a_tile)
            fence_async_shared()  # the generic-proxy stores before the async proxy's reads
        else:
            a = a_smem.index(s)
        if PROBE != 2:
            gl.thread_barrier()
        j = i + STAGES - 2
        if j < n_k:
            sj = j % STAGES
            mbarrier.expect(bars.index(sj), stage_bytes)
            tma.async_copy_global_to_shared(b_desc, [off_n, j * BK], bars.index(sj), b_smem.index(sj))
            if not FP4_A:
                tma.async_copy_global_to_shared(a_desc, [off_m, j * BK], bars.index(sj), a_smem.index(sj))
        mbarrier.wait(bars.index(s), phase=(i // STAGES) & 1)
        acc = warpgroup_mma(a, b_smem.index(s).permute((1, 0)), acc, is_async=True)
        if FP4_A and PROBE != 1:  # the last step loads its own codes again rather than masking
            codes, scale_bits = _load_a(a_codes_ptr, a_scales_ptr, off_m, gl.minimum(i + 1, n_k - 1) * BK,
                                        stride_codes, stride_scales, BM, BK, num_warps)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for p in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(p))

    _store_tile(acc, c_desc, alpha_ptr, off_m, off_n)


@gluon.jit
def _load_a_operand(codes_ptr, scales_ptr, off_m, k0, stride_codes, stride_scales, BM: gl.constexpr,
                    BK: gl.constexpr, layout: gl.constexpr):
    """A's code bytes ``[BM, BK // 2]`` and, for each byte, its block's scale bits, in ``layout``
    (the ``wgmma`` A-operand layout of one byte per two values: decoded, they land in the BF16
    A-operand layout without moving)."""
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    cols = k0 // 2 + gl.arange(0, BK // 2, layout=gl.SliceLayout(0, layout))
    codes = gl.load(codes_ptr + gl.expand_dims(rows * stride_codes, 1) + gl.expand_dims(cols, 0))
    scale_bits = gl.load(scales_ptr + gl.expand_dims(rows * stride_scales, 1) + gl.expand_dims(cols // 8, 0))
    return codes, scale_bits


@gluon.jit
def _decode_a_operand(codes, scale_bits, BM: gl.constexpr, BK: gl.constexpr, operand: gl.constexpr):
    """``[BM, BK]`` BF16 values ``q * s_b`` in the ``wgmma`` A-operand layout ``operand``."""
    values = gl.convert_layout(gl.fp4_to_fp(codes, gl.bfloat16, 1), operand, assert_trivial=True)
    scale = scale_bits.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
    scale = gl.convert_layout(gl.reshape(gl.join(scale, scale), [BM, BK]), operand)
    return values * scale


@gluon.jit
def _rs_gemm_kernel(a_desc, a_codes_ptr, a_scales_ptr, b_desc, c_desc, alpha_ptr, M, N, K, stride_codes,
                    stride_scales, STAGES: gl.constexpr, GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """``_gemm_kernel``'s FP4-A product with A decoded in registers straight into the ``wgmma``
    A-operand layout (``wgmma`` reads A from registers, B from shared memory): no shared-memory
    handoff for A. Each step's codes are loaded one step ahead; a step's A registers stay live
    until the next step's wait has seen its ``wgmma`` finish."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = b_desc.block_type.shape[1]
    off_m, off_n = _tile_offsets(M, N, BM, BN, GROUP_M)

    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=2)
    byte_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=1)
    acc = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(STAGES):
        mbarrier.init(bars.index(p), count=1)
    n_k = gl.cdiv(K, BK)
    for p in gl.static_range(STAGES - 2):
        if p < n_k:
            mbarrier.expect(bars.index(p), b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(b_desc, [off_n, p * BK], bars.index(p), b_smem.index(p))
    codes, scale_bits = _load_a_operand(a_codes_ptr, a_scales_ptr, off_m, 0, stride_codes, stride_scales, BM, BK,
                                        byte_operand)
    a_prev = gl.zeros((BM, BK), dtype=gl.bfloat16, layout=operand)
    for i in range(n_k):
        s = i % STAGES
        a = _decode_a_operand(codes, scale_bits, BM, BK, operand)
        gl.thread_barrier()  # both warpgroups are past step i - 2's wgmma: its B stage can refill
        j = i + STAGES - 2
        if j < n_k:
            sj = j % STAGES
            mbarrier.expect(bars.index(sj), b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(b_desc, [off_n, j * BK], bars.index(sj), b_smem.index(sj))
        mbarrier.wait(bars.index(s), phase=(i // STAGES) & 1)
        acc = warpgroup_mma(a, b_smem.index(s).permute((1, 0)), acc, is_async=True)
        codes, scale_bits = _load_a_operand(a_codes_ptr, a_scales_ptr, off_m, gl.minimum(i + 1, n_k - 1) * BK,
                                            stride_codes, stride_scales, BM, BK, byte_operand)
        acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_prev))
        a_prev = a
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for p in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(p))
    _store_tile(acc, c_desc, alpha_ptr, off_m, off_n)


@gluon.jit
def _ws_consumer(bars, bufs, c_desc, alpha_ptr, off_m, off_n, K, BM: gl.constexpr, BN: gl.constexpr,
                 BK: gl.constexpr, num_warps: gl.constexpr):
    """The default partition: two warpgroups issue each step's ``wgmma`` once its decoded A and
    its B are in shared memory, free the step before, and write the tile."""
    a_ready, b_ready, empty = bars
    a_smem, b_smem = bufs
    STAGES: gl.constexpr = a_smem.type.shape[0]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    acc = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    n_k = gl.cdiv(K, BK)
    for i in range(n_k):
        s = i % STAGES
        phase = (i // STAGES) & 1
        mbarrier.wait(a_ready.index(s), phase)
        mbarrier.wait(b_ready.index(s), phase)
        acc = warpgroup_mma(a_smem.index(s), b_smem.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=i > 0)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    _store_tile(acc, c_desc, alpha_ptr, off_m, off_n)


@gluon.jit
def _ws_producer(bars, bufs, b_desc, a_codes_ptr, a_scales_ptr, off_m, off_n, K, stride_codes, stride_scales,
                 BM: gl.constexpr, BK: gl.constexpr, PART: gl.constexpr, DECODERS: gl.constexpr):
    """A worker partition (one warpgroup): for each step, once its stage is free, decode its part
    (``PART`` of ``DECODERS``) of A's rows into the stage's BF16 buffer; part 0 also starts B's TMA."""
    a_ready, b_ready, empty = bars
    a_smem, b_smem = bufs
    STAGES: gl.constexpr = a_smem.type.shape[0]
    ROWS: gl.constexpr = BM // DECODERS
    n_k = gl.cdiv(K, BK)
    rows0 = off_m + PART * ROWS
    codes, scale_bits = _load_a(a_codes_ptr, a_scales_ptr, rows0, 0, stride_codes, stride_scales, ROWS, BK, 4)
    for i in range(n_k):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        if PART == 0:
            mbarrier.expect(b_ready.index(s), b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(b_desc, [off_n, i * BK], b_ready.index(s), b_smem.index(s))
        a_tile = _decode_a(codes, scale_bits, ROWS, BK)
        codes, scale_bits = _load_a(a_codes_ptr, a_scales_ptr, rows0, gl.minimum(i + 1, n_k - 1) * BK,
                                    stride_codes, stride_scales, ROWS, BK, 4)
        a_smem.index(s).slice(PART * ROWS, ROWS).store(a_tile)
        fence_async_shared()
        mbarrier.arrive(a_ready.index(s), count=1)


@gluon.jit
def _ws_tma_producer(bars, bufs, a_desc, b_desc, off_m, off_n, K, BK: gl.constexpr):
    """The worker partition of the BF16 baseline (one warp): for each step, once its stage is free,
    start the TMA copies of A's and B's tiles into it."""
    a_ready, b_ready, empty = bars
    a_smem, b_smem = bufs
    STAGES: gl.constexpr = a_smem.type.shape[0]
    for i in range(gl.cdiv(K, BK)):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(a_ready.index(s), a_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [off_m, i * BK], a_ready.index(s), a_smem.index(s))
        mbarrier.expect(b_ready.index(s), b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(b_desc, [off_n, i * BK], b_ready.index(s), b_smem.index(s))


@gluon.jit
def _ws_gemm_kernel(a_desc, a_codes_ptr, a_scales_ptr, b_desc, c_desc, alpha_ptr, M, N, K, stride_codes,
                    stride_scales, STAGES: gl.constexpr, GROUP_M: gl.constexpr, DECODERS: gl.constexpr,
                    DECODE_REGS: gl.constexpr, num_warps: gl.constexpr):
    """``_gemm_kernel``'s FP4-A product with the decode in ``DECODERS`` (1 or 2) warpgroups of
    their own (warp specialization), each decoding its share of A's rows: the consumer warpgroups
    only wait, issue ``wgmma`` and store. ``DECODERS = 0``: the BF16 baseline of the same loop,
    one warp starting both operands' TMA copies."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = b_desc.block_type.shape[1]
    off_m, off_n = _tile_offsets(M, N, BM, BN, GROUP_M)
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, BK], a_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    a_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    b_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(STAGES):
        mbarrier.init(a_ready.index(p), count=DECODERS + (DECODERS == 0))  # one arrival from each decoding warpgroup
        mbarrier.init(b_ready.index(p), count=1)
        mbarrier.init(empty.index(p), count=1)
    bars = (a_ready, b_ready, empty)
    bufs = (a_smem, b_smem)
    if DECODERS == 0:
        gl.warp_specialize([
            (_ws_consumer, (bars, bufs, c_desc, alpha_ptr, off_m, off_n, K, BM, BN, BK, num_warps)),
            (_ws_tma_producer, (bars, bufs, a_desc, b_desc, off_m, off_n, K, BK)),
        ], [1], [DECODE_REGS])
    elif DECODERS == 1:
        gl.warp_specialize([
            (_ws_consumer, (bars, bufs, c_desc, alpha_ptr, off_m, off_n, K, BM, BN, BK, num_warps)),
            (_ws_producer, (bars, bufs, b_desc, a_codes_ptr, a_scales_ptr, off_m, off_n, K, stride_codes,
                            stride_scales, BM, BK, 0, 1)),
        ], [4], [DECODE_REGS])
    else:
        gl.warp_specialize([
            (_ws_consumer, (bars, bufs, c_desc, alpha_ptr, off_m, off_n, K, BM, BN, BK, num_warps)),
            (_ws_producer, (bars, bufs, b_desc, a_codes_ptr, a_scales_ptr, off_m, off_n, K, stride_codes,
                            stride_scales, BM, BK, 0, 2)),
            (_ws_producer, (bars, bufs, b_desc, a_codes_ptr, a_scales_ptr, off_m, off_n, K, stride_codes,
                            stride_scales, BM, BK, 1, 2)),
        ], [4, 4], [DECODE_REGS, DECODE_REGS])


def _descriptors(a_values, b, c, config):
    bm, bn, bk, _ = config
    def desc(t, block):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block,
                                gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16))
    return desc(a_values, [bm, bk]), desc(b, [bn, bk]), desc(c, [bm, bn])


def _prepare(a_values, b, c, config):
    """Check that ``config`` tiles the product; C (new unless given), the descriptors and the grid."""
    bm, bn, bk, _ = config
    M, N, K = a_values.shape[0], b.shape[0], b.shape[1]
    if M % bm or N % bn or K % bk:
        raise ValueError(f"shape {M}x{N}x{K} does not tile by {config}")
    c = torch.empty((M, N), dtype=torch.bfloat16, device=b.device) if c is None else c
    return (c, *_descriptors(a_values, b, c, config), (triton.cdiv(M, bm) * triton.cdiv(N, bn),))


def gluon_gemm(a_codes, a_scales, a_values, b, alpha, fp4_a: bool, config: tuple, c=None, probe: int = 0):
    """``alpha * (A @ b^T)`` in BF16; A from its codes and scales (``fp4_a``) or from ``a_values``."""
    M, N, K = a_values.shape[0], b.shape[0], b.shape[1]
    c, a_desc, b_desc, c_desc, grid = _prepare(a_values, b, c, config)
    _gemm_kernel[grid](a_desc, a_codes, a_scales, b_desc, c_desc, alpha, M, N, K, a_codes.stride(0),
                       a_scales.stride(0), FP4_A=fp4_a, STAGES=config[3], GROUP_M=8, PROBE=probe, num_warps=8)
    return c


def gluon_rs_gemm(a_codes, a_scales, a_values, b, alpha, config: tuple, c=None):
    """``gluon_gemm``'s FP4-A product with A decoded into ``wgmma``'s register operand (``_rs_gemm_kernel``)."""
    M, N, K = a_values.shape[0], b.shape[0], b.shape[1]
    c, a_desc, b_desc, c_desc, grid = _prepare(a_values, b, c, config)
    _rs_gemm_kernel[grid](a_desc, a_codes, a_scales, b_desc, c_desc, alpha, M, N, K, a_codes.stride(0),
                          a_scales.stride(0), STAGES=config[3], GROUP_M=8, num_warps=8)
    return c


#: Register budgets (decoders: kernel maxnreg, a worker partition's) that fit the register file:
#: 12 warps at 168 with no decoding warpgroup (one TMA warp) or one, 16 at 128 with two (then
#: only 128-wide tiles compile: ptxas needs 154 registers for a 64x256 wgmma accumulator).
WS_REGISTERS = {0: (168, 24), 1: (168, 96), 2: (128, 64)}


def gluon_ws_gemm(a_codes, a_scales, a_values, b, alpha, config: tuple, c=None, decoders: int = 1):
    """``gluon_gemm``'s FP4-A product, warp-specialized (``_ws_gemm_kernel``)."""
    M, N, K = a_values.shape[0], b.shape[0], b.shape[1]
    c, a_desc, b_desc, c_desc, grid = _prepare(a_values, b, c, config)
    maxnreg, decode_regs = WS_REGISTERS[decoders]
    _ws_gemm_kernel[grid](a_desc, a_codes, a_scales, b_desc, c_desc, alpha, M, N, K, a_codes.stride(0),
                          a_scales.stride(0), STAGES=config[3], GROUP_M=8, DECODERS=decoders, DECODE_REGS=decode_regs,
                          num_warps=8, maxnreg=maxnreg)
    return c


def compile_variants(configs) -> list[dict]:
    """Compile every variant for sm_90a without a GPU (Triton's own ptxas): for each, its shared
    memory and the ``wgmma`` instructions in its PTX."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    M = N = K = 1024
    common = {"a_codes_ptr": "*u8", "a_scales_ptr": "*u8", "alpha_ptr": "*fp32", "M": "i32", "N": "i32",
              "K": "i32", "stride_codes": "i32", "stride_scales": "i32"}
    out = []
    for config in configs:
        a_desc, b_desc, c_desc = _descriptors(torch.empty((M, K), dtype=torch.bfloat16),
                                              torch.empty((N, K), dtype=torch.bfloat16),
                                              torch.empty((M, N), dtype=torch.bfloat16), config)
        descs = {"a_desc": mangle_type(a_desc), "b_desc": mangle_type(b_desc), "c_desc": mangle_type(c_desc)}
        variants = [("BF16 A", _gemm_kernel, {"FP4_A": False, "PROBE": 0}, {}),
                    ("FP4 A", _gemm_kernel, {"FP4_A": True, "PROBE": 0}, {}),
                    ("FP4 A in registers", _rs_gemm_kernel, {}, {})]
        for decoders, (maxnreg, regs) in WS_REGISTERS.items():
            if decoders < 2 or config[1] <= 128:
                name = f"FP4 A, {decoders} decoding warpgroup(s)" if decoders else "BF16 A, TMA warp"
                variants.append((name, _ws_gemm_kernel,
                                 {"DECODERS": decoders, "DECODE_REGS": regs}, {"maxnreg": maxnreg}))
        for name, fn, flags, options in variants:
            constexprs = {**flags, "STAGES": config[3], "GROUP_M": 8, "num_warps": 8}
            params = list(fn.arg_names)
            signature = {p: descs.get(p) or common.get(p) or "constexpr" for p in params}
            kernel = triton.compile(GluonASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                    target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, **options})
            out.append({"config": "x".join(map(str, config)), "variant": name, "shared": kernel.metadata.shared,
                        "wgmma": kernel.asm["ptx"].count("wgmma.mma_async")})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["2048x2048x8192", "6144x2048x8192", "2048x8192x8192",
                                                        "8192x2048x8192", "8192x8192x8192"])
    parser.add_argument("--configs", nargs="+", default=["128x256x64x4", "128x128x64x5", "128x256x64x3"])
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--probes", action="store_true",
                        help="also time the FP4 kernel's PROBE variants (wrong results; where the time goes)")
    args = parser.parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    if args.compile_only:
        for row in compile_variants(configs):
            print(row)
        return

    from bench.common import graph_median_ms, report
    from bench.mixed_gemm import package_gemm
    from nvfp4_compile.kernels.triton_dequant import dequantize_to_bf16
    from nvfp4_compile.kernels.triton_quantize import quantize_nvfp4

    torch.manual_seed(0)
    rows, results = [], {}
    for shape in args.shapes:
        M, N, K = (int(v) for v in shape.split("x"))
        a_codes, a_scales, a_sdec = quantize_nvfp4(torch.randn(M, K, device="cuda", dtype=torch.bfloat16))
        b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        a_values = dequantize_to_bf16(a_codes, a_scales)
        alpha_beta = torch.stack([a_sdec, torch.zeros_like(a_sdec)]).contiguous()
        want = package_gemm(a_codes, a_scales, b, alpha_beta).float()
        row = {"BF16 torch.mm": graph_median_ms(lambda: torch.mm(a_values, b.t())),
               "dequantize + cuBLASLt": graph_median_ms(lambda: package_gemm(a_codes, a_scales, b, alpha_beta))}
        for config in configs:
            name = "x".join(map(str, config))
            def checked_time(label, run):
                """Time ``run(c)`` where its result matches the package's; report what does not."""
                try:
                    err = ((run(None).float() - want).abs().max() / want.abs().max()).item()
                    if err > 1e-2:
                        print(f"{shape} {label}: relative error {err:.2e} against the package: not timed")
                        return
                    c = torch.empty((M, N), dtype=torch.bfloat16, device="cuda")
                    row[label] = graph_median_ms(lambda: run(c))
                except Exception as err:  # shared memory or registers that do not fit are reported
                    print(f"{shape} {label}: skipped ({type(err).__name__}: {str(err)[:300]})")

            operands = (a_codes, a_scales, a_values, b, alpha_beta)
            for fp4_a, label in ((False, "Gluon BF16"), (True, "Gluon FP4 A")):
                checked_time(f"{label} {name}", lambda c, f=fp4_a: gluon_gemm(*operands, f, config, c))
            checked_time(f"Gluon FP4 A, registers {name}", lambda c: gluon_rs_gemm(*operands, config, c))
            for decoders in (0, 1, 2):
                if decoders == 2 and config[1] > 128:
                    continue  # does not compile (WS_REGISTERS)
                label = f"Gluon FP4 A, WS {decoders} {name}" if decoders else f"Gluon BF16, WS {name}"
                checked_time(label, lambda c, d=decoders: gluon_ws_gemm(*operands, config, c, d))
            for probe in (1, 2) if args.probes else ():
                c = torch.empty((M, N), dtype=torch.bfloat16, device="cuda")
                row[f"probe {probe} {name}"] = graph_median_ms(
                    lambda: gluon_gemm(a_codes, a_scales, a_values, b, alpha_beta, True, config, c, probe))
        results[shape] = row
        base = row["BF16 torch.mm"]
        table_row = [shape, base, row["dequantize + cuBLASLt"] / base]
        for label in ("Gluon BF16 ", "Gluon BF16, WS", "Gluon FP4 A ", "Gluon FP4 A, registers",
                      "Gluon FP4 A, WS 1", "Gluon FP4 A, WS 2"):
            timed = [(v, k.split()[-1]) for k, v in row.items() if k.startswith(label)]
            best = min(timed) if timed else (float("nan"), "-")
            table_row += [best[0] / base, best[1]]
        rows.append(table_row)
    if args.probes:
        for shape, row in results.items():
            print(shape, ", ".join(f"{k} {v / row['BF16 torch.mm']:.3f}x" for k, v in row.items()))
    report("GEMM with the saved FP4 operand (Gluon, wgmma), as a multiple of BF16 torch.mm",
           ["M x N x K", "torch.mm ms", "dequantize + cuBLASLt", "Gluon BF16", "tile",
            "Gluon BF16, TMA warp", "tile", "Gluon FP4 A", "tile",
            "FP4 A into wgmma registers", "tile", "FP4 A, 1 decoding warpgroup", "tile",
            "FP4 A, 2 decoding warpgroups", "tile"],
           rows, "gluon_gemm", {"results_ms": results, "configs": args.configs})


if __name__ == "__main__":
    main()
