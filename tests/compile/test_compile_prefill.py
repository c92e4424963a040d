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
    # measured for all nine pairs at D=128; unmeasured with two: D=64 and windows
    assert all(P.make_config(128, kb, vb, 4, False, False, False, False).producer_wgs == 2
               for kb in (2, 4, 8) for vb in (2, 4, 8))
    assert P.make_config(64, 4, 4, 4, True, False, False, False).producer_wgs == 1
    assert P.make_config(128, 4, 4, 4, False, True, True, True).producer_wgs == 1


def test_direct_loads_knob():
    kw = dict(producer_wgs=2, cluster_share=1, direct_loads=True)
    staged = P.make_config(128, 2, 2, 4, True, False, False, False, producer_wgs=2,
                           cluster_share=1)
    d3 = P.make_config(128, 2, 2, 4, True, False, False, False, **kw)
    d2 = P.make_config(128, 2, 2, 4, True, False, False, False, num_stages=2, **kw)
    assert not staged.direct_loads and staged.num_stages == 2
    # staging-free with register LUTs: 3 K/V stages fit (the default then), and no staging
    assert d3.direct_loads and d3.num_stages == 3 and d3.staging_bytes() == 0
    assert d2.num_stages == 2 and len({staged, d2, d3}) == 3  # distinct compile-cache keys
    assert d3.name.endswith("_dl_st3") and d2.name.endswith("_dl")
    assert d3.smem_bytes() <= P.SMEM_CAPACITY
    # a shared-memory-LUT side (16 KB table) leaves no room for a third stage: 2 it is
    assert P.make_config(128, 4, 4, 4, False, False, False, False, **kw).num_stages == 2
    with pytest.raises(NotImplementedError, match="num_stages"):
        P.make_config(128, 4, 4, 4, False, False, False, False, num_stages=3, **kw)
    with pytest.raises(NotImplementedError, match="needs direct_loads"):
        P.make_config(128, 2, 2, 4, False, False, False, False, num_stages=3, producer_wgs=2)
    with pytest.raises(NotImplementedError, match="direct_loads"):
        P.make_config(128, 2, 2, 4, False, False, False, False, producer_wgs=1,
                      direct_loads=True)
    with pytest.raises(NotImplementedError, match="direct_loads"):
        P.make_config(128, 8, 8, 4, False, False, False, False, producer_wgs=2,
                      cluster_share=2, direct_loads=True)
    with pytest.raises(ValueError, match="num_stages"):
        P.PrefillSm90Config(128, 2, 2, 4, False, False, False, False, num_stages=4)
    split = P.make_config(128, 4, 4, 4, False, False, False, False, register_split=(200, 56),
                          **kw)
    assert (split.consumer_regs, split.producer_regs) == (200, 56)
    assert split.name.endswith("_r200-56")
    with pytest.raises(ValueError, match="register split"):
        P.make_config(128, 4, 4, 4, False, False, False, False, register_split=(208, 56), **kw)
    # opt-in until measured on the device
    assert not P.make_config(128, 4, 4, 4, False, False, False, False).direct_loads


