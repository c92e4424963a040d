"""Device probe (session 3, docs/prefill-sm90-notes.md step 5): decode compute vs tile stores
vs SM clock/power. K4V4 S8K full pw2.
Variants (monkeypatched _decode): full (shipped), nostore (decode, XOR-fold, 1 store per
chunk group instead of out_per_in), storeonly (no lookups: store the code words), nodec, null.
nvidia-smi samples SM clock + power during each variant's 3 s loop. Monkeypatches this
process only. Run: source .devenv/setup.sh && python3 microbench/prefill_power_probe.py"""
import math, os, subprocess, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "microbench"))
import cutlass.cute as cute  # noqa
from cutlass import Int32  # noqa
from fa4_tq import reference  # noqa
from fa4_tq.kernels import prefill as P  # noqa
from fa4_tq.kernels import prefill_sm90 as S  # noqa
from fa4_tq.kernels import dequant as dq  # noqa
import prefill_probe as PP  # noqa

ORIG_DECODE, ORIG_ISSUE = S.PrefillSm90._decode, S.PrefillSm90._issue


def make_decode(mode):
    def _decode(self, ctx, i, is_k, norm2, tile_addr):
        if mode == "nodec":
            return None
        cfg = self.cfg
        bits = cfg.k_bits if is_k else cfg.v_bits
        reps = cfg.k_lut_replicas if is_k else cfg.v_lut_replicas
        lut_lane = ctx.lutk_lane if is_k else ctx.lutv_lane
        nbytes = cfg.k_row_bytes() if is_k else cfg.v_row_bytes()
        src = (ctx.stage_k_row if is_k else ctx.stage_v_row) + (i % cfg.stage_slots) * ctx.slot_bytes
        out_per_in = 16 // bits
        nchunks = self._chunks(nbytes, is_k)
        for c in range(nchunks):
            words = dq.ld_shared_v4(src + c * self.tile_n * 16)
            if mode == "storeonly":
                outs = [w for w in words for _ in range(out_per_in)]
            else:
                outs = []
                for w in words:
                    outs.extend(dq.decode_word(w, lut_lane, norm2, bits, reps))
            if mode == "nostore":
                acc = [outs[j] for j in range(4)]
                for k in range(1, out_per_in):
                    acc = [acc[j] ^ outs[4 * k + j] for j in range(4)]
                off = dq.swizzled_offset(ctx.row, c * out_per_in, self.tile_n)
                dq.st_shared_v4(tile_addr + off, *acc)
            else:
                for k in range(out_per_in):
                    off = dq.swizzled_offset(ctx.row, c * out_per_in + k, self.tile_n)
                    dq.st_shared_v4(tile_addr + off, outs[4 * k], outs[4 * k + 1],
                                    outs[4 * k + 2], outs[4 * k + 3])
    return _decode


def noissue(self, ctx, i, is_k):
    cute.arch.cp_async_commit_group()
    return Int32(0)


def main():
    from flash_attn.cute.interface import flash_attn_func
    print(torch.cuda.get_device_name(), flush=True)
    kb = vb = 4
    causal = False
    seqlen, hq, hkv, d = 8192, 32, 8, 128
    gen = torch.Generator().manual_seed(44)
    codec, kc, vc, kn, vn, bt, seqused = PP.build_cache([seqlen], hkv, d, kb, vb, 128, gen)
    q = torch.randn(seqlen, hq, d, device="cuda", dtype=torch.bfloat16)
    cuq = PP.cu([seqlen])
    scale = 1.0 / math.sqrt(d)
    k16, v16 = reference.dequantize(kc, vc, kn, vn, bt, cuq, codec.k_codebook, codec.v_codebook,
                                    codec.k_signs, codec.v_signs, False, seqlen, torch.bfloat16)
    qb = q.view(1, seqlen, hq, d)
    kz, vz = torch.zeros_like(k16), torch.zeros_like(v16)
    fa4 = lambda: flash_attn_func(qb, k16.view(1, seqlen, hkv, d), v16.view(1, seqlen, hkv, d),  # noqa
                                  softmax_scale=scale, causal=causal)
    fa4z = lambda: flash_attn_func(qb, kz.view(1, seqlen, hkv, d), vz.view(1, seqlen, hkv, d),  # noqa
                                   softmax_scale=scale, causal=causal)
    args = (q, kc, vc, kn, vn, cuq, bt, seqused, codec.k_codebook, codec.v_codebook,
            codec.k_signs, codec.v_signs, seqlen, scale, causal, -1, -1, False, False)
    cfg = S.make_config(128, kb, vb, 4, causal, False, False, False, producer_wgs=2)

    def variant(mode, issue=True):
        cache = {}

        def run():
            S.PrefillSm90._decode = ORIG_DECODE if mode == "full" else make_decode(mode)
            S.PrefillSm90._issue = ORIG_ISSUE if issue else noissue
            try:
                return P._run_kernel(S.PrefillSm90, cache, cfg, -1, -1, *args[:12], scale,
                                     False, False, None, None)
            finally:
                S.PrefillSm90._decode, S.PrefillSm90._issue = ORIG_DECODE, ORIG_ISSUE
        return run

    fns = [("FA4", fa4), ("FA4-zeroKV", fa4z), ("full", variant("full")),
           ("nostore", variant("nostore")), ("storeonly", variant("storeonly")),
           ("nodec", variant("nodec")), ("null", variant("nodec", issue=False))]
    for _, f in fns:
        f()
    torch.cuda.synchronize()
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw",
                            "--format=csv,noheader,nounits", "-lms", "100"],
                           stdout=subprocess.PIPE, text=True)
    spans = []
    for name, f in fns:
        t = PP.bench_fn(f)
        t0 = time.time()
        while time.time() - t0 < 3.0:
            for _ in range(20):
                f()
            torch.cuda.synchronize()
        spans.append((name, t, t0 + 0.5, time.time()))
    time.sleep(0.3)
    smi.terminate()
    lines = smi.communicate()[0].strip().splitlines()
    import datetime
    samples = []
    for ln in lines:
        try:
            ts, clk, pw = [x.strip() for x in ln.split(",")]
            tt = datetime.datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((tt, float(clk), float(pw)))
        except Exception:  # noqa: BLE001
            pass
    # nvidia-smi timestamps are local wall time, like time.time()
    t_fa4 = spans[0][1]
    for name, t, a, b in spans:
        sel = [(c, p) for tt, c, p in samples if a <= tt <= b]
        clk = sum(c for c, _ in sel) / max(1, len(sel))
        pw = sum(p for _, p in sel) / max(1, len(sel))
        print(f"{name:12s} {t:.3f} ms  {t_fa4 / t:.3f}x FA4  sm_clock {clk:.0f} MHz  power "
              f"{pw:.0f} W  (n={len(sel)})", flush=True)


if __name__ == "__main__":
    main()
