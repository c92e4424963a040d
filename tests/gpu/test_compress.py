"""CUDA compress_store / dequantize (fa4_tq/kernels/compress.py) against the CPU reference.

compress_store must be bit-exact: the whole cache (codes of every slot, written or not, and
both norm tensors) is compared byte for byte with reference.compress_store run on a CPU copy
of the same pre-filled (random) cache. dequantize is compared with reference.dequantize over
the same packed cache; outputs are allocated from memory that was NaN-filled just before.
"""

import os

import pytest
import torch

import fa4_tq.ops  # noqa: F401  (registers torch.ops.tqkv)
from fa4_tq import reference
from fa4_tq.codec import TQCodec, default_codebook

pytestmark = pytest.mark.gpu

DEV = "cuda"
ALGOS = ("binary", "lut", "lut-wide")  # compress variants; the op uses DEFAULT_COMPRESS_ALGO


@pytest.fixture(params=ALGOS)
def algo(request, monkeypatch):
    """Run the op through the given compress_store search variant."""
    from fa4_tq.kernels import compress

    monkeypatch.setattr(compress, "DEFAULT_COMPRESS_ALGO", request.param)
    return request.param


def _skip_without_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def _skip_unsupported(algo, kb, vb):
    from fa4_tq.kernels import compress

    if algo == "lut-wide" and not compress.lut_wide_supported(kb, vb):
        pytest.skip(f"lut-wide has no K{kb}V{vb} (test_compress_store_lut_wide_rejects)")


def _codec(d, kb, vb, seed=0, custom=False):
    c = TQCodec(d, kb, vb, seed=seed)
    if custom:  # a calibrated-looking table: random strictly increasing values
        g = torch.Generator().manual_seed(seed + 7)
        for side, b in (("k", kb), ("v", vb)):
            cb = torch.sort(torch.randn(2 ** b, generator=g) * 1.7 / d ** 0.5 + 0.01).values
            setattr(c, f"{side}_codebook", cb.to(torch.float32))
    return c


