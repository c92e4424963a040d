"""Split-K decode over the paged TurboQuant cache (CuTeDSL, sm_80+; tuned for sm_90).

One CTA per (split, kv head, batch). All query rows that read one KV head — its G query
heads times q_len positions, N = G * q_len "columns" — are served by the warps of that CTA
from one read of the codes. Per 16-token tile and warp (everything in registers):

  Sᵀ[16 tok, 8 col] = K̃ · Qᵀ      mma.sync m16n8k16, K̃ = codebook[code] (no norm) as the A
                                   operand, Q (rotated) as the B operand, held in registers;
  S = Sᵀ · knorm[tok] · scale      the K norm is a per-token row scale of Sᵀ, applied once to
                                   the accumulator instead of to every element (cheaper);
  online softmax per column        (columns live in lanes c = lane % 4, tokens in g = lane / 4);
  P' = P · vnorm[tok]              the V norm folded into P (again per token, not per element);
  Oᵀ[16 d, 8 col] += Ṽᵀ · P'ᵀ      mma.sync; Sᵀ's accumulator is turned into the B operand
                                   with movmatrix.trans (one per 8x8), Ṽ = codebook[code].

Why tensor cores: with GQA every decoded element feeds G columns; scalar FMAs for QK and PV
would make decode ALU-bound (docs/decode.md). Here an element costs ~2 integer ops + half
a shared-memory lookup.

Dequantization ("pair LUT"): codes are looked up in shared-memory tables that return two
adjacent elements as one packed bf16x2/f16x2 register (exactly an mma operand register):
4-bit: 256 entries indexed by the whole byte; 2-bit: 16 entries indexed by a nibble; 8-bit:
256 single values (two lookups + a byte permute per pair). Every table is replicated 32
times, word ``entry * 32 + lane``, so each lane reads its own bank: lookups with random
codes never bank-conflict.

Operand permutations (the order of the MMA K dimension is free as long as both operands
agree; that lets every thread load *contiguous* bytes of a code row):
* QK: thread (g, c) owns elements [c*D/4, (c+1)*D/4) of token rows g and g+8. K-chunk k
  (16 of D) takes the pairs (c*D/4 + 4k, +1) -> A regs 0/1 and (c*D/4 + 4k + 2, +3) ->
  regs 2/3; Q's B registers take the same elements of column g.
* PV: the M dimension of Oᵀ is d. Thread (g, c) owns d in [g*D/8, (g+1)*D/8) of tokens
  2c, 2c+1, 2c+8, 2c+9; M-tile i's rows g / g+8 are d = g*D/8 + 2i / + 1, so the pair
  lookup of (d, d+1) gives both rows at once and a byte permute pairs up the two tokens.

Warps: the CTA has n_groups x streams warps. A group owns n_tiles_per_warp column tiles
(of 8 columns; more columns than fit one warp's registers are split over groups, which
then read the same codes through L1). Streams split the tiles of the CTA's token range
round-robin, each with its own online softmax, merged through shared memory at the end.
Each CTA writes a normalised fp32 partial output and its LSE; decode_combine.py merges
splits. The split count comes from ``choose_num_splits`` (shapes only: graph-safe).

Opt-in speed candidates (DecodeConfig knobs, default off; SPEED_CANDIDATES, unmeasured
until a device run, docs/decode-notes.md §7): ``early_prefetch`` issues the first tile's loads
before the Q load + rotation; ``table_lookahead`` reads the block-table entry one tile ahead
so a tile's code loads never wait for it; ``smem_stages`` replaces the one-tile register
prefetch by a per-warp cp.async ring in shared memory (each thread copies and later reads
back only its own bytes, so only its own cp.async.wait_group orders them; no barrier).
``prmt_lut`` (docs/decode-notes.md §9-10; the default for the pairs in PRMT_LUT_MEASURED at
D=128) interleaves the K and V tables at 256 bytes per byte value so every lookup offset is
one PRMT, and gives 2-bit sides a byte-indexed table that fills two mma registers per LDS.64.

Masking: token j is visible to the query at position p = qi + L - q_len iff
p - window_left <= j <= p + window_right (each bound only if >= 0; causal means
window_right = 0) and j < L. Only tiles that straddle a bound pay for the mask. Norms of
tokens past L are zeroed, so garbage in unused cache rows can never reach the output.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import torch
from cutlass import Float32, Int32, Int64, Uint32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op
from cutlass.memory import SmemAllocator

from ..codec import codebook_bits
from .code_interleave import (byte_offset_selector, code_field, interleave_2bit,
                              interleave_nibbles)

NUM_SMS_H100 = 132
TOKENS_PER_TILE = 16
# DecodeConfig.prmt_lut: 256 byte values x (K, V) x 128 B
PRMT_LUT_BYTES = 256 * 256
MAX_COLUMNS = 128  # G * q_len: GQA 16 x q_len 8
LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DecodeConfig:
    """Everything that changes the generated code; also the compile-cache key."""

    k_bits: int
    v_bits: int
    head_dim: int
    qhead_per_kvhead: int  # G
    q_len: int
    dtype: str = "bfloat16"  # q / mma operand type: "bfloat16" or "float16"
    target_warps: int = 8  # warps per CTA to aim for (n_groups x streams)
    # Software pipelining: load tile i+1 into registers while tile i is computed (a warp
    # otherwise waits a full DRAM latency per tile).
    prefetch: bool = True
    # CTAs per SM the register allocation must allow (ptxas caps registers accordingly);
    # 0 = let ptxas choose.
    min_ctas_per_sm: int = 0
    # Rotate the query inside the kernel's Q load (sign flip + fast Walsh-Hadamard in fp32,
    # one rounding to the operand type) instead of a separate GEMM launch: False when the
    # caller passes an already rotated query (rotate_query=False).
    rotate_query: bool = True
    # Opt-in speed candidates (defaults = the measured shipped kernel; docs/decode-notes.md
    # §7 has the predictions and the probe that times them):
    # early_prefetch: issue the first tile's loads before the Q load + rotation (requires
    # prefetch), so that DRAM latency overlaps the rotation instead of following it.
    early_prefetch: bool = False
    # smem_stages: 0 = register prefetch of the next tile (prefetch=True); S >= 2 = a
    # per-warp cp.async ring of S tiles of K/V codes in shared memory (S - 1 tiles in
    # flight per warp instead of 1, without the 2 x 8 prefetch registers per thread), the
    # norms in S register slots and the block-table entry read one tile ahead.
    smem_stages: int = 0
    # table_lookahead (register prefetch only; the ring always does it): read the block
    # table entry of the tile after next one tile early, so issuing the next tile's loads
    # does not first wait for that (dependent, L1/L2-latency) read every iteration.
    table_lookahead: bool = False
    # tile_bases: a tile's global addresses = one per-tile base per tensor (block · s0 +
    # row · s1) + a per-thread offset computed once per CTA, instead of a full crd2idx
    # (three 64-bit multiplies by runtime strides) for each of the 10 loads of a tile
    # (SASS: ~90 of the ~570 instructions per tile-warp of the K4V4 loop).
    tile_bases: bool = False
    # prmt_lut: PRMT-addressed tables, K's and V's interleaved at 256 bytes per byte value
    # (K at + 0, V at + 128; 64 KB per CTA for any bit widths), so a lookup offset (code
    # byte * 256 + the lane's slot) is one PRMT of the code word and the lane offset and
    # ptxas folds the base into LDS [R+UR]: no shift / mask / address IMAD per lookup.
    # 4/8-bit side: the usual pair / single words (32 replicas x 4 bytes). 2-bit side: a
    # table indexed by a byte of four 2-bit codes that returns two mma registers with one
    # LDS.64 (16 replicas x 8 bytes: a half warp hits 32 distinct banks); the code words are
    # first re-interleaved in registers so that each byte holds exactly the codes of two
    # registers the mma wants adjacent (K: the same pair of rows g and g+8; V: elements d
    # and d+1 of a token pair). 4-bit V: the token pairs' nibbles are interleaved so that a
    # lookup is the register of both tokens (no PRMT pairing).
    prmt_lut: bool = False
    # tile_pairs (smem ring with 4 stages only): two 16-token tiles per online-softmax step
    # (QK of both, one column maximum, one rescale of O and of the row sums, then PV of
    # both) instead of one step per tile; the ring keeps 2 tiles in flight while a pair is
    # computed. Saves ~50 SASS instructions per tile pair (the O rescale, the max shuffles,
    # the alpha ex2s; docs/decode-notes.md §12). A pair whose second tile is past the
    # split's end computes it with zero norms and masked scores.
    tile_pairs: bool = False
    # l2_prefetch: the .L2::<n>B prefetch-size hint (64, 128 or 256; 0 = none) on the code
    # loads (LDG / cp.async). A K or V row segment is 64-128 contiguous bytes and the next
    # head's row of the same token follows it (cache layout [block, token, head, bytes]),
    # read at about the same time by the CTA of that head: 256 B requests give DRAM longer
    # bursts. For the pairs near copy bandwidth (K8V8 88 % of copy at B=32 L=32K).
    l2_prefetch: int = 0

    def __post_init__(self):
        if self.k_bits not in (2, 4, 8) or self.v_bits not in (2, 4, 8):
            raise ValueError(f"k_bits/v_bits must be 2, 4 or 8, got {self.k_bits}/{self.v_bits}")
        if self.head_dim not in (64, 128, 256):
            raise ValueError(f"head_dim must be 64, 128 or 256, got {self.head_dim}")
        if self.dtype not in ("bfloat16", "float16"):
            raise ValueError(f"dtype must be bfloat16 or float16, got {self.dtype}")
        if not 1 <= self.q_len <= 8:
            raise NotImplementedError(f"decode kernel supports q_len 1..8, got {self.q_len}")
        if self.columns > MAX_COLUMNS:
            raise NotImplementedError(
                f"decode kernel supports GQA ratio x q_len <= {MAX_COLUMNS} query rows per KV "
                f"head, got {self.qhead_per_kvhead} x {self.q_len} = {self.columns}")
        if self.early_prefetch and not self.prefetch:
            raise ValueError("early_prefetch needs prefetch=True (there is no prefetch to "
                             "move without it)")
        if self.table_lookahead and (not self.prefetch or self.smem_stages):
            raise ValueError("table_lookahead is a knob of the register prefetch "
                             "(prefetch=True, smem_stages=0); the smem ring always reads ahead")
        if self.smem_stages:
            if not self.prefetch:
                raise ValueError("smem_stages needs prefetch=True (the ring is a prefetch)")
            if not 2 <= self.smem_stages <= 4:
                raise NotImplementedError(f"smem_stages must be 0 or 2..4, got {self.smem_stages}")
            if min(self.k_seg_bytes, self.v_seg_bytes) < 4:
                raise NotImplementedError(
                    f"smem_stages: cp.async copies 4/8/16 bytes; this thread's K/V row "
                    f"segments are {self.k_seg_bytes}/{self.v_seg_bytes} bytes "
                    f"(k_bits={self.k_bits}, v_bits={self.v_bits}, head_dim={self.head_dim})")
        if self.l2_prefetch not in (0, 64, 128, 256):
            raise ValueError(f"l2_prefetch must be 0, 64, 128 or 256, got {self.l2_prefetch}")
        if self.tile_pairs and self.smem_stages != 4:
            raise NotImplementedError(
                f"tile_pairs is implemented for the 4-stage smem ring (2 tiles in flight "
                f"while a pair is computed), got smem_stages={self.smem_stages}")

    # derived geometry -------------------------------------------------------------
    @property
    def columns(self) -> int:
        return self.qhead_per_kvhead * self.q_len

    @property
    def n_tiles(self) -> int:  # column tiles of 8
        return (self.columns + 7) // 8

    @property
    def n_tiles_per_warp(self) -> int:
        # Registers per column tile: Q (D/8) + O (D/4) + S/m/l (8). Two tiles fit at D<=128.
        return min(self.n_tiles, 2 if self.head_dim <= 128 else 1)

    @property
    def total_groups(self) -> int:  # warp groups needed to cover all column tiles
        return -(-self.n_tiles // self.n_tiles_per_warp)

    @property
    def col_ctas(self) -> int:
        # More than 8 groups (only D=256 with G*q_len > 64) do not fit one CTA's register
        # file; the column groups are then spread over CTAs that re-read codes via L2.
        return -(-self.total_groups // 8)

    @property
    def n_groups(self) -> int:  # warp groups per CTA
        return -(-self.total_groups // self.col_ctas)

    @property
    def streams(self) -> int:
        return max(1, self.target_warps // self.n_groups)

    @property
    def num_warps(self) -> int:
        return self.n_groups * self.streams

    @property
    def k_seg_words(self) -> int:  # 32-bit words of one K row a thread loads
        return self.head_dim * self.k_bits // 128

    @property
    def v_seg_bytes(self) -> int:  # bytes of one V row a thread loads
        return self.head_dim * self.v_bits // 64

    @property
    def k_seg_bytes(self) -> int:  # bytes of one K row a thread loads (a quarter row)
        return self.head_dim * self.k_bits // 32

    @property
    def ring_stage_bytes(self) -> int:  # one warp's codes of one tile (smem ring stage)
        return 32 * (2 * self.k_seg_bytes + 4 * self.v_seg_bytes)

    @property
    def ring_offset(self) -> int:  # the ring lives after the tables / merge area
        return max(self.table_bytes, self.merge_bytes)

    @staticmethod
    def lut_bytes(bits: int) -> int:
        """One side's pair table (entries x 32 replicas x 4 bytes)."""
        return (16 if bits == 2 else 256) * 32 * 4

    @property
    def table_bytes(self) -> int:
        """Both sides' tables: prmt_lut's 256 x 256 bytes, else the two pair tables."""
        if self.prmt_lut:
            return PRMT_LUT_BYTES
        return self.lut_bytes(self.k_bits) + self.lut_bytes(self.v_bits)

    @property
    def merge_bytes(self) -> int:
        return (self.num_warps - self.n_groups) * self._merge_values * 32 * 4

    @property
    def _merge_values(self) -> int:  # per thread: m, l for 2 columns + O, per column tile
        return self.n_tiles_per_warp * (4 + self.head_dim // 16 * 4)

    @property
    def smem_bytes(self) -> int:
        return self.ring_offset + self.num_warps * self.smem_stages * self.ring_stage_bytes

    @classmethod
    def for_problem(cls, k_bits: int, v_bits: int, head_dim: int, qhead_per_kvhead: int,
                    q_len: int, dtype: str = "bfloat16",
                    rotate_query: bool = True) -> "DecodeConfig":
        """The shipped tuning for a problem. With one column tile per warp and few code
        words per thread and tile, prefetching the next tile into registers fits at
        occupancy (spill-free at these register caps, checked by the compile report):
        <= 8 words: 8 warps x 2 CTAs/SM (128 regs), <= 16 words: 4 warps x 3 CTAs/SM
        (168 regs), head_dim <= 128; 4-bit K at D=128 replaces the register prefetch by the
        smem ring (4 warps x 2 CTAs/SM). Everything else runs without prefetch, 8 warps,
        ptxas-chosen registers."""
        base = cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype, prefetch=False,
                   rotate_query=rotate_query)
        if not (base.n_tiles_per_warp == 1 and head_dim <= 128):
            # Two column tiles per warp, or D=256: left to itself ptxas caps these at 128
            # (8 warps) / 168 (5-6 warps) registers and spills 8-52 B (a CPU compile of all
            # 1512 shipped configs, 2026-12-07); a one-CTA-per-SM bound lets it take what it
            # needs (e.g. 212) spill-free, which is what ctas_per_sm() assumes for them.
            base = dataclasses.replace(base, min_ctas_per_sm=1)
        words = 2 * base.k_seg_words + 4 * max(1, base.v_seg_bytes // 4)
        # PRMT-addressed tables (prmt_lut) where they were measured faster (H100 2026-12-07,
        # docs/decode-notes.md §9: every timed shape for these pairs at D=128; K8V8 loses at
        # B >= 8 with its 129 registers; K2V8 / K8V2 and D 64 / 256 not measured)
        pl = head_dim == 128 and (k_bits, v_bits) in PRMT_LUT_MEASURED
        if head_dim <= 128 and base.n_tiles_per_warp == 1 and base.total_groups == 1:
            # Measured on the H100 2026-11-24 (docs/decode-notes.md §8, Hq32 Hkv8 D128 G4 q1,
            # L 8K-128K, B 1-32, same data): table_lookahead is faster for the four
            # prefetching pairs at B >= 8 (K4V4 +12-14 %, K4V2 +9-10 %, K2V4 +3-5 %, K2V2
            # +3-6 %; B=1 -1 .. +10 %); for 4-bit K at D=128 the smem ring with early
            # prefetch and tile bases is faster again at every timed shape (K4V4 another
            # +3-10 %, K4V2 +2-8 %), for K2V4 it loses at B >= 8.
            if words <= 8 and head_dim == 128 and q_len > 2:
                # K2V2 at q_len > 2: 8 warps x 2 CTAs (128 registers) spill 12-28 B (G=1
                # q_len 4/6/7, G=2 q_len 3/4), with or without prmt_lut; 4 warps x 3 CTAs
                # (168 registers) with the lookahead and tile bases is spill-free. That is
                # the K2V2 "pl_w4tb" candidate, timed at q_len 1 only (-3 .. -4 % at L=128K
                # B >= 8, +6 .. +11 % at L=8K against 8 warps); q_len > 2 is not timed.
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=4, prefetch=True, min_ctas_per_sm=3,
                           rotate_query=rotate_query, table_lookahead=True, tile_bases=pl,
                           prmt_lut=pl)
            if words <= 8:
                # K2V2 D128 at q_len 2/4 spills 16 B with the lookahead's registers
                # (prmt_lut: the lookahead spills 60 B next to the 2-bit byte tables)
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=8, prefetch=True, min_ctas_per_sm=2,
                           rotate_query=rotate_query, prmt_lut=pl,
                           table_lookahead=not (head_dim == 128 and (q_len > 1 or pl)))
            if words <= 16:
                if k_bits == 4 and head_dim == 128:
                    # K4V4: 3 stages beat 4 at every timed shape (+1-3 %); K4V2: 4 measured
                    return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                               target_warps=4, prefetch=True, min_ctas_per_sm=2,
                               rotate_query=rotate_query, smem_stages=3 if v_bits == 4 else 4,
                               early_prefetch=True, tile_bases=True, prmt_lut=pl)
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=4, prefetch=True, min_ctas_per_sm=3,
                           rotate_query=rotate_query, table_lookahead=True, prmt_lut=pl)
            if v_bits == 8 and k_bits < 8 and head_dim == 128:
                # 8-bit V with 2/4-bit K: too many words for the register prefetch, but the
                # smem ring at 8 warps x 1 CTA (3 stages, 140-164 KB) is 1.2-1.4x faster than
                # the plain loop at every timed shape (K2V8 B=32 L=128K 3790 -> 2686 us,
                # K4V8 4023 -> 2883 us); with 8-bit K it is slower (K8V8 +35 %), not shipped
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=8, prefetch=True, min_ctas_per_sm=1,
                           rotate_query=rotate_query, smem_stages=3, early_prefetch=True,
                           tile_bases=True, prmt_lut=pl)
            if pl:  # K8V4: the plain loop with PRMT-addressed tables
                return dataclasses.replace(base, prmt_lut=True)
        return base

    @property
    def name(self) -> str:
        return (f"decode_k{self.k_bits}v{self.v_bits}_d{self.head_dim}_g{self.qhead_per_kvhead}"
                f"_q{self.q_len}_{self.dtype}_w{self.num_warps}{'_pf' if self.prefetch else ''}"
                f"{'_rq' if self.rotate_query else ''}{'_ep' if self.early_prefetch else ''}"
                f"{f'_ring{self.smem_stages}' if self.smem_stages else ''}"
                f"{'_btla' if self.table_lookahead else ''}{'_tb' if self.tile_bases else ''}"
                f"{'_pl' if self.prmt_lut else ''}{'_tp' if self.tile_pairs else ''}"
                f"{f'_l2p{self.l2_prefetch}' if self.l2_prefetch else ''}")


