"""Argument validation for the tqkv ops: every error names the argument that is wrong.

Structural checks (types, dtypes, shapes, devices, strides) never read tensor data and run on
every call. Value checks (cu_seqlens monotone, block ids in range, slots in range, lengths
within the block table) read data: they always run for CPU tensors, and for CUDA tensors only
when ``FA4TQ_DEBUG_CHECKS=1`` (they would force a host sync and break CUDA-graph capture).
Fake tensors (torch.compile tracing, meta) only get structural checks.
"""

from __future__ import annotations

import math
import os

import torch

from .codec import SUPPORTED_BITS, SUPPORTED_HEAD_DIMS, check_codebook
from .layout import MAX_BLOCK_SIZE

MAX_DECODE_Q_LEN = 8
_INT = (torch.int32,)


def _debug_checks() -> bool:
    return os.environ.get("FA4TQ_DEBUG_CHECKS", "0") not in ("", "0", "false", "False")


def _has_data(t: torch.Tensor) -> bool:
    if t.device.type == "meta" or type(t).__name__ == "FakeTensor":
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
        if is_fake(t):
            return False
    except ImportError:  # pragma: no cover
        pass
    return t.device.type == "cpu" or _debug_checks()


def tensor(t, name: str, *, dtypes=None, dim=None, shape=None, device=None, contiguous=False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {want}, got {str(t.dtype).replace('torch.', '')}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, (got, want) in enumerate(zip(t.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected "
                                 f"{tuple('*' if w is None else w for w in shape)} (dim {i})")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all tensors on one device)")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    return t


def _check_int(v, name: str, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")


def cache_geometry(k_cache, v_cache, k_norm, v_norm, k_codebook, v_codebook, k_signs, v_signs):
    """Check the cache tensors + codec tensors; return (num_blocks, block_size, Hkv, D, kb, vb)."""
    k_bits = check_codebook(k_codebook, "k_codebook")
    v_bits = check_codebook(v_codebook, "v_codebook")
    tensor(k_cache, "k_cache", dtypes=(torch.uint8,), dim=4, contiguous=True)
    dev = k_cache.device
    nb, bs, hkv, krow = k_cache.shape
    if bs % 16 or not 16 <= bs <= MAX_BLOCK_SIZE:
        raise ValueError(f"k_cache block_size (dim 1) must be a multiple of 16 in [16, "
                         f"{MAX_BLOCK_SIZE}], got {bs}")
    d = krow * 8 // k_bits
    if d not in SUPPORTED_HEAD_DIMS or krow * 8 % k_bits:
        raise ValueError(f"k_cache last dim {krow} with k_bits={k_bits} gives head_dim {d}; "
                         f"head_dim must be one of {SUPPORTED_HEAD_DIMS}")
    tensor(v_cache, "v_cache", dtypes=(torch.uint8,), dim=4, device=dev, contiguous=True,
           shape=(nb, bs, hkv, d * v_bits // 8))
    tensor(k_norm, "k_norm", dtypes=(torch.bfloat16,), dim=3, device=dev, contiguous=True,
           shape=(nb, bs, hkv))
    tensor(v_norm, "v_norm", dtypes=(torch.bfloat16,), dim=3, device=dev, contiguous=True,
           shape=(nb, bs, hkv))
    for name, cb in (("k_codebook", k_codebook), ("v_codebook", v_codebook)):
        tensor(cb, name, device=dev, contiguous=True)
    for name, s in (("k_signs", k_signs), ("v_signs", v_signs)):
        tensor(s, name, dtypes=(torch.float32,), dim=1, shape=(d,), device=dev, contiguous=True)
    return nb, bs, hkv, d, k_bits, v_bits


def attention_options(softmax_scale, causal, window_left, window_right) -> None:
    if not isinstance(softmax_scale, (float, int)) or isinstance(softmax_scale, bool):
        raise TypeError(f"softmax_scale must be a float, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be finite and > 0, got {softmax_scale}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    _check_int(window_left, "window_left", lo=-1)
    _check_int(window_right, "window_right", lo=-1)
    if causal and window_right > 0:
        raise ValueError(f"causal=True implies window_right=0; got window_right={window_right}")


def paged_lengths(block_table, seqused_k, batch: int, nb: int, bs: int, dev) -> None:
    tensor(block_table, "block_table", dtypes=_INT, dim=2, shape=(batch, None), device=dev)
    if block_table.stride(-1) != 1:
        raise ValueError("block_table must have unit stride in its last dim")
    tensor(seqused_k, "seqused_k", dtypes=_INT, dim=1, shape=(batch,), device=dev,
           contiguous=True)
    if _has_data(seqused_k) and batch:
        lens = seqused_k.to("cpu")
        if int(lens.min()) < 0:
            raise ValueError("seqused_k must be >= 0")
        cap = block_table.shape[1] * bs
        if int(lens.max()) > cap:
            raise ValueError(f"seqused_k max {int(lens.max())} exceeds block_table capacity "
                             f"{block_table.shape[1]} blocks x {bs} = {cap}")
        nblk = (lens.to(torch.int64) + bs - 1) // bs
        bt = block_table.to("cpu")
        used = torch.arange(bt.shape[1]).unsqueeze(0) < nblk.unsqueeze(1)
        ids = bt[used]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= nb):
            raise ValueError(f"block_table holds block ids outside [0, {nb}) for used blocks")


def cu_seqlens(cu, name: str, batch: int | None, total: int, dev) -> int:
    tensor(cu, name, dtypes=_INT, dim=1, device=dev, contiguous=True)
    if cu.shape[0] < 1:
        raise ValueError(f"{name} must have batch+1 >= 1 entries")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name} must have batch+1 = {batch + 1} entries, got {cu.shape[0]}")
    if _has_data(cu):
        c = cu.to("cpu").to(torch.int64)
        if int(c[0]) != 0:
            raise ValueError(f"{name}[0] must be 0, got {int(c[0])}")
        if bool((c[1:] < c[:-1]).any()):
            raise ValueError(f"{name} must be non-decreasing")
        if int(c[-1]) != total:
            raise ValueError(f"{name}[-1] = {int(c[-1])} must equal the total length {total}")
    return cu.shape[0] - 1


def prefill_args(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
                 k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q, softmax_scale, causal,
                 window_left, window_right):
    nb, bs, hkv, d, kb, vb = cache_geometry(k_cache, v_cache, k_norm, v_norm, k_codebook,
                                            v_codebook, k_signs, v_signs)
    dev = k_cache.device
    tensor(q, "q", dtypes=(torch.bfloat16, torch.float16), dim=3, device=dev)
    if q.stride(-1) != 1:
        raise ValueError("q must have unit stride in its last dim")
    total_q, hq, qd = q.shape
    if qd != d:
        raise ValueError(f"q head_dim {qd} does not match the cache head_dim {d}")
    if hq % hkv:
        raise ValueError(f"q num_heads {hq} must be a multiple of num_kv_heads {hkv}")
    batch = cu_seqlens(cu_seqlens_q, "cu_seqlens_q", None, total_q, dev)
    paged_lengths(block_table, seqused_k, batch, nb, bs, dev)
    _check_int(max_seqlen_q, "max_seqlen_q", lo=0)
    if _has_data(cu_seqlens_q) and batch:
        longest = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
        if longest > max_seqlen_q:
            raise ValueError(f"max_seqlen_q={max_seqlen_q} is smaller than the longest query "
                             f"sequence ({longest})")
    attention_options(softmax_scale, causal, window_left, window_right)
    return dict(num_blocks=nb, block_size=bs, num_kv_heads=hkv, head_dim=d, k_bits=kb,
                v_bits=vb, batch=batch, num_heads=hq, total_q=total_q)


def decode_args(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook,
                v_codebook, k_signs, v_signs, softmax_scale, causal, window_left, window_right,
                num_splits):
    nb, bs, hkv, d, kb, vb = cache_geometry(k_cache, v_cache, k_norm, v_norm, k_codebook,
                                            v_codebook, k_signs, v_signs)
    dev = k_cache.device
    tensor(q, "q", dtypes=(torch.bfloat16, torch.float16), dim=4, device=dev)
    if q.stride(-1) != 1:
        raise ValueError("q must have unit stride in its last dim")
    batch, q_len, hq, qd = q.shape
    if not 1 <= q_len <= MAX_DECODE_Q_LEN:
        raise ValueError(f"q_len (q dim 1) must be in [1, {MAX_DECODE_Q_LEN}], got {q_len}")
    if qd != d:
        raise ValueError(f"q head_dim {qd} does not match the cache head_dim {d}")
    if hq % hkv:
        raise ValueError(f"q num_heads {hq} must be a multiple of num_kv_heads {hkv}")
    paged_lengths(block_table, seqused_k, batch, nb, bs, dev)
    attention_options(softmax_scale, causal, window_left, window_right)
    _check_int(num_splits, "num_splits", lo=0)
    return dict(num_blocks=nb, block_size=bs, num_kv_heads=hkv, head_dim=d, k_bits=kb,
                v_bits=vb, batch=batch, q_len=q_len, num_heads=hq)


def compress_store_args(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping, k_signs,
                        v_signs, k_codebook, v_codebook):
    nb, bs, hkv, d, kb, vb = cache_geometry(k_cache, v_cache, k_norm, v_norm, k_codebook,
                                            v_codebook, k_signs, v_signs)
    dev = k_cache.device
    float_types = (torch.bfloat16, torch.float16, torch.float32)
    tensor(key, "key", dtypes=float_types, dim=3, device=dev, contiguous=True)
    t = key.shape[0]
    tensor(value, "value", dtypes=(key.dtype,), dim=3, shape=(t, hkv, d), device=dev,
           contiguous=True)
    tensor(key, "key", shape=(t, hkv, d))
    tensor(slot_mapping, "slot_mapping", dtypes=(torch.int64,), dim=1, shape=(t,), device=dev,
           contiguous=True)
    if _has_data(slot_mapping) and t:
        if int(slot_mapping.max()) >= nb * bs:
            raise ValueError(f"slot_mapping holds slot {int(slot_mapping.max())} >= num_blocks * "
                             f"block_size = {nb * bs}")
    return dict(num_blocks=nb, block_size=bs, num_kv_heads=hkv, head_dim=d, k_bits=kb,
                v_bits=vb, num_tokens=t)


def dequantize_args(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook,
                    v_codebook, k_signs, v_signs, total_k, dtype):
    nb, bs, hkv, d, kb, vb = cache_geometry(k_cache, v_cache, k_norm, v_norm, k_codebook,
                                            v_codebook, k_signs, v_signs)
    dev = k_cache.device
    _check_int(total_k, "total_k", lo=0)
    batch = cu_seqlens(cu_seqlens_k, "cu_seqlens_k", None, total_k, dev)
    tensor(block_table, "block_table", dtypes=_INT, dim=2, shape=(batch, None), device=dev)
    if block_table.stride(-1) != 1:
        raise ValueError("block_table must have unit stride in its last dim")
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"dtype must be bfloat16, float16 or float32, got {dtype}")
    if _has_data(cu_seqlens_k) and batch:
        lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to("cpu").to(torch.int32)
        paged_lengths(block_table.to("cpu"), lens, batch, nb, bs, torch.device("cpu"))
    return dict(num_blocks=nb, block_size=bs, num_kv_heads=hkv, head_dim=d, k_bits=kb,
                v_bits=vb, batch=batch)


__all__ = ["SUPPORTED_BITS", "prefill_args", "decode_args", "compress_store_args",
           "dequantize_args"]
