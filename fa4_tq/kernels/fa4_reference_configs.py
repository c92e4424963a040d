"""Stock FA4 Sm90 forward configs: the baseline every fa4_tq kernel is compared against.

These compile FA4's own ``FlashAttentionForwardSm90`` exactly as
``flash_attn.cute.interface._flash_attn_fwd`` does for a dense bf16 call (interface.py
lines 1630-1653 construct the kernel object, 1805-1845 call ``cute.compile``), but with
fake tensors, so they run without a GPU. Tile sizes come from FA4's own Sm90 heuristic
(``_tile_size_fwd_sm90``), so the numbers are those of the kernel FA4 would really run.

The object is built directly instead of calling ``_flash_attn_fwd`` under FakeTensorMode
(which also compiles without launching) because ``_flash_attn_fwd`` keeps compiled
kernels in an in-process cache keyed by config: a second compile of the same config
would be a cache hit with no ptxas output, and the compiled object is not returned.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

from fa4_tq import _fa4
from fa4_tq.kernels.compile import KernelConfig, fake_stream, fake_tensor

HEAD_DIMS = (64, 128)
BF16_BITS = 16


def variant_name(causal: bool) -> str:
    return "sm90-causal" if causal else "sm90"


def build_fa4_fwd_sm90(head_dim: int, causal: bool) -> tuple[Callable[..., Any], Sequence[Any]]:
    """(compile_fn, args) for FA4's Sm90 forward: bf16, MHA, dense (no varlen/paging)."""
    import cutlass
    import cutlass.cute as cute

    dtype = cutlass.BFloat16
    cfg = _fa4.tile_size_fwd_sm90()(head_dim, head_dim, causal, False)
    kernel = _fa4.flash_fwd_sm90()(
        dtype,
        head_dim,
        head_dim,
        1,  # qhead_per_kvhead
        is_causal=causal,
        is_local=False,
        pack_gqa=False,
        tile_m=cfg.m_block_size,
        tile_n=cfg.n_block_size,
        num_stages=2,
        num_threads=384,
        Q_in_regs=False,
        intra_wg_overlap=cfg.intra_wg_overlap,
        mma_pv_is_rs=cfg.mma_pv_is_rs,
        paged_kv_non_tma=False,
    )
    # (batch, seqlen, heads, head_dim), every size symbolic like to_cute_tensor's.
    q, k, v, o = (fake_tensor(dtype, (None,) * 4) for _ in range(4))
    args = (
        kernel,
        q,
        k,
        v,
        o,
        None,  # mLSE (FA4 allocates none unless return_lse / grad)
        1.0 / math.sqrt(head_dim),  # softmax_scale
        None,  # mCuSeqlensQ
        None,  # mCuSeqlensK
        None,  # mSeqUsedQ
        None,  # mSeqUsedK
        None,  # mPageTable
        None,  # window_size_left
        None,  # window_size_right
        None,  # learnable_sink
        None,  # blocksparse_tensors
        _fa4.aux_data()(None, None),
        None,  # mCuTotalMBlocks
        None,  # mCuTotalSplitsMBlocks
        fake_stream(),
    )
    return functools.partial(cute.compile, options="--enable-tvm-ffi"), args


def register_configs(register: Callable[[KernelConfig], None]) -> None:
    """Register fa4_fwd/sm90[-causal] for each head dim (bf16, so k_bits=v_bits=16)."""
    for head_dim in HEAD_DIMS:
        for causal in (False, True):
            register(
                KernelConfig(
                    kernel="fa4_fwd",
                    k_bits=BF16_BITS,
                    v_bits=BF16_BITS,
                    head_dim=head_dim,
                    variant=variant_name(causal),
                    build=functools.partial(build_fa4_fwd_sm90, head_dim, causal),
                )
            )
