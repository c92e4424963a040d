"""The bit-level contract of the decode kernel's PRMT-addressed tables (DecodeConfig.prmt_lut),
on the same functions the kernel traces (fa4_tq/kernels/code_interleave.py), with Python ints:
every table lookup the kernel makes returns exactly the codes its mma operand register needs
(register layout: fa4_tq/kernels/decode.py module docstring, k_pair / v_frag)."""

import random

import pytest

from fa4_tq.kernels.code_interleave import (byte_offset_selector, code_field, interleave_2bit,
                                            interleave_nibbles)
from fa4_tq.kernels.code_interleave import prmt_py as prmt



def byte(w: int, j: int) -> int:
    return (w >> (8 * j)) & 0xFF


def code2(words, m):  # 2-bit code m of a row segment (16 per word)
    return (words[m // 16] >> (2 * (m % 16))) & 3


def code4(words, m):  # 4-bit code m (8 per word)
    return (words[m // 8] >> (4 * (m % 8))) & 15


def byte_table2_entry(e):
    """(word0 codes, word1 codes) of the 2-bit byte table (build_byte_table2)."""
    return ((code_field(e, 0), code_field(e, 1)), (code_field(e, 2), code_field(e, 3)))


def test_byte_offset_selector():
    rng = random.Random(0)
    for _ in range(2000):
        w = rng.getrandbits(32)
        lane_off = rng.randrange(256)
        for j in range(4):
            assert prmt(lane_off, w, byte_offset_selector(j)) == (byte(w, j) << 8) | lane_off
    with pytest.raises(ValueError):
        byte_offset_selector(4)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_2bit_k_bytes_give_the_a_registers(head_dim):
    rng = random.Random(head_dim)
    kw = max(1, head_dim * 2 // 128)  # words of a thread's quarter row (decode.k_seg_words)
    for _ in range(500):
        rg = [rng.getrandbits(32) for _ in range(kw)]
        rg8 = [rng.getrandbits(32) for _ in range(kw)]
        kx = [interleave_nibbles(rg[w], rg8[w]) for w in range(kw)]
        for k in range(head_dim // 16):  # K-chunks: elements 4k..4k+3 of the segment
            r01 = byte_table2_entry(byte(kx[k // 4][0], k % 4))
            r23 = byte_table2_entry(byte(kx[k // 4][1], k % 4))
            assert r01 == ((code2(rg, 4 * k), code2(rg, 4 * k + 1)),
                           (code2(rg8, 4 * k), code2(rg8, 4 * k + 1)))
            assert r23 == ((code2(rg, 4 * k + 2), code2(rg, 4 * k + 3)),
                           (code2(rg8, 4 * k + 2), code2(rg8, 4 * k + 3)))


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_2bit_v_bytes_give_the_a_registers(head_dim):
    rng = random.Random(10 + head_dim)
    vw = max(1, head_dim * 2 // 256)  # words of a thread's V segment per token
    for _ in range(500):
        a = [rng.getrandbits(32) for _ in range(vw)]  # token 2c (or 2c+8)
        b = [rng.getrandbits(32) for _ in range(vw)]  # token 2c+1 (or 2c+9)
        vx = [interleave_2bit(a[w], b[w]) for w in range(vw)]
        for i in range(head_dim // 16):  # M-tile i: rows g / g+8 = elements 2i / 2i+1
            e = byte(vx[i // 8][(i % 8) % 2], (i % 8) // 2)
            assert byte_table2_entry(e) == ((code2(a, 2 * i), code2(b, 2 * i)),
                                            (code2(a, 2 * i + 1), code2(b, 2 * i + 1)))


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_4bit_v_nibbles_pair_the_tokens(head_dim):
    rng = random.Random(20 + head_dim)
    vw = head_dim * 4 // 256
    for _ in range(500):
        a = [rng.getrandbits(32) for _ in range(vw)]
        b = [rng.getrandbits(32) for _ in range(vw)]
        vx = [interleave_nibbles(a[w], b[w]) for w in range(vw)]
        for i in range(head_dim // 16):
            for half, m in ((0, 2 * i), (1, 2 * i + 1)):  # register of row g / g+8
                e = byte(vx[i // 4][half], i % 4)
                # the 4-bit pair table's word e = (codebook[e & 15], codebook[e >> 4])
                assert (e & 15, e >> 4) == (code4(a, m), code4(b, m))
