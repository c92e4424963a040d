"""Device probe (session 3, docs/prefill-sm90-notes.md step 5): what bounds the Sm90 prefill at ~0.68x FA4 when halving the decode
work (cluster_share=2) does not help K4V4? Time, on the same data (B=1 S=8K Hq=32 Hkv=8
D=128 K4V4 full), kernel variants built by monkeypatching this process only (never the
library; run: source .devenv/setup.sh && python3 microbench/prefill_bound_probe.py):
  pw2 / pw1          the shipped kernels (208/48 and 224/56 register splits)
  nodec-pw2/pw1      producer skips the decode + tile stores (cp.async staging kept)
  null-pw2/pw1       producer skips decode, stores and staging (pure pipeline hand-off)
  regs216/40, 224/32 pw2 with other consumer/producer register splits
"""
import dataclasses
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "microbench"))
import cutlass.cute as cute  # noqa: E402
from cutlass import Int32  # noqa: E402
from fa4_tq import reference  # noqa: E402
from fa4_tq.kernels import prefill as P  # noqa: E402
from fa4_tq.kernels import prefill_sm90 as S  # noqa: E402
import prefill_probe as PP  # noqa: E402

ORIG_DECODE, ORIG_ISSUE = S.PrefillSm90._decode, S.PrefillSm90._issue


def nodec(self, *a, **k):
    return None


def noissue(self, ctx, i, is_k):
    cute.arch.cp_async_commit_group()
    return Int32(0)


class Variant:
    def __init__(self, name, pw, decode=True, issue=True, regs=None, cs=1):
        self.name, self.pw, self.decode, self.issue, self.regs, self.cs = (
            name, pw, decode, issue, regs, cs)
        self.cache = {}

    def fn(self, kb, vb, causal, args, scale):
        cfg = S.make_config(128, kb, vb, 4, causal, False, False, False, producer_wgs=self.pw,
                            cluster_share=self.cs)
        if self.regs:
            cfg = dataclasses.replace(cfg, consumer_regs=self.regs[0],
                                      producer_regs=self.regs[1])

        def run():
            S.PrefillSm90._decode = ORIG_DECODE if self.decode else nodec
            S.PrefillSm90._issue = ORIG_ISSUE if self.issue else noissue
            try:
                return P._run_kernel(S.PrefillSm90, self.cache, cfg, -1, -1, *args[:12], scale,
                                     False, False, None, None)
            finally:
                S.PrefillSm90._decode, S.PrefillSm90._issue = ORIG_DECODE, ORIG_ISSUE
        return run


VARIANTS = [
    Variant("pw2", 2), Variant("pw1", 1),
    Variant("nodec-pw2", 2, decode=False), Variant("nodec-pw1", 1, decode=False),
    Variant("null-pw2", 2, decode=False, issue=False),
    Variant("null-pw1", 1, decode=False, issue=False),
    Variant("regs216/40", 2, regs=(216, 40)), Variant("regs224/32", 2, regs=(224, 32)),
    Variant("null-regs232/24", 2, decode=False, issue=False, regs=(232, 24)),
    Variant("cs2", 2, cs=2),
]


def main():
    from flash_attn.cute.interface import flash_attn_func
    t0 = time.time()
    print(torch.cuda.get_device_name(), flush=True)
    for kb, vb, causal in ((4, 4, False), (2, 2, False), (8, 8, False)):
        seqlen, hq, hkv, d = 8192, 32, 8, 128
        gen = torch.Generator().manual_seed(kb * 10 + vb)
        codec, kc, vc, kn, vn, bt, seqused = PP.build_cache([seqlen], hkv, d, kb, vb, 128, gen)
        q = torch.randn(seqlen, hq, d, device="cuda", dtype=torch.bfloat16)
        cuq = PP.cu([seqlen])
        scale = 1.0 / math.sqrt(d)
        k16, v16 = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook,
                                        codec.v_codebook, codec.k_signs, codec.v_signs, False,
                                        seqlen, torch.bfloat16)
        qb = q.view(1, seqlen, hq, d)
        fa4 = lambda: flash_attn_func(qb, k16.view(1, seqlen, hkv, d),  # noqa
                                      v16.view(1, seqlen, hkv, d), softmax_scale=scale,
                                      causal=causal)
        args = (q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook,
                codec.k_signs, codec.v_signs, seqlen, scale, causal, -1, -1, False, False)
        t_fa4 = PP.bench_fn(fa4)
        flops = 4 * seqlen * seqlen * hq * d / (2 if causal else 1)
        print(f"== K{kb}V{vb} S8K {'causal' if causal else 'full'}: FA4 {t_fa4:.3f} ms "
              f"({flops / t_fa4 / 1e9:.0f} TF/s)", flush=True)
        variants = VARIANTS if kb == 4 else [v for v in VARIANTS if v.name in (
            "pw2", "nodec-pw2", "null-pw2", "regs216/40")]
        for v in variants:
            if time.time() - t0 > 230:
                print("SKIP", v.name)
                continue
            try:
                fn = v.fn(kb, vb, causal, args, scale)
                fn()
                torch.cuda.synchronize()
                t = PP.bench_fn(fn)
                print(f"  {v.name:16s} {t:.3f} ms ({flops / t / 1e9:.0f} TF/s) "
                      f"{t_fa4 / t:.3f}x FA4", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  {v.name:16s} ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(f"t={time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