def test_lut_replicas_knob():
    """lut_replicas: explicit table replication; the default keeps the heuristic's fit and
    names, an explicit choice is tagged, and one that does not fit (or is not a power of two)
    raises before any compile."""
    shipped = P.make_config(128, 4, 4, 4, False, False, False, False)
    assert (shipped.stage_slots, shipped.k_lut_replicas, shipped.v_lut_replicas) == (2, 16, 16)
    assert P.default_lut_fit(shipped) == (2, 16, 16) and "_x" not in shipped.name
    k32 = P.make_config(128, 4, 4, 4, False, False, False, False, lut_replicas=(32, 16))
    assert (k32.stage_slots, k32.k_lut_replicas, k32.v_lut_replicas) == (1, 32, 16)
    assert k32.name.endswith("_x32-16s1") and k32.smem_bytes() <= P.SMEM_CAPACITY
    dl = P.make_config(128, 4, 4, 4, False, False, False, False, lut_replicas=(32, 32),
                       direct_loads=True, num_stages=2, register_split=(192, 64))
    assert dl.name.endswith("_dl_r192-64_x32-32s1") and dl.smem_bytes() <= P.SMEM_CAPACITY
    # D=64 already takes 32 replicas by default: asking for them changes nothing
    d64 = P.make_config(64, 4, 4, 4, False, False, False, False)
    assert d64 == P.make_config(64, 4, 4, 4, False, False, False, False,
                                lut_replicas=(32, 32))
    with pytest.raises(NotImplementedError, match="lut_replicas"):
        P.make_config(128, 4, 4, 4, False, False, False, False, lut_replicas=(32, 32))
    with pytest.raises(ValueError, match="lut_replicas"):
        P.make_config(128, 4, 4, 4, False, False, False, False, lut_replicas=(24, 16))
    # PRMT-addressed tables: both sides shared 4/8-bit at 32 replicas, staging-free only
    pl = P.make_config(128, 4, 4, 4, False, False, False, False, prmt_lut=True,
                       direct_loads=True, num_stages=2, register_split=(200, 56))
    assert pl.prmt_lut and pl.name.endswith("_dl_pl_r200-56_x32-32s1")
    assert pl.k_lut_bytes() == 65536 and pl.smem_bytes() <= P.SMEM_CAPACITY
    for bad in (dict(), dict(direct_loads=True, lut_replicas=(16, 16)),
                dict(direct_loads=True, register_lut=(True, False))):
        lut = bad.pop("register_lut", (None, None))
        with pytest.raises((NotImplementedError, ValueError), match="prmt_lut"):
            P.make_config(128, 4, 4, 4, False, False, False, False, *lut, prmt_lut=True,
                          **bad)
    k2 = P.make_config(128, 2, 2, 4, False, False, False, False, prmt_lut=True,
                       direct_loads=True, num_stages=2)
    assert (k2.k_lut_replicas, k2.v_lut_replicas) == (16, 16)  # 8-byte entries: 16 x 8 B
    with pytest.raises(ValueError, match="prmt_lut"):
        P.make_config(128, 2, 4, 4, False, False, False, False, prmt_lut=True,
                      direct_loads=True, lut_replicas=(32, 32))


def test_pack_gqa_knob():
    pg = P.make_config(128, 4, 4, 4, True, False, False, False, pack_gqa=True)
    plain = P.make_config(128, 4, 4, 4, True, False, False, False, cluster_share=1)
    assert pg.pack_gqa and pg.name.endswith("_pg") and pg != plain
    assert pg.cluster_share == 1 and pg.producer_wgs == 2
    # sliding windows too take two producer warpgroups with pack_gqa (one spills)
    assert P.make_config(128, 4, 4, 4, False, True, True, True, pack_gqa=True).producer_wgs == 2
    for g, cs in ((1, None), (3, None), (4, 2)):  # MHA, ratio not dividing 128, cluster pairs
        with pytest.raises(NotImplementedError, match="pack_gqa"):
            P.make_config(128, 8, 8, g, False, False, False, False, pack_gqa=True,
                          cluster_share=cs)
    assert not P.make_config(128, 4, 4, 4, False, False, False, False).pack_gqa  # opt-in


@pytest.mark.compile
def test_default_pack_gqa_rule(monkeypatch):
    # shipped (H100 2026-12-07, notes step 8): a whole chunk of every head in one 128-row tile
    assert P.PACK_GQA_MEASURED
    assert P.default_pack_gqa(128, 4, 16) and P.default_pack_gqa(128, 4, 32)
    assert P.default_pack_gqa(128, 8, 16) and P.default_pack_gqa(128, 16, 1)
    assert not P.default_pack_gqa(128, 4, 33)   # 132 rows > one tile
    assert not P.default_pack_gqa(128, 1, 16)   # MHA: nothing to pack
    assert not P.default_pack_gqa(128, 3, 16)   # 3 does not divide the tile
    assert not P.default_pack_gqa(64, 4, 16)    # D=64 not measured
    assert not P.default_pack_gqa(128, 4, 16, cluster_share=2)  # pack_gqa has no cluster pair
    # the gate: with it off nothing packs
    monkeypatch.setattr(P, "PACK_GQA_MEASURED", False)
    assert not any(P.default_pack_gqa(128, g, q) for g in (2, 4, 8) for q in (1, 16, 32))


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
    cs1 = P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                        cluster_share=1)
    cs2 = P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                        cluster_share=2)
    assert P.make_config(128, 4, 4, 4, False, False, False, False) == cs1  # K4V4: not shared
    assert cs1 != cs2 and hash(cs1) != hash(cs2) and cs2.name.endswith("_pw2_cs2")
    assert P._variant(cs2).endswith("-pw2-cs2")
    k_only = P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                           cluster_share=2, cluster_sides="k")
    assert k_only.name.endswith("_cs2k") and k_only.shares(True) and not k_only.shares(False)
    assert cs2.shares(True) and cs2.shares(False) and not cs1.shares(True)
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
    for sides, cs in (("x", 2), ("k", 1)):
        with pytest.raises(ValueError, match="cluster_sides"):
            P.make_config(128, 4, 4, 4, False, False, False, False, producer_wgs=2,
                          cluster_share=cs, cluster_sides=sides)


