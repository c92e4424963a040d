"""PrefillSm90: FlashAttention-4's Hopper forward reading the TurboQuant paged cache directly.

Design (see docs/prefill-sm90-notes.md for the measured history):

* Consumers (2 warpgroups, 128-row Q tile) are FA4's ``FlashAttentionForwardSm90.mma``
  unchanged: wgmma QK^T and PV from bf16 K/V tiles in FA4's 128B-swizzled shared memory,
  online softmax, causal/local masking (bottom-right), LSE, TMA epilogue.
* The producer warpgroup (128 threads) replaces FA4's TMA/cp.async K/V loads. Thread t owns
  row t of every 128-row K/V tile:
    1. cp.async its packed code row (D*bits/8 bytes) from the paged cache into a private
       staging ring ``stage_slots`` blocks ahead (row-major per 16B chunk, conflict-free),
       and prefetch its bf16 norm into a register (rows past seqlen_k get norm 0 and are
       never read);
    2. when the block's cp.async group has landed: one LDS.128 per 16 code bytes, then per
       side either (shared-memory LUT) a byte -> bf16 table lookup (table built per CTA from
       the codebook tensor, replicated against bank conflicts) and one bf16x2 multiply by the
       norm, or (register LUT, 2/4-bit) ``prmt`` byte permutes from the row's norm-scaled
       codebook held in registers (fa4_tq/kernels/dequant.py; the choice per (k_bits, v_bits)
       is measured, ``default_register_lut``); one STS.128 per 8 elements into the swizzled
       K or V stage;
    3. ``fence.proxy.async`` + mbarrier arrive (PipelineAsync) so the consumers' wgmma sees
       the tile.
* ``producer_wgs=2`` (the default where measured faster, ``default_producer_wgs``): two
  producer warpgroups, WG0 decoding K (and issuing the Q TMA) and WG3 decoding V, each with
  the loop above for its side only (512 threads; WG1-2 stay FA4's consumers, so FA4's
  thread-index-derived roles hold). One producer warp per scheduler was latency bound; two
  hide each other's load/LUT latencies (H100: +7% K4V4 .. +17% K2V2).
* ``cluster_share=2`` (D=128, producer_wgs=2, even GQA ratio; the default for the 8-bit
  side(s), ``CLUSTER_SHARE_MEASURED``, H100 +7-15 % there, flat for 2/4-bit sides): 2-CTA
  clusters of the query heads 2j, 2j+1 (same KV head and n_blocks); each CTA decodes 64 rows
  of every K/V tile into its own tile and bulk-copies them (cp.async.bulk shared::cta ->
  shared::cluster, completing bytes on the peer's full barrier) into the peer's, so decode
  work per CTA halves; ``ClusterPairPipeline`` (the barrier protocol over both CTAs'
  producers and consumers) and ``ClusterPairVarlenScheduler`` (head-pair tiles) implement it.
* ``pack_gqa`` (FA4's PackGQA tile: the G query heads of a KV head share one Q tile; the
  op's default for short query chunks, ``default_pack_gqa``; notes step 8).
* Opt-in knob (measured, not a default; notes step 7): ``direct_loads`` (staging-free
  producer: code rows LDG'd into registers one block ahead; with register LUTs it leaves
  room for ``num_stages=3``; H100: correct, not faster).
* Q is loaded by TMA (FA4's path), O stored by TMA; varlen Q (cu_seqlens_q) only.

The class keeps FA4's configuration machinery (tile sizes, smem layouts, tiled MMAs, masks,
tile scheduler) and overrides only ``__call__`` (packed K/V, norms and codebooks as
arguments), the kernel entry (PipelineAsync for K/V, staging + table smem) and the producer.
"""

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Optional

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cute.nvgpu import cpasync
from cutlass.utils import LayoutEnum
from cutlass import pipeline
from cutlass.pipeline import PipelineAsync as PipelineAsyncOg
from cutlass.pipeline import pipeline_init_arrive, pipeline_init_wait
from cutlass.cute import FastDivmodDivisorV2

from quack import copy_utils, layout_utils, sm90_utils

from flash_attn.cute import utils as fa_utils
from flash_attn.cute import pipeline as pipeline_custom
from flash_attn.cute.block_info import BlockInfo
from flash_attn.cute.cute_dsl_utils import assume_tensor_aligned
from flash_attn.cute.flash_fwd_sm90 import FlashAttentionForwardSm90
from flash_attn.cute.mask import AttentionMask
from flash_attn.cute.pack_gqa import make_packgqa_tiled_tma_atom, pack_gqa_layout
from flash_attn.cute.seqlen_info import SeqlenInfoQK
from flash_attn.cute.tile_scheduler import (SchedulingMode, SingleTileVarlenScheduler,
                                            TileSchedulerArguments, WorkTileInfo)
from flash_attn.cute.utils import AuxData

from . import dequant as dq
from .prefill_candidates import SM90_LUT_CANDIDATES

SMEM_CAPACITY = 227 * 1024  # H100 max dynamic shared memory per block
SMEM_RESERVE = 2048  # mbarriers + alignment padding of the struct
PRODUCER_THREADS = 128
LUT_BARRIER_ID = 7  # FA4's forward uses named barriers 1..6; the V producer WG uses 8
REGISTER_FILE = 65536  # 32-bit registers per SM (and per CTA at 1 CTA/SM)


def launch_regs_per_thread(num_threads: int) -> int:
    """Registers each thread gets at launch (min_blocks_per_mp=1): the register file split
    evenly, rounded down to the allocation granularity of 8 (384 threads -> 168, 512 -> 128)."""
    return REGISTER_FILE // num_threads // 8 * 8


