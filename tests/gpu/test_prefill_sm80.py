"""GPU correctness of tqkv.prefill with backend='sm80' (PrefillSm80, FA4's mma.sync forward
with dequantizing K/V loads) against the float64 reference over the same packed cache: fresh
random inputs, NaN-poisoned kernel output/LSE buffers, rel. error <= 1e-2. Same matrix as
tests/gpu/test_prefill.py. The backend is opt-in until this file has passed on a GPU, so the
tests set FA4TQ_UNVALIDATED_SM80=1 themselves."""

import math

import pytest
import torch

from fa4_tq.kernels.prefill_candidates import SM80_PRMT_LUT_CANDIDATES
from fa4_tq import reference
from fa4_tq.testing import prefill_matrix, random_paged_batch, rel_error

pytestmark = pytest.mark.gpu

BITS = [(kb, vb) for kb in (2, 4, 8) for vb in (2, 4, 8)]


@pytest.fixture(autouse=True)
def _opt_in(monkeypatch):
    from fa4_tq.kernels.prefill import SM80_OPT_IN_ENV
    monkeypatch.setenv(SM80_OPT_IN_ENV, "1")
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("PrefillSm80 needs compute capability >= 8.0")


def _run(q_lens, k_lens, hq, hkv, d, kb, vb, block_size, causal, wl=-1, wr=-1,
         qdtype=torch.bfloat16, rotate=True, unrotate=True, seed=0, register_lut=(None, None),
         prmt_lut=None, raw=None):
    from fa4_tq.kernels.prefill import prefill_cuda
    g = torch.Generator().manual_seed(seed)
    pb = random_paged_batch(k_lens, hkv, d, kb, vb, block_size, device="cuda", generator=g)
    c = pb.cache
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(qdtype).cuda()
    cuq = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cuq[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    args = (q, *c.tensors(), cuq.cuda(), pb.block_table, pb.seqused_k, c.codec.k_codebook,
            c.codec.v_codebook, c.codec.k_signs, c.codec.v_signs, max(q_lens),
            0.9 / math.sqrt(d), causal, wl, wr, rotate, unrotate)
    kout = torch.full((q.shape[0], hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    klse = torch.full((hq, q.shape[0]), float("nan"), device="cuda")
    out, lse = prefill_cuda(*args, backend="sm80", kernel_out=kout, kernel_lse=klse,
                            register_lut=register_lut, prmt_lut=prmt_lut)
    if raw is not None:  # the raw kernel output / LSE, for bit-identity checks
        raw.append((kout, klse))
    ref_o, ref_l = reference.prefill(*args, compute_dtype=torch.float64)
    assert out.dtype == qdtype and lse.dtype == torch.float32
    assert not bool(torch.isnan(out).any())
    assert rel_error(out, ref_o) <= 1e-2
    assert not bool(torch.isnan(lse).any())
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_l))
    fin = torch.isfinite(ref_l)
    if bool(fin.any()):
        assert float((lse[fin] - ref_l[fin]).abs().max()) <= 2e-2


@pytest.mark.parametrize("cell", prefill_matrix(), ids=lambda c: c["id"])
def test_matrix(cell):
    """The Hopper prefill's matrix (fa4_tq.testing.prefill_matrix) on backend='sm80'."""
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


@pytest.mark.parametrize("kb,vb,d", [(4, 4, 128), (2, 2, 64), (8, 8, 128), (2, 4, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_direct_load_variant(monkeypatch, kb, vb, d, causal):
    """stage_codes=False (vector loads right before decoding, no cp.async staging)."""
    from functools import partial
    from fa4_tq.kernels import prefill_sm80 as P
    monkeypatch.setattr(P, "make_config", partial(P.make_config, stage_codes=False))
    _run([1, 17, 300], [40, 17, 1000], 8, 2, d, kb, vb, 16, causal, seed=40 + kb + vb + d)


@pytest.mark.parametrize("kb,vb,causal,knobs", SM80_PRMT_LUT_CANDIDATES)
def test_prmt_lut_bit_identical_to_shared_lut(kb, vb, causal, knobs):
    """PRMT-addressed interleaved tables hold the same words as the shared-memory LUT (only
    the address arithmetic and the lane's bank differ): raw output and LSE equal the ss
    build's bit for bit (NaN-poisoned, varlen, paged), and the float64 reference passes."""
    raw = []
    for extra in ({}, knobs):
        _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, 16, causal, seed=60 + kb + vb,
             register_lut=(False, False), raw=raw, **extra)
    (o1, l1), (o2, l2) = raw
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    _run([1, 17, 300], [1, 9, 1000], 8, 2, 128, kb, vb, 128, True, seed=70 + kb + vb, **knobs)


@pytest.mark.parametrize("kb,vb", BITS)
def test_d64(kb, vb):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 64, kb, vb, 16, True, seed=kb + vb)


@pytest.mark.parametrize("kb,vb,causal,block_size,wl,wr,register_lut", [
    (4, 4, False, 128, -1, -1, (None, None)),
    (4, 4, True, 16, -1, -1, (None, None)),
    (4, 4, False, 16, -1, -1, (False, False)),
    (2, 2, False, 16, -1, -1, (None, None)),
    (2, 2, True, 128, -1, -1, (None, None)),
    (8, 8, False, 16, -1, -1, (None, None)),
    (2, 8, True, 16, -1, -1, (None, None)),
    (4, 2, True, 48, 64, -1, (None, None)),
])
def test_tile_m64_four_warps(monkeypatch, kb, vb, causal, block_size, wl, wr, register_lut):
    """tile_m=64 (4 warps, 2 threads per K/V row in the loader) at D=128, where the default is
    the 8-warp tile_m=128 (D=64 defaults to tile_m=64, covered by test_d64)."""
    from functools import partial
    from fa4_tq.kernels import prefill_sm80 as P
    monkeypatch.setattr(P, "make_config", partial(P.make_config, tile_m=64))
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, kb, vb, block_size, causal, wl, wr,
         seed=60 + kb + vb + causal, register_lut=register_lut)


def test_queries_that_see_no_key():
    _run([1, 17, 300], [1, 9, 1000], 8, 2, 128, 4, 4, 128, True, seed=3)


@pytest.mark.parametrize("wl,wr,causal", [(64, -1, True), (32, 16, False), (-1, 8, False)])
def test_sliding_window(wl, wr, causal):
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, 4, 4, 48, causal, wl, wr, seed=5)