def test_cluster_share_defaults():
    """Sharing ships for the measured 8-bit-side pairs (CLUSTER_SHARE_MEASURED) and only where
    the pair exists: D=128, two producer WGs, even GQA ratio, no sliding window."""
    for (kb, vb), sides in P.CLUSTER_SHARE_MEASURED.items():
        for causal in (False, True):
            c = P.make_config(128, kb, vb, 4, causal, False, False, False)
            assert (c.cluster_share, c.cluster_sides) == (2, sides)
        for ratio, d, local, pw in ((1, 128, False, None), (3, 128, False, None),
                                    (4, 64, False, None), (4, 128, True, None),
                                    (4, 128, False, 1)):
            c = P.make_config(d, kb, vb, ratio, False, local, local, local, producer_wgs=pw)
            assert c.cluster_share == 1
        assert P.make_config(128, kb, vb, 8, False, False, False, False).cluster_share == 2
    for kb, vb in ((4, 4), (2, 2), (4, 2), (2, 4)):
        assert P.make_config(128, kb, vb, 4, True, False, False, False).cluster_share == 1
    shipped_cs2 = [c for c in P.shipped_configs() if c.cluster_share == 2]
    assert {(c.k_bits, c.v_bits) for c in shipped_cs2} >= set(P.CLUSTER_SHARE_MEASURED)
    # CI compile budget (+2: the K4V8 conflict-free V-table candidates of step 10)
    assert len(shipped_cs2) <= 2 * len(P.CLUSTER_SHARE_MEASURED) + 6


