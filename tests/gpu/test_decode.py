"""GPU correctness of the split-K decode kernel against the float64 reference over the same
packed cache (fresh random inputs, NaN-poisoned outputs, NaN never passes, rel. err <= 1e-2).

The cases (all nine bit pairs at D=128 for q_len 1 and 4, mixed lengths incl. 0, 1, ~5000,
block sizes 16..128, windows, D=64/256, GQA 1/5/16, q_len up to 8, fp16, no rotations, fixed
split counts, the torch.ops entry point, each rotation flag alone — the query rotation runs
inside the decode kernel and the output un-rotation inside the combine — and the opt-in speed
candidates of decode.SPEED_CANDIDATES: the alternatives to each shipped prefetching config —
register prefetch vs smem cp.async ring, first-tile prefetch before the rotation, tile bases) live in microbench/decode_probe.py, which also runs them on the device in
parallel processes. Below: the candidates against the shipped kernel on the same inputs,
under CUDA-graph capture, and their compile cache."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from microbench.decode_probe import check_case, correctness_cases  # noqa: E402

CASES = correctness_cases()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decode_matches_reference(case):
    r = check_case(case)
    assert "error" not in r, r.get("tb", r.get("error"))
    assert not r["nan"], r
    assert r["inf_ok"] and r["zero_ok"], r
    assert r["rel_err"] <= 1e-2, r
    assert r["lse_err"] <= r["lse_tol"], r  # 1e-2, or the bf16-operand bound for large logits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_unsupported_raises_before_launch():
    from fa4_tq.kernels.decode import DecodeConfig

    with pytest.raises(NotImplementedError):
        DecodeConfig(4, 4, 128, 32, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kb,cname", [(4, "regpf"), (4, "regpf_early"), (4, "ring_notb"),
                                     (2, "ring"), (2, "early")])
def test_candidate_agrees_with_shipped_and_replays_in_a_graph(kb, cname):
    """Same inputs, same split count: the candidate equals the shipped kernel up to the fp32
    summation order of its streams (rel. <= 1e-3); a CUDA-graph replay of the candidate is
    bit-equal to its eager call (no allocation or sync in the steady state); the second
    call does not compile again (config = compile key)."""
    from microbench.decode_probe import build_case_inputs
    from fa4_tq.kernels import decode as dec

    case = dict(kb=kb, vb=kb, D=128, G=4, Hkv=2, qlen=1, bs=16, lens=[4999, 16, 2, 129, 5],
                seed=77)
    x = build_case_inputs(case)
    c = x["codec"]
    args = (x["q"], x["kc"], x["vc"], x["kn"], x["vn"], x["bt"], x["seq"], c.k_codebook,
            c.v_codebook, c.k_signs, c.v_signs, 1.0 / 128 ** 0.5, True, -1, -1, True, True)
    cfg = dec.candidate_config(kb, 128, 4, 1, cname)
    ref, ref_lse = dec.decode_cuda(*args, num_splits=5)
    out, lse = dec.decode_cuda(*args, num_splits=5, config=cfg)
    n_compiled = len(dec._COMPILED)
    rel = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert not torch.isnan(out).any() and rel <= 1e-3, rel
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert float((lse[fin] - ref_lse[fin]).abs().max()) <= 1e-3

    o_g = torch.full_like(out, float("nan"))
    l_g = torch.full_like(lse, float("nan"))
    dec.decode_cuda(*args, num_splits=5, config=cfg, out=o_g, lse=l_g)  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.decode_cuda(*args, num_splits=5, config=cfg, out=o_g, lse=l_g)
    o_g.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_g, out) and torch.equal(l_g, lse)
    assert len(dec._COMPILED) == n_compiled


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kb,vb,qlen", [(4, 4, 1), (2, 2, 1), (8, 4, 4)])
def test_combine_pdl_is_bit_identical_eager_and_in_a_graph(kb, vb, qlen):
    """The combine launched as a programmatic dependent (it waits in griddepcontrol.wait for
    the split-K grid) gives the same bits as the plain launch, eagerly and on graph replay,
    and the float64 reference's accuracy (checked through the plain launch's case)."""
    from microbench.decode_probe import build_case_inputs
    from fa4_tq.kernels import decode as dec

    case = dict(kb=kb, vb=vb, D=128, G=4, Hkv=2, qlen=qlen, bs=16,
                lens=[4999, 16, 2, 129, 0], seed=91)
    x = build_case_inputs(case)
    c = x["codec"]
    args = (x["q"], x["kc"], x["vc"], x["kn"], x["vn"], x["bt"], x["seq"], c.k_codebook,
            c.v_codebook, c.k_signs, c.v_signs, 1.0 / 128 ** 0.5, True, -1, -1, True, True)
    ref, ref_lse = dec.decode_cuda(*args, num_splits=7, combine_pdl=False)
    out = torch.full_like(ref, float("nan"))
    lse = torch.full_like(ref_lse, float("nan"))
    dec.decode_cuda(*args, num_splits=7, combine_pdl=True, out=out, lse=lse)
    torch.cuda.synchronize()
    assert not torch.isnan(ref).any()
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.decode_cuda(*args, num_splits=7, combine_pdl=True, out=out, lse=lse)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
