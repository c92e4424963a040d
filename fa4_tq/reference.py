"""Ground-truth implementations of every op (any device, runnable in float64).

These define the semantics the CUDA kernels are tested against, over the *same* packed cache:

* ``compress_store``: codec quantization (codec/quantizer.py) + LSB-first packing, scattered
  to ``slot_mapping`` (negative slots are skipped; for repeated slots the last token wins).
* ``dequantize``: gather tokens of each sequence through ``block_table`` and decode them.
* ``prefill`` / ``decode``: attention in the rotated space. Query i of a sequence with
  ``seqlen_q`` queries and ``seqlen_k`` keys sits at absolute position
  ``p = i + seqlen_k - seqlen_q`` (causal aligned bottom-right); key j is visible iff
  ``j <= p + window_right`` (if window_right >= 0) and ``j >= p - window_left`` (if
  window_left >= 0); ``causal`` means window_right = 0. A query that sees no key gets output 0
  and LSE -inf. LSE is the natural-log sum of exp(scale * q·k) over visible keys.
"""

from __future__ import annotations

import math

import torch

from .codec import (codebook_bits, dequantize_rotated, pack_codes, quantize, rotate, unpack_codes,
                    unrotate)


_bits = codebook_bits


def compress_store(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping,
                   k_signs, v_signs, k_codebook, v_codebook) -> None:
    """In-place: write packed codes and norms of key/value [T, Hkv, D] to their slots."""
    block_size = k_cache.shape[1]
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    if not bool(keep.any()):
        return
    idx = torch.nonzero(keep).flatten()
    s = slots[idx]
    blk, row = s // block_size, s % block_size
    for x, cache, norms, signs, cb in ((key, k_cache, k_norm, k_signs, k_codebook),
                                      (value, v_cache, v_norm, v_signs, v_codebook)):
        codes, norm = quantize(x[idx], signs, cb)
        packed = pack_codes(codes, _bits(cb))
        # Repeated slots: the reference writes sequentially (last token wins); the CUDA kernel
        # leaves them undefined (FA4TQ_DEBUG_CHECKS=1 rejects them). Engines never repeat.
        cache.index_put_((blk, row), packed.to(cache.device))
        norms.index_put_((blk, row), norm.to(norms.device))


def gather_sequence(cache: torch.Tensor, block_table_row: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Rows [0, seqlen) of one sequence from a paged tensor [num_blocks, block_size, ...]."""
    block_size = cache.shape[1]
    nblk = (seqlen + block_size - 1) // block_size
    blocks = block_table_row[:nblk].to(torch.int64)
    return cache[blocks].reshape(nblk * block_size, *cache.shape[2:])[:seqlen]


def dequantize_sequence(packed, norms, codebook, dtype=torch.float64):
    """[S, Hkv, D*b/8], [S, Hkv] -> rotated-space [S, Hkv, D] in ``dtype``."""
    codes = unpack_codes(packed, _bits(codebook))
    return dequantize_rotated(codes, norms, codebook, dtype)


def dequantize(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook,
               v_codebook, k_signs, v_signs, unrotate_output: bool, total_k: int,
               dtype: torch.dtype = torch.bfloat16):
    """Gather + decode the cached tokens of a batch into varlen [total_k, Hkv, D] K and V.

    Values are computed in float32 (x̂ = norm * codebook[code], then the optional un-rotation
    in float32) and rounded once to ``dtype``."""
    hkv, d = k_cache.shape[2], k_cache.shape[3] * 8 // _bits(k_codebook)
    k_out = torch.empty(total_k, hkv, d, dtype=dtype, device=k_cache.device)
    v_out = torch.empty(total_k, hkv, d, dtype=dtype, device=k_cache.device)
    cu = cu_seqlens_k.tolist()
    for b in range(len(cu) - 1):
        n = cu[b + 1] - cu[b]
        if n == 0:
            continue
        for out, cache, norms, cb, signs in ((k_out, k_cache, k_norm, k_codebook, k_signs),
                                             (v_out, v_cache, v_norm, v_codebook, v_signs)):
            x = dequantize_sequence(gather_sequence(cache, block_table[b], n),
                                    gather_sequence(norms, block_table[b], n), cb, torch.float32)
            if unrotate_output:
                x = unrotate(x, signs.to(torch.float32))
            out[cu[b]:cu[b + 1]] = x.to(dtype)
    return k_out, v_out


def visible_mask(seqlen_q: int, seqlen_k: int, causal: bool, window_left: int,
                 window_right: int, device=None) -> torch.Tensor:
    """Bool [seqlen_q, seqlen_k]: which keys each query sees (bottom-right alignment)."""
    if causal:
        window_right = 0
    p = torch.arange(seqlen_q, device=device).unsqueeze(1) + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    m = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_right >= 0:
        m &= j <= p + window_right
    if window_left >= 0:
        m &= j >= p - window_left
    return m


def attention_dense(q, k, v, softmax_scale: float, mask: torch.Tensor):
    """q [Sq, Hq, D], k/v [Sk, Hkv, D] (GQA: Hq % Hkv == 0), mask [Sq, Sk] -> (out, lse[Hq, Sq]).

    Computed in q's dtype (use float64 for ground truth)."""
    sq, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    kk = k.repeat_interleave(g, dim=1)  # [Sk, Hq, D]
    vv = v.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * softmax_scale
    s = s.masked_fill(~mask.unsqueeze(0), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [Hq, Sq]
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))
    p = torch.where(mask.unsqueeze(0), p, 0.0)
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out, lse


