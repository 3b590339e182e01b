"""Persistent, warp-specialized block-scaled NVFP4 GEMM for sm_100a, in CuTe DSL.

Compiled and inspected, not run: no Blackwell GPU has been available to this project, so
this kernel has been compiled for sm_100a and its PTX read, never executed.

Math (NUMERICS.md §6)::

    C[m, n] = alpha * sum_b sA[m, b] * sB[n, b] * sum_{k in b} qA[m, k] * qB[n, k]  (+ bias[n])

with ``q`` the E2M1 codes, ``s`` the E4M3 scales of 16-element blocks ``b`` along K, and
``alpha = S_dec^A * S_dec^B`` read from a one-element FP32 device tensor (no host round trip,
so the launch does not synchronize and a CUDA graph may capture it). The block sums are the
tensor core's (``tcgen05.mma ... kind::mxf4nvf4.block_scale.block16``, FP32 accumulation in
tensor memory); ``alpha`` and the bias are applied in FP32 in the epilogue, then one rounding
to the output type, as the reference ``nvfp4_compile.gemm._epilogue`` does. (The PTX has a
multiply and an add without rounding modifiers, which ptxas may contract into one FMA: one
rounding where the reference has two.)

Layouts:

* A ``[M, K]`` and B ``[N, K]`` packed E2M1, K-major (two codes a byte, the lower K index in
  the low nibble, the hardware's sub-byte order): ``C = A @ B^T``.
* Scales in the 128x4 blocked layout of ``scale_layout`` (shape ``(32, 4, restM, 4, restK)``,
  strides ``(16, 4, 512 * restK, 1, 512)``), which is the CuTe layout
  ``blockscaled_layout.tile_atom_to_shape_SF`` describes; rows padded to 128 and K blocks
  to 4 with zero scales.
* C ``[M, N]`` row-major; bias an FP32 vector the host pads to whole N tiles (see below).

Warp roles (192 threads a CTA, one CTA an SM, persistent over output tiles):

* warp 5, TMA: loads A, B, SFA, SFB tiles of ``K_TILE`` into a ring of shared-memory
  stages, each stage completing one mbarrier transaction.
* warp 4, MMA: for each full stage copies the scales shared -> tensor memory
  (``tcgen05.cp``, the MMA reads scales only from tensor memory), issues the four K = 64
  MMAs into a tensor-memory accumulator, and frees the stage when the MMAs that read it
  complete (``tcgen05.commit``).
* warps 0-3, epilogue: tensor memory -> registers (``tcgen05.ld``), ``alpha * acc + bias``
  in FP32, convert, registers -> shared memory -> global by TMA store, subtile by subtile.

With two accumulator stages (128-column tiles) the MMA warp fills one while the epilogue
drains the other; 256-column tiles fit one accumulator stage only (2 x 256 columns would
leave no tensor memory for scales), so there the next tile's MMAs wait for the epilogue.

2-CTA (``mma_tile_m = 256``): the CTA pair of a cluster runs one MMA of 256 rows
(``cta_group::2``), each CTA loading its 128 rows of A and half of B's tile; the leader CTA
(even rank) issues the MMAs. Each CTA needs the scales of all the tile's N columns in its
own tensor memory, so SFB is loaded with a 1-CTA tiling (``tiled_mma_sfb``) and multicast
to both CTAs of the pair.

Bias: the host passes an FP32 copy padded with zeros to a whole number of N tiles; the
kernel views it as an ``[M, N]`` tensor of row stride 0 and partitions it exactly like C,
so each thread loads the bias values of its own accumulator columns, and reads past N land
in the padding (their outputs are clipped by the TMA store), so no predicates are needed.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.blackwell_helpers as sm100_utils
import cutlass.utils.blockscaled_layout as blockscaled_utils
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, tcgen05
from cutlass.memory import SmemAllocator, TmemAllocator, get_smem_capacity_in_bytes
from cutlass.pipeline import pipeline_init_arrive, pipeline_init_wait
from cutlass.tensor_utils import LayoutEnum

from .gemm_config import K_TILE, SF_VEC_SIZE, GemmConfig

AB_DTYPE = cutlass.Float4E2M1FN
SF_DTYPE = cutlass.Float8E4M3FN
ACC_DTYPE = cutlass.Float32
OUT_DTYPES = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16, "float32": cutlass.Float32}

#: Byte alignment the host guarantees for every global pointer (TMA needs 16).
POINTER_ALIGN = 16
#: Shared memory kept aside for mbarriers and the tensor-memory address.
_RESERVED_SMEM = 1024
#: Buffers in shared memory start on 1024-byte boundaries (the 128-byte swizzle repeats every 1 KiB).
_BUFFER_ALIGN = 1024


class Sm100Nvfp4Gemm:
    """The kernel for one :class:`GemmConfig`; call it under ``cute.compile``.

    ``__call__`` runs on the host while tracing: it builds the TMA descriptors, shared-memory
    layouts and the grid, and launches :meth:`kernel`. Arguments: pointers to A, B (E2M1),
    SFA, SFB (E4M3, blocked), C, alpha (FP32, one element) and bias (FP32, padded; never
    read when the config has no bias), the problem size ``m, n, k``, the number of clusters
    that fit on the device at once, and the CUDA stream.
    """

    EPILOGUE_WARPS = (0, 1, 2, 3)
    MMA_WARP = 4
    TMA_WARP = 5
    THREADS = 32 * 6
    #: MMA instructions of K = 64 per K tile.
    MMAS_PER_K_TILE = 4

    def __init__(self, config: GemmConfig):
        self.config = config
        self.out_dtype = OUT_DTYPES[config.out_dtype]
        self.use_2cta = config.use_2cta
        self.cta_group = tcgen05.CtaGroup.TWO if self.use_2cta else tcgen05.CtaGroup.ONE
        self.cluster_shape_mn = (config.cluster_m, config.cluster_n)
        self.has_bias = config.has_bias
        # Epilogue warps sync among themselves around each shared-memory subtile; the
        # epilogue warps and the MMA warp meet once to hand over the tensor-memory address.
        self.epilogue_barrier = pipeline.NamedBarrier(barrier_id=1, num_threads=32 * len(self.EPILOGUE_WARPS))
        self.tmem_ready_barrier = pipeline.NamedBarrier(
            barrier_id=2, num_threads=32 * (len(self.EPILOGUE_WARPS) + 1))
        self.smem_capacity = get_smem_capacity_in_bytes("sm_100")
        self.tmem_columns = cute.arch.get_max_tmem_alloc_cols("sm_100")

    # -- host side (runs while tracing) ----------------------------------------------------

    def _make_tiled_mmas(self):
        """The MMA of the tile, and a 1-CTA MMA of the same N used only to tile SFB."""
        cfg = self.config
        tiled_mma = sm100_utils.make_blockscaled_trivial_tiled_mma(
            AB_DTYPE, AB_DTYPE, OperandMajorMode.K, OperandMajorMode.K, SF_DTYPE, SF_VEC_SIZE,
            self.cta_group, (cfg.mma_tile_m, cfg.mma_tile_n))
        tiled_mma_sfb = sm100_utils.make_blockscaled_trivial_tiled_mma(
            AB_DTYPE, AB_DTYPE, OperandMajorMode.K, OperandMajorMode.K, SF_DTYPE, SF_VEC_SIZE,
            tcgen05.CtaGroup.ONE, (cfg.cta_tile_m, cfg.mma_tile_n))
        return tiled_mma, tiled_mma_sfb

    def _setup(self, tiled_mma, tiled_mma_sfb):
        cfg = self.config
        mma_k = cute.size(tiled_mma.shape_mnk, mode=[2])
        assert mma_k * self.MMAS_PER_K_TILE == K_TILE, (mma_k, K_TILE)
        self.mma_tiler = (cfg.mma_tile_m, cfg.mma_tile_n, K_TILE)
        self.mma_tiler_sfb = (cfg.cta_tile_m, cfg.mma_tile_n, K_TILE)
        self.cta_tile = (cfg.cta_tile_m, cfg.mma_tile_n, K_TILE)

        # (V, M, N, K) coordinates of the CTAs of a cluster: V is the CTA within a 2-CTA MMA.
        cluster = cute.make_layout((*self.cluster_shape_mn, 1))
        self.cluster_layout_vmnk = cute.tiled_divide(cluster, (tiled_mma.thr_id.shape,))
        self.cluster_layout_sfb_vmnk = cute.tiled_divide(cluster, (tiled_mma_sfb.thr_id.shape,))
        # A tiles are shared along the cluster's N, B tiles along its M.
        self.mcast_ctas_a = cute.size(self.cluster_layout_vmnk.shape[2])
        self.mcast_ctas_b = cute.size(self.cluster_layout_vmnk.shape[1])

        self.epi_tile = sm100_utils.compute_epilogue_tile_shape(
            self.cta_tile, self.use_2cta, LayoutEnum.ROW_MAJOR, self.out_dtype)

        # Tensor memory: accumulator stages, then SFA, then SFB. One 128x4 scale atom (512
        # bytes) takes 4 columns (32 lanes x 16 bytes, copied into each 32-lane sub-partition);
        # a K tile's 16 K blocks are 4 atoms along K for every 128 rows.
        atoms_k = K_TILE // SF_VEC_SIZE // 4
        self.sfa_tmem_cols = (cfg.cta_tile_m // 128) * atoms_k * 4
        self.sfb_tmem_cols = (cfg.mma_tile_n // 128) * atoms_k * 4
        sf_cols = self.sfa_tmem_cols + self.sfb_tmem_cols
        self.acc_stages = 2 if 2 * cfg.mma_tile_n + sf_cols <= self.tmem_columns else 1
        self.acc_tmem_cols = cfg.mma_tile_n * self.acc_stages

        one_stage = self._smem_layouts(tiled_mma, 1, 1)
        ab_bytes = sum(cute.size_in_bytes(dtype, layout) for dtype, layout in (
            (AB_DTYPE, one_stage["a"]), (AB_DTYPE, one_stage["b"]),
            (SF_DTYPE, one_stage["sfa"]), (SF_DTYPE, one_stage["sfb"])))
        c_bytes = cute.size_in_bytes(self.out_dtype, one_stage["c"])
        # Two C stages let the TMA store of one subtile overlap the next; A/B stages take
        # what is left, and any remainder smaller than an A/B stage goes to more C stages.
        self.c_stages = 2
        self.ab_stages = (self.smem_capacity - _RESERVED_SMEM - self.c_stages * c_bytes) // ab_bytes
        self.c_stages += (self.smem_capacity - _RESERVED_SMEM - self.ab_stages * ab_bytes
                          - self.c_stages * c_bytes) // c_bytes
        if self.ab_stages < 2:
            raise ValueError(f"{cfg.name}: shared memory holds {self.ab_stages} A/B stage(s); need 2")
        layouts = self._smem_layouts(tiled_mma, self.ab_stages, self.c_stages)
        self.a_smem_layout = layouts["a"]
        self.b_smem_layout = layouts["b"]
        self.sfa_smem_layout = layouts["sfa"]
        self.sfb_smem_layout = layouts["sfb"]
        self.c_smem_layout = layouts["c"]

    def _smem_layouts(self, tiled_mma, ab_stages: int, c_stages: int) -> dict:
        return {
            "a": sm100_utils.make_smem_layout_a(tiled_mma, self.mma_tiler, AB_DTYPE, ab_stages),
            "b": sm100_utils.make_smem_layout_b(tiled_mma, self.mma_tiler, AB_DTYPE, ab_stages),
            "sfa": blockscaled_utils.make_smem_layout_sfa(tiled_mma, self.mma_tiler, SF_VEC_SIZE, ab_stages),
            "sfb": blockscaled_utils.make_smem_layout_sfb(tiled_mma, self.mma_tiler, SF_VEC_SIZE, ab_stages),
            "c": sm100_utils.make_smem_layout_epi(self.out_dtype, LayoutEnum.ROW_MAJOR,
                                                  self.epi_tile, c_stages),
        }

    @cute.jit
    def __call__(
        self,
        a_ptr: cute.Pointer,
        b_ptr: cute.Pointer,
        sfa_ptr: cute.Pointer,
        sfb_ptr: cute.Pointer,
        c_ptr: cute.Pointer,
        alpha_ptr: cute.Pointer,
        bias_ptr: cute.Pointer,
        m: cutlass.Int32,
        n: cutlass.Int32,
        k: cutlass.Int32,
        max_active_clusters: cutlass.Int32,
        stream: cuda.CUstream,
    ):
        tiled_mma, tiled_mma_sfb = self._make_tiled_mmas()
        self._setup(tiled_mma, tiled_mma_sfb)

        # Global tensors, (rows, cols, batch) with one batch. The divisibility hints are the
        # host's checks (K % 32, 16-byte C rows); TMA descriptors need them to be provable.
        k32 = cute.assume(k, 32)
        n16 = cute.assume(n, 16 // (self.out_dtype.width // 8))
        a = cute.make_tensor(a_ptr, cute.make_layout((m, k32, 1), stride=(k32, 1, 0)))
        b = cute.make_tensor(b_ptr, cute.make_layout((n, k32, 1), stride=(k32, 1, 0)))
        c = cute.make_tensor(c_ptr, cute.make_layout((m, n16, 1), stride=(n16, 1, 0)))
        # ((32, 4, restM), (16, 4, restK), 1): the blocked layout of scale_layout.to_blocked.
        sfa = cute.make_tensor(sfa_ptr, blockscaled_utils.tile_atom_to_shape_SF(a.shape, SF_VEC_SIZE))
        sfb = cute.make_tensor(sfb_ptr, blockscaled_utils.tile_atom_to_shape_SF(b.shape, SF_VEC_SIZE))
        # Row stride 0: every row reads the same vector.
        bias = cute.make_tensor(bias_ptr, cute.make_layout((m, n, 1), stride=(0, 1, 0)))
        alpha = cute.make_tensor(alpha_ptr, cute.make_layout(1))

        cluster_mnk = (*self.cluster_shape_mn, 1)
        tma_a, tma_a_tensor = cute.nvgpu.make_tiled_tma_atom_A(
            sm100_utils.cluster_shape_to_tma_atom_A(cluster_mnk, tiled_mma.thr_id), a,
            cute.slice_(self.a_smem_layout, (None, None, None, 0)), self.mma_tiler, tiled_mma,
            self.cluster_layout_vmnk.shape)
        tma_b, tma_b_tensor = cute.nvgpu.make_tiled_tma_atom_B(
            sm100_utils.cluster_shape_to_tma_atom_B(cluster_mnk, tiled_mma.thr_id), b,
            cute.slice_(self.b_smem_layout, (None, None, None, 0)), self.mma_tiler, tiled_mma,
            self.cluster_layout_vmnk.shape)
        # Scale tiles are copied as 16-bit elements: pairs of neighbouring scales, which the
        # blocked layout keeps together.
        tma_sfa, tma_sfa_tensor = cute.nvgpu.make_tiled_tma_atom_A(
            sm100_utils.cluster_shape_to_tma_atom_A(cluster_mnk, tiled_mma.thr_id), sfa,
            cute.slice_(self.sfa_smem_layout, (None, None, None, 0)), self.mma_tiler, tiled_mma,
            self.cluster_layout_vmnk.shape, internal_type=cutlass.Int16)
        tma_sfb, tma_sfb_tensor = cute.nvgpu.make_tiled_tma_atom_B(
            sm100_utils.cluster_shape_to_tma_atom_SFB(cluster_mnk, tiled_mma.thr_id), sfb,
            cute.slice_(self.sfb_smem_layout, (None, None, None, 0)), self.mma_tiler_sfb,
            tiled_mma_sfb, self.cluster_layout_sfb_vmnk.shape, internal_type=cutlass.Int16)
        tma_c, tma_c_tensor = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(), c, cute.slice_(self.c_smem_layout, (None, None, 0)),
            self.epi_tile)

        # Bytes one stage's mbarrier waits for: both CTAs' loads when the MMA spans two.
        stage_bytes = (
            cute.size_in_bytes(AB_DTYPE, cute.slice_(self.a_smem_layout, (None, None, None, 0)))
            + cute.size_in_bytes(AB_DTYPE, cute.slice_(self.b_smem_layout, (None, None, None, 0)))
            + cute.size_in_bytes(SF_DTYPE, cute.slice_(self.sfa_smem_layout, (None, None, None, 0)))
            + cute.size_in_bytes(SF_DTYPE, cute.slice_(self.sfb_smem_layout, (None, None, None, 0))))
        self.stage_tx_bytes = stage_bytes * cute.size(tiled_mma.thr_id.shape)

        # Persistent grid: G = min(cluster tiles, clusters that fit at once) clusters; cluster
        # c takes cluster tiles c, c + G, c + 2G, ... numbered M fastest (see _mma_tile).
        cluster_rows = self.cta_tile[0] * self.cluster_shape_mn[0]
        cluster_cols = self.cta_tile[1] * self.cluster_shape_mn[1]
        clusters_m = (m + cluster_rows - 1) // cluster_rows
        clusters_n = (n + cluster_cols - 1) // cluster_cols
        cluster_tiles = clusters_m * clusters_n
        grid = (*self.cluster_shape_mn, cutlass.min(cluster_tiles, max_active_clusters))

        @cute.struct
        class SharedStorage:
            ab_full: cute.struct.MemRange[cutlass.Int64, self.ab_stages]
            ab_empty: cute.struct.MemRange[cutlass.Int64, self.ab_stages]
            acc_full: cute.struct.MemRange[cutlass.Int64, self.acc_stages]
            acc_empty: cute.struct.MemRange[cutlass.Int64, self.acc_stages]
            tmem_dealloc: cutlass.Int64
            tmem_address: cutlass.Int32
            sC: cute.struct.Align[cute.struct.MemRange[self.out_dtype, cute.cosize(self.c_smem_layout.outer)],
                                  _BUFFER_ALIGN]
            sA: cute.struct.Align[cute.struct.MemRange[AB_DTYPE, cute.cosize(self.a_smem_layout.outer)],
                                  _BUFFER_ALIGN]
            sB: cute.struct.Align[cute.struct.MemRange[AB_DTYPE, cute.cosize(self.b_smem_layout.outer)],
                                  _BUFFER_ALIGN]
            sSFA: cute.struct.Align[cute.struct.MemRange[SF_DTYPE, cute.cosize(self.sfa_smem_layout)],
                                    _BUFFER_ALIGN]
            sSFB: cute.struct.Align[cute.struct.MemRange[SF_DTYPE, cute.cosize(self.sfb_smem_layout)],
                                    _BUFFER_ALIGN]

        self.shared_storage = SharedStorage

        self.kernel(
            tiled_mma, tiled_mma_sfb,
            tma_a, tma_a_tensor, tma_b, tma_b_tensor,
            tma_sfa, tma_sfa_tensor, tma_sfb, tma_sfb_tensor,
            tma_c, tma_c_tensor, bias, alpha,
            self.cluster_layout_vmnk, self.cluster_layout_sfb_vmnk,
            self.a_smem_layout, self.b_smem_layout, self.sfa_smem_layout, self.sfb_smem_layout,
            self.c_smem_layout, self.epi_tile, clusters_m, cluster_tiles,
        ).launch(grid=grid, block=[self.THREADS, 1, 1], cluster=cluster_mnk, stream=stream,
                 min_blocks_per_mp=1)

    # -- device side -----------------------------------------------------------------------

    @cute.kernel
    def kernel(
        self,
        tiled_mma: cute.TiledMma,
        tiled_mma_sfb: cute.TiledMma,
        tma_a: cute.CopyAtom,
        mA: cute.Tensor,
        tma_b: cute.CopyAtom,
        mB: cute.Tensor,
        tma_sfa: cute.CopyAtom,
        mSFA: cute.Tensor,
        tma_sfb: cute.CopyAtom,
        mSFB: cute.Tensor,
        tma_c: cute.CopyAtom,
        mC: cute.Tensor,
        mBias: cute.Tensor,
        mAlpha: cute.Tensor,
        cluster_layout_vmnk: cute.Layout,
        cluster_layout_sfb_vmnk: cute.Layout,
        a_smem_layout: cute.ComposedLayout,
        b_smem_layout: cute.ComposedLayout,
        sfa_smem_layout: cute.Layout,
        sfb_smem_layout: cute.Layout,
        c_smem_layout: cute.ComposedLayout,
        epi_tile: cute.Tile,
        clusters_m: cutlass.Int32,
        cluster_tiles: cutlass.Int32,
    ):
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        tidx, _, _ = cute.arch.thread_idx()
        ctas_per_mma = cute.size(tiled_mma.thr_id.shape)

        if warp == self.TMA_WARP:
            for atom in (tma_a, tma_b, tma_sfa, tma_sfb, tma_c):
                cpasync.prefetch_descriptor(atom)

        bidx, _, _ = cute.arch.block_idx()
        # Which half of a 2-CTA MMA this CTA holds; the even CTA issues the MMAs.
        mma_v = bidx % ctas_per_mma
        is_leader = mma_v == 0
        rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
        coord_vmnk = cluster_layout_vmnk.get_flat_coord(rank)
        coord_sfb_vmnk = cluster_layout_sfb_vmnk.get_flat_coord(rank)

        storage = SmemAllocator().allocate(self.shared_storage)

        # Stage ring TMA -> MMA. A stage's "empty" barrier takes one arrival from each CTA
        # this CTA's multicast loads reach (its cluster row for A, its column for B, itself
        # once), so a stage is refilled only when every reader is done with it.
        ab_pipe = pipeline.PipelineTmaUmma.create(
            barrier_storage=storage.ab_full.data_ptr(),
            num_stages=self.ab_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread,
                                                     self.mcast_ctas_a + self.mcast_ctas_b - 1),
            tx_count=self.stage_tx_bytes,
            cta_layout_vmnk=cluster_layout_vmnk,
            defer_sync=True,
        )
        # Accumulator ring MMA -> epilogue: in 2-CTA mode both CTAs' epilogue threads release
        # the leader's accumulator stage.
        acc_pipe = pipeline.PipelineUmmaAsync.create(
            barrier_storage=storage.acc_full.data_ptr(),
            num_stages=self.acc_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(
                pipeline.Agent.Thread, 32 * len(self.EPILOGUE_WARPS) * ctas_per_mma),
            cta_layout_vmnk=cluster_layout_vmnk,
            defer_sync=True,
        )
        tmem = TmemAllocator(
            storage.tmem_address.ptr,
            barrier_for_retrieve=self.tmem_ready_barrier,
            allocator_warp_id=self.EPILOGUE_WARPS[0],
            is_two_cta=self.use_2cta,
            two_cta_tmem_dealloc_mbar_ptr=storage.tmem_dealloc.ptr,
        )
        # Barrier initialisation must be visible cluster-wide before any remote arrive.
        pipeline_init_arrive(cluster_shape_mn=self.cluster_shape_mn, is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem_layout.outer, swizzle=a_smem_layout.inner)
        sB = storage.sB.get_tensor(b_smem_layout.outer, swizzle=b_smem_layout.inner)
        sSFA = storage.sSFA.get_tensor(sfa_smem_layout)
        sSFB = storage.sSFB.get_tensor(sfb_smem_layout)
        sC = storage.sC.get_tensor(c_smem_layout.outer, swizzle=c_smem_layout.inner)

        # Global tiles: (tile rows, tile cols, tile index M/N, tile index K, batch).
        gA = cute.local_tile(mA, cute.slice_(self.mma_tiler, (None, 0, None)), (None, None, None))
        gB = cute.local_tile(mB, cute.slice_(self.mma_tiler, (0, None, None)), (None, None, None))
        gSFA = cute.local_tile(mSFA, cute.slice_(self.mma_tiler, (None, 0, None)), (None, None, None))
        gSFB = cute.local_tile(mSFB, cute.slice_(self.mma_tiler_sfb, (0, None, None)), (None, None, None))
        gC = cute.local_tile(mC, cute.slice_(self.mma_tiler, (None, None, 0)), (None, None, None))
        gBias = cute.local_tile(mBias, cute.slice_(self.mma_tiler, (None, None, 0)), (None, None, None))
        k_tiles = cute.size(gA, mode=[3])

        thr_mma = tiled_mma.get_slice(mma_v)
        thr_mma_sfb = tiled_mma_sfb.get_slice(mma_v)
        tCgA = thr_mma.partition_A(gA)
        tCgB = thr_mma.partition_B(gB)
        tCgSFA = thr_mma.partition_A(gSFA)
        tCgSFB = thr_mma_sfb.partition_B(gSFB)
        tCgC = thr_mma.partition_C(gC)
        tCgBias = thr_mma.partition_C(gBias)

        # TMA partitions: ((atom, rest), stage) in shared memory, ((atom, rest), tile, k, l) global.
        a_ctas = cute.make_layout(cute.slice_(cluster_layout_vmnk, (0, 0, None, 0)).shape)
        b_ctas = cute.make_layout(cute.slice_(cluster_layout_vmnk, (0, None, 0, 0)).shape)
        sfb_ctas = cute.make_layout(cute.slice_(cluster_layout_sfb_vmnk, (0, None, 0, 0)).shape)
        tAsA, tAgA = cpasync.tma_partition(tma_a, coord_vmnk[2], a_ctas,
                                           cute.group_modes(sA, 0, 3), cute.group_modes(tCgA, 0, 3))
        tBsB, tBgB = cpasync.tma_partition(tma_b, coord_vmnk[1], b_ctas,
                                           cute.group_modes(sB, 0, 3), cute.group_modes(tCgB, 0, 3))
        tAsSFA, tAgSFA = cpasync.tma_partition(tma_sfa, coord_vmnk[2], a_ctas,
                                               cute.group_modes(sSFA, 0, 3), cute.group_modes(tCgSFA, 0, 3))
        tBsSFB, tBgSFB = cpasync.tma_partition(tma_sfb, coord_sfb_vmnk[1], sfb_ctas,
                                               cute.group_modes(sSFB, 0, 3), cute.group_modes(tCgSFB, 0, 3))
        # The scale layouts repeat each scale over its 16 K elements with stride 0; TMA moves
        # each byte once.
        tAsSFA, tAgSFA = cute.filter_zeros(tAsSFA), cute.filter_zeros(tAgSFA)
        tBsSFB, tBgSFB = cute.filter_zeros(tBsSFB), cute.filter_zeros(tBgSFB)

        # Accumulator layout in tensor memory, (MMA, MMA_M, MMA_N, acc stage).
        acc_shape = tiled_mma.partition_shape_C(self.mma_tiler[:2])
        tCtAcc_layout = tiled_mma.make_fragment_C(cute.append(acc_shape, self.acc_stages)).layout

        pipeline_init_wait(cluster_shape_mn=self.cluster_shape_mn)

        if warp == self.TMA_WARP:
            self._load_warp(tiled_mma, clusters_m, cluster_tiles, ab_pipe, k_tiles, coord_vmnk, coord_sfb_vmnk,
                            cluster_layout_vmnk, cluster_layout_sfb_vmnk,
                            tma_a, tAgA, tAsA, tma_b, tBgB, tBsB,
                            tma_sfa, tAgSFA, tAsSFA, tma_sfb, tBgSFB, tBsSFB)
        if warp == self.MMA_WARP:
            self._mma_warp(tiled_mma, clusters_m, cluster_tiles, ab_pipe, acc_pipe, tmem, k_tiles, is_leader,
                           sA, sB, sSFA, sSFB, tCtAcc_layout, sfa_smem_layout, sfb_smem_layout)
        if warp < self.MMA_WARP:
            self._epilogue_warps(tidx, warp, tiled_mma, clusters_m, cluster_tiles, acc_pipe, tmem, tCtAcc_layout,
                                 tCgC, tCgBias, mAlpha, tma_c, sC, epi_tile)

    @cute.jit
    def _load_warp(self, tiled_mma, clusters_m, cluster_tiles, ab_pipe, k_tiles, coord_vmnk, coord_sfb_vmnk,
                   cluster_layout_vmnk, cluster_layout_sfb_vmnk,
                   tma_a, tAgA, tAsA, tma_b, tBgB, tBsB, tma_sfa, tAgSFA, tAsSFA, tma_sfb, tBgSFB, tBsSFB):
        """TMA warp: stream the K tiles of every output tile this CTA owns into the stage ring."""
        mcast_a = None
        mcast_b = None
        mcast_sfb = None
        if cutlass.const_expr(self.mcast_ctas_a > 1 or self.mcast_ctas_b > 1 or self.use_2cta):
            # mode 2 = the cluster's N (CTAs sharing an A tile), mode 1 = its M (sharing B).
            mcast_a = cpasync.create_tma_multicast_mask(cluster_layout_vmnk, coord_vmnk, mcast_mode=2)
            mcast_b = cpasync.create_tma_multicast_mask(cluster_layout_vmnk, coord_vmnk, mcast_mode=1)
            mcast_sfb = cpasync.create_tma_multicast_mask(cluster_layout_sfb_vmnk, coord_sfb_vmnk,
                                                          mcast_mode=1)

        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.ab_stages)
        cluster_tile = cute.arch.block_idx()[2]
        while cluster_tile < cluster_tiles:
            tile_m, tile_n, tile_l = self._mma_tile(cluster_tile, clusters_m)
            gA_k = tAgA[(None, tile_m, None, tile_l)]
            gB_k = tBgB[(None, tile_n, None, tile_l)]
            gSFA_k = tAgSFA[(None, tile_m, None, tile_l)]
            gSFB_k = tBgSFB[(None, tile_n, None, tile_l)]
            state.reset_count()
            for _ in cutlass.range(0, k_tiles, 1, unroll=1):
                ab_pipe.producer_acquire(state)
                barrier = ab_pipe.producer_get_barrier(state)
                kt, stage = state.count, state.index
                cute.copy(tma_a, gA_k[(None, kt)], tAsA[(None, stage)], tma_bar_ptr=barrier, mcast_mask=mcast_a)
                cute.copy(tma_b, gB_k[(None, kt)], tBsB[(None, stage)], tma_bar_ptr=barrier, mcast_mask=mcast_b)
                cute.copy(tma_sfa, gSFA_k[(None, kt)], tAsSFA[(None, stage)], tma_bar_ptr=barrier,
                          mcast_mask=mcast_a)
                cute.copy(tma_sfb, gSFB_k[(None, kt)], tBsSFB[(None, stage)], tma_bar_ptr=barrier,
                          mcast_mask=mcast_sfb)
                state.advance()
            cluster_tile += cute.arch.grid_dim()[2]
        # Do not exit while a consumer in another CTA may still signal this CTA's barriers.
        ab_pipe.producer_tail(state)

    @cute.jit
    def _mma_warp(self, tiled_mma, clusters_m, cluster_tiles, ab_pipe, acc_pipe, tmem, k_tiles, is_leader,
                  sA, sB, sSFA, sSFB, tCtAcc_layout, sfa_smem_layout, sfb_smem_layout):
        """MMA warp: scales to tensor memory, then four block-scaled MMAs per K tile."""
        tmem.wait_for_alloc()
        acc_base = tmem.retrieve_ptr(ACC_DTYPE)
        tCtAcc_stages = cute.make_tensor(acc_base, tCtAcc_layout)

        # Scale factors live in tensor-memory columns after the accumulator stages.
        sfa_tmem = cute.recast_ptr(acc_base + self.acc_tmem_cols, dtype=SF_DTYPE)
        tCtSFA = cute.make_tensor(sfa_tmem, blockscaled_utils.make_tmem_layout_sfa(
            tiled_mma, self.mma_tiler, SF_VEC_SIZE, cute.slice_(sfa_smem_layout, (None, None, None, 0))))
        sfb_tmem = cute.recast_ptr(acc_base + self.acc_tmem_cols + self.sfa_tmem_cols, dtype=SF_DTYPE)
        tCtSFB = cute.make_tensor(sfb_tmem, blockscaled_utils.make_tmem_layout_sfb(
            tiled_mma, self.mma_tiler, SF_VEC_SIZE, cute.slice_(sfb_smem_layout, (None, None, None, 0))))
        copy_sfa, tCsSFA_s2t, tCtSFA_s2t = self._scale_copy(sSFA, tCtSFA)
        copy_sfb, tCsSFB_s2t, tCtSFB_s2t = self._scale_copy(sSFB, tCtSFB)

        # MMA operands are shared-memory descriptors: (MMA, MMA_M|N, MMA_K, stage).
        tCrA = tiled_mma.make_fragment_A(sA)
        tCrB = tiled_mma.make_fragment_B(sB)

        ab_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
        acc_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.acc_stages)
        cluster_tile = cute.arch.block_idx()[2]
        while cluster_tile < cluster_tiles:
            tCtAcc = tCtAcc_stages[(None, None, None, acc_state.index)]
            # Only the leader CTA of a pair issues MMAs (and waits on their inputs); the other
            # CTA's loads land in its own shared memory, which the 2-CTA MMA reads.
            if is_leader:
                acc_pipe.producer_acquire(acc_state)
            for kt in cutlass.range(0, k_tiles, 1, unroll=1):
                if is_leader:
                    ab_pipe.consumer_wait(ab_state)
                    stage = ab_state.index
                    cute.copy(copy_sfa, tCsSFA_s2t[(None, None, None, None, stage)], tCtSFA_s2t)
                    cute.copy(copy_sfb, tCsSFB_s2t[(None, None, None, None, stage)], tCtSFB_s2t)
                    # The first K tile of an output tile overwrites the accumulator.
                    tiled_mma.set(tcgen05.Field.ACCUMULATE, kt != 0)
                    cute.gemm(tiled_mma, tCtAcc,
                              [tCrA[(None, None, None, stage)], tCtSFA],
                              [tCrB[(None, None, None, stage)], tCtSFB],
                              tCtAcc)
                    # Frees the stage once the MMAs above have read it (tcgen05.commit).
                    ab_pipe.consumer_release(ab_state)
                ab_state.advance()
            if is_leader:
                acc_pipe.producer_commit(acc_state)
            acc_state.advance()
            cluster_tile += cute.arch.grid_dim()[2]
        acc_pipe.producer_tail(acc_state)

    @cute.jit
    def _epilogue_warps(self, tidx, warp, tiled_mma, clusters_m, cluster_tiles, acc_pipe, tmem, tCtAcc_layout,
                        tCgC, tCgBias, mAlpha, tma_c, sC, epi_tile):
        """Epilogue: ``alpha * acc (+ bias)`` in FP32, one rounding, TMA store by subtiles."""
        tmem.allocate(self.tmem_columns)
        tmem.wait_for_alloc()
        acc_base = tmem.retrieve_ptr(ACC_DTYPE)
        tCtAcc_stages = cute.make_tensor(acc_base, tCtAcc_layout)

        # alpha = S_dec^A * S_dec^B, read once from device memory.
        alpha = mAlpha[0]

        # tensor memory -> registers: each thread reads one accumulator row (a TMEM lane).
        t2r_atom = sm100_utils.get_tmem_load_op(self.cta_tile, LayoutEnum.ROW_MAJOR, self.out_dtype,
                                               ACC_DTYPE, epi_tile, self.use_2cta)
        # (EPI_TILE_M, EPI_TILE_N, EPI_M, EPI_N, acc stage)
        tAcc_epi = cute.flat_divide(tCtAcc_stages[((None, None), 0, 0, None)], epi_tile)
        t2r = tcgen05.make_tmem_copy(t2r_atom, tAcc_epi[(None, None, 0, 0, 0)])
        thr_t2r = t2r.get_slice(tidx)
        tTR_tAcc_stages = thr_t2r.partition_S(tAcc_epi)
        # The same partition of C's and bias's tiles gives each register its (row, col).
        gC_epi = cute.flat_divide(tCgC[((None, None), 0, 0, None, None, None)], epi_tile)
        gBias_epi = cute.flat_divide(tCgBias[((None, None), 0, 0, None, None, None)], epi_tile)
        tTR_gC = thr_t2r.partition_D(gC_epi)
        tTR_gBias = thr_t2r.partition_D(gBias_epi)
        tTR_rAcc = cute.make_rmem_tensor(tTR_gC[(None, None, None, 0, 0, 0, 0, 0)].shape, ACC_DTYPE)
        tTR_rBias = cute.make_rmem_tensor(tTR_rAcc.shape, ACC_DTYPE)
        tTR_rC = cute.make_rmem_tensor(tTR_rAcc.shape, self.out_dtype)

        # registers -> shared memory, in the swizzled layout the TMA store reads.
        r2s = cute.make_tiled_copy_D(
            sm100_utils.get_smem_store_op(LayoutEnum.ROW_MAJOR, self.out_dtype, ACC_DTYPE, t2r), t2r)
        tRS_sC = r2s.get_slice(tidx).partition_D(sC)
        tRS_rC = r2s.retile(tTR_rC)
        # shared memory -> global: ((atom, rest), stage) and ((atom, rest), EPI_M, EPI_N, tile M, N, L).
        bSG_sC, bSG_gC_all = cpasync.tma_partition(
            tma_c, 0, cute.make_layout(1), cute.group_modes(sC, 0, 2),
            cute.group_modes(cute.flat_divide(tCgC[((None, None), 0, 0, None, None, None)], epi_tile), 0, 2))

        c_pipe = pipeline.PipelineTmaStore.create(
            num_stages=self.c_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32 * len(self.EPILOGUE_WARPS)))

        acc_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.acc_stages)
        cluster_tile = cute.arch.block_idx()[2]
        # Subtiles stored so far: they rotate through the C stages.
        subtiles_done = cutlass.Int32(0)
        while cluster_tile < cluster_tiles:
            tile = self._mma_tile(cluster_tile, clusters_m)
            bSG_gC = bSG_gC_all[(None, None, None, *tile)]
            bSG_gC = cute.group_modes(bSG_gC, 1, cute.rank(bSG_gC))
            tTR_gBias_tile = tTR_gBias[(None, None, None, None, None, *tile)]
            tTR_gBias_tile = cute.group_modes(tTR_gBias_tile, 3, cute.rank(tTR_gBias_tile))
            tTR_tAcc = tTR_tAcc_stages[(None, None, None, None, None, acc_state.index)]
            tTR_tAcc = cute.group_modes(tTR_tAcc, 3, cute.rank(tTR_tAcc))

            acc_pipe.consumer_wait(acc_state)
            subtiles = cute.size(tTR_tAcc.shape, mode=[3])
            for sub in cutlass.range(subtiles):
                cute.copy(t2r, tTR_tAcc[(None, None, None, sub)], tTR_rAcc)
                acc = tTR_rAcc.load() * alpha
                if cutlass.const_expr(self.has_bias):
                    cute.autovec_copy(tTR_gBias_tile[(None, None, None, sub)], tTR_rBias)
                    acc = acc + tTR_rBias.load()
                # Back into the registers t2r filled, then in the order the r2s copy reads.
                tTR_rAcc.store(acc)
                tRS_rC.store(r2s.retile(tTR_rAcc).load().to(self.out_dtype))
                buf = (subtiles_done + sub) % self.c_stages
                cute.copy(r2s, tRS_rC, tRS_sC[(None, None, None, buf)])
                # Shared-memory writes must be visible to the TMA (async proxy) before the store.
                cute.arch.fence_proxy("async.shared", space="cta")
                self.epilogue_barrier.arrive_and_wait()
                if warp == self.EPILOGUE_WARPS[0]:
                    cute.copy(tma_c, bSG_sC[(None, buf)], bSG_gC[(None, sub)])
                    c_pipe.producer_commit()
                    c_pipe.producer_acquire()
                self.epilogue_barrier.arrive_and_wait()
            # Every thread has read its accumulator stage: the MMA warp may overwrite it.
            acc_pipe.consumer_release(acc_state)
            acc_state.advance()
            subtiles_done += subtiles
            cluster_tile += cute.arch.grid_dim()[2]

        tmem.relinquish_alloc_permit()
        self.epilogue_barrier.arrive_and_wait()
        tmem.free(acc_base)
        c_pipe.producer_tail()

    # -- helpers ---------------------------------------------------------------------------

    @cute.jit
    def _mma_tile(self, cluster_tile: cutlass.Int32, clusters_m: cutlass.Int32):
        """``(M, N, batch)`` index of the MMA tile this CTA computes within cluster tile ``cluster_tile``.

        Cluster tiles are numbered M fastest; inside one, the CTA's place in the cluster
        (``block_idx.x, block_idx.y`` of a ``(cluster_m, cluster_n, G)`` grid) picks the CTA
        tile, and the CTA pair of a 2-CTA MMA shares one MMA tile.
        """
        bidx, bidy, _ = cute.arch.block_idx()
        cta_m = (cluster_tile % clusters_m) * self.cluster_shape_mn[0] + bidx
        cta_n = (cluster_tile // clusters_m) * self.cluster_shape_mn[1] + bidy
        return cta_m // (2 if self.use_2cta else 1), cta_n, 0

    def _scale_copy(self, sSF: cute.Tensor, tSF: cute.Tensor):
        """``tcgen05.cp`` of one stage of scales, shared -> tensor memory, and its partitions.

        The copy atom (``tcgen05.cp ... 32x128b.warpx4``) moves one 512-byte 128x4 scale atom
        as 32 lanes of 128 bits, written into each of the four 32-lane sub-partitions.
        """
        sSF_compact = cute.filter_zeros(sSF)
        tSF_compact = cute.filter_zeros(tSF)
        atom = cute.make_copy_atom(tcgen05.Cp4x32x128bOp(self.cta_group), SF_DTYPE)
        copy = tcgen05.make_s2t_copy(atom, tSF_compact)
        thr = copy.get_slice(0)
        src = tcgen05.get_s2t_smem_desc_tensor(copy, thr.partition_S(sSF_compact))
        dst = thr.partition_D(tSF_compact)
        return copy, src, dst


def pointer_specs(config: GemmConfig) -> list:
    """``(element type, assumed byte alignment)`` of the kernel's seven pointer arguments, in
    order: A, B, SFA, SFB, C, alpha, bias. Compilation and launch both build their pointers
    from this list, so the two cannot disagree."""
    return [(AB_DTYPE, POINTER_ALIGN), (AB_DTYPE, POINTER_ALIGN), (SF_DTYPE, POINTER_ALIGN),
            (SF_DTYPE, POINTER_ALIGN), (OUT_DTYPES[config.out_dtype], POINTER_ALIGN),
            (ACC_DTYPE, 4), (ACC_DTYPE, POINTER_ALIGN)]


def compile_gemm(config: GemmConfig):
    """``(compiled function, PTX text)`` for ``config``; needs no GPU and no driver.

    The pointers are placeholders (address 0) carrying the dtypes and alignments the launch
    passes; the problem size and the cluster count are runtime Int32 values, so one compiled
    function serves every problem size.
    """
    import tempfile

    from cutlass.cute.runtime import make_fake_stream, make_ptr

    placeholders = [make_ptr(dtype, 0, cute.AddressSpace.gmem, assumed_align=align)
                    for dtype, align in pointer_specs(config)]
    one = cutlass.Int32(1)
    # --keep-ptx writes the PTX file under --dump-dir; read it before the directory goes.
    with tempfile.TemporaryDirectory(prefix="nvfp4_gemm_") as dump_dir:
        compiled = cute.compile(
            Sm100Nvfp4Gemm(config), *placeholders, one, one, cutlass.Int32(K_TILE), one, make_fake_stream(),
            options=f"--gpu-arch {config.arch} --keep-ptx --dump-dir {dump_dir}",
        )
        ptx = compiled.artifacts.PTX
    if not isinstance(ptx, str) or "tcgen05.mma" not in ptx:
        raise RuntimeError(f"{config.name}: the compiler returned no PTX with a tcgen05.mma")
    return compiled, ptx
