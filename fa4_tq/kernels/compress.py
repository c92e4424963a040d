"""CuTeDSL compress+store and dequantize kernels (ops ``tqkv.compress_store`` / ``tqkv.dequantize``).

compress_store: one launch quantizes K *and* V of new tokens and scatters them to the paged
cache. It is bit-exact with the CPU reference (codec/quantizer.py): every rounding step of
the format is one explicit PTX instruction with its rounding mode spelled out (``add.rn``,
``mul.rn``, ``sqrt.rn.f64``, ``div.rn.f64``, ``cvt.rn``), so neither LLVM nor ptxas may fuse
a multiply into a following add (an FMA rounds once where the format rounds twice).

Thread layout (both kernels): a group of G = D/16 lanes owns one (token, head) vector of D
elements, 16 per lane, as 2 chunks of 8 contiguous elements: element
``e = chunk * 8G + lane_in_group * 8 + i``. Bits 0-2 of e (i) and the top bit (chunk) live
in registers, the log2(G) middle bits across lanes. The Walsh-Hadamard stages h = 1, 2, 4, …
run in the format's order; an in-register stage is a plain butterfly, a cross-lane stage is
one ``shfl.bfly`` plus ``o + (±y)`` (a + b on the lower lane, a - b = a + (-b) on the upper),
which is bit-identical to the reference's (a + b, a - b) on the same operands. Loads are
16-byte vectors, and a group's lanes read adjacent 16-byte pieces (coalesced).

Repeated slots in ``slot_mapping``: UNDEFINED — the vectors of different tokens are written by
different thread groups concurrently, so for a slot that appears twice the stored codes/norm
may come from either token (even mixed between K rows, V rows and norms). vLLM never repeats a
slot within one step. With ``FA4TQ_DEBUG_CHECKS=1`` repeated non-negative slots raise
ValueError before the launch (as out-of-range slots do in fa4_tq/validate.py). Negative
slots are skipped; slots >= num_blocks * block_size are never written (guarded in the kernel).

Nearest centroid: code = #{j : thr[j] * n < y} with thr[j] = (c[j] + c[j+1]) * 0.5.
CompressConfig.algo selects how it is found (DEFAULT_COMPRESS_ALGO; notes and SASS counts in
docs/compress-notes.md):
* "binary" (verified on the H100): binary search (b steps), the first two levels with
  per-vector scaled thresholds in registers, the rest read thr[] from shared memory.
* "lut": 2-bit: the 3 scaled thresholds in registers (two compares). 4/8-bit: every CTA
  builds a grid table of G cells over u = y / n in [-1, 1] (|y_i| <= n always): entry k =
  c (4-bit: one byte, 4 * c; 8-bit: (thr[c], c)) such that every thr[j], j < c, is certainly below and every thr[j], j > c,
  certainly above any u of cell k (margin _LUT_TOL = 2^-14 covers the float32 errors of
  S / n, of thr[j] * n and of the builder's cell edges, all < 2^-20 in u). The cell is
  k = round(y * (S / n)) + G/2, read from the bits of one FFMA with a 1.5 * 2^23 magic; then
  code = c + (thr[c] * n < y), the same float32 compare as the reference, so the result is
  exact. A table where some cell could hold two thresholds (custom codebooks with close
  thresholds, |thr| > 2^20) or a vector with n outside [2^-60, 2^60] (0, NaN, inf, tiny)
  takes the binary search instead (CTA- / group-uniform branch; written as a 0/1-trip loop
  so that ptxas cannot if-convert it into the hot path). Cross-lane WHT stages use
  fma(y, +-1, partner), bit-identical to the xor-sign add.
* "lut-wide": "lut" with 32 elements per lane (4 chunks, D/32 lanes per vector), 128-thread
  CTAs, registers capped for 3 CTAs per SM; 4-bit and mixed 4/2-bit sides only.
The float64 norm correction n / sqrt(sum c[code]^2) is evaluated once per iteration for
both sides (even lanes K, odd lanes V).

Summation order (why CompressConfig.sum_chains keeps the result reference-exact): the format
fixes the operations (float64 squares, float64 sums, sqrt.rn, one float32 / bf16 rounding),
not the order of the float64 additions; codec/quantizer.py says the result is independent of
it except with probability ~2^-29 per vector. The kernels never used the reference's order
(torch's vectorized sum): one lane sums its elements, then a shuffle butterfly sums the
lanes. Every term is exact (the square of a float32 is exact in float64; so is a squared
codebook entry), so any order gives the exact sum within (D - 1) * 2^-53 relative (worst
case), and float32(sqrt(.)) / the norm correction can only differ when the exact value lies
that close to a float32 (or bf16) rounding boundary. Special values do not depend on the
order either (terms are >= 0 or NaN; float64 cannot overflow on squares of float32).
sum_chains = 2 / 4 only changes which float64 additions happen (r % 4 partial sums, pairwise
total), so it keeps exactly that guarantee. CPU emulation of sum_chains 1 / 2 / 4 against
the reference: docs/compress-notes.md (H7), microbench/compress_probe.py --emulate-sum-order.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import codebook_bits as _bits
from . import dequant as _dq

import cutlass
import cutlass.cute as cute
from cutlass import Boolean, Float32, Float64, Int32, Int64, Uint32, const_expr
from cutlass.cutlass_dsl import T, dsl_user_op
from cutlass._mlir.dialects import llvm

_SUPPORTED_HEAD_DIMS = (64, 128, 256)
_SUPPORTED_BITS = (2, 4, 8)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_CUTE_DTYPES = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16, "float32": Float32}
_CHUNKS = 2  # default chunks of 8 contiguous elements per lane (16 elements)
_CTAS_PER_SM = 8  # grid-stride cap: enough resident work to cover memory latency
_MAX_TOKENS = 2**30  # compress_store walks tokens in Int32 (token + grid stride must not wrap)

# compress_store nearest-centroid search (CompressConfig.algo, part of the compile-cache key):
#   "binary": binary search over the thresholds (first two levels in registers, the rest
#             scaled from shared memory), xor-sign WHT butterflies. Verified on the H100.
#   "lut":    2-bit: compare-count against the 3 scaled thresholds in registers.
#             4/8-bit: a per-CTA grid table (see _LUT_CELLS) gives the code up to +1, one
#             exact compare decides; vectors or tables the table cannot serve exactly redo
#             the search with the binary search (a real branch: see _quantize). FFMA
#             cross-lane WHT butterflies.
#   "lut-wide": "lut" with 32 elements per lane (COMPRESS_VARIANTS).
# Default: "auto", from the H100 run of 2026-11-23 after the H2 changes (all three variants
# bit-exact in every GPU test; 64K tokens x Hkv 8 x D 128 bf16, fraction of copy bandwidth;
# docs/compress-notes.md):
#   K4V4 binary 0.420 / lut 0.497 / lut-wide 0.511;  K4V2 0.436 / 0.507 / 0.523
#   K2V2 binary 0.469 / lut 0.494;  K8V8 binary 0.187 / lut 0.372
#   small calls (K4V4, 1 / 16 / 256 tokens): lut 4.6-4.7 us, binary 4.6-4.8, lut-wide 5.2-5.7
#   4096 tokens: lut-wide 19.3 us, lut 20.5, binary 22.7
# -> "lut-wide" where it is compile-checked (_WIDE_DEFAULT) and the call has at least two
#    wide CTAs of vectors per SM (not measured between 2K and 32K vectors), else "lut".
DEFAULT_COMPRESS_ALGO = "auto"


def default_compress_algo(k_bits: int, v_bits: int, head_dim: int = 128,
                          in_dtype: str = "bfloat16", num_vectors: int = 0,
                          sm_count: int = 132) -> str:
    """The measured-fastest variant for these sides and this many (token, head) vectors."""
    if (head_dim, k_bits, v_bits, in_dtype) in _PREFETCH_DEFAULT and \
            num_vectors >= _PREFETCH_MIN_VECTORS:
        return "lut-pf"
    wide_vectors = 2 * sm_count * (128 // (head_dim // 32))  # 2 CTAs of 128 threads per SM
    if (head_dim, k_bits, v_bits, in_dtype) in _WIDE_DEFAULT and num_vectors >= wide_vectors:
        return "lut-wide"
    return "lut"


# (head_dim, k_bits, v_bits, in_dtype) where "auto" may pick "lut-wide": exactly its configs
# in shipped_configs (compiled by tests/compile with 0 spills)
_WIDE_DEFAULT = {(d, 4, 4, "bfloat16") for d in (64, 128, 256)} | {(128, 4, 2, "bfloat16"),
                                                                   (128, 2, 4, "bfloat16")}
# Session 3 (H100, 2026-11-23 20:08 UTC, `microbench.compress_probe --candidates`, every
# variant bit-exact; 64K tokens x Hkv 8 x D 128 bf16, fraction of copy bandwidth): "lut-pf"
# (the next vector's loads issued before this one's math) K4V4 0.602 (lut-wide 0.514), K4V2
# 0.604 (lut-wide 0.524), K2V2 0.574 (lut 0.497); at 4096 tokens it loses (K4V4 0.490 vs
# lut-wide 0.540, K4V2 0.450 vs 0.502). -> "auto" picks it for these configs from 2^18
# vectors (32K tokens x 8 heads); between 4K and 64K tokens the crossover is unmeasured.
_PREFETCH_DEFAULT = {(128, 4, 4, "bfloat16"), (128, 4, 2, "bfloat16"), (128, 2, 2, "bfloat16")}
_PREFETCH_MIN_VECTORS = 1 << 18
_COMPRESS_ALGOS = ("binary", "lut")
# Variant names accepted by compress_store_cuda(algo=...) / DEFAULT_COMPRESS_ALGO -> the
# CompressConfig fields they set. "lut-wide": 32 elements per lane (D/32 lanes per vector:
# one fewer cross-lane WHT stage and half the per-vector work per element), 128-thread CTAs,
# registers capped at 65536 / (3 * 128) = 170 (3 CTAs = 12 warps per SM).
COMPRESS_VARIANTS = {
    "binary": dict(algo="binary"),
    "lut": dict(algo="lut"),
    "lut-wide": dict(algo="lut", chunks=4, num_threads=128, min_ctas_per_sm=3),
    # H7 candidates (measured in session 3: "lut-pf" is "auto"'s choice for large 4/2-bit
    # calls, see _PREFETCH_DEFAULT; the others lost to it and stay opt-in):
    # 4 independent float64 partial sums per thread (CompressConfig.sum_chains) and/or the
    # next vector's loads issued before this one's math (CompressConfig.prefetch).
    "lut-s4": dict(algo="lut", sum_chains=4),
    "lut-pf": dict(algo="lut", prefetch=True),
    "lut-pf-s4": dict(algo="lut", prefetch=True, sum_chains=4),
    "lut-wide-s4": dict(algo="lut", chunks=4, num_threads=128, min_ctas_per_sm=3, sum_chains=4),
    # Session 8 candidates (not yet measured): the loads of the next 2 vectors through a
    # 3-stage cp.async ring in shared memory (CompressConfig.smem_stages): "lut-wide-r3"
    # gives the wide variant the load-ahead that lut-pf has without prefetch registers (and
    # the 8-byte code index, CompressConfig.index8); "lut-pf-i8" is today's default with
    # only the index change (its A/B); "lut-r2" the 16-element variant with one vector
    # ahead (like lut-pf), for the pairs prefetch does not fit (8-bit sides: K8V8 at 2 CTAs
    # per SM needs the 2-stage ring).
    "lut-wide-r3": dict(algo="lut", chunks=4, num_threads=128, min_ctas_per_sm=3,
                        smem_stages=3, index8=True),
    "lut-pf-i8": dict(algo="lut", prefetch=True, index8=True),
    "lut-r2": dict(algo="lut", smem_stages=2),
}
# Grid-table cells per bit width: cell k covers u = y / n in about
# [(k - G/2 - 0.5) / S, (k - G/2 + 0.5) / S] with S = G/2 - 2, so |u| <= 1 never leaves the
# table. Width 1/S must stay below the closest threshold spacing (default tables, D=256:
# 4-bit 0.016, 8-bit 0.00106) minus 2 * _LUT_TOL.
_LUT_CELLS = {4: 256, 8: 4096}
# Bytes per grid-table entry. 4-bit: one byte (4 * c, the byte offset of thr[c] in the
# 16-entry threshold table). The whole 256-byte table is 64 words, and the cells that |u| < 0.5 can
# reach (k in [65, 191]) span 32 words, so a warp's lookups almost never bank-conflict (the
# 1024-cell table of (thr, c) pairs did: 8 KB of random LDS.64, measured slower than the
# binary search). 8-bit: (thr[c] bits, c), 8 bytes (a 256-entry thr[] lookup would conflict
# as much as the table itself).
_LUT_ENTRY_BYTES = {4: 1, 8: 8}
_LUT_TOL = 2.0 ** -14  # u-space slack covering every rounding of the guess (module doc)
_LUT_MAGIC = 12582912.0  # 1.5 * 2^23: fma(y, A, magic + G/2) rounds to an integer in its bits
_LUT_N_MIN = 2.0 ** -60  # vectors with n outside [min, max] (0, NaN, inf, tiny) use the
_LUT_N_MAX = 2.0 ** 60   # binary search (the error analysis needs T_j = t_j * n normal)
_LUT_T_MAX = 2.0 ** 20   # tables with |threshold| beyond this use the binary search


# =============================================================================== PTX helpers
# Each helper is one or a few PTX instructions with explicit rounding; none can be contracted.
# Operands always go through registers ("r"/"l"/"f"/"d" constraints), never immediates.

_CONSTRAINT = {Float32: ("f", T.f32), Float64: ("d", T.f64), Uint32: ("r", T.i32),
               Int32: ("r", T.i32), Int64: ("l", T.i64)}


def _asm(ptx: str, out_types: list, args: list, loc=None, ip=None, side_effects=False):
    """llvm.inline_asm with outputs $0..$(n-1) then inputs; args are (value, DSL type)."""
    cons = [("=" + _CONSTRAINT[t][0]) for t in out_types] + [_CONSTRAINT[t][0] for _, t in args]
    vals = [t(v).ir_value(loc=loc, ip=ip) for v, t in args]
    if len(out_types) == 0:
        res_ty = llvm.StructType.get_literal([])
    elif len(out_types) == 1:
        res_ty = _CONSTRAINT[out_types[0]][1]()
    else:
        res_ty = llvm.StructType.get_literal([_CONSTRAINT[t][1]() for t in out_types])
    res = llvm.inline_asm(res_ty, vals, ptx, ",".join(cons), has_side_effects=side_effects,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    if len(out_types) == 0:
        return None
    if len(out_types) == 1:
        return out_types[0](res)
    return tuple(t(llvm.extractvalue(_CONSTRAINT[t][1](), res, [i], loc=loc, ip=ip))
                 for i, t in enumerate(out_types))


@dsl_user_op
def _ld_v4(addr: Int64, *, loc=None, ip=None):
    """16-byte streaming load (read once: no L1 allocation)."""
    return _asm("ld.global.nc.L1::no_allocate.v4.b32 {$0, $1, $2, $3}, [$4];",
                [Uint32] * 4, [(addr, Int64)], loc, ip)


@dsl_user_op
def _ld_v2(addr: Int64, *, loc=None, ip=None):
    return _asm("ld.global.nc.v2.b32 {$0, $1}, [$2];", [Uint32] * 2, [(addr, Int64)], loc, ip)


@dsl_user_op
def _ld_b32(addr: Int64, *, loc=None, ip=None) -> Uint32:
    return _asm("ld.global.nc.b32 $0, [$1];", [Uint32], [(addr, Int64)], loc, ip)


@dsl_user_op
def _ld_u16(addr: Int64, *, loc=None, ip=None) -> Uint32:
    return _asm("{\n.reg .b16 h;\nld.global.nc.b16 h, [$1];\ncvt.u32.u16 $0, h;\n}",
                [Uint32], [(addr, Int64)], loc, ip)


_PRED = "{\n.reg .pred p;\nsetp.ne.b32 p, $0, 0;\n"


@dsl_user_op
def _st_v4(addr: Int64, a: Uint32, b: Uint32, c: Uint32, d: Uint32, pred: Boolean, *, loc=None,
           ip=None) -> None:
    _asm(_PRED + "@p st.global.v4.b32 [$1], {$2, $3, $4, $5};\n}", [],
         [(Uint32(pred), Uint32), (addr, Int64), (a, Uint32), (b, Uint32), (c, Uint32),
          (d, Uint32)], loc, ip, side_effects=True)


@dsl_user_op
def _st_v2(addr: Int64, a: Uint32, b: Uint32, pred: Boolean, *, loc=None, ip=None) -> None:
    _asm(_PRED + "@p st.global.v2.b32 [$1], {$2, $3};\n}", [],
         [(Uint32(pred), Uint32), (addr, Int64), (a, Uint32), (b, Uint32)], loc, ip,
         side_effects=True)


@dsl_user_op
def _st_b32(addr: Int64, a: Uint32, pred: Boolean, *, loc=None, ip=None) -> None:
    _asm(_PRED + "@p st.global.b32 [$1], $2;\n}", [],
         [(Uint32(pred), Uint32), (addr, Int64), (a, Uint32)], loc, ip, side_effects=True)


@dsl_user_op
def _st_b16(addr: Int64, a: Uint32, pred: Boolean, *, loc=None, ip=None) -> None:
    _asm(_PRED + ".reg .b16 h;\ncvt.u16.u32 h, $2;\n@p st.global.b16 [$1], h;\n}", [],
         [(Uint32(pred), Uint32), (addr, Int64), (a, Uint32)], loc, ip, side_effects=True)


@dsl_user_op
def _add_rn(a: Float32, b: Float32, *, loc=None, ip=None) -> Float32:
    return _asm("add.rn.f32 $0, $1, $2;", [Float32], [(a, Float32), (b, Float32)], loc, ip)


@dsl_user_op
def _sub_rn(a: Float32, b: Float32, *, loc=None, ip=None) -> Float32:
    return _asm("sub.rn.f32 $0, $1, $2;", [Float32], [(a, Float32), (b, Float32)], loc, ip)


@dsl_user_op
def _mul_rn(a: Float32, b: Float32, *, loc=None, ip=None) -> Float32:
    return _asm("mul.rn.f32 $0, $1, $2;", [Float32], [(a, Float32), (b, Float32)], loc, ip)


@dsl_user_op
def _fma_rn(a: Float32, b: Float32, c: Float32, *, loc=None, ip=None) -> Float32:
    """a * b + c, one rounding. With b = +-1.0 the product is exact, so this is bit-identical
    to add.rn(c, +-a) (same signed zeros, same NaN/inf behaviour)."""
    return _asm("fma.rn.f32 $0, $1, $2, $3;", [Float32], [(a, Float32), (b, Float32), (c, Float32)],
                loc, ip)


@dsl_user_op
def _inc_if_lt(c: Uint32, a: Float32, b: Float32, inc: int = 1, *, loc=None, ip=None) -> Uint32:
    """c + inc * (a < b): FSETP + predicated IADD (false for NaN operands)."""
    return _asm("{\n.reg .pred p;\nsetp.lt.f32 p, $2, $3;\nmov.b32 $0, $1;\n"
                f"@p add.u32 $0, $0, {int(inc)};\n}}", [Uint32],
                [(c, Uint32), (a, Float32), (b, Float32)], loc, ip)


@dsl_user_op
def _lds_f64(addr: Int32, *, loc=None, ip=None) -> Float64:
    """float64 from an 8-byte aligned 32-bit shared-memory address."""
    return _asm("ld.shared.f64 $0, [$1];", [Float64], [(addr, Int32)], loc, ip)


@dsl_user_op
def _lds_f32(addr: Int32, *, loc=None, ip=None) -> Float32:
    """float32 from a 32-bit shared-memory address."""
    return _asm("ld.shared.f32 $0, [$1];", [Float32], [(addr, Int32)], loc, ip)


@dsl_user_op
def _lds_v2(addr: Int32, *, loc=None, ip=None):
    """8-byte shared-memory load from a 32-bit shared address."""
    return _asm("ld.shared.v2.b32 {$0, $1}, [$2];", [Uint32] * 2, [(addr, Int32)], loc, ip)


@dsl_user_op
def _lds_u8(addr: Int32, *, loc=None, ip=None) -> Uint32:
    """One byte from a 32-bit shared-memory address, zero-extended."""
    return _asm("ld.shared.u8 $0, [$1];", [Uint32], [(addr, Int32)], loc, ip)


@dsl_user_op
def _div_full(a: Float32, b: Float32, *, loc=None, ip=None) -> Float32:
    """a / b within 2 ulp (MUFU.RCP based); only used where an error bound suffices."""
    return _asm("div.full.f32 $0, $1, $2;", [Float32], [(a, Float32), (b, Float32)], loc, ip)


@dsl_user_op
def _xor_sign(x: Float32, sign_bit: Uint32, *, loc=None, ip=None) -> Float32:
    """x with its sign bit xor-ed with bit 31 of ``sign_bit`` (exact negation when set)."""
    return _asm("{\n.reg .b32 t;\nmov.b32 t, $1;\nxor.b32 t, t, $2;\nmov.b32 $0, t;\n}",
                [Float32], [(x, Float32), (sign_bit, Uint32)], loc, ip)


@dsl_user_op
def _bits_to_f32(w: Uint32, *, loc=None, ip=None) -> Float32:
    return _asm("mov.b32 $0, $1;", [Float32], [(w, Uint32)], loc, ip)


@dsl_user_op
def _f32_to_bits(x: Float32, *, loc=None, ip=None) -> Uint32:
    return _asm("mov.b32 $0, $1;", [Uint32], [(x, Float32)], loc, ip)


@dsl_user_op
def _f16x2_to_f32(w: Uint32, *, loc=None, ip=None):
    return _asm("{\n.reg .f16 lo, hi;\nmov.b32 {lo, hi}, $2;\ncvt.f32.f16 $0, lo;\n"
                "cvt.f32.f16 $1, hi;\n}", [Float32, Float32], [(w, Uint32)], loc, ip)


@dsl_user_op
def _sq_acc_f64(acc: Float64, x: Float32, *, loc=None, ip=None) -> Float64:
    """acc + float64(x)^2; the square of a float32 is exact in float64, so one fma.rn.f64
    equals the format's separate square and add."""
    return _asm("{\n.reg .f64 d;\ncvt.f64.f32 d, $2;\nfma.rn.f64 $0, d, d, $1;\n}",
                [Float64], [(acc, Float64), (x, Float32)], loc, ip)


