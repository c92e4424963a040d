"""torch-facing prefill over the TurboQuant paged cache (``torch.ops.tqkv.prefill`` on CUDA).

``prefill_cuda`` is called by fa4_tq/ops.py after fa4_tq/validate.py checked the arguments.
Steps (all on the current stream, no host syncs, only caching-allocator allocations, so the
call is CUDA-graph capturable once its kernel is compiled):

1. q -> bf16 in K's rotated space: one bf16 GEMM against the exact ±1 matrix with float32
   accumulation (fa4_tq/kernels/rotation.py) when
   ``rotate_query``; fp16 queries are computed as bf16 (the kernel's K/V tiles are bf16 and
   wgmma needs equal operand types; the bf16 rounding of q costs ~2^-9 relative error);
2. PrefillSm90 (fa4_tq/kernels/prefill_sm90.py) reads the packed cache directly;
3. out <- out @ R_v^T / sqrt(D) (same GEMM) when ``unrotate_output``, cast to q.dtype.

Compiled kernels are cached per ``PrefillSm90Config`` (every code-changing parameter:
head_dim, bits, GQA ratio, mask kind, window presence, tiles, staging, table replication,
decode path, producer warpgroups, register split, cluster sharing); the first call for a config compiles (~5-10 s), later calls do not.
"""

from __future__ import annotations

import os
from functools import partial

import torch

from ..codec import codebook_bits as _bits
from .rotation import apply_rotation, rotation_matrix

_ARCH_ENV = {"CUTE_DSL_ARCH": "sm_90a", "FLASH_ATTENTION_ARCH": "sm_90"}
_compiled: dict = {}


def _ensure_arch_env() -> None:
    # CuTeDSL/FA4 read the target arch at import/compile time; keep an explicit choice.
    for k, v in _ARCH_ENV.items():
        os.environ.setdefault(k, v)


def canonical_mask(causal: bool, window_left: int, window_right: int):
    """The op's (causal, window_left, window_right) -> FA4's (causal, local, wl|None, wr|None).

    Same rule as FA4's interface: -1 means unlimited; causal means window_right = 0; a causal
    mask without a left window is FA4's ``causal``, every other window is ``local``."""
    wl = None if window_left < 0 else int(window_left)
    wr = None if window_right < 0 else int(window_right)
    if causal:
        wr = 0
    if wl is None and wr is None:
        return False, False, None, None
    if wl is None and wr == 0:
        return True, False, None, None
    return False, True, wl, wr




def config_for(q, k_cache, k_codebook, v_codebook, causal, window_left, window_right,
               register_lut=(None, None), **sm90_knobs):
    """(PrefillSm90Config, window_left, window_right); ``sm90_knobs`` (and max_seqlen_q, for
    the pack_gqa=None rule) go to ``make_config``."""
    from .prefill_sm90 import make_config
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[2]
    c, local, wl, wr = canonical_mask(causal, window_left, window_right)
    return make_config(d, _bits(k_codebook), _bits(v_codebook), hq // hkv, c, local,
                       wl is not None, wr is not None, *register_lut, **sm90_knobs), wl, wr


def _to_cute(t, align, leading_dim=-1):
    from flash_attn.cute.cute_dsl_utils import to_cute_tensor
    return to_cute_tensor(t, assumed_align=align, leading_dim=leading_dim)


def _compile(kernel_cls, cfg, args):
    import cutlass.cute as cute
    (q, kc, vc, kn, vn, kcb, vcb, out, lse, scale, cu_q, seqused_k, bt, wl, wr) = args
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return cute.compile(
        kernel_cls(cfg), _to_cute(q, 16), _to_cute(kc, 16), _to_cute(vc, 16),
        _to_cute(kn, 4), _to_cute(vn, 4), _to_cute(kcb, 4, 0), _to_cute(vcb, 4, 0),
        _to_cute(out, 16), _to_cute(lse, 4), scale, _to_cute(cu_q, 4, 0),
        _to_cute(seqused_k, 4, 0), _to_cute(bt, 4, 1), wl, wr, stream,
        options="--enable-tvm-ffi")


