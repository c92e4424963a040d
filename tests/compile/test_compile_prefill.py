"""Compile every shipped PrefillSm90 config for sm_90a on the CPU (fake tensors): 0 spills,
smem within the H100 limit; plus the swizzle-address check of the producer's hand-computed
K/V tile offsets against FA4's own shared-memory layout."""

from fa4_tq.kernels.compile import configure_cpu_compile_env

configure_cpu_compile_env()  # before anything imports cutlass

from functools import partial  # noqa: E402

import pytest  # noqa: E402

from fa4_tq.kernels import compile as harness  # noqa: E402
from fa4_tq.kernels import prefill_sm90 as P  # noqa: E402
from fa4_tq.kernels.dequant import swizzled_offset_py  # noqa: E402

SM90_SMEM_LIMIT = 232448


def _kernel_config(cfg):
    return harness.KernelConfig("prefill", cfg.k_bits, cfg.v_bits, cfg.head_dim,
                                P._variant(cfg), partial(P.build_compile, cfg))


@pytest.mark.compile
@pytest.mark.parametrize("cfg", P.shipped_configs(), ids=lambda c: c.name)
def test_prefill_sm90_compiles(cfg):
    r = harness.compile_config(_kernel_config(cfg))
    assert r.error is None, r.error
    assert r.spill_bytes == 0, r.notes
    assert r.smem_bytes is not None and r.smem_bytes <= SM90_SMEM_LIMIT
    assert r.smem_bytes <= cfg.smem_bytes()  # the config's own budget estimate is an upper bound


def test_make_config_rejects_head_dim_256():
    with pytest.raises(NotImplementedError, match="head_dim 256"):
        P.make_config(256, 4, 4, 1, False, False, False, False)


def test_register_lut_only_for_2_and_4_bit():
    with pytest.raises(ValueError, match="register LUT"):
        P.PrefillSm90Config(128, 8, 4, 1, False, False, False, False, k_register_lut=True)
    cfg = P.make_config(128, 8, 4, 4, False, False, False, False, True, True)
    assert not cfg.k_register_lut and cfg.v_register_lut


def test_register_split_guard():
    with pytest.raises(ValueError, match="launch allocation"):
        P.PrefillSm90Config(128, 4, 4, 1, False, False, False, False, producer_regs=64)
    # 512 threads launch with 128 registers each: consumer + producer must stay <= 256
    with pytest.raises(ValueError, match="launch allocation"):
        P.PrefillSm90Config(128, 4, 4, 1, False, False, False, False, producer_wgs=2,
                            consumer_regs=216, producer_regs=48)
    assert P.launch_regs_per_thread(384) == 168 and P.launch_regs_per_thread(512) == 128


def test_producer_wgs_knob():
    with pytest.raises(ValueError, match="producer_wgs"):
        P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=3)
    one = P.make_config(128, 4, 4, 4, True, False, False, False, producer_wgs=1)
    two = P.make_config(128, 4, 4, 4, True, False, False, False, producer_wgs=2)
    assert one != two and hash(one) != hash(two)  # distinct compile-cache keys
    assert one.num_threads == 384 and two.num_threads == 512
    assert (two.consumer_regs, two.producer_regs) == P.REGISTER_SPLIT[2]
    assert two.name.endswith("_pw2") and two.smem_bytes() == one.smem_bytes()
    default = P.make_config(128, 4, 4, 4, True, False, False, False)
    assert default.producer_wgs == P.default_producer_wgs(128, 4, 4, False) == 2
    # unmeasured with two producer WGs: D=64, windows, the other bit-width pairs
    assert P.make_config(64, 4, 4, 4, True, False, False, False).producer_wgs == 1
    assert P.make_config(128, 4, 4, 4, False, True, True, True).producer_wgs == 1
    assert P.make_config(128, 2, 4, 4, False, False, False, False).producer_wgs == 1


