"""PrefillSm80: FlashAttention-4's mma.sync (Sm80) forward reading the TurboQuant paged cache.

STATUS: compiled (sm_90a and sm_80, zero spills, tests/compile/test_compile_prefill_sm80.py).
H100 run 1 (2026-11-23 17:22) found a race (uncommitted priming cp.async group: stale first K
tile); fixed. H100 run 3 (18:04) passed the whole GPU test file at the shipped defaults (part
of 251 passed / 0 failed). So ``backend="sm80"`` runs on Hopper without any opt-in; on other
GPUs (never run: smaller shared memory, sm_80/86/89/120 builds) ``backend="sm80"`` and
``backend="auto"`` (which routes every non-Hopper GPU here) raise NotImplementedError unless
``FA4TQ_UNVALIDATED_SM80=1`` is set for a validation run (fa4_tq/kernels/prefill.py).

Why an Sm80 class at all: it is the portable path (A100/L40/consumer GPUs, and H100 as a
fallback); on the H100 mma.sync runs at about half of wgmma's rate, so the Hopper prefill
(fa4_tq/kernels/prefill_sm90.py) stays the fast path there.

Design (step 1, "dequantize into FA4's bf16 shared-memory tiles"; see
docs/prefill-sm80-notes.md for the register-fragment design this is the stepping stone to):

* FA4's ``FlashAttentionForwardSm80.compute_one_n_block`` (QK^T / PV with ldmatrix +
  mma.sync m16n8k16, online softmax, masks), ``epilogue`` and ``load_Q`` are used unchanged.
  As in FA4's ``FlashAttentionForwardSm120``, ``self.arch`` is forced to sm_80 so every
  arch test in FA4's Sm80 code takes the sm_80 branch (no TMA-O epilogue, no stmatrix) when
  the module is compiled for sm_90a.
* ``load_K`` / ``load_V`` (the callables compute_one_n_block calls) are replaced: thread t
  of the 128 owns half a row of the 64-row K/V tile (row t // 2, half t % 2; with the
  8-warp tile_m=128, the default at D=128, thread t of 256 owns a quarter row). Default
  (``stage_codes``): the call for block n waits for the cp.async that the previous call (or
  the prologue) issued for block n into a thread-private staging slot (codes + the 32-bit
  word holding the row's bf16 norm), decodes them (``prmt`` register LUT for 2/4-bit sides
  by default, shared-memory byte LUT for 8-bit or on request), writes 8-element chunks with ``st.shared.v4``
  into FA4's swizzled bf16 K/V stage at the offsets FA4's own ``sK_layout`` / ``sV_layout``
  give, then issues the cp.async for block n - 1 (the page table gives the cache row;
  ``seqused_k`` the valid rows). The global latency of the codes thus overlaps the gemm
  between two calls (V under QK^T, K under softmax + PV), as FA4's own cp.async K/V loads
  do. ``stage_codes=False`` loads the codes with predicated vector loads right before
  decoding (simpler; latency exposed). Rows past seqlen_k are exact zeros (norm 0, loads
  predicated off / zero-filled), so V never carries garbage into P@V.
  The tile stores are ordinary shared-memory stores issued where FA4 issues its cp.async
  K/V copies; FA4's ``cp_async_wait_group + barrier`` before each consumer read orders them
  (the stage written is never the one being read, as for FA4's cp.async). Every wait on the
  staged codes commits first: ``cp.async.wait_group`` ignores the uncommitted group.
* The kernel entry is this module's (varlen Q over ``cu_seqlens_q``, paged K/V, codebook
  tables built per CTA); its mainloop follows FA4 Sm90's block order (first block with
  seqlen masking, causal/local-masked blocks, unmasked interior, left-window-masked blocks
  down to ``n_block_min``), which FA4's Sm80 kernel leaves as a TODO for local windows.
* Norms are multiplied with ``fma.rn.bf16x2 x, n, -0.0`` (``mul.rn.bf16x2`` is sm_90-only);
  bit-identical to the Sm90 prefill's ``mul.rn.bf16x2``.

Compile-cache key: ``PrefillSm80Config`` (head_dim, bits, GQA ratio, mask kind, window
presence, tiles, stages, decode choice, table replication).
"""

# no `from __future__ import annotations`: @cute.struct reads the field annotations as types
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Optional

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.base_dsl.arch import Arch
from cutlass.cute import FastDivmodDivisorV2
from cutlass.cute.nvgpu import warp

from quack import layout_utils

from flash_attn.cute import utils as fa_utils
from flash_attn.cute.block_info import BlockInfo
from flash_attn.cute.cute_dsl_utils import assume_tensor_aligned
from flash_attn.cute.flash_fwd import FlashAttentionForwardSm80
from flash_attn.cute.mask import AttentionMask
from flash_attn.cute.seqlen_info import SeqlenInfoQK
from flash_attn.cute.softmax import Softmax
from flash_attn.cute.tile_scheduler import SingleTileVarlenScheduler, TileSchedulerArguments
from flash_attn.cute.utils import AuxData

from . import dequant as dq
from .prefill_candidates import SM80_PRMT_LUT_CANDIDATES

# FA4's interface forces 4 warps (128 threads, tile_m 64/128) on 8.x; here tile_m fixes the warp
# count instead (PrefillSm80Config.num_threads).
ROWS_PER_WARP = 16  # FA4's Sm80 tiled MMA: warps stacked along M, one m16n8k16 row block each
SM80_SMEM_CAPACITY = 163 * 1024  # A100 max dynamic shared memory per block (the portable bound)
SMEM_RESERVE = 1024  # struct alignment padding


