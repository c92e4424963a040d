"""Bit-level helpers for the PRMT-addressed tables (DecodeConfig.prmt_lut, and
byte_offset_selector for the prefill's PrefillSm90Config.prmt_lut via dequant.decode_word_prmt).

Pure integer expressions with no cutlass import: the kernel calls them with ``U=Uint32`` on
traced values, the CPU tests with Python ints (tests/cpu/test_code_interleave.py checks that
every table lookup returns the codes the mma operand register needs). Packed code words are
LSB-first (fa4_tq/codec): 2-bit code m of a word sits at bits 2m..2m+1, 4-bit code m at 4m..4m+3.
"""

from __future__ import annotations


def interleave_nibbles(a, b, U=int):
    """Two words -> (even, odd): byte j of ``even`` = (nibble 2j of a, nibble 2j of b), of
    ``odd`` = (nibble 2j+1 of a, nibble 2j+1 of b); a's nibble in the low half.

    2-bit K (a, b = rows g, g+8): a nibble is an element pair, so a byte is the pair of both
    rows that the mma A registers 0/1 (even) or 2/3 (odd) want. 4-bit V (a, b = tokens 2c,
    2c+1): a nibble is one element, so a byte indexes the pair table with both tokens."""
    even = (a & U(0x0F0F0F0F)) | ((b << U(4)) & U(0xF0F0F0F0))
    odd = ((a >> U(4)) & U(0x0F0F0F0F)) | (b & U(0xF0F0F0F0))
    return even, odd


def interleave_2bit(a, b, U=int):
    """2-bit V, two token words -> (even, odd): byte j of ``even`` = (a@4j, b@4j, a@4j+1,
    b@4j+1) as its four 2-bit fields (x@m = code m of x), of ``odd`` the codes 4j+2, 4j+3:
    the codes of element pairs (d, d+1) of both tokens for M-tiles 2j / 2j+1."""
    lo = (a & U(0x33333333)) | ((b << U(2)) & U(0xCCCCCCCC))
    hi = ((a >> U(2)) & U(0x33333333)) | (b & U(0xCCCCCCCC))
    even = (lo & U(0x0F0F0F0F)) | ((hi << U(4)) & U(0xF0F0F0F0))
    odd = ((lo >> U(4)) & U(0x0F0F0F0F)) | (hi & U(0xF0F0F0F0))
    return even, odd


def byte_offset_selector(j: int) -> int:
    """``prmt.b32 d, lane_off, word, sel`` with this selector gives (byte j of word) << 8 |
    lane_off, provided lane_off < 256: byte 0 <- lane_off's byte 0, byte 1 <- word byte j,
    bytes 2-3 <- lane_off's byte 1 (zero)."""
    if not 0 <= j <= 3:
        raise ValueError(f"byte index must be 0..3, got {j}")
    return 0x1100 | ((4 + j) << 4)


def prmt_py(a: int, b: int, sel: int) -> int:
    """Reference of PTX prmt.b32 (default mode) on Python ints, for the CPU tests: result
    byte i = byte sel[4i+2:4i] of {b, a} (a = bytes 0-3)."""
    src = (a & 0xFFFFFFFF) | ((b & 0xFFFFFFFF) << 32)
    return sum(((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def code_field(e, f: int):
    """2-bit field f (0..3) of a byte value e: what the byte table stores at entry e."""
    return (e >> (2 * f)) & 3