@dataclass(frozen=True)
class PrefillSm90Config:
    """Everything that changes the generated code; also the compile-cache key."""

    head_dim: int
    k_bits: int
    v_bits: int
    qhead_per_kvhead: int
    causal: bool  # FA4 canonical form: causal without a left window
    local: bool  # any other window
    has_window_left: bool
    has_window_right: bool
    tile_m: int = 128
    tile_n: int = 128
    num_stages: int = 2
    stage_slots: int = 2  # packed-code staging blocks per side
    k_lut_replicas: int = 16  # shared-memory LUT sides only (1 for register-LUT sides)
    v_lut_replicas: int = 16
    # 2/4-bit sides: decode with prmt byte permutes from a per-row register table instead of
    # one shared-memory lookup per code byte (dequant.decode4_reg / decode2_reg).
    k_register_lut: bool = False
    v_register_lut: bool = False
    # Producer warpgroups: 1 = one WG decodes K and V (step 1-3); 2 = WG0 decodes K (and
    # loads Q), WG3 decodes V, each with half the work and its own staging ring, so twice the
    # decode warps per SM sub-partition hide each other's latencies (step 4). WG1-2 stay
    # FA4's consumers either way (FA4's mma/epilogue derive their roles from thread_idx // 128
    # and warp 4, which this keeps valid).
    producer_wgs: int = 1
    # setmaxnreg split: 2 x 128 consumer threads + producer_wgs x 128 producer threads must
    # fit in the launch allocation (384 threads: 168 x 384 = 64512; 512 threads: 128 x 512 =
    # 65536), else setmaxnreg.inc never returns (the kernel hangs).
    consumer_regs: int = 224
    producer_regs: int = 56
    # CTAs per cluster sharing each decoded K/V tile (step 5). 1 = every CTA decodes whole
    # tiles; 2 = a cluster of the two CTAs of query heads 2j, 2j+1 (same KV head, m_block and
    # batch, hence the same n_blocks): CTA rank r decodes rows 64r..64r+63 of every K/V tile
    # (two producer threads per row, half a row each) into its own shared memory and copies
    # them to the peer (bulk copy over DSMEM), halving the decode work per CTA. D=128,
    # producer_wgs=2 and an even GQA ratio only (ClusterPairPipeline has the barrier protocol).
    cluster_share: int = 1
    # cluster_share=2: which sides travel between the CTAs ("kv", "k" or "v"); an unshared side
    # is decoded whole by each CTA (cluster_share=1 behaviour for that side). Sharing halves a
    # side's decode work per CTA but sends 16 KB per tile over DSMEM (notes, step 5).
    cluster_sides: str = "kv"
    # Staging-free producer (step 7): each producer thread loads its packed code row with
    # vector LDGs straight into registers, one block ahead (the loads for block i+1 are issued
    # chunk by chunk as block i's words are consumed), instead of cp.async into a shared-memory
    # staging ring and LDS back. Saves the staging write + read (1/4 of the packed bytes per
    # side and block, twice) on the shared-memory pipe, and the staging space, which lets
    # 2/4-bit pairs with register LUTs keep 3 K/V stages. producer_wgs=2, cluster_share=1 only.
    direct_loads: bool = False
    # FA4's PackGQA (default_pack_gqa; notes step 8): the 128-row Q tile spans the
    # qhead_per_kvhead query heads of one KV head (row r = query r // G of head r % G), so a
    # short query chunk (chunked prefill, speculative verification: q_len * G <= 128) fills
    # one tile per KV head instead of G mostly-empty tiles, and each K/V tile is decoded once
    # per KV head and chunk instead of G times. Q/O by TMA through FA4's packed TMA atoms,
    # masks and LSE through FA4's packgqa paths. cluster_share=1 only (the pair is already
    # inside the tile).
    pack_gqa: bool = False
    # PRMT-addressed byte tables (step 10): both sides on shared-memory tables with 128-byte
    # entries (4/8-bit: 32 replicas x 4 B, 2-bit: 16 x 8 B), interleaved at
    # dq.PRMT_LUT_STRIDE bytes per byte value (K at + 0, V at + 128, 64 KB in all), so a
    # lookup's offset (byte << 8) | lane slot is one PRMT of the code word
    # (dq.decode_word_prmt) instead of BFE + IMAD, and every lookup is conflict-free. 64 KB
    # of tables leave no room for staging: direct_loads only.
    prmt_lut: bool = False

    def shares(self, is_k: bool) -> bool:
        """Whether the K (is_k) or V side is split between the CTAs of a cluster pair."""
        return self.cluster_share == 2 and ("k" if is_k else "v") in self.cluster_sides

    @property
    def num_threads(self) -> int:
        return PRODUCER_THREADS * (2 + self.producer_wgs)

    def __post_init__(self):
        if self.producer_wgs not in (1, 2):
            raise ValueError(f"producer_wgs must be 1 or 2, got {self.producer_wgs}")
        budget = launch_regs_per_thread(self.num_threads) * self.num_threads
        if (256 * self.consumer_regs + PRODUCER_THREADS * self.producer_wgs * self.producer_regs
                > budget):
            raise ValueError(f"register split exceeds the CTA's launch allocation ({budget})")
        if self.cluster_share not in (1, 2):
            raise ValueError(f"cluster_share must be 1 or 2, got {self.cluster_share}")
        if self.cluster_sides not in ("kv", "k", "v") or (self.cluster_share == 1
                                                          and self.cluster_sides != "kv"):
            raise ValueError(f"cluster_sides must be 'kv', 'k' or 'v' (and 'kv' without "
                             f"cluster_share=2), got {self.cluster_sides!r}")
        if self.cluster_share == 2 and (self.head_dim != 128 or self.producer_wgs != 2
                                        or self.qhead_per_kvhead % 2):
            raise NotImplementedError(
                f"PrefillSm90: cluster_share=2 is implemented for head_dim 128 with "
                f"producer_wgs=2 and an even query-heads-per-KV-head ratio, got head_dim "
                f"{self.head_dim}, producer_wgs {self.producer_wgs}, ratio "
                f"{self.qhead_per_kvhead}")
        if self.num_stages not in (2, 3):
            raise ValueError(f"num_stages must be 2 or 3, got {self.num_stages}")
        if self.direct_loads and (self.producer_wgs != 2 or self.cluster_share != 1):
            raise NotImplementedError(
                f"PrefillSm90: direct_loads is implemented for producer_wgs=2 without cluster "
                f"sharing, got producer_wgs {self.producer_wgs}, cluster_share "
                f"{self.cluster_share}")
        if self.pack_gqa and (self.qhead_per_kvhead < 2 or self.tile_m % self.qhead_per_kvhead
                              or self.cluster_share != 1):
            raise NotImplementedError(
                f"PrefillSm90: pack_gqa needs a query-heads-per-KV-head ratio >= 2 that divides "
                f"tile_m={self.tile_m}, without cluster sharing; got ratio "
                f"{self.qhead_per_kvhead}, cluster_share {self.cluster_share}")
        for side, bits, reg in (("k", self.k_bits, self.k_register_lut),
                                ("v", self.v_bits, self.v_register_lut)):
            if reg and bits not in (2, 4):
                raise ValueError(f"register LUT decode is for 2- and 4-bit codes, not "
                                 f"{side}_bits={bits}")
        if self.prmt_lut:
            why = dq.prmt_sides_error(self.k_bits, self.v_bits, self.k_register_lut,
                                      self.v_register_lut, self.k_lut_replicas,
                                      self.v_lut_replicas)
            if why or not self.direct_loads:
                raise NotImplementedError(
                    f"PrefillSm90: {why or 'prmt_lut'}; it needs direct_loads too (64 KB of "
                    f"tables leave no room for staging), got direct_loads {self.direct_loads}")

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else ("local" if self.local else "full")
        lut = "".join(("r" if reg else "s") for reg in (self.k_register_lut, self.v_register_lut))
        return (f"prefill_sm90_d{self.head_dim}_k{self.k_bits}v{self.v_bits}_g"
                f"{self.qhead_per_kvhead}_{mask}_t{self.tile_m}x{self.tile_n}_lut{lut}"
                f"_pw{self.producer_wgs}" + self._cs_tag("_") + self._knob_tag("_"))

    def _knob_tag(self, sep: str) -> str:
        """Name suffix of the non-default producer loads / stage counts / register splits."""
        tag = f"{sep}dl" if self.direct_loads else ""
        if self.prmt_lut:
            tag += f"{sep}pl"
        if self.pack_gqa:
            tag += f"{sep}pg"
        if self.num_stages != 2:
            tag += f"{sep}st{self.num_stages}"
        if (self.consumer_regs, self.producer_regs) != REGISTER_SPLIT[self.producer_wgs]:
            tag += f"{sep}r{self.consumer_regs}-{self.producer_regs}"
        fit = (self.stage_slots, self.k_lut_replicas, self.v_lut_replicas)
        if fit != default_lut_fit(self):  # make_config(lut_replicas=...)
            tag += f"{sep}x{self.k_lut_replicas}-{self.v_lut_replicas}s{self.stage_slots}"
        return tag

    def _cs_tag(self, sep: str) -> str:
        if self.cluster_share == 1:
            return ""
        return f"{sep}cs{self.cluster_share}" + ("" if self.cluster_sides == "kv"
                                                  else self.cluster_sides)

    def k_row_bytes(self) -> int:
        return self.head_dim * self.k_bits // 8

    def v_row_bytes(self) -> int:
        return self.head_dim * self.v_bits // 8

    def k_lut_bytes(self) -> int:
        return dq.lut_region_bytes(self.k_bits, self.k_register_lut, self.k_lut_replicas,
                                   self.prmt_lut, True)

    def v_lut_bytes(self) -> int:
        return dq.lut_region_bytes(self.v_bits, self.v_register_lut, self.v_lut_replicas,
                                   self.prmt_lut, False)

    def staging_bytes(self) -> int:
        if self.direct_loads:
            return 0
        return self.stage_slots * self.tile_n * (self.k_row_bytes() + self.v_row_bytes())

    def smem_bytes(self) -> int:
        d = self.head_dim
        tiles = 2 * (self.tile_m * d + 2 * self.num_stages * self.tile_n * d)
        luts = self.k_lut_bytes() + self.v_lut_bytes()
        return tiles + self.staging_bytes() + luts + SMEM_RESERVE


def default_lut_fit(cfg: PrefillSm90Config) -> tuple[int, int, int]:
    """(stage_slots, k_lut_replicas, v_lut_replicas) make_config's heuristic picks for cfg's
    other fields: direct_loads -> (1, 16, 16); staged -> 2 slots if they fit with >= 8
    replicas, else 1, with the largest power-of-two replication <= 32 that fits (K and V
    alike; register-LUT sides 1)."""
    def side(reg: bool, r: int) -> int:
        return 1 if reg else r
    if cfg.direct_loads:
        return 1, side(cfg.k_register_lut, 16), side(cfg.v_register_lut, 16)
    for slots in (2, 1):
        for r in (32, 16, 8, 4, 2, 1):
            fit = (slots, side(cfg.k_register_lut, r), side(cfg.v_register_lut, r))
            trial = dataclasses.replace(cfg, stage_slots=fit[0], k_lut_replicas=fit[1],
                                        v_lut_replicas=fit[2])
            if trial.smem_bytes() <= SMEM_CAPACITY and (slots == 1 or r >= 8):
                return fit
    raise NotImplementedError(f"PrefillSm90: no shared-memory fit for {cfg}")


def default_register_lut(k_bits: int, v_bits: int) -> tuple[bool, bool]:
    """(K, V) decode choice from the H100 measurements (docs/prefill-sm90-notes.md, step 2).

    The register LUT issues more producer instructions than the shared-memory LUT (4-bit: 21
    vs 16 per 8 codes) and the producer is issue-bound, so it loses on balanced 4-bit sides and
    wins only where it takes load off a shared-memory pipe the other side keeps busy:
    K4V4 ss 0.637x vs rr 0.560x; K4V8 rs 0.516x vs ss 0.476x; K2V2 rs 0.693x, ss 0.669x,
    rr 0.664x; K4V2 ss 0.624x, rr 0.599x. A 2-bit V side on the shared-memory LUT spills
    (K2V2 rs 24 B, K2V2 ss 32 B, K4V2 ss 8 B; the step-1 builds did too), so under the
    zero-spill rule K2V2 and K4V2 ship rr. Unmeasured for speed, chosen among builds whose
    correctness the same device run checked: K2V4 rr, K2V8 rs (like K4V8); 8-bit K keeps
    step 1 (shared-memory LUT on both sides), except K8V2: its causal build spills 16 B with a
    shared-memory V table (found when CI started compiling all nine causal configs), so V
    takes the register LUT (the 2-bit V register path is device-checked in K2V2/K4V2; this K8V2
    combination, shared-memory K + register V, is compile-checked only, not yet run on a GPU)."""
    if (k_bits, v_bits) == (8, 2):
        return False, True
    if k_bits == 8 or (k_bits, v_bits) == (4, 4):
        return False, False
    if v_bits == 8:
        return True, False
    return True, True


# (consumer, producer) setmaxnreg split per producer_wgs. 1: FA4's cp.async split raised to
# 56 for the decode (step 1). 2: consumer + producer <= 256 (512 threads x 128 registers);
# a one-side producer at 40 still spills in causal builds (ptxas, sm_90a: K4V4 40 B, K4V2
# 8 B; 32 spills everywhere), 48 does not, and the consumers compile spill-free at 208.
REGISTER_SPLIT = {1: (224, 56), 2: (208, 48)}
# Two producer WGs with 8 more producer registers: the builds that spill at (208, 48) take
# it (the K4V4 / K4V2 / K2V4 direct_loads builds, step 7; PACK_GQA_WIDE_PRODUCER).
WIDE_PRODUCER_SPLIT = (200, 56)


# (k_bits, v_bits) where two producer warpgroups were measured faster on the H100 and their
# correctness checked on the device (docs/prefill-sm90-notes.md, step 4; B=1 S=8K Hq=32
# Hkv=8 D=128, kernel alone, ours/FA4-bf16 1 WG -> 2 WGs, full / causal): K4V4 0.631 -> 0.676
# / 0.624 -> 0.684, K2V2 0.646 -> 0.759 / 0.688 -> 0.753, K8V8 0.443 -> 0.514 / 0.463 ->
# 0.535, K4V8 0.481 -> 0.550 / 0.524 -> 0.602.
# Session 3 (B=1 S=8K, same call, 1 WG -> 2 WGs): K4V2 full 0.602 -> 0.680, K2V4 full 0.615
# -> 0.737, K8V2 full 0.503 -> 0.586 / causal 0.542 -> 0.611, K2V8 full 0.517 -> 0.595 /
# causal 0.567 -> 0.630; K8V4 0.496 with two (cluster sharing then ships on top for the
# 8-bit-side pairs). All nine pairs now default to two at D=128.
TWO_PRODUCER_WGS_MEASURED = frozenset({(4, 4), (2, 2), (8, 8), (4, 8), (4, 2), (2, 4), (8, 4),
                                       (8, 2), (2, 8)})

