"""Device check + benchmark of the split-K decode kernel (fa4_tq/kernels/decode.py).

One script per device run: (1) correctness matrix against the float64 reference over the
same packed cache, compiled and checked in parallel worker processes (one compile per
kernel config), output/LSE NaN-poisoned before every call; (2) timing vs bf16 SDPA
(enable_gqa) and FA4 on bf16 K/V, Hq=32, Hkv=8, D=128, plus a device copy bandwidth.

    source .devenv/setup.sh && python microbench/decode_probe.py [--no-bench] [--no-check]

Prints compact tables; writes decode_probe.json under $OUT when set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --------------------------------------------------------------------------- cache setup
def build_case_inputs(case, device="cuda"):
    """Random K/V quantized into a paged cache through the reference compress_store, with
    NaN norms and random bytes in every slot no sequence uses (must never leak)."""
    from fa4_tq import reference
    from fa4_tq.codec import TQCodec

    g = torch.Generator(device="cpu").manual_seed(case["seed"])
    d, hkv, bs = case["D"], case["Hkv"], case["bs"]
    hq = hkv * case["G"]
    lens = case["lens"]
    batch = len(lens)
    codec = TQCodec(d, case["kb"], case["vb"], seed=case["seed"]).to(device)
    nblk_seq = [max(1, -(-n // bs)) for n in lens]
    max_blocks = max(nblk_seq) + 1  # spare capacity: heuristic sees more than is used
    num_blocks = sum(nblk_seq) + 3
    perm = torch.randperm(num_blocks, generator=g)
    bt = torch.zeros(batch, max_blocks, dtype=torch.int32)
    pos = 0
    for b, nb in enumerate(nblk_seq):
        bt[b, :nb] = perm[pos:pos + nb].to(torch.int32)
        bt[b, nb:] = perm[-1].item()  # unused entries point somewhere valid
        pos += nb
    kc = torch.randint(0, 256, (num_blocks, bs, hkv, d * case["kb"] // 8), generator=g,
                       dtype=torch.uint8)
    vc = torch.randint(0, 256, (num_blocks, bs, hkv, d * case["vb"] // 8), generator=g,
                       dtype=torch.uint8)
    kn = torch.full((num_blocks, bs, hkv), float("nan"), dtype=torch.bfloat16)
    vn = torch.full((num_blocks, bs, hkv), float("nan"), dtype=torch.bfloat16)
    kc, vc, kn, vn, bt = (t.to(device) for t in (kc, vc, kn, vn, bt))
    slots = []
    for b, n in enumerate(lens):
        t = torch.arange(n)
        slots.append(bt[b].cpu().to(torch.int64)[t // bs] * bs + t % bs)
    slots = torch.cat(slots).to(device) if slots else torch.zeros(0, dtype=torch.int64)
    total = int(sum(lens))
    key = torch.randn(total, hkv, d, generator=g).to(device, torch.bfloat16)
    # values with a non-zero mean so the output is not ~0 (relative error stays meaningful)
    val = (torch.randn(total, hkv, d, generator=g) + 0.5).to(device, torch.bfloat16)
    if total:
        reference.compress_store(key, val, kc, vc, kn, vn, slots, codec.k_signs, codec.v_signs,
                                 codec.k_codebook, codec.v_codebook)
    qdt = torch.float16 if case.get("fp16") else torch.bfloat16
    q = (torch.randn(batch, case["qlen"], hq, d, generator=g) * case.get("qscale", 1.0)).to(
        device, qdt)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    return dict(q=q, kc=kc, vc=vc, kn=kn, vn=vn, bt=bt, seq=seq, codec=codec)


def check_case(case):
    """Run one correctness case; returns a result dict (never raises)."""
    from fa4_tq import reference
    from fa4_tq.testing import lse_tolerance
    from fa4_tq.kernels import decode as dec

    res = dict(name=case["name"])
    try:
        x = build_case_inputs(case)
        c = x["codec"]
        scale = 1.0 / math.sqrt(case["D"])
        args = (x["q"], x["kc"], x["vc"], x["kn"], x["vn"], x["bt"], x["seq"], c.k_codebook,
                c.v_codebook, c.k_signs, c.v_signs, scale, case["causal"], case["wl"],
                case["wr"], case.get("rotq", True), case.get("unrot", True))
        ref_o, ref_l = reference.decode(*args, compute_dtype=torch.float64)
        t0 = time.perf_counter()
        if case.get("via_op"):
            import fa4_tq.ops  # noqa: F401
            o, lse = torch.ops.tqkv.decode(*args, case.get("splits", 0))
        else:
            o = torch.full_like(x["q"], float("nan"))
            lse = torch.full(ref_l.shape, float("nan"), device="cuda")
            cfg = None
            if case.get("candidate"):  # an opt-in tuning: the shipped config + overrides
                assert case["kb"] == case["vb"]
                cfg = dec.candidate_config(case["kb"], case["D"], case["G"], case["qlen"],
                                           case["candidate"],
                                           "float16" if case.get("fp16") else "bfloat16",
                                           rotate_query=case.get("rotq", True))
                res["config"] = cfg.name
            elif case.get("knobs"):  # DecodeConfig field overrides of the shipped config
                cfg = dec.tuned_config(case["kb"], case["vb"], case["D"], case["G"],
                                       case["qlen"], "float16" if case.get("fp16") else
                                       "bfloat16", case.get("rotq", True), **case["knobs"])
                res["config"] = cfg.name
            dec.decode_cuda(*args, num_splits=case.get("splits", 0), out=o, lse=lse,
                            config=cfg)
        torch.cuda.synchronize()
        res["first_call_s"] = round(time.perf_counter() - t0, 2)
        o64, r64 = o.double(), ref_o.double()
        nan = bool(torch.isnan(o).any()) or bool(torch.isnan(lse).any())
        rel = float((o64 - r64).norm() / r64.norm().clamp_min(1e-30))
        fin = torch.isfinite(ref_l)
        inf_ok = bool((torch.isfinite(lse) == fin).all())
        lse_err = float((lse[fin] - ref_l[fin]).abs().max()) if bool(fin.any()) else 0.0
        zero_ok = bool((o[~fin.transpose(1, 2)] == 0).all()) if bool((~fin).any()) else True
        # LSE tolerance: the QK operands are bf16 (rotated q and the decoded K), whose
        # rounding (2^-9 relative each) moves a logit by up to ~2^-8 of its magnitude; LSE >=
        # the max logit bounds that magnitude, so the bound is max(1e-2, 2^-8 max|LSE|).
        # Measured on the H100: max logit ~27 gave lse_err 0.055 (fp16 queries: 10x
        # smaller); K2V2 q2 window33 (max |LSE| 4.8): 1.1e-2, of which rounding q alone
        # accounts for 5.8e-3 in the float64 reference.
        lse_tol = lse_tolerance(ref_l)
        res.update(rel_err=rel, lse_err=lse_err, lse_tol=lse_tol, nan=nan, inf_ok=inf_ok,
                   zero_ok=zero_ok,
                   ok=(not nan) and rel <= 1e-2 and lse_err <= lse_tol and inf_ok and zero_ok)
    except Exception as exc:  # reported, never hidden
        res.update(ok=False, error=f"{type(exc).__name__}: {exc}",
                   tb=traceback.format_exc()[-1500:])
    return res


def check_group(cases):
    torch.cuda.set_device(0)
    return [check_case(c) for c in cases]


def _candidate_cases(keep, mixed_a, mixed_b):
    """The correctness cases of the speed candidates (CANDIDATE_NAMES) that ``keep`` selects:
    q_len 1, and q_len 2 with a window and 7 splits (all but ring_early), the ring also over
    many tiles per warp in one split at a block size of 64."""
    cases = []
    for kb, cands in CANDIDATE_NAMES.items():
        for cname in filter(keep, cands):
            cases.append(dict(name=f"K{kb}V{kb} D128 G4 q1 bs16 cand={cname}", kb=kb, vb=kb,
                              D=128, G=4, Hkv=2, qlen=1, bs=16, lens=mixed_a, causal=True,
                              wl=-1, wr=-1, candidate=cname))
            if cname == "ring_early":  # both parts are checked alone below (device time)
                continue
            # (q_len 2: G x q_len <= 8 keeps the one-column-tile prefetching config)
            cases.append(dict(name=f"K{kb}V{kb} D128 G4 q2 bs16 window33 splits=7 "
                              f"cand={cname}", kb=kb, vb=kb, D=128, G=4, Hkv=2, qlen=2, bs=16,
                              lens=mixed_b, causal=True, wl=33, wr=-1, splits=7,
                              candidate=cname))
            if cname == "ring" or cname.endswith("tp"):  # (tile pairs: odd tile counts too)
                cases.append(dict(name=f"K{kb}V{kb} D128 G4 q1 bs64 splits=1 cand={cname}",
                                  kb=kb, vb=kb, D=128, G=4, Hkv=2, qlen=1, bs=64,
                                  lens=[5003, 1, 37], causal=True, wl=-1, wr=-1, splits=1,
                                  candidate=cname))
    return cases


def decode_matrix_cases():
    """The issue's matrix beyond the D=128 pairs above: every (k_bits, v_bits) x head_dim
    64/128/256, with GQA {1, 4, 8, 16} x q_len {1, 4, 8} x block size {16, 128} x {causal,
    sliding window} rotating over the 27 cells (each value of each factor meets every pair
    and every head_dim), mixed lengths with a 128K-token sequence at D=128 (a 20K one
    elsewhere), odd lengths, a length-1 and an empty sequence."""
    cells = []
    pairs = [(kb, vb) for kb in (2, 4, 8) for vb in (2, 4, 8)]
    for p, (kb, vb) in enumerate(pairs):
        for di, D in enumerate((64, 128, 256)):
            G = (1, 4, 8, 16)[(p + di) % 4]
            q = (1, 4, 8)[(p + 2 * di) % 3]
            bs = (16, 128)[(p + di) % 2]
            wl = 100 if (p + di) % 3 == 0 else -1
            long = 131072 if D == 128 else 20001
            lens = [long, 1, 0, 777] if (p + di) % 2 else [3, long, 4097]
            cells.append(dict(name=f"matrix K{kb}V{vb} D{D} G{G} q{q} bs{bs}"
                              f"{f' window{wl}' if wl >= 0 else ''} L{max(lens)}",
                              kb=kb, vb=vb, D=D, G=G, Hkv=1 if G == 16 else 2, qlen=q, bs=bs,
                              lens=lens, causal=True, wl=wl, wr=-1))
    return cells


def correctness_cases():
    cases = []
    mixed_a = [1, 5003, 37, 0, 300]
    mixed_b = [4999, 16, 2, 129, 5]
    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            cases.append(dict(name=f"K{kb}V{vb} D128 G4 q1 bs16", kb=kb, vb=vb, D=128, G=4,
                              Hkv=2, qlen=1, bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1))
            cases.append(dict(name=f"K{kb}V{vb} D128 G4 q4 bs128 causal", kb=kb, vb=vb, D=128,
                              G=4, Hkv=2, qlen=4, bs=128, lens=mixed_b, causal=True, wl=-1,
                              wr=-1))
    extra = [
        dict(name="K4V4 D128 G4 q4 bs16 window100 causal", kb=4, vb=4, D=128, G=4, Hkv=2,
             qlen=4, bs=16, lens=mixed_a, causal=True, wl=100, wr=-1),
        dict(name="K4V4 D128 G4 q1 bs128 window64", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=1,
             bs=128, lens=mixed_b, causal=False, wl=64, wr=-1),
        dict(name="K4V4 D128 G4 q4 bs16 noncausal", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=4,
             bs=16, lens=mixed_b, causal=False, wl=-1, wr=-1),
        dict(name="K4V4 D128 G4 q4 bs16 wl7 wr3", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=4,
             bs=16, lens=mixed_b, causal=False, wl=7, wr=3),
        dict(name="K4V4 D64 G4 q1 bs16", kb=4, vb=4, D=64, G=4, Hkv=2, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1),
        dict(name="K2V2 D64 G4 q4 bs32 causal", kb=2, vb=2, D=64, G=4, Hkv=2, qlen=4, bs=32,
             lens=mixed_b, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D256 G4 q1 bs16", kb=4, vb=4, D=256, G=4, Hkv=2, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1),
        dict(name="K8V8 D256 G4 q2 bs64 causal", kb=8, vb=8, D=256, G=4, Hkv=2, qlen=2, bs=64,
             lens=mixed_b, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D128 G1 q1 bs16", kb=4, vb=4, D=128, G=1, Hkv=4, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D128 G16 q1 bs16", kb=4, vb=4, D=128, G=16, Hkv=2, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D128 G16 q8 bs16 causal", kb=4, vb=4, D=128, G=16, Hkv=2, qlen=8,
             bs=16, lens=mixed_b, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D256 G16 q8 bs16 causal (2 col CTAs)", kb=4, vb=4, D=256, G=16,
             Hkv=1, qlen=8, bs=16, lens=[700, 3], causal=True, wl=-1, wr=-1),
        dict(name="K2V4 D128 G5 q3 bs48 causal", kb=2, vb=4, D=128, G=5, Hkv=2, qlen=3,
             bs=48, lens=mixed_b, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D128 G4 q2 bs16 causal", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=2,
             bs=16, lens=mixed_b, causal=True, wl=-1, wr=-1),
        # the smem-ring defaults (session 4) at q_len > 1, windows, fixed splits and in the
        # steady state of one long split: K4V2 (4 warps x 2 CTAs, 4 stages), K4V8 / K2V8
        # (8 warps x 1 CTA, 3 stages)
        dict(name="K4V2 D128 G4 q2 bs16 window33 splits=7", kb=4, vb=2, D=128, G=4, Hkv=2,
             qlen=2, bs=16, lens=mixed_b, causal=True, wl=33, wr=-1, splits=7),
        dict(name="K4V8 D128 G2 q4 bs64 window40", kb=4, vb=8, D=128, G=2, Hkv=2, qlen=4,
             bs=64, lens=mixed_b, causal=True, wl=40, wr=-1),
        dict(name="K2V8 D128 G8 q1 bs128 splits=1", kb=2, vb=8, D=128, G=8, Hkv=2, qlen=1,
             bs=128, lens=[5003, 1, 37], causal=True, wl=-1, wr=-1, splits=1),
        dict(name="K2V2 D256 G4 q1 bs32", kb=2, vb=2, D=256, G=4, Hkv=2, qlen=1, bs=32,
             lens=mixed_a, causal=True, wl=-1, wr=-1),
        dict(name="K4V4 D128 G8 q1 bs16 window33", kb=4, vb=4, D=128, G=8, Hkv=2, qlen=1,
             bs=16, lens=mixed_a, causal=True, wl=33, wr=-1),
        dict(name="K4V4 D128 G4 q1 fp16", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1, fp16=True),
        dict(name="K4V4 D128 G4 q1 no-rotations", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=1,
             bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1, rotq=False, unrot=False),
        dict(name="K4V4 D128 G4 q1 rotate-query only", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=1,
             bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1, rotq=True, unrot=False),
        dict(name="K4V4 D128 G4 q1 unrotate-output only", kb=4, vb=4, D=128, G=4, Hkv=2,
             qlen=1, bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1, rotq=False, unrot=True),
        dict(name="K4V4 D128 G4 q1 splits=1", kb=4, vb=4, D=128, G=4, Hkv=2, qlen=1, bs=16,
             lens=mixed_a, causal=True, wl=-1, wr=-1, splits=1),
        dict(name="K4V4 D128 G4 q1 splits=7 via torch.ops", kb=4, vb=4, D=128, G=4, Hkv=2,
             qlen=1, bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1, splits=7, via_op=True),
        dict(name="K4V4 D128 G4 q1 splits=64 qscale=8", kb=4, vb=4, D=128, G=4, Hkv=2,
             qlen=1, bs=16, lens=[5003, 1], causal=True, wl=-1, wr=-1, splits=64, qscale=8.0),
    ]
    cases += extra
    # opt-in speed candidates (decode.SPEED_CANDIDATES; not shipped unless measured faster):
    # same checks; the ring also over many tiles per warp in one split (steady state of the
    # unrolled ring loop) at a block size of 64
    cases += _candidate_cases(lambda name: name not in LATE_CANDIDATES, mixed_a, mixed_b)
    # prmt_lut forced on (config= overrides) over more geometries: the pairs that do not ship
    # it (8-bit sides, K2V8 / K8V2, D 64 / 256, two column tiles) and, for the shipped
    # pairs (where the knob is already on), windows, GQA 2/5, q_len 2-4, fp16, fixed splits
    pl_cases = (
        # (name, kb, vb, D, G, q_len, bs, lens, extra case fields, extra knobs)
        ("K2V2 D64 G4 q4 bs32", 2, 2, 64, 4, 4, 32, mixed_b, {}, {}),
        ("K2V2 D256 G4 q1 bs32", 2, 2, 256, 4, 1, 32, mixed_a, {}, {}),
        ("K4V2 D128 G4 q2 bs16 window33 splits=7", 4, 2, 128, 4, 2, 16, mixed_b,
         dict(wl=33, splits=7), {}),
        ("K2V4 D128 G5 q3 bs48", 2, 4, 128, 5, 3, 48, mixed_b, {}, {}),
        ("K2V8 D128 G8 q1 bs128 splits=1", 2, 8, 128, 8, 1, 128, [5003, 1, 37],
         dict(splits=1), {}),
        ("K8V2 D128 G4 q1 bs16", 8, 2, 128, 4, 1, 16, mixed_a, {}, {}),
        ("K8V8 D128 G4 q1 bs16", 8, 8, 128, 4, 1, 16, mixed_a, {}, {}),
        ("K8V8 D128 G4 q1 bs16 w4c3", 8, 8, 128, 4, 1, 16, mixed_a, {},
         dict(target_warps=4, min_ctas_per_sm=3)),
        ("K4V8 D128 G2 q4 bs64 window40", 4, 8, 128, 2, 4, 64, mixed_b, dict(wl=40), {}),
        ("K8V4 D128 G4 q1 bs128 splits=3", 8, 4, 128, 4, 1, 128, mixed_b, dict(splits=3), {}),
        ("K4V4 D128 G16 q8 bs16 causal", 4, 4, 128, 16, 8, 16, mixed_b, {}, {}),
        ("K4V4 D64 G4 q1 bs32", 4, 4, 64, 4, 1, 32, mixed_a, {}, {}),
        ("K8V8 D256 G4 q2 bs64 causal", 8, 8, 256, 4, 2, 64, mixed_b, {}, {}),
        ("K4V4 D128 G4 q1 fp16", 4, 4, 128, 4, 1, 16, mixed_a, dict(fp16=True), {}))
    for name, kb, vb, D, G, q, bs, lens, fields, knobs in pl_cases:
        cases.append(dict(dict(name=f"{name} prmt_lut", kb=kb, vb=vb, D=D, G=G, Hkv=2, qlen=q,
                               bs=bs, lens=lens, causal=True, wl=-1, wr=-1,
                               knobs=dict(prmt_lut=True, **knobs)), **fields))
    cases += decode_matrix_cases()  # last: the earlier cases keep their seeds
    cases += _candidate_cases(lambda name: name in LATE_CANDIDATES, mixed_a,
                              mixed_b)  # (same reason)
    # tile pairs on the pairs timed with --pair-knobs tp (K4V2: 4-stage ring already; K4V8:
    # its 3-stage 8-warp ring at 4 stages; K4V2 at 6 warps spills 40 B at q_len 1), incl. a
    # long split (odd tile counts per warp)
    for kb, vb, knobs in ((4, 2, dict(smem_stages=4, tile_pairs=True)),
                          (4, 8, dict(smem_stages=4, tile_pairs=True)),
                          (8, 8, dict(l2_prefetch=256)), (4, 4, dict(l2_prefetch=256))):
        tag = "l2p256" if knobs.get("l2_prefetch") else "tp"
        cases.append(dict(name=f"K{kb}V{vb} D128 G4 q1 bs16 {tag}", kb=kb, vb=vb, D=128, G=4,
                          Hkv=2, qlen=1, bs=16, lens=mixed_a, causal=True, wl=-1, wr=-1,
                          knobs=knobs))
        cases.append(dict(name=f"K{kb}V{vb} D128 G4 q2 bs64 window33 splits=1 {tag}", kb=kb,
                          vb=vb, D=128, G=4, Hkv=2, qlen=2, bs=64, lens=[5003, 1, 37],
                          causal=True, wl=33, wr=-1, splits=1, knobs=knobs))
    for i, c in enumerate(cases):
        c["seed"] = 1000 + i
    return cases


#: Knob sets timed for any (k_bits, v_bits) with --pairs (DecodeConfig field overrides of
#: the pair's shipped config; a set its config rejects, or that changes nothing, is skipped).
PAIR_KNOBS = {
    "nobtla": dict(table_lookahead=False),  # the pre-2026-11-24 prefetch loop
    "early": dict(early_prefetch=True),
    "ring_early": dict(target_warps=4, min_ctas_per_sm=2, smem_stages=4, early_prefetch=True,
                       table_lookahead=False),
    "ring_early_tb": dict(target_warps=4, min_ctas_per_sm=2, smem_stages=4,
                          early_prefetch=True, table_lookahead=False, tile_bases=True),
    "tb": dict(tile_bases=True),
    # session 8: the 4-bit-K ring at 6 warps x 2 CTAs (decode.SPEED_CANDIDATES[4]["w6"])
    "w6": dict(target_warps=6),
    # session 9: tile pairs (decode.SPEED_CANDIDATES[4]["tp"] / ["w6tp"], [2]["pl_w6tp"])
    "tp": dict(smem_stages=4, tile_pairs=True),
    "w6tp": dict(target_warps=6, smem_stages=4, tile_pairs=True),  # (K4V2: spills 40 B)
    "pl_w6tp": dict(prmt_lut=True, target_warps=6, min_ctas_per_sm=2, smem_stages=4,
                    tile_pairs=True, table_lookahead=False, tile_bases=True,
                    early_prefetch=True),
    # session 9: the L2 prefetch-size hint on the code loads (DecodeConfig.l2_prefetch)
    "l2p256": dict(l2_prefetch=256),
    "l2p128": dict(l2_prefetch=128),
    # the smem ring at other geometries (8-bit sides have no register prefetch: 48 words)
    "ring_s3": dict(prefetch=True, target_warps=4, min_ctas_per_sm=2, smem_stages=3,
                    early_prefetch=True, table_lookahead=False, tile_bases=True),
    "ring_s4": dict(prefetch=True, target_warps=4, min_ctas_per_sm=2, smem_stages=4,
                    early_prefetch=True, table_lookahead=False, tile_bases=True),
    "ring_w8c1": dict(prefetch=True, target_warps=8, min_ctas_per_sm=1, smem_stages=4,
                      early_prefetch=True, table_lookahead=False, tile_bases=True),
    "ring_w8c1_s3": dict(prefetch=True, target_warps=8, min_ctas_per_sm=1, smem_stages=3,
                         early_prefetch=True, table_lookahead=False, tile_bases=True),
    "ring_s2": dict(prefetch=True, target_warps=4, min_ctas_per_sm=2, smem_stages=2,
                    early_prefetch=True, table_lookahead=False, tile_bases=True),
    "ring_w4c1": dict(prefetch=True, target_warps=4, min_ctas_per_sm=1, smem_stages=4,
                      early_prefetch=True, table_lookahead=False, tile_bases=True),
    # PRMT-addressed interleaved tables (4/8-bit sides, session 6); K8V8 needs 129
    # registers with them (1 CTA of 8 warps per SM), hence also 4 warps x 3 CTAs
    "pl": dict(prmt_lut=True),
    "pl_w4c3": dict(prmt_lut=True, target_warps=4, min_ctas_per_sm=3),
    # the pair tables where prmt_lut ships (A/B against the default before 2026-12-07)
    "nopl": dict(prmt_lut=False),
}


#: Names of decode.SPEED_CANDIDATES per bit width, repeated here so that building the case
#: list never imports cutlass (pytest collects tests/gpu next to the compile tests, which
#: must configure CuTeDSL's environment before its first import); the compile test checks
#: both agree.
CANDIDATE_NAMES = {4: ("regpf", "regpf_early", "ring_notb", "nopl", "w6", "tp", "w6tp"),
                   2: ("early", "ring", "ring_early", "pl_w4tb", "pl_w6tp")}
#: Candidates added after the case list was first run on a GPU: their cases go after every
#: other case, so the earlier ones keep the seeds (case index) they passed with.
LATE_CANDIDATES = frozenset({"w6", "tp", "w6tp", "pl_w6tp"})


def config_key(case):
    return (case["kb"], case["vb"], case["D"], case["G"], case["qlen"], bool(case.get("fp16")),
            case.get("rotq", True), case.get("candidate"),
            tuple(sorted(case.get("knobs", {}).items())))


def run_checks(workers: int):
    cases = correctness_cases()
    groups: dict = {}
    for c in cases:
        groups.setdefault(config_key(c), []).append(c)
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(groups))) as pool:
        out = []
        for res in pool.imap_unordered(check_group, list(groups.values())):
            out += res
    order = {c["name"]: i for i, c in enumerate(cases)}
    return sorted(out, key=lambda r: order[r["name"]])


# --------------------------------------------------------------------------- timing
_FLUSH = None


def flush_l2():
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    _FLUSH.zero_()


def time_fn(fn, reps=20, warmup=3):
    """Median of per-call CUDA-event times (µs), L2 flushed before every call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        flush_l2()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    return statistics.median(ts)


