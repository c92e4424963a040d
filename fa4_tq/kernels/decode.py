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

Masking: token j is visible to the query at position p = qi + L - q_len iff
p - window_left <= j <= p + window_right (each bound only if >= 0; causal means
window_right = 0) and j < L. Only tiles that straddle a bound pay for the mask. Norms of
tokens past L are zeroed, so garbage in unused cache rows can never reach the output.
"""

from __future__ import annotations

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

NUM_SMS_H100 = 132
TOKENS_PER_TILE = 16
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

    @staticmethod
    def lut_bytes(bits: int) -> int:
        return (16 if bits == 2 else 256) * 32 * 4

    @property
    def merge_bytes(self) -> int:
        return (self.num_warps - self.n_groups) * self._merge_values * 32 * 4

    @property
    def _merge_values(self) -> int:  # per thread: m, l for 2 columns + O, per column tile
        return self.n_tiles_per_warp * (4 + self.head_dim // 16 * 4)

    @property
    def smem_bytes(self) -> int:
        return max(self.lut_bytes(self.k_bits) + self.lut_bytes(self.v_bits), self.merge_bytes)

    @classmethod
    def for_problem(cls, k_bits: int, v_bits: int, head_dim: int, qhead_per_kvhead: int,
                    q_len: int, dtype: str = "bfloat16",
                    rotate_query: bool = True) -> "DecodeConfig":
        """The shipped tuning for a problem. With one column tile per warp and few code
        words per thread and tile, prefetching the next tile into registers fits at
        occupancy (spill-free at these register caps, checked by the compile report):
        <= 8 words: 8 warps x 2 CTAs/SM (128 regs), <= 16 words: 4 warps x 3 CTAs/SM
        (168 regs), head_dim <= 128. Everything else runs without prefetch, 8 warps, ptxas-chosen registers."""
        base = cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype, prefetch=False,
                   rotate_query=rotate_query)
        words = 2 * base.k_seg_words + 4 * max(1, base.v_seg_bytes // 4)
        if head_dim <= 128 and base.n_tiles_per_warp == 1 and base.total_groups == 1:
            if words <= 8:
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=8, prefetch=True, min_ctas_per_sm=2,
                           rotate_query=rotate_query)
            if words <= 16:
                return cls(k_bits, v_bits, head_dim, qhead_per_kvhead, q_len, dtype,
                           target_warps=4, prefetch=True, min_ctas_per_sm=3,
                           rotate_query=rotate_query)
        return base

    @property
    def name(self) -> str:
        return (f"decode_k{self.k_bits}v{self.v_bits}_d{self.head_dim}_g{self.qhead_per_kvhead}"
                f"_q{self.q_len}_{self.dtype}_w{self.num_warps}{'_pf' if self.prefetch else ''}"
                f"{'_rq' if self.rotate_query else ''}")


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


def choose_num_splits(batch: int, num_kv_heads: int, max_seqlen_k: int, cfg: DecodeConfig,
                      num_sms: int = NUM_SMS_H100) -> int:
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
    cap = max(1, min(256, tiles // 32))
    best, best_t = 1, None
    for s in range(1, cap + 1):
        t = -(-base * s // slots) * (tiles / (s * cfg.streams) + CTA_OVERHEAD_TILES)
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
def ld_global_words(addr, nbytes: int, *, loc=None, ip=None):
    """Read-only global load of ``nbytes`` (2, 4, 8, 16, 32 or 64) at a 64-bit address
    aligned to min(nbytes, 16); returns max(1, nbytes // 4) Uint32 words."""
    a = Int64(addr).ir_value(loc=loc, ip=ip)
    if nbytes == 2:
        return [Uint32(asm(T.i32(), [a], "ld.global.nc.u16 $0, [$1];", "=r,l"))]
    if nbytes == 4:
        return [Uint32(asm(T.i32(), [a], "ld.global.nc.u32 $0, [$1];", "=r,l"))]
    if nbytes == 8:
        r = asm(llvm.StructType.get_literal([T.i32()] * 2), [a],
                "ld.global.nc.v2.u32 {$0,$1}, [$2];", "=r,=r,l")
        return unpack(r, 2, T.i32, Uint32, loc, ip)
    words = []
    for off in range(0, nbytes, 16):
        r = asm(llvm.StructType.get_literal([T.i32()] * 4), [a],
                f"ld.global.nc.v4.u32 {{$0,$1,$2,$3}}, [$4+{off}];", "=r,=r,=r,=r,l")
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
def ld_shared_f32(addr, *, loc=None, ip=None):
    return Float32(asm(T.f32(), [Int32(addr).ir_value(loc=loc, ip=ip)],
                       "ld.shared.f32 $0, [$1];", "=f,r"))

@dsl_user_op
def st_shared_v4(addr, w, *, loc=None, ip=None):
    asm(None, [Int32(addr).ir_value(loc=loc, ip=ip)]
        + [Uint32(w).ir_value(loc=loc, ip=ip)] * 4,
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


for _name in ("ld_global_words", "ld_global_u16", "ld_shared_u32", "ld_shared_f32",
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
                  tidx: Int32):
        """Replicated pair/single lookup table (see module docstring) at smem ``base``."""
        n_entries = 16 if const_expr(bits == 2) else 256
        for idx in cutlass.range(tidx, n_entries * 8, self.num_threads):
            e = idx // 8
            word = Uint32(0)
            if const_expr(bits == 4):
                word = ptx.pack2(mCb[e & 15], mCb[e >> 4], self.is_bf16)
            elif const_expr(bits == 2):
                word = ptx.pack2(mCb[e & 3], mCb[e >> 2], self.is_bf16)
            else:
                word = ptx.pack2(mCb[e], mCb[e], self.is_bf16)
            ptx.st_shared_v4(base + e * 128 + (idx % 8) * 16, word)

    @cute.jit
    def lut(self, lane_base: Int32, index):
        return ptx.ld_shared_u32(lane_base + Int32(index) * 128)

    @cute.jit
    def byte_of(self, w, k: cutlass.Constexpr[int]):
        """Byte k of word w as a table index (0..255). (Extracting bytes 1/2 with one PRMT
        instead of shift + and cut the K4V4 tile loop from 439 to 410 SASS instructions but
        measured 2-5 % slower on the H100, 2026-11-23: docs/decode-notes.md.)"""
        return (w >> (8 * k)) & 0xFF

    @cute.jit
    def k_pair(self, lb: Int32, words, p: cutlass.Constexpr[int]):
        """Packed (elem 2p, elem 2p+1) of a thread's K row segment."""
        if const_expr(self.kb == 4):
            return self.lut(lb, self.byte_of(words[p // 4], p % 4))
        elif const_expr(self.kb == 2):
            return self.lut(lb, (words[p // 8] >> (4 * (p % 8))) & 0xF)
        else:
            w = words[p // 2]
            lo = self.lut(lb, self.byte_of(w, 2 * (p % 2)))
            hi = self.lut(lb, self.byte_of(w, 2 * (p % 2) + 1))
            return ptx.prmt(lo, hi, 0x5410)

    @cute.jit
    def v_frag(self, lb: Int32, vw, i: cutlass.Constexpr[int]):
        """A operand (4 regs) of Oᵀ M-tile i from the V words of tokens 2c,2c+1,2c+8,2c+9:
        rows g / g+8 = elements 2i / 2i+1 of the thread's V segment."""
        regs = []
        for tp in cutlass.range_constexpr(2):  # token pairs (2c, 2c+1), (2c+8, 2c+9)
            w0 = vw[2 * tp]
            w1 = vw[2 * tp + 1]
            if const_expr(self.vb == 8):
                a0 = self.lut(lb, self.byte_of(w0[(2 * i) // 4], (2 * i) % 4))
                a1 = self.lut(lb, self.byte_of(w1[(2 * i) // 4], (2 * i) % 4))
                b0 = self.lut(lb, self.byte_of(w0[(2 * i + 1) // 4], (2 * i + 1) % 4))
                b1 = self.lut(lb, self.byte_of(w1[(2 * i + 1) // 4], (2 * i + 1) % 4))
                regs.append(ptx.prmt(a0, a1, 0x5410))
                regs.append(ptx.prmt(b0, b1, 0x5410))
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
        D = self.D
        KW = max(1, D * self.kb // 128)
        VW = max(1, D * self.vb // 256)
        bs = mKc.shape[1]
        t0 = tile * 16
        phys = mBT[b, t0 // bs]
        r0 = t0 % bs
        for rr in cutlass.range_constexpr(2):
            a = (mKc.iterator + cute.crd2idx((phys, r0 + g + 8 * rr, h, c * (D * self.kb // 32)),
                                             mKc.layout)).toint()
            words = ptx.ld_global_words(a, D * self.kb // 32)
            for w in cutlass.range_constexpr(KW):
                kbuf[rr * KW + w] = words[w]
        for tt in cutlass.range_constexpr(4):
            tok = 2 * c + (tt % 2) + 8 * (tt // 2)
            a = (mVc.iterator + cute.crd2idx((phys, r0 + tok, h, g * (D * self.vb // 64)),
                                             mVc.layout)).toint()
            words = ptx.ld_global_words(a, D * self.vb // 64)
            for w in cutlass.range_constexpr(VW):
                vbuf[tt * VW + w] = words[w]
        for rr in cutlass.range_constexpr(2):
            ka = (mKn.iterator + cute.crd2idx((phys, r0 + g + 8 * rr, h), mKn.layout)).toint()
            va = (mVn.iterator + cute.crd2idx((phys, r0 + g + 8 * rr, h), mVn.layout)).toint()
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
        k_lb = sbase + lane * 4
        v_lb = sbase + self.k_lut_bytes + lane * 4
        self.build_lut(sbase, mKcb, self.kb, tidx)
        self.build_lut(sbase + self.k_lut_bytes, mVcb, self.vb, tidx)

        # ---- Q fragments (B operand): column n = 8j + g, elements [c*D/4, (c+1)*D/4)
        qf = cute.make_rmem_tensor((NTW, D // 8), Uint32)
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

        # ---- sequence range of this split
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
        acc_s = cute.make_rmem_tensor((NTW, 4), Float32)

        cute.arch.sync_threads()

        KW = max(1, D * self.kb // 128)  # words per K row segment
        VW = max(1, D * self.vb // 256)  # words per V token segment
        # register buffers of the next tile (software pipelining, cfg.prefetch)
        kbuf = cute.make_rmem_tensor((2 * KW,), Uint32)
        vbuf = cute.make_rmem_tensor((4 * VW,), Uint32)
        nbuf = cute.make_rmem_tensor((4,), Uint32)
        if const_expr(self.cfg.prefetch):
            first = t_begin + stream
            if first < t_end:
                self.load_tile(first, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kbuf, vbuf, nbuf)

        for tile in cutlass.range(t_begin + stream, t_end, self.streams, unroll=1):
            t0 = tile * 16
            if const_expr(self.cfg.prefetch):
                kw = [[kbuf[rr * KW + w] for w in range(KW)] for rr in range(2)]
                vw = [[vbuf[tt * VW + w] for w in range(VW)] for tt in range(4)]
                kn = [nbuf[0], nbuf[1]]
                vn = [nbuf[2], nbuf[3]]
                nxt = tile + self.streams
                if nxt < t_end:
                    self.load_tile(nxt, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kbuf, vbuf, nbuf)
            else:
                self.load_tile(tile, mBT, mKc, mVc, mKn, mVn, b, h, g, c, kbuf, vbuf, nbuf)
                kw = [[kbuf[rr * KW + w] for w in range(KW)] for rr in range(2)]
                vw = [[vbuf[tt * VW + w] for w in range(VW)] for tt in range(4)]
                kn = [nbuf[0], nbuf[1]]
                vn = [nbuf[2], nbuf[3]]

            # ---- Sᵀ = K̃ Qᵀ
            for j in cutlass.range_constexpr(NTW):
                for r in cutlass.range_constexpr(4):
                    acc_s[j, r] = Float32(0.0)
            for k in cutlass.range_constexpr(KCH):
                a_frag = [self.k_pair(k_lb, kw[0], 2 * k), self.k_pair(k_lb, kw[1], 2 * k),
                          self.k_pair(k_lb, kw[0], 2 * k + 1),
                          self.k_pair(k_lb, kw[1], 2 * k + 1)]
                for j in cutlass.range_constexpr(NTW):
                    res = ptx.mma_16816([acc_s[j, 0], acc_s[j, 1], acc_s[j, 2], acc_s[j, 3]],
                                        a_frag, [qf[j, 2 * k], qf[j, 2 * k + 1]],
                                        self.is_bf16)
                    for r in cutlass.range_constexpr(4):
                        acc_s[j, r] = res[r]

            # ---- row scales (norms of tokens >= L are zeroed: never read garbage)
            ksc = []
            vsc = []
            for rr in cutlass.range_constexpr(2):
                valid = t0 + g + 8 * rr < L
                ksc.append(ptx.select(valid, ptx.bf16_bits_to_f32(kn[rr]) * scale_log2,
                                      Float32(0.0), Float32))
                vsc.append(ptx.select(valid, ptx.bf16_bits_to_f32(vn[rr]), Float32(0.0),
                                      Float32))
            for j in cutlass.range_constexpr(NTW):
                for r in cutlass.range_constexpr(4):
                    acc_s[j, r] = acc_s[j, r] * ksc[r // 2]
            need_mask = (t0 < lo_full) | (t0 + 16 > hi_full)
            if need_mask:
                for j in cutlass.range_constexpr(NTW):
                    for r in cutlass.range_constexpr(4):
                        tok = t0 + g + 8 * (r // 2)
                        vis = (tok >= col_lo[j, r % 2]) & (tok <= col_hi[j, r % 2])
                        acc_s[j, r] = ptx.select(vis, acc_s[j, r], Float32(NEG_INF),
                                                 Float32)

            # ---- online softmax per column, P' = P * vnorm, Oᵀ += Ṽᵀ P'ᵀ
            pb = []
            for j in cutlass.range_constexpr(NTW):
                alpha = []
                m_use = []
                for e in cutlass.range_constexpr(2):
                    mx = ptx.fmax(acc_s[j, e], acc_s[j, 2 + e])
                    for off in cutlass.range_constexpr(3):
                        mx = ptx.fmax(mx, cute.arch.shuffle_sync_bfly(mx, offset=4 << off))
                    m_new = ptx.fmax(row_m[j, e], mx)
                    mu = ptx.select(m_new == Float32(NEG_INF), Float32(0.0), m_new, Float32)
                    alpha.append(ptx.ex2(row_m[j, e] - mu))
                    m_use.append(mu)
                    row_m[j, e] = m_new
                p = []
                for r in cutlass.range_constexpr(4):
                    p.append(ptx.ex2(acc_s[j, r] - m_use[r % 2]))
                for e in cutlass.range_constexpr(2):
                    row_l[j, e] = row_l[j, e] * alpha[e] + p[e] + p[2 + e]
                for i in cutlass.range_constexpr(KCH):
                    for r in cutlass.range_constexpr(4):
                        acc_o[j, i, r] = acc_o[j, i, r] * alpha[r % 2]
                x0 = ptx.pack2(p[0] * vsc[0], p[1] * vsc[0], self.is_bf16)
                x1 = ptx.pack2(p[2] * vsc[1], p[3] * vsc[1], self.is_bf16)
                pb.append([ptx.movmatrix_trans(x0), ptx.movmatrix_trans(x1)])
            for i in cutlass.range_constexpr(KCH):
                a_frag = self.v_frag(v_lb, vw, i)
                for j in cutlass.range_constexpr(NTW):
                    res = ptx.mma_16816([acc_o[j, i, 0], acc_o[j, i, 1], acc_o[j, i, 2],
                                         acc_o[j, i, 3]], a_frag, pb[j], self.is_bf16)
                    for r in cutlass.range_constexpr(4):
                        acc_o[j, i, r] = res[r]

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
    return cfgs


def compile_configs():
    """KernelConfig entries for fa4_tq.kernels.compile (the CPU compile report)."""
    from .compile import KernelConfig

    out = []
    for cfg in _report_configs():
        variant = (f"g{cfg.qhead_per_kvhead}q{cfg.q_len}_{cfg.dtype}_w{cfg.num_warps}"
                   f"{'_pf' if cfg.prefetch else ''}{'_rq' if cfg.rotate_query else ''}")

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
def decode_cuda(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook,
                v_codebook, k_signs, v_signs, softmax_scale, causal, window_left, window_right,
                rotate_query, unrotate_output, *, num_splits=0, out=None, lse=None,
                config=None):
    """tqkv.decode on CUDA tensors (arguments already validated by fa4_tq.validate).

    Two launches: the split-K kernel (rotates the query in its Q load) and the combine
    (un-rotates the merged fp32 rows with a warp WHT and writes q.dtype). Returns
    (out [B, q_len, Hq, D] in q.dtype, lse fp32 [B, Hq, q_len]). ``out`` / ``lse`` may be
    given (preallocated, e.g. for CUDA graphs or NaN-poisoned tests); ``config`` overrides
    the shipped tuning (benchmarks) and must agree with ``rotate_query``. The fp32 partials
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
                           v_signs if unrotate_output else None)
    return out, lse
