"""Shared CuTeDSL decode helpers for the TurboQuant paged cache (prefill, decode, dequantize).

What a kernel does with them (format v1, fa4_tq/codec):

* codes are ascending-centroid indices packed LSB-first along a row of D elements
  (4-bit: byte j = code[2j] | code[2j+1] << 4; 2-bit: 4 codes per byte, code[4j] in bits 0-1;
  8-bit: one code per byte);
* the dequantized value in rotated space is ``float(norm) * codebook[code]``.

Decoding is a table lookup per *byte*: one byte of packed codes maps to 2 (4-bit), 4 (2-bit)
or 1 (8-bit) bf16 values, so the table has 256 entries for every bit width and one lookup
yields a whole bf16x2 word (4-bit), two words (2-bit) or half a word (8-bit). The table is
built in shared memory by the kernel itself from the float32 codebook tensor (so custom
codebooks work unchanged), rounded once to bf16 (RNE). The per-row norm is applied afterwards
with one ``mul.rn.bf16x2`` per output word (two bf16 roundings in total; the reference rounds
once — the difference is < 1 bf16 ulp per element and far inside the 1e-2 attention budget).

Bank conflicts: a warp's 32 lookups hit random entries. The table is therefore replicated
``replicas`` times with the replica index in the low word-address bits (word index =
``entry * replicas + lane % replicas``), so lanes with different ``lane % replicas`` never
share a bank for the same entry stride; ``replicas = 32`` makes every lookup conflict-free.

All helpers take raw 32-bit shared-memory addresses (``smem_addr``) because the producer
writes into FA4's 128B-swizzled K/V tiles with hand-computed addresses (``swizzled_offset``)
and reads its own cp.async staging rows; raw PTX keeps the instruction count predictable.
Loads/stores from shared memory are emitted with side effects so LLVM never moves them across
``cp.async.wait_group`` / barriers.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64, Float32, const_expr
from cutlass.cutlass_dsl import T, dsl_user_op
from cutlass._mlir.dialects import llvm

from .code_interleave import byte_offset_selector

LUT_ENTRIES = 256  # one entry per byte value, for every bit width


def paged_cache_row(mPageTable, batch_idx, token, page_divmod, page_size, num_heads_kv,
                    head_kv) -> Int64:
    """Row index into a paged cache viewed as (num_blocks * block_size * h_kv) rows of codes
    or norms: page-table lookup of ``token`` of sequence ``batch_idx`` for KV head
    ``head_kv``. The caller keeps ``token`` in range (predicated rows use token 0)."""
    page_idx, page_off = divmod(token, page_divmod)
    page = mPageTable[batch_idx, page_idx]
    return (Int64(page) * Int64(page_size) + Int64(page_off)) * Int64(num_heads_kv) + Int64(
        head_kv)


def lut_entry_words(bits: int) -> int:
    """32-bit words per table entry: 4-bit -> 1 (bf16x2), 2-bit -> 2 (4 x bf16), 8-bit -> 1
    (bf16 in the low half)."""
    return {2: 2, 4: 1, 8: 1}[bits]


def lut_bytes(bits: int, replicas: int) -> int:
    return LUT_ENTRIES * lut_entry_words(bits) * 4 * replicas


def lut_slot_offset(e, r, bits: int, stride: int):
    """Byte offset of replica ``r`` of entry ``e`` in a side's table whose entries are
    ``stride`` bytes apart (build_lut writes there; the lookups read there)."""
    return e * stride + r * 4 * lut_entry_words(bits)


def prmt_replicas(bits: int) -> int:
    """Replicas of a PRMT-addressed table side: 128 bytes per entry."""
    return 128 // (4 * lut_entry_words(bits))


def prmt_sides_error(k_bits: int, v_bits: int, k_register_lut: bool, v_register_lut: bool,
                     k_replicas: int, v_replicas: int) -> str:
    """Why a config's sides cannot use the PRMT-addressed tables ('' if they can): both
    sides on shared-memory tables at the PRMT replication (prmt_replicas)."""
    reps = (prmt_replicas(k_bits), prmt_replicas(v_bits))
    if k_register_lut or v_register_lut or (k_replicas, v_replicas) != reps:
        return (f"prmt_lut needs shared-memory tables on both sides with {reps} replicas; got "
                f"register LUT {k_register_lut}/{v_register_lut}, replicas "
                f"{k_replicas}/{v_replicas}")
    return ""


def lut_region_bytes(bits: int, register_lut: bool, replicas: int, prmt_lut: bool,
                     is_k: bool) -> int:
    """Shared-memory bytes of one side's table region: the codebook words (register LUT),
    the replicated byte table, or with prmt_lut both sides' interleaved tables in K's region
    (V's is a 16-byte placeholder that keeps the struct layout)."""
    if prmt_lut:
        return PRMT_LUT_BYTES if is_k else 16
    return REG_LUT_BYTES if register_lut else lut_bytes(bits, replicas)


def table_bases(lutk_addr, lutv_addr, prmt_lut: bool):
    """(K table base, V table base, entry stride for build_lut): with prmt_lut V's entries
    sit in the second half of each PRMT_LUT_STRIDE-byte entry of K's region."""
    if prmt_lut:
        return lutk_addr, lutk_addr + PRMT_LUT_STRIDE // 2, PRMT_LUT_STRIDE
    return lutk_addr, lutv_addr, 0


def prmt_lane_offset(bits: int, lane, is_k: bool):
    """A lane's slot in its side's half of a PRMT-addressed entry (V's half at + 128)."""
    slot = (lane % 16) * 8 if bits == 2 else lane * 4
    return slot + (0 if is_k else PRMT_LUT_STRIDE // 2)


# Register-LUT decode (2- and 4-bit): the codebook itself, 2**bits bf16 entries packed as
# bf16x2 words (entry 2i in the low half), is all that lives in shared memory; it is read
# with a broadcast load once per row, scaled by the row's norm and split into byte planes
# that ``prmt`` indexes with the codes themselves. No shared-memory access per code.
REG_LUT_BYTES = 32  # room for the 16 bf16 entries of a 4-bit codebook (2-bit uses 8 bytes)
# PRMT-addressed tables (PrefillSm90Config / PrefillSm80Config.prmt_lut): K's and V's 128-byte
# entries (4/8-bit: 32 replicas x 4 B, 2-bit: 16 x 8 B) interleaved at 256 bytes per byte value
# (K at + 0, V at + 128)
PRMT_LUT_STRIDE = 256
PRMT_LUT_BYTES = LUT_ENTRIES * PRMT_LUT_STRIDE


# --------------------------------------------------------------------------- raw PTX wrappers
def _i32(x, loc, ip):
    return Int32(x).ir_value(loc=loc, ip=ip)


@dsl_user_op
def smem_addr(ptr: cute.Pointer, *, loc=None, ip=None) -> Int32:
    """32-bit shared-state-space address of a shared-memory pointer."""
    return Int32(ptr.toint(loc=loc, ip=ip))


@dsl_user_op
def ld_shared_b32(addr: Int32, *, loc=None, ip=None) -> Int32:
    res = llvm.inline_asm(T.i32(), [_i32(addr, loc, ip)], "ld.shared.b32 $0, [$1];", "=r,r",
                          has_side_effects=True, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def ld_shared_v2(addr: Int32, *, loc=None, ip=None):
    res = llvm.inline_asm(llvm.StructType.get_literal([T.i32()] * 2), [_i32(addr, loc, ip)],
                          "ld.shared.v2.b32 {$0, $1}, [$2];", "=r,=r,r",
                          has_side_effects=True, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return tuple(Int32(llvm.extractvalue(T.i32(), res, [i], loc=loc, ip=ip)) for i in range(2))


@dsl_user_op
def ld_shared_v4(addr: Int32, *, loc=None, ip=None):
    res = llvm.inline_asm(llvm.StructType.get_literal([T.i32()] * 4), [_i32(addr, loc, ip)],
                          "ld.shared.v4.b32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,r",
                          has_side_effects=True, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return tuple(Int32(llvm.extractvalue(T.i32(), res, [i], loc=loc, ip=ip)) for i in range(4))


@dsl_user_op
def st_shared_b32(addr: Int32, a: Int32, *, loc=None, ip=None) -> None:
    llvm.inline_asm(None, [_i32(addr, loc, ip), _i32(a, loc, ip)],
                    "st.shared.b32 [$0], $1;", "r,r", has_side_effects=True,
                    is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def st_shared_v2(addr: Int32, a: Int32, b: Int32, *, loc=None, ip=None) -> None:
    llvm.inline_asm(None, [_i32(addr, loc, ip), _i32(a, loc, ip), _i32(b, loc, ip)],
                    "st.shared.v2.b32 [$0], {$1, $2};", "r,r,r", has_side_effects=True,
                    is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def st_shared_v4(addr: Int32, a: Int32, b: Int32, c: Int32, d: Int32, *, loc=None,
                 ip=None) -> None:
    llvm.inline_asm(None, [_i32(addr, loc, ip), _i32(a, loc, ip), _i32(b, loc, ip),
                           _i32(c, loc, ip), _i32(d, loc, ip)],
                    "st.shared.v4.b32 [$0], {$1, $2, $3, $4};", "r,r,r,r,r",
                    has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def cp_async_16(smem: Int32, gmem: Int64, src_bytes: Int32, *, loc=None, ip=None) -> None:
    """16-byte cp.async global -> shared (L2 only: the packed codes are streamed once).
    ``src_bytes`` = 16 copies, 0 reads nothing and zero-fills (the predicated-off case)."""
    llvm.inline_asm(None, [_i32(smem, loc, ip), Int64(gmem).ir_value(loc=loc, ip=ip),
                           _i32(src_bytes, loc, ip)],
                    "cp.async.cg.shared.global [$0], [$1], 16, $2;", "r,l,r",
                    has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def ld_global_bf16_pair(gmem: Int64, pred: Int32, *, loc=None, ip=None) -> Int32:
    """Load one bf16 from global memory if ``pred`` != 0 (else 0) and return it broadcast to
    both halves of a bf16x2 word (the operand of ``mul_bf16x2``)."""
    res = llvm.inline_asm(
        T.i32(), [Int64(gmem).ir_value(loc=loc, ip=ip), _i32(pred, loc, ip)],
        "{\n\t.reg .b16 h;\n\t.reg .pred p;\n\tmov.b16 h, 0;\n\tsetp.ne.b32 p, $2, 0;\n\t"
        "@p ld.global.nc.b16 h, [$1];\n\tmov.b32 $0, {h, h};\n\t}",
        "=r,l,r", has_side_effects=True, is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def mul_bf16x2(a: Int32, b: Int32, *, loc=None, ip=None) -> Int32:
    res = llvm.inline_asm(T.i32(), [_i32(a, loc, ip), _i32(b, loc, ip)],
                          "mul.rn.bf16x2 $0, $1, $2;", "=r,r,r", has_side_effects=False,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                          loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def cvt_bf16x2(lo: Float32, hi: Float32, *, loc=None, ip=None) -> Int32:
    """Pack two float32 into bf16x2 (RNE); ``lo`` goes to bits 0-15."""
    res = llvm.inline_asm(T.i32(), [Float32(hi).ir_value(loc=loc, ip=ip),
                                    Float32(lo).ir_value(loc=loc, ip=ip)],
                          "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f", has_side_effects=False,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                          loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def prmt(a: Int32, b: Int32, sel: int, *, loc=None, ip=None) -> Int32:
    """prmt.b32 with an immediate selector: bytes of {b:a} (a = bytes 0-3)."""
    res = llvm.inline_asm(T.i32(), [_i32(a, loc, ip), _i32(b, loc, ip)],
                          f"prmt.b32 $0, $1, $2, {sel:#x};", "=r,r,r", has_side_effects=False,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                          loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def byte_times(w: Int32, i: int, scale: int, base: Int32, *, loc=None, ip=None) -> Int32:
    """``base + byte_i(w) * scale`` (one PRMT/BFE + one IMAD after ptxas)."""
    res = llvm.inline_asm(
        T.i32(), [_i32(w, loc, ip), _i32(base, loc, ip)],
        f"{{\n\t.reg .b32 t;\n\tbfe.u32 t, $1, {8 * i}, 8;\n\tmad.lo.u32 $0, t, {scale}, $2;\n\t}}",
        "=r,r,r", has_side_effects=False, is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return Int32(res)


# --------------------------------------------------------------------------- table build
def build_lut(mCodebook: cute.Tensor, lut_base: Int32, bits: int, replicas: int,
              tidx: Int32, num_threads: int, stride: int = 0):
    """Fill the byte -> bf16 table of one side in shared memory (all replicas).

    Threads ``tidx`` in [0, num_threads) split the 256 entries; the caller must barrier
    before the first lookup. ``stride`` (4/8-bit sides): bytes from one entry's replicas to
    the next entry's (0: packed, replicas x entry bytes; PRMT_LUT_STRIDE for the interleaved
    tables)."""
    stride = stride or replicas * 4 * lut_entry_words(bits)
    for k in range(LUT_ENTRIES // num_threads):
        e = tidx + k * num_threads
        if bits == 4:
            w0 = cvt_bf16x2(Float32(mCodebook[e & 15]), Float32(mCodebook[e >> 4]))
            for r in range(replicas):
                st_shared_b32(lut_base + lut_slot_offset(e, r, bits, stride), w0)
        elif bits == 2:
            w0 = cvt_bf16x2(Float32(mCodebook[e & 3]), Float32(mCodebook[(e >> 2) & 3]))
            w1 = cvt_bf16x2(Float32(mCodebook[(e >> 4) & 3]), Float32(mCodebook[(e >> 6) & 3]))
            for r in range(replicas):
                st_shared_v2(lut_base + lut_slot_offset(e, r, bits, stride), w0, w1)
        else:
            w0 = cvt_bf16x2(Float32(mCodebook[e]), Float32(0.0))
            for r in range(replicas):
                st_shared_b32(lut_base + lut_slot_offset(e, r, bits, stride), w0)


def build_entry_words(mCodebook: cute.Tensor, addr: Int32, bits: int, tidx: Int32):
    """Register-LUT table source: word i = bf16x2(codebook[2i], codebook[2i+1]) (RNE). Every
    thread writes word ``tidx % words`` (duplicates store identical values; branch-free). The
    caller must barrier before ``load_row_planes``."""
    i = tidx % ((1 << bits) // 2)
    st_shared_b32(addr + i * 4, cvt_bf16x2(Float32(mCodebook[2 * i]), Float32(mCodebook[2 * i + 1])))


def load_row_planes(addr: Int32, bits: int, norm2: Int32, mul=mul_bf16x2):
    """The row's scaled codebook as prmt byte planes (one broadcast LDS per 4 words).

    Entries are scaled first (``mul.rn.bf16x2`` by the norm, the same two roundings as the
    shared-memory LUT path: bf16(codebook) then bf16(x * norm)), then split:
    4-bit -> 8 registers (lo bytes of entries 0-3, 4-7, 8-11, 12-15; hi bytes likewise),
    2-bit -> 2 registers (lo bytes of entries 0-3; hi bytes of entries 0-3).
    ``mul``: the bf16x2 norm multiply (sm_80 passes
    ``mul_bf16x2_fma``, same rounding)."""
    if bits == 4:
        words = list(ld_shared_v4(addr)) + list(ld_shared_v4(addr + 16))
    else:
        words = list(ld_shared_v2(addr))
    s = [mul(w, norm2) for w in words]
    lo = [prmt(s[2 * i], s[2 * i + 1], 0x6420) for i in range(len(s) // 2)]
    hi = [prmt(s[2 * i], s[2 * i + 1], 0x7531) for i in range(len(s) // 2)]
    return lo + hi


def _asm_outs(n, inputs, asm, constraints, loc, ip):
    res = llvm.inline_asm(llvm.StructType.get_literal([T.i32()] * n),
                          [_i32(x, loc, ip) for x in inputs], asm, constraints,
                          has_side_effects=False, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return [Int32(llvm.extractvalue(T.i32(), res, [i], loc=loc, ip=ip)) for i in range(n)]


@dsl_user_op
def decode4_reg(w: Int32, planes, *, loc=None, ip=None):
    """8 packed 4-bit codes (code k = nibble k) -> 4 bf16x2 words (scaled by the planes' norm).

    prmt picks byte (sel & 7) of an 8-byte register pair, so a 16-entry table needs two
    halves: entries 0-7 (A) and 8-15 (B). Per 4 codes: 4 prmt (lo/hi byte x A/B half, selector
    = codes & 7), 2 prmt choosing A or B per byte (selector nibble k = k | 4*bit3(code k)),
    2 prmt interleaving lo/hi bytes into bf16 pairs. 21 instructions per 8 codes."""
    la0, la1, lb0, lb1, ha0, ha1, hb0, hb1 = planes
    half = ("prmt.b32 la, $5, $6, {xs};\n\tprmt.b32 lb, $7, $8, {xs};\n\t"
            "prmt.b32 ha, $9, $10, {xs};\n\tprmt.b32 hb, $11, $12, {xs};\n\t"
            "prmt.b32 pl, la, lb, {ts};\n\tprmt.b32 ph, ha, hb, {ts};\n\t"
            "prmt.b32 ${o0}, pl, ph, 0x5140;\n\tprmt.b32 ${o1}, pl, ph, 0x7362;\n\t")
    asm = ("{\n\t.reg .b32 xm, xh, t, th, la, lb, ha, hb, pl, ph;\n\t"
           "and.b32 xm, $4, 0x77777777;\n\tshr.u32 xh, xm, 16;\n\t"
           "shr.u32 t, $4, 1;\n\tlop3.b32 t, t, 0x44444444, 0x32103210, 0xEA;\n\t"
           "shr.u32 th, t, 16;\n\t"
           + half.format(xs="xm", ts="t", o0=0, o1=1)
           + half.format(xs="xh", ts="th", o0=2, o1=3) + "}")
    return _asm_outs(4, [w, la0, la1, lb0, lb1, ha0, ha1, hb0, hb1], asm,
                     "=r,=r,=r,=r," + ",".join(["r"] * 9), loc, ip)


@dsl_user_op
def decode2_reg(w: Int32, planes, *, loc=None, ip=None):
    """16 packed 2-bit codes (code k = bits 2k..2k+1) -> 8 bf16x2 words (scaled).

    Even codes (w & 0x33333333) and odd codes ((w >> 2) & 0x33333333) sit one per nibble, so
    they index the 4-entry lo/hi byte planes directly (selector | 0x4444 reads the hi plane);
    two interleave levels rebuild element order. 33 instructions per 16 codes."""
    tl, th = planes
    half = ("prmt.b32 le, $9, $10, {e};\n\tprmt.b32 he, $9, $10, {eh};\n\t"
            "prmt.b32 lod, $9, $10, {o};\n\tprmt.b32 hod, $9, $10, {oh};\n\t"
            "prmt.b32 a0, le, he, 0x5140;\n\tprmt.b32 a1, le, he, 0x7362;\n\t"
            "prmt.b32 b0, lod, hod, 0x5140;\n\tprmt.b32 b1, lod, hod, 0x7362;\n\t"
            "prmt.b32 ${r0}, a0, b0, 0x5410;\n\tprmt.b32 ${r1}, a0, b0, 0x7632;\n\t"
            "prmt.b32 ${r2}, a1, b1, 0x5410;\n\tprmt.b32 ${r3}, a1, b1, 0x7632;\n\t")
    asm = ("{\n\t.reg .b32 e, eh, o, oh, e2, eh2, o2, oh2, le, he, lod, hod, a0, a1, b0, b1;\n\t"
           "and.b32 e, $8, 0x33333333;\n\tor.b32 eh, e, 0x44444444;\n\t"
           "shr.u32 o, $8, 2;\n\tand.b32 o, o, 0x33333333;\n\tor.b32 oh, o, 0x44444444;\n\t"
           "shr.u32 e2, e, 16;\n\tshr.u32 eh2, eh, 16;\n\t"
           "shr.u32 o2, o, 16;\n\tshr.u32 oh2, oh, 16;\n\t"
           + half.format(e="e", eh="eh", o="o", oh="oh", r0=0, r1=1, r2=2, r3=3)
           + half.format(e="e2", eh="eh2", o="o2", oh="oh2", r0=4, r1=5, r2=6, r3=7) + "}")
    return _asm_outs(8, [w, tl, th], asm, ",".join(["=r"] * 8) + ",r,r,r", loc, ip)


# --------------------------------------------------------------------------- decode
def _lookup_decode(entry_addr, norm2: Int32, bits: int, mul):
    """The table words of the 4 code bytes of a word (byte i's entry at ``entry_addr(i)``),
    scaled by the norm: 4 bf16x2 words (4-bit), 8 (2-bit) or 2 (8-bit: two single-bf16
    entries paired per word), element order preserved."""
    out = []
    if bits == 4:
        for i in range(4):
            out.append(mul(ld_shared_b32(entry_addr(i)), norm2))
    elif bits == 2:
        for i in range(4):
            v0, v1 = ld_shared_v2(entry_addr(i))
            out.append(mul(v0, norm2))
            out.append(mul(v1, norm2))
    else:
        vals = [ld_shared_b32(entry_addr(i)) for i in range(4)]
        for i in range(2):
            out.append(mul(prmt(vals[2 * i], vals[2 * i + 1], 0x5410), norm2))
    return out


def decode_word(w: Int32, lut_lane: Int32, norm2: Int32, bits: int, replicas: int,
                mul=mul_bf16x2):
    """Decode one 32-bit word of packed codes into bf16x2 words scaled by the norm.

    ``lut_lane`` = table base + (lane % replicas) * entry bytes. Returns a list of
    4 words (4-bit: 8 values), 8 words (2-bit: 16 values) or 2 words (8-bit: 4 values),
    element order preserved (low half = lower element index). ``mul``: the bf16x2 norm
    multiply (sm_80 passes ``mul_bf16x2_fma``, same rounding)."""
    entry = 4 * lut_entry_words(bits) * replicas
    return _lookup_decode(lambda i: byte_times(w, i, entry, lut_lane), norm2, bits, mul)


def decode_word_prmt(w: Int32, lut_base: Int32, lane_off: Int32, norm2: Int32, bits: int,
                     mul=mul_bf16x2):
    """decode_word for PRMT-addressed tables (entries at PRMT_LUT_STRIDE; 4/8-bit sides: 32
    replicas x 4 bytes, ``lane_off`` = side + lane * 4; 2-bit: 16 replicas x 8 bytes,
    side + (lane % 16) * 8): the lookup offset (byte << 8) | lane_off is one PRMT of the
    code word and the lane's slot offset (< 256, whose zero upper bytes supply the zeros),
    and ptxas folds the uniform table base into LDS [R+UR]: one instruction per byte instead
    of the BFE + IMAD of ``byte_times``. Conflict-free: a warp's LDS.32 hits 32 banks, each
    half warp's LDS.64 (one wavefront per half) 32 banks."""
    return _lookup_decode(lambda i: lut_base + prmt(lane_off, w, byte_offset_selector(i)),
                          norm2, bits, mul)


def swizzled_offset_py(row: int, chunk: int, tile_rows: int) -> int:
    """Byte offset of 8-element chunk ``chunk`` of row ``row`` inside one stage of an FA4 Sm90
    bf16 K/V tile (128B-swizzle K-major atoms of 8 rows x 64 elements, tiled rows first).
    Python twin of ``swizzled_offset`` for the layout check in the compile tests."""
    atom_col, within = divmod(chunk, 8)
    return atom_col * tile_rows * 128 + row * 128 + ((within ^ (row % 8)) * 16)


def swizzled_offset(row: Int32, chunk: int, tile_rows: int) -> Int32:
    atom_col = chunk // 8
    within = chunk % 8
    return atom_col * tile_rows * 128 + row * 128 + ((Int32(within) ^ (row & 7)) << 4)


# =========================================================================== sm80 section
# Helpers for the portable mma.sync prefill (fa4_tq/kernels/prefill_sm80.py). Everything
# above stays as it is; the functions below differ only where sm_80 lacks an instruction:
# ``mul.rn.bf16x2`` is sm_90+, so the norm multiply is ``fma.rn.bf16x2 a, b, -0.0``, which is
# bit-identical (a*b rounded once; adding -0.0 changes neither the value nor the sign of a
# nonzero product, and +0 + -0 = +0 like the plain product's +0).

_NEG_ZERO_BF16X2 = -2147450880  # 0x80008000 as a signed 32-bit immediate


@dsl_user_op
def mul_bf16x2_fma(a: Int32, b: Int32, *, loc=None, ip=None) -> Int32:
    """``a * b`` per bf16 half, RNE, via ``fma.rn.bf16x2`` (sm_80+)."""
    res = llvm.inline_asm(T.i32(), [_i32(a, loc, ip), _i32(b, loc, ip),
                                    _i32(_NEG_ZERO_BF16X2, loc, ip)],
                          "fma.rn.bf16x2 $0, $1, $2, $3;", "=r,r,r,r", has_side_effects=False,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                          loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def ld_global_words_pred(gmem: Int64, n: int, pred: Int32, *, loc=None, ip=None):
    """``n`` (1, 2 or 4) 32-bit words from global memory (one vector load, read-only path)
    if ``pred`` != 0, else zeros; the address is never dereferenced when ``pred`` is 0."""
    vec = {1: "", 2: ".v2", 4: ".v4"}[n]
    outs = ", ".join(f"${i}" for i in range(n))
    dst = outs if n == 1 else "{" + outs + "}"
    zero = "".join(f"mov.b32 ${i}, 0;\n\t" for i in range(n))
    asm = (f"{{\n\t.reg .pred p;\n\t{zero}setp.ne.b32 p, ${n + 1}, 0;\n\t"
           f"@p ld.global.nc{vec}.b32 {dst}, [${n}];\n\t}}")
    res = llvm.inline_asm(llvm.StructType.get_literal([T.i32()] * n),
                          [Int64(gmem).ir_value(loc=loc, ip=ip), _i32(pred, loc, ip)], asm,
                          ",".join(["=r"] * n) + ",l,r", has_side_effects=True,
                          is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                          loc=loc, ip=ip)
    return [Int32(llvm.extractvalue(T.i32(), res, [i], loc=loc, ip=ip)) for i in range(n)]


def decode_word_sm80(w: Int32, lut_lane: Int32, norm2: Int32, bits: int, replicas: int):
    """``decode_word`` (shared-memory byte LUT) with the sm_80 norm multiply."""
    return decode_word(w, lut_lane, norm2, bits, replicas, mul=mul_bf16x2_fma)


def load_row_planes_sm80(addr: Int32, bits: int, norm2: Int32):
    """``load_row_planes`` with the sm_80 norm multiply (same two roundings)."""
    return load_row_planes(addr, bits, norm2, mul=mul_bf16x2_fma)


@dsl_user_op
def cp_async_ca(smem: Int32, gmem: Int64, nbytes: int, src_bytes: Int32, *, loc=None,
                ip=None) -> None:
    """``nbytes`` (4, 8 or 16) cp.async global -> shared through L1 (.ca: the only variant
    for 4 and 8 bytes); ``src_bytes`` = nbytes copies, 0 reads nothing and zero-fills."""
    llvm.inline_asm(None, [_i32(smem, loc, ip), Int64(gmem).ir_value(loc=loc, ip=ip),
                           _i32(src_bytes, loc, ip)],
                    f"cp.async.ca.shared.global [$0], [$1], {nbytes}, $2;", "r,l,r",
                    has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


# =========================================================================== cluster section
# Helpers for the 2-CTA cluster variant of the Hopper prefill (PrefillSm90Config.cluster_share
# = 2): each CTA of a pair decodes half of every K/V tile and writes it into both CTAs' shared
# memory. Addresses are 32-bit; a shared::cluster address is the ``mapa`` image of a
# shared::cta address in the target CTA's window (contiguous, so base + offset stays valid).

@dsl_user_op
def cluster_cta_rank(*, loc=None, ip=None) -> Int32:
    """This CTA's rank in its cluster (%cluster_ctarank)."""
    res = llvm.inline_asm(T.i32(), [], "mov.u32 $0, %cluster_ctarank;", "=r",
                          has_side_effects=False, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def mapa_shared(addr: Int32, cta_rank: Int32, *, loc=None, ip=None) -> Int32:
    """shared::cluster address of shared::cta address ``addr`` in CTA ``cta_rank``."""
    res = llvm.inline_asm(T.i32(), [_i32(addr, loc, ip), _i32(cta_rank, loc, ip)],
                          "mapa.shared::cluster.u32 $0, $1, $2;", "=r,r,r",
                          has_side_effects=False, is_align_stack=False,
                          asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    return Int32(res)


@dsl_user_op
def mbarrier_wait_cluster(mbar: Int32, phase: Int32, *, loc=None, ip=None) -> None:
    """Block until phase ``phase`` of this CTA's mbarrier completed, acquiring at cluster
    scope (its arrivals include the peer CTA's releases). Labels are local to the { } scope,
    so the block can be inlined any number of times."""
    llvm.inline_asm(None, [_i32(mbar, loc, ip), _i32(phase, loc, ip)],
                    "{\n.reg .pred p;\nTQ_WAIT:\n"
                    "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [$0], $1;\n"
                    "@!p bra TQ_WAIT;\n}", "r,r",
                    has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def mbarrier_arrive_cta_scope(mbar: Int32, *, loc=None, ip=None) -> None:
    """Arrive (PTX default: release at CTA scope) on an mbarrier of this CTA."""
    llvm.inline_asm(None, [_i32(mbar, loc, ip)], "mbarrier.arrive.shared::cta.b64 _, [$0];",
                    "r", has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def mbarrier_arrive_remote_cta_scope(mbar_cluster: Int32, *, loc=None, ip=None) -> None:
    """Arrive (PTX default: release at CTA scope) on the peer CTA's mbarrier at shared::cluster
    address ``mbar_cluster``: CUTLASS's consumer-release-to-remote-producer form (its
    PipelineTmaAsync), which needs no GPU-scope MEMBAR (release.cluster compiles to
    MEMBAR.ALL.GPU on sm_90)."""
    llvm.inline_asm(None, [_i32(mbar_cluster, loc, ip)],
                    "mbarrier.arrive.shared::cluster.b64 _, [$0];", "r",
                    has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


@dsl_user_op
def cluster_pair_send_half(tidx: Int32, full_bar: Int32, src0: Int32, src1: Int32,
                           peer_rank: Int32, nbytes: int, expect_bytes: int, *, loc=None,
                           ip=None) -> None:
    """Thread ``tidx`` == 0 only (predicated, no branch): arrive on this CTA's full barrier
    ``full_bar`` announcing ``expect_bytes`` that the peer CTA's bulk copies will deliver
    (``mbarrier.arrive.expect_tx``; this arrive also releases this CTA's own tile stores to its
    consumers), then copy the two ``nbytes`` regions at ``src0`` / ``src1`` (this CTA's rows of
    the tile) to the same offsets in the peer CTA's shared memory with
    ``cp.async.bulk.shared::cluster.shared::cta``, completing ``nbytes`` each on the peer's
    copy of the full barrier. The bulk copy is an async-proxy write signalled through the
    mbarrier (as a TMA load is), so the peer's wgmma may read it after a plain wait, and the
    writer needs no GPU-scope fence. The caller has made its tile stores visible to the async
    proxy (fence.proxy.async.shared::cta per thread, then a barrier) before this."""
    llvm.inline_asm(
        None, [_i32(tidx, loc, ip), _i32(full_bar, loc, ip), _i32(src0, loc, ip),
               _i32(src1, loc, ip), _i32(peer_rank, loc, ip)],
        "{\n.reg .pred p;\n.reg .b32 pb, d0, d1;\n"
        "setp.eq.u32 p, $0, 0;\n"
        f"@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [$1], {expect_bytes};\n"
        "@p mapa.shared::cluster.u32 pb, $1, $4;\n"
        "@p mapa.shared::cluster.u32 d0, $2, $4;\n"
        "@p mapa.shared::cluster.u32 d1, $3, $4;\n"
        "@p cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes "
        f"[d0], [$2], {nbytes}, [pb];\n"
        "@p cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes "
        f"[d1], [$3], {nbytes}, [pb];\n}}",
        "r,r,r,r,r", has_side_effects=True, is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)