def _attend_one(qb, k_cache, v_cache, k_norm, v_norm, bt_row, seqlen_k, k_codebook, v_codebook,
                k_signs, v_signs, softmax_scale, causal, window_left, window_right,
                rotate_query, unrotate_output, dtype):
    qd = qb.to(dtype)
    if rotate_query:
        qd = rotate(qd, k_signs.to(dtype))
    k = dequantize_sequence(gather_sequence(k_cache, bt_row, seqlen_k),
                            gather_sequence(k_norm, bt_row, seqlen_k), k_codebook, dtype)
    v = dequantize_sequence(gather_sequence(v_cache, bt_row, seqlen_k),
                            gather_sequence(v_norm, bt_row, seqlen_k), v_codebook, dtype)
    mask = visible_mask(qb.shape[0], seqlen_k, causal, window_left, window_right, qb.device)
    out, lse = attention_dense(qd, k, v, softmax_scale, mask)
    if unrotate_output:
        out = unrotate(out, v_signs.to(dtype))
    return out, lse


def prefill(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
            k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q: int, softmax_scale: float,
            causal: bool, window_left: int, window_right: int, rotate_query: bool,
            unrotate_output: bool, compute_dtype: torch.dtype = torch.float64):
    """Varlen queries q [total_q, Hq, D] against the paged cache -> (out [total_q, Hq, D] in
    q.dtype, lse float32 [Hq, total_q])."""
    total_q, hq, d = q.shape
    out = torch.zeros(total_q, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.full((hq, total_q), float("-inf"), dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    lens = seqused_k.tolist()
    for b in range(len(cu) - 1):
        if cu[b + 1] == cu[b]:
            continue
        o, l = _attend_one(q[cu[b]:cu[b + 1]], k_cache, v_cache, k_norm, v_norm, block_table[b],
                           lens[b], k_codebook, v_codebook, k_signs, v_signs, softmax_scale,
                           causal, window_left, window_right, rotate_query, unrotate_output,
                           compute_dtype)
        out[cu[b]:cu[b + 1]] = o.to(q.dtype)
        lse[:, cu[b]:cu[b + 1]] = l.to(torch.float32)
    return out, lse


def decode(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook, v_codebook,
           k_signs, v_signs, softmax_scale: float, causal: bool, window_left: int,
           window_right: int, rotate_query: bool, unrotate_output: bool,
           compute_dtype: torch.dtype = torch.float64):
    """q [B, q_len, Hq, D] -> (out [B, q_len, Hq, D] in q.dtype, lse float32 [B, Hq, q_len])."""
    bsz, qlen, hq, d = q.shape
    out = torch.zeros_like(q)
    lse = torch.full((bsz, hq, qlen), float("-inf"), dtype=torch.float32, device=q.device)
    lens = seqused_k.tolist()
    for b in range(bsz):
        o, l = _attend_one(q[b], k_cache, v_cache, k_norm, v_norm, block_table[b], lens[b],
                           k_codebook, v_codebook, k_signs, v_signs, softmax_scale, causal,
                           window_left, window_right, rotate_query, unrotate_output,
                           compute_dtype)
        out[b] = o.to(q.dtype)
        lse[b] = l.to(torch.float32)
    return out, lse


def default_softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
