"""Device check + bench for the portable prefill (PrefillSm80, backend='sm80'), one run =
compile + correctness + timing. Written without GPU access; nothing here has run yet.

    source .devenv/setup.sh && python3 microbench/prefill_sm80_probe.py [--quick] 2>&1 | tee $OUT/log.txt

Sets FA4TQ_UNVALIDATED_SM80=1 itself (the backend is opt-in until this probe and
tests/gpu/test_prefill_sm80.py pass). Does not force CUTE_DSL_ARCH: CuTeDSL targets the GPU
it finds (sm_90a on an H100, sm_80 on an A100), which is the point of a portable kernel.

Correctness: fresh random K/V compressed by the reference codec into a paged cache with a
shuffled block table (poisoned pool: random code bytes, NaN norms), kernel output/LSE buffers
NaN-poisoned, compared with fa4_tq.reference.prefill in float64 over the SAME packed cache:
rel. error <= 1e-2 on out, -inf pattern of LSE identical, finite LSE within 2e-2.
Timing (B=1, S=8192, Hq=32, Hkv=8, D=128; triton.testing.do_bench median, warm-up excluded,
random data): ours (kernel only: rotations off) vs FA4's own forced-sm_80 class
(``FlashAttentionForwardSm120``: FA4's Sm80 forward with ``self.arch = sm_80``) on the bf16
K/V the cache decodes to, at our tile (64x64) and at FA4's Sm80 default (128x64), and vs
FA4's default path for this GPU (``flash_attn_func``: Sm90 on an H100), all in the same run.
Each timed row also reports agreement of our output with FA4-sm80's on the same data.
"""

import contextlib
import functools
import math
import os
import sys
import time
import traceback

os.environ["FA4TQ_UNVALIDATED_SM80"] = "1"

import torch  # noqa: E402

from fa4_tq import reference  # noqa: E402
from fa4_tq.kernels.prefill import prefill_cuda  # noqa: E402
from fa4_tq.testing import cu_seqlens, random_paged_batch, rel_error  # noqa: E402

DEV = "cuda"
OUT_DIR = os.environ.get("OUT")
ROWS = []
BITS = [(kb, vb) for kb in (2, 4, 8) for vb in (2, 4, 8)]


def log(*a):
    print(*a, flush=True)


@contextlib.contextmanager
def sm80_config(staged: bool = True, tile_m=None):
    """Select PrefillSm80Config.stage_codes / tile_m for the dispatcher (defaults: True, and
    make_config's tile_m per head_dim). Both are part of the config (compile-cache key)."""
    from fa4_tq.kernels import prefill_sm80 as P
    orig = P.make_config
    kw = dict(stage_codes=staged) if tile_m is None else dict(stage_codes=staged, tile_m=tile_m)
    P.make_config = functools.partial(orig, **kw)
    try:
        yield
    finally:
        P.make_config = orig


def check(name, q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl=-1, wr=-1,
          qdtype=torch.bfloat16, rotate=True, unrotate=True, seed=0, lut=(None, None),
          staged=True, tile_m=None):
    with sm80_config(staged, tile_m):
        name += ("" if staged else " direct-load") + ("" if tile_m is None else f" tile_m{tile_m}")
        return _check(name, q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl, wr,
                      qdtype, rotate, unrotate, seed, lut)


def _check(name, q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl, wr, qdtype,
           rotate, unrotate, seed, lut):
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    pb = random_paged_batch(k_lens, hkv, d, kb, vb, block_size, device=DEV, generator=g)
    c = pb.cache
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(qdtype).to(DEV)
    args = (q, *c.tensors(), cu_seqlens(q_lens, DEV), pb.block_table, pb.seqused_k,
            c.codec.k_codebook, c.codec.v_codebook, c.codec.k_signs, c.codec.v_signs,
            max(q_lens), 0.9 / math.sqrt(d), causal, wl, wr, rotate, unrotate)
    kout = torch.full((q.shape[0], hq, d), float("nan"), dtype=torch.bfloat16, device=DEV)
    klse = torch.full((hq, q.shape[0]), float("nan"), dtype=torch.float32, device=DEV)
    pl = lut == "pl"  # the PRMT-addressed shared-memory tables (prmt_lut)
    out, lse = prefill_cuda(*args, backend="sm80", kernel_out=kout, kernel_lse=klse,
                            register_lut=(False, False) if pl else lut, prmt_lut=pl or None)
    torch.cuda.synchronize()
    ref_o, ref_l = reference.prefill(*args, compute_dtype=torch.float64)
    err = rel_error(out, ref_o)
    ninf_ok = bool(torch.equal(torch.isneginf(lse), torch.isneginf(ref_l)))
    fin = torch.isfinite(ref_l)
    lse_nan = bool(torch.isnan(lse).any())
    lse_err = float((lse[fin] - ref_l[fin]).abs().max()) if bool(fin.any()) else 0.0
    ok = err <= 1e-2 and ninf_ok and not lse_nan and lse_err <= 2e-2
    tag = ("pl" if pl else "default" if lut == (None, None)
           else "".join("r" if x else "s" for x in lut))
    name = f"{name} lut={tag}"
    log(f"CHECK {'PASS' if ok else 'FAIL'} {name}: rel_err={err:.2e} lse_err={lse_err:.2e} "
        f"ninf_ok={ninf_ok} lse_nan={lse_nan} ({time.time() - t0:.1f}s)")
    ROWS.append(("check", name, "PASS" if ok else "FAIL", f"{err:.3e}", f"{lse_err:.3e}"))
    return ok