def test_cluster_pair_scheduler_overrides_create():
    """FA4's SingleTileVarlenScheduler.create constructs SingleTileVarlenScheduler by name,
    which silently dropped the subclass's head-pair _decode_work_tile on the GPU (only half of
    the heads were computed): the subclass must override create as well."""
    assert "create" in P.ClusterPairVarlenScheduler.__dict__
    assert "_decode_work_tile" in P.ClusterPairVarlenScheduler.__dict__


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_cluster_pair_decode_covers_both_tiles_exactly_once(bits):
    """Emulate the cluster_share=2 data flow on one 128-row tile: every producer thread of
    CTA r stores its row / half-row chunks (cluster_pair_part_py, the kernel's index math) into
    its OWN tile; then the bulk copies move CTA r's two byte ranges [h*16384 + r*8192, +8192)
    (share_commit) into the same offsets of the peer. The local stores of CTA r must land
    exactly inside those ranges (rows 64r..64r+63, each element once), and after the copies
    both tiles must hold every element at the address FA4's layout reads it
    (swizzled_offset_py, itself checked against FA4's layout above)."""
    import numpy as np
    d, rows = 128, 128
    half = P.cluster_pair_half_bytes(d, rows) // 2  # bytes per swizzle-atom column slice
    assert half == 8192
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, size=(rows, d))  # code index stands in for the value
    tiles = np.full((2, rows * d), -1, dtype=np.int64)  # per CTA, one slot per bf16 element
    writes = np.zeros((2, rows * d), dtype=np.int64)
    decoded_rows = {0: set(), 1: set()}
    for rank in (0, 1):
        ranges = [(h * rows * 128 + rank * half, h * rows * 128 + (rank + 1) * half)
                  for h in (0, 1)]
        for tidx in range(P.PRODUCER_THREADS):
            row, parts = P.cluster_pair_part_py(rank, tidx, bits, d, rows)
            decoded_rows[rank].add(row)
            for code_byte, off in parts:
                assert off % 16 == 0 and code_byte % bits == 0
                assert any(a <= off and off + 16 <= b for a, b in ranges), (rank, tidx, off)
                first = code_byte * 8 // bits  # element index of the chunk's first code
                for e in range(8):
                    slot = off // 2 + e
                    tiles[rank, slot] = codes[row, first + e]
                    writes[rank, slot] += 1
        # own rows complete before the copy: exactly the two ranges, each element once
        in_ranges = np.zeros(rows * d, dtype=bool)
        for a, b in ranges:
            in_ranges[a // 2:b // 2] = True
        assert (writes[rank][in_ranges] == 1).all() and (writes[rank][~in_ranges] == 0).all()
    assert decoded_rows[0] == set(range(64)) and decoded_rows[1] == set(range(64, 128))
    for rank in (0, 1):  # the bulk copies into the peer
        for h in (0, 1):
            a = (h * rows * 128 + rank * half) // 2
            b = a + half // 2
            assert (writes[rank ^ 1, a:b] == 0).all()  # never written locally by the peer
            tiles[rank ^ 1, a:b] = tiles[rank, a:b]
            writes[rank ^ 1, a:b] += 1
    assert (writes == 1).all()
    for cta in (0, 1):
        for r in range(rows):
            for j in range(d // 8):
                base = swizzled_offset_py(r, j, rows) // 2
                assert list(tiles[cta, base:base + 8]) == list(codes[r, 8 * j:8 * j + 8])


def _simulate_cluster_pair_pipeline(n_blocks, stages, seed, remote_release=True,
                                    expect_tx=True):
    """Random-interleaving model of one ClusterPairPipeline side (K or V) across the two CTAs.
    mbarriers keep pending arrivals, a transaction count and the phase (a phase completes when
    both are 0; try_wait.parity P passes once the phase of parity P completed). Per CTA: a
    producer (after its own empty[s]: 4 warp slices stored into its OWN stage, then — the
    named barrier — one arrive.expect_tx of the peer's bytes on its own full[s] and a bulk copy
    issued), the bulk copies (async actors: read the source slices, write them into the peer's
    stage, complete_tx on the peer's full[s]) and 8 consumer warps (wait own full[s], read all 8
    slices of both CTAs, release own + (remote_release) the peer's empty[s]). Returns a list of
    violations (stage overwritten while read, read before both halves landed, a copy reading a
    source already overwritten) or 'deadlock'."""
    import random
    rnd = random.Random(seed)
    full_n, empty_n = P.cluster_pair_arrivals()
    if not remote_release:
        empty_n //= 2
    tx_bytes = P.cluster_pair_half_bytes()
    full = {(c, s): [full_n, 0, 0] for c in (0, 1) for s in range(stages)}
    empty = {(c, s): [empty_n, 0] for c in (0, 1) for s in range(stages)}

    def settle(key):
        b = full[key]
        if b[0] == 0 and b[1] == 0:
            b[0], b[2] = full_n, b[2] + 1

    def arrive_empty(key):
        b = empty[key]
        b[0] -= 1
        assert b[0] >= 0
        if b[0] == 0:
            b[0], b[1] = empty_n, b[1] + 1

    stage = {(c, s): {} for c in (0, 1) for s in range(stages)}  # (cta, warp) -> block
    reading = {(c, s): 0 for c in (0, 1) for s in range(stages)}
    bad = []
    actors = []

    def copy(cta, s, i):
        yield  # issued; runs later
        peer = cta ^ 1
        for w in range(4):  # the copy reads its source slice by slice while writing the peer
            if stage[(cta, s)][(cta, w)] != i:
                bad.append(f"block {i}: CTA {cta}'s copy read a source already overwritten")
            if reading[(peer, s)]:
                bad.append(f"block {i}: copy from CTA {cta} overwrote stage {s} of CTA {peer} "
                           f"during a read")
            stage[(peer, s)][(cta, w)] = i
            yield
        full[(peer, s)][1] -= tx_bytes  # complete_tx
        settle((peer, s))
        yield

    def producer(cta):
        for i in range(n_blocks):
            s, parity = i % stages, 1 - (i // stages) % 2  # producer state starts at phase 1
            while empty[(cta, s)][1] % 2 == parity:
                yield
            for w in range(4):
                if reading[(cta, s)]:
                    bad.append(f"block {i}: CTA {cta} overwrote its stage {s} during a read")
                stage[(cta, s)][(cta, w)] = i
                yield
            b = full[(cta, s)]  # arrive.expect_tx by thread 0 after the named barrier
            b[1] += tx_bytes if expect_tx else 0
            b[0] -= 1
            assert b[0] >= 0
            settle((cta, s))
            actors.append(copy(cta, s, i))
            yield

    def consumer(cta, w):
        for i in range(n_blocks):
            s, parity = i % stages, (i // stages) % 2
            while full[(cta, s)][2] % 2 == parity:
                yield
            reading[(cta, s)] += 1
            want = {(r, pw): i for r in (0, 1) for pw in range(4)}
            if stage[(cta, s)] != want:
                bad.append(f"block {i}: CTA {cta} consumer {w} read {stage[(cta, s)]}")
            yield
            if stage[(cta, s)] != want:
                bad.append(f"block {i}: CTA {cta} stage {s} changed during the read")
            reading[(cta, s)] -= 1
            arrive_empty((cta, s))
            if remote_release:
                arrive_empty((cta ^ 1, s))
            yield

    actors += [producer(c) for c in (0, 1)] + [consumer(c, w) for c in (0, 1) for w in range(8)]
    stalled = 0
    while actors:
        a = rnd.choice(actors)
        snapshot = (str(full), str(empty), str(stage), len(bad), len(actors))
        try:
            next(a)
        except StopIteration:
            actors.remove(a)
            stalled = 0
            continue
        same = (str(full), str(empty), str(stage), len(bad), len(actors)) == snapshot
        stalled = stalled + 1 if same else 0
        if stalled > 5000:
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
    model finds a producer or a copy overwriting a stage the peer CTA still reads."""
    found = next(bad for seed in range(20)
                 if (bad := _simulate_cluster_pair_pipeline(7, 2, seed, remote_release=False)))
    assert any("overw" in b or "changed during" in b for b in found), found


def test_cluster_pair_barrier_protocol_needs_expect_tx():
    """Negative control: without the transaction bytes on the full barrier, consumers read a
    stage before the peer's copy landed (or the barrier never settles)."""
    found = next(bad for seed in range(20)
                 if (bad := _simulate_cluster_pair_pipeline(7, 2, seed, expect_tx=False)))
    assert any(" read {" in b for b in found), found


@pytest.mark.parametrize("kb,vb", [(4, 4), (2, 2), (4, 2), (2, 4), (4, 8), (8, 8)])
def test_prmt_lut_addressing(kb, vb):
    """The PRMT-addressed tables (prmt_lut, both prefill kernels): the slots build_lut writes
    (dq.lut_slot_offset at PRMT_LUT_STRIDE, K at + 0, V at + 128) tile the 64 KB without
    overlap, every lookup offset PRMT(lane slot, code word) lands on the entry of its byte in
    its own side and replica, and a warp's lookups are conflict-free (LDS.32: 32 distinct
    banks; 2-bit LDS.64: per half warp, 16 disjoint bank pairs)."""
    import random

    from fa4_tq.kernels import dequant as dq
    from fa4_tq.kernels.code_interleave import byte_offset_selector, prmt_py

    slots = {}
    for is_k, bits in ((True, kb), (False, vb)):
        side = 0 if is_k else dq.PRMT_LUT_STRIDE // 2
        width = 4 * dq.lut_entry_words(bits)
        for e in range(256):
            for r in range(dq.prmt_replicas(bits)):
                off = side + dq.lut_slot_offset(e, r, bits, dq.PRMT_LUT_STRIDE)
                for b in range(off, off + width):
                    assert b not in slots and 0 <= b < dq.PRMT_LUT_BYTES
                    slots[b] = (is_k, e, r)
    assert len(slots) == dq.PRMT_LUT_BYTES
    rnd = random.Random(kb * 10 + vb)
    for is_k, bits in ((True, kb), (False, vb)):
        reps = dq.prmt_replicas(bits)
        for _ in range(50):
            words = [rnd.getrandbits(32) for _ in range(32)]
            for j in range(4):
                offs = [prmt_py(dq.prmt_lane_offset(bits, lane, is_k), words[lane],
                                byte_offset_selector(j)) for lane in range(32)]
                for lane, off in enumerate(offs):
                    assert slots[off] == (is_k, (words[lane] >> (8 * j)) & 0xFF, lane % reps)
                if bits == 2:
                    for half in (offs[:16], offs[16:]):
                        banks = [(o // 4 + k) % 32 for o in half for k in (0, 1)]
                        assert len(set(banks)) == 32
                else:
                    assert len({o // 4 % 32 for o in offs}) == 32