def test_window_that_excludes_every_key():
    """Window (0, 0): whole K blocks below n_block_min are skipped (sequence 0), and with
    seqlen_q > seqlen_k (sequence 1) the first 34 rows' window holds no key (LSE -inf, 0)."""
    _run([200, 64], [1000, 30], 8, 2, 128, 4, 4, 16, False, 0, 0, seed=9)


def test_mha_mqa_long_blocks():
    _run([700, 1], [2000, 3], 4, 4, 128, 4, 4, 256, False, seed=6)
    _run([130, 5], [300, 5], 8, 1, 128, 2, 4, 32, True, seed=7)


def test_fp16_and_no_rotation():
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 64, 2, 8, 32, False, qdtype=torch.float16,
         rotate=False, unrotate=False, seed=8)


def test_unsupported_cases_raise_before_launch():
    from fa4_tq.kernels.prefill import prefill_cuda
    q = torch.zeros(4, 2, 256, dtype=torch.bfloat16, device="cuda")
    kc = torch.zeros(1, 16, 2, 128, dtype=torch.uint8, device="cuda")
    kn = torch.zeros(1, 16, 2, dtype=torch.bfloat16, device="cuda")
    cb = torch.linspace(-1, 1, 16, device="cuda")
    s = torch.ones(256, device="cuda")
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device="cuda")  # noqa: E731
    args = (q, kc, kc, kn, kn, i32(0, 4), i32(0).view(1, 1), i32(4), cb, cb, s, s, 4, 0.1,
            False, -1, -1, True, True)
    with pytest.raises(NotImplementedError, match="head_dim 64 and 128"):
        prefill_cuda(*args, backend="sm80")


def test_cuda_graph_capture_and_replay():
    """After the first (compiling) call, the sm80 path captures into a CUDA graph (no host
    syncs, caching-allocator allocations only) and a replay rewrites NaN-poisoned buffers."""
    from fa4_tq.kernels.prefill import prefill_cuda
    g = torch.Generator().manual_seed(77)
    q_lens, k_lens, hq, hkv, d = [5, 130], [40, 900], 8, 2, 128
    pb = random_paged_batch(k_lens, hkv, d, 4, 4, 16, device="cuda", generator=g)
    c = pb.cache
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(torch.bfloat16).cuda()
    cuq = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cuq[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    args = (q, *c.tensors(), cuq.cuda(), pb.block_table, pb.seqused_k, c.codec.k_codebook,
            c.codec.v_codebook, c.codec.k_signs, c.codec.v_signs, max(q_lens),
            1.0 / math.sqrt(d), True, -1, -1, True, True)
    kout = torch.empty(q.shape[0], hq, d, dtype=torch.bfloat16, device="cuda")
    klse = torch.empty(hq, q.shape[0], device="cuda")
    prefill_cuda(*args, backend="sm80", kernel_out=kout, kernel_lse=klse)  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = prefill_cuda(*args, backend="sm80", kernel_out=kout, kernel_lse=klse)
    kout.fill_(float("nan"))
    klse.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref_o, ref_l = reference.prefill(*args, compute_dtype=torch.float64)
    assert rel_error(out, ref_o) <= 1e-2
    assert not bool(torch.isnan(lse).any())
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_l))


def test_runs_on_hopper_without_the_opt_in(monkeypatch):
    """Validated on Hopper: backend='sm80' needs no opt-in there (elsewhere it does)."""
    from fa4_tq.kernels.prefill import SM80_OPT_IN_ENV
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("Hopper only")
    monkeypatch.delenv(SM80_OPT_IN_ENV, raising=False)
    _run([1, 17, 300], [40, 17, 1000], 8, 2, 128, 4, 4, 16, True)
