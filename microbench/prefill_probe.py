"""Device check + bench for the Hopper prefill (PrefillSm90), one run = compile + correctness +
timing. Prints one line per result as it goes (so a timeout still leaves results) and a table
at the end; writes the log/CSV under $OUT when set.

    source .devenv/setup.sh && python3 microbench/prefill_probe.py [--quick] 2>&1 | tee $OUT/log.txt

Correctness: fresh random K/V compressed by the reference codec on the GPU into a paged cache
with a shuffled block table (poisoned unused slots, NaN norms), kernel output/LSE buffers
NaN-poisoned, compared with fa4_tq.reference.prefill in float64 over the SAME packed cache:
rel. error <= 1e-2 on out, -inf pattern of LSE identical, finite LSE within 2e-2.
Timing: triton.testing.do_bench median (warm-up excluded), random data, vs FA4-bf16
(flash_attn_func on the dequantized bf16 K/V, same shapes) and vs unfused
"reference dequantize on the GPU + FA4" measured in the same run.
"""

import math
import os
import sys
import time
import traceback

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
os.environ.setdefault("FLASH_ATTENTION_ARCH", "sm_90")

import torch  # noqa: E402

from fa4_tq import reference  # noqa: E402
from fa4_tq.codec import TQCodec  # noqa: E402
from fa4_tq.kernels.prefill import prefill_cuda  # noqa: E402

DEV = "cuda"
OUT_DIR = os.environ.get("OUT")
ROWS = []


def log(*a):
    print(*a, flush=True)