@dataclass(frozen=True)
class PrefillSm80Config:
    """Everything that changes the generated code; also the compile-cache key."""

    head_dim: int
    k_bits: int
    v_bits: int
    qhead_per_kvhead: int
    causal: bool  # FA4 canonical form: causal without a left window
    local: bool  # any other window
    has_window_left: bool
    has_window_right: bool
    # FA4's Sm80 default is 128 x 64 with 4 warps (interface.py), but at D=128 that spills on
    # sm_90a (FA4's own bf16 class too: 320 B, 552 B causal: acc_O is 128 fp32 registers per
    # thread). 64 x 64 with 4 warps compiles spill-free; so does 128 x 64 with 8 warps:
    # tile_m 128 runs 8 warps (256 threads, 16 query rows per warp as at 64 x 64), so acc_O
    # stays 64 registers per thread while each decoded K/V tile serves twice the query rows
    # (make_config's default at D=128, see default_tile_m).
    tile_m: int = 64
    tile_n: int = 64
    num_stages: int = 1  # FA4's Sm80 default
    k_lut_replicas: int = 8  # shared-memory LUT sides only (1 for register-LUT sides)
    v_lut_replicas: int = 8
    k_register_lut: bool = False
    v_register_lut: bool = False
    # True: each K/V load decodes codes that a cp.async issued one call earlier (thread-private
    # staging ring, 2 slots per side), then issues the next block's; the global latency hides
    # behind the gemm between two calls. False: vector loads from global right before decoding.
    stage_codes: bool = True
    # PRMT-addressed byte tables (as PrefillSm90Config.prmt_lut): both sides on shared-memory
    # tables with 128-byte entries interleaved at 256 bytes per byte value (64 KB), one PRMT
    # per lookup offset (dq.decode_word_prmt), conflict-free. 4-bit: 12 instructions per 8
    # codes against the register LUT's 21; 2-bit: 16 per 16 codes against 33.
    prmt_lut: bool = False

    def __post_init__(self):
        if self.head_dim not in (64, 128):
            raise NotImplementedError(f"PrefillSm80: head_dim {self.head_dim} is not "
                                      f"implemented (64 and 128 are)")
        for side, bits, reg in (("k", self.k_bits, self.k_register_lut),
                                ("v", self.v_bits, self.v_register_lut)):
            if bits not in (2, 4, 8):
                raise ValueError(f"PrefillSm80: {side}_bits must be 2, 4 or 8, got {bits}")
            if reg and bits not in (2, 4):
                raise ValueError(f"register LUT decode is for 2- and 4-bit codes, not "
                                 f"{side}_bits={bits}")
        if self.tile_m not in (64, 128):
            raise ValueError(f"PrefillSm80: tile_m must be 64 (4 warps) or 128 (8 warps), "
                             f"got {self.tile_m}")
        # threads per K/V row the loader was built and checked for: 2 (4 warps, tile_n 64) or
        # 4 (8 warps, tile_n 64); 1 at 4 warps and tile_n 128 is the same code path as 2.
        allowed = (1, 2) if self.tile_m == 64 else (4,)
        if self.num_threads % self.tile_n or self.num_threads // self.tile_n not in allowed:
            raise ValueError(f"PrefillSm80: tile_n {self.tile_n} must give {allowed} threads "
                             f"per K/V row ({self.num_threads} threads)")
        if self.stage_codes and self.num_stages != 1:
            raise ValueError("PrefillSm80: stage_codes relies on FA4's one-stage order "
                             "(every load follows a cp_async_wait_group(0))")
        if self.prmt_lut:
            why = dq.prmt_sides_error(self.k_bits, self.v_bits, self.k_register_lut,
                                      self.v_register_lut, self.k_lut_replicas,
                                      self.v_lut_replicas)
            if why:
                raise NotImplementedError(f"PrefillSm80: {why}")
        for side, nbytes in (("k", self.k_part_bytes()), ("v", self.v_part_bytes())):
            if nbytes % 8:
                raise ValueError(f"PrefillSm80: {side} codes per thread ({nbytes} B) must be "
                                 f"a multiple of 8 B")

    @property
    def num_threads(self) -> int:
        return self.tile_m // ROWS_PER_WARP * 32

    @property
    def threads_per_row(self) -> int:
        return self.num_threads // self.tile_n

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else ("local" if self.local else "full")
        lut = "".join(("r" if reg else "s") for reg in (self.k_register_lut, self.v_register_lut))
        return (f"prefill_sm80_d{self.head_dim}_k{self.k_bits}v{self.v_bits}_g"
                f"{self.qhead_per_kvhead}_{mask}_t{self.tile_m}x{self.tile_n}"
                f"s{self.num_stages}_lut{lut}{'_cp' if self.stage_codes else '_ld'}"
                f"{'_pl' if self.prmt_lut else ''}")

    def k_row_bytes(self) -> int:
        return self.head_dim * self.k_bits // 8

    def v_row_bytes(self) -> int:
        return self.head_dim * self.v_bits // 8

    def k_part_bytes(self) -> int:
        return self.k_row_bytes() // self.threads_per_row

    def v_part_bytes(self) -> int:
        return self.v_row_bytes() // self.threads_per_row

    def k_lut_bytes(self) -> int:
        return dq.lut_region_bytes(self.k_bits, self.k_register_lut, self.k_lut_replicas,
                                   self.prmt_lut, True)

    def v_lut_bytes(self) -> int:
        return dq.lut_region_bytes(self.v_bits, self.v_register_lut, self.v_lut_replicas,
                                   self.prmt_lut, False)

    def stage_side_bytes(self, is_k: bool) -> int:
        """Staging of one side: 2 slots x threads x (codes part + one 32-bit norm word)."""
        part = self.k_part_bytes() if is_k else self.v_part_bytes()
        return 2 * self.num_threads * (part + 4) if self.stage_codes else 0

    def smem_bytes(self) -> int:
        d = self.head_dim
        tiles = 2 * (self.tile_m * d + 2 * self.num_stages * self.tile_n * d)
        staging = self.stage_side_bytes(True) + self.stage_side_bytes(False)
        return tiles + self.k_lut_bytes() + self.v_lut_bytes() + staging + SMEM_RESERVE


