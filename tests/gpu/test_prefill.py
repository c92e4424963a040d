"""GPU correctness of tqkv.prefill (PrefillSm90) against the float64 reference over the same
packed cache: fresh random inputs, NaN-poisoned kernel output/LSE buffers, rel. error <= 1e-2."""


import pytest
import torch

from fa4_tq import reference
from fa4_tq.kernels.prefill_candidates import SM90_LUT_CANDIDATES
from fa4_tq.testing import prefill_matrix, random_prefill_args, rel_error

pytestmark = pytest.mark.gpu

BITS = [(kb, vb) for kb in (2, 4, 8) for vb in (2, 4, 8)]


def _run(q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl=-1, wr=-1,
         qdtype=torch.bfloat16, rotate=True, unrotate=True, seed=0, register_lut=(None, None),
         producer_wgs=None, cluster_share=None, cluster_sides=None, **sm90_knobs):
    from fa4_tq.kernels.prefill import prefill_cuda
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("PrefillSm90 needs a Hopper GPU")
    args = random_prefill_args(q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal,
                               generator=torch.Generator().manual_seed(seed), qdtype=qdtype,
                               window=(wl, wr), rotate=rotate, unrotate=unrotate)
    q = args[0]
    kout = torch.full((q.shape[0], hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    klse = torch.full((hq, q.shape[0]), float("nan"), device="cuda")
    out, lse = prefill_cuda(*args, kernel_out=kout, kernel_lse=klse, register_lut=register_lut,
                            producer_wgs=producer_wgs, cluster_share=cluster_share,
                            cluster_sides=cluster_sides, **sm90_knobs)
    ref_o, ref_l = reference.prefill(*args, compute_dtype=torch.float64)
    assert out.dtype == qdtype and lse.dtype == torch.float32
    assert rel_error(out, ref_o) <= 1e-2
    assert not bool(torch.isnan(lse).any())
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_l))
    fin = torch.isfinite(ref_l)
    if bool(fin.any()):
        assert float((lse[fin] - ref_l[fin]).abs().max()) <= 2e-2


@pytest.mark.parametrize("cell", prefill_matrix(), ids=lambda c: c["id"])
def test_matrix(cell):
    """The issue's correctness matrix on PrefillSm90 (fa4_tq.testing.prefill_matrix: nine
    pairs x D 64/128 x GQA 1/4/8 x full/causal/window, lengths up to 4097, bs 16/128)."""
    _run(*cell["args"], seed=cell["seed"])


@pytest.mark.parametrize("kb,vb", BITS)
@pytest.mark.parametrize("causal", [False, True])
def test_all_bit_widths_d128_gqa4(kb, vb, causal):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, 16 if causal else 128, causal,
         seed=kb * 10 + vb)


@pytest.mark.parametrize("register_lut", [(True, True), (False, False), (True, False),
                                          (False, True)])
@pytest.mark.parametrize("kb,vb", [(4, 4), (2, 2), (4, 2)])
def test_lut_paths(kb, vb, register_lut):
    """Both decode paths (register LUT / shared-memory LUT) per side, causal and paged."""
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, 16, True, seed=kb + 3 * vb,
         register_lut=register_lut)


@pytest.mark.parametrize("kb,vb", [(4, 4), (2, 2), (8, 8), (4, 8), (2, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_non_default_producer_warpgroups(kb, vb, causal):
    """The producer-warpgroup count that is not the default for these bits (step 4): one
    K+V producer WG (384 threads) where two are the default, two (WG0 decodes K + Q TMA, WG3
    decodes V, 512 threads) elsewhere."""
    from fa4_tq.kernels.prefill_sm90 import default_producer_wgs
    pw = 3 - default_producer_wgs(128, kb, vb, False)
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, 128 if causal else 16, causal,
         seed=50 + kb * 10 + vb, producer_wgs=pw)


@pytest.mark.parametrize("kb,vb", [(4, 4), (2, 8), (8, 2)])
def test_d64(kb, vb):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 64, kb, vb, 16, True, seed=kb + vb)


def test_queries_that_see_no_key():
    _run([1, 17, 300], [1, 9, 1000], 8, 2, 128, 4, 4, 128, True, seed=3)


@pytest.mark.parametrize("wl,wr,causal", [(64, -1, True), (32, 16, False), (-1, 8, False)])
def test_sliding_window(wl, wr, causal):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, 4, 4, 48, causal, wl, wr, seed=5)