@dsl_user_op
def _sq_f64(x: Float32, *, loc=None, ip=None) -> Float64:
    return _asm("{\n.reg .f64 d;\ncvt.f64.f32 d, $1;\nmul.rn.f64 $0, d, d;\n}",
                [Float64], [(x, Float32)], loc, ip)


@dsl_user_op
def _add_f64(a: Float64, b: Float64, *, loc=None, ip=None) -> Float64:
    return _asm("add.rn.f64 $0, $1, $2;", [Float64], [(a, Float64), (b, Float64)], loc, ip)


@dsl_user_op
def _sqrt_to_f32(ss: Float64, *, loc=None, ip=None) -> Float32:
    """float32(sqrt(ss)) with IEEE sqrt.rn.f64 then cvt.rn.f32.f64."""
    return _asm("{\n.reg .f64 d;\nsqrt.rn.f64 d, $1;\ncvt.rn.f32.f64 $0, d;\n}",
                [Float32], [(ss, Float64)], loc, ip)


@dsl_user_op
def _norm_correction_bf16(n: Float32, cs: Float64, *, loc=None, ip=None) -> Uint32:
    """bf16 bits of bfloat16(float32(n / sqrt(cs))) in float64 (IEEE div/sqrt), 0 if cs == 0."""
    return _asm(
        "{\n.reg .f64 dn, dc, q;\n.reg .f32 r;\n.reg .b16 h;\n.reg .pred pz;\n"
        "cvt.f64.f32 dn, $1;\nsqrt.rn.f64 dc, $2;\ndiv.rn.f64 q, dn, dc;\n"
        "setp.gt.f64 pz, $2, 0d0000000000000000;\nselp.f64 q, q, 0d0000000000000000, pz;\n"
        "cvt.rn.f32.f64 r, q;\ncvt.rn.bf16.f32 h, r;\ncvt.u32.u16 $0, h;\n}",
        [Uint32], [(n, Float32), (cs, Float64)], loc, ip)