#: (k_bits, v_bits) whose shipped D=128 config uses prmt_lut (DecodeConfig.for_problem)
PRMT_LUT_MEASURED = frozenset({(4, 4), (2, 2), (4, 2), (2, 4), (4, 8), (8, 4)})

#: Opt-in candidate tunings per bit width (k_bits == v_bits, D <= 128, one column tile
#: per warp): DecodeConfig field overrides of the shipped config, checked and timed by
#: microbench/decode_probe.py and tests/gpu/test_decode.py; not used unless passed as
#: ``config``. Why these (docs/decode-notes.md §7): "early" takes the first tile's DRAM
#: latency off the B=1 critical path; "btla" the per-tile block-table wait and division;
#: "ring" keeps 3 tiles per warp in flight instead of 1 (K4V4: 4 warps x 2 CTAs, 98 KB
#: smem, 168 regs; K2V2: 4 warps x 3 CTAs, 30 KB, 156 regs; 0 spills on sm_90a).
#: The candidates measured before prmt_lut shipped keep the pair tables (prmt_lut=False):
#: they are the alternatives as measured (a 4-stage 2-bit ring next to the 64 KB PRMT
#: tables would not fit 3 CTAs per SM).
_RING = dict(target_warps=4, smem_stages=4, table_lookahead=False,  # the ring reads ahead itself
             prmt_lut=False)
_REGPF = dict(target_warps=4, min_ctas_per_sm=3, smem_stages=0, early_prefetch=False,
              tile_bases=False, table_lookahead=True, prmt_lut=False)
SPEED_CANDIDATES: dict[int, dict[str, dict]] = {
    # 4-bit K ships the ring at D=128: the alternatives are the register prefetch (the
    # previous default, with and without early prefetch) and the ring without tile bases
    4: {"regpf": dict(_REGPF),
        "regpf_early": dict(_REGPF, early_prefetch=True),
        "ring_notb": dict(tile_bases=False, prmt_lut=False),
        # the ring without the PRMT-addressed tables (the default until 2026-12-07; SASS
        # of the 3-tile ring loop 1549 instead of 1141 instructions)
        "nopl": dict(prmt_lut=False),
        # session 8, not yet measured: 6 warps per CTA instead of 4. The shipped ring runs 2
        # CTAs of 4 warps per SM (88 KB of smem each, 64 KB of it the tables; 3 CTAs do not
        # fit); 2 CTAs of 6 warps fit both the smem (100 KB each) and the registers (168 of
        # 170), so 12 warps per SM instead of 8 hide the latency of the serial per-tile chain
        # (K4V4 reads at 2.2 TB/s at B=8 L=32K, 73 % of copy: not memory-bound there)
        "w6": dict(target_warps=6),
        # session 9, not yet measured: two tiles per online-softmax step (tile_pairs, 4-stage
        # ring; SASS of the ring loop 351 instead of 380 per tile, 188 registers, 96 KB), and
        # the same at 6 warps (168 registers, 112 KB: 2 CTAs still fit)
        "tp": dict(smem_stages=4, tile_pairs=True),
        "w6tp": dict(target_warps=6, smem_stages=4, tile_pairs=True)},
    2: {"early": dict(early_prefetch=True, prmt_lut=False),
        "ring": dict(_RING, min_ctas_per_sm=3),
        "ring_early": dict(_RING, min_ctas_per_sm=3, early_prefetch=True),
        # prmt_lut's byte-indexed 2-bit tables (shipped 2026-12-07 at 8 warps x 2 CTAs,
        # where 128 registers fit neither the table lookahead (60 B spill) nor tile bases
        # (28 B); SASS per tile with the next tile's loads: 569 before, 381 shipped, 334
        # here). At 4 warps x 3 CTAs (168 registers) "pl_w4tb" has both, 0 spills; it is
        # faster at L=128K, B >= 8 (-3 .. -4 %) but slower at L=8K (+6 .. +11 %).
        # (The 3-stage ring, 335 per tile, needs 77 KB: 3 CTAs do not fit.)
        "pl_w4tb": dict(prmt_lut=True, target_warps=4, min_ctas_per_sm=3,
                        table_lookahead=True, tile_bases=True),
        # session 9, not yet measured: the 4-stage ring with PRMT tables and tile pairs at 6
        # warps x 2 CTAs (88 KB, 168 registers, 0 spills): SASS 299 per tile against the
        # shipped register prefetch's 381
        "pl_w6tp": dict(prmt_lut=True, target_warps=6, min_ctas_per_sm=2, smem_stages=4,
                        tile_pairs=True, table_lookahead=False, tile_bases=True,
                        early_prefetch=True)},
}


def tuned_config(k_bits: int, v_bits: int, head_dim: int, qhead_per_kvhead: int, q_len: int,
                 dtype: str = "bfloat16", rotate_query: bool = True,
                 **overrides) -> DecodeConfig:
    """The shipped tuning (DecodeConfig.for_problem) with DecodeConfig field overrides (an
    unknown field raises TypeError, an invalid combination the config's own error)."""
    return dataclasses.replace(
        DecodeConfig.for_problem(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                                 rotate_query=rotate_query), **overrides)