# (k_bits, v_bits) -> cluster_sides where 2-CTA cluster sharing (step 5, bulk-copy design) was
# measured faster than producer_wgs=2 alone by more than the ~2% run-to-run spread, with its
# output bit-identical to the cluster_share=1 kernel (H100, 2026-11-23 session 3; B=1 S=8K
# Hq=32 Hkv=8 D=128 bs128, kernel alone, ours/FA4-bf16, pw2 -> shipped): K8V8 full 0.496 ->
# 0.569, causal 0.542 -> 0.614 ("kv"); K4V8 full 0.607 -> 0.649 ("kv"); K8V4 full 0.496 ->
# 0.581 ("k"); K8V2 full 0.586 -> 0.642, causal 0.611 -> 0.677 ("k"); K2V8 full 0.595 ->
# 0.650, causal 0.630 -> 0.683 ("v"). Sharing pays where a side is 8-bit (its shared-memory
# LUT decode is the heaviest); K4V4 / K2V2 / K4V2 / K2V4 measured flat or slower with every
# side choice (the decode cost there does not scale with the decoded rows, notes step 5).
CLUSTER_SHARE_MEASURED = {(8, 8): "kv", (4, 8): "kv", (8, 4): "k", (8, 2): "k", (2, 8): "v"}


def default_producer_wgs(head_dim: int, k_bits: int, v_bits: int, local: bool,
                         pack_gqa: bool = False) -> int:
    """2 where the device measured it faster (D=128, full and causal masks, the pairs in
    TWO_PRODUCER_WGS_MEASURED: all nine), else 1: D=64 and sliding windows are
    compile-checked with 2 (0 spills) but neither timed nor run on a GPU with it. pack_gqa at
    D=128 takes 2 with windows too (with one, the window build spills 16 B, sm_90a)."""
    if head_dim == 128 and (pack_gqa or not local) and (k_bits, v_bits) in \
            TWO_PRODUCER_WGS_MEASURED:
        return 2
    return 1


def default_cluster_share(head_dim: int, k_bits: int, v_bits: int, local: bool,
                          qhead_per_kvhead: int, producer_wgs: int,
                          pack_gqa: bool = False) -> tuple[int, str]:
    """(cluster_share, cluster_sides): (2, sides) for the pairs in CLUSTER_SHARE_MEASURED where
    the cluster pair exists (D=128, two producer warpgroups, even GQA ratio, no sliding
    window: windows were never timed with it), else (1, "kv")."""
    sides = CLUSTER_SHARE_MEASURED.get((k_bits, v_bits))
    if (sides and not pack_gqa and head_dim == 128 and not local and producer_wgs == 2
            and qhead_per_kvhead % 2 == 0):
        return 2, sides
    return 1, "kv"


# (k_bits, v_bits) where the staging-free producer (direct_loads) was measured faster on the
# H100 than the shipped staged kernel by more than the run-to-run spread (docs/prefill-sm90-
# notes.md, step 7). Empty: measured 2026-12-07 (B=1 S=8K, same bench call, ours/FA4 default
# -> direct) K4V4 0.668 -> 0.636-0.647 (rr staged 0.680), K2V2 0.768 -> 0.759-0.779, K4V2
# 0.696 -> 0.728, K2V4 0.747 -> 0.680: no consistent gain, so the knob stays opt-in.
DIRECT_LOADS_MEASURED: frozenset = frozenset()


def default_direct_loads(head_dim: int, k_bits: int, v_bits: int, local: bool,
                         producer_wgs: int, cluster_share: int) -> bool:
    return (head_dim == 128 and not local and producer_wgs == 2 and cluster_share == 1
            and (k_bits, v_bits) in DIRECT_LOADS_MEASURED)


# Whether pack_gqa has passed its GPU tests and shown the chunked-prefill gain on the device
# (tests/gpu/test_prefill.py -k pack_gqa, microbench/prefill_probe.py --pack-gqa; notes step
# 8). Measured H100 2026-12-07: checks pass; chunked prefill q16 x G4 3.58x, q64 1.93x,
# K8V8 q32 3.10x faster packed, q512 and a 32-CTA decode-like shape +0-2 %.
PACK_GQA_MEASURED = True


# Pairs whose pack_gqa causal build at the (208, 48) split spills (8 B, every G: the CPU
# compile sweep of all nine pairs x G {2,4,8,16} x full / causal / window, 2026-12-07): they
# take WIDE_PRODUCER_SPLIT (default_register_split); 0 spills. Not timed.
PACK_GQA_WIDE_PRODUCER = frozenset({(2, 4)})


def default_register_split(producer_wgs: int, k_bits: int, v_bits: int, causal: bool,
                           pack_gqa: bool) -> tuple[int, int]:
    """(consumer, producer) setmaxnreg values: REGISTER_SPLIT, except the pack_gqa causal
    builds that spill there (PACK_GQA_WIDE_PRODUCER)."""
    if pack_gqa and causal and producer_wgs == 2 and (k_bits, v_bits) in PACK_GQA_WIDE_PRODUCER:
        return WIDE_PRODUCER_SPLIT
    return REGISTER_SPLIT[producer_wgs]


def default_pack_gqa(head_dim: int, qhead_per_kvhead: int, max_seqlen_q: int,
                     cluster_share: Optional[int] = None, tile_m: int = 128) -> bool:
    """The shipping rule of notes step 8, once PACK_GQA_MEASURED: pack the G query heads of
    a KV head into one Q tile when a whole chunk of every head fits one tile (q_len x G <=
    tile_m: chunked prefill, speculative verification), where the unpacked grid would run G
    mostly-empty tiles that each decode every K/V tile. Never with a requested cluster pair
    (pack_gqa has none)."""
    return (PACK_GQA_MEASURED and head_dim == 128 and qhead_per_kvhead >= 2
            and cluster_share in (None, 1) and tile_m % qhead_per_kvhead == 0
            and max_seqlen_q * qhead_per_kvhead <= tile_m)


def make_config(head_dim: int, k_bits: int, v_bits: int, qhead_per_kvhead: int, causal: bool,
                local: bool, has_window_left: bool, has_window_right: bool,
                k_register_lut: Optional[bool] = None,
                v_register_lut: Optional[bool] = None,
                producer_wgs: Optional[int] = None,
                cluster_share: Optional[int] = None,
                cluster_sides: Optional[str] = None,
                direct_loads: Optional[bool] = None,
                num_stages: Optional[int] = None,
                register_split: Optional[tuple[int, int]] = None,
                pack_gqa: Optional[bool] = False,
                max_seqlen_q: Optional[int] = None,
                lut_replicas: Optional[tuple[int, int]] = None,
                prmt_lut: bool = False) -> PrefillSm90Config:
    """Pick staging depth and table replication that fit in shared memory (the documented
    heuristic: 2 staging blocks per side if they fit, then the largest power-of-two table
    replication <= 32 that fits, K and V alike). ``k_register_lut`` / ``v_register_lut``
    (None: ``default_register_lut``) select register-LUT decode for a 2- or 4-bit side; 8-bit
    sides always use the shared-memory LUT (the flag is ignored for them). ``producer_wgs``
    (None: ``default_producer_wgs``) picks one K+V producer warpgroup or one per side.
    ``cluster_share`` / ``cluster_sides`` (None: ``default_cluster_share``) choose the 2-CTA
    cluster that shares decoded tiles (step 5) and which sides it shares. ``direct_loads``
    (None: ``default_direct_loads``) loads packed codes straight into producer registers (no
    staging ring, step 7); ``num_stages`` (None: 3 where it fits, i.e. staging-free with
    register-LUT sides only, else 2) is the K/V tile pipeline depth; ``register_split`` =
    (consumer, producer) setmaxnreg values (None: ``REGISTER_SPLIT``). ``pack_gqa`` folds the
    query heads of a KV head into the Q tile (FA4's PackGQA, cluster_share=1; None:
    ``default_pack_gqa`` for the call's ``max_seqlen_q``). ``lut_replicas`` = (K, V) table
    replication of the shared-memory-LUT sides (None: the heuristic above; given: the most
    staging slots, then K/V stages, that fit with it, else NotImplementedError).
    ``prmt_lut`` = PRMT-addressed interleaved tables (PrefillSm90Config.prmt_lut; implies the
    PRMT replication, dq.prmt_replicas: 32 for 4/8-bit sides, 16 for 2-bit, and needs
    direct_loads=True)."""
    if pack_gqa is None:
        if max_seqlen_q is None:
            raise ValueError("make_config: pack_gqa=None (the default rule) needs max_seqlen_q")
        pack_gqa = default_pack_gqa(head_dim, qhead_per_kvhead, max_seqlen_q, cluster_share)
    if producer_wgs is None:
        producer_wgs = default_producer_wgs(head_dim, k_bits, v_bits, local, pack_gqa)
    if cluster_share is None:
        cluster_share, default_sides = default_cluster_share(
            head_dim, k_bits, v_bits, local, qhead_per_kvhead, producer_wgs, pack_gqa)
        cluster_sides = cluster_sides or default_sides
    cluster_sides = cluster_sides or "kv"
    if producer_wgs not in REGISTER_SPLIT:
        raise ValueError(f"PrefillSm90: producer_wgs must be 1 or 2, got {producer_wgs}")
    if direct_loads is None:
        direct_loads = default_direct_loads(head_dim, k_bits, v_bits, local, producer_wgs,
                                            cluster_share)
    if register_split is None:
        register_split = default_register_split(producer_wgs, k_bits, v_bits, causal, pack_gqa)
    k_default, v_default = default_register_lut(k_bits, v_bits)
    if prmt_lut:  # both sides on the interleaved shared-memory tables
        k_default = v_default = False
    if k_register_lut is None:
        k_register_lut = k_default
    if v_register_lut is None:
        v_register_lut = v_default
    if head_dim not in (64, 128):
        raise NotImplementedError(
            f"PrefillSm90: head_dim {head_dim} is not implemented (64 and 128 are). head_dim 256 "
            f"would need FA4's 128x80 tile (tile_n=80 breaks the one-row-per-producer-thread "
            f"mapping) and Q 64 KB + 2x(K+V) 80 KB leaves no room for code staging; it needs "
            f"single-stage K/V or aliased staging")
    base = dict(head_dim=head_dim, k_bits=k_bits, v_bits=v_bits,
                qhead_per_kvhead=qhead_per_kvhead, causal=causal, local=local,
                has_window_left=has_window_left, has_window_right=has_window_right,
                k_register_lut=bool(k_register_lut) and k_bits != 8,
                v_register_lut=bool(v_register_lut) and v_bits != 8,
                producer_wgs=producer_wgs, consumer_regs=register_split[0],
                producer_regs=register_split[1], cluster_share=cluster_share,
                cluster_sides=cluster_sides, direct_loads=bool(direct_loads),
                pack_gqa=bool(pack_gqa))
    if prmt_lut:
        reps = (dq.prmt_replicas(k_bits), dq.prmt_replicas(v_bits))
        if lut_replicas not in (None, reps):
            raise ValueError(f"PrefillSm90: prmt_lut tables have {reps} replicas, got "
                             f"lut_replicas={lut_replicas}")
        lut_replicas = reps
        base["prmt_lut"] = True
    if lut_replicas is not None:
        for r in lut_replicas:
            if r not in (1, 2, 4, 8, 16, 32):
                raise ValueError(f"PrefillSm90: lut_replicas must be powers of two <= 32, got "
                                 f"{lut_replicas}")
    kr, vr = lut_replicas or (16, 16)
    if direct_loads:
        for stages in ((num_stages,) if num_stages else (3, 2)):
            cfg = PrefillSm90Config(
                **base, num_stages=stages, stage_slots=1,
                k_lut_replicas=1 if base["k_register_lut"] else kr,
                v_lut_replicas=1 if base["v_register_lut"] else vr)
            if cfg.smem_bytes() <= SMEM_CAPACITY:
                return cfg
        raise NotImplementedError(f"PrefillSm90: no shared-memory fit for {base} with "
                                  f"num_stages={num_stages}")
    if num_stages not in (None, 2):
        raise NotImplementedError("PrefillSm90: num_stages=3 needs direct_loads (the staging "
                                  "ring and 3 K/V stages do not fit in shared memory)")
    if lut_replicas is None:
        cfg = PrefillSm90Config(**base)
        slots, rk, rv = default_lut_fit(cfg)
        return dataclasses.replace(cfg, stage_slots=slots, k_lut_replicas=rk, v_lut_replicas=rv)
    for slots in (2, 1):
        cfg = PrefillSm90Config(**base, stage_slots=slots,
                                k_lut_replicas=1 if base["k_register_lut"] else kr,
                                v_lut_replicas=1 if base["v_register_lut"] else vr)
        if cfg.smem_bytes() <= SMEM_CAPACITY:
            return cfg
    raise NotImplementedError(f"PrefillSm90: no shared-memory fit for {base}"
                              + (f" with lut_replicas={lut_replicas}" if lut_replicas else ""))