@dsl_user_op
def _pack2(a: Float32, b: Float32, to_f16: bool, *, loc=None, ip=None) -> Uint32:
    """Round two float32 to bf16/fp16 (RNE) and pack them (a in the low half)."""
    kind = "f16x2" if to_f16 else "bf16x2"
    return _asm(f"cvt.rn.{kind}.f32 $0, $2, $1;", [Uint32], [(a, Float32), (b, Float32)], loc, ip)


def _addr(t: cute.Tensor) -> Int64:
    return t.iterator.toint()


# =============================================================================== shared pieces
@dataclass(frozen=True)
class _Geometry:
    head_dim: int
    chunks: int = _CHUNKS  # chunks of 8 contiguous elements per lane

    @property
    def elems(self) -> int:  # elements per lane
        return 8 * self.chunks

    @property
    def lanes(self) -> int:  # lanes per vector
        return self.head_dim // self.elems

    @property
    def log_lanes(self) -> int:
        return int(math.log2(self.lanes))

    @property
    def log_d(self) -> int:
        return int(math.log2(self.head_dim))

    def element(self, r: int, lane) -> int:
        """Element index of register r (chunk r // 8, position r % 8) on lane ``lane``."""
        return (r // 8) * 8 * self.lanes + lane * 8 + r % 8

    def chunk_offset(self, k: int) -> int:
        """First element of chunk k for lane 0 (add lane * 8)."""
        return k * 8 * self.lanes


def _inv_sqrt_f32(d: int) -> float:
    """float32(1/sqrt(D)) exactly as the reference builds it (RNE of the float64 value)."""
    return float(np.float32(1.0 / math.sqrt(d)))


@cute.jit
def _wht(y: list, geo: cutlass.Constexpr, lane: Int32, fma_cross: cutlass.Constexpr = False):
    """In-place unnormalized WHT of the register values (stages h = 1, 2, ..., D/2).

    fma_cross: a cross-lane stage computes fma(y, +-1.0, partner) (SHFL + FFMA) instead of
    partner + (y with its sign bit xor-ed) (SHFL + LOP3 + FADD); both equal the reference's
    a + b / a - b bit for bit (the product by +-1 is exact, the FMA rounds once)."""
    for b in cutlass.range_constexpr(geo.log_d):
        if const_expr(b < 3):
            h = 1 << b
            for r in cutlass.range_constexpr(geo.elems):
                if const_expr((r % 8) & h == 0):
                    a0 = y[r]
                    b0 = y[r + h]
                    y[r] = _add_rn(a0, b0)
                    y[r + h] = _sub_rn(a0, b0)
        elif const_expr(b < 3 + geo.log_lanes):
            lb = b - 3
            upper = Uint32((lane >> lb) & 1) << Uint32(31)
            if const_expr(fma_cross):
                sgn = _bits_to_f32(Uint32(0x3F800000) | upper)  # +1.0 lower lane, -1.0 upper
                for r in cutlass.range_constexpr(geo.elems):
                    o = cute.arch.shuffle_sync_bfly(y[r], offset=1 << lb)
                    y[r] = _fma_rn(y[r], sgn, o)
            else:
                for r in cutlass.range_constexpr(geo.elems):
                    o = cute.arch.shuffle_sync_bfly(y[r], offset=1 << lb)
                    y[r] = _add_rn(o, _xor_sign(y[r], upper))
        else:
            step = 8 << (b - 3 - geo.log_lanes)
            for r in cutlass.range_constexpr(geo.elems):
                if const_expr((r // 8) & (step // 8) == 0):
                    a0 = y[r]
                    b0 = y[r + step]
                    y[r] = _add_rn(a0, b0)
                    y[r + step] = _sub_rn(a0, b0)


@cute.jit
def _group_sum_f64(v: Float64, log_lanes: cutlass.Constexpr) -> Float64:
    """Butterfly sum over the lanes of a group (every lane ends with the same value)."""
    for i in cutlass.range_constexpr(log_lanes):
        v = _add_f64(v, cute.arch.shuffle_sync_bfly(v, offset=1 << i))
    return v


def _chain_total(parts: list) -> Float64:
    """Sum of the partial sums of a chained float64 accumulation, pairwise in chain order
    ((c0 + c1) + (c2 + c3)); one chain is returned as it is."""
    while len(parts) > 1:
        parts = [_add_f64(parts[2 * i], parts[2 * i + 1]) for i in range(len(parts) // 2)]
    return parts[0]


@cute.jit
def _sign_mask(signs: cute.Tensor, geo: cutlass.Constexpr, lane: Int32) -> Uint32:
    """Bit r = 1 iff the sign of this lane's register r is negative."""
    m = Uint32(0)
    for r in cutlass.range_constexpr(geo.elems):
        e = (r // 8) * 8 * geo.lanes + lane * 8 + r % 8
        neg = signs[e] < Float32(0.0)
        m = m | (Uint32(neg) << Uint32(r))
    return m


@cute.jit
def _reg_sign(mask: Uint32, r: cutlass.Constexpr) -> Uint32:
    return (mask << Uint32(31 - r)) & Uint32(0x80000000)


# =============================================================================== compress
@dataclass(frozen=True)
class CompressConfig:
    """Everything that changes the compress kernel's code (also its compile-cache key)."""

    head_dim: int = 128
    k_bits: int = 4
    v_bits: int = 4
    in_dtype: str = "bfloat16"
    num_threads: int = 256
    algo: str = "binary"  # nearest-centroid search, see DEFAULT_COMPRESS_ALGO
    chunks: int = _CHUNKS  # 8-element chunks per lane: D / (8 * chunks) lanes per vector
    # > 0: launch bound (nvvm.minctasm) that caps ptxas's registers at
    # 65536 / (min_ctas_per_sm * num_threads); 0: no bound
    min_ctas_per_sm: int = 0
    # Independent float64 partial sums per thread for sum y^2 and sum c[code]^2 (element r
    # goes to partial sum r % sum_chains, combined pairwise at the end): 1 = one dependent
    # DFMA / DADD chain of 16-32 links per side. Opt-in (not yet measured); see
    # "Summation order" in the module doc for why the result stays reference-exact.
    sum_chains: int = 1
    # Software-pipelined loads: the next iteration's key / value words and slot are loaded
    # before this iteration's math, so the global-load latency overlaps it instead of
    # starting after the previous iteration's stores (+2 * 4 * chunks + 2 registers for
    # 16-bit inputs). Opt-in (not yet measured).
    prefetch: bool = False
    # smem_stages = S >= 2: the input words and slot of a lane's next S - 1 vectors are
    # copied into a per-thread shared-memory ring with cp.async (S - 1 vectors in flight,
    # like prefetch, but without its registers: the wide variant, at 168 registers, has no
    # room for a register buffer at 3 CTAs per SM). 0: plain or prefetch loads.
    smem_stages: int = 0
    # index8 (4-bit grid tables): the byte table stores 8 c instead of 4 c, the byte offset of
    # the c-th 8-byte entry, so the same register addresses the threshold (a copy of thr[]
    # at an 8-byte stride) and c[c]^2 (LDS.64 [R + UR]) without the shift (LEA) per element;
    # the packing shifts by 3 instead of 2. Same values, same compares: bit-identical.
    index8: bool = False

    def __post_init__(self):
        if self.head_dim not in _SUPPORTED_HEAD_DIMS:
            raise ValueError(f"compress: head_dim must be one of {_SUPPORTED_HEAD_DIMS}, got {self.head_dim}")
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in _SUPPORTED_BITS:
                raise ValueError(f"compress: {name} must be one of {_SUPPORTED_BITS}")
        if self.in_dtype not in _DTYPES:
            raise ValueError(f"compress: in_dtype must be one of {tuple(_DTYPES)}, got {self.in_dtype!r}")
        if self.algo not in _COMPRESS_ALGOS:
            raise ValueError(f"compress: algo must be one of {_COMPRESS_ALGOS}, got {self.algo!r}")
        for b in (self.k_bits, self.v_bits):
            if self.algo == "lut" and b in _LUT_CELLS and _LUT_CELLS[b] % self.num_threads:
                raise ValueError(f"compress: algo='lut' needs num_threads dividing {_LUT_CELLS[b]}")
        if self.sum_chains not in (1, 2, 4):
            raise ValueError(f"compress: sum_chains must be 1, 2 or 4, got {self.sum_chains}")
        if self.smem_stages not in (0, 2, 3, 4):
            raise ValueError(f"compress: smem_stages must be 0 or 2..4, got {self.smem_stages}")
        if self.smem_stages and self.prefetch:
            raise ValueError("compress: smem_stages and prefetch are two ways of loading ahead; "
                             "pick one")
        if self.chunks not in (2, 4):
            raise ValueError(f"compress: chunks must be 2 or 4, got {self.chunks}")
        if self.num_threads % 32 or self.num_threads % _Geometry(self.head_dim, self.chunks).lanes:
            raise ValueError(f"compress: num_threads={self.num_threads} must be a multiple of 32")

    @property
    def name(self) -> str:
        alg = "" if self.algo == "binary" else f"_{self.algo}"
        if self.chunks != _CHUNKS:
            alg += f"_e{8 * self.chunks}t{self.num_threads}m{self.min_ctas_per_sm}"
        if self.sum_chains != 1:
            alg += f"_s{self.sum_chains}"
        if self.prefetch:
            alg += "_pf"
        if self.smem_stages:
            alg += f"_r{self.smem_stages}"
        if self.index8:
            alg += "_i8"

        return f"compress_d{self.head_dim}_k{self.k_bits}v{self.v_bits}_{self.in_dtype}{alg}"


class CompressStoreKernel:
    def __init__(self, cfg: CompressConfig):
        self.cfg = cfg
        self.geo = _Geometry(cfg.head_dim, cfg.chunks)
        self.in_bytes = torch.empty((), dtype=_DTYPES[cfg.in_dtype]).element_size()

    @cute.jit
    def __call__(self, mKey: cute.Tensor, mValue: cute.Tensor, mKCache: cute.Tensor,
                 mVCache: cute.Tensor, mKNorm: cute.Tensor, mVNorm: cute.Tensor,
                 mSlot: cute.Tensor, mKSigns: cute.Tensor, mVSigns: cute.Tensor,
                 mKCb: cute.Tensor, mVCb: cute.Tensor, num_ctas: Int32, stream):
        self.kernel(mKey, mValue, mKCache, mVCache, mKNorm, mVNorm, mSlot, mKSigns, mVSigns,
                    mKCb, mVCb).launch(grid=[num_ctas, 1, 1], block=[self.cfg.num_threads, 1, 1],
                                       stream=stream, **self._bounds())

    def _bounds(self) -> dict:
        """Launch bounds for the register cap. The smem carveout is given explicitly (max
        shared memory), because CuTeDSL otherwise queries the device at compile time."""
        if self.cfg.min_ctas_per_sm <= 0:
            return {}
        return dict(max_number_threads=[self.cfg.num_threads, 1, 1],
                    min_blocks_per_mp=self.cfg.min_ctas_per_sm, preferred_smem_carveout=100)

    @cute.jit
    def _load_side(self, base: Int64, pc: Int64, lane: Int32):
        """Raw 32-bit words of this lane's elements of vector pc (one 16-byte load per chunk)."""
        cfg = self.cfg
        words = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            off = (pc * cfg.head_dim + self.geo.chunk_offset(k) + Int64(lane) * 8) * self.in_bytes
            if const_expr(self.in_bytes == 4):
                w = _ld_v4(base + off)
                words.extend(list(w))
                w = _ld_v4(base + off + 16)
                words.extend(list(w))
            else:
                w = _ld_v4(base + off)
                words.extend(list(w))
        return words

    @cute.jit
    def _load_vector(self, buf: cute.Tensor, tok: Int32, head: Int32, num_tokens: Int32,
                     num_heads: Int32, key_base: Int64, val_base: Int64, slot_base: Int64,
                     lane: Int32):
        """prefetch: load vector (tok, head) into buf = [key words, value words, slot lo, hi];
        past the end it loads the last token's (every lane keeps taking part, see kernel)."""
        tc = Int64(cutlass.select_(tok < num_tokens, tok, num_tokens - 1))
        pc = tc * Int64(num_heads) + Int64(head)
        lo, hi = _ld_v2(slot_base + tc * 8)
        words = self._load_side(key_base, pc, lane) + self._load_side(val_base, pc, lane)
        for q in cutlass.range_constexpr(len(words)):
            buf[q] = words[q]
        buf[len(words)] = lo
        buf[len(words) + 1] = hi

    @property
    def _ring_pieces(self) -> int:
        """16-byte input pieces per side and lane (one per 8 16-bit elements)."""
        return self.geo.chunks * (self.in_bytes // 2)

    @property
    def ring_stage_bytes(self) -> int:
        """One ring stage: every thread's input pieces (piece q of thread t at 16 (q T + t):
        a warp's copies and reads of one piece are 512 contiguous bytes) then its slot."""
        return self.cfg.num_threads * (2 * self._ring_pieces * 16 + 8)

    def _ring_piece(self, stage: Int32, tidx: Int32, q: int) -> Int32:
        """Shared address of input piece q of thread tidx in ring stage ``stage``."""
        return stage + tidx * 16 + q * self.cfg.num_threads * 16

    def _ring_slot(self, stage: Int32, tidx: Int32) -> Int32:
        """Shared address of thread tidx's slot (8 bytes) in ring stage ``stage``."""
        return stage + 2 * self._ring_pieces * self.cfg.num_threads * 16 + tidx * 8

    @cute.jit
    def _advance(self, tok: Int32, head: Int32, step_tok: Int32, step_head: Int32,
                 num_heads: Int32):
        """(token, head) of a lane group's vector one grid stride later (no division: the
        stride is step_tok tokens + step_head heads, with a carry)."""
        head = head + step_head
        wrap = head >= num_heads
        head = Int32(cutlass.select_(wrap, head - num_heads, head))
        tok = tok + step_tok + Int32(cutlass.select_(wrap, Int32(1), Int32(0)))
        return tok, head

    @cute.jit
    def _issue_vector(self, stage: Int32, tok: Int32, head: Int32, num_tokens: Int32,
                      num_heads: Int32, key_base: Int64, val_base: Int64, slot_base: Int64,
                      tidx: Int32, lane: Int32):
        """smem_stages: cp.async this lane's words of vector (tok, head) and its slot into
        ring stage ``stage`` (past the end: the last token's, as _load_vector)."""
        cfg = self.cfg
        tc = Int64(cutlass.select_(tok < num_tokens, tok, num_tokens - 1))
        pc = tc * Int64(num_heads) + Int64(head)
        q = 0
        for base in (key_base, val_base):
            for k in cutlass.range_constexpr(self.geo.chunks):
                off = (pc * cfg.head_dim + self.geo.chunk_offset(k) + Int64(lane) * 8) * \
                    self.in_bytes
                for h in cutlass.range_constexpr(self.in_bytes // 2):
                    _dq.cp_async_16(self._ring_piece(stage, tidx, q), base + off + 16 * h,
                                    Int32(16))
                    q += 1
        _dq.cp_async_ca(self._ring_slot(stage, tidx), slot_base + tc * 8, 8, Int32(8))

    @cute.jit
    def _read_vector(self, stage: Int32, tidx: Int32):
        """smem_stages: (key words, value words, slot lo, slot hi) of ring stage ``stage``."""
        P = self._ring_pieces
        words = []
        for q in cutlass.range_constexpr(2 * P):
            words.extend([Uint32(x) for x in _dq.ld_shared_v4(self._ring_piece(stage, tidx, q))])
        lo, hi = _lds_v2(self._ring_slot(stage, tidx))
        return words[:4 * P], words[4 * P:], lo, hi

    @cute.jit
    def _to_f32(self, words: list, smask: Uint32):
        """Input words -> float32 values with the rotation signs applied (exact)."""
        y = []
        if const_expr(self.cfg.in_dtype == "float32"):
            for r in cutlass.range_constexpr(self.geo.elems):
                y.append(_xor_sign(_bits_to_f32(words[r]), _reg_sign(smask, r)))
        elif const_expr(self.cfg.in_dtype == "bfloat16"):
            for j in cutlass.range_constexpr(self.geo.elems // 2):
                w = words[j]
                y.append(_bits_to_f32((w << Uint32(16)) ^ _reg_sign(smask, 2 * j)))
                y.append(_bits_to_f32((w & Uint32(0xFFFF0000)) ^ _reg_sign(smask, 2 * j + 1)))
        else:
            for j in cutlass.range_constexpr(self.geo.elems // 2):
                lo, hi = _f16x2_to_f32(words[j])
                y.append(_xor_sign(lo, _reg_sign(smask, 2 * j)))
                y.append(_xor_sign(hi, _reg_sign(smask, 2 * j + 1)))
        return y

    @cute.jit
    def _codes_binary(self, y: list, n: Float32, sThr: cute.Tensor, sCb2: cute.Tensor,
                      bits: cutlass.Constexpr):
        """Binary search (b steps) -> (4 packed code words, padded with 0; sum of c[code]^2)."""
        nlev = 1 << bits
        t_mid = _mul_rn(sThr[nlev // 2 - 1], n)
        t_lo = _mul_rn(sThr[nlev // 4 - 1], n)
        t_hi = _mul_rn(sThr[3 * nlev // 4 - 1], n)
        nch = self.cfg.sum_chains
        cs = [Float64(0.0)] * nch
        out = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            words = [Uint32(0), Uint32(0)]
            for i in cutlass.range_constexpr(8):
                yr = y[8 * k + i]
                p1 = t_mid < yr
                code = Int32(cutlass.select_(p1, Int32(nlev // 2), Int32(0)))
                t2 = Float32(cutlass.select_(p1, t_hi, t_lo))
                code = code + Int32(cutlass.select_(t2 < yr, Int32(nlev // 4), Int32(0)))
                for s in cutlass.range_constexpr(2, bits):
                    cand = code + (nlev >> (s + 1))
                    t = _mul_rn(sThr[cand - 1], n)
                    code = Int32(cutlass.select_(t < yr, cand, code))
                cs[i % nch] = _add_f64(cs[i % nch], sCb2[code])
                sh = (bits * i) % 32
                words[(bits * i) // 32] = words[(bits * i) // 32] | (Uint32(code) << Uint32(sh))
            out.extend(words if const_expr(bits == 8) else words[:1])
        return out, _chain_total(cs)

    @cute.jit
    def _codes_count(self, y: list, n: Float32, sThr: cute.Tensor, sCb2: cute.Tensor):
        """2-bit: code = #{j : t_j * n < y} over the 3 scaled thresholds in registers, as
        2 * (T1 < y) + (T < y) with T = T2 or T0 (FSETP, FSEL, SEL, FSETP, predicated IADD)."""
        t0 = _mul_rn(sThr[0], n)
        t1 = _mul_rn(sThr[1], n)
        t2 = _mul_rn(sThr[2], n)
        nch = self.cfg.sum_chains
        cs = [Float64(0.0)] * nch
        out = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            word = Uint32(0)
            for i in cutlass.range_constexpr(8):
                yr = y[8 * k + i]
                p1 = t1 < yr
                code = _inc_if_lt(Uint32(cutlass.select_(p1, Uint32(2), Uint32(0))),
                                  Float32(cutlass.select_(p1, t2, t0)), yr)
                cs[i % nch] = _add_f64(cs[i % nch], sCb2[Int32(code)])
                word = word + (code << Uint32(2 * i))
            out.append(word)
        return out, _chain_total(cs)

    @cute.jit
    def _codes_lut(self, y: list, n: Float32, scale: Float32, lut_off: Uint32,
                   sThr: cute.Tensor, sCb2: cute.Tensor, bits: cutlass.Constexpr):
        """Grid-table guess + one exact compare (see the module doc for why it is exact).

        scale = S / n. fma(y, scale, magic + G/2) rounds y * scale to an integer k + G/2 held
        in the low mantissa bits; entry k = (threshold t_c bits, c) with every t_j (j < c)
        certainly below and every t_j (j > c) certainly above y, so code = c + (t_c * n < y)."""
        G = _LUT_CELLS[bits]
        magic = Float32(_LUT_MAGIC + G // 2)
        thr_addr = Int32(sThr.iterator.toint())  # (index8: the 8-byte-strided copy)
        i8 = const_expr(self.cfg.index8)
        cb2_addr = Int32(sCb2.iterator.toint())
        nch = self.cfg.sum_chains
        cs = [Float64(0.0)] * nch
        out = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            words = [Uint32(0), Uint32(0)]
            for i in cutlass.range_constexpr(8):
                yr = y[8 * k + i]
                kf = _fma_rn(yr, scale, magic)
                # The cell index is masked to the table (G is a power of two and the low
                # bits of bits(magic) are 0), so a vector the table cannot serve (NaN or
                # infinite n and y, whose result the binary search then replaces) reads
                # some entry inside the table instead of an arbitrary address.
                kb = _f32_to_bits(kf) & Uint32(G - 1)
                sh = (bits * i) % 32
                if const_expr(_LUT_ENTRY_BYTES[bits] == 1):
                    # The byte entry is 4 * c: it is the byte offset of thr[c] (LDS [R + UR],
                    # no LEA), and 4 * code << (sh - 2) = code << sh packs it. index8: 8 * c,
                    # also the byte offset of c[c]^2 (float64), so no shift for that lookup.
                    e = 8 if i8 else 4
                    ce = _lds_u8(Int32(kb | lut_off))
                    t = _mul_rn(_lds_f32(Int32(ce) + thr_addr), n)
                    code_e = _inc_if_lt(ce, t, yr, e)
                    cb2_off = code_e if i8 else code_e << Uint32(1)
                    cs[i % nch] = _add_f64(cs[i % nch], _lds_f64(Int32(cb2_off) + cb2_addr))
                    lg = 3 if i8 else 2
                    if const_expr(sh == 0):
                        field = code_e >> Uint32(lg)
                    else:
                        field = code_e << Uint32(sh - lg)
                else:
                    tb, c = _lds_v2(Int32((kb << Uint32(3)) + lut_off))
                    t = _mul_rn(_bits_to_f32(tb), n)
                    code = _inc_if_lt(c, t, yr)
                    cs[i % nch] = _add_f64(cs[i % nch], sCb2[Int32(code)])
                    field = code << Uint32(sh)
                # fields do not overlap: + is |, and lets ptxas use one LEA / IMAD
                words[(bits * i) // 32] = words[(bits * i) // 32] + field
            out.extend(words if const_expr(bits == 8) else words[:1])
        return out, _chain_total(cs)

    @cute.jit
    def _quantize(self, words: list, smask: Uint32, sThr: cute.Tensor, sCb2: cute.Tensor,
                  lut_off: Uint32, lut_ok: Boolean, lut_one: Int32, bits: cutlass.Constexpr,
                  lane: Int32, sThrL: cute.Tensor):
        """-> (packed code words per chunk, n, group sum of c[code]^2)."""
        geo = self.geo
        lut = const_expr(self.cfg.algo == "lut")
        y = self._to_f32(words, smask)
        _wht(y, geo, lane, lut)
        inv = Float32(_inv_sqrt_f32(self.cfg.head_dim))
        nch = self.cfg.sum_chains
        ss = [Float64(0.0)] * nch
        for r in cutlass.range_constexpr(self.geo.elems):
            y[r] = _mul_rn(y[r], inv)
            ss[r % nch] = _sq_acc_f64(ss[r % nch], y[r])
        ss = _group_sum_f64(_chain_total(ss), geo.log_lanes)
        n = _sqrt_to_f32(ss)
        if const_expr(not lut):
            w, cs = self._codes_binary(y, n, sThr, sCb2, bits)
        elif const_expr(bits == 2):
            w, cs = self._codes_count(y, n, sThr, sCb2)
        else:
            # Group-uniform branch (n is the vector's): the table serves n in range only.
            use_lut = lut_ok & (n >= Float32(_LUT_N_MIN)) & (n <= Float32(_LUT_N_MAX))
            scale = _div_full(Float32(_LUT_CELLS[bits] // 2 - 2), n)
            # The table path always runs (its lookups stay inside the table for any n and
            # y); vectors it cannot serve redo the search in a loop of 0 or 1 iterations.
            # With an if/else, ptxas if-converted the rare binary path into the hot one
            # (every element issued both searches, predicated). The loop's trip count comes
            # from shared memory (lut_one == 1, unknown to the compilers) and its body is
            # not idempotent (it accumulates), so LLVM cannot fold it into an if and ptxas
            # keeps a real branch with a back edge.
            lw, lcs = self._codes_lut(y, n, scale, lut_off, sThrL, sCb2, bits)
            f0, f1, f2, f3, f4, f5, f6, f7 = [Uint32(0)] * 8
            fcs = Float64(0.0)
            for _ in cutlass.range(Int32(cutlass.select_(use_lut, Int32(0), lut_one))):
                bw, bcs = self._codes_binary(y, n, sThr, sCb2, bits)
                bw = bw + [Uint32(0)] * (8 - len(bw))
                f0 = f0 + bw[0]
                f1 = f1 + bw[1]
                f2 = f2 + bw[2]
                f3 = f3 + bw[3]
                f4 = f4 + bw[4]
                f5 = f5 + bw[5]
                f6 = f6 + bw[6]
                f7 = f7 + bw[7]
                fcs = _add_f64(fcs, bcs)  # 0 + cs = cs exactly (cs >= 0)
            fw = [f0, f1, f2, f3, f4, f5, f6, f7]
            w = [Uint32(cutlass.select_(use_lut, lw[q], fw[q])) for q in range(len(lw))]
            cs = Float64(cutlass.select_(use_lut, lcs, fcs))
        wpc = 2 if const_expr(bits == 8) else 1  # 32-bit code words per chunk
        packed = [tuple(w[wpc * k: wpc * k + wpc]) for k in range(self.geo.chunks)]
        cs = _group_sum_f64(cs, geo.log_lanes)
        return packed, n, cs

    @cute.jit
    def _fill_side(self, mCb: cute.Tensor, sThr: cute.Tensor, sThrL: cute.Tensor,
                   sCb2: cute.Tensor, n: cutlass.Constexpr, i8: cutlass.Constexpr, tidx: Int32):
        """One side's thresholds (+ the lut sentinel, + index8's strided copy) and squared
        centroids from its codebook."""
        for j in cutlass.range(tidx, n, self.cfg.num_threads):
            cj = mCb[j]
            tj = Float32(float("inf"))  # sentinel for the grid-table build (lut)
            if j < n - 1:
                tj = _mul_rn(_add_rn(cj, mCb[j + 1]), Float32(0.5))
                sThr[j] = tj
            if const_expr(self.cfg.algo == "lut"):
                if j == n - 1:
                    sThr[j] = tj
            if const_expr(i8):
                sThrL[2 * j] = tj
            sCb2[j] = _sq_f64(cj)

    def _alloc_lut(self, smem, bits: int):
        G = _LUT_CELLS[bits]
        if _LUT_ENTRY_BYTES[bits] == 1:
            # aligned to its size: the entry address is (cell | base), one LOP3
            return smem.allocate_tensor(cutlass.Uint8, cute.make_layout(G), byte_alignment=G)
        return smem.allocate_tensor(Uint32, cute.make_layout(2 * G), byte_alignment=16)

    @cute.jit
    def _build_lut(self, sThr: cute.Tensor, sLut: cute.Tensor, sFlag: cute.Tensor, side: int,
                   bits: cutlass.Constexpr, tidx: Int32):
        """Fill the grid table of one side (cells tidx*P ... tidx*P+P-1); clear sFlag[side] if
        some cell can hold two thresholds or the thresholds are out of range.

        Entry k = (bits of t_c, c): c starts as #{j : t_j < lo_k - tol} (binary search for the
        thread's first cell), then grows by at most one per cell (so every t_j, j < c, stays
        certainly below the cell); the cell is valid iff t_(c+1) > hi_k + tol (every t_j, j > c,
        certainly above). sThr[m] = +inf is the sentinel past the last threshold."""
        G = _LUT_CELLS[bits]
        P = G // self.cfg.num_threads
        m = (1 << bits) - 1
        S = Float32(G // 2 - 2)
        tol = Float32(_LUT_TOL)
        ok = (sThr[0] >= Float32(-_LUT_T_MAX)) & (sThr[m - 1] <= Float32(_LUT_T_MAX))
        k0 = tidx * P
        v = _div_full(Float32(k0) - Float32(G // 2 + 0.5), S) - tol
        c = Int32(0)
        for s in cutlass.range_constexpr(bits):
            cand = c + (1 << (bits - 1 - s))
            c = Int32(cutlass.select_(sThr[cand - 1] < v, cand, c))
        for q in cutlass.range_constexpr(P):
            kf = Float32(k0 + q)
            lo = _div_full(kf - Float32(G // 2 + 0.5), S) - tol
            hi = _div_full(kf - Float32(G // 2 - 0.5), S) + tol
            if const_expr(q > 0):
                c = c + Int32(cutlass.select_(sThr[c] < lo, Int32(1), Int32(0)))
            nxt = Int32(cutlass.select_(c < m, c + 1, Int32(m)))
            ok = ok & (sThr[nxt] > hi)
            if const_expr(_LUT_ENTRY_BYTES[bits] == 1):
                # byte offset of thr[c] (index8: of entry c of the 8-byte-strided copy)
                sLut[k0 + q] = cutlass.Uint8((8 if self.cfg.index8 else 4) * c)
            else:
                sLut[2 * (k0 + q)] = _f32_to_bits(sThr[c])
                sLut[2 * (k0 + q) + 1] = Uint32(c)
        if not ok:
            sFlag[side] = Uint32(0)

    @cute.jit
    def _store_codes(self, cache_base: Int64, row: Int64, packed: list,
                     bits: cutlass.Constexpr, lane: Int32, ok: Boolean):
        row_bytes = self.cfg.head_dim * bits // 8
        for k in cutlass.range_constexpr(self.geo.chunks):
            off = row * row_bytes + (self.geo.chunk_offset(k) + lane * 8) * bits // 8
            if const_expr(bits == 8):
                _st_v2(cache_base + off, packed[k][0], packed[k][1], ok)
            elif const_expr(bits == 4):
                _st_b32(cache_base + off, packed[k][0], ok)
            else:
                _st_b16(cache_base + off, packed[k][0], ok)

    @cute.kernel
    def kernel(self, mKey: cute.Tensor, mValue: cute.Tensor, mKCache: cute.Tensor,
               mVCache: cute.Tensor, mKNorm: cute.Tensor, mVNorm: cute.Tensor,
               mSlot: cute.Tensor, mKSigns: cute.Tensor, mVSigns: cute.Tensor,
               mKCb: cute.Tensor, mVCb: cute.Tensor):
        cfg = self.cfg
        geo = self.geo
        G = geo.lanes
        vpc = cfg.num_threads // G
        tidx, _, _ = cute.arch.thread_idx()
        cta, _, _ = cute.arch.block_idx()
        nctas, _, _ = cute.arch.grid_dim()
        lane = tidx % G
        vec = tidx // G

        smem = cutlass.memory.SmemAllocator()
        nk = 1 << cfg.k_bits
        nv = 1 << cfg.v_bits
        sKThr = smem.allocate_tensor(Float32, cute.make_layout(nk), byte_alignment=16)
        sVThr = smem.allocate_tensor(Float32, cute.make_layout(nv), byte_alignment=16)
        sKCb2 = smem.allocate_tensor(Float64, cute.make_layout(nk), byte_alignment=16)
        sVCb2 = smem.allocate_tensor(Float64, cute.make_layout(nv), byte_alignment=16)
        k_lut = const_expr(cfg.algo == "lut" and cfg.k_bits in _LUT_CELLS)
        v_lut = const_expr(cfg.algo == "lut" and cfg.v_bits in _LUT_CELLS)
        # [K table usable, V table usable, K table offset, V table offset, 1]
        sFlag = smem.allocate_tensor(Uint32, cute.make_layout(8), byte_alignment=16)
        sKLut = sKThr
        sVLut = sVThr
        # thresholds the grid-table path reads (index8 with a 4-bit table: an 8-byte-strided
        # copy, element 2 j = thr[j])
        k_i8 = const_expr(cfg.index8 and k_lut and _LUT_ENTRY_BYTES[cfg.k_bits] == 1)
        v_i8 = const_expr(cfg.index8 and v_lut and _LUT_ENTRY_BYTES[cfg.v_bits] == 1)
        sKThrL = sKThr
        sVThrL = sVThr
        if const_expr(k_i8):
            sKThrL = smem.allocate_tensor(Float32, cute.make_layout(2 * nk), byte_alignment=16)
        if const_expr(v_i8):
            sVThrL = smem.allocate_tensor(Float32, cute.make_layout(2 * nv), byte_alignment=16)
        if const_expr(k_lut):
            sKLut = self._alloc_lut(smem, cfg.k_bits)
        if const_expr(v_lut):
            sVLut = self._alloc_lut(smem, cfg.v_bits)
        # Thresholds exactly as codec_thresholds: (c[j] + c[j+1]) * 0.5 in float32; squared
        # centroids in float64 (exact) for the norm correction.
        self._fill_side(mKCb, sKThr, sKThrL, sKCb2, nk, k_i8, tidx)
        self._fill_side(mVCb, sVThr, sVThrL, sVCb2, nv, v_i8, tidx)
        if tidx == 0:
            sFlag[0] = Uint32(1)
            sFlag[1] = Uint32(1)
            sFlag[4] = Uint32(1)
            if const_expr(k_lut or v_lut):
                # Table base addresses (entry of cell k: base + E * k, where k is the low
                # log2(G) bits of the fma result). Read back from shared memory after the
                # barrier, so that ptxas keeps the base in one register (one LOP3 / LEA per
                # lookup) instead of splitting it into a base + constant.
                # A byte table's address is (cell | base): a base that is not aligned to the
                # table size (not expected: the allocator aligns it) disables the table.
                if const_expr(k_lut):
                    sFlag[2] = Uint32(sKLut.iterator.toint())
                    if const_expr(_LUT_ENTRY_BYTES[cfg.k_bits] == 1):
                        if (sFlag[2] & Uint32(_LUT_CELLS[cfg.k_bits] - 1)) != Uint32(0):
                            sFlag[0] = Uint32(0)
                if const_expr(v_lut):
                    sFlag[3] = Uint32(sVLut.iterator.toint())
                    if const_expr(_LUT_ENTRY_BYTES[cfg.v_bits] == 1):
                        if (sFlag[3] & Uint32(_LUT_CELLS[cfg.v_bits] - 1)) != Uint32(0):
                            sFlag[1] = Uint32(0)
        S = cfg.smem_stages
        ring = Int32(0)
        if const_expr(S > 0):
            ring = smem.allocate(S * self.ring_stage_bytes, 128).toint()
        kmask = _sign_mask(mKSigns, geo, lane)
        vmask = _sign_mask(mVSigns, geo, lane)
        cute.arch.sync_threads()
        if const_expr(k_lut):
            self._build_lut(sKThr, sKLut, sFlag, 0, cfg.k_bits, tidx)
        if const_expr(v_lut):
            self._build_lut(sVThr, sVLut, sFlag, 1, cfg.v_bits, tidx)
        k_off = Uint32(0)
        v_off = Uint32(0)
        lut_one = Int32(1)
        k_ok = Boolean(False)
        v_ok = Boolean(False)
        if const_expr(k_lut or v_lut):
            cute.arch.sync_threads()
            k_ok = sFlag[0] != Uint32(0)
            v_ok = sFlag[1] != Uint32(0)
            k_off = sFlag[2]
            v_off = sFlag[3]
            lut_one = Int32(sFlag[4])

        num_tokens = mKey.shape[0]
        num_heads = mKey.shape[1]
        total = Int64(num_tokens) * Int64(num_heads)
        num_slots = Int64(mKCache.shape[0]) * Int64(mKCache.shape[1])
        step = Int64(nctas) * vpc
        iters = (total + step - 1) // step
        # (token, head) of this group's vector, advanced by the grid stride without a
        # division per iteration (the 64-bit pc // num_heads was ~25 SASS per iteration).
        # Int32 is enough: the host rejects num_tokens > _MAX_TOKENS.
        p0 = cta * vpc + vec
        tok = p0 // num_heads
        head = p0 - tok * num_heads
        step32 = nctas * vpc
        step_tok = step32 // num_heads
        step_head = step32 - step_tok * num_heads
        key_base = _addr(mKey)
        val_base = _addr(mValue)
        kc_base = _addr(mKCache)
        vc_base = _addr(mVCache)
        kn_base = _addr(mKNorm)
        vn_base = _addr(mVNorm)
        slot_base = _addr(mSlot)
        # prefetch: register buffer of the next vector's [key words, value words, slot lo, hi]
        nside = self.geo.chunks * 4 * (self.in_bytes // 2)  # 32-bit input words per side
        pf = cute.make_rmem_tensor(cute.make_layout(2 * nside + 2), Uint32)
        if const_expr(cfg.prefetch):
            self._load_vector(pf, tok, head, num_tokens, num_heads, key_base, val_base,
                              slot_base, lane)
        # smem_stages: (token, head) of the next vector to issue, S - 1 ahead of (tok, head)
        itok = tok
        ihead = head
        if const_expr(S > 0):
            for s_ in cutlass.range_constexpr(S - 1):
                self._issue_vector(ring + s_ * self.ring_stage_bytes, itok, ihead, num_tokens,
                                   num_heads, key_base, val_base, slot_base, tidx, lane)
                cute.arch.cp_async_commit_group()
                itok, ihead = self._advance(itok, ihead, step_tok, step_head, num_heads)
        for it in cutlass.range(iters):
            valid = tok < num_tokens
            cur_head = head
            if const_expr(S > 0):
                # stage (it - 1) % S was read (and its words consumed) last iteration
                self._issue_vector(ring + ((it + S - 1) % S) * self.ring_stage_bytes, itok,
                                   ihead, num_tokens, num_heads, key_base, val_base,
                                   slot_base, tidx, lane)
                cute.arch.cp_async_commit_group()
                itok, ihead = self._advance(itok, ihead, step_tok, step_head, num_heads)
                cute.arch.cp_async_wait_group(S - 1)
                kw, vw, lo, hi = self._read_vector(ring + (it % S) * self.ring_stage_bytes,
                                                   tidx)
            elif const_expr(cfg.prefetch):
                buf = [pf[q] for q in range(2 * nside + 2)]
                kw = buf[:nside]
                vw = buf[nside:2 * nside]
                lo = buf[2 * nside]
                hi = buf[2 * nside + 1]
                # advance first, then start the next vector's loads before this one's math
                tok, head = self._advance(tok, head, step_tok, step_head, num_heads)
                self._load_vector(pf, tok, head, num_tokens, num_heads, key_base, val_base,
                                  slot_base, lane)
            else:
                # Past the end: compute on a real vector and store nothing, so that every
                # lane takes part in every shuffle (no divergent control flow in the loop).
                tc = Int64(cutlass.select_(valid, tok, num_tokens - 1))
                pc = tc * Int64(num_heads) + Int64(head)
                lo, hi = _ld_v2(slot_base + tc * 8)
                kw = self._load_side(key_base, pc, lane)
                vw = self._load_side(val_base, pc, lane)
            slot = Int64(lo) | (Int64(hi) << Int64(32))
            ok = valid & (slot >= 0) & (slot < num_slots)
            row = slot * Int64(num_heads) + cur_head
            kpacked, kn, kcs = self._quantize(kw, kmask, sKThr, sKCb2, k_off, k_ok, lut_one,
                                              cfg.k_bits, lane, sKThrL)
            self._store_codes(kc_base, row, kpacked, cfg.k_bits, lane, ok)
            vpacked, vn, vcs = self._quantize(vw, vmask, sVThr, sVCb2, v_off, v_ok, lut_one,
                                              cfg.v_bits, lane, sVThrL)
            self._store_codes(vc_base, row, vpacked, cfg.v_bits, lane, ok)
            # Norm correction (float64 sqrt + div, ~60 SASS) once for both sides: even lanes
            # compute K's, odd lanes V's (every lane of a group holds both sums); lane 0
            # stores K's norm, lane 1 V's.
            odd = (lane & 1) != 0
            nbits = _norm_correction_bf16(Float32(cutlass.select_(odd, vn, kn)),
                                          Float64(cutlass.select_(odd, vcs, kcs)))
            norm_base = Int64(cutlass.select_(odd, vn_base, kn_base))
            _st_b16(norm_base + row * 2, nbits, ok & (lane < 2))
            if const_expr(not cfg.prefetch):
                tok, head = self._advance(tok, head, step_tok, step_head, num_heads)


# =============================================================================== dequantize
@dataclass(frozen=True)
class DequantConfig:
    """Everything that changes the dequantize kernel's code (also its compile-cache key)."""

    head_dim: int = 128
    k_bits: int = 4
    v_bits: int = 4
    out_dtype: str = "bfloat16"
    unrotate: bool = False
    num_threads: int = 256

    def __post_init__(self):
        if self.head_dim not in _SUPPORTED_HEAD_DIMS:
            raise ValueError(f"dequantize: head_dim must be one of {_SUPPORTED_HEAD_DIMS}, got {self.head_dim}")
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in _SUPPORTED_BITS:
                raise ValueError(f"dequantize: {name} must be one of {_SUPPORTED_BITS}")
        if self.out_dtype not in _DTYPES:
            raise ValueError(f"dequantize: out_dtype must be one of {tuple(_DTYPES)}, got {self.out_dtype!r}")

    @property
    def name(self) -> str:
        rot = "_unrot" if self.unrotate else ""
        return f"dequant_d{self.head_dim}_k{self.k_bits}v{self.v_bits}_{self.out_dtype}{rot}"


class DequantizeKernel:
    def __init__(self, cfg: DequantConfig):
        self.cfg = cfg
        self.geo = _Geometry(cfg.head_dim)
        self.out_bytes = torch.empty((), dtype=_DTYPES[cfg.out_dtype]).element_size()

    @cute.jit
    def __call__(self, mKCache: cute.Tensor, mVCache: cute.Tensor, mKNorm: cute.Tensor,
                 mVNorm: cute.Tensor, mBlockTable: cute.Tensor, mCuSeqlens: cute.Tensor,
                 mKCb: cute.Tensor, mVCb: cute.Tensor, mKSigns: cute.Tensor, mVSigns: cute.Tensor,
                 mKOut: cute.Tensor, mVOut: cute.Tensor, num_ctas: Int32, search_steps: Int32,
                 stream):
        self.kernel(mKCache, mVCache, mKNorm, mVNorm, mBlockTable, mCuSeqlens, mKCb, mVCb,
                    mKSigns, mVSigns, mKOut, mVOut, search_steps).launch(
            grid=[num_ctas, 1, 1], block=[self.cfg.num_threads, 1, 1], stream=stream)

    @cute.jit
    def _load_codes(self, base: Int64, row: Int64, bits: cutlass.Constexpr, lane: Int32):
        row_bytes = self.cfg.head_dim * bits // 8
        words = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            addr = base + row * row_bytes + (self.geo.chunk_offset(k) + lane * 8) * bits // 8
            if const_expr(bits == 8):
                w0, w1 = _ld_v2(addr)
                words.append((w0, w1))
            elif const_expr(bits == 4):
                words.append((_ld_b32(addr),))
            else:
                words.append((_ld_u16(addr),))
        return words

    @cute.jit
    def _decode_store(self, words: list, nbits: Uint32, sCb: cute.Tensor, smask: Uint32,
                      bits: cutlass.Constexpr, out_base: Int64, pc: Int64, lane: Int32,
                      ok: Boolean):
        cfg = self.cfg
        n = _bits_to_f32(nbits << Uint32(16))
        y = []
        for k in cutlass.range_constexpr(self.geo.chunks):
            for i in cutlass.range_constexpr(8):
                w = words[k][(bits * i) // 32]
                code = (w >> Uint32((bits * i) % 32)) & Uint32((1 << bits) - 1)
                # x = codebook[code] * norm (float32, one rounding; mul.rn is never fused
                # into the WHT additions that follow).
                y.append(_mul_rn(sCb[Int32(code)], n))
        if const_expr(cfg.unrotate):
            _wht(y, self.geo, lane)
            inv = Float32(_inv_sqrt_f32(cfg.head_dim))
            for r in cutlass.range_constexpr(self.geo.elems):
                y[r] = _xor_sign(_mul_rn(y[r], inv), _reg_sign(smask, r))
        for k in cutlass.range_constexpr(self.geo.chunks):
            addr = out_base + (pc * cfg.head_dim + self.geo.chunk_offset(k) + Int64(lane) * 8) * self.out_bytes
            if const_expr(cfg.out_dtype == "float32"):
                _st_v4(addr, _f32_to_bits(y[8 * k]), _f32_to_bits(y[8 * k + 1]),
                       _f32_to_bits(y[8 * k + 2]), _f32_to_bits(y[8 * k + 3]), ok)
                _st_v4(addr + 16, _f32_to_bits(y[8 * k + 4]), _f32_to_bits(y[8 * k + 5]),
                       _f32_to_bits(y[8 * k + 6]), _f32_to_bits(y[8 * k + 7]), ok)
            else:
                f16 = cfg.out_dtype == "float16"
                o = [_pack2(y[8 * k + 2 * i], y[8 * k + 2 * i + 1], f16) for i in range(4)]
                _st_v4(addr, o[0], o[1], o[2], o[3], ok)

    @cute.kernel
    def kernel(self, mKCache: cute.Tensor, mVCache: cute.Tensor, mKNorm: cute.Tensor,
               mVNorm: cute.Tensor, mBlockTable: cute.Tensor, mCuSeqlens: cute.Tensor,
               mKCb: cute.Tensor, mVCb: cute.Tensor, mKSigns: cute.Tensor, mVSigns: cute.Tensor,
               mKOut: cute.Tensor, mVOut: cute.Tensor, search_steps: Int32):
        cfg = self.cfg
        geo = self.geo
        G = geo.lanes
        vpc = cfg.num_threads // G
        tidx, _, _ = cute.arch.thread_idx()
        cta, _, _ = cute.arch.block_idx()
        nctas, _, _ = cute.arch.grid_dim()
        lane = tidx % G
        vec = tidx // G

        smem = cutlass.memory.SmemAllocator()
        nk = 1 << cfg.k_bits
        nv = 1 << cfg.v_bits
        sKCb = smem.allocate_tensor(Float32, cute.make_layout(nk), byte_alignment=16)
        sVCb = smem.allocate_tensor(Float32, cute.make_layout(nv), byte_alignment=16)
        for j in cutlass.range(tidx, nk, cfg.num_threads):
            sKCb[j] = mKCb[j]
        for j in cutlass.range(tidx, nv, cfg.num_threads):
            sVCb[j] = mVCb[j]
        kmask = Uint32(0)
        vmask = Uint32(0)
        if const_expr(cfg.unrotate):
            kmask = _sign_mask(mKSigns, geo, lane)
            vmask = _sign_mask(mVSigns, geo, lane)
        cute.arch.sync_threads()

        total_k = mKOut.shape[0]
        num_heads = mKOut.shape[1]
        block_size = mKCache.shape[1]
        batch = mCuSeqlens.shape[0] - 1
        total = Int64(total_k) * Int64(num_heads)
        step = Int64(nctas) * vpc
        iters = (total + step - 1) // step
        kc_base = _addr(mKCache)
        vc_base = _addr(mVCache)
        kn_base = _addr(mKNorm)
        vn_base = _addr(mVNorm)
        ko_base = _addr(mKOut)
        vo_base = _addr(mVOut)
        for it in cutlass.range(iters):
            p = Int64(it) * step + Int64(cta) * vpc + Int64(vec)
            ok = p < total
            pc = Int64(cutlass.select_(ok, p, total - 1))
            tok = Int32(pc // Int64(num_heads))
            head = Int32(pc - Int64(tok) * Int64(num_heads))
            # Sequence of token tok: the last b with cu[b] <= tok (fixed step count keeps the
            # lanes converged; empty sequences are skipped because cu[b+1] > tok).
            lo = Int32(0)
            hi = Int32(batch)
            for _ in cutlass.range(search_steps):
                mid = (lo + hi) >> 1
                go_up = (mCuSeqlens[mid] <= tok) & (hi - lo > 1)
                lo = Int32(cutlass.select_(go_up, mid, lo))
                hi = Int32(cutlass.select_(go_up | (hi - lo <= 1), hi, mid))
            pos = tok - mCuSeqlens[lo]
            blk_i = pos // block_size
            blk = mBlockTable[lo, blk_i]
            row = (Int64(blk) * Int64(block_size) + Int64(pos - blk_i * block_size)) * Int64(num_heads) + Int64(head)
            kw = self._load_codes(kc_base, row, cfg.k_bits, lane)
            vw = self._load_codes(vc_base, row, cfg.v_bits, lane)
            knb = _ld_u16(kn_base + row * 2)
            vnb = _ld_u16(vn_base + row * 2)
            self._decode_store(kw, knb, sKCb, kmask, cfg.k_bits, ko_base, pc, lane, ok)
            self._decode_store(vw, vnb, sVCb, vmask, cfg.v_bits, vo_base, pc, lane, ok)


# =============================================================================== compilation
def _fake(dtype, shape, align=16):
    """Fake CuTe tensor with dynamic (symbolic) sizes where given None, row-major dynamic
    strides and unit last stride. The kernels compute addresses from contiguous shapes."""
    dims = tuple(cute.sym_int() if s is None else s for s in shape)
    stride = tuple([cute.sym_int64() for _ in dims[:-1]] + [1])
    return cute.runtime.make_fake_tensor(dtype, dims, stride=stride, assumed_align=align)


def _compile_compress(cfg: CompressConfig):
    in_dt = _CUTE_DTYPES[cfg.in_dtype]
    d = cfg.head_dim
    key = _fake(in_dt, (None, None, d))
    value = _fake(in_dt, (None, None, d))
    kc = _fake(cutlass.Uint8, (None, None, None, d * cfg.k_bits // 8))
    vc = _fake(cutlass.Uint8, (None, None, None, d * cfg.v_bits // 8))
    kn = _fake(cutlass.BFloat16, (None, None, None), align=2)
    vn = _fake(cutlass.BFloat16, (None, None, None), align=2)
    slot = _fake(Int64, (None,), align=8)
    ks = _fake(Float32, (d,), align=4)
    vs = _fake(Float32, (d,), align=4)
    kcb = _fake(Float32, (1 << cfg.k_bits,), align=4)
    vcb = _fake(Float32, (1 << cfg.v_bits,), align=4)
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return cute.compile(CompressStoreKernel(cfg), key, value, kc, vc, kn, vn, slot, ks, vs, kcb,
                        vcb, Int32(1), stream, options=("--enable-tvm-ffi " + _EXTRA_OPTS).strip())


def _compile_dequant(cfg: DequantConfig):
    out_dt = _CUTE_DTYPES[cfg.out_dtype]
    d = cfg.head_dim
    kc = _fake(cutlass.Uint8, (None, None, None, d * cfg.k_bits // 8))
    vc = _fake(cutlass.Uint8, (None, None, None, d * cfg.v_bits // 8))
    kn = _fake(cutlass.BFloat16, (None, None, None), align=2)
    vn = _fake(cutlass.BFloat16, (None, None, None), align=2)
    bt = _fake(Int32, (None, None), align=4)
    cu = _fake(Int32, (None,), align=4)
    kcb = _fake(Float32, (1 << cfg.k_bits,), align=4)
    vcb = _fake(Float32, (1 << cfg.v_bits,), align=4)
    ks = _fake(Float32, (d,), align=4)
    vs = _fake(Float32, (d,), align=4)
    ko = _fake(out_dt, (None, None, d))
    vo = _fake(out_dt, (None, None, d))
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return cute.compile(DequantizeKernel(cfg), kc, vc, kn, vn, bt, cu, kcb, vcb, ks, vs, ko, vo,
                        Int32(1), Int32(1), stream,
                        options=("--enable-tvm-ffi " + _EXTRA_OPTS).strip())


_EXTRA_OPTS = os.environ.get("FA4TQ_COMPRESS_COMPILE_OPTS", "")
_COMPILED: dict = {}


def _get_compiled(cfg, builder):
    fn = _COMPILED.get(cfg)
    if fn is None:
        fn = builder(cfg)
        _COMPILED[cfg] = fn
    return fn


# =============================================================================== host side
@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _debug_checks() -> bool:
    return os.environ.get("FA4TQ_DEBUG_CHECKS", "0") not in ("", "0", "false", "False")




def _check_aligned(**tensors) -> None:
    for name, t in tensors.items():
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must be 16-byte aligned for the CUDA kernel "
                             f"(data_ptr % 16 = {t.data_ptr() % 16})")


def _grid(num_vectors: int, head_dim: int, num_threads: int, device: torch.device,
          chunks: int = _CHUNKS) -> int:
    vpc = num_threads // _Geometry(head_dim, chunks).lanes
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(-(-num_vectors // vpc), _sm_count(idx) * _CTAS_PER_SM))


def lut_wide_supported(k_bits: int, v_bits: int) -> bool:
    """'lut-wide' compiles without spills for these sides (4-bit, or mixed 4/2-bit)."""
    return 8 not in (k_bits, v_bits) and 4 in (k_bits, v_bits)


def variant_supported(algo: str, k_bits: int, v_bits: int, in_dtype: str = "bfloat16") -> bool:
    """Variant ``algo`` compiles for these sides without spills at its occupancy (sm_90a,
    checked on the CPU): wide variants as lut_wide_supported; prefetch needs <= 128
    registers at 256 threads (two CTAs per SM): 16-bit inputs only (float32 doubles the
    buffer: 8 B spill), no 8-bit side (140 registers, or spills under a launch bound), and
    K2V2 only without sum_chains (164)."""
    fields = COMPRESS_VARIANTS[algo]
    if fields.get("chunks", _CHUNKS) != _CHUNKS and not lut_wide_supported(k_bits, v_bits):
        return False
    if fields.get("prefetch", False):
        if 8 in (k_bits, v_bits) or in_dtype == "float32":
            return False
        if fields.get("sum_chains", 1) > 1 and (k_bits, v_bits) == (2, 2):
            return False
    return True


def compress_config(head_dim: int, k_bits: int, v_bits: int, in_dtype: str,
                    algo: str) -> CompressConfig:
    """The CompressConfig of variant ``algo`` (a COMPRESS_VARIANTS name) for these sides."""
    if algo not in COMPRESS_VARIANTS:
        raise ValueError(f"compress_store: algo must be 'auto' or one of "
                         f"{tuple(COMPRESS_VARIANTS)}, got {algo!r}")
    fields = dict(COMPRESS_VARIANTS[algo])
    if algo == "lut-wide" and not lut_wide_supported(k_bits, v_bits):
        raise ValueError(f"compress_store: algo='lut-wide' does not support K{k_bits}V{v_bits} "
                         "(8-bit sides or both sides 2-bit spill registers at its 170-register "
                         "cap); use 'lut' or 'binary'")
    if not variant_supported(algo, k_bits, v_bits, in_dtype):
        raise ValueError(f"compress_store: algo={algo!r} does not support K{k_bits}V{v_bits} "
                         f"with {in_dtype} inputs (it needs more registers than its occupancy "
                         "allows: see variant_supported); use 'lut' or 'binary'")
    return CompressConfig(head_dim, k_bits, v_bits, in_dtype, **fields)


def compress_store_cuda(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping, k_signs,
                        v_signs, k_codebook, v_codebook, *, algo: str | None = None) -> None:
    """tqkv.compress_store on CUDA (arguments already validated by fa4_tq.validate).

    One launch quantizes K and V; bit-exact with reference.compress_store. Repeated
    non-negative slots are undefined (see module doc); FA4TQ_DEBUG_CHECKS=1 rejects them.
    ``algo`` picks the search variant (default: DEFAULT_COMPRESS_ALGO, read at call time)."""
    if algo is None:
        algo = DEFAULT_COMPRESS_ALGO
    if algo == "auto":
        idx = key.device.index if key.device.index is not None else torch.cuda.current_device()
        algo = default_compress_algo(_bits(k_codebook), _bits(v_codebook), key.shape[2],
                                     _DTYPE_NAMES[key.dtype], key.shape[0] * key.shape[1],
                                     _sm_count(idx))
    num_tokens, num_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if num_tokens > _MAX_TOKENS:
        raise ValueError(f"compress_store: num_tokens={num_tokens} > {_MAX_TOKENS} is not "
                         "supported by the CUDA kernel (32-bit token index)")
    _check_aligned(key=key, value=value, k_cache=k_cache, v_cache=v_cache)
    if _debug_checks():
        used = slot_mapping[slot_mapping >= 0]
        if used.numel() != torch.unique(used).numel():
            raise ValueError("slot_mapping repeats a non-negative slot; the CUDA compress_store "
                             "does not define which token wins (FA4TQ_DEBUG_CHECKS=1)")
    cfg = compress_config(head_dim, _bits(k_codebook), _bits(v_codebook),
                          _DTYPE_NAMES[key.dtype], algo)
    fn = _get_compiled(cfg, _compile_compress)
    grid = _grid(num_tokens * num_heads, head_dim, cfg.num_threads, key.device, cfg.chunks)
    fn(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping, k_signs, v_signs, k_codebook,
       v_codebook, grid)


def dequantize_cuda(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook,
                    v_codebook, k_signs, v_signs, unrotate, total_k, dtype):
    """tqkv.dequantize on CUDA -> (k, v) [total_k, Hkv, D] in ``dtype`` (validated args).

    Decode is bit-exact with reference.dequantize (x = codebook[code] * norm in float32,
    optional float32 inverse WHT in the reference's stage order, one rounding to dtype)."""
    num_heads = k_cache.shape[2]
    head_dim = k_cache.shape[3] * 8 // _bits(k_codebook)
    k_out = torch.empty((total_k, num_heads, head_dim), dtype=dtype, device=k_cache.device)
    v_out = torch.empty((total_k, num_heads, head_dim), dtype=dtype, device=k_cache.device)
    batch = cu_seqlens_k.shape[0] - 1
    if total_k == 0:
        return k_out, v_out
    if batch < 1:
        raise ValueError(f"dequantize: total_k={total_k} > 0 needs at least one sequence in "
                         "cu_seqlens_k")
    _check_aligned(k_cache=k_cache, v_cache=v_cache)
    cfg = DequantConfig(head_dim, _bits(k_codebook), _bits(v_codebook), _DTYPE_NAMES[dtype],
                        bool(unrotate))
    fn = _get_compiled(cfg, _compile_dequant)
    grid = _grid(total_k * num_heads, head_dim, cfg.num_threads, k_cache.device)
    steps = max(1, (batch - 1).bit_length())  # halvings of [0, batch) down to one sequence
    fn(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook, v_codebook,
       k_signs, v_signs, k_out, v_out, grid, steps)
    return k_out, v_out


# =============================================================================== configs
def shipped_configs() -> list:
    """Configs compiled by the CPU compile test (and registered with the compile harness)."""
    cfgs: list = []
    for d in _SUPPORTED_HEAD_DIMS:
        for b in _SUPPORTED_BITS:
            cfgs.append(CompressConfig(d, b, b, "bfloat16"))
            cfgs.append(DequantConfig(d, b, b, "bfloat16", False))
            cfgs.append(DequantConfig(d, b, b, "bfloat16", True))
    for algo in _COMPRESS_ALGOS[1:]:
        cfgs += [CompressConfig(d, b, b, "bfloat16", algo=algo)
                 for d in _SUPPORTED_HEAD_DIMS for b in _SUPPORTED_BITS]
    cfgs += [compress_config(d, kb, vb, dt, "lut-wide") for d, kb, vb, dt in sorted(_WIDE_DEFAULT)]
    # "auto"'s prefetch choices, and the opt-in H7 candidates, one config each (CI budget)
    cfgs += [compress_config(d, kb, vb, dt, "lut-pf") for d, kb, vb, dt in
             sorted(_PREFETCH_DEFAULT)]
    cfgs += [compress_config(128, 4, 4, "bfloat16", "lut-pf-s4"),
             compress_config(128, 4, 4, "bfloat16", "lut-wide-s4"),
             # session 8 candidates: the cp.async ring (smem_stages)
             compress_config(128, 4, 4, "bfloat16", "lut-wide-r3"),
             compress_config(128, 4, 4, "bfloat16", "lut-pf-i8"),
             compress_config(128, 8, 8, "bfloat16", "lut-r2")]
    for algo in _COMPRESS_ALGOS:
        cfgs += [CompressConfig(128, 4, 2, "bfloat16", algo=algo),
                 CompressConfig(128, 8, 4, "bfloat16", algo=algo),
                 CompressConfig(128, 2, 8, "bfloat16", algo=algo),
                 CompressConfig(128, 4, 4, "float16", algo=algo),
                 CompressConfig(128, 4, 4, "float32", algo=algo)]
    cfgs += [DequantConfig(128, 4, 2, "bfloat16", True), DequantConfig(128, 4, 4, "float16", True),
             DequantConfig(128, 4, 4, "float32", True)]
    return cfgs


def compile_one(cfg):
    """Compile one config on the current target (CPU: fake tensors; CUTE_DSL_ARCH=sm_90a)."""
    return _compile_compress(cfg) if isinstance(cfg, CompressConfig) else _compile_dequant(cfg)


def compile_configs():
    """[(name, thunk)]: each thunk compiles one shipped config."""
    return [(c.name, functools.partial(compile_one, c)) for c in shipped_configs()]


def _variant(cfg) -> str:
    if isinstance(cfg, CompressConfig):
        wide = "" if cfg.chunks == _CHUNKS else "-wide"
        extra = ("-pf" if cfg.prefetch else "") + \
            (f"-s{cfg.sum_chains}" if cfg.sum_chains != 1 else "") + \
            (f"-r{cfg.smem_stages}" if cfg.smem_stages else "") + \
            ("-i8" if cfg.index8 else "")
        return cfg.in_dtype + ("" if cfg.algo == "binary" else f"-{cfg.algo}") + wide + extra
    return cfg.out_dtype + ("-unrotate" if cfg.unrotate else "")


def register_configs(register) -> None:
    """Compile-harness hook (fa4_tq.kernels.compile): one KernelConfig per shipped config."""
    from .compile import KernelConfig

    for c in shipped_configs():
        kernel = "compress" if isinstance(c, CompressConfig) else "dequantize"
        register(KernelConfig(kernel, c.k_bits, c.v_bits, c.head_dim, _variant(c),
                              functools.partial(lambda cfg: (compile_one, (cfg,)), c)))
