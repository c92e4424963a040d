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

``--emulate-sum-order`` (CPU, no GPU needed): the sum_chains bit-exactness emulation.
``--sass-model`` (CPU, sm_90a cross-compile): the issue model behind the H7 prediction.

``--candidates`` (H7, opt-in variants not yet measured): smoke bit-exactness of every
CANDIDATES variant against reference.compress_store (K2V2 / K4V4 / K8V8 / K4V2, 1000 tokens,
plus 12000 tokens x 8 heads for several grid-stride passes), then times them next to the
baseline "binary", the former default "lut" and the current default ("auto" = "lut-wide" at
these sizes) on 4096 and 65536 tokens, compress only; ``--prewarm --candidates`` compiles
those configs. One line:

  python3 -m microbench.compress_probe --prewarm --candidates &&
    python3 -m microbench.compress_probe --candidates --skip-tests
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import statistics
import subprocess
import sys
import time

import torch

ALGOS = ("binary", "lut", "lut-wide")  # compress_store variants timed side by side
# --candidates: opt-in variants (fa4_tq.kernels.compress.COMPRESS_VARIANTS) timed against ALGOS
CANDIDATES = ("lut-s4", "lut-pf", "lut-pf-s4", "lut-wide-s4", "lut-wide-r3", "lut-pf-i8",
              "lut-r2")


def _algo_supported(algo, kb, vb):
    from fa4_tq.kernels import compress

    return compress.variant_supported(algo, kb, vb)


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


def bench(quick: bool, dequant: bool = True, algos=ALGOS, tokens=None, bit_pairs=None,
          ref_timing: bool = True):
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
    if tokens is None:
        tokens = [1, 16, 256, 4096, 16384, 65536] if not quick else [1, 16, 256, 4096, 65536]
    if bit_pairs is None:
        bit_pairs = [(4, 4), (2, 2), (8, 8), (4, 2)]
    for kb, vb in bit_pairs:
        codec = TQCodec(d, kb, vb).to(dev)
        cargs = (codec.k_signs, codec.v_signs, codec.k_codebook, codec.v_codebook)
        for t in tokens:
            if (kb, vb) != (4, 4) and t not in ((65536,) if quick else (16, 65536)) \
                    and algos is ALGOS:
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
            ref_ms = _eager_time_ms(comp_ref) if t <= 16384 and ref_timing else float("nan")
            cp_ms = _copy_ms(nbytes)
            for algo in algos:
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


