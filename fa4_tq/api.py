"""A small Python API over ``torch.ops.tqkv`` that takes a ``TQCache`` instead of 10 tensors."""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.tqkv)
from .layout import TQCache
from .reference import default_softmax_scale


def _codec_args(cache: TQCache):
    c = cache.codec
    return c.k_codebook, c.v_codebook, c.k_signs, c.v_signs


def compress_store(cache: TQCache, key: torch.Tensor, value: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Quantize key/value [num_tokens, Hkv, D] and write them to ``slot_mapping`` (int64;
    negative = skip)."""
    c = cache.codec
    torch.ops.tqkv.compress_store(key, value, *cache.tensors(), slot_mapping, c.k_signs,
                                  c.v_signs, c.k_codebook, c.v_codebook)


def dequantize(cache: TQCache, block_table: torch.Tensor, cu_seqlens_k: torch.Tensor,
               total_k: int, *, unrotate: bool = True, dtype: torch.dtype = torch.bfloat16):
    """Gather + decode the cached tokens: (k, v) each [total_k, Hkv, D]."""
    kcb, vcb, ks, vs = _codec_args(cache)
    return torch.ops.tqkv.dequantize(*cache.tensors(), block_table, cu_seqlens_k, kcb, vcb, ks,
                                     vs, unrotate, total_k, dtype)


def prefill(q: torch.Tensor, cache: TQCache, cu_seqlens_q: torch.Tensor,
            block_table: torch.Tensor, seqused_k: torch.Tensor, max_seqlen_q: int, *,
            causal: bool = True, window: tuple[int, int] = (-1, -1),
            softmax_scale: float | None = None, rotate_query: bool = True,
            unrotate_output: bool = True, backend: str = "auto"):
    """Varlen prefill of q [total_q, Hq, D] over the paged cache -> (out, lse [Hq, total_q])."""
    kcb, vcb, ks, vs = _codec_args(cache)
    scale = default_softmax_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return torch.ops.tqkv.prefill(q, *cache.tensors(), cu_seqlens_q, block_table, seqused_k,
                                  kcb, vcb, ks, vs, int(max_seqlen_q), scale, bool(causal),
                                  int(window[0]), int(window[1]), rotate_query, unrotate_output,
                                  backend)


def decode(q: torch.Tensor, cache: TQCache, block_table: torch.Tensor, seqused_k: torch.Tensor,
           *, causal: bool = True, window: tuple[int, int] = (-1, -1),
           softmax_scale: float | None = None, rotate_query: bool = True,
           unrotate_output: bool = True, num_splits: int = 0):
    """q [B, q_len<=8, Hq, D] over the paged cache -> (out, lse [B, Hq, q_len])."""
    kcb, vcb, ks, vs = _codec_args(cache)
    scale = default_softmax_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return torch.ops.tqkv.decode(q, *cache.tensors(), block_table, seqused_k, kcb, vcb, ks, vs,
                                 scale, bool(causal), int(window[0]), int(window[1]),
                                 rotate_query, unrotate_output, int(num_splits))