CLUSTER_PAIR_ROWS = 64  # K/V rows of each tile one CTA of a cluster pair decodes


def cluster_pair_arrivals(num_mma_threads: int = 256) -> tuple[int, int]:
    """(full, empty) mbarrier arrival counts of ClusterPairPipeline: full = one arrive.expect_tx
    by this CTA's producer side (its own rows; the peer's rows complete the transaction
    bytes), empty = one elected lane per consumer warp (8) of both CTAs of the pair."""
    warp = 32
    return 1, 2 * num_mma_threads // warp


def cluster_pair_half_bytes(head_dim: int = 128, tile_n: int = 128) -> int:
    """Bytes of one CTA's 64 rows of a bf16 K/V tile, i.e. what each CTA sends its peer per
    tile and side (two swizzle-atom columns of 64 rows x 128 B)."""
    return CLUSTER_PAIR_ROWS * head_dim * 2


def cluster_pair_part_py(rank: int, tidx: int, bits: int, head_dim: int = 128,
                         tile_n: int = 128) -> tuple[int, list[tuple[int, int]]]:
    """Python twin of the cluster_share=2 producer's index math (``load_tq`` / ``_issue`` /
    ``_decode``) for the CPU emulation in tests/compile/test_compile_prefill.py: the tile row
    producer thread ``tidx`` of CTA ``rank`` decodes, and per 8-element output chunk the byte
    offset of its codes within the packed row and the byte offset of the chunk in the
    swizzled bf16 tile (the same offset is stored in both CTAs' tiles)."""
    row = rank * CLUSTER_PAIR_ROWS + tidx % CLUSTER_PAIR_ROWS
    half = tidx // CLUSTER_PAIR_ROWS
    nchunks = head_dim * bits // 8 // 16 // 2
    out_per_in = 16 // bits
    parts = []
    for c in range(nchunks):
        for k in range(out_per_in):
            # half's offset folded into the code base in the kernel; 8 codes = ``bits`` bytes
            code_byte = half * nchunks * 16 + c * 16 + k * bits
            # (the kernel folds half * tile_n * 128, the half's swizzle-atom column, into the
            # tile base address; nchunks * out_per_in = 8 chunks = one 64-column atom column)
            off = half * tile_n * 128 + dq.swizzled_offset_py(row, c * out_per_in + k, tile_n)
            parts.append((code_byte, off))
    return row, parts


@dataclass(frozen=True)
class ClusterPairPipeline(pipeline_custom.PipelineAsync):
    """K or V stage pipeline shared by the two CTAs of a cluster pair (cluster_share=2).

    Each CTA's producer side decodes its 64 rows of every tile into its own stage only; the
    rows reach the peer by a shared::cta -> shared::cluster bulk copy (async proxy, completes
    transaction bytes on the peer's full barrier, like a multicast TMA load):
    * full[s] (per CTA) expects 1 arrival: after the side's 128 threads stored and fenced
      (fence.proxy.async.shared::cta + named barrier), thread 0 does
      ``mbarrier.arrive.expect_tx`` of the peer's 16 KB on its own full[s] (the arrive
      releases this CTA's rows to its consumers) and issues the two 8 KB bulk copies of its
      rows into the peer, which complete_tx on the peer's full[s]. Consumers wait with FA4's
      plain (CTA-scope) wait, as for TMA data.
    * empty[s] (per CTA) expects 16 arrivals: one elected lane per consumer warp of both CTAs
      (each consumer warp releases its own and the peer's empty[s], CTA-scope arrives as
      CUTLASS releases to remote producers), so a producer overwrites stage s — its rows in
      its own CTA, and through the copy in the peer — only after both CTAs' consumers
      released it; the copy of round k has completed by then (the peer's consumers waited on
      it), so its source rows are free too.
    No GPU-scope MEMBAR in either role (the first build stored to the peer with
    st.shared::cluster and needed fence.proxy.async.shared::cluster + release.cluster per
    thread and tile, MEMBAR.ALL.GPU in SASS)."""

    @staticmethod
    def create(*args, **kwargs):
        obj = PipelineAsyncOg.create(*args, **kwargs)
        object.__setattr__(obj, "__class__", ClusterPairPipeline)
        return obj

    @staticmethod
    def _peer_barrier(addr: Int32) -> Int32:
        return dq.mapa_shared(addr, dq.cluster_cta_rank() ^ 1)

    def producer_acquire(self, state, try_acquire_token=None, *, loc=None, ip=None):
        # acquire at cluster scope: half of the releases come from the peer's consumers
        dq.mbarrier_wait_cluster(dq.smem_addr(self.sync_object_empty.get_barrier(state.index)),
                                 state.phase)

    def producer_commit(self, state, *, loc=None, ip=None):
        raise NotImplementedError("ClusterPairPipeline: producers commit with share_commit")

    def share_commit(self, state, tidx: Int32, tile_addr: Int32, rank: Int32, barrier_id: int,
                     tile_n: int, head_dim: int):
        """Called by all 128 threads of a producer side after storing their part of this
        CTA's rows of stage ``state.index`` (``tile_addr`` = the stage's tile base)."""
        cute.arch.fence_view_async_shared()  # own st.shared -> async proxy (copy and wgmma)
        cute.arch.barrier(barrier_id=barrier_id, number_of_threads=PRODUCER_THREADS)
        half = cluster_pair_half_bytes(head_dim, tile_n) // 2  # per swizzle-atom column
        src0 = tile_addr + rank * half
        dq.cluster_pair_send_half(
            tidx, dq.smem_addr(self.sync_object_full.get_barrier(state.index)), src0,
            src0 + tile_n * 128, rank ^ 1, half, 2 * half)

    def consumer_release(self, state, *, loc=None, ip=None):
        # called by all 32 lanes of a consumer warp after its wgmma reads of the stage retired
        # (a WAR hand-off, no data): CTA-scope arrives on both CTAs' empty barriers, as
        # CUTLASS's PipelineTmaAsync releases to remote producers. release.cluster here would
        # put MEMBAR.ALL.GPU twice per stage into the consumer warps' softmax (seen in SASS).
        with cute.arch.elect_one():
            bar = dq.smem_addr(self.sync_object_empty.get_barrier(state.index))
            dq.mbarrier_arrive_cta_scope(bar)
            dq.mbarrier_arrive_remote_cta_scope(self._peer_barrier(bar))