def graph_of(fn):
    """Capture fn into a CUDA graph (warm-up on a side stream first); returns replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def gtime(fn, reps=20):
    """GPU time of fn replayed from a CUDA graph (no host launch overhead), µs."""
    return time_fn(graph_of(fn), reps=reps)


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_fn(lambda: b.copy_(a), reps=10)
    return 2 * a.numel() / us / 1e3  # GB/s


def old_path_decode(dec, q, kc, vc, kn, vn, bt, seq, codec, scale):
    """The op as it was before the rotations moved into the kernels (same-run baseline):
    cuBLAS GEMM query rotation, kernel, combine to fp32, fp32 GEMM un-rotation + cast."""
    from fa4_tq.kernels import decode_combine
    from fa4_tq.kernels.rotation import apply_rotation, rotation_matrix

    b, ql, hq, d = q.shape
    hkv = kc.shape[2]
    cfg = dec.DecodeConfig.for_problem(codec.k_bits, codec.v_bits, d, hq // hkv, ql,
                                       rotate_query=False)
    ns = dec.choose_num_splits(b, hkv, bt.shape[1] * kc.shape[1], cfg)
    q_rot = apply_rotation(q, rotation_matrix(codec.k_signs))
    o_part = torch.empty(ns, b, ql, hq, d, dtype=torch.float32, device=q.device)
    l_part = torch.empty(ns, b, ql, hq, dtype=torch.float32, device=q.device)
    dec.get_compiled(cfg)(q_rot, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                          codec.k_signs, o_part, l_part, scale * dec.LOG2E, -1, 0)
    o_rot = torch.empty(b, ql, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, hq, ql, dtype=torch.float32, device=q.device)
    decode_combine.combine(o_part, l_part, o_rot, lse)
    out = torch.empty_like(q)
    out.copy_(apply_rotation(o_rot, rotation_matrix(codec.v_signs, inverse=True)))
    return out, lse


def random_packed_cache(kb: int, vb: int, nblk: int, bs: int, hkv: int, d: int):
    """Random codes and norms in [0.5, 1.5) for a timing run (uniform codes: every LUT entry
    is used) and the codec whose codebooks/signs decode them."""
    from fa4_tq.codec import TQCodec

    codec = TQCodec(d, kb, vb, seed=0).to("cuda")
    kc = torch.randint(0, 256, (nblk, bs, hkv, d * kb // 8), dtype=torch.uint8, device="cuda")
    vc = torch.randint(0, 256, (nblk, bs, hkv, d * vb // 8), dtype=torch.uint8, device="cuda")
    kn = (torch.rand(nblk, bs, hkv, device="cuda") + 0.5).to(torch.bfloat16)
    vn = (torch.rand(nblk, bs, hkv, device="cuda") + 0.5).to(torch.bfloat16)
    return codec, kc, vc, kn, vn


def bench(results, lengths=(8192, 32768, 131072), batches=(1, 8, 32), old=True,
          sweep=False, nopf=False, candidates=("early", "ring", "ring_early"),
          bits=(4, 2, 8), raw=True, pairs=(), pair_knobs=(), pdl=False):
    from fa4_tq.kernels import decode as dec
    import torch.nn.functional as F

    try:
        from flash_attn.cute.interface import flash_attn_func
    except Exception as exc:  # reported in the table
        flash_attn_func = None
        results["fa4_import_error"] = repr(exc)
    hq, hkv, d, bs = 32, 8, 128, 16
    copy_gbs = copy_bandwidth()
    results["copy_GBps"] = copy_gbs
    print(f"\ndevice copy bandwidth: {copy_gbs:.0f} GB/s (read+write)")
    print("full = the op with both rotations (now inside the kernels), raw = no rotations, "
          "old = former path (GEMM rotations, fp32 combine); ratios = min(sdpa, fa4) / full")
    rows = []
    results["bench"] = rows
    scale = 1.0 / math.sqrt(d)
    for L in lengths:
        for B in batches:
            row = dict(L=L, B=B)
            q = torch.randn(B, 1, hq, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, L, hkv, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, L, hkv, d, device="cuda", dtype=torch.bfloat16)
            kt, vt, qt = k.transpose(1, 2), v.transpose(1, 2), q.transpose(1, 2)
            try:
                row["sdpa_us"] = gtime(lambda: F.scaled_dot_product_attention(
                    qt, kt, vt, enable_gqa=True))
            except Exception as exc:
                row["sdpa_err"] = repr(exc)[:200]
            if flash_attn_func is not None:
                try:
                    row["fa4_us"] = gtime(lambda: flash_attn_func(q, k, v, causal=True))
                except Exception as exc:
                    row["fa4_err"] = repr(exc)[:200]
            del k, v, kt, vt
            nblk = B * L // bs
            bt = torch.randperm(nblk, device="cuda").to(torch.int32).view(B, L // bs)
            seq = torch.full((B,), L, dtype=torch.int32, device="cuda")
            for kb in bits:
                codec, kc, vc, kn, vn = random_packed_cache(kb, kb, nblk, bs, hkv, d)
                packed = B * L * hkv * (2 * d * kb // 8 + 4)
                for tag, rot in (("full", True), ("raw", False))[:2 if raw else 1]:
                    try:
                        fn = lambda: dec.decode_cuda(  # noqa: E731
                            q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                            codec.k_signs, codec.v_signs, scale, True, -1, -1, rot, rot,
                            num_splits=0)
                        us = gtime(fn)
                        row[f"K{kb}V{kb}_{tag}_us"] = us
                        if tag == "full":
                            row[f"K{kb}V{kb}_GBps"] = packed / us / 1e3
                    except Exception as exc:
                        row[f"K{kb}V{kb}_{tag}_err"] = repr(exc)[:300]
                if pdl:  # the combine as a programmatic dependent launch, same data
                    try:
                        def run_pdl(flag):
                            return dec.decode_cuda(
                                q, kc, vc, kn, vn, bt, seq, codec.k_codebook,
                                codec.v_codebook, codec.k_signs, codec.v_signs, scale, True,
                                -1, -1, True, True, num_splits=0, combine_pdl=flag)
                        a, b = run_pdl(False), run_pdl(True)
                        holder = {}
                        rep = graph_of(lambda: holder.__setitem__("o", run_pdl(True)))
                        rep()
                        torch.cuda.synchronize()
                        # same kernels and split count: must be bit-identical, eager and graph
                        same = all(torch.equal(x, y) for x, y in
                                   ((a[0], b[0]), (a[1], b[1]), (a[0], holder["o"][0]),
                                    (a[1], holder["o"][1])))
                        row[f"K{kb}V{kb}_pdl_equal"] = same
                        row[f"K{kb}V{kb}_pdl_us"] = gtime(lambda: run_pdl(True))
                        row[f"K{kb}V{kb}_nopdl_us"] = gtime(lambda: run_pdl(False))
                    except Exception as exc:
                        row[f"K{kb}V{kb}_pdl_err"] = repr(exc)[:300]
                    print(f"    L={L} B={B} K{kb}V{kb} pdl: equal="
                          f"{row.get(f'K{kb}V{kb}_pdl_equal')} "
                          f"{row.get(f'K{kb}V{kb}_pdl_err', '')}")
                for cname in candidates:  # opt-in tunings, same data, same run
                    if cname not in dec.SPEED_CANDIDATES.get(kb, {}):
                        continue
                    try:
                        ccfg = dec.candidate_config(kb, d, hq // hkv, 1, cname)
                        row[f"K{kb}V{kb}_{cname}_us"] = gtime(lambda: dec.decode_cuda(
                            q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                            codec.k_signs, codec.v_signs, scale, True, -1, -1, True, True,
                            num_splits=0, config=ccfg))
                        row[f"K{kb}V{kb}_{cname}_splits"] = dec.choose_num_splits(
                            B, hkv, L, ccfg)
                    except Exception as exc:
                        row[f"K{kb}V{kb}_{cname}_err"] = repr(exc)[:300]
                if old:
                    try:
                        row[f"K{kb}V{kb}_old_us"] = gtime(lambda: old_path_decode(
                            dec, q, kc, vc, kn, vn, bt, seq, codec, scale))
                    except Exception as exc:
                        row[f"K{kb}V{kb}_old_err"] = repr(exc)[:300]
                if nopf and kb in (4, 2):  # the run-1 path (no prefetch, 8 warps)
                    try:
                        cfg0 = dec.DecodeConfig(kb, kb, d, hq // hkv, 1, prefetch=False,
                                                rotate_query=False)
                        row[f"K{kb}V{kb}_nopf_us"] = gtime(lambda: dec.decode_cuda(
                            q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                            codec.k_signs, codec.v_signs, scale, True, -1, -1, False, False,
                            num_splits=0, config=cfg0), reps=10)
                    except Exception as exc:
                        row[f"K{kb}V{kb}_nopf_err"] = repr(exc)[:300]
                if sweep:
                    sw = {}
                    for ns in (1, 2, 4, 8, 16, 24, 33, 48, 66, 132):
                        try:
                            sw[ns] = round(gtime(lambda: dec.decode_cuda(
                                q, kc, vc, kn, vn, bt, seq, codec.k_codebook,
                                codec.v_codebook, codec.k_signs, codec.v_signs, scale, True,
                                -1, -1, False, False, num_splits=ns), reps=8), 1)
                        except Exception as exc:
                            sw[ns] = repr(exc)[:100]
                    row[f"K{kb}V{kb}_split_sweep_us"] = sw
                if kb == 4 and B == 8 and L == 8192:  # graph replay == eager (capture-safe)
                    try:
                        eager = dec.decode_cuda(q, kc, vc, kn, vn, bt, seq, codec.k_codebook,
                                                codec.v_codebook, codec.k_signs, codec.v_signs,
                                                scale, True, -1, -1, True, True)
                        holder = {}

                        def cap():
                            holder["o"] = dec.decode_cuda(
                                q, kc, vc, kn, vn, bt, seq, codec.k_codebook,
                                codec.v_codebook, codec.k_signs, codec.v_signs, scale, True,
                                -1, -1, True, True)
                        rep = graph_of(cap)
                        rep()
                        torch.cuda.synchronize()
                        results["graph_replay_equal"] = bool(
                            torch.equal(holder["o"][0], eager[0])
                            and torch.equal(holder["o"][1], eager[1]))
                        # the fused rotations against the former GEMM path (same kernel)
                        o_old, _ = old_path_decode(dec, q, kc, vc, kn, vn, bt, seq, codec,
                                                   scale)
                        results["fused_vs_old_rel"] = float(
                            (eager[0].double() - o_old.double()).norm() / o_old.double().norm())
                    except Exception as exc:
                        results["graph_replay_equal"] = repr(exc)[:300]
                    print(f"    graph replay == eager: {results['graph_replay_equal']}; "
                          f"fused vs old path rel: {results.get('fused_vs_old_rel')}")
                del kc, vc, kn, vn
            for kb, vb in pairs:  # any (k_bits, v_bits): shipped vs knob sets, same data
                codec, kc, vc, kn, vn = random_packed_cache(kb, vb, nblk, bs, hkv, d)
                shipped = dec.DecodeConfig.for_problem(kb, vb, d, hq // hkv, 1)
                for kname, knobs in (("shipped", {}),) + tuple(PAIR_KNOBS.items()):
                    if kname != "shipped" and kname not in pair_knobs:
                        continue
                    try:
                        cfg = dataclasses.replace(shipped, **knobs)
                    except (ValueError, NotImplementedError):
                        continue  # knob not applicable to this pair's shipped config
                    if kname != "shipped" and cfg == shipped:
                        continue
                    try:
                        fn = lambda: dec.decode_cuda(  # noqa: E731
                            q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                            codec.k_signs, codec.v_signs, scale, True, -1, -1, True, True,
                            num_splits=0, config=cfg)
                        # agreement at the shipped kernel's split count (different split
                        # boundaries round P to bf16 differently: ~2e-3 apart on this data)
                        o, lse = dec.decode_cuda(
                            q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                            codec.k_signs, codec.v_signs, scale, True, -1, -1, True, True,
                            num_splits=dec.choose_num_splits(B, hkv, L, shipped), config=cfg)
                        if kname == "shipped":
                            ref = (o.double(), lse)
                        else:  # agreement with the device-tested shipped kernel, same data
                            rel = float((o.double() - ref[0]).norm() / ref[0].norm())
                            ok = (not torch.isnan(o).any() and rel <= 1e-3
                                  and float((lse - ref[1]).abs().max()) <= 1e-3)
                            row[f"K{kb}V{vb}_{kname}_agree"] = ok
                            if not ok:  # still timed: other streams/splits round P
                                # differently (~2.5e-3, see docs/decode-notes.md §8); the
                                # float64 tests are the correctness gate
                                row[f"K{kb}V{vb}_{kname}_err"] = f"disagrees: rel {rel:.2e}"
                                if rel > 5e-3 or torch.isnan(o).any():
                                    continue
                        row[f"K{kb}V{vb}_{kname}_us"] = gtime(fn)
                        if kname == "shipped":  # packed bytes read per second
                            row[f"K{kb}V{vb}_GBps"] = (B * L * hkv * (d * (kb + vb) // 8 + 4)
                                                       / row[f"K{kb}V{vb}_{kname}_us"] / 1e3)
                    except Exception as exc:
                        row[f"K{kb}V{vb}_{kname}_err"] = repr(exc)[:300]
                del kc, vc, kn, vn
            rows.append(row)
            torch.cuda.empty_cache()
            _print_bench_row(row)
            out = os.environ.get("OUT")
            if out:  # partial results survive a timeout
                with open(os.path.join(out, "decode_probe_bench.json"), "w") as f:
                    json.dump(rows, f, indent=1, default=str)


def _print_bench_row(r):
    base = min(x for x in (r.get("sdpa_us"), r.get("fa4_us")) if x is not None) \
        if (r.get("sdpa_us") or r.get("fa4_us")) else None
    parts = [f"L={r['L']:>6} B={r['B']:>2}",
             f"sdpa={r.get('sdpa_us', float('nan')):7.1f}",
             f"fa4={r.get('fa4_us', float('nan')):7.1f}"]
    for kb in (4, 2, 8):
        if f"K{kb}V{kb}_full_us" not in r and f"K{kb}V{kb}_full_err" not in r:
            continue
        full = r.get(f"K{kb}V{kb}_full_us")
        if full is None:
            parts.append(f"K{kb}V{kb}=ERR")
            continue
        raw = r.get(f"K{kb}V{kb}_raw_us", float("nan"))
        old = r.get(f"K{kb}V{kb}_old_us", float("nan"))
        sp = f"{base / full:4.2f}x" if base else "?"
        cands = " ".join(f"{k[len(f'K{kb}V{kb}_'):-3]}={v:6.1f}" for k, v in r.items()
                         if k.startswith(f"K{kb}V{kb}_") and k.endswith("_us")
                         and k[len(f"K{kb}V{kb}_"):-3] not in ("full", "raw", "old", "nopf",
                                                                "split_sweep"))
        parts.append(f"K{kb}V{kb} full={full:6.1f} ({sp}, old {base / old if base else 0:4.2f}x)"
                     f" raw={raw:6.1f} old={old:6.1f} {cands}")
    pair_keys = sorted({k.split("_")[0] for k in r if k.endswith("_shipped_us")})
    for pk in pair_keys:
        ship = r[f"{pk}_shipped_us"]
        knobs = " ".join(f"{k[len(pk) + 1:-3]}={v:6.1f}" for k, v in r.items()
                         if k.startswith(pk + "_") and k.endswith("_us")
                         and not k.endswith("_shipped_us"))
        gbps = r.get(f"{pk}_GBps")
        gb = f" {gbps:5.0f} GB/s" if gbps else ""
        parts.append(f"{pk} shipped={ship:6.1f} ({base / ship if base else 0:4.2f}x{gb}) {knobs}")
    print(" | ".join(parts), flush=True)
    for k, v in r.items():
        if k.endswith("_err") or k.endswith("sweep_us"):
            print(f"    {k}: {v}")


def split_sweep(results, lengths=(8192, 32768), batches=(1,)):
    """Time the full op (both rotations, as shipped) at fixed split counts, shipped config
    K4V4 and K2V2, Hq=32 Hkv=8 D=128; then refit the heuristic:
    for every (cta_overhead_tiles, min_tiles_per_cta) on a grid, the measured time of the
    split count it would pick, summed over rows relative to each row's best. The split
    counts timed are every pick of that grid plus a few around them, so each pick has a
    measurement."""
    from fa4_tq.kernels import decode as dec

    hq, hkv, d, bs = 32, 8, 128, 16
    scale = 1.0 / math.sqrt(d)
    grid = [(oh, mt) for oh in (8, 12, 16, 20, 24, 32) for mt in (8, 16, 24, 32, 48)]
    rows = []
    results["split_sweep"] = rows
    for L in lengths:
        for B in batches:
            q = torch.randn(B, 1, hq, d, device="cuda", dtype=torch.bfloat16)
            nblk = B * L // bs
            bt = torch.randperm(nblk, device="cuda").to(torch.int32).view(B, L // bs)
            seq = torch.full((B,), L, dtype=torch.int32, device="cuda")
            for kb in (4, 2):
                codec, kc, vc, kn, vn = random_packed_cache(kb, kb, nblk, bs, hkv, d)
                for cname in ("shipped",):
                    cfg = dec.DecodeConfig.for_problem(kb, kb, d, hq // hkv, 1)
                    picks = {dec.choose_num_splits(B, hkv, L, cfg, cta_overhead_tiles=oh,
                                                   min_tiles_per_cta=mt) for oh, mt in grid}
                    counts = sorted(picks | {max(1, p + e) for p in picks for e in (-4, 4)}
                                    | {1, 8, 16, 32, 48, 64})
                    meas = {}
                    for ns in counts:
                        try:
                            meas[ns] = round(gtime(lambda: dec.decode_cuda(
                                q, kc, vc, kn, vn, bt, seq, codec.k_codebook, codec.v_codebook,
                                codec.k_signs, codec.v_signs, scale, True, -1, -1, True, True,
                                num_splits=ns, config=cfg), reps=8), 1)
                        except Exception as exc:
                            meas[ns] = repr(exc)[:100]
                    ok = {k: v for k, v in meas.items() if isinstance(v, float)}
                    best = min(ok, key=ok.get) if ok else None
                    row = dict(L=L, B=B, kv=f"K{kb}V{kb}", config=cname,
                               shipped_pick=dec.choose_num_splits(B, hkv, L, cfg),
                               best=best, us=meas,
                               picks={f"{oh},{mt}": dec.choose_num_splits(
                                   B, hkv, L, cfg, cta_overhead_tiles=oh, min_tiles_per_cta=mt)
                                   for oh, mt in grid})
                    rows.append(row)
                    print(f"L={L} B={B} K{kb}V{kb} {cname}: heuristic {row['shipped_pick']} "
                          f"-> {ok.get(row['shipped_pick'])} us; best {best} -> "
                          f"{ok.get(best)} us; {meas}", flush=True)
                del kc, vc, kn, vn
            torch.cuda.empty_cache()
    # refit: total (time at the grid point's pick / row best) over rows, per config
    for cname in ("shipped",):
        score = {}
        for oh, mt in grid:
            tot = 0.0
            for r in (r for r in rows if r["config"] == cname):
                ok = {k: v for k, v in r["us"].items() if isinstance(v, float)}
                pick = r["picks"][f"{oh},{mt}"]
                if pick not in ok or not ok:
                    tot = float("inf")
                    break
                tot += ok[pick] / min(ok.values())
            score[(oh, mt)] = tot
        fit = min(score, key=score.get)
        cur = score.get((dec.CTA_OVERHEAD_TILES, dec.MIN_TILES_PER_CTA))
        results[f"split_refit_{cname}"] = dict(best=fit, score=score[fit], current=cur)
        print(f"refit ({cname}): cta_overhead_tiles={fit[0]} min_tiles_per_cta={fit[1]} "
              f"sum(t/t_best)={score[fit]:.3f} (current {dec.CTA_OVERHEAD_TILES}/"
              f"{dec.MIN_TILES_PER_CTA}: {cur:.3f}, {sum(1 for r in rows if r['config'] == cname)}"
              f" rows)")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "decode_split_sweep.json"), "w") as f:
            json.dump(rows, f, indent=1, default=str)


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--no-old", action="store_true", help="skip the former-path baseline")
    ap.add_argument("--sweep", action="store_true", help="split-count sweep per row")
    ap.add_argument("--nopf", action="store_true", help="also time the no-prefetch config")
    ap.add_argument("--candidates", default="early,ring,ring_early",
                    help="opt-in tunings (decode.SPEED_CANDIDATES) timed next to the shipped "
                         "config; empty = none")
    ap.add_argument("--bits", default="4,2,8", help="K=V bit widths to time")
    ap.add_argument("--no-raw", action="store_true", help="skip the no-rotation timing")
    ap.add_argument("--pairs", default="", help="(k_bits, v_bits) pairs as digits, e.g. "
                    "42,24,88: the shipped config and the --pair-knobs sets (PAIR_KNOBS)")
    ap.add_argument("--pair-knobs", default=",".join(PAIR_KNOBS))
    ap.add_argument("--pdl", action="store_true",
                    help="also time the op with the combine as a programmatic dependent "
                         "launch (decode_cuda(combine_pdl=True)) and check it bit-identical")
    ap.add_argument("--split-sweep", action="store_true",
                    help="only the split-count sweep of the full op (with rotations) at B=1 "
                         "and a refit of the heuristic's two constants; uses --lengths")
    ns = ap.parse_args()
    results = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__)
    print(f"device: {results['device']}, torch {results['torch']}")
    t0 = time.time()
    if not ns.no_check:
        checks = run_checks(ns.workers)
        results["checks"] = checks
        print(f"\ncorrectness ({time.time() - t0:.0f}s):")
        for r in checks:
            if "error" in r:
                print(f"  FAIL {r['name']}: {r['error']}")
                print("      " + r.get("tb", "").replace("\n", "\n      ")[-900:])
            else:
                print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['name']:<44} rel={r['rel_err']:.2e} "
                      f"lse={r['lse_err']:.1e} nan={r['nan']} inf_ok={r['inf_ok']} "
                      f"zero_ok={r['zero_ok']} first={r['first_call_s']}s")
        print(f"  {sum(r['ok'] for r in checks)}/{len(checks)} passed")
    if ns.split_sweep:
        t1 = time.time()
        split_sweep(results, tuple(int(x) for x in ns.lengths.split(",")),
                    tuple(int(x) for x in ns.batches.split(",")))
        print(f"split sweep took {time.time() - t1:.0f}s")
    elif not ns.no_bench:
        t1 = time.time()
        bench(results, tuple(int(x) for x in ns.lengths.split(",")),
              tuple(int(x) for x in ns.batches.split(",")), old=not ns.no_old,
              sweep=ns.sweep, nopf=ns.nopf,
              candidates=tuple(x for x in ns.candidates.split(",") if x),
              bits=tuple(int(x) for x in ns.bits.split(",") if x), raw=not ns.no_raw,
              pairs=tuple((int(x[0]), int(x[1])) for x in ns.pairs.split(",") if x),
              pair_knobs=tuple(x for x in ns.pair_knobs.split(",") if x), pdl=ns.pdl)
        print(f"bench took {time.time() - t1:.0f}s")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "decode_probe.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