def _random_cache(nb, bs, h, d, kb, vb, gen):
    k_cache = torch.randint(0, 256, (nb, bs, h, d * kb // 8), dtype=torch.uint8, generator=gen)
    v_cache = torch.randint(0, 256, (nb, bs, h, d * vb // 8), dtype=torch.uint8, generator=gen)
    k_norm = torch.randn(nb, bs, h, generator=gen).to(torch.bfloat16)
    v_norm = torch.randn(nb, bs, h, generator=gen).to(torch.bfloat16)
    return [k_cache, v_cache, k_norm, v_norm]


def _inputs(t, h, d, dtype, gen):
    # Mixed magnitudes (per token scale over 6 decades), plus an all-zero vector.
    scale = torch.exp(torch.randn(t, 1, 1, generator=gen) * 3.0)
    key = (torch.randn(t, h, d, generator=gen) * scale).to(dtype)
    value = (torch.randn(t, h, d, generator=gen) * scale + 0.3).to(dtype)
    if t > 2:
        key[1, 0] = 0
        value[2, -1] = 0
    return key, value


def _slots(t, num_slots, gen, negatives=True):
    perm = torch.randperm(num_slots, generator=gen)[:t].to(torch.int64)
    if negatives:
        perm[torch.rand(t, generator=gen) < 0.2] = -1
    return perm


def _run_compress(key, value, cache_cpu, slots, codec):
    """(gpu result tensors, cpu reference tensors) starting from the same cache contents."""
    ref = [x.clone() for x in cache_cpu]
    reference.compress_store(key, value, *ref, slots, codec.k_signs, codec.v_signs,
                             codec.k_codebook, codec.v_codebook)
    gpu = [x.to(DEV) for x in cache_cpu]
    torch.ops.tqkv.compress_store(key.to(DEV), value.to(DEV), *gpu, slots.to(DEV),
                                  codec.k_signs.to(DEV), codec.v_signs.to(DEV),
                                  codec.k_codebook.to(DEV), codec.v_codebook.to(DEV))
    torch.cuda.synchronize()
    return [x.cpu() for x in gpu], ref


def _assert_same_cache(got, ref):
    for name, g, r in zip(("k_cache", "v_cache", "k_norm", "v_norm"), got, ref):
        if g.dtype == torch.bfloat16:
            g, r = g.view(torch.int16), r.view(torch.int16)
        bad = (g != r).nonzero()
        assert bad.numel() == 0, f"{name}: {bad.shape[0]} mismatches, first at {bad[:4].tolist()}"


CASES = [(d, kb, vb, "bfloat16") for d in (64, 128, 256) for kb, vb in
         ((2, 2), (4, 4), (8, 8), (4, 2), (2, 8))]
CASES += [(128, 4, 4, "float16"), (128, 4, 4, "float32"), (64, 8, 2, "float16"),
          (256, 2, 4, "float32")]


@pytest.mark.parametrize("d,kb,vb,dtype", CASES, ids=lambda x: str(x))
def test_compress_store_bit_exact(d, kb, vb, dtype, algo):
    _skip_without_cuda()
    _skip_unsupported(algo, kb, vb)
    gen = torch.Generator().manual_seed(1000 * d + 10 * kb + vb)
    codec = _codec(d, kb, vb, seed=d + kb)
    nb, bs, h, t = 11, 16, 3, 150  # odd head count, tail of a partial CTA
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, getattr(torch, dtype), gen)
    slots = _slots(t, nb * bs, gen)
    got, ref = _run_compress(key, value, cache, slots, codec)
    _assert_same_cache(got, ref)


@pytest.mark.parametrize("d,kb,vb,t", [(128, 4, 4, 9000), (64, 8, 2, 1500), (256, 2, 8, 1500)])
def test_compress_store_custom_codebook_many_tokens(d, kb, vb, t, algo):
    _skip_without_cuda()
    _skip_unsupported(algo, kb, vb)
    gen = torch.Generator().manual_seed(d * kb * vb)
    codec = _codec(d, kb, vb, seed=3, custom=True)
    nb, bs, h = 400, 32, 8  # t=9000: 72000 vectors, more than one pass of the persistent grid
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, torch.bfloat16, gen)
    slots = _slots(t, nb * bs, gen)
    got, ref = _run_compress(key, value, cache, slots, codec)
    _assert_same_cache(got, ref)


@pytest.mark.parametrize("t,expect", [(10, "lut"), (2000, "lut-wide")])
def test_compress_store_auto_default(t, expect):
    """The op's default ("auto") picks lut-wide only for calls with enough vectors; both
    choices bit-exact."""
    _skip_without_cuda()
    from fa4_tq.kernels import compress

    if compress.DEFAULT_COMPRESS_ALGO != "auto":
        pytest.skip("DEFAULT_COMPRESS_ALGO is not 'auto'")
    d, kb, vb, h, nb, bs = 128, 4, 4, 8, 160, 16
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if expect == "lut-wide" and t * h < 2 * sms * 32:
        pytest.skip(f"{sms} SMs: {t} tokens are below the lut-wide threshold")
    assert compress.default_compress_algo(kb, vb, d, "bfloat16", t * h, sms) == expect
    gen = torch.Generator().manual_seed(t)
    codec = _codec(d, kb, vb, seed=2)
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, torch.bfloat16, gen)
    got, ref = _run_compress(key, value, cache, _slots(t, nb * bs, gen), codec)
    _assert_same_cache(got, ref)


def test_compress_store_auto_default_prefetch():
    """From 2^18 vectors "auto" picks lut-pf for K4V4/K4V2/K2V2 bf16 at D=128 (measured
    fastest there); bit-exact."""
    _skip_without_cuda()
    from fa4_tq.kernels import compress

    if compress.DEFAULT_COMPRESS_ALGO != "auto":
        pytest.skip("DEFAULT_COMPRESS_ALGO is not 'auto'")
    d, kb, vb, h, bs, t = 128, 4, 2, 8, 16, 33000
    assert t * h >= compress._PREFETCH_MIN_VECTORS
    assert compress.default_compress_algo(kb, vb, d, "bfloat16", t * h) == "lut-pf"
    assert compress.default_compress_algo(8, 8, d, "bfloat16", t * h) != "lut-pf"
    gen = torch.Generator().manual_seed(t)
    codec = _codec(d, kb, vb, seed=4)
    nb = t // bs + 64
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, torch.bfloat16, gen)
    got, ref = _run_compress(key, value, cache, _slots(t, nb * bs, gen), codec)
    _assert_same_cache(got, ref)