@pytest.mark.compile
@pytest.mark.parametrize("d", [64, 128])
def test_swizzled_offset_matches_fa4_smem_layout(d):
    """The producer writes 16-byte chunks at hand-computed 128B-swizzled offsets; they must be
    exactly where FA4's K/V smem layout (read by wgmma) puts them."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.utils import LayoutEnum
    from quack import sm90_utils

    found = {}

    @cute.jit
    def probe(D: cutlass.Constexpr):
        lay = sm90_utils.make_smem_layout(cutlass.BFloat16, LayoutEnum.ROW_MAJOR, (128, D), 2)
        for r in cutlass.range_constexpr(128):
            for j in cutlass.range_constexpr(D // 8):
                for e in (0, 7):
                    found[(r, j, e)] = lay.outer((r, j * 8 + e, 1))

    cute.compile(probe, d)
    assert len(found) == 128 * (d // 8) * 2
    for (r, j, e), idx in found.items():
        b = int(idx) * 2  # element offset -> bytes; the swizzle (S<3,4,3>) acts on byte addresses
        b ^= ((b >> 7) & 7) << 4
        assert b == 128 * d * 2 + swizzled_offset_py(r, j, 128) + 2 * e, (r, j, e)


# ----------------------------------------------------------------- cluster_share=2 (step 5)
def test_cluster_share_knob():
    cs1 = P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2)
    cs2 = P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                        cluster_share=2)
    assert cs1.cluster_share == 1  # opt-in only: the default build is unchanged
    assert P.make_config(128, 4, 4, 4, False, False, False, False) == cs1
    assert cs1 != cs2 and hash(cs1) != hash(cs2) and cs2.name.endswith("_pw2_cs2")
    assert P._variant(cs2).endswith("-pw2-cs2")
    for bad in (dict(producer_wgs=1), dict(head_dim=64)):
        kw = dict(head_dim=128, producer_wgs=2) | bad
        with pytest.raises(NotImplementedError, match="cluster_share=2"):
            P.make_config(kw["head_dim"], 4, 4, 4, False, False, False, False,
                          producer_wgs=kw["producer_wgs"], cluster_share=2)
    with pytest.raises(NotImplementedError, match="even"):  # GQA 1 / 3: a pair would span
        P.make_config(128, 4, 4, 3, False, False, False, False, producer_wgs=2,  # 2 KV heads
                      cluster_share=2)
    with pytest.raises(ValueError, match="cluster_share"):
        P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                      cluster_share=4)
    assert sum(c.cluster_share == 2 for c in P.shipped_configs()) == 2  # CI compile budget


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_cluster_pair_decode_covers_both_tiles_exactly_once(bits):
    """Emulate the cluster_share=2 producers of both CTAs on one 128-row tile: every thread
    takes its row / half-row codes (cluster_pair_part_py, the kernel's index math) and stores
    each 8-element chunk at the same swizzled offset in its own and the peer's tile. Both
    tiles must then hold every element exactly once, at the address FA4's layout reads it
    (swizzled_offset_py, itself checked against FA4's layout above), i.e. the two CTAs
    together decode each tile once and each CTA sees the whole tile."""
    import numpy as np
    d, rows = 128, 128
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, size=(rows, d))  # code index stands in for the value
    tiles = np.full((2, rows * d), -1, dtype=np.int64)  # per CTA, one slot per bf16 element
    writes = np.zeros((2, rows * d), dtype=np.int64)
    decoded_rows = {0: set(), 1: set()}
    for rank in (0, 1):
        for tidx in range(P.PRODUCER_THREADS):
            row, parts = P.cluster_pair_part_py(rank, tidx, bits, d, rows)
            decoded_rows[rank].add(row)
            for code_byte, off in parts:
                assert off % 16 == 0 and code_byte % bits == 0
                first = code_byte * 8 // bits  # element index of the chunk's first code
                for cta in (rank, rank ^ 1):  # own tile, then the peer's through DSMEM
                    for e in range(8):
                        slot = off // 2 + e
                        tiles[cta, slot] = codes[row, first + e]
                        writes[cta, slot] += 1
    assert decoded_rows[0] == set(range(64)) and decoded_rows[1] == set(range(64, 128))
    assert (writes == 1).all()
    for cta in (0, 1):
        for r in range(rows):
            for j in range(d // 8):
                base = swizzled_offset_py(r, j, rows) // 2
                assert list(tiles[cta, base:base + 8]) == list(codes[r, 8 * j:8 * j + 8])


def _simulate_cluster_pair_pipeline(n_blocks, stages, seed, remote_release=True):
    """Random-interleaving model of one ClusterPairPipeline side (K or V) across the two CTAs:
    mbarriers with arrival counts and phase parity (try_wait.parity P passes once the phase
    of parity P completed), 4 producer warps and 8 consumer warps per CTA, each a sequence of
    atomic steps in the kernel's order. Producer warp w of CTA r writes its slice
    (r, w) of the stage into BOTH CTAs, then arrives on both full barriers; a consumer warp
    reads all 8 slices of its own CTA's stage (read start and end are separate steps) and
    arrives on its own and (remote_release) the peer's empty barrier. Returns a list of
    violations (a stage overwritten while read, read before both halves were written) or
    'deadlock'."""
    import random
    rnd = random.Random(seed)
    full_n, empty_n = P.cluster_pair_arrivals()
    if not remote_release:
        empty_n //= 2
    bars = {}  # (cta, kind, stage) -> [pending, phase]
    for cta in (0, 1):
        for s in range(stages):
            bars[(cta, "full", s)] = [full_n, 0]
            bars[(cta, "empty", s)] = [empty_n, 0]

    def arrive(key):
        b = bars[key]
        b[0] -= 1
        assert b[0] >= 0
        if b[0] == 0:
            b[0] = full_n if key[1] == "full" else empty_n
            b[1] += 1

    def passed(key, parity):  # mbarrier.try_wait.parity
        return (bars[key][1] % 2) != parity

    stage = {(cta, s): {} for cta in (0, 1) for s in range(stages)}  # slice -> block
    reading = {(cta, s): 0 for cta in (0, 1) for s in range(stages)}
    bad = []

    def producer(cta, w):
        for i in range(n_blocks):
            s, parity = i % stages, 1 - (i // stages) % 2  # producer state starts at phase 1
            while not passed((cta, "empty", s), parity):
                yield
            for dst in (cta, cta ^ 1):
                if reading[(dst, s)]:
                    bad.append(f"block {i}: CTA {cta} warp {w} overwrote stage {s} of CTA "
                               f"{dst} during a read")
                stage[(dst, s)][(cta, w)] = i
                yield
            arrive((cta, "full", s))
            arrive((cta ^ 1, "full", s))
            yield

    def consumer(cta, w):
        for i in range(n_blocks):
            s, parity = i % stages, (i // stages) % 2
            while not passed((cta, "full", s), parity):
                yield
            reading[(cta, s)] += 1
            want = {(r, pw): i for r in (0, 1) for pw in range(4)}
            if stage[(cta, s)] != want:
                bad.append(f"block {i}: CTA {cta} consumer {w} read {stage[(cta, s)]}")
            yield
            if stage[(cta, s)] != want:
                bad.append(f"block {i}: CTA {cta} stage {s} changed during the read")
            reading[(cta, s)] -= 1
            arrive((cta, "empty", s))
            if remote_release:
                arrive((cta ^ 1, "empty", s))
            yield

    actors = ([producer(c, w) for c in (0, 1) for w in range(4)]
              + [consumer(c, w) for c in (0, 1) for w in range(8)])
    stalled = 0
    while actors:
        a = rnd.choice(actors)
        snapshot = (tuple(map(tuple, bars.values())), len(bad))
        try:
            next(a)
        except StopIteration:
            actors.remove(a)
            stalled = 0
            continue
        stalled = stalled + 1 if (tuple(map(tuple, bars.values())), len(bad)) == snapshot else 0
        if stalled > 20000:
            return bad + ["deadlock"]
    return bad


@pytest.mark.parametrize("seed", range(6))
def test_cluster_pair_barrier_protocol(seed):
    """The barrier protocol of ClusterPairPipeline (counts from cluster_pair_arrivals) never
    lets a producer overwrite a stage either CTA is still reading, never lets a consumer read
    a stage before both CTAs' producers wrote it, and never deadlocks (random interleavings)."""
    assert _simulate_cluster_pair_pipeline(7, 2, seed) == []


def test_cluster_pair_barrier_protocol_needs_remote_release():
    """Negative control: with consumers releasing only their own CTA's empty barrier, the
    model finds a producer overwriting a stage the peer CTA still reads."""
    found = [_simulate_cluster_pair_pipeline(7, 2, seed, remote_release=False)
             for seed in range(20)]
    assert any(found)