def candidate_config(k_bits: int, head_dim: int, qhead_per_kvhead: int, q_len: int,
                     name: str, dtype: str = "bfloat16", rotate_query: bool = True
                     ) -> DecodeConfig:
    """The shipped config for (k_bits == v_bits) with candidate ``name``'s overrides."""
    if k_bits not in SPEED_CANDIDATES or name not in SPEED_CANDIDATES[k_bits]:
        raise NotImplementedError(f"no speed candidate {name!r} for K{k_bits}V{k_bits}")
    shipped = DecodeConfig.for_problem(k_bits, k_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                                       rotate_query=rotate_query)
    if not shipped.prefetch:
        raise NotImplementedError(
            f"speed candidates modify the prefetching configs (D <= 128, G x q_len <= 8); "
            f"got D={head_dim}, G={qhead_per_kvhead}, q_len={q_len}")
    return dataclasses.replace(shipped, **SPEED_CANDIDATES[k_bits][name])


#: Per-CTA fixed cost (tables, Q, merge, partial write) in units of one warp-tile, fitted
#: to the device split sweep of 2026-11-23 (B=1, L=128K, K4V4: 1 wave of 48 splits 109 µs
#: vs 3 waves of 132 splits 196 µs).
CTA_OVERHEAD_TILES = 16


def ctas_per_sm(cfg: DecodeConfig) -> int:
    """Resident CTAs per SM the split heuristic assumes: the configured register cap, else
    2 for one column tile per warp at D <= 128 (126-128 registers in the compile report,
    except K2V8/K4V8 at 170-180, which then get one wave of half the CTAs), else 1."""
    if cfg.min_ctas_per_sm:
        return cfg.min_ctas_per_sm
    return 2 if cfg.n_tiles_per_warp == 1 and cfg.head_dim <= 128 else 1


#: Fewest tiles (of 16 tokens) per CTA the split heuristic allows (B=1, L=8K sweep of
#: 2026-11-23, without the in-kernel rotations: 16 splits best).
MIN_TILES_PER_CTA = 32


def choose_num_splits(batch: int, num_kv_heads: int, max_seqlen_k: int, cfg: DecodeConfig,
                      num_sms: int = NUM_SMS_H100,
                      cta_overhead_tiles: float = CTA_OVERHEAD_TILES,
                      min_tiles_per_cta: int = MIN_TILES_PER_CTA) -> int:
    """Split count from shapes only (no device reads, so CUDA-graph safe).

    Models the kernel time as waves x per-CTA time: with ``ctas = batch * Hkv * col_ctas *
    splits`` and ``slots = num_sms * ctas_per_sm`` resident CTAs, time(s) = ceil(ctas / slots)
    * (tiles / (s * streams) + CTA_OVERHEAD_TILES), minimised over s in [1, 256]; ties go
    to fewer splits (less partial-output traffic); each CTA keeps >= 32 tiles.
    ``max_seqlen_k`` is the block-table
    capacity, an upper bound of the real lengths. On the 2026-11-23 sweep this picks one
    full wave at B=1 (33-48 splits at 32K-128K) and several well-filled waves at B=32,
    where the former rule (two CTAs per SM) left a 1.3-wave tail."""
    base = max(1, batch * num_kv_heads * cfg.col_ctas)
    slots = num_sms * ctas_per_sm(cfg)
    tiles = -(-max(1, max_seqlen_k) // TOKENS_PER_TILE)
    # at least 32 tiles (512 tokens) per CTA: below that the measured time rose again even
    # inside one wave, for 4- and 8-warp CTAs alike (B=1, L=8K: 16 splits best)
    # (the two constants are arguments so the probe's split sweep can refit them)
    cap = max(1, min(256, tiles // min_tiles_per_cta))
    best, best_t = 1, None
    for s in range(1, cap + 1):
        t = -(-base * s // slots) * (tiles / (s * cfg.streams) + cta_overhead_tiles)
        if best_t is None or t < best_t * 0.999:
            best, best_t = s, t
    return best


# --------------------------------------------------------------------------- PTX helpers
def asm(ret, ops, text, cons, side=False):
    return llvm.inline_asm(ret, ops, text, cons, has_side_effects=side,
                           is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT)

def unpack(res, n, ty, wrap, loc, ip):
    return [wrap(llvm.extractvalue(ty(), res, [i], loc=loc, ip=ip)) for i in range(n)]

@dsl_user_op
def ld_global_words(addr, nbytes: int, l2_prefetch: int = 0, *, loc=None, ip=None):
    """Read-only global load of ``nbytes`` (2, 4, 8, 16, 32 or 64) at a 64-bit address
    aligned to min(nbytes, 16); returns max(1, nbytes // 4) Uint32 words. ``l2_prefetch``
    (64, 128 or 256; 0 = none): the .L2::<n>B prefetch-size hint (DecodeConfig.l2_prefetch)."""
    a = Int64(addr).ir_value(loc=loc, ip=ip)
    nc = f"nc.L2::{l2_prefetch}B" if l2_prefetch else "nc"
    if nbytes == 2:
        return [Uint32(asm(T.i32(), [a], f"ld.global.{nc}.u16 $0, [$1];", "=r,l"))]
    if nbytes == 4:
        return [Uint32(asm(T.i32(), [a], f"ld.global.{nc}.u32 $0, [$1];", "=r,l"))]
    if nbytes == 8:
        r = asm(llvm.StructType.get_literal([T.i32()] * 2), [a],
                f"ld.global.{nc}.v2.u32 {{$0,$1}}, [$2];", "=r,=r,l")
        return unpack(r, 2, T.i32, Uint32, loc, ip)
    words = []
    for off in range(0, nbytes, 16):
        r = asm(llvm.StructType.get_literal([T.i32()] * 4), [a],
                f"ld.global.{nc}.v4.u32 {{$0,$1,$2,$3}}, [$4+{off}];", "=r,=r,=r,=r,l")
        words += unpack(r, 4, T.i32, Uint32, loc, ip)
    return words

@dsl_user_op
def ld_global_u16(addr, *, loc=None, ip=None):
    return Uint32(asm(T.i32(), [Int64(addr).ir_value(loc=loc, ip=ip)],
                      "ld.global.nc.u16 $0, [$1];", "=r,l"))

@dsl_user_op
def ld_shared_u32(addr, *, loc=None, ip=None):
    return Uint32(asm(T.i32(), [Int32(addr).ir_value(loc=loc, ip=ip)],
                      "ld.shared.u32 $0, [$1];", "=r,r"))

@dsl_user_op
def ld_shared_v2_u32(addr, *, loc=None, ip=None):
    """Two words of shared memory (a pure load: free to schedule, like ld_shared_u32)."""
    r = asm(llvm.StructType.get_literal([T.i32()] * 2), [Int32(addr).ir_value(loc=loc, ip=ip)],
            "ld.shared.v2.u32 {$0,$1}, [$2];", "=r,=r,r")
    return unpack(r, 2, T.i32, Uint32, loc, ip)

@dsl_user_op
def ld_shared_words(addr, nbytes: int, *, loc=None, ip=None):
    """``nbytes`` (4, 8 or 16) of shared memory as Uint32 words. Marked side-effecting so
    LLVM keeps it after the cp.async.wait_group that makes the bytes visible (an asm
    without side effects may be moved across it)."""
    a = Int32(addr).ir_value(loc=loc, ip=ip)
    if nbytes == 4:
        return [Uint32(asm(T.i32(), [a], "ld.shared.u32 $0, [$1];", "=r,r", side=True))]
    n = nbytes // 4
    regs = ",".join(f"${i}" for i in range(n))
    r = asm(llvm.StructType.get_literal([T.i32()] * n), [a],
            f"ld.shared.v{n}.u32 {{{regs}}}, [${n}];", ",".join(["=r"] * n) + ",r", side=True)
    return unpack(r, n, T.i32, Uint32, loc, ip)

@dsl_user_op
def cp_async(smem_addr, gmem_addr, nbytes: int, l2_prefetch: int = 0, *, loc=None, ip=None):
    """Asynchronous global -> shared copy of 4, 8 or 16 bytes (both addresses aligned to
    ``nbytes``); 16-byte copies bypass L1 (.cg: streamed codes are read once).
    ``l2_prefetch``: as ld_global_words."""
    mode = "cg" if nbytes == 16 else "ca"
    hint = f".L2::{l2_prefetch}B" if l2_prefetch else ""
    asm(None, [Int32(smem_addr).ir_value(loc=loc, ip=ip),
               Int64(gmem_addr).ir_value(loc=loc, ip=ip)],
        f"cp.async.{mode}.shared.global{hint} [$0], [$1], {nbytes};", "r,l", side=True)

@dsl_user_op
def cp_async_commit(*, loc=None, ip=None):
    asm(None, [], "cp.async.commit_group;", "", side=True)

@dsl_user_op
def cp_async_wait(pending: int, *, loc=None, ip=None):
    """Wait until at most ``pending`` of this thread's committed cp.async groups are
    outstanding (their bytes are then visible to this thread)."""
    asm(None, [], f"cp.async.wait_group {pending};", "", side=True)

@dsl_user_op
def ld_shared_f32(addr, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Int32(addr).ir_value(loc=loc, ip=ip)],
                       "ld.shared.f32 $0, [$1];", "=f,r"))

@dsl_user_op
def st_shared_v4(addr, *words, loc=None, ip=None):
    """16 bytes to shared memory: four words, or one word replicated four times."""
    ws = words * 4 if len(words) == 1 else words
    asm(None, [Int32(addr).ir_value(loc=loc, ip=ip)]
        + [Uint32(w).ir_value(loc=loc, ip=ip) for w in ws],
        "st.shared.v4.u32 [$0], {$1,$2,$3,$4};", "r,r,r,r,r", side=True)

@dsl_user_op
def st_shared_f32(addr, v, *, loc=None, ip=None):
    asm(None, [Int32(addr).ir_value(loc=loc, ip=ip), Float32(v).ir_value(loc=loc, ip=ip)],
        "st.shared.f32 [$0], $1;", "r,f", side=True)

@dsl_user_op
def st_global_v2_f32(addr, a, b, *, loc=None, ip=None):
    asm(None, [Int64(addr).ir_value(loc=loc, ip=ip), Float32(a).ir_value(loc=loc, ip=ip),
               Float32(b).ir_value(loc=loc, ip=ip)],
        "st.global.v2.f32 [$0], {$1,$2};", "l,f,f", side=True)

@dsl_user_op
def mma_16816(acc, a, b, is_bf16: bool, *, loc=None, ip=None):
    """D = A(16x16) B(16x8) + C, fp32 accumulate; a: 4 regs, b: 2 regs, acc: 4 floats."""
    ty = "bf16" if is_bf16 else "f16"
    ops = ([Float32(x).ir_value(loc=loc, ip=ip) for x in acc]
           + [Uint32(x).ir_value(loc=loc, ip=ip) for x in a]
           + [Uint32(x).ir_value(loc=loc, ip=ip) for x in b])
    r = asm(llvm.StructType.get_literal([T.f32()] * 4), ops,
            f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 "
            "{$0,$1,$2,$3}, {$8,$9,$10,$11}, {$12,$13}, {$4,$5,$6,$7};",
            "=f,=f,=f,=f,f,f,f,f,r,r,r,r,r,r")
    return unpack(r, 4, T.f32, Float32, loc, ip)

@dsl_user_op
def movmatrix_trans(x, *, loc=None, ip=None):
    return Uint32(asm(T.i32(), [Uint32(x).ir_value(loc=loc, ip=ip)],
                      "movmatrix.sync.aligned.m8n8.trans.b16 $0, $1;", "=r,r"))

@dsl_user_op
def prmt(a, b, sel: int, *, loc=None, ip=None):
    return Uint32(asm(T.i32(), [Uint32(a).ir_value(loc=loc, ip=ip),
                                Uint32(b).ir_value(loc=loc, ip=ip)],
                      f"prmt.b32 $0, $1, $2, {sel:#x};", "=r,r,r"))

@dsl_user_op
def pack2(lo, hi, is_bf16: bool, *, loc=None, ip=None):
    """(lo, hi) fp32 -> one bf16x2 / f16x2 register, lo in bits 0-15 (round to nearest)."""
    ty = "bf16x2" if is_bf16 else "f16x2"
    return Uint32(asm(T.i32(), [Float32(hi).ir_value(loc=loc, ip=ip),
                                Float32(lo).ir_value(loc=loc, ip=ip)],
                      f"cvt.rn.{ty}.f32 $0, $1, $2;", "=r,f,f"))

@dsl_user_op
def ex2(x, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Float32(x).ir_value(loc=loc, ip=ip)],
                       "ex2.approx.ftz.f32 $0, $1;", "=f,f"))

