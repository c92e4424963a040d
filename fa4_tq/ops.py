"""``torch.ops.tqkv.*``: schemas, validation, CPU reference, fake impls, CUDA dispatch.

Op signatures (stable; see README "Ops"):

  compress_store(key, value, k_cache!, v_cache!, k_norm!, v_norm!, slot_mapping,
                 k_signs, v_signs, k_codebook, v_codebook) -> ()
  dequantize(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook,
             v_codebook, k_signs, v_signs, unrotate, total_k, dtype) -> (k, v)
  prefill(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
          k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q, softmax_scale, causal,
          window_left, window_right, rotate_query, unrotate_output, backend) -> (out, lse)
  decode(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook, v_codebook,
         k_signs, v_signs, softmax_scale, causal, window_left, window_right, rotate_query,
         unrotate_output, num_splits) -> (out, lse)

CUDA tensors go to the kernel module registered for the op in ``CUDA_KERNELS``; where no
kernel exists for a case it raises ``NotImplementedError`` — there is no silent fallback to
the reference on the GPU.
"""

from __future__ import annotations

import functools
import importlib

import torch

from . import reference, validate

PREFILL_BACKENDS = ("auto", "sm90", "sm80")

# op name -> (module, function) implementing it for CUDA tensors. Imported lazily so that
# importing fa4_tq never imports CuTeDSL.
CUDA_KERNELS = {
    "compress_store": ("fa4_tq.kernels.compress", "compress_store_cuda"),
    "dequantize": ("fa4_tq.kernels.compress", "dequantize_cuda"),
    "prefill": ("fa4_tq.kernels.prefill", "prefill_cuda"),
    "decode": ("fa4_tq.kernels.decode", "decode_cuda"),
}


@functools.lru_cache(maxsize=None)
def _pinned_versions_ok() -> bool:
    """The kernels subclass FA4/CuTeDSL internals: check the exact pins once, before the
    first kernel module is imported (raises fa4_tq._fa4.FA4VersionError with the fix)."""
    from ._fa4 import check_versions
    check_versions()
    return True


def _cuda_impl(op: str):
    _pinned_versions_ok()
    mod_name, fn_name = CUDA_KERNELS[op]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name != mod_name:
            raise
        raise NotImplementedError(f"tqkv.{op}: no CUDA kernel is implemented yet "
                                  f"({mod_name} does not exist); use CPU tensors for the "
                                  f"reference implementation") from None
    return getattr(mod, fn_name)


# --------------------------------------------------------------------------- compress_store
@torch.library.custom_op("tqkv::compress_store",
                         mutates_args=("k_cache", "v_cache", "k_norm", "v_norm"))
def compress_store(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, k_norm: torch.Tensor, v_norm: torch.Tensor,
                   slot_mapping: torch.Tensor, k_signs: torch.Tensor, v_signs: torch.Tensor,
                   k_codebook: torch.Tensor, v_codebook: torch.Tensor) -> None:
    validate.compress_store_args(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping,
                                 k_signs, v_signs, k_codebook, v_codebook)
    if key.device.type == "cuda":
        return _cuda_impl("compress_store")(key, value, k_cache, v_cache, k_norm, v_norm,
                                            slot_mapping, k_signs, v_signs, k_codebook,
                                            v_codebook)
    reference.compress_store(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping,
                             k_signs, v_signs, k_codebook, v_codebook)


@compress_store.register_fake
def _(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping, k_signs, v_signs,
      k_codebook, v_codebook):
    validate.compress_store_args(key, value, k_cache, v_cache, k_norm, v_norm, slot_mapping,
                                 k_signs, v_signs, k_codebook, v_codebook)