# --------------------------------------------------------------------------- FA4 baselines
_fa4_sm80_cache = {}


def fa4_sm80(q, k, v, scale, causal, tile_m, tile_n):
    """FA4's Sm80 forward forced to the sm_80 code path (FA4's FlashAttentionForwardSm120
    class), dense bf16 (B, S, H, D), compiled exactly like interface.py's non-paged call."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute.cute_dsl_utils import to_cute_tensor
    from flash_attn.cute.flash_fwd_sm120 import FlashAttentionForwardSm120
    from flash_attn.cute.utils import AuxData
    b, s, hq, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(b, hq, s, dtype=torch.float32, device=q.device)
    key = (d, hq // k.shape[2], causal, tile_m, tile_n)
    fn = _fa4_sm80_cache.get(key)
    if fn is None:
        kern = FlashAttentionForwardSm120(
            cutlass.BFloat16, d, d, hq // k.shape[2], is_causal=causal, is_local=False,
            pack_gqa=False, tile_m=tile_m, tile_n=tile_n, num_stages=1, num_threads=128,
            Q_in_regs=False)
        stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
        fn = _fa4_sm80_cache[key] = cute.compile(
            kern, *(to_cute_tensor(t) for t in (q, k, v, o)), to_cute_tensor(lse, assumed_align=4),
            scale, None, None, None, None, None, None, None, None, None, AuxData(None, None),
            None, None, stream, options="--enable-tvm-ffi")
    run = lambda: fn(q, k, v, o, lse, scale, None, None, None, None, None, None, None, None,  # noqa
                     None, AuxData(None, None), None, None)
    return run, o


def bench_fn(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench(kb, vb, seqlen, causal, batch=1, hq=32, hkv=8, d=128, block_size=128,
          luts=((None, None),), baselines=True, variants=((True, 64),), fa4_default=True):
    """``variants``: (stage_codes, tile_m) pairs to time ((True, 64) = the default); ``luts``:
    register_lut pairs, or "pl" for the PRMT-addressed shared-memory tables (prmt_lut)."""
    from flash_attn.cute.interface import flash_attn_func
    g = torch.Generator(device=DEV).manual_seed(kb * 10 + vb)
    total = batch * seqlen
    nblk = (seqlen + block_size - 1) // block_size
    num_blocks = batch * nblk
    # random codes and random positive norms: timing needs random, finite, never-zero data
    kc = torch.randint(0, 256, (num_blocks, block_size, hkv, d * kb // 8), dtype=torch.uint8,
                       device=DEV, generator=g)
    vc = torch.randint(0, 256, (num_blocks, block_size, hkv, d * vb // 8), dtype=torch.uint8,
                       device=DEV, generator=g)
    kn = (torch.rand(num_blocks, block_size, hkv, device=DEV, generator=g) + 0.5).bfloat16()
    vn = (torch.rand(num_blocks, block_size, hkv, device=DEV, generator=g) + 0.5).bfloat16()
    bt = torch.randperm(num_blocks, device=DEV, generator=g).to(torch.int32).view(batch, nblk)
    seqused = torch.full((batch,), seqlen, dtype=torch.int32, device=DEV)
    from fa4_tq.codec import TQCodec
    codec = TQCodec(d, kb, vb).to(DEV)
    q = torch.randn(total, hq, d, device=DEV, dtype=torch.bfloat16, generator=g)
    cuq = cu_seqlens([seqlen] * batch, DEV)
    scale = 1.0 / math.sqrt(d)
    k16, v16 = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook, codec.v_codebook,
                                    codec.k_signs, codec.v_signs, False, total, torch.bfloat16)
    qb = q.view(batch, seqlen, hq, d)
    kb4, vb4 = k16.view(batch, seqlen, hkv, d).contiguous(), v16.view(batch, seqlen, hkv, d).contiguous()
    flops = 4 * batch * seqlen * seqlen * hq * d / (2 if causal else 1)
    tf = lambda t: flops / t / 1e9  # noqa  (ms -> TFLOP/s)
    base = {}
    ref_o = None
    if baselines:
        for tm, tn in ((64, 64), (128, 64)):
            run, o = fa4_sm80(qb, kb4, vb4, scale, causal, tm, tn)
            run()
            torch.cuda.synchronize()
            if ref_o is None:
                ref_o = o.clone().double()
            base[f"fa4sm80_{tm}x{tn}"] = bench_fn(run)
        if fa4_default:  # FA4's own path for this GPU (Sm90 on an H100); a long compile
            fa4 = lambda: flash_attn_func(qb, kb4, vb4, softmax_scale=scale, causal=causal)  # noqa
            base["fa4_default"] = bench_fn(fa4)
    for lut, (staged, tile_m) in ((lut, v) for lut in luts for v in variants):
        pl = lut == "pl"
        ours = lambda: prefill_cuda(  # noqa
            q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook,
            codec.k_signs, codec.v_signs, seqlen, scale, causal, -1, -1, False, False,
            backend="sm80", register_lut=(False, False) if pl else lut, prmt_lut=pl or None)
        with sm80_config(staged, tile_m):  # compile (first call) and timing, same variant
            o1 = ours()[0].view(batch, seqlen, hq, d).double()
            t = bench_fn(ours)
        agree = float((o1 - ref_o).norm() / ref_o.norm()) if ref_o is not None else float("nan")
        tag = ("pl" if pl else "default" if lut == (None, None)
               else "".join("r" if x else "s" for x in lut))
        name = (f"K{kb}V{vb} B{batch} S{seqlen} {'causal' if causal else 'full'} lut={tag} "
                f"{'cp.async-staged' if staged else 'direct-load'} tile{tile_m}x64")
        rel = " ".join(f"{k} {v:.3f}ms ({tf(v):.0f}TF, our speed vs it {v / t:.3f}x)"
                       for k, v in base.items())
        log(f"BENCH {name}: ours {t:.3f} ms ({tf(t):.0f} TF/s) | {rel} | "
            f"agree_vs_fa4sm80={agree:.1e}")
        ROWS.append(("bench", name, f"{t:.3f}", *(f"{k}={v:.3f}" for k, v in base.items()),
                     f"agree={agree:.1e}"))


def guarded(fn, *a, **k):
    import faulthandler
    log(f"START {fn.__name__}{a[:3]}")
    faulthandler.dump_traceback_later(120, exit=True)  # a hung kernel: say where, then exit
    try:
        return fn(*a, **k)
    except Exception as e:  # keep going: one failure must not hide the rest of the matrix
        log(f"ERROR {fn.__name__}{a}: {type(e).__name__}: {e}")
        traceback.print_exc()
        ROWS.append(("error", f"{fn.__name__}{a}", type(e).__name__, str(e)[:200]))
    finally:
        faulthandler.cancel_dump_traceback_later()


def main_prmt():
    """PRMT-addressed interleaved tables (PrefillSm80Config.prmt_lut, prefill_sm80.PRMT_LUT_
    CANDIDATES) against the shipped register LUT and the 8-replica shared-memory LUT, at the
    default 8-warp tile, same data; checks first (float64 reference)."""
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.cuda.get_device_capability(), torch.__version__)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    W128 = (True, 128)
    for name, args, seed in (("K4V4 d128 g4 full bs16", (8, 2, 128, 4, 4, 16, False), 80),
                             ("K4V8 d128 g4 causal bs128", (8, 2, 128, 4, 8, 128, True), 81)):
        guarded(check, name, ql, kl, *args, seed=seed, lut="pl")
    guarded(bench, 4, 4, 8192, False, luts=((None, None), (False, False), "pl"),
            variants=(W128,), fa4_default=False)
    guarded(bench, 4, 4, 8192, True, luts=((None, None), "pl"), variants=(W128,),
            fa4_default=False)
    guarded(bench, 4, 8, 8192, True, luts=((None, None), "pl"), variants=(W128,),
            fa4_default=False)
    guarded(check, "K2V2 d128 g4 causal bs16", ql, kl, 8, 2, 128, 2, 2, 16, True, seed=82,
            lut="pl")
    guarded(bench, 2, 2, 8192, False, luts=((None, None), "pl"), variants=(W128,),
            fa4_default=False)
    summary(t_start)


def main():
    quick = "--quick" in sys.argv
    t_start = time.time()
    log(torch.cuda.get_device_name(), torch.cuda.get_device_capability(), torch.__version__)
    ql, kl = [1, 17, 300], [40, 17, 1000]
    RR, SS = (True, True), (False, False)
    W64, W128 = (True, 64), (True, 128)  # (cp.async staging, tile_m): 4 / 8 warps
    # 1. smoke (default config, and the 8-warp tile) + headline timing first (a timeout must
    # still leave the key numbers)
    guarded(check, "K4V4 d128 g4 full bs16", ql, kl, 8, 2, 128, 4, 4, 16, False)
    guarded(check, "K4V4 d128 g4 causal bs16", ql, kl, 8, 2, 128, 4, 4, 16, True, seed=3,
            tile_m=128)
    guarded(bench, 4, 4, 8192, False, luts=(RR, SS), variants=(W64, W128),
            fa4_default=not quick)
    # The 17:22 run reported inf for every check after the bench: the first K tile decoded
    # stale shared memory (uncommitted cp.async group), so it depended on what earlier kernels
    # left there. Re-check right after the bench (the first reuses the bench's kernel).
    guarded(check, "K4V4 d128 g4 full bs128 (after bench)", ql, kl, 8, 2, 128, 4, 4, 128,
            False, seed=4)
    guarded(check, "K2V2 d128 g4 causal bs16 (after bench)", ql, kl, 8, 2, 128, 2, 2, 16, True,
            seed=5, tile_m=128)
    guarded(bench, 2, 2, 8192, False, variants=(W64, W128), fa4_default=not quick)
    guarded(bench, 8, 8, 8192, False, variants=(W64, W128), fa4_default=not quick)
    guarded(bench, 4, 4, 8192, True, variants=(W64, W128), fa4_default=not quick)
    if quick:  # the correctness matrix is tests/gpu/test_prefill_sm80.py's job
        return summary(t_start)
    # 2. correctness: all nine configs at D=128 (GQA 4), causal and not, paged
    for i, (kb, vb) in enumerate(BITS):
        for causal in (False, True):
            bs = 16 if (i + causal) % 2 else 128
            guarded(check, f"K{kb}V{vb} d128 g4 {'causal' if causal else 'full'} bs{bs}", ql,
                    kl, 8, 2, 128, kb, vb, bs, causal, seed=2 * i + causal + 2)
    for kb, vb in ((4, 4), (2, 2), (4, 2)):
        guarded(check, f"K{kb}V{vb} d128 g4 causal bs16", ql, kl, 8, 2, 128, kb, vb, 16, True,
                seed=30 + kb + vb, lut=RR)
    guarded(check, "K4V4 d128 g4 causal bs128 (sq>sk rows see nothing)", ql, [1, 9, 1000], 8,
            2, 128, 4, 4, 128, True, seed=11)
    guarded(check, "K4V4 d128 g4 window(64,0) bs16", ql, kl, 8, 2, 128, 4, 4, 16, True, 64, -1,
            seed=12)
    guarded(check, "K4V4 d128 g4 window(32,16) bs48", ql, kl, 8, 2, 128, 4, 4, 48, False, 32, 16,
            seed=13)
    guarded(check, "K4V4 d128 g4 window(0,0) skipped blocks + empty rows", [200, 64], [1000, 30],
            8, 2, 128, 4, 4, 16, False, 0, 0, seed=17)
    for kb, vb in ((4, 4), (2, 8), (8, 2)):
        guarded(check, f"K{kb}V{vb} d64 g4 causal bs16", ql, kl, 8, 2, 64, kb, vb, 16, True,
                seed=14 + kb + vb)
    for kb, vb, d, causal in ((4, 4, 128, False), (2, 2, 64, True), (8, 8, 128, True)):
        guarded(check, f"K{kb}V{vb} d{d} g4 {'causal' if causal else 'full'} bs16", ql, kl, 8,
                2, d, kb, vb, 16, causal, seed=50 + kb + d, staged=False)
    guarded(check, "K2V8 d64 g4 full bs32 fp16-q no-rotation", ql, kl, 8, 2, 64, 2, 8, 32, False,
            qdtype=torch.float16, rotate=False, unrotate=False, seed=15)
    guarded(check, "K4V4 d128 MHA(g1) full bs256 long", [700, 1], [2000, 3], 4, 4, 128, 4, 4,
            256, False, seed=16)
    # 3. timing: all nine configs at S=8K (baselines re-measured per row: same run, same data)
    for kb, vb in BITS:
        if (kb, vb) != (4, 4):
            guarded(bench, kb, vb, 8192, False, variants=(W64, W128))
    guarded(bench, 4, 4, 8192, True)
    summary(t_start)


def summary(t_start):
    log(f"total {time.time() - t_start:.0f}s")
    log("\n=== summary ===")
    for r in ROWS:
        log(" | ".join(str(x) for x in r))
    if OUT_DIR:
        with open(os.path.join(OUT_DIR, "prefill_sm80_probe.csv"), "w") as f:
            for r in ROWS:
                f.write(",".join(str(x).replace(",", ";") for x in r) + "\n")


if __name__ == "__main__":
    if "--prmt" in sys.argv:
        main_prmt()
    else:
        main()