def build_cache(seqlens_k, hkv, d, kb, vb, block_size, gen, dtype=torch.bfloat16):
    """Paged cache on the GPU: shuffled blocks, poisoned pool, reference compress_store."""
    codec = TQCodec(d, kb, vb, seed=int(torch.randint(0, 1000, (1,), generator=gen))).to(DEV)
    nblk = [(n + block_size - 1) // block_size for n in seqlens_k]
    num_blocks = sum(nblk) + 2
    perm = torch.randperm(num_blocks, generator=gen)
    bt = torch.full((len(seqlens_k), max(1, max(nblk))), int(perm[-1]), dtype=torch.int32)
    slots, used = [], 0
    for b, n in enumerate(seqlens_k):
        ids = perm[used:used + nblk[b]]
        used += nblk[b]
        bt[b, :nblk[b]] = ids.to(torch.int32)
        t = torch.arange(n)
        slots.append(ids[t // block_size].to(torch.int64) * block_size + t % block_size)
    slot_mapping = torch.cat(slots).to(DEV)
    total = sum(seqlens_k)
    g = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    key = (torch.randn(total, hkv, d, device=DEV, generator=g) * 0.7 + 0.1).to(dtype)
    value = torch.randn(total, hkv, d, device=DEV, generator=g).to(dtype)
    kc = torch.randint(0, 256, (num_blocks, block_size, hkv, d * kb // 8), dtype=torch.uint8,
                       device=DEV, generator=g)
    vc = torch.randint(0, 256, (num_blocks, block_size, hkv, d * vb // 8), dtype=torch.uint8,
                       device=DEV, generator=g)
    kn = torch.full((num_blocks, block_size, hkv), float("nan"), dtype=torch.bfloat16, device=DEV)
    vn = torch.full_like(kn, float("nan"))
    reference.compress_store(key, value, kc, vc, kn, vn, slot_mapping, codec.k_signs,
                             codec.v_signs, codec.k_codebook, codec.v_codebook)
    return codec, kc, vc, kn, vn, bt.to(DEV), torch.tensor(seqlens_k, dtype=torch.int32,
                                                              device=DEV)


def cu(lens):
    c = torch.zeros(len(lens) + 1, dtype=torch.int32)
    c[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    return c.to(DEV)


def lut_tag(lut):
    return "default" if lut == (None, None) else "".join("r" if x else "s" for x in lut)


def check(name, q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl=-1, wr=-1,
          qdtype=torch.bfloat16, rotate=True, unrotate=True, seed=0, lut=(None, None), pw=None,
          cs=None, extra=None):
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    codec, kc, vc, kn, vn, bt, seqused = build_cache(k_lens, hkv, d, kb, vb, block_size, gen)
    total_q = sum(q_lens)
    q = torch.randn(total_q, hq, d, generator=gen).to(qdtype).to(DEV)
    cuq = cu(q_lens)
    scale = 1.0 / math.sqrt(d) * (0.9 if seed % 2 else 1.0)
    args = (q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook,
            codec.k_signs, codec.v_signs, max(q_lens), scale, causal, wl, wr, rotate, unrotate)
    kout = torch.full((total_q, hq, d), float("nan"), dtype=torch.bfloat16, device=DEV)
    klse = torch.full((hq, total_q), float("nan"), dtype=torch.float32, device=DEV)
    out, lse = prefill_cuda(*args, backend="auto", kernel_out=kout, kernel_lse=klse,
                            register_lut=lut, producer_wgs=pw, cluster_share=cs,
                            **(extra or {}))
    torch.cuda.synchronize()
    ref_o, ref_l = reference.prefill(*args, compute_dtype=torch.float64)
    o, r = out.double(), ref_o.double()
    err = float("inf") if not bool(torch.isfinite(o).all()) else float((o - r).norm() / r.norm().clamp_min(1e-30))
    ninf_ok = bool(torch.equal(torch.isneginf(lse), torch.isneginf(ref_l)))
    fin = torch.isfinite(ref_l)
    lse_nan = bool(torch.isnan(lse).any())
    lse_err = float((lse[fin] - ref_l[fin]).abs().max()) if bool(fin.any()) else 0.0
    ok = err <= 1e-2 and ninf_ok and not lse_nan and lse_err <= 2e-2
    name = f"{name} lut={lut_tag(lut)}" + (f" pw={pw}" if pw else "") + (
        f" cs={cs}" if cs is not None else "") + extra_tag(extra)
    log(f"CHECK {'PASS' if ok else 'FAIL'} {name}: rel_err={err:.2e} lse_err={lse_err:.2e} "
        f"ninf_ok={ninf_ok} lse_nan={lse_nan} ({time.time() - t0:.1f}s)")
    ROWS.append(("check", name, "PASS" if ok else "FAIL", f"{err:.3e}", f"{lse_err:.3e}"))
    return ok


def extra_tag(extra):
    """Name suffix for the extra prefill_cuda knobs (direct_loads, num_stages, ...)."""
    return "".join(f" {k}={v}" for k, v in sorted((extra or {}).items()))


def bench_fn(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench(kb, vb, seqlen, causal, batch=1, hq=32, hkv=8, d=128, block_size=128,
          luts=((None, None),), baselines=True, pws=(None,), variants=None):
    """Time the kernel for each (K, V) register-LUT choice in ``luts`` (None = default) and
    each producer-warpgroup count in ``pws`` (None = default) on the same data, or for each
    (lut, producer_wgs, cluster_share) in ``variants`` when given; FA4-bf16 / unfused /
    +rotations once (default decode) when ``baselines``."""
    from flash_attn.cute.interface import flash_attn_func
    gen = torch.Generator().manual_seed(kb * 10 + vb)
    lens = [seqlen] * batch
    codec, kc, vc, kn, vn, bt, seqused = build_cache(lens, hkv, d, kb, vb, block_size, gen)
    q = torch.randn(batch * seqlen, hq, d, device=DEV, dtype=torch.bfloat16)
    cuq = cu(lens)
    scale = 1.0 / math.sqrt(d)
    # K/V dequantized to bf16 (rotated space) for the FA4 baselines: same values the kernel sees
    k16, v16 = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook, codec.v_codebook,
                                    codec.k_signs, codec.v_signs, False, batch * seqlen,
                                    torch.bfloat16)
    qb = q.view(batch, seqlen, hq, d)
    kb4, vb4 = k16.view(batch, seqlen, hkv, d), v16.view(batch, seqlen, hkv, d)
    ours_lut = lambda lut, pw, cs=None, extra=None: (lambda: prefill_cuda(  # noqa
        q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook, codec.k_signs,
        codec.v_signs, seqlen, scale, causal, -1, -1, False, False, register_lut=lut,
        producer_wgs=pw, cluster_share=cs, **(extra or {})))
    ours_rot = lambda: prefill_cuda(q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook,  # noqa
                                    codec.v_codebook, codec.k_signs, codec.v_signs, seqlen,
                                    scale, causal, -1, -1, True, True)
    fa4 = lambda: flash_attn_func(qb, kb4, vb4, softmax_scale=scale, causal=causal)  # noqa

    def unfused():
        k, v = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook, codec.v_codebook,
                                    codec.k_signs, codec.v_signs, False, batch * seqlen,
                                    torch.bfloat16)
        return flash_attn_func(qb, k.view(batch, seqlen, hkv, d), v.view(batch, seqlen, hkv, d),
                               softmax_scale=scale, causal=causal)

    o2 = fa4()
    o2 = (o2[0] if isinstance(o2, tuple) else o2).double()
    t_fa4 = bench_fn(fa4)
    t_rot = bench_fn(ours_rot) if baselines else float("nan")
    t_unf = bench_fn(unfused) if baselines else float("nan")
    flops = 4 * batch * seqlen * seqlen * hq * d / (2 if causal else 1)
    tf = lambda t: flops / t / 1e9  # noqa  (ms -> TFLOP/s)
    if variants is None:
        variants = [(lut, pw, None) for lut in luts for pw in pws]
    for variant in variants:
        lut, pw, cs = variant[:3]
        extra = variant[3] if len(variant) > 3 else None
        ours = ours_lut(lut, pw, cs, extra)
        # agreement with FA4 on the same (dequantized) data, as a sanity check of the timing
        o1 = ours()[0].view(batch, seqlen, hq, d).double()
        agree = float((o1 - o2).norm() / o2.norm())
        t_ours = bench_fn(ours)
        name = (f"K{kb}V{vb} B{batch} S{seqlen} {'causal' if causal else 'full'} bs{block_size} "
                f"lut={lut_tag(lut)}" + (f" pw={pw}" if pw else "")
                + (f" cs={cs}" if cs is not None else "") + extra_tag(extra))
        log(f"BENCH {name}: ours {t_ours:.3f} ms ({tf(t_ours):.0f} TF/s), +rotations "
            f"{t_rot:.3f} ms, FA4-bf16 {t_fa4:.3f} ms ({tf(t_fa4):.0f} TF/s), unfused "
            f"{t_unf:.3f} ms | ours/FA4 speed {t_fa4 / t_ours:.3f}x, vs unfused "
            f"{t_unf / t_ours:.2f}x, agree_vs_fa4={agree:.1e}")
        ROWS.append(("bench", name, f"{t_ours:.3f}", f"{t_fa4:.3f}", f"{t_unf:.3f}",
                     f"{t_fa4 / t_ours:.3f}", f"{tf(t_ours):.0f}", f"{tf(t_fa4):.0f}",
                     f"{t_rot:.3f}"))


def guarded(fn, *a, **k):
    import faulthandler
    log(f"START {fn.__name__}{a[:3]}")
    # a hung kernel blocks inside a CUDA call: dump where and exit so the log says so
    faulthandler.dump_traceback_later(100, exit=True)
    try:
        return fn(*a, **k)
    except Exception as e:  # keep going: one failure must not hide the rest of the matrix
        log(f"ERROR {fn.__name__}{a}: {type(e).__name__}: {e}")
        traceback.print_exc()
        ROWS.append(("error", f"{fn.__name__}{a}", type(e).__name__, str(e)[:200]))
    finally:
        faulthandler.cancel_dump_traceback_later()


def summary(t_start: float, csv_name: str) -> None:
    """Print every row collected in ROWS; also write them to $OUT/<csv_name> when $OUT is set."""
    log(f"total {time.time() - t_start:.0f}s")
    log("\n=== summary ===")
    for r in ROWS:
        log(" | ".join(str(x) for x in r))
    if OUT_DIR:
        with open(os.path.join(OUT_DIR, csv_name), "w") as f:
            for r in ROWS:
                f.write(",".join(str(x).replace(",", ";") for x in r) + "\n")


def main():
    quick = "--quick" in sys.argv
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    ql, kl = [1, 17, 300], [40, 17, 1000]  # seqlen_k != seqlen_q, odd lengths, len-1 query
    RR, SS, RS, SR = (True, True), (False, False), (True, False), (False, True)
    # 1. smoke (both decode paths) + the headline timing first (a timeout must still leave
    #    the key numbers): register LUT vs shared-memory LUT vs mixed, same data, same run
    guarded(check, "K4V4 d128 g4 full bs16", ql, kl, 8, 2, 128, 4, 4, 16, False)
    guarded(check, "K2V2 d128 g4 causal bs128", ql, kl, 8, 2, 128, 2, 2, 128, True, seed=1)
    guarded(bench, 4, 4, 8192, False, luts=(RR, SS, RS, SR))
    guarded(bench, 4, 4, 8192, True, luts=(RR, SS), baselines=False)
    guarded(bench, 2, 2, 8192, False, luts=(RR, SS, RS), baselines=False)
    # 2. correctness: all nine configs at D=128 (GQA 4), causal and not, bs 16/128 (default
    #    decode), plus the shared-memory-LUT path for the 2/4-bit sides
    for i, (kb, vb) in enumerate([(2, 4), (2, 8), (4, 2), (4, 8), (8, 2), (8, 4), (8, 8)]):
        causal = kb == vb
        bs = 16 if i % 2 else 128
        guarded(check, f"K{kb}V{vb} d128 g4 {'causal' if causal else 'full'} bs{bs}", ql, kl, 8,
                2, 128, kb, vb, bs, causal, seed=i + 2)
    guarded(check, "K4V4 d128 g4 full bs16", ql, kl, 8, 2, 128, 4, 4, 16, False, seed=20,
            lut=SS)
    guarded(check, "K4V2 d128 g4 causal bs128", ql, kl, 8, 2, 128, 4, 2, 128, True, seed=21,
            lut=SR)
    guarded(check, "K4V4 d128 g4 causal bs128 (sq>sk rows see nothing)", [1, 17, 300],
            [1, 9, 1000], 8, 2, 128, 4, 4, 128, True, seed=11)
    guarded(check, "K4V4 d128 g4 window(64,0) bs16", ql, kl, 8, 2, 128, 4, 4, 16, True, 64, -1,
            seed=12)
    guarded(check, "K4V4 d128 g4 window(32,16) bs48", ql, kl, 8, 2, 128, 4, 4, 48, False, 32, 16,
            seed=13)
    guarded(check, "K4V4 d64 g4 causal bs16", ql, kl, 8, 2, 64, 4, 4, 16, True, seed=14)
    guarded(check, "K2V8 d64 g4 full bs32 fp16-q no-rotation", ql, kl, 8, 2, 64, 2, 8, 32, False,
            qdtype=torch.float16, rotate=False, unrotate=False, seed=15)
    guarded(check, "K4V4 d128 MHA(g1) full bs256 long", [700, 1], [2000, 3], 4, 4, 128, 4, 4,
            256, False, seed=16)
    guarded(bench, 4, 2, 8192, False, luts=(RR, SS))
    guarded(bench, 8, 8, 8192, False)
    guarded(bench, 4, 8, 8192, False, luts=(RR, SS))
    if not quick:
        guarded(bench, 2, 2, 8192, True, baselines=False)
        guarded(bench, 4, 4, 16384, False, baselines=False)
    summary(t_start, "prefill_probe.csv")



def main_producer_wgs(budget_s=200.0):
    """Step 4 (docs/prefill-sm90-notes.md): producer_wgs=2 (one K and one V producer
    warpgroup) vs 1 vs FA4-bf16. Correctness of the 2-WG kernel first per config (varlen odd
    lengths, causal and full, bs 16 and 128; the default decode per bit widths), then the
    timing of the same configs (so every timed build was checked), headline first. Stages
    past ``budget_s`` are skipped (logged), so the device call ends inside its limit."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    plan = [  # (kb, vb, checks: (causal, block_size)...)
        (4, 4, ((False, 16), (True, 128))),
        (2, 2, ((True, 16), (False, 128))),
        (8, 8, ((False, 128), (True, 16))),
        (4, 8, ((True, 16), (False, 128))),
    ]
    for j, (kb, vb, checks) in enumerate(plan):
        for causal, bs in checks:
            if time.time() - t_start > budget_s:
                log(f"SKIP check K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(check, f"K{kb}V{vb} d128 g4 {'causal' if causal else 'full'} bs{bs}", ql,
                    kl, 8, 2, 128, kb, vb, bs, causal, seed=40 + 3 * j + int(causal), pw=2)
        for causal in (False, True):
            if time.time() - t_start > budget_s:
                log(f"SKIP bench K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(bench, kb, vb, 8192, causal, baselines=False, pws=(1, 2))
    # With twice the producer warps to hide latency, the register LUT (more ALU work, no
    # lookups; step 2: slower with one producer WG) may now win for K4V4: check, then time.
    if time.time() - t_start <= budget_s:
        guarded(check, "K4V4 d128 g4 causal bs16", ql, kl, 8, 2, 128, 4, 4, 16, True, seed=60,
                lut=(True, True), pw=2)
        guarded(bench, 4, 4, 8192, False, luts=((True, True),), baselines=False, pws=(2,))
    summary(t_start, "prefill_pw_probe.csv")


def main_cluster_share(budget_s=95.0):
    """Step 5 (docs/prefill-sm90-notes.md): cluster_share=2 (2-CTA clusters, query heads 2j,
    2j+1 share every decoded K/V tile through DSMEM) vs the shipped default (producer_wgs=2,
    cluster_share=1) vs the step-3 baseline (producer_wgs=1) vs FA4-bf16, same data, same
    bench call. Every timed cluster build is first checked against the float64 reference
    (NaN-poisoned output/LSE; varlen odd lengths, several m_blocks, paged). Headline first;
    stages past ``budget_s`` are skipped (logged) so the call ends inside its limit."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    d = (None, None)
    variants = ((d, 1, 1), (d, 2, 1), (d, 2, 2))  # baseline, default, cluster pair
    plan = [  # (kb, vb, checks: (causal, block_size)..., bench masks)
        (4, 4, ((False, 16), (True, 128)), (False, True)),
        (2, 2, ((True, 16),), (False,)),
        (8, 8, ((False, 128),), (False,)),
        (4, 8, ((True, 16),), (False,)),
    ]
    for j, (kb, vb, checks, masks) in enumerate(plan):
        for causal, bs in checks:
            if time.time() - t_start > budget_s:
                log(f"SKIP check K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(check, f"K{kb}V{vb} d128 g4 {'causal' if causal else 'full'} bs{bs}", ql,
                    kl, 8, 2, 128, kb, vb, bs, causal, seed=80 + 3 * j + int(causal), pw=2,
                    cs=2)
        for causal in masks:
            if time.time() - t_start > budget_s:
                log(f"SKIP bench K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(bench, kb, vb, 8192, causal, baselines=False, variants=variants)
        if j == 0 and time.time() - t_start <= budget_s:  # GQA 2, long, rows seeing no key
            guarded(check, "K4V4 d128 g2 full bs256 long", [700, 1], [2000, 3], 8, 4, 128, 4,
                    4, 256, False, seed=95, pw=2, cs=2)
            guarded(check, "K2V2 d128 g2 causal bs128 (sq>sk)", [1, 17, 300], [1, 9, 1000], 4,
                    2, 128, 2, 2, 128, True, seed=96, pw=2, cs=2)
    summary(t_start, "prefill_cs_probe.csv")


def main_defaults(budget_s=150.0):
    """Session 3: the shipped defaults against their alternatives on the same data (B=1 S=8K
    Hq=32 Hkv=8 D=128 bs128, kernel alone, vs FA4-bf16): producer_wgs 1 vs 2 for K4V2/K2V4
    (newly defaulted to 2), cluster_share 1 vs the default for the pairs that now ship it
    (K8V8/K4V8 "kv", K8V4 "k"), both masks. Each cluster default is first checked against the
    float64 reference (NaN-poisoned output/LSE, varlen odd lengths)."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    d = (None, None)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    for kb, vb in ((8, 4), (4, 8)):
        guarded(check, f"K{kb}V{vb} d128 g4 causal bs16 default", ql, kl, 8, 2, 128, kb, vb, 16,
                True, seed=100 + kb + vb)
    plan = [(4, 2, False, ((d, 1, None), (d, 2, None))),
            (2, 4, False, ((d, 1, None), (d, 2, None))),
            (4, 8, True, ((d, 2, 1), (d, None, None))),
            (8, 4, True, ((d, 2, 1), (d, None, None))),
            (8, 4, False, ((d, 2, 1), (d, None, None))),
            (8, 8, True, ((d, 2, 1), (d, None, None))),
            (4, 4, False, ((d, None, None),))]
    for kb, vb, causal, variants in plan:
        if time.time() - t_start > budget_s:
            log(f"SKIP bench K{kb}V{vb} causal={causal} (budget)")
            continue
        guarded(bench, kb, vb, 8192, causal, baselines=False, variants=variants)
    summary(t_start, "prefill_defaults_probe.csv")


def main_direct(budget_s=150.0):
    """Step 7 (docs/prefill-sm90-notes.md): the staging-free producer (direct_loads: code rows
    loaded straight into producer registers one block ahead, no cp.async staging ring) with 2
    or 3 K/V stages vs the shipped default vs FA4-bf16, same data, same bench call. Every timed
    build is first checked against the float64 reference (NaN-poisoned output/LSE; varlen odd
    lengths, paged). Headline first; stages past ``budget_s`` are skipped (logged)."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    d, rr = (None, None), (True, True)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    dl3 = dict(direct_loads=True, num_stages=3)
    dl2 = dict(direct_loads=True, num_stages=2)
    r56 = dict(register_split=(200, 56))
    plan = [  # (kb, vb, lut, extra of the checked builds, (causal, bs) checks, bench variants)
        (4, 4, rr, {**dl3, **r56}, ((False, 16), (True, 128)),
         [(False, ((d, None, None), (rr, None, None), (rr, 2, 1, {**dl2, **r56}),
                   (rr, 2, 1, {**dl3, **r56}))),
          (True, ((d, None, None), (rr, 2, 1, {**dl3, **r56})))]),
        (2, 2, d, dl3, ((True, 16), (False, 128)),
         [(False, ((d, None, None), (d, 2, 1, dl2), (d, 2, 1, dl3))),
          (True, ((d, None, None), (d, 2, 1, dl3)))]),
        (4, 2, d, {**dl3, **r56}, ((False, 128),),
         [(False, ((d, None, None), (d, 2, 1, {**dl3, **r56})))]),
        (2, 4, d, {**dl3, **r56}, ((True, 16),),
         [(False, ((d, None, None), (d, 2, 1, {**dl3, **r56})))]),
    ]
    for j, (kb, vb, lut, extra, checks, benches) in enumerate(plan):
        for causal, bs in checks:
            if time.time() - t_start > budget_s:
                log(f"SKIP check K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(check, f"K{kb}V{vb} d128 g4 {'causal' if causal else 'full'} bs{bs}", ql,
                    kl, 8, 2, 128, kb, vb, bs, causal, seed=120 + 3 * j + int(causal), lut=lut,
                    pw=2, cs=1, extra=extra)
        if j == 0 and time.time() - t_start <= budget_s:
            guarded(check, "K4V4 d128 g4 causal bs128 (sq>sk rows see nothing)", [1, 17, 300],
                    [1, 9, 1000], 8, 2, 128, 4, 4, 128, True, seed=131, lut=lut, pw=2, cs=1,
                    extra=extra)
            guarded(check, "K4V4 d128 MHA(g1) full bs256 long", [700, 1], [2000, 3], 4, 4, 128,
                    4, 4, 256, False, seed=132, lut=lut, pw=2, cs=1, extra=extra)
        for causal, variants in benches:
            if time.time() - t_start > budget_s:
                log(f"SKIP bench K{kb}V{vb} causal={causal} (budget)")
                continue
            guarded(bench, kb, vb, 8192, causal, baselines=False, variants=variants)
    if time.time() - t_start <= budget_s:
        guarded(bench, 4, 4, 16384, False, baselines=False,
                variants=((d, None, None), (rr, 2, 1, {**dl3, **r56})))
    summary(t_start, "prefill_direct_probe.csv")


def bench_chunk(kb, vb, q_len, k_len, batch, hq=32, hkv=8, d=128, block_size=16,
                variants=({"pack_gqa": False}, {"pack_gqa": True})):
    """Chunked-prefill shape (each sequence: q_len new queries over k_len cached keys, causal
    bottom-right): the kernel with each knob set in ``variants`` on the same data."""
    gen = torch.Generator().manual_seed(kb * 10 + vb + q_len)
    codec, kc, vc, kn, vn, bt, seqused = build_cache([k_len] * batch, hkv, d, kb, vb,
                                                     block_size, gen)
    q = torch.randn(batch * q_len, hq, d, device=DEV, dtype=torch.bfloat16)
    cuq = cu([q_len] * batch)
    times = []
    for extra in variants:
        fn = lambda: prefill_cuda(q, kc, vc, kn, vn, cuq, bt, seqused,  # noqa: E731
                                  codec.k_codebook, codec.v_codebook, codec.k_signs,
                                  codec.v_signs, q_len, 1.0 / math.sqrt(d), True, -1, -1,
                                  False, False, **extra)
        fn()
        times.append(bench_fn(fn))
    name = f"K{kb}V{vb} B{batch} q{q_len} k{k_len} causal bs{block_size}"
    log(f"BENCH {name}: " + ", ".join(f"{extra_tag(e) or 'default'} {t * 1e3:.1f} us"
                                      for e, t in zip(variants, times))
        + f" | speed-up {times[0] / times[-1]:.2f}x")
    ROWS.append(("bench", name) + tuple(f"{t:.4f}" for t in times))


def main_pack_gqa(budget_s=120.0):
    """pack_gqa (FA4's PackGQA tile over the compressed cache): correctness first (short and
    long chunks, GQA 4/8, MQA, causal/full/window, paged), then chunked-prefill timings with
    and without packing on the same data."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    pg = {"pack_gqa": True}
    ql, kl = [1, 3, 17, 300], [40, 2, 17, 1000]
    for name, args in (("K4V4 g4 full bs16", (8, 2, 128, 4, 4, 16, False)),
                       ("K2V2 g8 causal bs16", (16, 2, 128, 2, 2, 16, True)),
                       ("K8V8 g4 causal bs128", (8, 2, 128, 8, 8, 128, True)),
                       ("K4V4 g8 MQA window(64,0) bs16", (8, 1, 128, 4, 4, 16, True, 64, -1))):
        guarded(check, name + " pack_gqa", ql, kl, *args, seed=140 + len(name), extra=pg)
    for kb, vb, q_len, k_len, batch in ((4, 4, 16, 8192, 16), (4, 4, 64, 8192, 16),
                                        (2, 2, 16, 32768, 4), (8, 8, 32, 8192, 16),
                                        (4, 4, 512, 8192, 4)):
        if time.time() - t_start > budget_s:
            log(f"SKIP bench K{kb}V{vb} q{q_len} (budget)")
            continue
        guarded(bench_chunk, kb, vb, q_len, k_len, batch)
    summary(t_start, "prefill_pack_gqa_probe.csv")


def main_replicas(budget_s=165.0):
    """Step 10 (docs/prefill-sm90-notes.md): conflict-free shared-memory byte tables. The
    shipped K4V4 (ss) tables have 16 replicas, so lanes l and l + 16 share a bank and a 4-bit
    lookup is a 2-way conflict whenever their bytes differ (ncu: ~1 extra wavefront per
    lookup, 512 per n_block). 32 replicas make every lookup one wavefront; they need 16 KB
    more per side, paid with one staging slot (x32-16s1 / x16-32s1: one side conflict-free)
    or the staging-free producer (dl x32-32: both; pl: both, PRMT-addressed, one instruction
    per lookup fewer, also for 2-bit sides). Headline first (K4V4 full, then K2V2 full), each
    timed build checked against the float64 reference before it is timed; the rest while
    ``budget_s`` lasts (later steps are logged as skipped)."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.__version__)
    d, ss = (None, None), (False, False)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    x3216 = dict(lut_replicas=(32, 16))
    x1632 = dict(lut_replicas=(16, 32))
    # (the causal build spills 40 B at the (200, 56) split; 0 at (192, 64), full and causal)
    dl32 = dict(lut_replicas=(32, 32), direct_loads=True, num_stages=2,
                register_split=(192, 64))
    v32 = dict(lut_replicas=(1, 32))  # K4V8: register K, conflict-free 8-bit V
    pl = dict(prmt_lut=True, direct_loads=True, num_stages=2, register_split=(200, 56))
    pl2 = dict(prmt_lut=True, direct_loads=True, num_stages=2)  # 2-bit sides: (208, 48)
    dl2 = dict(direct_loads=True, num_stages=2)
    steps = [
        (check, ("K4V4 d128 g4 full bs16 pl", ql, kl, 8, 2, 128, 4, 4, 16, False),
         dict(seed=155, lut=ss, extra=pl)),
        (check, ("K4V4 d128 g4 full bs16 dl32", ql, kl, 8, 2, 128, 4, 4, 16, False),
         dict(seed=152, extra=dl32)),
        (bench, (4, 4, 8192, False), dict(baselines=False, variants=(
            (d, None, None), (ss, None, None, pl), (d, None, None, dl32),
            (d, None, None, x3216)))),
        (check, ("K2V2 d128 g4 full bs16 pl", ql, kl, 8, 2, 128, 2, 2, 16, False),
         dict(seed=157, lut=ss, extra=pl2)),
        (bench, (2, 2, 8192, False), dict(baselines=False, variants=(
            (d, None, None), (ss, None, None, pl2), (d, 2, 1, dl2)))),
        (check, ("K4V4 d128 g4 causal bs128 pl", ql, kl, 8, 2, 128, 4, 4, 128, True),
         dict(seed=156, lut=ss, extra=pl)),
        (bench, (4, 4, 8192, True), dict(baselines=False, variants=(
            (d, None, None), (ss, None, None, pl), (d, None, None, x3216)))),
        (check, ("K4V2 d128 g4 full bs128 pl", ql, kl, 8, 2, 128, 4, 2, 128, False),
         dict(seed=158, lut=ss, extra=pl2)),
        (bench, (4, 2, 8192, False), dict(baselines=False, variants=(
            (d, None, None), (ss, None, None, pl2)))),
        (check, ("K4V4 d128 g4 full bs16 x32-16", ql, kl, 8, 2, 128, 4, 4, 16, False),
         dict(seed=150, extra=x3216)),
        (check, ("K4V4 d128 g4 causal bs128 x16-32", ql, kl, 8, 2, 128, 4, 4, 128, True),
         dict(seed=151, extra=x1632)),
        (check, ("K4V8 d128 g4 causal bs16 x1-32", ql, kl, 8, 2, 128, 4, 8, 16, True),
         dict(seed=154, extra=v32)),
        (bench, (4, 8, 8192, False), dict(baselines=False, variants=(
            (d, None, None), (d, None, None, v32)))),
        # chunked prefill: 16 queries x GQA 4 per sequence over 8K cached keys (packed tile)
        (check, ("K4V4 d128 g4 causal bs16 pack_gqa pl", [1, 3, 17], [40, 2, 1000], 8, 2, 128,
                 4, 4, 16, True), dict(seed=159, lut=ss, extra=dict(pl, pack_gqa=True))),
        (bench_chunk, (4, 4, 16, 8192, 16), dict(variants=(
            {"pack_gqa": True}, dict(pl, pack_gqa=True, register_lut=ss)))),
    ]
    for fn, args, kw in steps:
        if time.time() - t_start > budget_s:
            log(f"SKIP {fn.__name__}{args[:4]} (budget)")
            continue
        guarded(fn, *args, **kw)
    summary(t_start, "prefill_replicas_probe.csv")


if __name__ == "__main__":
    if "--replicas" in sys.argv:
        main_replicas()
        sys.exit(0)
    if "--pack-gqa" in sys.argv:
        main_pack_gqa()
        sys.exit(0)
    if "--direct" in sys.argv:
        main_direct()
        sys.exit(0)
    if "--defaults" in sys.argv:
        main_defaults()
        sys.exit(0)
    if "--producer-wgs" in sys.argv:
        main_producer_wgs()
    elif "--cluster-share" in sys.argv:
        main_cluster_share()
    else:
        main()