def default_register_lut(k_bits: int, v_bits: int) -> tuple[bool, bool]:
    """Decode choice per side: the ``prmt`` register LUT for 2- and 4-bit sides, the
    shared-memory byte LUT for 8-bit. Measured on the H100 (2026-11-23 17:22, K4V4, B1 S8192,
    64 x 64, cp.async staging): register LUT 5.37 ms vs shared-memory LUT 6.76 ms. Here the
    decode runs in the MMA warps, so the LUT's shared-memory loads compete with ldmatrix;
    the register LUT issues none per code. Other widths: prediction, the probe re-measures."""
    return k_bits in (2, 4), v_bits in (2, 4)


def default_tile_m(head_dim: int) -> int:
    """128 (8 warps) at D=128: measured faster on the H100 in every config timed (2026-11-23,
    B1 S8192: K4V4 full 4.77 vs 5.28 ms, K2V2 4.52 vs 5.16, K8V8 6.18 vs 10.11, K4V4 causal
    2.50 vs 2.84); each decoded K/V tile serves 128 query rows instead of 64. 64 (4 warps) at
    D=64: with 4 threads per row, 2-bit rows (16 B) would give 4 B per thread."""
    return 128 if head_dim == 128 else 64


def make_config(head_dim: int, k_bits: int, v_bits: int, qhead_per_kvhead: int, causal: bool,
                local: bool, has_window_left: bool, has_window_right: bool,
                k_register_lut: Optional[bool] = None,
                v_register_lut: Optional[bool] = None,
                stage_codes: bool = True, tile_m: Optional[int] = None,
                prmt_lut: bool = False) -> PrefillSm80Config:
    """``prmt_lut``: PRMT-addressed interleaved tables on both sides (opt-in; the register-LUT
    choice is then off for both sides, an explicit True for either raises)."""
    k_default, v_default = default_register_lut(k_bits, v_bits)
    if prmt_lut:
        k_default = v_default = False
    kr = bool(k_default if k_register_lut is None else k_register_lut) and k_bits != 8
    vr = bool(v_default if v_register_lut is None else v_register_lut) and v_bits != 8
    kreps, vreps = ((dq.prmt_replicas(k_bits), dq.prmt_replicas(v_bits)) if prmt_lut
                    else (8, 8))
    cfg = PrefillSm80Config(
        head_dim, k_bits, v_bits, qhead_per_kvhead, causal, local, has_window_left,
        has_window_right, k_register_lut=kr, v_register_lut=vr,
        k_lut_replicas=1 if kr else kreps, v_lut_replicas=1 if vr else vreps,
        stage_codes=stage_codes, tile_m=default_tile_m(head_dim) if tile_m is None else tile_m,
        prmt_lut=prmt_lut)
    if cfg.smem_bytes() > SM80_SMEM_CAPACITY:  # cannot happen for D <= 128; kept as a guard
        raise NotImplementedError(f"PrefillSm80: {cfg.name} needs {cfg.smem_bytes()} B smem")
    return cfg


