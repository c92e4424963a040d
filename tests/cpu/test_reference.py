"""Reference ops over a compressed cache vs dense float64 attention in the original space."""

import math

import pytest
import torch

import fa4_tq
from fa4_tq import reference
from fa4_tq.codec import unrotate
from fa4_tq.testing import cu_seqlens, random_paged_batch, rel_error


def _dense_original_space(batch, b):
    """Dequantized K/V of sequence b, rotations undone (float64, original space)."""
    c = batch.cache
    n = int(batch.seqused_k[b])
    out = []
    for cache, norms, cb, signs in ((c.k_cache, c.k_norm, c.codec.k_codebook, c.codec.k_signs),
                                    (c.v_cache, c.v_norm, c.codec.v_codebook, c.codec.v_signs)):
        x = reference.dequantize_sequence(reference.gather_sequence(cache, batch.block_table[b], n),
                                          reference.gather_sequence(norms, batch.block_table[b], n),
                                          cb, torch.float64)
        out.append(unrotate(x, signs.double()))
    return out


def _naive_attention(q, k, v, scale, causal, wl, wr):
    """Loop-based attention with explicit visibility rules (independent of visible_mask)."""
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    g = hq // hkv
    out = torch.zeros(sq, hq, d, dtype=torch.float64)
    lse = torch.full((hq, sq), float("-inf"), dtype=torch.float64)
    for i in range(sq):
        p = i + sk - sq
        vis = []
        for j in range(sk):
            ok = True
            if causal and j > p:
                ok = False
            if not causal and wr >= 0 and j > p + wr:
                ok = False
            if wl >= 0 and j < p - wl:
                ok = False
            vis.append(ok)
        idx = [j for j in range(sk) if vis[j]]
        if not idx:
            continue
        for h in range(hq):
            s = torch.stack([(q[i, h] * k[j, h // g]).sum() for j in idx]) * scale
            m = s.max()
            w = torch.exp(s - m)
            lse[h, i] = m + torch.log(w.sum())
            out[i, h] = (w.unsqueeze(-1) * torch.stack([v[j, h // g] for j in idx])).sum(0) / w.sum()
    return out, lse


CASES = [
    # (seqlens_q, seqlens_k, hq, hkv, d, kb, vb, bs, causal, wl, wr)
    ([5, 1, 17], [5, 9, 40], 4, 2, 64, 4, 4, 16, True, -1, -1),
    ([7, 3], [7, 33], 8, 1, 64, 2, 8, 32, False, -1, -1),
    ([6], [20], 4, 4, 128, 8, 2, 16, True, 4, -1),
    ([9, 4], [9, 25], 2, 2, 64, 2, 2, 16, False, 3, 2),
    ([3, 0, 5], [2, 4, 3], 4, 2, 64, 4, 8, 16, True, -1, -1),  # seqlen_k < seqlen_q: empty rows
]


@pytest.mark.parametrize("case", CASES)
def test_prefill_matches_naive_dense(case):
    lq, lk, hq, hkv, d, kb, vb, bs, causal, wl, wr = case
    batch = random_paged_batch(lk, hkv, d, kb, vb, bs, seed=sum(lq) + hq)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(sum(lq), hq, d, generator=g).to(torch.bfloat16)
    cu_q = cu_seqlens(lq)
    scale = 0.9 / math.sqrt(d)
    out, lse = fa4_tq.prefill(q, batch.cache, cu_q, batch.block_table, batch.seqused_k, max(lq),
                              causal=causal, window=(wl, wr), softmax_scale=scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    for b in range(len(lq)):
        k, v = _dense_original_space(batch, b)
        qs = q[cu_q[b]:cu_q[b + 1]].double()
        ref_o, ref_l = _naive_attention(qs, k, v, scale, causal, wl, wr)
        got = out[cu_q[b]:cu_q[b + 1]]
        assert rel_error(got, ref_o) < 8e-3  # bf16 output rounding only
        got_l = lse[:, cu_q[b]:cu_q[b + 1]].double()
        fin = torch.isfinite(ref_l)
        assert torch.equal(torch.isfinite(got_l), fin)
        assert torch.allclose(got_l[fin], ref_l[fin], atol=1e-4, rtol=1e-5)
        assert torch.all(got[~fin.t()] == 0)  # rows that see nothing are 0


def test_decode_equals_prefill():
    lens = [33, 1, 70]
    batch = random_paged_batch(lens, 2, 64, 4, 2, 16, seed=3)
    qlen = 3
    q = torch.randn(3, qlen, 8, 64).to(torch.bfloat16)
    od, ld = fa4_tq.decode(q, batch.cache, batch.block_table, batch.seqused_k, causal=True)
    cu_q = cu_seqlens([qlen] * 3)
    op, lp = fa4_tq.prefill(q.reshape(-1, 8, 64), batch.cache, cu_q, batch.block_table,
                            batch.seqused_k, qlen, causal=True)
    assert torch.equal(od.reshape(-1, 8, 64), op)
    assert torch.equal(ld.permute(1, 0, 2).reshape(8, -1), lp)


@pytest.mark.parametrize("kb,vb", [(2, 2), (4, 8), (8, 4)])
def test_compress_then_dequantize_equals_codec(kb, vb):
    lens = [20, 35]
    batch = random_paged_batch(lens, 3, 128, kb, vb, 16, seed=kb * 10 + vb)
    codec = batch.cache.codec
    k, v = fa4_tq.dequantize(batch.cache, batch.block_table, batch.cu_seqlens_k, sum(lens),
                             unrotate=True, dtype=torch.float32)
    for x, xs, side in ((k, batch.key, "k"), (v, batch.value, "v")):
        p, n = codec.quantize(xs, side)
        assert torch.equal(x, codec.dequantize(p, n, side, dtype=torch.float32))
        assert rel_error(x, xs.float()) < {2: 0.4, 4: 0.12, 8: 0.012}[kb if side == "k" else vb]
    kr, _ = fa4_tq.dequantize(batch.cache, batch.block_table, batch.cu_seqlens_k, sum(lens),
                              unrotate=False, dtype=torch.bfloat16)
    p, n = codec.quantize(batch.key, "k")
    assert torch.equal(kr, codec.dequantize(p, n, "k", rotated=True).to(torch.bfloat16))


def test_compress_store_slot_rules():
    cache = fa4_tq.TQCache.allocate(4, 16, 2, 64, 4, 4)
    k = torch.randn(5, 2, 64)
    v = torch.randn(5, 2, 64)
    slots = torch.tensor([3, -1, 17, 3, 63])  # skip, repeat (last wins), last slot
    before_v = cache.v_cache.clone()
    fa4_tq.compress_store(cache, k, v, slots)
    p, n = cache.codec.quantize(k, "k")
    assert torch.equal(cache.k_cache[0, 3], p[3])  # last write wins
    assert torch.equal(cache.k_norm[0, 3], n[3])
    assert torch.equal(cache.k_cache[1, 1], p[2])
    assert torch.equal(cache.k_cache[3, 15], p[4])
    touched = torch.zeros(64, dtype=torch.bool)
    touched[[3, 17, 63]] = True
    assert torch.equal(cache.v_cache.reshape(64, 2, 32)[~touched], before_v.reshape(64, 2, 32)[~touched])


def test_visible_mask_semantics():
    m = reference.visible_mask(2, 4, True, -1, -1)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    m = reference.visible_mask(3, 3, False, 1, 0)
    assert m.tolist() == [[True, False, False], [True, True, False], [False, True, True]]
