"""Combine the split-K partial outputs of the decode kernel (CuTeDSL).

Input: normalised fp32 partials o_part [S, B, q_len, Hq, D] and their natural-log LSEs
l_part [S, B, q_len, Hq] (-inf for a split that saw no key). Output row r:
  M = max_s l_s,  w_s = exp(l_s - M),  out = Σ w_s o_s / Σ w_s,  lse = M + log Σ w_s
and out = 0, lse = -inf when every split is empty. One warp per output row, each lane owns
D/32 consecutive elements; LSEs are read by all lanes (one broadcast transaction).

With ``unrotate`` the merged fp32 row is un-rotated in registers before its single rounding
to ``out``'s dtype: x = s_v ⊙ H y / sqrt(D) (codec.unrotate), the WHT done as in-lane
butterflies for the stages inside a lane's D/32 elements and lane-xor shuffles for the
other five (``decode.fwht_f32``). This replaces the former fp32 GEMM + scale + cast
launches after the combine.
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
UNROLL_SPLITS = 8


@dataclass(frozen=True)
class CombineConfig:
    """Compile-cache key: everything that changes the generated code."""

    head_dim: int
    out_dtype: str  # "bfloat16", "float16" or "float32"
    unrotate: bool = False  # apply the inverse V rotation (v signs) before the store
    # programmatic dependent launch: the combine is launched while the split-K kernel runs
    # (that kernel signals griddepcontrol.launch_dependents at its start) and waits in
    # griddepcontrol.wait until the partials are complete and visible; hides the launch gap
    # between the two kernels (B=1: one wave of short CTAs, the gap is on the critical path)
    pdl: bool = False

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
                 mLse: cute.Tensor, mVs: cute.Tensor, stream: cuda.CUstream):
        rows = mO.shape[0] * mO.shape[1] * mO.shape[2]
        self.kernel(mOp, mLp, mO, mLse, mVs).launch(
            grid=[(rows + ROWS_PER_CTA - 1) // ROWS_PER_CTA, 1, 1],
            block=[32 * ROWS_PER_CTA, 1, 1], stream=stream, use_pdl=self.cfg.pdl)

    @cute.kernel
    def kernel(self, mOp: cute.Tensor, mLp: cute.Tensor, mO: cute.Tensor,
               mLse: cute.Tensor, mVs: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        if const_expr(self.cfg.pdl):
            # blocks until the split-K grid has completed and its writes are visible
            cute.arch.griddepcontrol_wait()
        lane = tidx % 32
        batch, q_len, hq = mO.shape[0], mO.shape[1], mO.shape[2]
        num_splits = mOp.shape[0]
        r = bidx * ROWS_PER_CTA + tidx // 32
        if r < batch * q_len * hq:
            h = r % hq
            rest = r // hq
            qi = rest % q_len
            b = rest // q_len
            # max LSE: the lanes read different splits (one load latency instead of S)
            m = Float32(NEG_INF)
            for s in cutlass.range(lane, num_splits, 32, unroll=1):
                m = ptx.fmax(m, mLp[s, b, qi, h])
            for off in cutlass.range_constexpr(5):
                m = ptx.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=16 >> off))
            m_use = ptx.select(m == Float32(NEG_INF), Float32(0.0), m, Float32)
            acc = cute.make_rmem_tensor((self.per_lane,), Float32)
            for k in cutlass.range_constexpr(self.per_lane):
                acc[k] = Float32(0.0)
            wsum = Float32(0.0)
            # unrolled so that the loads of several splits are in flight at once (at B=1 a
            # handful of warps must hide the L2 latency of up to 256 splits)
            for s in cutlass.range(num_splits, unroll=UNROLL_SPLITS):
                w = ptx.ex2((mLp[s, b, qi, h] - m_use) * Float32(LOG2E))
                wsum = wsum + w
                for k in cutlass.range_constexpr(self.per_lane):
                    acc[k] = acc[k] + w * mOp[s, b, qi, h, lane * self.per_lane + k]
            has = wsum > Float32(0.0)
            inv = ptx.select(has, Float32(1.0) / wsum, Float32(0.0), Float32)
            vals = [acc[k] * inv for k in range(self.per_lane)]
            if const_expr(self.cfg.unrotate):
                # lanes differing in bit m hold the halves of WHT stage h = per_lane * m
                vals = ptx.fwht_f32(vals, lane, (1, 2, 4, 8, 16))
                inv_sqrt_d = Float32(1.0 / math.sqrt(self.cfg.head_dim))
                vals = [vals[k] * inv_sqrt_d * mVs[lane * self.per_lane + k]
                        for k in range(self.per_lane)]
            for k in cutlass.range_constexpr(self.per_lane):
                if const_expr(self.cfg.out_dtype == "float32"):
                    mO[b, qi, h, lane * self.per_lane + k] = vals[k]
                else:
                    mO[b, qi, h, lane * self.per_lane + k] = vals[k].to(mO.element_type)
            if lane == 0:
                mLse[b, h, qi] = ptx.select(
                    has, m_use + ptx.lg2(wsum) * Float32(math.log(2.0)), Float32(NEG_INF),
                    Float32)




def _compile_args(cfg: CombineConfig):
    odt = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16,
           "float32": Float32}[cfg.out_dtype]
    return (_fake(Float32, 5, 16, cfg.head_dim), _fake(Float32, 4, 4),
            _fake(odt, 4, 16, cfg.head_dim), _fake(Float32, 3, 4),
            _fake(Float32, 1, 4, cfg.head_dim),
            cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True))


_COMPILED: dict[CombineConfig, object] = {}


def get_compiled(cfg: CombineConfig):
    fn = _COMPILED.get(cfg)
    if fn is None:
        fn = _COMPILED[cfg] = cute.compile(TQDecodeCombine(cfg), *_compile_args(cfg),
                                           options="--enable-tvm-ffi")
    return fn


def combine(o_part: torch.Tensor, l_part: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, v_signs: torch.Tensor | None = None, pdl: bool = False) -> None:
    """o_part [S,B,q,Hq,D] f32, l_part [S,B,q,Hq] f32 -> out [B,q,Hq,D], lse [B,Hq,q];
    un-rotated with ``v_signs`` (fp32 [D]) when given. ``pdl``: launched as a programmatic
    dependent of the kernel just launched on the stream (CombineConfig.pdl)."""
    cfg = CombineConfig(out.shape[-1], str(out.dtype).replace("torch.", ""),
                        unrotate=v_signs is not None, pdl=pdl)
    # the signs are read only when unrotating; otherwise any fp32 [D] view fills the slot
    # (no allocation, so graph capture stays clean)
    get_compiled(cfg)(o_part, l_part, out, lse,
                      v_signs if v_signs is not None else o_part[0, 0, 0, 0])


def compile_configs():
    from .compile import KernelConfig

    out = []
    for d in (64, 128, 256):
        for unrotate, pdl in ((True, False), (False, False), (True, True)):
            cfg = CombineConfig(d, "bfloat16", unrotate, pdl)

            def build(cfg=cfg):
                import cutlass.cute as cute

                return (functools.partial(cute.compile, options="--enable-tvm-ffi"),
                        (TQDecodeCombine(cfg),) + _compile_args(cfg))

            name = ("bfloat16_unrot" if unrotate else "bfloat16") + ("_pdl" if pdl else "")
            out.append(KernelConfig("decode_combine", 0, 0, d, name, build))
    return out