class PrefillSm80(FlashAttentionForwardSm80):
    """FA4 Sm80 forward whose K/V loads dequantize the TurboQuant paged cache."""

    def __init__(self, cfg: PrefillSm80Config):
        super().__init__(
            cutlass.BFloat16, cfg.head_dim, cfg.head_dim, cfg.qhead_per_kvhead,
            is_causal=cfg.causal, is_local=cfg.local, pack_gqa=False, tile_m=cfg.tile_m,
            tile_n=cfg.tile_n, num_stages=cfg.num_stages, num_threads=cfg.num_threads,
            Q_in_regs=False)
        # Same trick as FA4's FlashAttentionForwardSm120: every `self.arch` test in FA4's
        # Sm80 code (TMA-O epilogue, stmatrix store atom) takes the sm_80 branch even when
        # CuTeDSL targets sm_90a.
        self.arch = Arch.sm_80
        self.cfg = cfg

    # ------------------------------------------------------------------ shared memory
    def _get_shared_storage_cls(self):
        cfg = self.cfg
        sQ_struct, sK_struct, sV_struct = [
            cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(layout)], 1024]
            for layout in (self.sQ_layout, self.sK_layout, self.sV_layout)
        ]
        lutk_struct = cute.struct.Align[cute.struct.MemRange[Int32, cfg.k_lut_bytes() // 4], 128]
        lutv_struct = cute.struct.Align[cute.struct.MemRange[Int32, cfg.v_lut_bytes() // 4], 128]
        stage_words = max(1, (cfg.stage_side_bytes(True) + cfg.stage_side_bytes(False)) // 4)
        stage_struct = cute.struct.Align[cute.struct.MemRange[Int32, stage_words], 128]

        @cute.struct
        class SharedStorageTQ80:
            sV: sV_struct
            sQ: sQ_struct
            sK: sK_struct
            sLutK: lutk_struct
            sLutV: lutv_struct
            sStage: stage_struct

        return SharedStorageTQ80

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # (total_q, h, d) bf16, already rotated into K's space
        mKC: cute.Tensor,  # (num_blocks, block_size, h_kv, d*k_bits/8) uint8
        mVC: cute.Tensor,  # (num_blocks, block_size, h_kv, d*v_bits/8) uint8
        mKN: cute.Tensor,  # (num_blocks, block_size, h_kv) bf16 bits as int16
        mVN: cute.Tensor,
        mKCB: cute.Tensor,  # (2**k_bits,) float32
        mVCB: cute.Tensor,
        mO: cute.Tensor,  # (total_q, h, d) bf16
        mLSE: cute.Tensor,  # (h, total_q) float32
        softmax_scale: Float32,
        mCuSeqlensQ: cute.Tensor,  # (b + 1,) int32
        mSeqUsedK: cute.Tensor,  # (b,) int32
        mPageTable: cute.Tensor,  # (b, max_blocks) int32
        window_size_left: Int32 | int | None = None,
        window_size_right: Int32 | int | None = None,
        stream: cuda.CUstream = None,
    ):
        tiled_mma_qk, tiled_mma_pv = self._get_tiled_mma()
        self.num_mma_threads = tiled_mma_pv.size
        self.num_producer_threads = self.num_threads
        self.num_Q_load_threads = self.num_threads
        self.num_epilogue_threads = self.num_threads
        self.use_tma_O = False  # self.arch is sm_80 (see __init__)
        self._setup_attributes()
        SharedStorage = self._get_shared_storage_cls()
        mQ, mO = [assume_tensor_aligned(t) for t in (mQ, mO)]
        mQ, mO = [layout_utils.select(t, [0, 2, 1]) for t in (mQ, mO)]  # (total_q, d, h)
        mLSE = layout_utils.select(mLSE, [1, 0])  # (total_q, h)
        tile_sched_args = TileSchedulerArguments(
            num_block=cute.ceil_div(cute.size(mQ.shape[0]), self.tile_m),
            num_head=cute.size(mQ.shape[2]),
            num_batch=cute.size(mCuSeqlensQ.shape[0] - 1),
            num_splits=1,
            seqlen_k=0,
            headdim=mQ.shape[1],
            headdim_v=mQ.shape[1],
            total_q=cute.size(mQ.shape[0]),
            tile_shape_mn=(self.tile_m, self.tile_n),
            qhead_per_kvhead_packgqa=1,
            mCuSeqlensQ=mCuSeqlensQ,
            mSeqUsedQ=None,
        )
        tile_sched_params = SingleTileVarlenScheduler.to_underlying_arguments(tile_sched_args)
        grid_dim = SingleTileVarlenScheduler.get_grid_shape(tile_sched_params)
        softmax_scale_log2, softmax_scale = fa_utils.compute_softmax_scale_log2(
            softmax_scale, None)
        window_size_left = Int32(window_size_left) if window_size_left is not None else None
        window_size_right = Int32(window_size_right) if window_size_right is not None else None

        self.kernel_tq(
            mQ, mKC, mVC, mKN, mVN, mKCB, mVCB, mO, mLSE, mCuSeqlensQ, mSeqUsedK, mPageTable,
            softmax_scale_log2, softmax_scale, window_size_left, window_size_right,
            self.sQ_layout, self.sK_layout, self.sV_layout, self.sO_layout,
            self.gmem_tiled_copy_Q, self.gmem_tiled_copy_O, tiled_mma_qk, tiled_mma_pv,
            SharedStorage, tile_sched_params, SingleTileVarlenScheduler,
        ).launch(grid=grid_dim, block=[self.num_threads, 1, 1],
                 smem=SharedStorage.size_in_bytes(), stream=stream)

    # ------------------------------------------------------------------ kernel entry
    @cute.kernel
    def kernel_tq(
        self,
        mQ: cute.Tensor,
        mKC: cute.Tensor,
        mVC: cute.Tensor,
        mKN: cute.Tensor,
        mVN: cute.Tensor,
        mKCB: cute.Tensor,
        mVCB: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        mCuSeqlensQ: cute.Tensor,
        mSeqUsedK: cute.Tensor,
        mPageTable: cute.Tensor,
        softmax_scale_log2: Float32,
        softmax_scale: Optional[Float32],
        window_size_left: Optional[Int32],
        window_size_right: Optional[Int32],
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
        gmem_tiled_copy_Q: cute.TiledCopy,
        gmem_tiled_copy_O: cute.TiledCopy,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        SharedStorage: cutlass.Constexpr,
        tile_sched_params,
        TileScheduler: cutlass.Constexpr,
    ):
        cfg = self.cfg
        tidx, _, _ = cute.arch.thread_idx()
        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(SharedStorage)
        lutk_addr = dq.smem_addr(storage.sLutK.data_ptr())
        lutv_addr = dq.smem_addr(storage.sLutV.data_ptr())
        # (prmt_lut: interleaved, V's entries in the second half of K's)
        lutk_addr, lutv_addr, stride = dq.table_bases(lutk_addr, lutv_addr, cfg.prmt_lut)
        # Tables from the codebooks, once per CTA (all threads; barrier below, before the
        # first K/V decode): byte -> bf16 LUT, or the bf16 codebook words for register LUTs.
        if const_expr(cfg.k_register_lut):
            dq.build_entry_words(mKCB, lutk_addr, cfg.k_bits, tidx)
        else:
            dq.build_lut(mKCB, lutk_addr, cfg.k_bits, cfg.k_lut_replicas, tidx, cfg.num_threads,
                         stride)
        if const_expr(cfg.v_register_lut):
            dq.build_entry_words(mVCB, lutv_addr, cfg.v_bits, tidx)
        else:
            dq.build_lut(mVCB, lutv_addr, cfg.v_bits, cfg.v_lut_replicas, tidx, cfg.num_threads,
                         stride)

        tile_scheduler = TileScheduler.create(tile_sched_params)
        work_tile = tile_scheduler.initial_work_tile_info()
        cute.arch.barrier()  # tables visible to every thread (unconditional: all threads)
        if work_tile.is_valid_tile:
            m_block, head_idx, batch_idx, _ = work_tile.tile_idx
            block_info = BlockInfo(
                self.tile_m, self.tile_n, self.is_causal, self.is_local, False,
                window_size_left, window_size_right, qhead_per_kvhead_packgqa=1)
            seqlen = SeqlenInfoQK.create(
                batch_idx=batch_idx, seqlen_q_static=mQ.shape[0],
                seqlen_k_static=mKC.shape[1] * mPageTable.shape[1], mCuSeqlensQ=mCuSeqlensQ,
                mCuSeqlensK=None, mSeqUsedQ=None, mSeqUsedK=mSeqUsedK)
            n_block_min, n_block_max = block_info.get_n_block_min_max(seqlen, m_block)
            # Empty ranges (seqlen_k = 0, or a window that excludes every key) still run one
            # fully masked block 0, as FA4 does: LSE -inf and output 0 come out of finalize.
            n_block = cutlass.max(n_block_max - 1, 0)

            mQ_cur = seqlen.offset_batch_Q(mQ, batch_idx, dim=3)[None, None, head_idx]
            gQ = cute.local_tile(mQ_cur, (self.tile_m, self.tile_hdim), (m_block, 0))
            sQ = storage.sQ.get_tensor(sQ_layout)
            sK = storage.sK.get_tensor(sK_layout)
            sV = storage.sV.get_tensor(sV_layout)
            sVt = layout_utils.transpose_view(sV)

            thr_mma_qk = tiled_mma_qk.get_slice(tidx)
            thr_mma_pv = tiled_mma_pv.get_slice(tidx)
            tSrQ = thr_mma_qk.make_fragment_A(thr_mma_qk.partition_A(sQ))
            tSrK = thr_mma_qk.make_fragment_B(thr_mma_qk.partition_B(sK[None, None, 0]))
            tOrVt = thr_mma_pv.make_fragment_B(thr_mma_pv.partition_B(sVt[None, None, 0]))
            acc_shape_O = thr_mma_pv.partition_shape_C((self.tile_m, self.tile_hdimv))
            acc_O = cute.make_rmem_tensor(acc_shape_O, Float32)
            acc_O.fill(0.0)

            smem_copy_atom_QK = cute.make_copy_atom(
                warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype)
            smem_copy_atom_V = cute.make_copy_atom(
                warp.LdMatrix8x8x16bOp(transpose=True, num_matrices=4), self.dtype)
            smem_thr_copy_Q = fa_utils.make_tiled_copy_A(
                smem_copy_atom_QK, tiled_mma_qk).get_slice(tidx)
            smem_thr_copy_K = fa_utils.make_tiled_copy_B(
                smem_copy_atom_QK, tiled_mma_qk).get_slice(tidx)
            smem_thr_copy_V = fa_utils.make_tiled_copy_B(
                smem_copy_atom_V, tiled_mma_pv).get_slice(tidx)

            softmax = Softmax.create(
                softmax_scale_log2, num_rows=acc_O.shape[0][0] * acc_O.shape[1],
                softmax_scale=softmax_scale)
            softmax.reset()

            mma_params = SimpleNamespace(
                thr_mma_qk=thr_mma_qk, thr_mma_pv=thr_mma_pv, tSrQ=tSrQ, tSrK=tSrK,
                tOrVt=tOrVt, acc_O=acc_O)
            smem_copy_params = SimpleNamespace(
                smem_thr_copy_Q=smem_thr_copy_Q, smem_thr_copy_K=smem_thr_copy_K,
                smem_thr_copy_V=smem_thr_copy_V, tSsQ=smem_thr_copy_Q.partition_S(sQ),
                tSsK=smem_thr_copy_K.partition_S(sK), tOsVt=smem_thr_copy_V.partition_S(sVt))

            page_size = mKC.shape[1]
            ctx = _LoadCtx(
                tidx=tidx, seqlen_k=seqlen.seqlen_k, batch_idx=batch_idx,
                head_kv=head_idx // self.qhead_per_kvhead, page_size=page_size,
                page_divmod=FastDivmodDivisorV2(page_size), num_heads_kv=mKC.shape[2],
                mPageTable=mPageTable, kc_base=mKC.iterator.toint(),
                vc_base=mVC.iterator.toint(), kn_base=mKN.iterator.toint(),
                vn_base=mVN.iterator.toint(), lutk_addr=lutk_addr, lutv_addr=lutv_addr,
                sK_addr=dq.smem_addr(storage.sK.data_ptr()),
                sV_addr=dq.smem_addr(storage.sV.data_ptr()), sK_layout=sK_layout,
                sV_layout=sV_layout, stage_addr=dq.smem_addr(storage.sStage.data_ptr()))
            load_K = partial(self._load_tq, ctx, True)
            load_V = partial(self._load_tq, ctx, False)

            compute_one_n_block = partial(
                self.compute_one_n_block, mma_params=mma_params,
                smem_copy_params=smem_copy_params, softmax=softmax, load_K=load_K,
                load_V=load_V, score_mod=None, batch_idx=batch_idx, head_idx=head_idx,
                m_block=m_block, aux_data=AuxData(), fastdiv_mods=None)

            # Prologue (FA4's Sm80 order): Q by cp.async, then the first K/V stages.
            gmem_thr_copy_Q = gmem_tiled_copy_Q.get_slice(tidx)
            self.load_Q(gmem_thr_copy_Q, gQ, sQ, m_block, seqlen=seqlen.seqlen_q,
                        headdim=mQ.shape[1])
            cute.arch.cp_async_commit_group()
            if const_expr(cfg.stage_codes):
                # Prime the staging rings: K(n_block) is decoded right away by the first
                # load_K below, V(n_block) by the first iteration's load_V.
                self._issue_codes(ctx, True, n_block)
                self._issue_codes(ctx, False, n_block)
            for stage in cutlass.range_constexpr(self.num_stages):
                if stage == 0 or n_block - stage >= 0:
                    load_K(n_block - stage, smem_pipe_write=stage, need_predicates=stage == 0)
                cute.arch.cp_async_commit_group()
                if const_expr(stage < self.num_stages - 1):
                    if stage == 0 or n_block - stage >= 0:
                        load_V(n_block - stage, smem_pipe_write=stage,
                               need_predicates=stage == 0)
                    cute.arch.cp_async_commit_group()
            cute.arch.cp_async_wait_group(self.num_stages * 2 - 1)

            # Mainloop, blocks in descending order (FA4 Sm90's split of masked / unmasked).
            mask = AttentionMask(self.tile_m, self.tile_n, seqlen, window_size_left,
                                 window_size_right, 1)
            mask_fn = partial(
                mask.apply_mask, batch_idx=batch_idx, head_idx=head_idx, m_block=m_block,
                thr_mma=thr_mma_qk, mask_causal=self.is_causal, mask_local=self.is_local,
                aux_data=AuxData(), fastdiv_mods=None, mask_mod=None)
            smem_pipe_read = Int32(0)
            smem_pipe_write = Int32(self.num_stages - 1)
            compute_one_n_block(
                n_block, smem_pipe_read, smem_pipe_write, is_first_n_block=True,
                seqlen=seqlen, mask_fn=partial(mask_fn, mask_seqlen=True))
            smem_pipe_read = self.advance_pipeline(smem_pipe_read)
            smem_pipe_write = self.advance_pipeline(smem_pipe_write)
            n_hi = n_block  # blocks n_hi - 1, n_hi - 2, ... are still to do
            if const_expr(self.is_causal or self.is_local):
                n_min_mask = block_info.get_n_block_min_causal_local_mask(
                    seqlen, m_block, n_block_min)
                for n_tile in cutlass.range(n_hi - n_min_mask, unroll=1):
                    compute_one_n_block(
                        n_hi - 1 - n_tile, smem_pipe_read, smem_pipe_write, seqlen=seqlen,
                        mask_fn=partial(mask_fn, mask_seqlen=False))
                    smem_pipe_read = self.advance_pipeline(smem_pipe_read)
                    smem_pipe_write = self.advance_pipeline(smem_pipe_write)
                n_hi = cutlass.min(n_hi, n_min_mask)
            n_min_before_local = block_info.get_n_block_min_before_local_mask(
                seqlen, m_block, n_block_min)
            for n_tile in cutlass.range(n_hi - n_min_before_local, unroll=1):
                compute_one_n_block(
                    n_hi - 1 - n_tile, smem_pipe_read, smem_pipe_write, seqlen=seqlen,
                    mask_fn=None)
                smem_pipe_read = self.advance_pipeline(smem_pipe_read)
                smem_pipe_write = self.advance_pipeline(smem_pipe_write)
            if const_expr(self.is_local and window_size_left is not None):
                n_hi = cutlass.min(n_hi, n_min_before_local)
                for n_tile in cutlass.range(n_hi - n_block_min, unroll=1):
                    compute_one_n_block(
                        n_hi - 1 - n_tile, smem_pipe_read, smem_pipe_write, seqlen=seqlen,
                        mask_fn=partial(mask_fn, mask_seqlen=False))
                    smem_pipe_read = self.advance_pipeline(smem_pipe_read)
                    smem_pipe_write = self.advance_pipeline(smem_pipe_write)

            # The last loads prefetched blocks that are never used (zero-filled when < 0):
            # let those cp.async writes land before the CTA can exit.
            cute.arch.cp_async_wait_group(0)
            row_scale = softmax.finalize()
            softmax.rescale_O(acc_O, row_scale)
            sO = cute.make_tensor(sQ.iterator, sO_layout)  # reuses sQ, as FA4 does
            self.epilogue(acc_O, softmax.row_sum, mO, mLSE, sO, seqlen, gmem_tiled_copy_O, None,
                          tiled_mma_pv, tidx, m_block, head_idx, batch_idx)

    # ------------------------------------------------------------------ K/V loads
    # Plain Python, traced inline wherever FA4's compute_one_n_block calls load_K / load_V;
    # branch-free (rows past seqlen_k, and block -1, are predicated off, not branched around).
    def _load_tq(self, ctx: "_LoadCtx", is_k: bool, block: Int32, smem_pipe_write: Int32,
                 need_predicates: bool = True) -> None:
        """Dequantize this thread's part of K/V tile ``block`` into stage ``smem_pipe_write``.

        ``need_predicates`` is FA4's hint that the block may run past seqlen_k; the loader
        always predicates per row (one compare), so the hint is not needed."""
        cfg = self.cfg
        part_bytes = cfg.k_part_bytes() if is_k else cfg.v_part_bytes()
        vec_words = 4 if part_bytes % 16 == 0 else 2
        r = ctx.tidx // cfg.threads_per_row
        if const_expr(cfg.stage_codes):
            # Blocks arrive in descending order, one call per block and side, each call after
            # FA4's cp_async_wait_group(0) + barrier; the codes of `block` were issued by the
            # previous call (or the prologue) into this thread's private slot block & 1.
            # The page-table read for block - 1 goes first so its latency overlaps the decode.
            nxt = self._codes_source(ctx, is_k, block - 1)
            # commit + wait_group(0) (= cp.async.wait_all): wait_group only covers COMMITTED
            # groups, and the prologue's priming copies of K(n_block)/V(n_block) are still in
            # the open group when the first load_K runs (FA4 commits only after the call).
            # Without this commit the first K tile decoded stale shared memory (device run
            # 2026-11-23 17:22: rel. error 0.4-0.5 on short/varlen sequences, NaN/inf
            # depending on what an earlier kernel left in shared memory).
            cute.arch.cp_async_commit_group()
            cute.arch.cp_async_wait_group(0)
            codes_addr, norm_addr = self._stage_slot(ctx, is_k, block)
            words = []
            for c in range(part_bytes // (4 * vec_words)):
                addr = codes_addr + c * 4 * vec_words
                words.extend(dq.ld_shared_v4(addr) if vec_words == 4 else dq.ld_shared_v2(addr))
            # The staged 32-bit word holds norms (row & ~1, row | 1) little-endian; this row's
            # parity is (token * Hkv + head) & 1 with token = block * tile_n + r and page_size,
            # tile_n even, i.e. (r * Hkv + head) & 1. Zero-filled for invalid rows -> norm 0.
            nw = dq.ld_shared_b32(norm_addr)
            parity = (r * ctx.num_heads_kv + ctx.head_kv) & 1
            norm2 = dq.prmt(nw >> (parity << 4), Int32(0), 0x1010)
            self._decode_store(ctx, is_k, words, norm2, r, smem_pipe_write)
            self._issue_codes(ctx, is_k, block - 1, nxt)
        else:
            valid, row = self._row_of(ctx, block)
            row_bytes = cfg.k_row_bytes() if is_k else cfg.v_row_bytes()
            part = ctx.tidx % cfg.threads_per_row
            src = ((ctx.kc_base if is_k else ctx.vc_base) + row * row_bytes
                   + Int64(part * part_bytes))
            norm2 = dq.ld_global_bf16_pair((ctx.kn_base if is_k else ctx.vn_base) + row * 2,
                                           valid)
            words = []  # all code loads first (latency overlap), then decode + store
            for c in range(part_bytes // (4 * vec_words)):
                words.extend(dq.ld_global_words_pred(src + c * 4 * vec_words, vec_words, valid))
            self._decode_store(ctx, is_k, words, norm2, r, smem_pipe_write)

    def _row_of(self, ctx: "_LoadCtx", block: Int32):
        """(valid, cache row index) of this thread's token in ``block``; invalid rows (past
        seqlen_k, or block < 0) look up page-table entry 0 (always in bounds), never read."""
        token = block * self.tile_n + ctx.tidx // self.cfg.threads_per_row
        valid = Int32((token < ctx.seqlen_k) & (block >= 0))
        row = dq.paged_cache_row(ctx.mPageTable, ctx.batch_idx, token * valid, ctx.page_divmod,
                                 ctx.page_size, ctx.num_heads_kv, ctx.head_kv)
        return valid, row

    def _stage_slot(self, ctx: "_LoadCtx", is_k: bool, block: Int32):
        """(codes, norm word) shared addresses of this thread's staging slot for ``block``.
        Side layout: [slot][thread][part bytes] codes, then [slot][thread] 32-bit norm words;
        consecutive threads read consecutive bytes (conflict-free vector loads)."""
        cfg = self.cfg
        part = cfg.k_part_bytes() if is_k else cfg.v_part_bytes()
        base = ctx.stage_addr + (0 if is_k else cfg.stage_side_bytes(True))
        slot = block & 1
        nthr = cfg.num_threads
        codes = base + slot * (nthr * part) + ctx.tidx * part
        norm = base + 2 * nthr * part + slot * (nthr * 4) + ctx.tidx * 4
        return codes, norm

    def _codes_source(self, ctx: "_LoadCtx", is_k: bool, block: Int32):
        """(valid, global address of this thread's code bytes, of its aligned norm word)."""
        cfg = self.cfg
        valid, row = self._row_of(ctx, block)
        row_bytes = cfg.k_row_bytes() if is_k else cfg.v_row_bytes()
        part_bytes = cfg.k_part_bytes() if is_k else cfg.v_part_bytes()
        part = ctx.tidx % cfg.threads_per_row
        src = (ctx.kc_base if is_k else ctx.vc_base) + row * row_bytes + Int64(part * part_bytes)
        # The 4-byte word holding norm[row] starts at element row & ~1; it is in bounds because
        # the norm tensor has an even number of elements (block_size is a multiple of 16) and
        # its base is 4-byte aligned (checked by the dispatcher).
        nsrc = (ctx.kn_base if is_k else ctx.vn_base) + (row & Int64(-2)) * 2
        return valid, src, nsrc

    def _issue_codes(self, ctx: "_LoadCtx", is_k: bool, block: Int32, source=None) -> None:
        """cp.async this thread's code bytes + norm word of ``block`` into its slot (zero-fill
        when invalid). Joins whatever cp.async group is open; FA4 commits after each load."""
        cfg = self.cfg
        valid, src, nsrc = source if source is not None else self._codes_source(ctx, is_k, block)
        part_bytes = cfg.k_part_bytes() if is_k else cfg.v_part_bytes()
        codes_addr, norm_addr = self._stage_slot(ctx, is_k, block)
        chunk = 16 if part_bytes % 16 == 0 else 8
        for c in range(part_bytes // chunk):
            dq.cp_async_ca(codes_addr + c * chunk, src + c * chunk, chunk, valid * chunk)
        dq.cp_async_ca(norm_addr, nsrc, 4, valid * 4)

    def _decode_store(self, ctx: "_LoadCtx", is_k: bool, words, norm2: Int32, r: Int32,
                      smem_pipe_write: Int32) -> None:
        """Decode this thread's code words (element order) and store them as 8-element chunks
        into the swizzled bf16 K/V stage, at the offsets of FA4's own smem layout."""
        cfg = self.cfg
        bits = cfg.k_bits if is_k else cfg.v_bits
        tpr = cfg.threads_per_row
        register_lut = cfg.k_register_lut if is_k else cfg.v_register_lut
        reps = cfg.k_lut_replicas if is_k else cfg.v_lut_replicas
        lut_addr = ctx.lutk_addr if is_k else ctx.lutv_addr
        layout = ctx.sK_layout if is_k else ctx.sV_layout
        tile_addr = ctx.sK_addr if is_k else ctx.sV_addr
        planes = None
        if register_lut:
            planes = dq.load_row_planes_sm80(lut_addr, bits, norm2)
        lut_lane = lut_addr + (ctx.tidx % 32 % reps) * (4 * dq.lut_entry_words(bits))
        col0 = (ctx.tidx % tpr) * (self.tile_hdim // tpr)
        stage = smem_pipe_write if const_expr(self.num_stages > 1) else 0
        outs = []
        chunk = 0
        for w in words:
            if register_lut:
                outs.extend(dq.decode4_reg(w, planes) if bits == 4
                            else dq.decode2_reg(w, planes))
            elif cfg.prmt_lut:  # (lut_addr: the interleaved tables' base, K's or V's half)
                outs.extend(dq.decode_word_prmt(
                    w, ctx.lutk_addr, dq.prmt_lane_offset(bits, ctx.tidx % 32, is_k), norm2,
                    bits, mul=dq.mul_bf16x2_fma))
            else:
                outs.extend(dq.decode_word_sm80(w, lut_lane, norm2, bits, reps))
            while len(outs) >= 4:  # one 8-element chunk ready
                off = cute.crd2idx((r, col0 + 8 * chunk, stage), layout)
                dq.st_shared_v4(tile_addr + off * 2, outs[0], outs[1], outs[2], outs[3])
                outs = outs[4:]
                chunk += 1
        assert not outs and chunk * 8 * tpr == self.tile_hdim


@dataclass
class _LoadCtx:
    """Per-CTA values the K/V loader needs (a bag of DSL values, not a kernel argument)."""

    tidx: object
    seqlen_k: object
    batch_idx: object
    head_kv: object
    page_size: object
    page_divmod: object
    num_heads_kv: object
    mPageTable: object
    kc_base: object
    vc_base: object
    kn_base: object
    vn_base: object
    lutk_addr: object
    lutv_addr: object
    sK_addr: object
    sV_addr: object
    sK_layout: object
    sV_layout: object
    stage_addr: object


# --------------------------------------------------------------------------- compile-only
def build_compile(cfg: PrefillSm80Config):
    """(compile_fn, args) compiling ``cfg`` from fake tensors (no GPU), for the compile-only
    harness (fa4_tq/kernels/compile.py); the argument kinds are the dispatcher's."""
    from .prefill import build_fake_compile
    return build_fake_compile(PrefillSm80(cfg), cfg)


def shipped_configs() -> list[PrefillSm80Config]:
    """All nine (k_bits, v_bits) at D=128, GQA 4, causal and not; a sliding window; a D=64
    subset; the shared-memory-LUT decode variants and the 4-warp D=128 tile the probe times."""
    out = []
    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            out.append(make_config(128, kb, vb, 4, False, False, False, False))
            out.append(make_config(128, kb, vb, 4, True, False, False, False))
    out.append(make_config(128, 4, 4, 4, False, True, True, True))
    for kb, vb in ((4, 4), (2, 2), (8, 8), (2, 8), (8, 2)):
        out.append(make_config(64, kb, vb, 4, True, False, False, False))
    for kb, vb in ((4, 4), (2, 2), (4, 2)):  # the non-default shared-memory LUT decode
        out.append(make_config(128, kb, vb, 4, True, False, False, False, False, False))
    # the 4-warp 64 x 64 tile at D=128 (opt-in there; the probe times it against the default)
    out.append(make_config(128, 4, 4, 4, False, False, False, False, tile_m=64))
    out.append(make_config(128, 8, 8, 4, True, False, False, False, tile_m=64))
    # the direct-load variant (no cp.async staging) the probe times against the default
    for d, kb, vb, causal in ((128, 4, 4, False), (128, 4, 4, True), (128, 2, 2, True),
                              (128, 8, 8, True), (64, 2, 2, True)):
        out.append(make_config(d, kb, vb, 4, causal, False, False, False, stage_codes=False))
    # PRMT-addressed interleaved 32-replica tables (opt-in until measured)
    for kb, vb, causal, knobs in SM80_PRMT_LUT_CANDIDATES:
        out.append(make_config(128, kb, vb, 4, causal, False, False, False, **knobs))
    return out


def _variant(cfg: PrefillSm80Config) -> str:
    mask = "causal" if cfg.causal else ("local" if cfg.local else "full")
    lut = "".join(("r" if reg else "s") for reg in (cfg.k_register_lut, cfg.v_register_lut))
    load = "cp" if cfg.stage_codes else "ld"
    return (f"sm80-{mask}-g{cfg.qhead_per_kvhead}-lut{lut}-{load}-m{cfg.tile_m}"
            f"{'-pl' if cfg.prmt_lut else ''}")


def register_configs(register) -> None:
    """Compile-harness registry hook (fa4_tq/kernels/compile.py)."""
    from .compile import KernelConfig
    for cfg in shipped_configs():
        register(KernelConfig("prefill", cfg.k_bits, cfg.v_bits, cfg.head_dim,
                              _variant(cfg), partial(build_compile, cfg)))