def smoke(algos=ALGOS, cases=((2, 2, 1000), (4, 4, 1000), (8, 8, 1000)), dequant=True):
    """Bit-exact compress (every variant in ``algos``, cases (k_bits, v_bits, tokens) at 8
    heads) + dequantize checks before timing. Returns the number of mismatching compress
    bytes (0 expected)."""
    import fa4_tq.ops  # noqa: F401
    from fa4_tq import reference
    from fa4_tq.codec import TQCodec
    from fa4_tq.kernels import compress as K

    bad_total = 0
    for kb, vb, t in cases:
        # (seed and cache size of the default cases as before --candidates existed)
        g = torch.Generator().manual_seed(kb if (kb == vb and t == 1000) else kb + 10 * vb + t)
        codec = TQCodec(128, kb, vb)
        bs, h = 16, 8
        nb = 64 if t <= 1000 else -(-t // bs) + 8
        cache = [torch.randint(0, 256, (nb, bs, h, 128 * kb // 8), dtype=torch.uint8, generator=g),
                 torch.randint(0, 256, (nb, bs, h, 128 * vb // 8), dtype=torch.uint8, generator=g),
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
        for algo in algos:
            if not _algo_supported(algo, kb, vb):
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
            print(f"smoke compress K{kb}V{vb} T{t} algo={algo}: mismatches k_cache/v_cache/k_norm/v_norm "
                  f"= {bad} -> {'BIT-EXACT' if sum(bad) == 0 else 'FAIL'}", flush=True)
    if not dequant:
        return bad_total
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


# ------------------------------------------------------ summation-order emulation (CPU)
def _kernel_order_sum(t2, elems, chains):
    """t2: float64 [V, D] exact terms. Kernel order: lane l holds elements
    e = (r // 8) * 8 * lanes + l * 8 + r % 8 (r = register); partial sum r % chains,
    sequential in r; pairwise total; then butterfly over lanes (offset 1, 2, 4, ...)."""
    import numpy as np

    V, D = t2.shape
    lanes = D // elems
    r = np.arange(elems)
    idx = (r[None, :] // 8) * 8 * lanes + np.arange(lanes)[:, None] * 8 + r[None, :] % 8
    x = t2[:, idx]  # [V, lanes, elems]
    parts = [np.zeros((V, lanes)) for _ in range(chains)]
    for q in range(elems):
        parts[q % chains] = parts[q % chains] + x[:, :, q]
    while len(parts) > 1:
        parts = [parts[2 * i] + parts[2 * i + 1] for i in range(len(parts) // 2)]
    v = parts[0]
    s = 1
    while s < lanes:
        v = v + v[:, np.arange(lanes) ^ s]
        s *= 2
    assert (v == v[:, :1]).all()  # every lane the same value (IEEE add is commutative)
    return v[:, 0]


def _emulate_one(D, bits, nvec, mode, seed):
    import numpy as np
    from fa4_tq.codec import TQCodec
    from fa4_tq.codec.quantizer import nearest_codes, quantize
    from fa4_tq.codec.rotation import rotate

    g = torch.Generator().manual_seed(seed)
    codec = TQCodec(D, bits, bits, seed=seed)
    if mode == "normal":
        x = torch.randn(nvec, D, generator=g)
    else:  # adversarial: element magnitudes over ~10 decades (float64 rounding everywhere)
        x = torch.randn(nvec, D, generator=g) * torch.exp(torch.randn(nvec, D, generator=g) * 5)
    x = x.to(torch.bfloat16)
    xf = x.to(torch.float32)
    y = rotate(xf, codec.k_signs.to(torch.float32))
    codes_ref, norm_ref = quantize(x, codec.k_signs, codec.k_codebook)
    ss_ref = y.to(torch.float64).square().sum(-1).numpy()
    n_ref = np.sqrt(ss_ref).astype(np.float32)
    t2 = (y.to(torch.float64) ** 2).numpy()
    cb = codec.k_codebook.to(torch.float64).numpy()
    c2 = cb[codes_ref.long().numpy()] ** 2
    cs_ref = torch.from_numpy(c2).sum(-1).numpy()
    out = {}
    for elems in (16, 32):
        if D // elems < 2:
            continue
        for chains in (1, 2, 4):
            ss = _kernel_order_sum(t2, elems, chains)
            n = np.sqrt(ss).astype(np.float32)
            # codes from the kernel's n (same float32 compare as the reference)
            codes = nearest_codes(y, codec.k_codebook, torch.from_numpy(n))
            csk = _kernel_order_sum(cb[codes.long().numpy()] ** 2, elems, chains)
            r = np.where(csk > 0, n.astype(np.float64) / np.sqrt(np.where(csk > 0, csk, 1)), 0)
            norm = torch.from_numpy(r.astype(np.float32)).to(torch.bfloat16)
            out[(elems, chains)] = dict(
                ss_f64_differs=int((ss != ss_ref).sum()),
                cs_f64_differs=int((csk != cs_ref).sum()),
                n_f32_differs=int((n != n_ref).sum()),
                codes_differ=int((codes != codes_ref).any(-1).sum()),
                norm_differs=int((norm.view(torch.int16) != norm_ref.view(torch.int16)).sum()))
    return out


def emulate_sum_order(batches: int = 1) -> int:
    """CPU only (--emulate-sum-order): the kernel's float64 summation orders (sum_chains 1 / 2
    / 4 at 16 and 32 elements per lane, then the lane butterfly) against
    codec/quantizer.py (torch's order) on the same rotated vectors, D 64/128/256, 2/4/8-bit,
    normal and adversarial (element magnitudes over ~10 decades) inputs. Prints how often
    the float64 sums differ from the reference's and how often a stored result (n, codes,
    bf16 norm) does; returns the number of differing stored results (0 expected)."""
    t0 = time.time()
    total = {}
    for D in (64, 128, 256):
        for bits in (4, 2, 8):
            for mode in ("normal", "adversarial"):
                for b in range(batches):
                    nvec = 50000 if D < 256 else 25000
                    res = _emulate_one(D, bits, nvec, mode, 1000 * D + 10 * bits + b)
                    for k, v in res.items():
                        agg = total.setdefault((D, bits, mode) + k, dict(vectors=0))
                        agg["vectors"] += nvec
                        for kk, vv in v.items():
                            agg[kk] = agg.get(kk, 0) + vv
    print(f"sum-order emulation ({time.time() - t0:.0f}s)")
    print("| D | bits | inputs | elems/lane | sum_chains | vectors | f64 sum y^2 differs | "
          "f64 sum c^2 differs | n (f32) differs | codes differ | norm (bf16) differs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for k, v in sorted(total.items()):
        print("| " + " | ".join(str(x) for x in k) + f" | {v['vectors']} | {v['ss_f64_differs']} | "
              f"{v['cs_f64_differs']} | {v['n_f32_differs']} | {v['codes_differ']} | "
              f"{v['norm_differs']} |")
        bad += v["n_f32_differs"] + v["codes_differ"] + v["norm_differs"]
    print(f"stored results differing from the reference: {bad}")
    return bad


# ------------------------------------------------------ SASS issue model (CPU)
# --sass-model: the rough model behind the H7 prediction (docs/compress-notes.md). One
# scheduler (SMSP): in-order issue per warp, one instruction per cycle, register scoreboard
# with fixed latencies (public Hopper microbenchmark figures, not measured here), per-pipe
# issue intervals, shared-memory / shuffle wavefronts at the SM's 1 per cycle split over 4
# schedulers, global loads with latency L (a parameter).
def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")


def _sass_class(op):
    """(pipe, issue interval in cycles on one scheduler, result latency; None = global)."""
    base = op.split(".")[0]
    if base in ("FFMA", "FADD", "FMUL", "FMNMX", "HFMA2", "FSWZADD"):
        return ("fma", 1, 4)
    if base in ("IMAD",):
        return ("fmaheavy", 2, 4)
    if base in ("DFMA", "DADD", "DMUL", "DSETP"):
        return ("fp64", 2, 8)
    if base == "F2F" and "64" in op:
        return ("conv64", 8, 12)
    if base in ("F2F", "F2I", "I2F", "F2FP", "FRND"):
        return ("conv", 4, 8)
    if base == "MUFU":
        return ("mufu", 8, 18)
    if base in ("LDS",):
        w = 2 if ".64" in op else 4 if ".128" in op else 1
        return ("mio", 4 * w, 30)
    if base in ("SHFL",):
        return ("mio", 4, 30)
    if base in ("LDG",):
        return ("lsu", 4, None)  # latency = global
    if base in ("STG", "STS"):
        return ("lsu", 4, 0)
    if base in ("LDC", "ULDC", "S2R", "CS2R", "S2UR"):
        return ("mio", 4, 30)
    if base in ("BRA", "BSSY", "BSYNC", "EXIT", "CALL", "WARPSYNC", "NOP", "BAR"):
        return ("ctl", 1, 0)
    return ("alu", 2, 4)  # LOP3, IADD3, SEL, FSEL, ISETP, FSETP, SHF, LEA, MOV, PRMT, VIADD...


_SASS_REG = re.compile(r"^[-|!~]*(R\d+|RZ|P\d|PT|UR\d+|URZ|UP\d|UPT)")


def _sass_regs(tok, width):
    m = _SASS_REG.match(tok.strip())
    if not m:
        out = []
        for a in re.findall(r"\b(R\d+)(\.64)?", tok):  # address operands [R2.64+0x10]
            n = int(a[0][1:])
            out += [f"R{n + i}" for i in range(2 if a[1] else 1)]
        return out
    r = m.group(1)
    if r in ("RZ", "PT", "URZ", "UPT") or r.startswith("U"):
        return []
    if r.startswith("R"):
        n = int(r[1:])
        return [f"R{n + i}" for i in range(width)]
    return [r]


def _sass_parse(text):
    pred = None
    m = re.match(r"@(!?)(U?P\w+)\s+(.*)", text)
    if m:
        pred, text = m.group(2), m.group(3)
    parts = text.split(None, 1)
    op = parts[0]
    ops = [o.strip() for o in parts[1].split(",")] if len(parts) > 1 else []
    base = op.split(".")[0]
    is64 = base in ("DFMA", "DADD", "DMUL", "DSETP")
    nd = 0
    if base in ("STG", "STS", "ST", "BRA", "EXIT", "BSSY", "BSYNC", "CALL", "WARPSYNC", "BAR", "NOP", "RED"):
        nd = 0
    elif base.endswith("SETP") or base in ("SHFL", "PLOP3"):
        nd = 2
    else:
        nd = 1
        while nd - 1 < len(ops) and re.match(r"^!?U?P(\d|T)", ops[nd - 1]):
            nd += 1  # leading predicate dests (LOP3 P0, RZ, ...)
        j = nd
        while j < len(ops) and re.match(r"^U?P(\d|T)$", ops[j]):
            j += 1  # carry-out predicates right after the dest
        nd = j
    dws = 1
    if is64 or (base == "F2F" and ".F64." in op + "." and op.split(".")[1] == "F64"):
        dws = 2
    if base in ("LDS", "LDG") and ".64" in op:
        dws = 2
    if base in ("LDS", "LDG") and ".128" in op:
        dws = 4
    if base == "IMAD" and ".WIDE" in op:
        dws = 2
    dests, srcs = [], []
    for i, o in enumerate(ops):
        if i < nd:
            dests += _sass_regs(o, dws if o.startswith("R") else 1)
        else:
            w = 2 if (is64 or (base == "F2F" and op.endswith("F32.F64"))) else 1
            if base == "IMAD" and ".WIDE" in op and i == len(ops) - 1:
                w = 2
            srcs += _sass_regs(o, w)
    if pred:
        srcs.append(pred)
    return op, dests, srcs


def _sass_hot_loop(path):
    """Instructions of the main loop of a cubin, without the regions that forward branches
    skip around a nested loop (the rarely-taken binary-search fallback)."""
    out = subprocess.run([_cuobjdump(), "-sass", path], capture_output=True, text=True).stdout
    ins = []
    for line in out.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    idx = {a: i for i, (a, _) in enumerate(ins)}
    loops = []
    for i, (a, t) in enumerate(ins):
        if "BRA" in t:
            tgt = re.search(r"0x([0-9a-f]+)", t)
            if tgt and int(tgt.group(1), 16) <= a and int(tgt.group(1), 16) in idx:
                loops.append((idx[int(tgt.group(1), 16)], i))
    main = max(loops, key=lambda l: l[1] - l[0])
    inner = [l for l in loops if l != main and l[0] >= main[0] and l[1] <= main[1]]
    excl = set()
    for i in range(main[0], main[1]):
        t = ins[i][1]
        if "BRA" in t:
            tgt = re.search(r"0x([0-9a-f]+)", t)
            if tgt and int(tgt.group(1), 16) > ins[i][0]:
                j = idx.get(int(tgt.group(1), 16))
                if j is not None and j <= main[1] and any(i < l[0] and l[1] < j for l in inner):
                    excl.update(range(i + 1, j))
    return [ins[i][1] for i in range(main[0], main[1] + 1) if i not in excl]


def _sass_simulate(hot, warps, gmem_lat=700, iters=8):
    """-> issue utilization of one scheduler running ``warps`` warps of this loop."""
    prog = [_sass_parse(t) + (_sass_class(_sass_parse(t)[0]),) for t in hot]
    n = len(prog)
    ready = [collections.defaultdict(int) for _ in range(warps)]
    pc = [0] * warps
    done = [0] * warps
    last = [0] * warps
    pipe_free = collections.defaultdict(int)
    t = 0
    issued = 0
    finish = {}
    while min(done) < iters:
        best = None
        for w in sorted(range(warps), key=lambda w: last[w]):
            if done[w] >= iters:
                continue
            op, dests, srcs, (pipe, ii, lat) = prog[pc[w]]
            if all(ready[w][r] <= t for r in srcs + dests) and pipe_free[pipe] <= t:
                best = w
                break
        if best is not None:
            w = best
            op, dests, srcs, (pipe, ii, lat) = prog[pc[w]]
            l = gmem_lat if lat is None else lat
            for r in dests:
                ready[w][r] = t + l
            pipe_free[pipe] = t + ii
            last[w] = t
            issued += 1
            pc[w] += 1
            if pc[w] == n:
                pc[w] = 0
                done[w] += 1
                finish.setdefault(done[w], t)
        t += 1
    return issued / t


SASS_MODEL_VARIANTS = ("binary", "lut", "lut-s4", "lut-pf", "lut-pf-s4", "lut-wide", "lut-wide-s4")


def sass_model(kb: int = 4, vb: int = 4, latencies=(700, 1000, 1500, 2000)) -> None:
    """CPU only: compile D128 bf16 K{kb}V{vb} for every SASS_MODEL_VARIANTS entry (sm_90a,
    cubin kept), count the hot loop and print the simulated issue utilization per global
    latency (4 warps per scheduler for 256-thread variants at 2 CTAs/SM, 3 for wide)."""
    import tempfile

    from fa4_tq.kernels.compile import configure_cpu_compile_env

    tmp = tempfile.mkdtemp(prefix="compress_sass_")
    os.environ["CUTE_DSL_KEEP"] = "cubin"  # read by CuTeDSL at import: run in a fresh process
    os.environ["CUTE_DSL_DUMP_DIR"] = tmp
    configure_cpu_compile_env()
    from fa4_tq.kernels import compress as K

    print("| variant | hot instr / iteration | elements / lane-iteration | warps / scheduler | "
          + " | ".join(f"util L={L}" for L in latencies) + " |")
    print("|---|---|---|---|" + "---|" * len(latencies))
    for algo in SASS_MODEL_VARIANTS:
        if not K.variant_supported(algo, kb, vb):
            continue
        cfg = K.compress_config(128, kb, vb, "bfloat16", algo)
        t0 = time.time()
        K.compile_one(cfg)
        cubins = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".cubin")]
        newest = max(cubins, key=os.path.getmtime) if cubins else None
        if newest is None or os.path.getmtime(newest) < t0 - 1:
            raise RuntimeError(f"no fresh cubin for {cfg.name} in {tmp} (CuTeDSL cache hit?)")
        hot = _sass_hot_loop(newest)
        warps = 3 if cfg.chunks != 2 else 4
        utils = [_sass_simulate(hot, warps, L) for L in latencies]
        print(f"| {algo} | {len(hot)} | {8 * cfg.chunks * 2} | {warps} | "
              + " | ".join(f"{u:.2f}" for u in utils) + " |", flush=True)


def _prewarm_configs(candidates: bool = False):
    from fa4_tq.kernels import compress as K

    cfgs = []
    for kb, vb in [(4, 4), (2, 2), (8, 8), (4, 2)]:
        for algo in ALGOS + (CANDIDATES if candidates else ()):
            if _algo_supported(algo, kb, vb):
                cfgs.append(K.CompressConfig(128, kb, vb, "bfloat16", **K.COMPRESS_VARIANTS[algo]))
    return cfgs


def prewarm(candidates: bool = False) -> int:
    """Compile every probe config in its own process (all at once); returns the failures."""
    import subprocess

    n = len(_prewarm_configs(candidates))
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c",
                               "import sys; from microbench.compress_probe import "
                               "_prewarm_configs as c; from fa4_tq.kernels import compress as K; "
                               f"K.compile_one(c({candidates})[{i}])"]) for i in range(n)]
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
    ap.add_argument("--candidates", action="store_true",
                    help="smoke + time the opt-in CANDIDATES against binary / lut / lut-wide "
                         "(compress only, 4096 and 65536 tokens); with --prewarm: compile them")
    ap.add_argument("--emulate-sum-order", action="store_true",
                    help="CPU only: emulate the kernel's float64 summation orders "
                         "(sum_chains 1/2/4) against codec/quantizer.py and exit")
    ap.add_argument("--sass-model", action="store_true",
                    help="CPU only: compile the variants for sm_90a and print the simulated "
                         "issue utilization of their hot loops (the H7 prediction's model)")
    args = ap.parse_args()
    if args.sass_model:
        sass_model()
        sys.exit(0)
    if args.emulate_sum_order:
        sys.exit(1 if emulate_sum_order() else 0)
    if args.prewarm:
        sys.exit(prewarm(args.candidates))
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    t0 = time.time()
    if args.candidates:
        algos = ALGOS + CANDIDATES
        smoke_bad = smoke(algos, ((4, 4, 1000), (2, 2, 1000), (8, 8, 1000), (4, 2, 1000),
                                  (4, 4, 12000)), dequant=False)
        print(f"smoke {time.time() - t0:.0f}s", flush=True)
        t0 = time.time()
        peak, rows = bench(True, dequant=False, algos=algos, tokens=[4096, 65536],
                           bit_pairs=[(4, 4), (4, 2), (2, 2), (8, 8)], ref_timing=False)
    else:
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