def test_mha_mqa_long_blocks():
    _run([700, 1], [2000, 3], 4, 4, 128, 4, 4, 256, False, seed=6)
    _run([130, 5], [300, 5], 8, 1, 128, 2, 4, 32, True, seed=7)


def test_fp16_and_no_rotation():
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 64, 2, 8, 32, False, qdtype=torch.float16,
         rotate=False, unrotate=False, seed=8)


def test_unsupported_cases_raise_before_launch():
    from fa4_tq.kernels.prefill import prefill_cuda
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("PrefillSm90 needs a Hopper GPU")
    q = torch.zeros(4, 2, 256, dtype=torch.bfloat16, device="cuda")
    kc = torch.zeros(1, 16, 2, 128, dtype=torch.uint8, device="cuda")
    kn = torch.zeros(1, 16, 2, dtype=torch.bfloat16, device="cuda")
    cb = torch.linspace(-1, 1, 16, device="cuda")
    s = torch.ones(256, device="cuda")
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device="cuda")  # noqa: E731
    args = (q, kc, kc, kn, kn, i32(0, 4), i32(0).view(1, 1), i32(4), cb, cb, s, s, 4, 0.1,
            False, -1, -1, True, True)
    with pytest.raises(NotImplementedError, match="sm80"):
        prefill_cuda(*args, backend="sm80")
    with pytest.raises(NotImplementedError, match="head_dim 256"):
        prefill_cuda(*args, backend="auto")


# ----------------------------------------------------------------- cluster_share=2 (step 5)
# 2-CTA clusters (query heads 2j, 2j+1 share each decoded K/V tile: each CTA decodes 64 rows
# and bulk-copies them into the peer). Default for K8V8/K4V8 (both sides) and K8V4 (K side);
# opt-in elsewhere. Varlen batches with several m_blocks per sequence, GQA 4 and 2, paged.