def test_compress_store_out_of_range_slots_never_written(monkeypatch, algo):
    _skip_without_cuda()
    monkeypatch.setenv("FA4TQ_DEBUG_CHECKS", "0")
    gen = torch.Generator().manual_seed(5)
    d, kb, vb, nb, bs, h, t = 128, 4, 4, 4, 16, 2, 40
    codec = _codec(d, kb, vb)
    # One big allocation, the cache is a view of its first part: slots past the cache would
    # land in the guard region if the kernel did not check them.
    k_buf = torch.randint(0, 256, (2 * nb, bs, h, d * kb // 8), dtype=torch.uint8, generator=gen)
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, torch.bfloat16, gen)
    slots = _slots(t, nb * bs, gen)
    slots[::7] = nb * bs + torch.arange(0, t, 7) % (nb * bs)  # out of range
    keep = slots < nb * bs
    ref = [x.clone() for x in cache]
    reference.compress_store(key, value, *ref, torch.where(keep, slots, -1), codec.k_signs,
                             codec.v_signs, codec.k_codebook, codec.v_codebook)
    k_buf_gpu = k_buf.to(DEV)
    k_buf_gpu[:nb] = cache[0].to(DEV)
    gpu = [k_buf_gpu[:nb]] + [x.to(DEV) for x in cache[1:]]
    torch.ops.tqkv.compress_store(key.to(DEV), value.to(DEV), *gpu, slots.to(DEV),
                                  codec.k_signs.to(DEV), codec.v_signs.to(DEV),
                                  codec.k_codebook.to(DEV), codec.v_codebook.to(DEV))
    torch.cuda.synchronize()
    _assert_same_cache([x.cpu() for x in gpu], ref)
    assert torch.equal(k_buf_gpu[nb:].cpu(), k_buf[nb:]), "wrote past the cache"


def test_compress_store_debug_checks_reject_bad_slots(monkeypatch):
    _skip_without_cuda()
    monkeypatch.setenv("FA4TQ_DEBUG_CHECKS", "1")
    gen = torch.Generator().manual_seed(6)
    d, nb, bs, h, t = 64, 2, 16, 1, 4
    codec = _codec(d, 4, 4)
    cache = [x.to(DEV) for x in _random_cache(nb, bs, h, d, 4, 4, gen)]
    key, value = (x.to(DEV) for x in _inputs(t, h, d, torch.bfloat16, gen))
    args = (codec.k_signs.to(DEV), codec.v_signs.to(DEV), codec.k_codebook.to(DEV),
            codec.v_codebook.to(DEV))
    with pytest.raises(ValueError, match="slot"):
        torch.ops.tqkv.compress_store(key, value, *cache,
                                      torch.tensor([0, 1, nb * bs, -1], device=DEV), *args)
    with pytest.raises(ValueError, match="repeats"):
        torch.ops.tqkv.compress_store(key, value, *cache,
                                      torch.tensor([3, -1, 3, 5], device=DEV), *args)
    # negatives may repeat
    torch.ops.tqkv.compress_store(key, value, *cache, torch.tensor([-1, -1, 3, 5], device=DEV),
                                  *args)


@pytest.mark.parametrize("kb,vb", [(4, 4), (8, 8), (2, 4), (4, 2)])
def test_compress_store_lut_edge_vectors(kb, vb, algo):
    """Vectors at the edges of the grid-table path: tiny / huge norms (binary fallback),
    a single non-zero element (|u| = 1/sqrt(D) everywhere after the rotation), denormals,
    large magnitudes."""
    _skip_without_cuda()
    _skip_unsupported(algo, kb, vb)
    d, h, nb, bs = 128, 2, 8, 16
    gen = torch.Generator().manual_seed(77 + kb)
    codec = _codec(d, kb, vb, seed=5)
    t = 64
    key, value = _inputs(t, h, d, torch.float32, gen)
    key[0, 0] = 0
    key[0, 0, 5] = 1.0  # one-hot: after the rotation every |y_i| = n / sqrt(D)
    value[0, 0] = 0
    value[0, 0, 0] = 1.0
    value[0, 1] = 0
    value[0, 1, 3] = -3.0e-30
    key[1] *= 1e-25  # n < 2^-60: binary fallback
    value[1] *= 1e25  # n > 2^60: binary fallback
    key[2] = torch.randn(h, d, generator=gen) * 1e-40  # denormal inputs (float32)
    key[3] = key[4] * 2.0 ** 40
    # signs * Hadamard row j: the rotation gives exactly one non-zero (|u| = 1, the table's
    # outermost cells) and D - 1 exact zeros.
    for j, (row, side) in enumerate(((6, key), (7, value))):
        signs = codec.k_signs if side is key else codec.v_signs
        bits = torch.tensor([bin(int(x) & (37 + j)).count("1") % 2 for x in range(d)],
                            dtype=torch.float32)
        had = 1.0 - 2.0 * bits
        side[row, 0] = signs.float() * had * (-1.0 if j else 1.0)
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    slots = _slots(t, nb * bs, gen, negatives=False)
    got, ref = _run_compress(key, value, cache, slots, codec)
    _assert_same_cache(got, ref)


@pytest.mark.parametrize("kb,vb", [(8, 4), (2, 2)])
def test_compress_store_lut_wide_rejects(kb, vb):
    _skip_without_cuda()
    from fa4_tq.kernels import compress

    gen = torch.Generator().manual_seed(4)
    codec = _codec(128, kb, vb).to(DEV)
    cache = [x.to(DEV) for x in _random_cache(2, 16, 2, 128, kb, vb, gen)]
    key, value = (x.to(DEV) for x in _inputs(4, 2, 128, torch.bfloat16, gen))
    with pytest.raises(ValueError, match="lut-wide"):
        compress.compress_store_cuda(key, value, *cache, torch.arange(4, device=DEV),
                                     codec.k_signs, codec.v_signs, codec.k_codebook,
                                     codec.v_codebook, algo="lut-wide")


def _poison_allocator(nbytes):
    """NaN-fill memory the caching allocator will hand out next (outputs start as NaN)."""
    junk = [torch.full((nbytes // 4 + 1024,), float("nan"), device=DEV) for _ in range(2)]
    del junk


@pytest.mark.parametrize("d,kb,vb", [(64, 2, 2), (128, 4, 4), (256, 8, 8), (128, 4, 2),
                                     (64, 8, 4)])
@pytest.mark.parametrize("unrotate", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dequantize_matches_reference(d, kb, vb, unrotate, dtype):
    _skip_without_cuda()
    if dtype != torch.bfloat16 and (d, kb, vb) not in ((128, 4, 4), (64, 8, 4)):
        pytest.skip("other dtypes on a subset")
    gen = torch.Generator().manual_seed(d + kb + 7 * vb + int(unrotate))
    codec = _codec(d, kb, vb, seed=11)
    nb, bs, h = 128, 16, 3  # >= 7 sequences x 14 blocks of table
    # Fill the whole cache through the reference compress (real codes and norms).
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(nb * bs, h, d, torch.bfloat16, gen)
    reference.compress_store(key, value, *cache, torch.arange(nb * bs), codec.k_signs,
                             codec.v_signs, codec.k_codebook, codec.v_codebook)
    lens = torch.tensor([37, 0, 1, 200, 16, 0, 95], dtype=torch.int32)
    max_blocks = int((lens.max() + bs - 1) // bs) + 1
    block_table = torch.randperm(nb, generator=gen)[: lens.numel() * max_blocks]
    block_table = block_table.reshape(lens.numel(), max_blocks).to(torch.int32)
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    total = int(cu[-1])
    args = (block_table, cu, codec.k_codebook, codec.v_codebook, codec.k_signs, codec.v_signs)
    rk, rv = reference.dequantize(*cache, *args, unrotate, total, dtype)
    _poison_allocator(total * h * d * 4 * 2)
    gk, gv = torch.ops.tqkv.dequantize(*[x.to(DEV) for x in cache], *[a.to(DEV) for a in args],
                                       unrotate, total, dtype)
    torch.cuda.synchronize()
    for g, r in ((gk.cpu(), rk), (gv.cpu(), rv)):
        assert not torch.isnan(g).any()
        if not unrotate:
            assert torch.equal(g, r)
        else:
            # same float32 ops in the same order: expected identical; allow 1 ulp of dtype
            diff = (g.float() - r.float()).abs()
            ulp = r.float().abs() * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
                                     if dtype == torch.float16 else 2.0 ** -23)
            assert bool((diff <= ulp + 1e-30).all()), float((diff - ulp).max())
            assert (g.float() - r.float()).norm() <= 1e-2 * r.float().norm()


def test_dequantize_empty_and_compress_empty():
    _skip_without_cuda()
    d = 128
    codec = _codec(d, 4, 4).to(DEV)
    cache = [x.to(DEV) for x in _random_cache(2, 16, 2, d, 4, 4, torch.Generator().manual_seed(0))]
    bt = torch.zeros(1, 1, dtype=torch.int32, device=DEV)
    cu = torch.zeros(2, dtype=torch.int32, device=DEV)
    k, v = torch.ops.tqkv.dequantize(*cache, bt, cu, codec.k_codebook, codec.v_codebook,
                                     codec.k_signs, codec.v_signs, True, 0, torch.bfloat16)
    assert k.shape == (0, 2, d) and v.shape == (0, 2, d)
    before = [x.clone() for x in cache]
    empty = torch.empty(0, 2, d, dtype=torch.bfloat16, device=DEV)
    torch.ops.tqkv.compress_store(empty, empty, *cache, torch.empty(0, dtype=torch.int64,
                                  device=DEV), codec.k_signs, codec.v_signs, codec.k_codebook,
                                  codec.v_codebook)
    assert all(torch.equal(a, b) for a, b in zip(before, cache))


def test_compile_cache_reused(algo):
    _skip_without_cuda()
    from fa4_tq.kernels import compress

    gen = torch.Generator().manual_seed(9)
    codec = _codec(128, 4, 4)
    cache = _random_cache(4, 16, 2, 128, 4, 4, gen)
    key, value = _inputs(8, 2, 128, torch.bfloat16, gen)
    _run_compress(key, value, cache, _slots(8, 64, gen), codec)
    n = len(compress._COMPILED)
    _run_compress(key, value, cache, _slots(8, 64, gen), codec)
    assert len(compress._COMPILED) == n


# ------------------------------------------------------------------ opt-in candidates
# compress_store variants besides the ALGOS fixture's (COMPRESS_VARIANTS): float64 partial
# sums (sum_chains=4) and/or software-pipelined loads (prefetch; "lut-pf" is "auto"'s
# choice for large 4/2-bit calls since session 3), and (session 8, not yet measured) the
# loads through a cp.async ring in shared memory (smem_stages: "lut-wide-r3", "lut-r2") and
# the 8-byte code index of the 4-bit grid table (index8: "lut-wide-r3", "lut-pf-i8").
# Tested here on their own so that the ALGOS fixture above (every test x every variant) does
# not grow.
CANDIDATES = ("lut-s4", "lut-pf", "lut-pf-s4", "lut-wide-s4", "lut-wide-r3", "lut-pf-i8",
              "lut-r2")
CANDIDATE_CASES = [(128, 4, 4, "bfloat16", 150), (128, 4, 4, "bfloat16", 9000),
                   (64, 4, 4, "bfloat16", 150), (256, 4, 4, "bfloat16", 150),
                   (128, 2, 2, "bfloat16", 150), (128, 4, 2, "bfloat16", 9000),
                   (128, 2, 4, "bfloat16", 150), (128, 8, 8, "bfloat16", 150),
                   (64, 8, 2, "float16", 150), (128, 4, 4, "float16", 150),
                   (128, 4, 4, "float32", 150), (128, 4, 4, "bfloat16", 1)]


def _candidate(monkeypatch, cand, kb, vb, dtype="bfloat16"):
    from fa4_tq.kernels import compress

    if not compress.variant_supported(cand, kb, vb, dtype):
        pytest.skip(f"{cand} has no K{kb}V{vb} {dtype} (test_compress_store_candidate_rejects)")
    monkeypatch.setattr(compress, "DEFAULT_COMPRESS_ALGO", cand)


@pytest.mark.parametrize("cand", CANDIDATES)
@pytest.mark.parametrize("d,kb,vb,dtype,t", CANDIDATE_CASES, ids=lambda x: str(x))
def test_compress_store_candidate_bit_exact(d, kb, vb, dtype, t, cand, monkeypatch):
    """t=9000 x 8 heads: several grid-stride passes (prefetch and the smem ring carry loads
    across iterations); t=1: one vector, the loads ahead read the clamped last token."""
    _skip_without_cuda()
    _candidate(monkeypatch, cand, kb, vb, dtype)
    gen = torch.Generator().manual_seed(17 * d + 3 * kb + vb + t)
    custom = t == 9000  # a calibrated-looking table on the long runs
    codec = _codec(d, kb, vb, seed=d + kb + t, custom=custom)
    h = 8 if t > 150 else 3
    bs = 16
    nb = -(-t // bs) + 3
    cache = _random_cache(nb, bs, h, d, kb, vb, gen)
    key, value = _inputs(t, h, d, getattr(torch, dtype), gen)
    slots = _slots(t, nb * bs, gen)
    got, ref = _run_compress(key, value, cache, slots, codec)
    _assert_same_cache(got, ref)


@pytest.mark.parametrize("cand", CANDIDATES)
@pytest.mark.parametrize("kb,vb", [(4, 4), (8, 8), (2, 4)])
def test_compress_store_candidate_edge_vectors(kb, vb, cand, monkeypatch):
    """Edge vectors of test_compress_store_lut_edge_vectors (binary fallback for tiny /
    huge norms, one-hot, denormals, exact zeros) through the candidates (float32 inputs,
    so the prefetch variants skip: they take 16-bit inputs only)."""
    _skip_without_cuda()
    _candidate(monkeypatch, cand, kb, vb, "float32")
    test_compress_store_lut_edge_vectors(kb, vb, cand)  # the op runs DEFAULT_COMPRESS_ALGO


@pytest.mark.parametrize("cand,kb,vb,dtype", [("lut-pf", 8, 8, "bfloat16"),
                                              ("lut-pf-s4", 2, 2, "bfloat16"),
                                              ("lut-pf", 4, 4, "float32"),
                                              ("lut-wide-s4", 2, 2, "bfloat16"),
                                              ("lut-wide-s4", 8, 4, "bfloat16")])
def test_compress_store_candidate_rejects(cand, kb, vb, dtype):
    """Unsupported (variant, widths, input dtype) raise ValueError before any launch."""
    from fa4_tq.kernels import compress

    with pytest.raises(ValueError, match=cand):
        compress.compress_config(128, kb, vb, dtype, cand)
