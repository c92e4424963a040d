"""Device probe (session 3, docs/prefill-sm90-notes.md step 5): cluster sharing per side
(cluster_sides kv / k / v) — raw output bit-identical to cluster_share=1, and B=1 S=8K timing
against producer_wgs 1/2 and FA4-bf16 on the same data. The defaults in
prefill_sm90.CLUSTER_SHARE_MEASURED come from this probe.
Run: source .devenv/setup.sh && python3 microbench/prefill_cluster_sides_probe.py [--8bit]"""
import math, os, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "microbench"))
from fa4_tq import reference  # noqa
from fa4_tq.kernels import prefill as P  # noqa
import prefill_probe as PP  # noqa

T0 = time.time()


def raw_compare(tag, q_lens, k_lens, hq, hkv, kb, vb, bs, causal, seed, sides):
    from fa4_tq.testing import random_prefill_args
    args = random_prefill_args(q_lens, k_lens, hq, hkv, 128, kb, vb, bs, causal,
                               generator=torch.Generator().manual_seed(seed), rotate=False,
                               unrotate=False)
    q = args[0]
    res = []
    for cs, sd in [(1, "kv")] + [(2, s) for s in sides]:
        kout = torch.full((q.shape[0], hq, 128), float("nan"), dtype=torch.bfloat16, device="cuda")
        klse = torch.full((hq, q.shape[0]), float("nan"), device="cuda")
        P.prefill_cuda(*args, kernel_out=kout, kernel_lse=klse, producer_wgs=2, cluster_share=cs,
                       cluster_sides=sd)
        torch.cuda.synchronize()
        res.append((sd, kout, klse))
    _, o1, l1 = res[0]
    for sd, o2, l2 in res[1:]:
        same = bool(((o1 == o2) | (torch.isnan(o1) & torch.isnan(o2))).all()) and bool(
            ((l1 == l2) | (torch.isnan(l1) & torch.isnan(l2))).all())
        print(f"RAW {'SAME' if same else 'DIFF'} {tag} cs2{sd} (cs1 nan={int(torch.isnan(o1).sum())})",
              flush=True)


def bench(kb, vb, causal, seqlen=8192, variants=(("pw2", 1, "kv"), ("cs2", 2, "kv"),
                                                  ("cs2k", 2, "k"), ("cs2v", 2, "v"))):
    from flash_attn.cute.interface import flash_attn_func
    hq, hkv, d = 32, 8, 128
    gen = torch.Generator().manual_seed(kb * 10 + vb)
    codec, kc, vc, kn, vn, bt, seqused = PP.build_cache([seqlen], hkv, d, kb, vb, 128, gen)
    q = torch.randn(seqlen, hq, d, device="cuda", dtype=torch.bfloat16)
    cuq = PP.cu([seqlen])
    scale = 1.0 / math.sqrt(d)
    k16, v16 = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook, codec.v_codebook,
                                    codec.k_signs, codec.v_signs, False, seqlen, torch.bfloat16)
    qb = q.view(1, seqlen, hq, d)
    fa4 = lambda: flash_attn_func(qb, k16.view(1, seqlen, hkv, d), v16.view(1, seqlen, hkv, d),  # noqa
                                  softmax_scale=scale, causal=causal)
    args = (q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook,
            codec.k_signs, codec.v_signs, seqlen, scale, causal, -1, -1, False, False)
    t_fa4 = PP.bench_fn(fa4)
    flops = 4 * seqlen * seqlen * hq * d / (2 if causal else 1)
    out = [f"FA4 {t_fa4:.3f}ms ({flops / t_fa4 / 1e9:.0f}TF/s)"]
    for name, cs, sd in variants:
        pw = 1 if name == "pw1" else 2
        fn = lambda: P.prefill_cuda(*args, producer_wgs=pw, cluster_share=cs, cluster_sides=sd)  # noqa
        fn()
        torch.cuda.synchronize()
        t = PP.bench_fn(fn)
        out.append(f"{name} {t:.3f}ms {t_fa4 / t:.3f}x")
    print(f"BENCH K{kb}V{vb} S{seqlen // 1024}K {'causal' if causal else 'full'}: " + " | ".join(out),
          flush=True)


def main():
    print(torch.cuda.get_device_name(), flush=True)
    raw_compare("K4V4 full bs128 g4", [1, 17, 300], [40, 17, 1000], 8, 2, 4, 4, 128, False, 1, ("kv", "k", "v"))
    raw_compare("K2V2 causal bs16 g4", [1, 17, 300], [40, 17, 1000], 8, 2, 2, 2, 16, True, 3, ("k", "v"))
    raw_compare("K8V8 full bs128 g4", [1, 17, 300], [40, 17, 1000], 8, 2, 8, 8, 128, False, 4, ("k", "v"))
    raw_compare("K4V8 causal bs16 g4", [1, 17, 300], [40, 17, 1000], 8, 2, 4, 8, 16, True, 5, ("k", "v"))
    raw_compare("K4V4 g2 bs256 long", [700, 1], [2000, 3], 8, 4, 4, 4, 256, False, 6, ("k", "v"))
    print(f"t={time.time() - T0:.0f}s", flush=True)
    for kb, vb, causal in ((4, 4, False), (4, 4, True), (2, 2, False), (8, 8, False), (4, 8, False),
                           (2, 2, True), (8, 8, True), (4, 2, False), (2, 4, False), (8, 4, False)):
        if time.time() - T0 > 220:
            print("SKIP", kb, vb, causal)
            continue
        try:
            bench(kb, vb, causal)
        except Exception as e:  # noqa: BLE001
            print(f"BENCH ERROR K{kb}V{vb} {causal}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    if time.time() - T0 < 230:
        bench(4, 4, False, seqlen=16384)
    print(f"t={time.time() - T0:.0f}s", flush=True)


def main_8bit():
    """K8V2 / K2V8 (the second device call): every side choice bit-identical, then timing."""
    print(torch.cuda.get_device_name(), flush=True)
    for kb, vb in ((8, 2), (2, 8)):
        for causal, bs in ((False, 128), (True, 16)):
            raw_compare(f"K{kb}V{vb} {'causal' if causal else 'full'} bs{bs} g4", [1, 17, 300],
                        [40, 17, 1000], 8, 2, kb, vb, bs, causal, kb + vb, ("kv", "k", "v"))
    for kb, vb, causal in ((8, 2, False), (2, 8, False), (8, 2, True), (2, 8, True)):
        bench(kb, vb, causal, variants=(("pw1", 1, "kv"), ("pw2", 1, "kv"), ("cs2", 2, "kv"),
                                        ("cs2k", 2, "k"), ("cs2v", 2, "v")))
    print(f"t={time.time() - T0:.0f}s")


if __name__ == "__main__":
    main_8bit() if "--8bit" in sys.argv else main()