def build_fake_compile(kernel, cfg):
    """(compile_fn, args) compiling ``kernel`` (a PrefillSm90 / PrefillSm80 instance for
    ``cfg``) from fake tensors, no GPU: the compile-only harness's twin of ``_compile``'s
    arguments (all sizes and strides symbolic, like ``to_cute_tensor`` of the real call)."""
    import cutlass.cute as cute
    from cutlass import BFloat16, Float32 as F32, Int16, Int32 as I32, Uint8
    from .compile import fake_stream, fake_tensor
    args = (
        kernel,
        fake_tensor(BFloat16, (None,) * 3),  # q
        fake_tensor(Uint8, (None,) * 4), fake_tensor(Uint8, (None,) * 4),  # k/v codes
        fake_tensor(Int16, (None,) * 3, align_bytes=4),  # k/v norms (bf16 bits)
        fake_tensor(Int16, (None,) * 3, align_bytes=4),
        fake_tensor(F32, (None,), leading_dim=0, align_bytes=4),  # k/v codebooks
        fake_tensor(F32, (None,), leading_dim=0, align_bytes=4),
        fake_tensor(BFloat16, (None,) * 3),  # out
        fake_tensor(F32, (None,) * 2, align_bytes=4),  # lse
        1.0 / cfg.head_dim ** 0.5,
        fake_tensor(I32, (None,), leading_dim=0, align_bytes=4),  # cu_seqlens_q
        fake_tensor(I32, (None,), leading_dim=0, align_bytes=4),  # seqused_k
        fake_tensor(I32, (None, None), leading_dim=1, align_bytes=4),  # block_table
        I32(0) if cfg.has_window_left else None,
        I32(0) if cfg.has_window_right else None,
        fake_stream(),
    )
    return partial(cute.compile, options="--enable-tvm-ffi"), args