# --------------------------------------------------------------------------- dequantize
@torch.library.custom_op("tqkv::dequantize", mutates_args=())
def dequantize(k_cache: torch.Tensor, v_cache: torch.Tensor, k_norm: torch.Tensor,
               v_norm: torch.Tensor, block_table: torch.Tensor, cu_seqlens_k: torch.Tensor,
               k_codebook: torch.Tensor, v_codebook: torch.Tensor, k_signs: torch.Tensor,
               v_signs: torch.Tensor, unrotate: bool, total_k: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    validate.dequantize_args(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k,
                             k_codebook, v_codebook, k_signs, v_signs, total_k, dtype)
    if k_cache.device.type == "cuda":
        return _cuda_impl("dequantize")(k_cache, v_cache, k_norm, v_norm, block_table,
                                        cu_seqlens_k, k_codebook, v_codebook, k_signs,
                                        v_signs, unrotate, total_k, dtype)
    return reference.dequantize(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k,
                                k_codebook, v_codebook, k_signs, v_signs, unrotate, total_k,
                                dtype)


@dequantize.register_fake
def _(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k, k_codebook, v_codebook,
      k_signs, v_signs, unrotate, total_k, dtype):
    g = validate.dequantize_args(k_cache, v_cache, k_norm, v_norm, block_table, cu_seqlens_k,
                                 k_codebook, v_codebook, k_signs, v_signs, total_k, dtype)
    shape = (total_k, g["num_kv_heads"], g["head_dim"])
    return (k_cache.new_empty(shape, dtype=dtype), k_cache.new_empty(shape, dtype=dtype))


# --------------------------------------------------------------------------- prefill
@torch.library.custom_op("tqkv::prefill", mutates_args=())
def prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            k_norm: torch.Tensor, v_norm: torch.Tensor, cu_seqlens_q: torch.Tensor,
            block_table: torch.Tensor, seqused_k: torch.Tensor, k_codebook: torch.Tensor,
            v_codebook: torch.Tensor, k_signs: torch.Tensor, v_signs: torch.Tensor,
            max_seqlen_q: int, softmax_scale: float, causal: bool, window_left: int,
            window_right: int, rotate_query: bool, unrotate_output: bool,
            backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_backend(backend)
    validate.prefill_args(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table,
                          seqused_k, k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q,
                          softmax_scale, causal, window_left, window_right)
    args = (q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
            k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q, softmax_scale, causal,
            window_left, window_right, rotate_query, unrotate_output)
    if q.device.type == "cuda":
        return _cuda_impl("prefill")(*args, backend=backend)
    return reference.prefill(*args)


def _check_backend(backend: str) -> None:
    if backend not in PREFILL_BACKENDS:
        raise ValueError(f"backend must be one of {PREFILL_BACKENDS}, got {backend!r}")


@prefill.register_fake
def _(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k, k_codebook,
      v_codebook, k_signs, v_signs, max_seqlen_q, softmax_scale, causal, window_left,
      window_right, rotate_query, unrotate_output, backend):
    _check_backend(backend)
    g = validate.prefill_args(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table,
                              seqused_k, k_codebook, v_codebook, k_signs, v_signs,
                              max_seqlen_q, softmax_scale, causal, window_left, window_right)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((g["num_heads"], g["total_q"]), dtype=torch.float32))


# --------------------------------------------------------------------------- decode
@torch.library.custom_op("tqkv::decode", mutates_args=())
def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_norm: torch.Tensor,
           v_norm: torch.Tensor, block_table: torch.Tensor, seqused_k: torch.Tensor,
           k_codebook: torch.Tensor, v_codebook: torch.Tensor, k_signs: torch.Tensor,
           v_signs: torch.Tensor, softmax_scale: float, causal: bool, window_left: int,
           window_right: int, rotate_query: bool, unrotate_output: bool,
           num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    validate.decode_args(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k,
                         k_codebook, v_codebook, k_signs, v_signs, softmax_scale, causal,
                         window_left, window_right, num_splits)
    args = (q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook,
            v_codebook, k_signs, v_signs, softmax_scale, causal, window_left, window_right,
            rotate_query, unrotate_output)
    if q.device.type == "cuda":
        return _cuda_impl("decode")(*args, num_splits=num_splits)
    return reference.decode(*args)


@decode.register_fake
def _(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k, k_codebook, v_codebook,
      k_signs, v_signs, softmax_scale, causal, window_left, window_right, rotate_query,
      unrotate_output, num_splits):
    g = validate.decode_args(q, k_cache, v_cache, k_norm, v_norm, block_table, seqused_k,
                             k_codebook, v_codebook, k_signs, v_signs, softmax_scale, causal,
                             window_left, window_right, num_splits)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((g["batch"], g["num_heads"], g["q_len"]), dtype=torch.float32))
