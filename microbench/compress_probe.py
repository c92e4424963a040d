"""Device probe for the CUDA compress_store / dequantize kernels (one run does everything).

  source .devenv/setup.sh && python3 -m microbench.compress_probe [--quick] 2>&1 | tee $OUT/log.txt

0. Smoke: bit-exact compress for every variant in ALGOS ("binary", "lut", "lut-wide" where
   it supports the bit widths) on K2V2/K4V4/K8V8, plus dequantize; printed before any timing.
1. Correctness: runs tests/gpu/test_compress.py (pytest, in-process; all variants).
2. Timing (H100, Hkv=8, D=128, bf16 in/out, 1 ... 64K tokens): kernel time as the median of
   CUDA-graph replays (20 calls captured per graph, CUDA events around each replay, warm-up
   excluded; 4 input sets rotated so L2 does not serve them), effective bandwidth =
   (bytes read + bytes written) / time, compared with a device-to-device copy_ of the same
   number of bytes and with a large (512 MiB) copy measured in this run, and with the torch
   reference (fa4_tq/reference.py run on the GPU, eager).
Prints one line per timing as it goes and a compact table at the end; also writes it to
$OUT/compress_probe.csv if $OUT is set. ``--prewarm`` only compiles the probe's compress
configs (one process each, in parallel) so that a following run finds them in CuTeDSL's
file cache; ``--no-dequant`` times compress_store only.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

ALGOS = ("binary", "lut", "lut-wide")  # compress_store variants timed side by side


def _algo_supported(algo, kb, vb):
    from fa4_tq.kernels import compress

    return algo != "lut-wide" or compress.lut_wide_supported(kb, vb)


def _graph_time_ms(fn, calls=20, reps=15):
    """Median per-call time of ``fn(i)`` for i in range(calls), captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(calls):  # warm-up (compiles on first call)
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def _eager_time_ms(fn, reps=5):
    fn(0)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _copy_ms(nbytes):
    """Median time of a D2D copy_ moving ``nbytes`` in total (nbytes/2 read + nbytes/2 written)."""
    n = max(1, nbytes // 2)
    src = [torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda") for _ in range(4)]
    dst = [torch.empty_like(x) for x in src]
    return _graph_time_ms(lambda i: dst[i % 4].copy_(src[i % 4]))


def bench(quick: bool, dequant: bool = True):
    import fa4_tq.ops  # noqa: F401
    from fa4_tq import reference
    from fa4_tq.codec import TQCodec
    from fa4_tq.kernels import compress as K

    dev = "cuda"
    h, d, bs = 8, 128, 16
    # Graphs capture the kernel entry points: the op wrapper's validation calls
    # check_codebook, which reads the CUDA codebook (host sync), so it cannot be captured.
    codec0 = TQCodec(d, 4, 4).to(dev)
    a = [torch.randn(64, h, d, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    c0 = [torch.zeros(8, bs, h, 64, dtype=torch.uint8, device=dev) for _ in range(2)] + \
        [torch.zeros(8, bs, h, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    sl = torch.arange(64, device=dev)
    ca = (codec0.k_signs, codec0.v_signs, codec0.k_codebook, codec0.v_codebook)
    op_ms = _eager_time_ms(lambda i: torch.ops.tqkv.compress_store(*a, *c0, sl, *ca), reps=20)
    k_ms = _eager_time_ms(lambda i: K.compress_store_cuda(*a, *c0, sl, *ca), reps=20)
    print(f"eager per-call latency incl. host (64 tokens): op {op_ms * 1e3:.1f} us, "
          f"kernel entry {k_ms * 1e3:.1f} us", flush=True)
    big = 512 * 2**20
    peak_ms = _copy_ms(big)
    peak_gbs = big / peak_ms / 1e6
    rows = []
    tokens = [1, 16, 256, 4096, 16384, 65536] if not quick else [1, 16, 256, 4096, 65536]
    bit_pairs = [(4, 4), (2, 2), (8, 8), (4, 2)]
    for kb, vb in bit_pairs:
        codec = TQCodec(d, kb, vb).to(dev)
        cargs = (codec.k_signs, codec.v_signs, codec.k_codebook, codec.v_codebook)
        for t in tokens:
            if (kb, vb) != (4, 4) and t not in ((65536,) if quick else (16, 65536)):
                continue
            nb = max(4, -(-t // bs) * 1)
            sets = 4
            caches = [[torch.zeros(nb, bs, h, d * kb // 8, dtype=torch.uint8, device=dev),
                       torch.zeros(nb, bs, h, d * vb // 8, dtype=torch.uint8, device=dev),
                       torch.zeros(nb, bs, h, dtype=torch.bfloat16, device=dev),
                       torch.zeros(nb, bs, h, dtype=torch.bfloat16, device=dev)]
                      for _ in range(sets)]
            keys = [torch.randn(t, h, d, dtype=torch.bfloat16, device=dev) for _ in range(sets)]
            vals = [torch.randn(t, h, d, dtype=torch.bfloat16, device=dev) for _ in range(sets)]
            slots = [torch.randperm(nb * bs, device=dev)[:t] for _ in range(sets)]

            def comp_algo(algo):
                def comp(i):  # the kernel entry point (the op's validation syncs: see note)
                    j = i % sets
                    K.compress_store_cuda(keys[j], vals[j], *caches[j], slots[j], *cargs,
                                          algo=algo)
                return comp

            def comp_ref(i):
                j = i % sets
                reference.compress_store(keys[j], vals[j], *caches[j], slots[j], *cargs)

            nbytes = (2 * t * h * d * 2 + t * 8) + t * h * (d * kb // 8 + d * vb // 8 + 4)
            ref_ms = _eager_time_ms(comp_ref) if t <= 16384 else float("nan")
            cp_ms = _copy_ms(nbytes)
            for algo in ALGOS:
                if not _algo_supported(algo, kb, vb):
                    continue
                ms = _graph_time_ms(comp_algo(algo))
                rows.append(("compress", f"K{kb}V{vb}", t, algo, ms * 1e3, nbytes / ms / 1e6,
                             (nbytes / ms) / (nbytes / cp_ms), (nbytes / ms / 1e6) / peak_gbs,
                             ref_ms / ms))
                print("row", *[f"{v:.3f}" if isinstance(v, float) else v for v in rows[-1]],
                      flush=True)  # as we go: a timeout still leaves the rows measured

            if not dequant:
                continue
            # dequantize the same tokens as 4 sequences through a random block table
            bsz = 4 if t >= 4 else 1
            lens = torch.full((bsz,), t // bsz, dtype=torch.int32)
            lens[-1] += t - int(lens.sum())
            mb = int(-(-lens.max() // bs))
            nb2 = bsz * mb
            kc, vc, kn, vn = caches[0]
            if nb2 > nb:
                continue
            bt = torch.randperm(nb, device=dev)[: nb2].reshape(bsz, mb).to(torch.int32)
            cu = torch.zeros(bsz + 1, dtype=torch.int32, device=dev)
            cu[1:] = torch.cumsum(lens, 0).to(dev)
            # real codes: compress once into every set
            for j in range(sets):
                torch.ops.tqkv.compress_store(keys[j], vals[j], *caches[j], slots[j], *cargs)
            for unrot in (False, True):
                if unrot and (kb, vb) != (4, 4):
                    continue

                def deq(i):
                    j = i % sets
                    K.dequantize_cuda(*caches[j], bt, cu, codec.k_codebook,
                                              codec.v_codebook, codec.k_signs, codec.v_signs,
                                              unrot, t, torch.bfloat16)

                def deq_ref(i):
                    j = i % sets
                    reference.dequantize(*caches[j], bt, cu, codec.k_codebook, codec.v_codebook,
                                         codec.k_signs, codec.v_signs, unrot, t, torch.bfloat16)

                nbytes = t * h * (d * kb // 8 + d * vb // 8 + 4) + 2 * t * h * d * 2
                ms = _graph_time_ms(deq)
                ref_ms = _eager_time_ms(deq_ref) if t <= 16384 else float("nan")
                cp_ms = _copy_ms(nbytes)
                rows.append(("dequant" + ("+unrot" if unrot else ""), f"K{kb}V{vb}", t, "-",
                             ms * 1e3, nbytes / ms / 1e6, cp_ms / ms,
                             (nbytes / ms / 1e6) / peak_gbs, ref_ms / ms))
    return peak_gbs, rows


def smoke():
    """Bit-exact compress (all variants, K2V2/K4V4/K8V8) + dequantize checks before timing.
    Returns the number of mismatching compress bytes (0 expected)."""
    import fa4_tq.ops  # noqa: F401
    from fa4_tq import reference
    from fa4_tq.codec import TQCodec
    from fa4_tq.kernels import compress as K

    bad_total = 0
    for kb in (2, 4, 8):
        g = torch.Generator().manual_seed(kb)
        codec = TQCodec(128, kb, kb)
        nb, bs, h, t = 64, 16, 8, 1000
        row = 128 * kb // 8
        cache = [torch.randint(0, 256, (nb, bs, h, row), dtype=torch.uint8, generator=g),
                 torch.randint(0, 256, (nb, bs, h, row), dtype=torch.uint8, generator=g),
                 torch.randn(nb, bs, h, generator=g).to(torch.bfloat16),
                 torch.randn(nb, bs, h, generator=g).to(torch.bfloat16)]
        scale = torch.exp(torch.randn(t, 1, 1, generator=g) * 3.0)
        key = (torch.randn(t, h, 128, generator=g) * scale).to(torch.bfloat16)
        val = (torch.randn(t, h, 128, generator=g) * scale).to(torch.bfloat16)
        key[3, 1] = 0
        slots = torch.randperm(nb * bs, generator=g)[:t]
        ref = [x.clone() for x in cache]
        cargs = (codec.k_signs, codec.v_signs, codec.k_codebook, codec.v_codebook)
        reference.compress_store(key, val, *ref, slots, *cargs)
        for algo in ALGOS:
            if not _algo_supported(algo, kb, kb):
                continue
            gpu = [x.cuda() for x in cache]
            K.compress_store_cuda(key.cuda(), val.cuda(), *gpu, slots.cuda(),
                                  *[a.cuda() for a in cargs], algo=algo)
            bad = []
            for name, a, b in zip(("k_cache", "v_cache", "k_norm", "v_norm"), gpu, ref):
                a = a.cpu()
                eq = (a.view(torch.int16) == b.view(torch.int16)) if a.dtype == torch.bfloat16 else (a == b)
                bad.append(int((~eq).sum()))
            bad_total += sum(bad)
            print(f"smoke compress K{kb}V{kb} algo={algo}: mismatches k_cache/v_cache/k_norm/v_norm "
                  f"= {bad} -> {'BIT-EXACT' if sum(bad) == 0 else 'FAIL'}", flush=True)
    codec = TQCodec(128, 4, 4)
    nb, bs, h, t = 8, 16, 8, 100
    g = torch.Generator().manual_seed(0)
    cache = [torch.zeros(nb, bs, h, 64, dtype=torch.uint8), torch.zeros(nb, bs, h, 64, dtype=torch.uint8),
             torch.zeros(nb, bs, h, dtype=torch.bfloat16), torch.zeros(nb, bs, h, dtype=torch.bfloat16)]
    key = torch.randn(t, h, 128, generator=g).to(torch.bfloat16)
    val = torch.randn(t, h, 128, generator=g).to(torch.bfloat16)
    slots = torch.randperm(nb * bs, generator=g)[:t]
    ref = [x.clone() for x in cache]
    reference.compress_store(key, val, *ref, slots, codec.k_signs, codec.v_signs,
                             codec.k_codebook, codec.v_codebook)
    bt = torch.arange(nb, dtype=torch.int32).reshape(1, nb)
    cu = torch.tensor([0, nb * bs], dtype=torch.int32)
    for unrot in (False, True):
        rk, rv = reference.dequantize(*ref, bt, cu, codec.k_codebook, codec.v_codebook,
                                      codec.k_signs, codec.v_signs, unrot, nb * bs, torch.bfloat16)
        gk, gv = torch.ops.tqkv.dequantize(*[x.cuda() for x in ref], bt.cuda(), cu.cuda(),
                                           codec.k_codebook.cuda(), codec.v_codebook.cuda(),
                                           codec.k_signs.cuda(), codec.v_signs.cuda(), unrot,
                                           nb * bs, torch.bfloat16)
        print(f"smoke dequant unrotate={unrot}: k equal={torch.equal(gk.cpu(), rk)} "
              f"v equal={torch.equal(gv.cpu(), rv)} "
              f"max|diff|={float((gk.cpu().float() - rk.float()).abs().max()):.3g}", flush=True)
    return bad_total


def _prewarm_configs():
    from fa4_tq.kernels import compress as K

    cfgs = []
    for kb, vb in [(4, 4), (2, 2), (8, 8), (4, 2)]:
        for algo in ALGOS:
            if _algo_supported(algo, kb, vb):
                cfgs.append(K.CompressConfig(128, kb, vb, "bfloat16", **K.COMPRESS_VARIANTS[algo]))
    return cfgs


def prewarm() -> int:
    """Compile every probe config in its own process (all at once); returns the failures."""
    import subprocess

    n = len(_prewarm_configs())
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c",
                               "import sys; from microbench.compress_probe import "
                               "_prewarm_configs as c; from fa4_tq.kernels import compress as K; "
                               f"K.compile_one(c()[{i}])"]) for i in range(n)]
    bad = sum(p.wait() != 0 for p in procs)
    print(f"prewarm: {n} configs compiled in parallel in {time.time() - t0:.0f}s, "
          f"{bad} failed", flush=True)
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--no-dequant", action="store_true", help="time compress_store only")
    ap.add_argument("--prewarm", action="store_true",
                    help="only compile the probe's compress configs, one process each, in "
                         "parallel (fills CuTeDSL's file cache for the timed run)")
    args = ap.parse_args()
    if args.prewarm:
        sys.exit(prewarm())
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    smoke_bad = smoke()
    t0 = time.time()
    peak, rows = bench(args.quick, dequant=not args.no_dequant)
    print(f"bench {time.time() - t0:.0f}s", flush=True)
    hdr = ("kernel", "bits", "tokens", "algo", "us", "GB/s", "vs_copy_same_bytes",
           "vs_copy_512MiB", "speedup_vs_torch_ref")
    _print_table(peak, rows, hdr, smoke_bad)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "compress_probe.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([c for c in hdr if c])
            w.writerows([[v for v, c in zip(r, hdr) if c] for r in rows])
    sys.stdout.flush()
    rc = 0
    if not args.skip_tests:
        import pytest

        t0 = time.time()
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "tests/gpu/test_compress.py"])
        print(f"pytest rc={rc} ({time.time() - t0:.0f}s)", flush=True)
        _print_table(peak, rows, hdr, smoke_bad)  # the compact table last
        print(f"pytest rc={rc}")
    sys.exit(0 if rc == 0 and smoke_bad == 0 else 1)


def _print_table(peak, rows, hdr, smoke_bad):
    print(f"\nsmoke bit-exactness (all algos): {'OK' if smoke_bad == 0 else f'{smoke_bad} BAD BYTES'}")
    print(f"D2D copy 512 MiB: {peak:.0f} GB/s (read+write)")
    print("  ".join(f"{c:>10}" for c in hdr if c))
    for r in rows:
        print("  ".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v!s:>10}" for v, c in
                        zip(r, hdr) if c))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