@dsl_user_op
def lg2(x, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Float32(x).ir_value(loc=loc, ip=ip)],
                       "lg2.approx.ftz.f32 $0, $1;", "=f,f"))

@dsl_user_op
def bf16_bits_to_f32(x, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Uint32(x).ir_value(loc=loc, ip=ip)],
                       "{\n\t.reg .b32 t;\n\tshl.b32 t, $1, 16;\n\tmov.b32 $0, t;\n\t}",
                       "=f,r"))

@dsl_user_op
def unpack2_f32(w, is_bf16: bool, *, loc=None, ip=None):
    """One bf16x2 / f16x2 register -> (lo, hi) fp32 (exact)."""
    if is_bf16:
        text = "{\n\tshl.b32 $0, $2, 16;\n\tand.b32 $1, $2, 0xffff0000;\n\t}"
    else:
        text = ("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, $2;\n\tcvt.f32.f16 $0, l;"
                "\n\tcvt.f32.f16 $1, h;\n\t}")
    r = asm(llvm.StructType.get_literal([T.f32()] * 2), [Uint32(w).ir_value(loc=loc, ip=ip)],
            text, "=f,=f,r")
    return unpack(r, 2, T.f32, Float32, loc, ip)

@dsl_user_op
def fmax(a, b, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Float32(a).ir_value(loc=loc, ip=ip),
                                 Float32(b).ir_value(loc=loc, ip=ip)],
                       "max.f32 $0, $1, $2;", "=f,f,f"))

def select(cond, a, b, ty):
    return ty(cutlass.select_(cond, ty(a), ty(b)))


def fwht_f32(x, lane, lane_masks):
    """Unnormalised Walsh-Hadamard transform (codec stage order) of one row spread over the
    lanes of a warp, in place: ``x`` holds this lane's len(x) consecutive elements, and
    lanes differing in ``lane_masks[k]`` hold the halves of stage h = len(x) * mask (masks
    ascending). Each stage maps (a, b) = (x[i], x[i+h]) to (a + b, a - b) in fp32 — the same
    additions in the same order as ``codec.fwht``, however the work is distributed.
    Every lane of the warp must execute it (full-mask shuffles)."""
    n = len(x)
    h = 1
    while h < n:
        for i in range(n):
            if i & h == 0:
                a, b = x[i], x[i + h]
                x[i], x[i + h] = a + b, a - b
        h *= 2
    for m in lane_masks:
        upper = (lane & m) != 0  # this lane holds the "b" half of every pair
        for i in range(n):
            other = cute.arch.shuffle_sync_bfly(x[i], offset=m)
            x[i] = select(upper, other - x[i], x[i] + other, Float32)
    return x



class ptx:
    """Namespace for the PTX helpers above (kernel code reads ptx.<name>)."""


for _name in ("ld_global_words", "ld_global_u16", "ld_shared_u32", "ld_shared_v2_u32",
              "ld_shared_words",
              "cp_async", "cp_async_commit", "cp_async_wait", "ld_shared_f32",
              "st_shared_v4", "st_shared_f32", "st_global_v2_f32", "mma_16816",
              "movmatrix_trans", "prmt", "pack2", "ex2", "lg2", "bf16_bits_to_f32", "fmax",
              "select", "unpack2_f32", "fwht_f32"):
    setattr(ptx, _name, staticmethod(globals()[_name]))


# --------------------------------------------------------------------------- kernel
NEG_INF = -math.inf


