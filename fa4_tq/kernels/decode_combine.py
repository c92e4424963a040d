"""Combine the split-K partial outputs of the decode kernel (CuTeDSL).

Input: normalised fp32 partials o_part [S, B, q_len, Hq, D] and their natural-log LSEs
l_part [S, B, q_len, Hq] (-inf for a split that saw no key). Output row r:
  M = max_s l_s,  w_s = exp(l_s - M),  out = Σ w_s o_s / Σ w_s,  lse = M + log Σ w_s
and out = 0, lse = -inf when every split is empty. One warp per output row, each lane owns
D/32 consecutive elements; LSEs are read by all lanes (one broadcast transaction).
``out`` is either q.dtype (final output) or fp32 (when the caller un-rotates afterwards,
so the result is rounded only once).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import torch
from cutlass import Float32, const_expr

from .decode import _fake, ptx

LOG2E = 1.4426950408889634
ROWS_PER_CTA = 4


@dataclass(frozen=True)
class CombineConfig:
    """Compile-cache key: everything that changes the generated code."""

    head_dim: int
    out_dtype: str  # "bfloat16", "float16" or "float32"

    def __post_init__(self):
        if self.head_dim not in (64, 128, 256):
            raise ValueError(f"head_dim must be 64, 128 or 256, got {self.head_dim}")
        if self.out_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"out_dtype must be bfloat16, float16 or float32, "
                             f"got {self.out_dtype}")


NEG_INF = -math.inf


class TQDecodeCombine:
    def __init__(self, cfg: CombineConfig):
        self.cfg = cfg
        self.per_lane = cfg.head_dim // 32

    @cute.jit
    def __call__(self, mOp: cute.Tensor, mLp: cute.Tensor, mO: cute.Tensor,
                 mLse: cute.Tensor, stream: cuda.CUstream):
        rows = mO.shape[0] * mO.shape[1] * mO.shape[2]
        self.kernel(mOp, mLp, mO, mLse).launch(
            grid=[(rows + ROWS_PER_CTA - 1) // ROWS_PER_CTA, 1, 1],
            block=[32 * ROWS_PER_CTA, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mOp: cute.Tensor, mLp: cute.Tensor, mO: cute.Tensor,
               mLse: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = tidx % 32
        batch, q_len, hq = mO.shape[0], mO.shape[1], mO.shape[2]
        num_splits = mOp.shape[0]
        r = bidx * ROWS_PER_CTA + tidx // 32
        if r < batch * q_len * hq:
            h = r % hq
            rest = r // hq
            qi = rest % q_len
            b = rest // q_len
            m = Float32(NEG_INF)
            for s in cutlass.range(num_splits, unroll=1):
                m = ptx.fmax(m, mLp[s, b, qi, h])
            m_use = ptx.select(m == Float32(NEG_INF), Float32(0.0), m, Float32)
            acc = cute.make_rmem_tensor((self.per_lane,), Float32)
            for k in cutlass.range_constexpr(self.per_lane):
                acc[k] = Float32(0.0)
            wsum = Float32(0.0)
            for s in cutlass.range(num_splits, unroll=1):
                w = ptx.ex2((mLp[s, b, qi, h] - m_use) * Float32(LOG2E))
                wsum = wsum + w
                for k in cutlass.range_constexpr(self.per_lane):
                    acc[k] = acc[k] + w * mOp[s, b, qi, h, lane * self.per_lane + k]
            has = wsum > Float32(0.0)
            inv = ptx.select(has, Float32(1.0) / wsum, Float32(0.0), Float32)
            for k in cutlass.range_constexpr(self.per_lane):
                val = acc[k] * inv
                if const_expr(self.cfg.out_dtype == "float32"):
                    mO[b, qi, h, lane * self.per_lane + k] = val
                else:
                    mO[b, qi, h, lane * self.per_lane + k] = val.to(mO.element_type)
            if lane == 0:
                mLse[b, h, qi] = ptx.select(
                    has, m_use + ptx.lg2(wsum) * Float32(math.log(2.0)), Float32(NEG_INF),
                    Float32)




def _compile_args(cfg: CombineConfig):
    odt = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16,
           "float32": Float32}[cfg.out_dtype]
    return (_fake(Float32, 5, 16, cfg.head_dim), _fake(Float32, 4, 4),
            _fake(odt, 4, 16, cfg.head_dim), _fake(Float32, 3, 4),
            cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True))


_COMPILED: dict[CombineConfig, object] = {}


def get_compiled(cfg: CombineConfig):
    fn = _COMPILED.get(cfg)
    if fn is None:
        fn = _COMPILED[cfg] = cute.compile(TQDecodeCombine(cfg), *_compile_args(cfg),
                                           options="--enable-tvm-ffi")
    return fn


def combine(o_part: torch.Tensor, l_part: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor) -> None:
    """o_part [S,B,q,Hq,D] f32, l_part [S,B,q,Hq] f32 -> out [B,q,Hq,D], lse [B,Hq,q]."""
    cfg = CombineConfig(out.shape[-1], str(out.dtype).replace("torch.", ""))
    get_compiled(cfg)(o_part, l_part, out, lse)


def compile_configs():
    from .compile import KernelConfig

    out = []
    for d in (64, 128, 256):
        for odt in ("bfloat16", "float32"):
            cfg = CombineConfig(d, odt)

            def build(cfg=cfg):
                import cutlass.cute as cute

                return (functools.partial(cute.compile, options="--enable-tvm-ffi"),
                        (TQDecodeCombine(cfg),) + _compile_args(cfg))

            out.append(KernelConfig("decode_combine", 0, 0, d, odt, build))
    return out