def prefill_cuda(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
                 k_codebook, v_codebook, k_signs, v_signs, max_seqlen_q, softmax_scale, causal,
                 window_left, window_right, rotate_query, unrotate_output, *, backend="auto",
                 kernel_out=None, kernel_lse=None, register_lut=(None, None),
                 producer_wgs=None, cluster_share=None, cluster_sides=None, direct_loads=None,
                 num_stages=None, register_split=None, pack_gqa=None, lut_replicas=None,
                 prmt_lut=None):
    """(out [total_q, Hq, D] in q.dtype, lse float32 [Hq, total_q]); see fa4_tq/ops.py.

    ``kernel_out`` (bf16 [total_q, Hq, D]) / ``kernel_lse`` (fp32 [Hq, total_q]) are optional
    buffers for the kernel's raw output (rotated space); tests pass NaN-poisoned ones to prove
    every element is written. ``register_lut`` = (K, V) decode choice for 2/4-bit sides
    (None: the kernel's default); ``producer_wgs`` = 1 or 2 producer warpgroups for the sm90
    kernel (None: its default per bit widths); ``cluster_share`` = 1 or 2 (the 2-CTA cluster that
    shares decoded K/V tiles between the query heads 2j, 2j+1: D=128, producer_wgs=2, even GQA
    ratio) and ``cluster_sides`` = "kv" / "k" / "v" (which sides it shares); None: the
    kernel's measured default (``prefill_sm90.default_cluster_share``); ``direct_loads`` /
    ``num_stages`` / ``register_split`` = the staging-free producer, K/V pipeline depth and
    setmaxnreg split, ``pack_gqa`` = FA4's PackGQA tile (query heads of a KV head folded into
    the Q tile; None: ``prefill_sm90.default_pack_gqa``, which packs when q_len x G <= 128 at
    D=128 without a cluster pair: 3.6x faster for 16-query chunks on the H100),
    ``lut_replicas`` = (K, V) replication of shared-memory byte tables (None: the fit
    heuristic) (``prefill_sm90.make_config``); ``prmt_lut`` = PRMT-addressed interleaved
    byte tables, both backends (opt-in; ``make_config`` of either kernel). All are
    benchmarking hooks and part of the compile-cache key (the config)."""
    if backend not in ("auto", "sm90", "sm80"):
        raise ValueError(f"backend must be 'auto', 'sm90' or 'sm80', got {backend!r}")
    major, minor = torch.cuda.get_device_capability(q.device)
    if backend == "auto":
        # Hopper: the wgmma kernel; any other GPU: the portable mma.sync kernel (which itself
        # rejects compute capability < 8.0 and asks for the opt-in off Hopper, see below).
        backend = "sm90" if major == 9 else "sm80"
    sm90_knobs = dict(producer_wgs=producer_wgs, cluster_share=cluster_share,
                      cluster_sides=cluster_sides, direct_loads=direct_loads,
                      num_stages=num_stages, register_split=register_split, pack_gqa=pack_gqa,
                      lut_replicas=lut_replicas)
    # (after resolving "auto", so a non-Hopper GPU never drops these silently)
    inert = {"cluster_share": 1, "cluster_sides": "kv", "pack_gqa": False}
    set_knobs = [k for k, v in sm90_knobs.items() if v is not None and v != inert.get(k)]
    if set_knobs and backend == "sm80":
        raise ValueError(f"tqkv.prefill: {', '.join(set_knobs)}: sm90 kernel knobs, not "
                         f"applicable to backend='sm80'")
    if backend == "sm80":
        return _prefill_sm80(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table,
                             seqused_k, k_codebook, v_codebook, k_signs, v_signs, softmax_scale,
                             causal, window_left, window_right, rotate_query, unrotate_output,
                             kernel_out, kernel_lse, register_lut, bool(prmt_lut))
    if major != 9:
        raise NotImplementedError(f"tqkv.prefill: the sm90 prefill kernel needs a Hopper GPU "
                                  f"(compute capability 9.x), got {major}.{minor}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("q", q)):
        if t.data_ptr() % 16:
            raise ValueError(f"tqkv.prefill: {name} must be 16-byte aligned (cp.async/TMA)")
    # raises NotImplementedError for head_dim 256 and unsupported cluster_share cases
    cfg, wl, wr = config_for(q, k_cache, k_codebook, v_codebook, causal, window_left,
                             window_right, register_lut, max_seqlen_q=int(max_seqlen_q),
                             prmt_lut=bool(prmt_lut), **sm90_knobs)
    _ensure_arch_env()
    from .prefill_sm90 import PrefillSm90
    return _run_kernel(PrefillSm90, _compiled, cfg, wl, wr, q, k_cache, v_cache, k_norm, v_norm,
                       cu_seqlens_q, block_table, seqused_k, k_codebook, v_codebook, k_signs,
                       v_signs, softmax_scale, rotate_query, unrotate_output, kernel_out,
                       kernel_lse)


def _run_kernel(kernel_cls, compiled: dict, cfg, wl, wr, q, k_cache, v_cache, k_norm, v_norm,
                cu_seqlens_q, block_table, seqused_k, k_codebook, v_codebook, k_signs, v_signs,
                softmax_scale, rotate_query, unrotate_output, kernel_out, kernel_lse):
    """Shared by every prefill class (same __call__ signature): rotate q into K's space
    (bf16), run the cached compiled kernel for ``cfg``, un-rotate the output."""
    total_q, hq, d = q.shape
    out_dtype = q.dtype
    if rotate_query:
        qk = apply_rotation(q.to(torch.bfloat16) if q.dtype != torch.bfloat16 else q,
                            rotation_matrix(k_signs))
    else:
        qk = q.to(torch.bfloat16)
    qk = qk.contiguous()
    out = kernel_out if kernel_out is not None else torch.empty(
        total_q, hq, d, dtype=torch.bfloat16, device=q.device)
    lse = kernel_lse if kernel_lse is not None else torch.empty(
        hq, total_q, dtype=torch.float32, device=q.device)
    if total_q == 0:
        return out.to(out_dtype), lse
    args = (qk, k_cache, v_cache, k_norm.view(torch.int16), v_norm.view(torch.int16),
            k_codebook, v_codebook, out, lse, float(softmax_scale), cu_seqlens_q, seqused_k,
            block_table, wl, wr)
    fn = compiled.get(cfg)
    if fn is None:
        fn = compiled[cfg] = _compile(kernel_cls, cfg, args)
    fn(*args)
    if unrotate_output:
        out = apply_rotation(out, rotation_matrix(v_signs, inverse=True))
    return out.to(out_dtype), lse


# --------------------------------------------------------------------------- sm80 backend
# The portable mma.sync prefill (fa4_tq/kernels/prefill_sm80.py), FA4's Sm80 forward forced to
# the sm_80 code path. Validated on the H100 (sm_90a build; tests/gpu/test_prefill_sm80.py,
# microbench/prefill_sm80_probe.py, 2026-11-23). It has never run on an Ampere/Ada/consumer-
# Blackwell GPU (smaller shared memory, sm_80/86/89/120 builds), so off Hopper it runs only with
# FA4TQ_UNVALIDATED_SM80=1 — backend="auto" routes there and raises the same clear error.
SM80_OPT_IN_ENV = "FA4TQ_UNVALIDATED_SM80"
_compiled_sm80: dict = {}


def _prefill_sm80(q, k_cache, v_cache, k_norm, v_norm, cu_seqlens_q, block_table, seqused_k,
                  k_codebook, v_codebook, k_signs, v_signs, softmax_scale, causal, window_left,
                  window_right, rotate_query, unrotate_output, kernel_out, kernel_lse,
                  register_lut, prmt_lut=False):
    """backend="sm80": same steps and outputs as the sm90 path (rotate q, kernel, un-rotate)."""
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 8:
        raise NotImplementedError(f"tqkv.prefill: backend='sm80' needs compute capability "
                                  f">= 8.0 (bf16 mma.sync), got {major}.{minor}")
    if major != 9 and os.environ.get(SM80_OPT_IN_ENV, "0") in ("", "0", "false", "False"):
        raise NotImplementedError(
            f"tqkv.prefill: the portable (sm80) prefill is validated on Hopper only; compute "
            f"capability {major}.{minor} has not been run yet: set {SM80_OPT_IN_ENV}=1 to run "
            "it for validation (tests/gpu/test_prefill_sm80.py)")
    total_q, hq, d = q.shape
    if d not in (64, 128):
        raise NotImplementedError(f"tqkv.prefill: backend='sm80' supports head_dim 64 and 128, "
                                  f"got head_dim {d}")
    for name, t, align in (("k_cache", k_cache, 16), ("v_cache", v_cache, 16), ("q", q, 16),
                           ("k_norm", k_norm, 4), ("v_norm", v_norm, 4)):
        if t.data_ptr() % align:  # vector loads / cp.async of whole norm words
            raise ValueError(f"tqkv.prefill: {name} must be {align}-byte aligned")
    from .prefill_sm80 import make_config
    c, local, wl, wr = canonical_mask(causal, window_left, window_right)
    cfg = make_config(d, _bits(k_codebook), _bits(v_codebook), hq // k_cache.shape[2], c, local,
                      wl is not None, wr is not None, *register_lut, prmt_lut=prmt_lut)
    from .prefill_sm80 import PrefillSm80
    return _run_kernel(PrefillSm80, _compiled_sm80, cfg, wl, wr, q, k_cache, v_cache, k_norm,
                       v_norm, cu_seqlens_q, block_table, seqused_k, k_codebook, v_codebook,
                       k_signs, v_signs, softmax_scale, rotate_query, unrotate_output,
                       kernel_out, kernel_lse)