@pytest.mark.parametrize("kb,vb", [(4, 4), (2, 2), (8, 8), (4, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_cluster_share_pairs(kb, vb, causal):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, 16 if causal else 128, causal,
         seed=70 + kb * 10 + vb, producer_wgs=2, cluster_share=2)


def test_cluster_share_gqa2_long_and_rows_that_see_no_key():
    _run([700, 1], [2000, 3], 8, 4, 128, 4, 4, 256, False, seed=91, producer_wgs=2,
         cluster_share=2)
    _run([1, 17, 300], [1, 9, 1000], 4, 2, 128, 2, 2, 128, True, seed=92, producer_wgs=2,
         cluster_share=2)


def _identity_case(kb, vb, causal, seed):
    """Inputs of the bit-identity tests (skips off Hopper): varlen odd lengths, several
    m_blocks, GQA 4, paged (bs 16 causal, 128 full), no rotations (raw kernel outputs)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("PrefillSm90 needs a Hopper GPU")
    q_lens, k_lens, hq, hkv, bs = [1, 17, 300], [40, 17, 1000], 8, 2, 16 if causal else 128
    args = random_prefill_args(q_lens, k_lens, hq, hkv, 128, kb, vb, bs, causal,
                               generator=torch.Generator().manual_seed(seed),
                               rotate=False, unrotate=False)
    return q_lens, k_lens, hq, hkv, bs, args


def _assert_raw_outputs_equal(args, hq, knobs_a, knobs_b):
    """Run the kernel twice on the same inputs (NaN-poisoned raw output/LSE buffers) with two
    knob sets; both must write everything and agree bit for bit."""
    from fa4_tq.kernels.prefill import prefill_cuda
    q, d = args[0], args[0].shape[2]
    raw = []
    for knobs in (knobs_a, knobs_b):
        kout = torch.full((q.shape[0], hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
        klse = torch.full((hq, q.shape[0]), float("nan"), device="cuda")
        prefill_cuda(*args, kernel_out=kout, kernel_lse=klse, **knobs)
        raw.append((kout, klse))
    (o1, l1), (o2, l2) = raw
    assert not bool(torch.isnan(o1).any()) and not bool(torch.isnan(l1).any())
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.parametrize("kb,vb,causal,sides", [
    (4, 4, False, "k"), (4, 4, True, "v"), (8, 4, False, "k"), (2, 8, True, "v"),
    (8, 8, True, "kv"), (4, 8, False, "kv"), (2, 2, True, "k"), (8, 2, False, "v")])
def test_cluster_share_bit_identical_to_one_cta(kb, vb, causal, sides):
    """Sharing changes which CTA decodes a row, not the decoded values or the MMA order: the
    raw kernel output and LSE equal the cluster_share=1 kernel's bit for bit (varlen, several
    m_blocks, paged, NaN-poisoned buffers); and the shared build passes the reference check."""
    q_lens, k_lens, hq, hkv, bs, args = _identity_case(kb, vb, causal, 7 * kb + vb)
    _assert_raw_outputs_equal(args, hq, dict(producer_wgs=2, cluster_share=1),
                              dict(producer_wgs=2, cluster_share=2, cluster_sides=sides))
    _run(q_lens, k_lens, hq, hkv, 128, kb, vb, bs, causal, seed=3 * kb + vb, producer_wgs=2,
         cluster_share=2, cluster_sides=sides)


def test_cluster_share_unsupported_raises_before_launch():
    """Odd GQA ratio (a head pair would span two KV heads), one producer warpgroup, D=64."""
    for hq, hkv, d, pw in ((3, 1, 128, 2), (4, 4, 128, 2), (8, 2, 128, 1), (8, 2, 64, 2)):
        with pytest.raises(NotImplementedError, match="cluster_share=2"):
            _run([5], [9], hq, hkv, d, 4, 4, 16, False, producer_wgs=pw, cluster_share=2)


# ----------------------------------------------------------------- direct_loads (step 7)
DIRECT = [  # (kb, vb, causal, register_lut, num_stages, register_split)
    (4, 4, False, (True, True), 3, (200, 56)), (4, 4, True, (True, True), 3, (200, 56)),
    (2, 2, True, (None, None), 3, None), (2, 2, False, (None, None), 2, None),
    (4, 2, False, (None, None), 3, (200, 56)), (2, 4, True, (None, None), 3, (200, 56))]


@pytest.mark.parametrize("kb,vb,causal,lut,stages,split", DIRECT)
def test_direct_loads_bit_identical_to_staged(kb, vb, causal, lut, stages, split):
    """The staging-free producer changes where the code bytes travel through, not the decoded
    values or the MMA order: raw output and LSE equal the staged kernel's (same decode) bit
    for bit (varlen, odd lengths, paged, NaN-poisoned buffers); plus the reference check,
    including rows that see no key and a long MHA case with 256-token blocks."""
    q_lens, k_lens, hq, hkv, bs, args = _identity_case(kb, vb, causal, 5 * kb + vb)
    knobs = dict(direct_loads=True, num_stages=stages, register_split=split)
    base = dict(register_lut=lut, producer_wgs=2, cluster_share=1)
    _assert_raw_outputs_equal(args, hq, base, {**base, **knobs})
    _run(q_lens, k_lens, hq, hkv, 128, kb, vb, bs, causal, seed=11 * kb + vb, register_lut=lut,
         producer_wgs=2, cluster_share=1, **knobs)
    _run([1, 17, 300], [1, 9, 1000], hq, hkv, 128, kb, vb, 128, True, seed=kb + vb,
         register_lut=lut, producer_wgs=2, cluster_share=1, **knobs)
    if not causal:
        _run([700, 1], [2000, 3], 4, 4, 128, kb, vb, 256, False, seed=2 * kb + vb,
             register_lut=lut, producer_wgs=2, cluster_share=1, **knobs)


# ------------------------------------------ table replication (step 10, opt-in lut_replicas)
REPLICAS = SM90_LUT_CANDIDATES  # (kb, vb, causal, make_config knobs)


@pytest.mark.parametrize("kb,vb,causal,knobs", REPLICAS,
                         ids=[f"K{c[0]}V{c[1]}-{'causal' if c[2] else 'full'}-"
                              + ("pl" if c[3].get("prmt_lut") else
                                 f"x{c[3]['lut_replicas'][0]}-{c[3]['lut_replicas'][1]}")
                              + ("-dl" if c[3].get("direct_loads") else "")
                              + ("-pg" if c[3].get("pack_gqa") else "") for c in REPLICAS])
def test_lut_replicas_bit_identical_to_default(kb, vb, causal, knobs):
    """A table replica holds the same words (only the lane's bank differs), and the staging
    depth / staging-free loads change where the codes travel, not the decoded values or the
    MMA order: raw output and LSE equal the shipped default's bit for bit (varlen, odd
    lengths, paged, NaN-poisoned buffers); plus the reference check, incl. rows that see no
    key."""
    q_lens, k_lens, hq, hkv, bs, args = _identity_case(kb, vb, causal, 13 * kb + vb)
    # prmt_lut puts both sides on shared-memory tables (K4V8 ships K's in registers): the
    # reference build is the shipped one with that decode choice (the same table words), and
    # with the same tile (pack_gqa)
    base = dict(register_lut=(False, False)) if knobs.get("prmt_lut") else {}
    if "pack_gqa" in knobs:
        base["pack_gqa"] = knobs["pack_gqa"]
    _assert_raw_outputs_equal(args, hq, base, knobs)
    _run(q_lens, k_lens, hq, hkv, 128, kb, vb, bs, causal, seed=17 * kb + vb, **knobs)
    _run([1, 17, 300], [1, 9, 1000], hq, hkv, 128, kb, vb, 128, True, seed=kb + 2 * vb,
         **knobs)


# ------------------------------------------ pack_gqa (default for short chunks since 2026-12-07)
@pytest.mark.parametrize("kb,vb,hq,hkv,causal,wl,wr,bs", [
    (4, 4, 8, 2, False, -1, -1, 16), (4, 4, 8, 2, True, -1, -1, 128),
    (2, 2, 16, 2, True, -1, -1, 16), (8, 8, 8, 2, False, -1, -1, 128),
    (4, 2, 8, 2, True, 64, -1, 16), (2, 4, 8, 2, False, 32, 16, 48), (8, 4, 8, 1, True, -1, -1, 16),
    (2, 4, 16, 2, True, -1, -1, 16)])  # K2V4 causal: the (200, 56) PACK_GQA_WIDE_PRODUCER split
def test_pack_gqa(kb, vb, hq, hkv, causal, wl, wr, bs):
    """FA4's PackGQA tile over the compressed cache: short chunks (1, 3, 17 queries: one packed
    tile per KV head), a long one (300 queries, several packed m_blocks), rows that see no key
    (seqlen_k < seqlen_q under the causal mask), GQA 4/8 and MQA, windows, paged."""
    _run([1, 3, 17, 300], [40, 2, 17, 1000], hq, hkv, 128, kb, vb, bs, causal, wl, wr,
         seed=90 + kb * 10 + vb, pack_gqa=True)


def test_pack_gqa_d64():
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 64, 4, 4, 16, True, seed=95, pack_gqa=True)


@pytest.mark.parametrize("kb,vb,causal", [(4, 4, True), (2, 2, False)])
def test_default_path_packs_short_chunks(kb, vb, causal):
    """The op's default (pack_gqa=None) packs chunks with q_len x G <= 128
    (prefill_sm90.default_pack_gqa): bit-identical to pack_gqa=True, against the float64
    reference; a long chunk stays unpacked (bit-identical to pack_gqa=False)."""
    from fa4_tq.kernels.prefill import prefill_cuda
    from fa4_tq.kernels.prefill_sm90 import default_pack_gqa
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("PrefillSm90 needs a Hopper GPU")
    for q_lens, k_lens, packed in (([1, 32, 5], [40, 2000, 17], True),
                                   ([1, 33], [40, 300], False)):
        args = random_prefill_args(q_lens, k_lens, 8, 2, 128, kb, vb, 16, causal,
                                   generator=torch.Generator().manual_seed(7 * kb + vb))
        assert default_pack_gqa(128, 4, max(q_lens)) == packed
        outs = []
        for pg in (None, packed):
            kout = torch.full((args[0].shape[0], 8, 128), float("nan"), dtype=torch.bfloat16,
                              device="cuda")
            klse = torch.full((8, args[0].shape[0]), float("nan"), device="cuda")
            outs.append(prefill_cuda(*args, kernel_out=kout, kernel_lse=klse, pack_gqa=pg))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        ref_o, _ = reference.prefill(*args, compute_dtype=torch.float64)
        assert rel_error(outs[0][0], ref_o) <= 1e-2
        assert not bool(torch.isnan(outs[0][1]).any())