class ClusterPairVarlenScheduler(SingleTileVarlenScheduler):
    """FA4's varlen single-tile scheduler over query-head PAIRS, for cluster_share=2: the
    params are built with num_head = Hq / 2 and the grid's x is doubled, so CTAs 2c and 2c+1
    (one cluster of 2 along x) decode the same flat tile c = (m_block, head pair p, batch) and
    take heads 2p + (x % 2). Both heads share a KV head (even GQA ratio), so both CTAs see the
    same seqlens, n_block range and validity."""

    @staticmethod
    @cute.jit
    def create(params, ctx=None, *, loc=None, ip=None) -> "ClusterPairVarlenScheduler":
        # FA4's create() constructs SingleTileVarlenScheduler by name, which would drop this
        # subclass's _decode_work_tile (seen on the device: only head pairs 0..Hq/4-1 ran)
        assert ctx is None, "STATIC scheduling only"
        tile_idx, split_idx, _ = cute.arch.block_idx()
        return ClusterPairVarlenScheduler(params, tile_idx, split_idx, loc=loc, ip=ip)

    @cute.jit
    def _decode_work_tile(self) -> WorkTileInfo:
        d = self.params.decoder
        block, head_pair, batch_idx, _, _, _, is_valid = d.decode(
            self._tile_idx // 2, Int32(0), Int32(0))
        is_valid = is_valid and self._is_first_block
        head_idx = head_pair * 2 + self._tile_idx % 2
        return WorkTileInfo(
            (Int32(block), Int32(head_idx), Int32(batch_idx), Int32(0)), is_valid)


class PrefillSm90(FlashAttentionForwardSm90):
    """FA4 Sm90 forward whose producer dequantizes the TurboQuant paged cache."""

    def __init__(self, cfg: PrefillSm90Config):
        super().__init__(
            cutlass.BFloat16, cfg.head_dim, cfg.head_dim, cfg.qhead_per_kvhead,
            is_causal=cfg.causal, is_local=cfg.local, pack_gqa=cfg.pack_gqa, tile_m=cfg.tile_m,
            tile_n=cfg.tile_n, num_stages=cfg.num_stages, num_threads=384, Q_in_regs=False,
            intra_wg_overlap=True, mma_pv_is_rs=True, paged_kv_non_tma=True)
        assert cfg.tile_n == PRODUCER_THREADS, "one K/V row per producer thread"
        self.cfg = cfg
        # cluster of 2 CTAs along the grid's x (pairs of query heads), see cluster_share
        self.cluster_shape_mn = (cfg.cluster_share, 1)

    # ------------------------------------------------------------------ shared memory
    @property
    def packgqa_factor(self) -> int:
        """Query heads folded into one Q tile: qhead_per_kvhead with pack_gqa, else 1 (the
        argument FA4's scheduler, BlockInfo and AttentionMask take)."""
        return self.qhead_per_kvhead if self.pack_gqa else 1

    def _get_shared_storage_cls(self):
        cfg = self.cfg
        sQ_struct, sK_struct, sV_struct = [
            cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(layout)], 1024]
            for layout in (self.sQ_layout, self.sK_layout, self.sV_layout)
        ]
        # (staging-free producers keep a 16-byte placeholder)
        stage_struct = cute.struct.Align[
            cute.struct.MemRange[cutlass.Uint8, max(cfg.staging_bytes(), 16)],
            1024 if cfg.staging_bytes() else 16]
        lutk_struct = cute.struct.Align[cute.struct.MemRange[Int32, cfg.k_lut_bytes() // 4], 128]
        lutv_struct = cute.struct.Align[cute.struct.MemRange[Int32, cfg.v_lut_bytes() // 4], 128]
        mbar_Q = cute.struct.MemRange[cutlass.Int64, 2]
        mbar_K = cute.struct.MemRange[cutlass.Int64, self.num_stages * 2]
        mbar_V = cute.struct.MemRange[cutlass.Int64, self.num_stages * 2]

        @cute.struct
        class SharedStorageTQ:
            mbar_ptr_Q: mbar_Q
            mbar_ptr_K: mbar_K
            mbar_ptr_V: mbar_V
            sV: sV_struct
            sQ: sQ_struct
            sK: sK_struct
            sStage: stage_struct
            sLutK: lutk_struct
            sLutV: lutv_struct

        return SharedStorageTQ

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
        self.varlen_q = True
        mQ, mO = [assume_tensor_aligned(t) for t in (mQ, mO)]
        mQ, mO = [layout_utils.select(t, [0, 2, 1]) for t in (mQ, mO)]  # (total_q, d, h)
        mLSE = layout_utils.select(mLSE, [1, 0])  # (total_q, h)
        # pack_gqa: fold the G query heads of a KV head into the row mode, FA4's way:
        # ((G, total_q), d, h_kv) / ((G, total_q), h_kv); TMA keeps the unpacked tensors
        G = self.packgqa_factor
        mQ_og, mO_og = mQ, mO
        make_tma = cpasync.make_tiled_tma_atom
        if const_expr(self.pack_gqa):
            nheads_kv = mKC.shape[2]
            mQ = pack_gqa_layout(mQ, G, nheads_kv, head_idx=2)
            mO = pack_gqa_layout(mO, G, nheads_kv, head_idx=2)
            mLSE = pack_gqa_layout(mLSE, G, nheads_kv, head_idx=1)
            make_tma = partial(make_packgqa_tiled_tma_atom, qhead_per_kvhead=G, head_idx=2)

        tiled_mma_qk, tiled_mma_pv = self._get_tiled_mma()
        self.num_mma_threads = tiled_mma_qk.size
        self.num_threads_per_warp_group = 128
        self.num_wg_mma = self.num_mma_threads // self.num_threads_per_warp_group
        assert self.num_wg_mma == 2
        self.num_threads = self.cfg.num_threads
        self.num_producer_threads = 32  # only sizes FA4's (unused) gmem K/V tiled copies
        self.num_Q_load_threads = self.num_threads_per_warp_group
        self.num_epilogue_threads = self.num_mma_threads
        self.num_mma_regs, self.num_producer_regs = self.cfg.consumer_regs, self.cfg.producer_regs
        self.use_block_sparsity = False
        self.use_scheduler_barrier = self.num_wg_mma >= 2 and self.tile_hdim <= 128
        self.use_tma_Q = True
        self.use_tma_O = True
        self.rescale_O_before_gemm = self.tile_hdimv > 128 and self.intra_wg_overlap
        self._setup_attributes()
        self.sQ_layout, self.sK_layout, self.sV_layout, self.sO_layout = [
            sm90_utils.make_smem_layout(self.dtype, LayoutEnum.ROW_MAJOR, shape, stage)
            for shape, stage in [
                ((self.tile_m, self.tile_hdim), None),
                ((self.tile_n, self.tile_hdim), self.num_stages),
                ((self.tile_n, self.tile_hdimv), self.num_stages),
                ((self.tile_m, self.tile_hdimv), None),
            ]
        ]
        self.sP_layout = None
        SharedStorage = self._get_shared_storage_cls()
        self.tma_copy_bytes = {
            "Q": cute.size_in_bytes(self.dtype, cute.select(self.sQ_layout, mode=[0, 1]))
        }
        tma_atom_Q, tma_tensor_Q = make_tma(
            cpasync.CopyBulkTensorTileG2SOp(), mQ_og, self.sQ_layout,
            (self.tile_m, self.tile_hdim))
        mO_tma = copy_utils.create_ragged_tensor_for_tma(mO_og, ragged_dim=0, ptr_shift=True)
        tma_atom_O, tma_tensor_O = make_tma(
            cpasync.CopyBulkTensorTileS2GOp(), mO_tma, self.sO_layout,
            (self.tile_m, self.tile_hdimv))
        cs = self.cfg.cluster_share
        TileScheduler = SingleTileVarlenScheduler if cs == 1 else ClusterPairVarlenScheduler
        tile_sched_args = TileSchedulerArguments(
            cute.ceil_div(cute.size(mQ.shape[0]), self.tile_m),
            cute.size(mQ.shape[2]) // cs,  # cluster_share=2: head pairs
            cute.size(mCuSeqlensQ.shape[0] - 1),
            1,  # num_splits
            mKC.shape[1] * mPageTable.shape[1],
            mQ.shape[1],
            mQ.shape[1],
            total_q=cute.size(mQ.shape[0]),
            tile_shape_mn=(self.tile_m, self.tile_n),
            mCuSeqlensQ=mCuSeqlensQ,
            mSeqUsedQ=None,
            qhead_per_kvhead_packgqa=G,
            element_size=self.dtype.width // 8,
            is_persistent=False,
            lpt=self.is_causal or self.is_local,
        )
        tile_sched_params = TileScheduler.to_underlying_arguments(tile_sched_args)
        # load_tq handles exactly one work tile per CTA (no tile loop)
        assert tile_sched_params.scheduling_mode == SchedulingMode.STATIC
        grid_dim = TileScheduler.get_grid_shape(tile_sched_params)
        if const_expr(cs == 2):
            grid_dim = (grid_dim[0] * 2, grid_dim[1], grid_dim[2])
        softmax_scale_log2, softmax_scale = fa_utils.compute_softmax_scale_log2(
            softmax_scale, None)
        window_size_left = Int32(window_size_left) if window_size_left is not None else None
        window_size_right = Int32(window_size_right) if window_size_right is not None else None

        self.kernel_tq(
            tma_tensor_Q, mKC, mVC, mKN, mVN, mKCB, mVCB, tma_tensor_O, mLSE, mCuSeqlensQ,
            mSeqUsedK, mPageTable, tma_atom_Q, tma_atom_O, softmax_scale_log2, softmax_scale,
            window_size_left, window_size_right, self.sQ_layout, self.sK_layout,
            self.sV_layout, self.sO_layout, self.gmem_tiled_copy_O, tiled_mma_qk,
            tiled_mma_pv, tile_sched_params, TileScheduler, SharedStorage,
        ).launch(grid=grid_dim, block=[self.num_threads, 1, 1], stream=stream,
                 min_blocks_per_mp=1,
                 cluster=[cs, 1, 1] if const_expr(cs == 2) else None)

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
        tma_atom_Q: cute.CopyAtom,
        tma_atom_O: cute.CopyAtom,
        softmax_scale_log2: Float32,
        softmax_scale: Optional[Float32],
        window_size_left: Optional[Int32],
        window_size_right: Optional[Int32],
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
        gmem_tiled_copy_O: cute.TiledCopy,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tile_sched_params,
        TileScheduler: cutlass.Constexpr,
        SharedStorage: cutlass.Constexpr,
    ):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == 0:
            cpasync.prefetch_descriptor(tma_atom_Q)
            cpasync.prefetch_descriptor(tma_atom_O)

        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(SharedStorage)

        ThreadCooperativeGroup = partial(pipeline.CooperativeGroup, pipeline.Agent.Thread)
        tma_warp = ThreadCooperativeGroup(1)
        producer_threads = ThreadCooperativeGroup(PRODUCER_THREADS)
        mma_warps = ThreadCooperativeGroup(self.num_mma_threads // cute.arch.WARP_SIZE)
        pipeline_q = pipeline_custom.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_ptr_Q.data_ptr(), num_stages=1,
            producer_group=tma_warp, consumer_group=mma_warps,
            tx_count=self.tma_copy_bytes["Q"], defer_sync=True)
        # K/V tiles are written with plain st.shared by all 128 producer threads: each
        # thread fences its own stores and arrives (PipelineAsync, no transaction count).
        # A side shared between the CTAs of a cluster pair uses ClusterPairPipeline instead
        # (full = 1 arrive.expect_tx + the peer's copied bytes, empty = 8 consumer warps x 2).
        full_arrivals, empty_arrivals = cluster_pair_arrivals(self.num_mma_threads)
        pipes = []
        for shared, mbar in ((self.cfg.shares(True), storage.mbar_ptr_K),
                             (self.cfg.shares(False), storage.mbar_ptr_V)):
            if const_expr(shared):
                pipes.append(ClusterPairPipeline.create(
                    barrier_storage=mbar.data_ptr(), num_stages=self.num_stages,
                    producer_group=ThreadCooperativeGroup(full_arrivals),
                    consumer_group=ThreadCooperativeGroup(empty_arrivals), defer_sync=True))
            else:
                pipes.append(pipeline_custom.PipelineAsync.create(
                    barrier_storage=mbar.data_ptr(), num_stages=self.num_stages,
                    producer_group=producer_threads, consumer_group=mma_warps,
                    elect_one_release=True, syncwarp_before_release=False, defer_sync=True))
        pipeline_k, pipeline_v = pipes
        pipeline_init_arrive(cluster_shape_mn=self.cluster_shape_mn, is_relaxed=True)

        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)
        sVt = layout_utils.transpose_view(sV)
        sO = storage.sQ.get_tensor(sO_layout.outer, swizzle=sO_layout.inner, dtype=self.dtype)

        packgqa = self.packgqa_factor
        block_info = BlockInfo(
            self.tile_m, self.tile_n, self.is_causal, self.is_local, False,
            window_size_left, window_size_right, qhead_per_kvhead_packgqa=packgqa)
        SeqlenInfoCls = partial(
            SeqlenInfoQK.create,
            seqlen_q_static=mQ.shape[0] if const_expr(not self.pack_gqa) else mQ.shape[0][1],
            seqlen_k_static=mKC.shape[1] * mPageTable.shape[1],
            mCuSeqlensQ=mCuSeqlensQ, mCuSeqlensK=None, mSeqUsedQ=None, mSeqUsedK=mSeqUsedK)
        AttentionMaskCls = partial(
            AttentionMask, self.tile_m, self.tile_n, window_size_left=window_size_left,
            window_size_right=window_size_right, qhead_per_kvhead_packgqa=packgqa)
        TileSchedulerCls = partial(TileScheduler.create, tile_sched_params)

        pipeline_init_wait(cluster_shape_mn=self.cluster_shape_mn)

        producer = partial(
            self.load_tq, mQ, mKC, mVC, mKN, mVN, mKCB, mVCB, mPageTable, sQ, tma_atom_Q,
            pipeline_k, pipeline_v, pipeline_q,
            dq.smem_addr(storage.sK.data_ptr()), dq.smem_addr(storage.sV.data_ptr()),
            dq.smem_addr(storage.sStage.data_ptr()), dq.smem_addr(storage.sLutK.data_ptr()),
            dq.smem_addr(storage.sLutV.data_ptr()))
        consumer = partial(
            self.mma, tiled_mma_qk, tiled_mma_pv, mO, mLSE, sQ, sK, sVt, None, sO, None,
            pipeline_k, pipeline_v, pipeline_q, gmem_tiled_copy_O, tma_atom_O)
        consumer_args = (softmax_scale_log2, softmax_scale, block_info, SeqlenInfoCls,
                         AttentionMaskCls, TileSchedulerCls, None, AuxData(), None)
        # Warpgroup roles: WG0 producer (K and V, or K + the Q load), WG1-2 FA4's consumers
        # (tidx - 128, as in FA4), WG3 (producer_wgs == 2) the V producer.
        if const_expr(self.cfg.producer_wgs == 1):
            if warp_idx < 4:
                cute.arch.setmaxregister_decrease(self.num_producer_regs)
                tidx, _, _ = cute.arch.thread_idx()
                producer(tidx, block_info, SeqlenInfoCls, TileSchedulerCls, True, True)
            else:  # consumers: FA4's mainloop, softmax and epilogue, unchanged
                cute.arch.setmaxregister_increase(self.num_mma_regs)
                tidx, _, _ = cute.arch.thread_idx()
                consumer(tidx - 128, *consumer_args)
        else:
            if warp_idx < 4:
                cute.arch.setmaxregister_decrease(self.num_producer_regs)
                tidx, _, _ = cute.arch.thread_idx()
                producer(tidx, block_info, SeqlenInfoCls, TileSchedulerCls, True, False)
                self._cluster_exit_barrier()
            elif warp_idx >= 12:
                cute.arch.setmaxregister_decrease(self.num_producer_regs)
                tidx, _, _ = cute.arch.thread_idx()
                producer(tidx - 384, block_info, SeqlenInfoCls, TileSchedulerCls, False, True)
                self._cluster_exit_barrier()
            else:
                cute.arch.setmaxregister_increase(self.num_mma_regs)
                tidx, _, _ = cute.arch.thread_idx()
                consumer(tidx - 128, *consumer_args)
                self._cluster_exit_barrier()

    def _cluster_exit_barrier(self):
        """cluster_share=2: no CTA may exit while its peer can still store into its shared
        memory or arrive on its barriers (DSMEM of an exited CTA is undefined): every thread of
        both CTAs arrives (release) after its last remote operation and waits for all."""
        if const_expr(self.cfg.cluster_share == 2):
            cute.arch.cluster_arrive(aligned=False)
            cute.arch.cluster_wait()

    # ------------------------------------------------------------------ producer
    @cute.jit
    def load_tq(
        self,
        mQ: cute.Tensor,
        mKC: cute.Tensor,
        mVC: cute.Tensor,
        mKN: cute.Tensor,
        mVN: cute.Tensor,
        mKCB: cute.Tensor,
        mVCB: cute.Tensor,
        mPageTable: cute.Tensor,
        sQ: cute.Tensor,
        tma_atom_Q: cute.CopyAtom,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        pipeline_q: pipeline.PipelineAsync,
        sK_addr: Int32,
        sV_addr: Int32,
        stage_addr: Int32,
        lutk_addr: Int32,
        lutv_addr: Int32,
        tidx: Int32,
        block_info: BlockInfo,
        SeqlenInfoCls: cutlass.Constexpr,
        TileSchedulerCls: cutlass.Constexpr,
        do_k: cutlass.Constexpr,  # this warpgroup decodes K tiles (and loads Q)
        do_v: cutlass.Constexpr,  # this warpgroup decodes V tiles
    ):
        """One producer warpgroup's loop over every work tile's n_blocks: K and/or V tiles.
        Each of the two producer roles (producer_wgs == 2) runs this same loop over the same
        blocks with its own side of the staging ring, its own cp.async groups and page-table
        lookups; the K/V pipelines are separate, so the two never wait on each other."""
        cfg = self.cfg
        tile_n = self.tile_n
        # cp.async groups this thread keeps in flight: one per (side, staged block)
        groups_in_flight = (int(do_k) + int(do_v)) * cfg.stage_slots
        kbytes = cfg.k_row_bytes()
        vbytes = cfg.v_row_bytes()
        slots = cfg.stage_slots
        warp_idx_in_wg = cute.arch.make_warp_uniform(cute.arch.warp_idx()) % 4
        lane = tidx % 32

        # Tables from the codebooks (once per CTA), producer threads only: the byte -> bf16
        # LUT for shared-memory-LUT sides, the bf16 codebook words for register-LUT sides.
        # Each producer warpgroup builds the tables of the sides it decodes and waits on its
        # own named barrier (K or K+V: LUT_BARRIER_ID, V alone: LUT_BARRIER_ID + 1).
        # (prmt_lut: interleaved, V's entries in the second half of K's; each side's own
        # producer builds its half)
        lutk_addr, lutv_addr, stride = dq.table_bases(lutk_addr, lutv_addr, cfg.prmt_lut)
        if const_expr(do_k):
            if const_expr(cfg.k_register_lut):
                dq.build_entry_words(mKCB, lutk_addr, cfg.k_bits, tidx)
            else:
                dq.build_lut(mKCB, lutk_addr, cfg.k_bits, cfg.k_lut_replicas, tidx,
                             PRODUCER_THREADS, stride)
        if const_expr(do_v):
            if const_expr(cfg.v_register_lut):
                dq.build_entry_words(mVCB, lutv_addr, cfg.v_bits, tidx)
            else:
                dq.build_lut(mVCB, lutv_addr, cfg.v_bits, cfg.v_lut_replicas, tidx,
                             PRODUCER_THREADS, stride)
        cute.arch.barrier(barrier_id=LUT_BARRIER_ID + (0 if do_k else 1),
                          number_of_threads=PRODUCER_THREADS)
        if const_expr(cfg.prmt_lut):
            # (table base, the lane's slot offset within the 256-byte entry) for
            # dq.decode_word_prmt
            lutk_lane = (lutk_addr, dq.prmt_lane_offset(cfg.k_bits, lane, True))
            lutv_lane = (lutk_addr, dq.prmt_lane_offset(cfg.v_bits, lane, False))
        else:
            lutk_lane = lutk_addr + (lane % cfg.k_lut_replicas) * (4 * dq.lut_entry_words(cfg.k_bits))
            lutv_lane = lutv_addr + (lane % cfg.v_lut_replicas) * (4 * dq.lut_entry_words(cfg.v_bits))

        # Staging ring: slot s holds [K chunks][tile_n rows][16 B] then [V chunks][rows][16 B].
        slot_bytes = tile_n * (kbytes + vbytes)
        stage_k_row = stage_addr + tidx * 16
        stage_v_row = stage_addr + tile_n * kbytes + tidx * 16
        tile_bytes = tile_n * self.tile_hdim * 2

        page_size = mKC.shape[1]
        num_heads_kv = mKC.shape[2]
        page_divmod = FastDivmodDivisorV2(page_size)
        kc_base = mKC.iterator.toint()
        vc_base = mVC.iterator.toint()

        # Which part of every K/V tile this thread decodes: cluster_share=1: row tidx, all of
        # it; 2: row 64*rank + tidx % 64 and half h = tidx // 64 of its code bytes, which is
        # swizzle-atom column h of the bf16 tile. The half's constant offsets are folded into
        # the code bases and the tile bases here (no extra live register in the 48-register
        # producer); _decode maps each tile address into the peer CTA with mapa.
        # (cluster_share=2 needs producer_wgs=2: this warpgroup decodes exactly one side, and
        # only a shared side is split; cluster_sides picks which.)
        row = tidx
        if const_expr(cfg.shares(do_k) and not (do_k and do_v)):
            row = dq.cluster_cta_rank() * CLUSTER_PAIR_ROWS + tidx % CLUSTER_PAIR_ROWS
            half = tidx // CLUSTER_PAIR_ROWS
            half_col = half * (tile_n * 128)  # bytes of one 64-column swizzle-atom column
            if const_expr(do_k):
                kc_base = kc_base + Int64(half * (self._chunks(kbytes, True) * 16))
                sK_addr = sK_addr + half_col
            else:
                vc_base = vc_base + Int64(half * (self._chunks(vbytes, False) * 16))
                sV_addr = sV_addr + half_col
        kn_base = mKN.iterator.toint()
        vn_base = mVN.iterator.toint()

        kv_producer_state = pipeline.make_pipeline_state(
            pipeline.PipelineUserType.Producer, self.num_stages)
        tile_scheduler = TileSchedulerCls()
        # SingleTileVarlenScheduler in STATIC mode gives each CTA one work tile (its
        # advance_to_next_work always yields an invalid tile), so the producer handles that
        # tile without a tile loop: no scheduler state stays live across the n_block loop
        # (it cost a spilled register in a 48-register producer, K2V4 causal). __call__
        # asserts the STATIC mode.
        work_tile = tile_scheduler.initial_work_tile_info()
        if work_tile.is_valid_tile:
            m_block, head_idx, batch_idx, _ = work_tile.tile_idx
            seqlen = SeqlenInfoCls(batch_idx)
            seqlen_k = seqlen.seqlen_k
            # (pack_gqa: the tile's head index already is the KV head)
            head_kv = head_idx if const_expr(self.pack_gqa) else head_idx // self.qhead_per_kvhead
            mQ_cur = seqlen.offset_batch_Q(mQ, batch_idx, dim=3)[None, None, head_idx]
            gQ = cute.local_tile(mQ_cur, (self.tile_m, self.tile_hdim), (m_block, 0))
            load_Q, _, _ = copy_utils.tma_get_copy_fn(
                tma_atom_Q, 0, cute.make_layout(1), gQ, sQ, single_stage=True)

            n_block_min, n_block_max = block_info.get_n_block_min_max(seqlen, m_block)
            # FA4's consumer always processes n_block_max - 1 first (clamped to 0 here, its
            # rows are fully masked then), then down to n_block_min.
            n_first = cutlass.max(n_block_max - 1, 0)
            n_count = cutlass.max(n_block_max - n_block_min, 1)

            # Prologue: blocks 0 .. slots-1 (K then V), then Q by TMA.
            ctx = _ProducerCtx(
                tidx=tidx, row=row, n_first=n_first, n_count=n_count,
                seqlen_k=seqlen_k, batch_idx=batch_idx, head_kv=head_kv, page_size=page_size,
                page_divmod=page_divmod, num_heads_kv=num_heads_kv, mPageTable=mPageTable,
                kc_base=kc_base, vc_base=vc_base, kn_base=kn_base, vn_base=vn_base,
                stage_k_row=stage_k_row, stage_v_row=stage_v_row, slot_bytes=slot_bytes,
                lutk_lane=lutk_lane, lutv_lane=lutv_lane, lutk_addr=lutk_addr,
                lutv_addr=lutv_addr)
            if const_expr(cfg.direct_loads):
                # Staging-free producer of one side (producer_wgs == 2, checked by the config).
                # Register state carried from block i to i+1: the code words of block i (a
                # register fragment refilled chunk by chunk with block i+1's words as block i's
                # are decoded, so block i+1's loads fly while block i is decoded and stored),
                # block i's norm, and block i+1's cache row (its page-table entry is looked up
                # one block earlier still, so no code load waits on the page table).
                pipe = pipeline_k if do_k else pipeline_v
                s_base = sK_addr if do_k else sV_addr
                nbytes = kbytes if do_k else vbytes
                cbase = kc_base if do_k else vc_base
                nbase = kn_base if do_k else vn_base
                words = cute.make_rmem_tensor((4 * self._chunks(nbytes, do_k),), Int32)
                row0, valid0 = self._cache_row(ctx, Int32(0))
                for c in range(self._chunks(nbytes, do_k)):
                    _refill_chunk(words, cbase + row0 * nbytes, valid0, c)
                norm = dq.ld_global_bf16_pair(nbase + row0 * 2, valid0)
                row1, valid1 = self._cache_row(ctx, Int32(1))
                if const_expr(do_k):
                    self._issue_q(pipeline_q, load_Q, warp_idx_in_wg)
                for i in cutlass.range(n_count, unroll=1):
                    row2, valid2 = self._cache_row(ctx, i + 2)
                    norm_next = dq.ld_global_bf16_pair(nbase + row1 * 2, valid1)
                    pipe.producer_acquire(kv_producer_state)
                    tile_addr = s_base + kv_producer_state.index * tile_bytes
                    self._decode_chunks(
                        ctx, do_k, norm, tile_addr,
                        partial(_fragment_chunk, words),
                        partial(_refill_chunk, words, cbase + row1 * nbytes, valid1))
                    # this thread's generic-proxy tile stores -> the async proxy (wgmma)
                    cute.arch.fence_view_async_shared()
                    pipe.producer_commit(kv_producer_state)
                    kv_producer_state.advance()
                    norm = norm_next
                    row1 = row2
                    valid1 = valid2
            else:
                norms_k = [Int32(0)] * slots
                norms_v = [Int32(0)] * slots
                for s in cutlass.range_constexpr(slots):
                    if const_expr(do_k):
                        norms_k[s] = self._issue(ctx, Int32(s), True)
                    if const_expr(do_v):
                        norms_v[s] = self._issue(ctx, Int32(s), False)
                if const_expr(do_k):
                    self._issue_q(pipeline_q, load_Q, warp_idx_in_wg)

                nk0 = norms_k[0]
                nv0 = norms_v[0]
                nk1 = Int32(0)
                nv1 = Int32(0)
                if const_expr(slots == 2):
                    nk1 = norms_k[1]
                    nv1 = norms_v[1]
                for i in cutlass.range(n_count, unroll=1):
                    # groups in flight, in issue order: K(i), V(i), ..., K(i+slots-1),
                    # V(i+slots-1) (only this warpgroup's sides)
                    if const_expr(do_k):
                        nk0, nk1 = self._produce_tile(ctx, i, True, pipeline_k, kv_producer_state,
                                                      sK_addr, tile_bytes, groups_in_flight, nk0,
                                                      nk1)
                    if const_expr(do_v):
                        nv0, nv1 = self._produce_tile(ctx, i, False, pipeline_v, kv_producer_state,
                                                      sV_addr, tile_bytes, groups_in_flight, nv0,
                                                      nv1)
                    kv_producer_state.advance()
                # drain the (empty) trailing groups before the thread exits
                cute.arch.cp_async_wait_group(0)

    def _produce_tile(self, ctx: "_ProducerCtx", i: Int32, is_k: bool, pipe, state, s_addr,
                      tile_bytes: int, groups_in_flight: int, n0: Int32, n1: Int32):
        """One side's step for block #i: wait for its staged codes, acquire the stage, decode
        into it, fence, commit (cluster_share=2: and send this CTA's rows to the peer); then
        stage block #i + slots. Returns the norms of the next (n0, n1) blocks (n1 unused with
        one staging slot)."""
        cute.arch.cp_async_wait_group(groups_in_flight - 1)
        pipe.producer_acquire(state)
        tile_addr = s_addr + state.index * tile_bytes
        self._decode(ctx, i, is_k, n0, tile_addr)
        if const_expr(self.cfg.shares(is_k)):
            # s_addr carries this thread's atom column (see load_tq): recover the tile base
            # from tidx instead of keeping another register live
            base = tile_addr - (ctx.tidx // CLUSTER_PAIR_ROWS) * (self.tile_n * 128)
            pipe.share_commit(state, ctx.tidx, base, dq.cluster_cta_rank(),
                              LUT_BARRIER_ID + (0 if is_k else 1), self.tile_n, self.tile_hdim)
        else:
            # this thread's generic-proxy tile stores -> the async proxy (wgmma) before the arrive
            cute.arch.fence_view_async_shared()
            pipe.producer_commit(state)
        if const_expr(self.cfg.stage_slots == 2):
            return n1, self._issue(ctx, i + 2, is_k)
        return self._issue(ctx, i + 1, is_k), n1

    @cute.jit
    def _issue_q(self, pipeline_q, load_Q, warp_idx_in_wg: Int32) -> None:
        """The K producer's Q tile: one warp acquires the (single-use) Q stage and issues the
        TMA load. Each CTA handles one work tile (STATIC scheduler), so the phase is the
        first round's, 1."""
        if warp_idx_in_wg == 0:
            pipeline_q.producer_acquire_w_index_phase(0, Int32(1))
            load_Q(tma_bar_ptr=pipeline_q.sync_object_full.get_barrier(0))

    def _cache_row(self, ctx: "_ProducerCtx", i: Int32):
        """(row index into the (blocks * block_size * h_kv) code/norm rows, valid) of this
        thread's token in block #i; invalid rows (past seqlen_k, or no block #i) use page-table
        entry 0 (always in bounds) and must be predicated off by the caller."""
        token = (ctx.n_first - i) * self.tile_n + ctx.row
        valid = Int32((i < ctx.n_count) & (token < ctx.seqlen_k))
        row = dq.paged_cache_row(ctx.mPageTable, ctx.batch_idx, token * valid, ctx.page_divmod,
                                 ctx.page_size, ctx.num_heads_kv, ctx.head_kv)
        return row, valid

    def _chunks(self, nbytes: int, is_k: bool) -> int:
        """16-byte code chunks of a row that one producer thread handles (half of them on a
        side shared between the CTAs of a cluster pair)."""
        return nbytes // 16 // (2 if self.cfg.shares(is_k) else 1)

    # The two producer steps are plain Python (traced inline, fully unrolled, branch-free:
    # rows past seqlen_k are predicated off instead of branched around).
    def _issue(self, ctx: "_ProducerCtx", i: Int32, is_k: bool) -> Int32:
        """cp.async this thread's code row of block #i (one side) into its staging slot and
        commit the group (possibly empty); return the row's norm as bf16x2 (0 if the row is
        past seqlen_k or block #i does not exist)."""
        cfg = self.cfg
        row, valid = self._cache_row(ctx, i)
        nbytes = cfg.k_row_bytes() if is_k else cfg.v_row_bytes()
        src = (ctx.kc_base if is_k else ctx.vc_base) + row * nbytes
        dst = (ctx.stage_k_row if is_k else ctx.stage_v_row) + (i % cfg.stage_slots) * ctx.slot_bytes
        src_bytes = valid * 16
        nchunks = self._chunks(nbytes, is_k)  # (shared side: the half's offset is in the base)
        for c in range(nchunks):
            dq.cp_async_16(dst + c * self.tile_n * 16, src + c * 16, src_bytes)
        norm2 = dq.ld_global_bf16_pair((ctx.kn_base if is_k else ctx.vn_base) + row * 2, valid)
        cute.arch.cp_async_commit_group()
        return norm2

    def _decode(self, ctx: "_ProducerCtx", i: Int32, is_k: bool, norm2: Int32,
                tile_addr: Int32) -> None:
        """Staged codes of block #i (one side) -> this thread's row of the swizzled bf16
        tile (cluster_share=2: half row, ``tile_addr`` already at its atom column; the
        pipeline's share_commit copies this CTA's rows to the peer)."""
        cfg = self.cfg
        src = (ctx.stage_k_row if is_k else ctx.stage_v_row) + (i % cfg.stage_slots) * ctx.slot_bytes
        self._decode_chunks(ctx, is_k, norm2, tile_addr,
                            lambda c: dq.ld_shared_v4(src + c * self.tile_n * 16), None)

    def _decode_chunks(self, ctx: "_ProducerCtx", is_k: bool, norm2: Int32, tile_addr: Int32,
                       chunk_words, after_chunk) -> None:
        """Decode this thread's code row, 16 bytes (``chunk_words(c)``: 4 words) at a time,
        into its row of the swizzled bf16 tile at ``tile_addr``; ``after_chunk(c)`` (or None)
        runs once chunk c is stored (the staging-free loop refills its registers there)."""
        cfg = self.cfg
        bits = cfg.k_bits if is_k else cfg.v_bits
        reps = cfg.k_lut_replicas if is_k else cfg.v_lut_replicas
        lut_lane = ctx.lutk_lane if is_k else ctx.lutv_lane
        nbytes = cfg.k_row_bytes() if is_k else cfg.v_row_bytes()
        register_lut = cfg.k_register_lut if is_k else cfg.v_register_lut
        planes = None
        if register_lut:  # this row's scaled codebook as prmt byte planes
            planes = dq.load_row_planes(ctx.lutk_addr if is_k else ctx.lutv_addr, bits, norm2)
        out_per_in = 16 // bits  # 8-element output chunks per 16 B of codes
        nchunks = self._chunks(nbytes, is_k)
        for c in range(nchunks):
            words = chunk_words(c)
            outs = []
            k = 0  # 8-element output chunks of this code chunk stored so far

            def store(four, k):
                # (cluster_share=2: chunk within the half; the half's column is in tile_addr)
                off = dq.swizzled_offset(ctx.row, c * out_per_in + k, self.tile_n)
                dq.st_shared_v4(tile_addr + off, *four)

            for w in words:
                if register_lut:
                    outs.extend(dq.decode4_reg(w, planes) if bits == 4
                                else dq.decode2_reg(w, planes))
                elif cfg.prmt_lut:
                    outs.extend(dq.decode_word_prmt(w, lut_lane[0], lut_lane[1], norm2, bits))
                else:
                    outs.extend(dq.decode_word(w, lut_lane, norm2, bits, reps))
                # prmt_lut: store each 8-element chunk as soon as it is decoded (fewer live
                # words: a 2-bit row's 16 B decode to 32); the other paths store a whole
                # 16-byte code chunk's outputs together (their measured, shipped order)
                while cfg.prmt_lut and len(outs) >= 4:
                    store(outs[:4], k)
                    outs = outs[4:]
                    k += 1
            for i in range(0, len(outs), 4):
                store(outs[i:i + 4], k)
                k += 1
            if after_chunk is not None:
                after_chunk(c)


def _fragment_chunk(words: cute.Tensor, c: int):
    """The 4 code words of 16-byte chunk ``c`` held in a register fragment."""
    return [words[4 * c + j] for j in range(4)]


def _refill_chunk(words: cute.Tensor, src: Int64, valid: Int32, c: int) -> None:
    """Load chunk ``c`` of the next block's code row (src, predicated by ``valid``) into the
    fragment slots whose words were just decoded (staging-free producer)."""
    w = dq.ld_global_words_pred(src + c * 16, 4, valid)
    for j in range(4):
        words[4 * c + j] = w[j]


@dataclass
class _ProducerCtx:
    """Per-work-tile values the producer steps share (a bag of DSL values, not a kernel arg)."""

    tidx: object
    row: object  # tile row this thread decodes (tidx unless cluster_share=2)
    n_first: object
    n_count: object
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
    stage_k_row: object
    stage_v_row: object
    slot_bytes: int
    lutk_lane: object
    lutv_lane: object
    lutk_addr: object
    lutv_addr: object


# --------------------------------------------------------------------------- compile-only
def build_compile(cfg: PrefillSm90Config):
    """(compile_fn, args) compiling ``cfg`` from fake tensors (no GPU), for the compile-only
    harness (fa4_tq/kernels/compile.py); the argument kinds are the dispatcher's."""
    from .prefill import build_fake_compile
    return build_fake_compile(PrefillSm90(cfg), cfg)


def shipped_configs() -> list[PrefillSm90Config]:
    """The configs the compile test and the compile report cover: all nine (k_bits, v_bits)
    at D=128 (GQA 4, causal and not: CI fails on a spill in any of them), a D=64 subset, and a sliding-window variant."""
    out = []
    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            out.append(make_config(128, kb, vb, 4, False, False, False, False))
            out.append(make_config(128, kb, vb, 4, True, False, False, False))
    out.append(make_config(128, 4, 4, 4, False, True, True, True))
    for kb, vb in ((4, 4), (2, 2), (8, 8)):
        out.append(make_config(64, kb, vb, 4, False, False, False, False))
    # the other decode choices the device probe compares (register LUT, mixed). Not listed:
    # K2V2 ss / rs and K4V2 ss, which spill (2-bit V on the shared-memory LUT, see
    # default_register_lut); the probe still times them as the step-1 reference.
    for kb, vb, kr, vr in ((4, 4, True, True), (4, 4, True, False), (4, 4, False, True),
                           (4, 8, False, False)):
        cfg = make_config(128, kb, vb, 4, False, False, False, False, kr, vr)
        if cfg not in out:
            out.append(cfg)
    # the producer-warpgroup count that is not the default (step 4): one producer WG, the
    # probes' baseline (K4V4), and K8V8 without cluster sharing (step 5's baseline)
    for kb, vb, causal, pw, cs in ((4, 4, False, 1, None), (8, 8, False, 2, 1)):
        cfg = make_config(128, kb, vb, 4, causal, False, False, False, producer_wgs=pw,
                          cluster_share=cs)
        if cfg not in out:
            out.append(cfg)
    # opt-in 2-CTA cluster sharing where it is not the default (step 5, measured flat): K4V4
    # full (shared-memory LUT on both sides, both sides shared), K2V2 causal (register LUT),
    # K4V4 causal sharing only K
    for kb, vb, causal, sides in ((4, 4, False, "kv"), (2, 2, True, "kv"), (4, 4, True, "k")):
        out.append(make_config(128, kb, vb, 4, causal, False, False, False, producer_wgs=2,
                               cluster_share=2, cluster_sides=sides))
    # the staging-free producer (step 7, opt-in until measured): K4V4 register LUTs with 3
    # K/V stages (200/56 split: at 208/48 the full build spills 8 B, causal 320 B), K2V2 with
    # 3 and 2 stages at the default split
    wide = WIDE_PRODUCER_SPLIT
    for kb, vb, causal, stages, split, lut in (
            (4, 4, False, 3, wide, True), (4, 4, True, 3, wide, True),
            (2, 2, True, 3, None, None), (2, 2, False, 2, None, None),
            (4, 2, False, 3, wide, None), (2, 4, True, 3, wide, None)):
        cfg = make_config(128, kb, vb, 4, causal, False, False, False, lut, lut,
                          producer_wgs=2, cluster_share=1, direct_loads=True,
                          num_stages=stages, register_split=split)
        if cfg not in out:
            out.append(cfg)
    # FA4's PackGQA tile (the default for short chunks): full, causal GQA 8, sliding window
    for kb, vb, g, causal, local in ((4, 4, 4, False, False), (2, 2, 8, True, False),
                                     (4, 4, 4, False, True)):
        out.append(make_config(128, kb, vb, g, causal, local, local, local, pack_gqa=True))
    out.append(make_config(64, 4, 4, 4, True, False, False, False, pack_gqa=True))
    out.append(make_config(128, 2, 4, 4, True, False, False, False,
                           pack_gqa=True))  # WIDE_PRODUCER_SPLIT
    # conflict-free byte tables (step 10, opt-in until measured): 32 replicas on one side
    # with one staging slot, on both with the staging-free producer (at (192, 64): the causal
    # build spills 40 B at (200, 56)), the 8-bit V side of K4V8, and PRMT-addressed tables
    for kb, vb, causal, knobs in SM90_LUT_CANDIDATES:
        out.append(make_config(128, kb, vb, 4, causal, False, False, False, **knobs))
    return out



def _variant(cfg: PrefillSm90Config) -> str:
    mask = "causal" if cfg.causal else ("local" if cfg.local else "full")
    lut = "".join(("r" if reg else "s") for reg in (cfg.k_register_lut, cfg.v_register_lut))
    pw = f"-pw{cfg.producer_wgs}" if cfg.producer_wgs != 1 else ""
    return (f"sm90-{mask}-g{cfg.qhead_per_kvhead}-lut{lut}{pw}{cfg._cs_tag('-')}"
            f"{cfg._knob_tag('-')}")


def register_configs(register) -> None:
    """Compile-harness registry hook (fa4_tq/kernels/compile.py)."""
    from .compile import KernelConfig
    for cfg in shipped_configs():
        register(KernelConfig("prefill", cfg.k_bits, cfg.v_bits, cfg.head_dim, _variant(cfg),
                              partial(build_compile, cfg)))