class TQDecodeSplitK:
    """The split-K decode kernel for one DecodeConfig (see the module docstring)."""

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg
        self.is_bf16 = cfg.dtype == "bfloat16"
        self.D = cfg.head_dim
        self.kb, self.vb = cfg.k_bits, cfg.v_bits
        self.G, self.QL = cfg.qhead_per_kvhead, cfg.q_len
        self.NTW = cfg.n_tiles_per_warp
        self.streams = cfg.streams
        self.num_threads = cfg.num_warps * 32
        self.k_lut_bytes = cfg.lut_bytes(cfg.k_bits)

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(self, mQ: cute.Tensor, mKc: cute.Tensor, mVc: cute.Tensor,
                 mKn: cute.Tensor, mVn: cute.Tensor, mBT: cute.Tensor, mSeq: cute.Tensor,
                 mKcb: cute.Tensor, mVcb: cute.Tensor, mKs: cute.Tensor, mOp: cute.Tensor,
                 mLp: cute.Tensor, scale_log2: Float32, window_left: Int32,
                 window_right: Int32, stream: cuda.CUstream):
        num_splits = mOp.shape[0]
        batch = mQ.shape[0]
        hkv = mKc.shape[2]
        self.kernel(mQ, mKc, mVc, mKn, mVn, mBT, mSeq, mKcb, mVcb, mKs, mOp, mLp, scale_log2,
                    window_left, window_right).launch(
            grid=[num_splits, hkv * self.cfg.col_ctas, batch], block=[self.num_threads, 1, 1],
            smem=self.cfg.smem_bytes, stream=stream,
            min_blocks_per_mp=self.cfg.min_ctas_per_sm,
            # the tables need shared memory: ask for the maximum carveout (percent); also
            # keeps the launch config free of device queries at compile time
            preferred_smem_carveout=100)

    # ------------------------------------------------------------------ helpers
    @cute.jit
    def build_lut(self, base: Int32, mCb: cute.Tensor, bits: cutlass.Constexpr[int],
                  tidx: Int32, stride: cutlass.Constexpr[int] = 128):
        """Replicated pair/single lookup table (see module docstring) at smem ``base``,
        entry e's 128 bytes at base + e * stride (prmt_lut: 256, the other side between).

        With prmt_lut (4/8-bit sides: 2048 slots, a multiple of the thread count) the loop
        is unrolled: its codebook loads are independent and all in flight at once, instead
        of one L1/L2 round trip per iteration (the build is on the critical path of the
        short CTAs of B=1 calls)."""
        n_entries = 16 if const_expr(bits == 2) else 256
        slots = n_entries * 8
        if const_expr(self.cfg.prmt_lut and slots % self.num_threads == 0):
            for k in cutlass.range_constexpr(slots // self.num_threads):
                self.lut_slot(base, mCb, bits, stride, tidx + k * self.num_threads)
        else:
            for idx in cutlass.range(tidx, slots, self.num_threads):
                self.lut_slot(base, mCb, bits, stride, idx)

    @cute.jit
    def lut_slot(self, base: Int32, mCb: cute.Tensor, bits: cutlass.Constexpr[int],
                 stride: cutlass.Constexpr[int], idx: Int32):
        """16-byte slot idx % 8 (4 replicas) of table entry idx // 8."""
        e = idx // 8
        word = Uint32(0)
        if const_expr(bits == 4):
            word = ptx.pack2(mCb[e & 15], mCb[e >> 4], self.is_bf16)
        elif const_expr(bits == 2):
            word = ptx.pack2(mCb[e & 3], mCb[e >> 2], self.is_bf16)
        else:
            word = ptx.pack2(mCb[e], mCb[e], self.is_bf16)
        ptx.st_shared_v4(base + e * stride + (idx % 8) * 16, word)

    @cute.jit
    def build_byte_table2(self, base: Int32, mCb: cute.Tensor, tidx: Int32):
        """prmt_lut, 2-bit side at smem ``base``: byte value e's 16 replicas of (pair(c0, c1),
        pair(c2, c3)) at base + 256 e + 8 r, where c_i = (e >> 2i) & 3 (what the codes are:
        k_bytes / v_bytes)."""
        # the 4 centroids once in registers: the loop's iterations then wait on no load (a
        # 64 KB build per CTA is on the critical path of short B=1 splits)
        c0 = Float32(mCb[0])
        c1 = Float32(mCb[1])
        c2 = Float32(mCb[2])
        c3 = Float32(mCb[3])
        for idx in cutlass.range(tidx, 256 * 8, self.num_threads):
            e = idx // 8
            v = []
            for f in cutlass.range_constexpr(4):  # code f of byte e, as three selects
                c = code_field(e, f)
                lo = ptx.select((c & 1) == 1, c1, c0, Float32)
                hi = ptx.select((c & 1) == 1, c3, c2, Float32)
                v.append(ptx.select((c & 2) == 2, hi, lo, Float32))
            w0 = ptx.pack2(v[0], v[1], self.is_bf16)
            w1 = ptx.pack2(v[2], v[3], self.is_bf16)
            ptx.st_shared_v4(base + e * 256 + (idx % 8) * 16, w0, w1, w0, w1)

    @staticmethod
    def prmt_lane_offset(bits: int, lane: Int32) -> Int32:
        """prmt_lut: a lane's replica slot in a side's 128 bytes per entry (2-bit byte table:
        16 x 8 bytes, read per half warp; pair / single tables: 32 x 4 bytes)."""
        return (lane % 16) * 8 if bits == 2 else lane * 4

    @cute.jit
    def build_prmt_side(self, base: Int32, mCb: cute.Tensor, bits: cutlass.Constexpr[int],
                        tidx: Int32):
        """prmt_lut: one side's 128-byte entries at base + 256 e."""
        if const_expr(bits == 2):
            self.build_byte_table2(base, mCb, tidx)
        else:
            self.build_lut(base, mCb, bits, tidx, 256)

    @cute.jit
    def prmt_entry(self, lb, word, j: cutlass.Constexpr[int]) -> Int32:
        """prmt_lut: shared-memory address of this lane's slot in the entry of byte j of
        ``word``; ``lb`` = (side base, lane slot offset < 256). The offset (byte << 8) |
        slot is one PRMT of the word and the slot (its upper bytes supply the zeros), and
        ptxas folds the base into LDS [R+UR]."""
        base, lane_off = lb
        return base + Int32(ptx.prmt(lane_off, word, byte_offset_selector(j)))

    @cute.jit
    def byte_pairs(self, lb, word, j: cutlass.Constexpr[int]):
        """prmt_lut, 2-bit side: the two operand registers of byte j of ``word``; ``lb`` =
        (side base, the lane's 8-byte slot offset)."""
        w = ptx.ld_shared_v2_u32(self.prmt_entry(lb, word, j))
        return w[0], w[1]

    @cute.jit
    def k_bytes(self, w_g, w_g8):
        """prmt_lut, 2-bit K (and 4-bit V, see v_frag): code words of rows g and g+8
        (nibble p = pair p) -> (even, odd), code_interleave.interleave_nibbles; K-chunk k's
        A registers 0/1 are byte k % 4 of even word k // 4, registers 2/3 that of odd."""
        return interleave_nibbles(w_g, w_g8, Uint32)

    @cute.jit
    def v_bytes(self, w_a, w_b):
        """prmt_lut, 2-bit V: code words of tokens a and b -> (even, odd),
        code_interleave.interleave_2bit: byte j of even holds M-tile 2j's registers (row g:
        d = 2i of tokens a, b; row g+8: d = 2i + 1), of odd M-tile 2j + 1."""
        return interleave_2bit(w_a, w_b, Uint32)

    @cute.jit
    def lut(self, lane_base: Int32, index):
        return ptx.ld_shared_u32(lane_base + Int32(index) * 128)

    @cute.jit
    def lookup_byte(self, lb, word, j: cutlass.Constexpr[int]):
        """The 4/8-bit table word for byte j of ``word``. ``lb``: the lane's base in the
        side's pair table, or with prmt_lut (side base, lane * 4) (prmt_entry)."""
        if const_expr(self.cfg.prmt_lut):
            return ptx.ld_shared_u32(self.prmt_entry(lb, word, j))
        return self.lut(lb, self.byte_of(word, j))

    @cute.jit
    def byte_of(self, w, k: cutlass.Constexpr[int]):
        """Byte k of word w as a table index (0..255). (Extracting bytes 1/2 with one PRMT
        instead of shift + and cut the K4V4 tile loop from 439 to 410 SASS instructions but
        measured 2-5 % slower on the H100, 2026-11-23: docs/decode-notes.md.)"""
        return (w >> (8 * k)) & 0xFF

    @cute.jit
    def k_pair(self, lb, words, p: cutlass.Constexpr[int]):
        """Packed (elem 2p, elem 2p+1) of a thread's K row segment (nibble table for 2-bit;
        prmt_lut's 2-bit K goes through k_frag's byte table instead)."""
        if const_expr(self.kb == 4):
            return self.lookup_byte(lb, words[p // 4], p % 4)
        elif const_expr(self.kb == 2):
            return self.lut(lb, (words[p // 8] >> (4 * (p % 8))) & 0xF)
        else:
            w = words[p // 2]
            lo = self.lookup_byte(lb, w, 2 * (p % 2))
            hi = self.lookup_byte(lb, w, 2 * (p % 2) + 1)
            return ptx.prmt(lo, hi, 0x5410)

    @cute.jit
    def k_frag(self, lb, kw, kx, k: cutlass.Constexpr[int]):
        """A operand (4 regs) of QK K-chunk k from the K words of rows g, g+8 (``kw``) or,
        prmt_lut with 2-bit K, their interleaved bytes ``kx`` (k_bytes)."""
        if const_expr(self.cfg.prmt_lut and self.kb == 2):
            r0, r1 = self.byte_pairs(lb, kx[k // 4][0], k % 4)
            r2, r3 = self.byte_pairs(lb, kx[k // 4][1], k % 4)
            return [r0, r1, r2, r3]
        return [self.k_pair(lb, kw[0], 2 * k), self.k_pair(lb, kw[1], 2 * k),
                self.k_pair(lb, kw[0], 2 * k + 1), self.k_pair(lb, kw[1], 2 * k + 1)]

    @cute.jit
    def v_frag(self, lb, vw, vx, i: cutlass.Constexpr[int]):
        """A operand (4 regs) of Oᵀ M-tile i from the V words of tokens 2c,2c+1,2c+8,2c+9:
        rows g / g+8 = elements 2i / 2i+1 of the thread's V segment. With prmt_lut and 2- or
        4-bit V, ``vx[tp][w]`` holds word w of token pair tp re-interleaved (v_bytes /
        k_bytes), so each lookup is already the register of both tokens."""
        regs = []
        for tp in cutlass.range_constexpr(2):  # token pairs (2c, 2c+1), (2c+8, 2c+9)
            w0 = vw[2 * tp]
            w1 = vw[2 * tp + 1]
            if const_expr(self.vb == 8):
                a0 = self.lookup_byte(lb, w0[(2 * i) // 4], (2 * i) % 4)
                a1 = self.lookup_byte(lb, w1[(2 * i) // 4], (2 * i) % 4)
                b0 = self.lookup_byte(lb, w0[(2 * i + 1) // 4], (2 * i + 1) % 4)
                b1 = self.lookup_byte(lb, w1[(2 * i + 1) // 4], (2 * i + 1) % 4)
                regs.append(ptx.prmt(a0, a1, 0x5410))
                regs.append(ptx.prmt(b0, b1, 0x5410))
            elif const_expr(self.cfg.prmt_lut and self.vb == 4):
                # nibble 2i / 2i+1 of word i // 4 -> byte i % 4 of even / odd
                regs.append(self.lookup_byte(lb, vx[tp][i // 4][0], i % 4))
                regs.append(self.lookup_byte(lb, vx[tp][i // 4][1], i % 4))
            elif const_expr(self.cfg.prmt_lut):
                # 2-bit: M-tile i = nibble i of word i // 8, n = i % 8 -> byte n // 2 of the
                # even (n even) or odd interleaved word
                r_g, r_g8 = self.byte_pairs(lb, vx[tp][i // 8][(i % 8) % 2], (i % 8) // 2)
                regs.extend([r_g, r_g8])
            else:
                if const_expr(self.vb == 4):
                    x0 = self.lut(lb, self.byte_of(w0[i // 4], i % 4))
                    x1 = self.lut(lb, self.byte_of(w1[i // 4], i % 4))
                else:
                    x0 = self.lut(lb, (w0[i // 8] >> (4 * (i % 8))) & 0xF)
                    x1 = self.lut(lb, (w1[i // 8] >> (4 * (i % 8))) & 0xF)
                regs.append(ptx.prmt(x0, x1, 0x5410))
                regs.append(ptx.prmt(x0, x1, 0x7632))
        # mma A order: (row g, k lo), (row g+8, k lo), (row g, k hi), (row g+8, k hi)
        return [regs[0], regs[1], regs[2], regs[3]]

    @cute.jit
    def load_tile(self, tile: Int32, mBT: cute.Tensor, mKc: cute.Tensor, mVc: cute.Tensor,
                  mKn: cute.Tensor, mVn: cute.Tensor, b: Int32, h: Int32, g: Int32, c: Int32,
                  kbuf: cute.Tensor, vbuf: cute.Tensor, nbuf: cute.Tensor):
        """Issue every global load of one 16-token tile into register buffers: K rows g and
        g+8 (this thread's segment), V tokens 2c, 2c+1, 2c+8, 2c+9, and the 4 norms."""
        self.load_tile_at(mBT[b, tile * 16 // mKc.shape[1]], (tile * 16) % mKc.shape[1], mKc,
                          mVc, mKn, mVn, h, g, c, kbuf, vbuf, nbuf)

    @cute.jit
    def tile_addr(self, mT: cute.Tensor, phys: Int32, r0: Int32, row: Int32, h: Int32,
                  col):
        """Byte address of mT[phys, r0 + row, h, col] (3-mode norms: no col). With
        cfg.tile_bases it is (phys, r0) -> base plus (row, h, col) -> offset, two crd2idx
        whose second depends only on per-CTA values, so the compiler computes it once
        outside the tile loop; otherwise one crd2idx of the whole coordinate."""
        if const_expr(self.cfg.tile_bases):
            if const_expr(col is None):
                base = cute.crd2idx((phys, r0, 0), mT.layout)
                off = cute.crd2idx((0, row, h), mT.layout)
            else:
                base = cute.crd2idx((phys, r0, 0, 0), mT.layout)
                off = cute.crd2idx((0, row, h, col), mT.layout)
            return (mT.iterator + base + off).toint()
        if const_expr(col is None):
            return (mT.iterator + cute.crd2idx((phys, r0 + row, h), mT.layout)).toint()
        return (mT.iterator + cute.crd2idx((phys, r0 + row, h, col), mT.layout)).toint()

    @cute.jit
    def load_tile_at(self, phys: Int32, r0: Int32, mKc: cute.Tensor, mVc: cute.Tensor,
                     mKn: cute.Tensor, mVn: cute.Tensor, h: Int32, g: Int32, c: Int32,
                     kbuf: cute.Tensor, vbuf: cute.Tensor, nbuf: cute.Tensor):
        """load_tile with the tile's physical block ``phys`` already read and its first
        token's row ``r0`` in that block."""
        D = self.D
        KW = max(1, D * self.kb // 128)
        VW = max(1, D * self.vb // 256)
        for rr in cutlass.range_constexpr(2):
            a = self.tile_addr(mKc, phys, r0, g + 8 * rr, h, c * (D * self.kb // 32))
            words = ptx.ld_global_words(a, D * self.kb // 32, self.cfg.l2_prefetch)
            for w in cutlass.range_constexpr(KW):
                kbuf[rr * KW + w] = words[w]
        for tt in cutlass.range_constexpr(4):
            tok = 2 * c + (tt % 2) + 8 * (tt // 2)
            a = self.tile_addr(mVc, phys, r0, tok, h, g * (D * self.vb // 64))
            words = ptx.ld_global_words(a, D * self.vb // 64, self.cfg.l2_prefetch)
            for w in cutlass.range_constexpr(VW):
                vbuf[tt * VW + w] = words[w]
        for rr in cutlass.range_constexpr(2):
            ka = self.tile_addr(mKn, phys, r0, g + 8 * rr, h, None)
            va = self.tile_addr(mVn, phys, r0, g + 8 * rr, h, None)
            nbuf[rr] = ptx.ld_global_u16(ka)
            nbuf[2 + rr] = ptx.ld_global_u16(va)

    @cute.jit
    def rotate_q(self, qf: cute.Tensor, mKs: cute.Tensor, lane: Int32, c: Int32):
        """Rotate the loaded query fragments in registers: q' = H (s ⊙ q) / sqrt(D), fp32,
        rounded once to the operand type (what the former separate GEMM computed, up to the
        fp32 summation order). The 4 lanes c = 0..3 of a column hold its quarters, so the
        last two WHT stages (h = D/4, D/2) are lane-xor 1 and 2 shuffles. Columns past NCOL
        hold zeros and stay zero; every lane runs the shuffles."""
        D = self.D
        QW = D // 4  # elements per lane
        sign = [mKs[c * QW + e] for e in range(QW)]
        inv_sqrt_d = Float32(1.0 / math.sqrt(D))
        for j in cutlass.range_constexpr(self.NTW):
            x = []
            for w in cutlass.range_constexpr(D // 8):
                lo, hi = ptx.unpack2_f32(qf[j, w], self.is_bf16)
                x += [lo * sign[2 * w], hi * sign[2 * w + 1]]
            x = ptx.fwht_f32(x, lane, (1, 2))
            for w in cutlass.range_constexpr(D // 8):
                qf[j, w] = ptx.pack2(x[2 * w] * inv_sqrt_d, x[2 * w + 1] * inv_sqrt_d,
                                     self.is_bf16)

    @cute.jit
    def load_q(self, qf: cute.Tensor, mQ: cute.Tensor, mKs: cute.Tensor, b: Int32, h: Int32,
               grp: Int32, lane: Int32, g: Int32, c: Int32):
        """Q fragments (B operand): column n = 8j + g, elements [c*D/4, (c+1)*D/4); rotated
        in registers unless the caller passes a rotated query."""
        D, G, QL, NTW = self.D, self.G, self.QL, self.NTW
        NCOL = G * QL
        for j in cutlass.range_constexpr(NTW):
            n = (grp * NTW + j) * 8 + g
            if n < NCOL:
                hq = h * G + n // QL
                qaddr = (mQ.iterator + cute.crd2idx((b, n % QL, hq, c * (D // 4)),
                                                    mQ.layout)).toint()
                words = ptx.ld_global_words(qaddr, D // 2)
                for w in cutlass.range_constexpr(D // 8):
                    qf[j, w] = words[w]
            else:
                for w in cutlass.range_constexpr(D // 8):
                    qf[j, w] = Uint32(0)
        if const_expr(self.cfg.rotate_query):
            self.rotate_q(qf, mKs, lane, c)

    @cute.jit
    def split_range(self, rng: cute.Tensor, mSeq: cute.Tensor, b: Int32, split: Int32,
                    num_splits: Int32, window_left: Int32, window_right: Int32):
        """This split's tile range and the fully visible token range: rng = (L, lo_full,
        hi_full, t_begin, t_end)."""
        QL = self.QL
        L = mSeq[b]
        wl = window_left
        wr = window_right
        lo_tok = Int32(0)
        lo_full = Int32(0)
        hi_full = L
        if wl >= 0:
            lo_tok = cutlass.max(L - QL - wl, Int32(0))
            lo_full = L - 1 - wl
        if wr >= 0:
            hi_full = cutlass.min(L, L - QL + 1 + wr)
        tile_lo = lo_tok // 16
        tile_hi = (L + 15) // 16
        ntiles = cutlass.max(tile_hi - tile_lo, Int32(0))
        per = (ntiles + num_splits - 1) // num_splits
        t_begin = tile_lo + split * per
        t_end = cutlass.min(t_begin + per, tile_hi)
        rng[0] = L
        rng[1] = lo_full
        rng[2] = hi_full
        rng[3] = t_begin
        rng[4] = t_end

    @cute.jit
    def tile_step(self, t0: Int32, kt: cute.Tensor, vt: cute.Tensor, nt: cute.Tensor,
                  qf: cute.Tensor, acc_s: cute.Tensor, acc_o: cute.Tensor,
                  row_m: cute.Tensor, row_l: cute.Tensor, col_lo: cute.Tensor,
                  col_hi: cute.Tensor, k_lb, v_lb, L: Int32, lo_full: Int32,
                  hi_full: Int32, scale_log2: Float32, g: Int32):
        """One 16-token tile from its code words (kt: K rows g, g+8; vt: V tokens 2c, 2c+1,
        2c+8, 2c+9) and norms (nt: K g, K g+8, V g, V g+8): QK, masking, online softmax,
        PV into the register state."""
        self.tiles_step([t0], [kt], [vt], [nt], qf, acc_s, acc_o, row_m, row_l, col_lo,
                        col_hi, k_lb, v_lb, L, lo_full, hi_full, scale_log2, g)

    @cute.jit
    def tiles_step(self, t0s, kts, vts, nts, qf: cute.Tensor, acc_s: cute.Tensor,
                   acc_o: cute.Tensor, row_m: cute.Tensor, row_l: cute.Tensor,
                   col_lo: cute.Tensor, col_hi: cute.Tensor, k_lb, v_lb, L: Int32,
                   lo_full: Int32, hi_full: Int32, scale_log2: Float32, g: Int32):
        """len(t0s) (1 or 2, DecodeConfig.tile_pairs) 16-token tiles with one online-softmax
        step: QK and masking per tile into acc_s[j, 4 * n + r], one column maximum, one
        rescale of O and the row sums for all of them, then PV per tile. A tile's code words
        and norms are as tile_step's."""
        D, NTW = self.D, self.NTW
        NT = len(t0s)
        KCH = D // 16
        KW = max(1, D * self.kb // 128)
        VW = max(1, D * self.vb // 256)
        vws = []
        vscs = []
        for n in cutlass.range_constexpr(NT):
            kt, vt, nt, t0 = kts[n], vts[n], nts[n], t0s[n]
            kw = [[kt[rr * KW + w] for w in range(KW)] for rr in range(2)]
            vw = [[vt[tt * VW + w] for w in range(VW)] for tt in range(4)]
            kn = [nt[0], nt[1]]
            vn = [nt[2], nt[3]]
            kx = None
            vx = None
            if const_expr(self.cfg.prmt_lut):
                if const_expr(self.kb == 2):  # codes re-interleaved for the byte table
                    kx = [self.k_bytes(kw[0][w], kw[1][w]) for w in range(KW)]
                if const_expr(self.vb == 2):
                    vx = [[self.v_bytes(vw[2 * tp][w], vw[2 * tp + 1][w]) for w in range(VW)]
                          for tp in range(2)]
                elif const_expr(self.vb == 4):  # the token pairs' nibbles side by side
                    vx = [[self.k_bytes(vw[2 * tp][w], vw[2 * tp + 1][w]) for w in range(VW)]
                          for tp in range(2)]
            vws.append((vw, vx))
            # ---- Sᵀ = K̃ Qᵀ
            for j in cutlass.range_constexpr(NTW):
                for r in cutlass.range_constexpr(4):
                    acc_s[j, 4 * n + r] = Float32(0.0)
            for k in cutlass.range_constexpr(KCH):
                a_frag = self.k_frag(k_lb, kw, kx, k)
                for j in cutlass.range_constexpr(NTW):
                    res = ptx.mma_16816([acc_s[j, 4 * n], acc_s[j, 4 * n + 1],
                                         acc_s[j, 4 * n + 2], acc_s[j, 4 * n + 3]],
                                        a_frag, [qf[j, 2 * k], qf[j, 2 * k + 1]],
                                        self.is_bf16)
                    for r in cutlass.range_constexpr(4):
                        acc_s[j, 4 * n + r] = res[r]

            # ---- row scales (norms of tokens >= L are zeroed: never read garbage; with
            # tile pairs that also covers a second tile past this split's end, whose tokens
            # may be valid ones of the next split)
            ksc = []
            vsc = []
            for rr in cutlass.range_constexpr(2):
                valid = t0 + g + 8 * rr < L
                ksc.append(ptx.select(valid, ptx.bf16_bits_to_f32(kn[rr]) * scale_log2,
                                      Float32(0.0), Float32))
                vsc.append(ptx.select(valid, ptx.bf16_bits_to_f32(vn[rr]), Float32(0.0),
                                      Float32))
            vscs.append(vsc)
            for j in cutlass.range_constexpr(NTW):
                for r in cutlass.range_constexpr(4):
                    acc_s[j, 4 * n + r] = acc_s[j, 4 * n + r] * ksc[r // 2]
            need_mask = (t0 < lo_full) | (t0 + 16 > hi_full)
            if need_mask:
                for j in cutlass.range_constexpr(NTW):
                    for r in cutlass.range_constexpr(4):
                        tok = t0 + g + 8 * (r // 2)
                        vis = (tok >= col_lo[j, r % 2]) & (tok <= col_hi[j, r % 2])
                        acc_s[j, 4 * n + r] = ptx.select(vis, acc_s[j, 4 * n + r],
                                                         Float32(NEG_INF), Float32)

        # ---- online softmax per column, P' = P * vnorm, Oᵀ += Ṽᵀ P'ᵀ
        pbs = [[] for _ in range(NT)]
        for j in cutlass.range_constexpr(NTW):
            alpha = []
            m_use = []
            for e in cutlass.range_constexpr(2):
                mx = ptx.fmax(acc_s[j, e], acc_s[j, 2 + e])
                for q in cutlass.range_constexpr(2, 2 * NT):
                    mx = ptx.fmax(mx, acc_s[j, 2 * q + e])
                for off in cutlass.range_constexpr(3):
                    mx = ptx.fmax(mx, cute.arch.shuffle_sync_bfly(mx, offset=4 << off))
                m_new = ptx.fmax(row_m[j, e], mx)
                mu = ptx.select(m_new == Float32(NEG_INF), Float32(0.0), m_new, Float32)
                alpha.append(ptx.ex2(row_m[j, e] - mu))
                m_use.append(mu)
                row_m[j, e] = m_new
            p = []
            for r in cutlass.range_constexpr(4 * NT):
                p.append(ptx.ex2(acc_s[j, r] - m_use[r % 2]))
            for e in cutlass.range_constexpr(2):
                lsum = row_l[j, e] * alpha[e] + p[e] + p[2 + e]
                for q in cutlass.range_constexpr(2, 2 * NT):
                    lsum = lsum + p[2 * q + e]
                row_l[j, e] = lsum
            for i in cutlass.range_constexpr(KCH):
                for r in cutlass.range_constexpr(4):
                    acc_o[j, i, r] = acc_o[j, i, r] * alpha[r % 2]
            for n in cutlass.range_constexpr(NT):
                vsc = vscs[n]
                x0 = ptx.pack2(p[4 * n] * vsc[0], p[4 * n + 1] * vsc[0], self.is_bf16)
                x1 = ptx.pack2(p[4 * n + 2] * vsc[1], p[4 * n + 3] * vsc[1], self.is_bf16)
                pbs[n].append([ptx.movmatrix_trans(x0), ptx.movmatrix_trans(x1)])
        for n in cutlass.range_constexpr(NT):
            vw, vx = vws[n]
            for i in cutlass.range_constexpr(KCH):
                a_frag = self.v_frag(v_lb, vw, vx, i)
                for j in cutlass.range_constexpr(NTW):
                    res = ptx.mma_16816([acc_o[j, i, 0], acc_o[j, i, 1], acc_o[j, i, 2],
                                         acc_o[j, i, 3]], a_frag, pbs[n][j], self.is_bf16)
                    for r in cutlass.range_constexpr(4):
                        acc_o[j, i, r] = res[r]

    @cute.jit
    def issue_tile_async(self, phys: Int32, r0: Int32, stage: Int32, mKc: cute.Tensor,
                         mVc: cute.Tensor, mKn: cute.Tensor, mVn: cute.Tensor, h: Int32,
                         g: Int32, c: Int32, lane: Int32, nring: cute.Tensor,
                         slot: cutlass.Constexpr[int]):
        """Smem ring (cfg.smem_stages): cp.async this thread's code bytes of one tile (the
        same bytes load_tile reads) into its own slots of ring stage ``stage``, and the 4
        norms (2-byte values: no cp.async size fits) into register slot ``slot`` of nring.
        Slot layout: piece p of K row rr at ((rr*nK + p)*32 + lane) * kpiece, V likewise
        after the K area, so a quarter/half warp's LDS.128/LDS.64 reads 128 contiguous
        bytes (conflict-free). Only the issuing thread reads its slots back, after its own
        cp.async.wait_group: no barrier needed."""
        cfg = self.cfg
        kseg, vseg = cfg.k_seg_bytes, cfg.v_seg_bytes
        kpiece, vpiece = min(16, kseg), min(16, vseg)
        for rr in cutlass.range_constexpr(2):
            a = self.tile_addr(mKc, phys, r0, g + 8 * rr, h, c * kseg)
            for p in cutlass.range_constexpr(kseg // kpiece):
                ptx.cp_async(stage + ((rr * (kseg // kpiece) + p) * 32 + lane) * kpiece,
                             a + p * kpiece, kpiece, cfg.l2_prefetch)
        v_area = stage + 2 * kseg * 32
        for tt in cutlass.range_constexpr(4):
            tok = 2 * c + (tt % 2) + 8 * (tt // 2)
            a = self.tile_addr(mVc, phys, r0, tok, h, g * vseg)
            for p in cutlass.range_constexpr(vseg // vpiece):
                ptx.cp_async(v_area + ((tt * (vseg // vpiece) + p) * 32 + lane) * vpiece,
                             a + p * vpiece, vpiece, cfg.l2_prefetch)
        for rr in cutlass.range_constexpr(2):
            ka = self.tile_addr(mKn, phys, r0, g + 8 * rr, h, None)
            va = self.tile_addr(mVn, phys, r0, g + 8 * rr, h, None)
            nring[slot, rr] = ptx.ld_global_u16(ka)
            nring[slot, 2 + rr] = ptx.ld_global_u16(va)

    @cute.jit
    def read_stage(self, stage: Int32, lane: Int32, kt: cute.Tensor, vt: cute.Tensor):
        """This thread's code words of a landed ring stage (layout: issue_tile_async)."""
        cfg = self.cfg
        kseg, vseg = cfg.k_seg_bytes, cfg.v_seg_bytes
        kpiece, vpiece = min(16, kseg), min(16, vseg)
        for rr in cutlass.range_constexpr(2):
            for p in cutlass.range_constexpr(kseg // kpiece):
                words = ptx.ld_shared_words(
                    stage + ((rr * (kseg // kpiece) + p) * 32 + lane) * kpiece, kpiece)
                for w in cutlass.range_constexpr(kpiece // 4):
                    kt[rr * (kseg // 4) + p * (kpiece // 4) + w] = words[w]
        v_area = stage + 2 * kseg * 32
        for tt in cutlass.range_constexpr(4):
            for p in cutlass.range_constexpr(vseg // vpiece):
                words = ptx.ld_shared_words(
                    v_area + ((tt * (vseg // vpiece) + p) * 32 + lane) * vpiece, vpiece)
                for w in cutlass.range_constexpr(vpiece // 4):
                    vt[tt * (vseg // 4) + p * (vpiece // 4) + w] = words[w]

    @cute.jit
    def walk_step(self, walk: cute.Tensor, bs: Int32):
        """Advance walk = (block index, row in block) of a warp's tile by one step of
        ``streams`` tiles without a division (walk[2], walk[3] = that step's whole blocks
        and remaining rows, divided once per CTA): the per-tile signed division by the
        runtime block size is ~28 SASS instructions with an I2F/MUFU.RCP/F2I chain."""
        r = walk[1] + walk[3]
        blk = walk[0] + walk[2]
        if r >= bs:
            r = r - bs
            blk = blk + 1
        walk[0] = blk
        walk[1] = r

    @cute.jit
    def prefetch_prologue(self, t_begin: Int32, t_end: Int32, stream: Int32, ring: Int32,
                          mBT: cute.Tensor, mKc: cute.Tensor, mVc: cute.Tensor,
                          mKn: cute.Tensor, mVn: cute.Tensor, b: Int32, h: Int32, g: Int32,
                          c: Int32, lane: Int32, kbuf: cute.Tensor, vbuf: cute.Tensor,
                          nbuf: cute.Tensor, nring: cute.Tensor, physn: cute.Tensor,
                          walk: cute.Tensor):
        """Issue the loads of this warp's first tile (register prefetch) or first S-1 tiles
        (smem ring; S-2 with tile pairs; then also the block-table entry of the next tile,
        read one tile before its codes are issued so the address never waits for it)."""
        S = self.cfg.smem_stages
        ahead = S - 2 if self.cfg.tile_pairs else S - 1
        first = t_begin + stream
        if const_expr(S == 0):
            if first < t_end:
                self.load_tile(first, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kbuf, vbuf, nbuf)
            if const_expr(self.cfg.table_lookahead):
                self.start_walk(first + self.streams, t_end, mBT, b, mKc.shape[1], physn, walk)
        else:
            bs = mKc.shape[1]
            for s in cutlass.range_constexpr(ahead):
                tile = first + s * self.streams
                if tile < t_end:
                    self.issue_tile_async(mBT[b, tile * 16 // bs], (tile * 16) % bs,
                                          ring + s * self.cfg.ring_stage_bytes, mKc, mVc, mKn,
                                          mVn, h, g, c, lane, nring, s)
                ptx.cp_async_commit()
            self.start_walk(first + ahead * self.streams, t_end, mBT, b, bs, physn, walk)

    @cute.jit
    def start_walk(self, nt: Int32, t_end: Int32, mBT: cute.Tensor, b: Int32, bs: Int32,
                   physn: cute.Tensor, walk: cute.Tensor):
        """walk = (block index, row) of tile ``nt`` (the next one the loop issues) and the
        step of ``streams`` tiles; physn[0] = its physical block (read now, used one tile
        later)."""
        walk[0] = nt * 16 // bs
        walk[1] = (nt * 16) % bs
        walk[2] = self.streams * 16 // bs
        walk[3] = (self.streams * 16) % bs
        physn[0] = Int32(0)
        if nt < t_end:
            physn[0] = mBT[b, walk[0]]

    # ------------------------------------------------------------------ kernel
    @cute.kernel
    def kernel(self, mQ: cute.Tensor, mKc: cute.Tensor, mVc: cute.Tensor, mKn: cute.Tensor,
               mVn: cute.Tensor, mBT: cute.Tensor, mSeq: cute.Tensor, mKcb: cute.Tensor,
               mVcb: cute.Tensor, mKs: cute.Tensor, mOp: cute.Tensor, mLp: cute.Tensor,
               scale_log2: Float32, window_left: Int32, window_right: Int32):
        D, G, QL, NTW = self.D, self.G, self.QL, self.NTW
        NCOL = G * QL
        KCH = D // 16  # QK K-chunks == PV M-tiles
        tidx, _, _ = cute.arch.thread_idx()
        split, hy, b = cute.arch.block_idx()
        # lets a combine launched with programmatic dependent launch (CombineConfig.pdl) be
        # scheduled once every CTA of this grid has started; that combine still waits for
        # this grid's completion (griddepcontrol.wait). A no-op for any other next launch.
        cute.arch.griddepcontrol_launch_dependents()
        h = hy // self.cfg.col_ctas
        num_splits = mOp.shape[0]
        warp = tidx // 32
        lane = tidx % 32
        g = lane // 4
        c = lane % 4
        # global column group (the merge slots below use the CTA-local one)
        grp_local = warp // self.streams
        grp = (hy % self.cfg.col_ctas) * self.cfg.n_groups + grp_local
        stream = warp % self.streams

        smem = SmemAllocator()
        sbase = smem.allocate(self.cfg.smem_bytes, 128).toint()
        if const_expr(self.cfg.prmt_lut):
            # (side base, the lane's slot offset in the side's 128 bytes per entry):
            # lookup_byte / byte_pairs
            k_lb = (sbase, self.prmt_lane_offset(self.kb, lane))
            v_lb = (sbase + 128, self.prmt_lane_offset(self.vb, lane))
            self.build_prmt_side(sbase, mKcb, self.kb, tidx)
            self.build_prmt_side(sbase + 128, mVcb, self.vb, tidx)
        else:
            k_lb = sbase + lane * 4
            v_lb = sbase + self.k_lut_bytes + lane * 4
            self.build_lut(sbase, mKcb, self.kb, tidx)
            self.build_lut(sbase + self.k_lut_bytes, mVcb, self.vb, tidx)

        KW = max(1, D * self.kb // 128)  # words per K row segment
        VW = max(1, D * self.vb // 256)  # words per V token segment
        S = self.cfg.smem_stages
        # register buffers of the next tile (software pipelining, cfg.prefetch; with the smem
        # ring they hold the current tile's words read back from shared memory)
        kbuf = cute.make_rmem_tensor((2 * KW,), Uint32)
        vbuf = cute.make_rmem_tensor((4 * VW,), Uint32)
        nbuf = cute.make_rmem_tensor((4,), Uint32)
        # smem ring (cfg.smem_stages): this warp's stages, norms per stage, next block entry
        ring = sbase + self.cfg.ring_offset + warp * (max(S, 1) * self.cfg.ring_stage_bytes)
        nring = cute.make_rmem_tensor((max(S, 1), 4), Uint32)
        physn = cute.make_rmem_tensor((1,), Int32)
        walk = cute.make_rmem_tensor((4,), Int32)  # block-index walk (walk_step)
        qf = cute.make_rmem_tensor((NTW, D // 8), Uint32)
        rng = cute.make_rmem_tensor((5,), Int32)
        if const_expr(self.cfg.early_prefetch):
            # the first tile's loads go out before the Q load and rotation, so their DRAM
            # latency overlaps the rotation instead of following it (B=1: one short CTA
            # per SM slot, that latency is on the op's critical path)
            self.split_range(rng, mSeq, b, split, num_splits, window_left, window_right)
            self.prefetch_prologue(rng[3], rng[4], stream, ring, mBT, mKc, mVc, mKn, mVn, b,
                                   h, g, c, lane, kbuf, vbuf, nbuf, nring, physn, walk)
            self.load_q(qf, mQ, mKs, b, h, grp, lane, g, c)
        else:
            self.load_q(qf, mQ, mKs, b, h, grp, lane, g, c)
            self.split_range(rng, mSeq, b, split, num_splits, window_left, window_right)
        L = rng[0]
        lo_full = rng[1]
        hi_full = rng[2]
        t_begin = rng[3]
        t_end = rng[4]
        wl = window_left
        wr = window_right

        # per-column visible token range [col_lo, col_hi] (for straddling tiles)
        col_lo = cute.make_rmem_tensor((NTW, 2), Int32)
        col_hi = cute.make_rmem_tensor((NTW, 2), Int32)
        for j in cutlass.range_constexpr(NTW):
            for e in cutlass.range_constexpr(2):
                n = (grp * NTW + j) * 8 + 2 * c + e
                qpos = L - QL + n % QL
                col_lo[j, e] = Int32(0)
                col_hi[j, e] = L - 1
                if wl >= 0:
                    col_lo[j, e] = qpos - wl
                if wr >= 0:
                    col_hi[j, e] = cutlass.min(qpos + wr, L - 1)

        # ---- state
        acc_o = cute.make_rmem_tensor((NTW, KCH, 4), Float32)
        row_m = cute.make_rmem_tensor((NTW, 2), Float32)
        row_l = cute.make_rmem_tensor((NTW, 2), Float32)
        for j in cutlass.range_constexpr(NTW):
            for e in cutlass.range_constexpr(2):
                row_m[j, e] = Float32(NEG_INF)
                row_l[j, e] = Float32(0.0)
            for i in cutlass.range_constexpr(KCH):
                for r in cutlass.range_constexpr(4):
                    acc_o[j, i, r] = Float32(0.0)
        acc_s = cute.make_rmem_tensor((NTW, 8 if self.cfg.tile_pairs else 4), Float32)

        cute.arch.sync_threads()

        if const_expr(self.cfg.prefetch and not self.cfg.early_prefetch):
            self.prefetch_prologue(t_begin, t_end, stream, ring, mBT, mKc, mVc, mKn, mVn, b,
                                   h, g, c, lane, kbuf, vbuf, nbuf, nring, physn, walk)

        if const_expr(S > 0):
            # the loop is unrolled by S so every ring stage and norm slot index is static
            # (a rotating register ring would need moves that wait for the loads). A step
            # computes P tiles (tile_pairs: 2, stages u and u+1) while the P tiles issued into
            # the stages the previous step freed fly: S - P tiles in flight.
            P = 2 if const_expr(self.cfg.tile_pairs) else 1
            bs = mKc.shape[1]
            SB = self.cfg.ring_stage_bytes
            # (the second tile's buffers are plain names, not a list: a list of register
            # tensors in the loop changed the single-tile kernel's SASS)
            kbuf2 = cute.make_rmem_tensor((2 * KW,), Uint32) if const_expr(P == 2) else None
            vbuf2 = cute.make_rmem_tensor((4 * VW,), Uint32) if const_expr(P == 2) else None
            nbuf2 = cute.make_rmem_tensor((4,), Uint32) if const_expr(P == 2) else None
            for base in cutlass.range(t_begin + stream, t_end, S * self.streams, unroll=1):
                for u in cutlass.range_constexpr(0, S, P):
                    tile = base + u * self.streams
                    if tile < t_end:
                        for d in cutlass.range_constexpr(P):
                            nxt = tile + (S - P + d) * self.streams
                            if nxt < t_end:
                                self.issue_tile_async(physn[0], walk[1],
                                                      ring + ((u + S - P + d) % S) * SB, mKc,
                                                      mVc, mKn, mVn, h, g, c, lane, nring,
                                                      (u + S - P + d) % S)
                                self.walk_step(walk, bs)
                                nn = nxt + self.streams
                                if nn < t_end:
                                    physn[0] = mBT[b, walk[0]]
                            ptx.cp_async_commit()
                        ptx.cp_async_wait(S - P)
                        self.read_stage(ring + u * SB, lane, kbuf, vbuf)
                        for r in cutlass.range_constexpr(4):
                            nbuf[r] = nring[u, r]
                        if const_expr(P == 2):
                            self.read_stage(ring + (u + 1) * SB, lane, kbuf2, vbuf2)
                            for r in cutlass.range_constexpr(4):
                                nbuf2[r] = nring[u + 1, r]
                        if const_expr(P == 1):
                            self.tile_step(tile * 16, kbuf, vbuf, nbuf, qf, acc_s, acc_o, row_m,
                                           row_l, col_lo, col_hi, k_lb, v_lb, L, lo_full,
                                           hi_full, scale_log2, g)
                        else:
                            # a second tile past the split's end has a stage of stale codes
                            # (finite table entries); t0 = L zeroes its norms and masks it
                            tile2 = tile + self.streams
                            t0b = ptx.select(tile2 < t_end, tile2 * 16, L, Int32)
                            self.tiles_step([tile * 16, t0b], [kbuf, kbuf2], [vbuf, vbuf2],
                                            [nbuf, nbuf2], qf, acc_s, acc_o, row_m, row_l,
                                            col_lo, col_hi, k_lb, v_lb, L, lo_full, hi_full,
                                            scale_log2, g)
            ptx.cp_async_wait(0)
        else:
            kcur = cute.make_rmem_tensor((2 * KW,), Uint32)
            vcur = cute.make_rmem_tensor((4 * VW,), Uint32)
            ncur = cute.make_rmem_tensor((4,), Uint32)
            for tile in cutlass.range(t_begin + stream, t_end, self.streams, unroll=1):
                if const_expr(self.cfg.prefetch):
                    for w in cutlass.range_constexpr(2 * KW):
                        kcur[w] = kbuf[w]
                    for w in cutlass.range_constexpr(4 * VW):
                        vcur[w] = vbuf[w]
                    for r in cutlass.range_constexpr(4):
                        ncur[r] = nbuf[r]
                    nxt = tile + self.streams
                    if nxt < t_end:
                        if const_expr(self.cfg.table_lookahead):
                            # the block-table entry was read one tile ago: the code loads
                            # are issued without waiting for it
                            self.load_tile_at(physn[0], walk[1], mKc, mVc, mKn, mVn, h, g,
                                              c, kbuf, vbuf, nbuf)
                            self.walk_step(walk, mKc.shape[1])
                            nn = nxt + self.streams
                            if nn < t_end:
                                physn[0] = mBT[b, walk[0]]
                        else:
                            self.load_tile(nxt, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kbuf,
                                           vbuf, nbuf)
                else:
                    self.load_tile(tile, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kcur, vcur, ncur)
                self.tile_step(tile * 16, kcur, vcur, ncur, qf, acc_s, acc_o, row_m, row_l,
                               col_lo, col_hi, k_lb, v_lb, L, lo_full, hi_full, scale_log2, g)

        # ---- finish: row sums over the 8 lanes of a column
        for j in cutlass.range_constexpr(NTW):
            for e in cutlass.range_constexpr(2):
                s = row_l[j, e]
                for off in cutlass.range_constexpr(3):
                    s = s + cute.arch.shuffle_sync_bfly(s, offset=4 << off)
                row_l[j, e] = s

        # ---- merge the streams of a group through shared memory (reuses the tables)
        if const_expr(self.streams > 1):
            NV = self.cfg._merge_values
            cute.arch.sync_threads()
            slot = grp_local * (self.streams - 1) + stream - 1
            if stream > 0:
                base = sbase + slot * NV * 128 + lane * 4
                v = 0
                for j in cutlass.range_constexpr(NTW):
                    for e in cutlass.range_constexpr(2):
                        ptx.st_shared_f32(base + (v + e) * 128, row_m[j, e])
                        ptx.st_shared_f32(base + (v + 2 + e) * 128, row_l[j, e])
                    v += 4
                    for i in cutlass.range_constexpr(KCH):
                        for r in cutlass.range_constexpr(4):
                            ptx.st_shared_f32(base + (v + r) * 128, acc_o[j, i, r])
                        v += 4
            cute.arch.sync_threads()
            if stream == 0:
                for s_other in cutlass.range_constexpr(1, self.streams):
                    base = sbase + (grp_local * (self.streams - 1) + s_other - 1) * NV * 128 \
                        + lane * 4
                    v = 0
                    for j in cutlass.range_constexpr(NTW):
                        fa = []
                        fb = []
                        for e in cutlass.range_constexpr(2):
                            m2 = ptx.ld_shared_f32(base + (v + e) * 128)
                            l2 = ptx.ld_shared_f32(base + (v + 2 + e) * 128)
                            m_new = ptx.fmax(row_m[j, e], m2)
                            mu = ptx.select(m_new == Float32(NEG_INF), Float32(0.0), m_new,
                                            Float32)
                            a1 = ptx.ex2(row_m[j, e] - mu)
                            a2 = ptx.ex2(m2 - mu)
                            row_l[j, e] = row_l[j, e] * a1 + l2 * a2
                            row_m[j, e] = m_new
                            fa.append(a1)
                            fb.append(a2)
                        v += 4
                        for i in cutlass.range_constexpr(KCH):
                            for r in cutlass.range_constexpr(4):
                                o2 = ptx.ld_shared_f32(base + (v + r) * 128)
                                acc_o[j, i, r] = acc_o[j, i, r] * fa[r % 2] + o2 * fb[r % 2]
                            v += 4

        # ---- write the normalised partial output and LSE of this split
        if stream == 0:
            for j in cutlass.range_constexpr(NTW):
                for e in cutlass.range_constexpr(2):
                    n = (grp * NTW + j) * 8 + 2 * c + e
                    if n < NCOL:
                        qi = n % QL
                        hq = h * G + n // QL
                        lsum = row_l[j, e]
                        has = lsum > Float32(0.0)
                        inv = ptx.select(has, Float32(1.0) / lsum, Float32(0.0), Float32)
                        for i in cutlass.range_constexpr(KCH):
                            d0 = g * (D // 8) + 2 * i
                            oa = (mOp.iterator + cute.crd2idx((split, b, qi, hq, d0),
                                                              mOp.layout)).toint()
                            ptx.st_global_v2_f32(oa, acc_o[j, i, e] * inv,
                                                 acc_o[j, i, 2 + e] * inv)
                        if g == 0:
                            lse = (row_m[j, e] + ptx.lg2(lsum)) * Float32(math.log(2.0))
                            mLp[split, b, qi, hq] = ptx.select(has, lse, Float32(NEG_INF),
                                                               Float32)




# --------------------------------------------------------------------------- compile
def _fake(dtype, ndim: int, align: int, static_last: int | None = None):
    """A CuTe fake tensor with symbolic sizes and strides except a unit last stride.

    Strides carry no divisibility promise (block tables and norms of any geometry must
    work); the kernel only relies on the base alignment (``align`` bytes) and on the row
    sizes it knows from the config."""
    import cutlass.cute as cute

    shape = tuple(cute.sym_int() for _ in range(ndim - 1)) + (
        static_last if static_last is not None else cute.sym_int(),)
    stride = tuple(cute.sym_int64() for _ in range(ndim - 1)) + (1,)
    return cute.runtime.make_fake_tensor(dtype, shape, stride=stride, assumed_align=align)


def _compile_args(cfg: DecodeConfig):
    import cutlass
    from cutlass import Float32, Int32
    import cutlass.cute as cute

    qdt = cutlass.BFloat16 if cfg.dtype == "bfloat16" else cutlass.Float16
    d = cfg.head_dim
    return (
        _fake(qdt, 4, 16, d),                                   # q (rotated)
        _fake(cutlass.Uint8, 4, 16, d * cfg.k_bits // 8),       # k_cache
        _fake(cutlass.Uint8, 4, 16, d * cfg.v_bits // 8),       # v_cache
        _fake(cutlass.BFloat16, 3, 2),                          # k_norm
        _fake(cutlass.BFloat16, 3, 2),                          # v_norm
        _fake(cutlass.Int32, 2, 4),                             # block_table
        _fake(cutlass.Int32, 1, 4),                             # seqused_k
        _fake(Float32, 1, 4, 1 << cfg.k_bits),                  # k_codebook
        _fake(Float32, 1, 4, 1 << cfg.v_bits),                  # v_codebook
        _fake(Float32, 1, 4, d),                                # k_signs
        _fake(Float32, 5, 16, d),                               # partial out
        _fake(Float32, 4, 4),                                   # partial lse
        Float32(1.0), Int32(-1), Int32(-1),
        cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True),
    )


def compile_decode(cfg: DecodeConfig):
    """Compile one config (works without a GPU given CUTE_DSL_ARCH=sm_90a)."""
    import cutlass.cute as cute

    return cute.compile(TQDecodeSplitK(cfg), *_compile_args(cfg), options="--enable-tvm-ffi")


_COMPILED: dict[DecodeConfig, object] = {}


def get_compiled(cfg: DecodeConfig):
    fn = _COMPILED.get(cfg)
    if fn is None:
        fn = _COMPILED[cfg] = compile_decode(cfg)
    return fn


#: Configs compiled by the CPU compile report / test: every bit pair at D=128 for the
#: benchmark shape (GQA 4, q_len 1), plus the geometry extremes.
def _report_configs() -> list[DecodeConfig]:
    fp = DecodeConfig.for_problem
    cfgs = [fp(kb, vb, 128, 4, 1) for kb in (2, 4, 8) for vb in (2, 4, 8)]
    cfgs += [fp(4, 4, 64, 4, 1), fp(8, 8, 256, 4, 1), fp(4, 4, 128, 4, 4), fp(4, 4, 128, 1, 1),
             fp(4, 4, 128, 16, 8), fp(4, 4, 256, 16, 8), fp(8, 8, 256, 16, 8),
             fp(2, 2, 64, 16, 1), fp(4, 4, 128, 4, 1, "float16"),
             DecodeConfig(4, 4, 128, 4, 1, prefetch=False), DecodeConfig(2, 2, 128, 4, 1, prefetch=False),
             fp(4, 4, 128, 4, 1, rotate_query=False)]
    # opt-in K4V4 speed candidates (not shipped; docs/decode-notes.md §7, §10, §11): the
    # register prefetch, the ring without tile bases, the ring without the PRMT tables (the
    # previous default), the ring at 6 warps x 2 CTAs (168 of 170 registers), tile pairs
    cfgs += [dataclasses.replace(fp(4, 4, 128, 4, 1), **SPEED_CANDIDATES[4][n])
             for n in ("regpf", "ring_notb", "nopl", "w6", "tp", "w6tp")]
    cfgs.append(dataclasses.replace(fp(2, 2, 128, 4, 1), **SPEED_CANDIDATES[2]["pl_w6tp"]))
    # the L2 prefetch-size hint on the code loads (opt-in, session 9): LDG (K8V8's plain
    # loop) and cp.async (the K4V4 ring)
    cfgs += [dataclasses.replace(fp(kb, kb, 128, 4, 1), l2_prefetch=256) for kb in (8, 4)]
    # shipped prmt_lut geometries beyond the benchmark shape: K2V2 q_len 2 (8 warps, no
    # lookahead) and q_len 4 (4 warps x 3 CTAs), K4V8 q_len 8; shapes that spilled 8-52 B
    # before the one-CTA bound of two-column-tile / D=256 configs
    cfgs += [fp(2, 2, 128, 4, 2), fp(2, 2, 128, 2, 4), fp(4, 8, 128, 1, 8)]
    cfgs += [fp(2, 2, 64, 3, 4), fp(8, 2, 64, 4, 6), fp(2, 2, 128, 16, 5),
             fp(4, 2, 256, 16, 6)]
    # the byte-indexed 2-bit table where not shipped (opt-in): the 4-warp candidate, D 64
    # with q_len 4 and D 256 (no prefetch there)
    cfgs += [dataclasses.replace(fp(2, 2, 128, 4, 1), **SPEED_CANDIDATES[2]["pl_w4tb"]),
             dataclasses.replace(fp(2, 2, 64, 4, 4), prmt_lut=True),
             dataclasses.replace(fp(2, 2, 256, 4, 1), prmt_lut=True)]
    # PRMT-addressed tables where not shipped (opt-in): K8V8 (both geometries), K2V8, K8V2,
    # two column tiles, D 64 / 256
    cfgs += [dataclasses.replace(fp(8, 8, 128, 4, 1), prmt_lut=True),
             dataclasses.replace(fp(8, 8, 128, 4, 1), prmt_lut=True, target_warps=4,
                                 min_ctas_per_sm=3),
             dataclasses.replace(fp(2, 8, 128, 4, 1), prmt_lut=True),
             dataclasses.replace(fp(8, 2, 128, 4, 1), prmt_lut=True),
             dataclasses.replace(fp(4, 4, 128, 16, 8), prmt_lut=True),
             dataclasses.replace(fp(4, 4, 64, 4, 1), prmt_lut=True),
             dataclasses.replace(fp(8, 8, 256, 16, 8), prmt_lut=True)]
    return cfgs


def compile_configs():
    """KernelConfig entries for fa4_tq.kernels.compile (the CPU compile report)."""
    from .compile import KernelConfig

    out = []
    for cfg in _report_configs():
        variant = (f"g{cfg.qhead_per_kvhead}q{cfg.q_len}_{cfg.dtype}_w{cfg.num_warps}"
                   f"{'_pf' if cfg.prefetch else ''}{'_rq' if cfg.rotate_query else ''}"
                   f"{'_ep' if cfg.early_prefetch else ''}"
                   f"{f'_ring{cfg.smem_stages}' if cfg.smem_stages else ''}"
                   f"{'_btla' if cfg.table_lookahead else ''}{'_tb' if cfg.tile_bases else ''}"
                   f"{'_pl' if cfg.prmt_lut else ''}")

        def build(cfg=cfg):
            import cutlass.cute as cute

            return (functools.partial(cute.compile, options="--enable-tvm-ffi"),
                    (TQDecodeSplitK(cfg),) + _compile_args(cfg))

        out.append(KernelConfig("decode", cfg.k_bits, cfg.v_bits, cfg.head_dim, variant, build))
    from . import decode_combine

    out += decode_combine.compile_configs()
    return out


def register_configs(register) -> None:
    for c in compile_configs():
        register(c)


# --------------------------------------------------------------------------- entry point
# Launch the combine with programmatic dependent launch (decode_combine.CombineConfig.pdl).
# Opt-in until measured on the device (microbench/decode_probe.py --pdl).
COMBINE_PDL = False


def decode_cuda(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook,
                v_codebook, k_signs, v_signs, softmax_scale, causal, window_left, window_right,
                rotate_query, unrotate_output, *, num_splits=0, out=None, lse=None,
                config=None, combine_pdl=None):
    """tqkv.decode on CUDA tensors (arguments already validated by fa4_tq.validate).

    Two launches: the split-K kernel (rotates the query in its Q load) and the combine
    (un-rotates the merged fp32 rows with a warp WHT and writes q.dtype). Returns
    (out [B, q_len, Hq, D] in q.dtype, lse fp32 [B, Hq, q_len]). ``out`` / ``lse`` may be
    given (preallocated, e.g. for CUDA graphs or NaN-poisoned tests); ``config`` overrides
    the shipped tuning (benchmarks) and must agree with ``rotate_query``; ``combine_pdl``
    overrides COMBINE_PDL (launch the combine as a programmatic dependent). The fp32 partials
    come from torch's caching allocator: capture-safe."""
    from . import decode_combine

    batch, q_len, hq, d = q.shape
    hkv = k_cache.shape[2]
    k_bits = codebook_bits(k_codebook)
    v_bits = codebook_bits(v_codebook)
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise NotImplementedError(f"decode kernel supports bf16/fp16 queries, got {q.dtype}")
    rotate_query = bool(rotate_query)
    if config is None:
        config = DecodeConfig.for_problem(k_bits, v_bits, d, hq // hkv, q_len,
                                          "bfloat16" if q.dtype == torch.bfloat16 else "float16",
                                          rotate_query=rotate_query)
    elif config.rotate_query != rotate_query:
        raise ValueError(f"config.rotate_query={config.rotate_query} but the call asks "
                         f"rotate_query={rotate_query}")
    cfg = config
    if out is None:
        out = torch.empty(batch, q_len, hq, d, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(batch, hq, q_len, dtype=torch.float32, device=q.device)
    if batch == 0:
        return out, lse
    if num_splits == 0:
        num_splits = choose_num_splits(batch, hkv, block_table.shape[1] * k_cache.shape[1], cfg)

    q = q.contiguous()  # no copy when already contiguous (16-byte aligned rows for the loads)
    o_part = torch.empty(num_splits, batch, q_len, hq, d, dtype=torch.float32, device=q.device)
    l_part = torch.empty(num_splits, batch, q_len, hq, dtype=torch.float32, device=q.device)
    wr = 0 if causal else window_right
    get_compiled(cfg)(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k,
                      k_codebook, v_codebook, k_signs, o_part, l_part,
                      float(softmax_scale) * LOG2E, int(window_left), int(wr))
    decode_combine.combine(o_part, l_part, out, lse,
                           v_signs if unrotate_output else None,
                           pdl=COMBINE_PDL if combine_pdl is None else bool(combine_pdl))
    return out, lse
