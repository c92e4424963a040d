"""Compile the shipped decode + combine configs for sm_90a on the CPU (fake tensors)
through the compile harness: no errors, no register spills, smem within the per-block limit."""

from fa4_tq.kernels.compile import configure_cpu_compile_env

configure_cpu_compile_env()  # before anything imports cutlass

import pytest  # noqa: E402

from fa4_tq.kernels import compile as harness  # noqa: E402


@pytest.fixture(scope="module")
def results():
    from fa4_tq.kernels import decode

    configs = decode.compile_configs()
    return {c.key: r for c, r in zip(configs, harness.compile_report(configs))}


@pytest.mark.compile
def test_decode_configs_compile_without_spills(results):
    assert len(results) >= 20
    bad = [(k, r.error, r.registers, r.spill_bytes, r.notes) for k, r in results.items()
           if r.error is not None or r.spill_bytes != 0 or r.registers is None
           or r.registers > 255 or r.smem_bytes is None or r.smem_bytes > 227 * 1024]
    assert not bad, bad


@pytest.mark.compile
def test_decode_config_geometry():
    from fa4_tq.kernels.decode import DecodeConfig, choose_num_splits

    c = DecodeConfig(4, 4, 128, 4, 1)
    assert (c.n_tiles, c.n_groups, c.streams, c.col_ctas) == (1, 1, 8, 1)
    shipped = DecodeConfig.for_problem(4, 4, 128, 4, 1)
    assert shipped.prefetch and shipped.num_warps == 4 and shipped.min_ctas_per_sm == 2
    # the query rotation is part of the kernel (no GEMM launch) unless the caller opts out
    assert shipped.rotate_query
    assert not DecodeConfig.for_problem(4, 4, 128, 4, 1, rotate_query=False).rotate_query
    assert not DecodeConfig.for_problem(8, 8, 128, 4, 1).prefetch
    big = DecodeConfig(4, 4, 256, 16, 8)
    assert big.col_ctas == 2 and big.num_warps == 8
    with pytest.raises(NotImplementedError):
        DecodeConfig(4, 4, 128, 32, 8)
    # shapes-only heuristic: B=1 fills the GPU, long batches do not over-split
    regpf = DecodeConfig.for_problem(2, 4, 128, 4, 1)  # register prefetch, 3 CTAs/SM
    assert choose_num_splits(1, 8, 8192, regpf) == 16
    assert choose_num_splits(1, 8, 131072, regpf) >= 33
    assert choose_num_splits(32, 8, 131072, regpf) >= 3  # no 1.3-wave tail
    assert choose_num_splits(1, 8, 16, regpf) == 1
    # the ring (2 CTAs/SM): B=32 x 8 heads = 256 CTAs fill one wave of 264 slots
    assert choose_num_splits(32, 8, 131072, shipped) == 1
    assert choose_num_splits(1, 8, 131072, shipped) >= 33


# ---------------------------------------------------------------------------- smem ring
def _start_walk(nt, streams, bs):
    """TQDecodeSplitK.start_walk: (block, row) of tile nt and the per-step (blocks, rows)."""
    return [nt * 16 // bs, (nt * 16) % bs, streams * 16 // bs, (streams * 16) % bs]


def _walk_step(walk, bs):
    """TQDecodeSplitK.walk_step (no division)."""
    r, blk = walk[1] + walk[3], walk[0] + walk[2]
    if r >= bs:
        r, blk = r - bs, blk + 1
    walk[0], walk[1] = blk, r


def _emulate_ring_schedule(t_begin, t_end, stream, streams, S, block_table, bs, pairs=False):
    """The smem ring's control flow (TQDecodeSplitK.prefetch_prologue + the unrolled loop of
    the kernel, same arithmetic, incl. the division-free block walk) on one thread, with
    cp.async groups modelled exactly: ``cp.async.wait_group n`` completes all but the newest
    n committed groups. ``pairs``: the tile-pair loop (DecodeConfig.tile_pairs). Returns the
    tiles in the order they were computed; raises on any hazard or wrong address."""
    stage = [None] * S          # tile whose bytes were issued into each stage
    landed = [False] * S
    norm_slot = [None] * S
    groups = []                 # committed groups: list of stage indices they write
    pending = []                # copies issued since the last commit
    computed = []

    def issue(tile, phys, r0, s):
        assert phys == block_table[tile * 16 // bs], "block-table entry of the wrong tile"
        assert r0 == (tile * 16) % bs, "row in block of the wrong tile"
        assert stage[s] is None, f"stage {s} overwritten before tile {stage[s]} was read"
        stage[s], landed[s] = tile, False
        norm_slot[s] = tile
        pending.append(s)

    def commit():
        groups.append(list(pending))
        pending.clear()

    def wait(n):
        while len(groups) > n:
            for s in groups.pop(0):
                landed[s] = True

    first = t_begin + stream
    P = 2 if pairs else 1  # tiles per step, as the kernel's loop
    for s in range(S - P):
        tile = first + s * streams
        if tile < t_end:
            issue(tile, block_table[tile * 16 // bs], (tile * 16) % bs, s)
        commit()
    nt = first + (S - P) * streams
    walk = _start_walk(nt, streams, bs)
    physn = block_table[walk[0]] if nt < t_end else 0
    for base in range(first, t_end, S * streams):
        for u in range(0, S, P):
            tile = base + u * streams
            if tile < t_end:
                for d in range(P):
                    nxt = tile + (S - P + d) * streams
                    if nxt < t_end:
                        issue(nxt, physn, walk[1], (u + S - P + d) % S)
                        _walk_step(walk, bs)
                        nn = nxt + streams
                        if nn < t_end:
                            physn = block_table[walk[0]]
                    commit()
                wait(S - P)
                for n in range(P):
                    t = tile + n * streams
                    if t < t_end:
                        assert stage[u + n] == t and landed[u + n], (t, u, stage, landed)
                        assert norm_slot[u + n] == t
                        computed.append(t)
                    else:  # read but masked (t0 = L): no copy may still be writing it
                        assert stage[u + n] is None
                    stage[u + n] = None  # read into registers: the slot may be refilled
    wait(0)
    assert not pending
    return computed


def _emulate_lookahead_loads(t_begin, t_end, stream, streams, block_table, bs):
    """The register prefetch with table_lookahead (prologue + loop): the (block, row) each
    load_tile_at call gets, in order."""
    loads = []
    first = t_begin + stream
    if first < t_end:
        loads.append((first, block_table[first * 16 // bs], (first * 16) % bs))
    walk = _start_walk(first + streams, streams, bs)
    physn = block_table[walk[0]] if first + streams < t_end else 0
    for tile in range(first, t_end, streams):
        nxt = tile + streams
        if nxt < t_end:
            loads.append((nxt, physn, walk[1]))
            _walk_step(walk, bs)
            if nxt + streams < t_end:
                physn = block_table[walk[0]]
    return loads


@pytest.mark.compile
def test_smem_ring_schedule_matches_tile_order():
    """Every tile of the split is computed exactly once, in the register-prefetch order,
    from a stage that holds its bytes and has landed; stages are never overwritten unread;
    the block-table entry and row used for an address are that tile's, for block sizes
    16..128 (the walk replaces the per-tile division)."""
    import random

    rnd = random.Random(0)
    for S, pairs in ((2, False), (3, False), (4, False), (4, True)):
        for streams in (1, 2, 4, 6, 8):
            for _ in range(60):
                bs = rnd.choice([16, 32, 48, 64, 80, 128])
                t_begin = rnd.randrange(0, 40)
                t_end = t_begin + rnd.choice([0, 1, 2, 3, 5, 7, 8, 13, 64, 97])
                bt = [rnd.randrange(1000) for _ in range(t_end * 16 // bs + 2)]
                for stream in range(streams):
                    got = _emulate_ring_schedule(t_begin, t_end, stream, streams, S, bt, bs,
                                                 pairs)
                    assert got == list(range(t_begin + stream, t_end, streams))


@pytest.mark.compile
def test_table_lookahead_addresses():
    """table_lookahead: every tile of the warp is loaded once, in order, with its own
    physical block and row."""
    import random

    rnd = random.Random(1)
    for streams in (1, 2, 4, 8):
        for _ in range(200):
            bs = rnd.choice([16, 32, 48, 64, 80, 128])
            t_begin = rnd.randrange(0, 40)
            t_end = t_begin + rnd.choice([0, 1, 2, 3, 5, 7, 8, 13, 64, 97])
            bt = [rnd.randrange(1000) for _ in range(t_end * 16 // bs + 2)]
            for stream in range(streams):
                loads = _emulate_lookahead_loads(t_begin, t_end, stream, streams, bt, bs)
                assert [t for t, _, _ in loads] == list(range(t_begin + stream, t_end, streams))
                for t, phys, r0 in loads:
                    assert phys == bt[t * 16 // bs] and r0 == (t * 16) % bs


@pytest.mark.compile
def test_smem_ring_slot_layout_round_trips():
    """read_stage reads back, per thread, the words load_tile would hold (kbuf/vbuf order)
    from the slots issue_tile_async wrote; slots of different lanes / pieces never overlap
    and a quarter warp's 16-byte (half warp's 8-byte) pieces are 128 contiguous bytes."""
    from fa4_tq.kernels.decode import DecodeConfig

    for kb, vb, d in ((4, 4, 128), (2, 2, 128), (8, 8, 128), (4, 8, 256), (2, 4, 64)):
        cfg = DecodeConfig(kb, vb, d, 4, 1, prefetch=True, smem_stages=3)
        kseg, vseg = cfg.k_seg_bytes, cfg.v_seg_bytes
        kp, vp = min(16, kseg), min(16, vseg)
        owner = {}
        for lane in range(32):
            # issue: (smem offset, global byte offset within the thread's segment of row)
            words_written = {}
            for rr in range(2):
                for p in range(kseg // kp):
                    off = ((rr * (kseg // kp) + p) * 32 + lane) * kp
                    for byte in range(kp):
                        assert owner.setdefault(off + byte, (lane, "k", rr, p)) == \
                            (lane, "k", rr, p)
                    words_written[("k", rr, p * kp)] = off
            for tt in range(4):
                for p in range(vseg // vp):
                    off = 2 * kseg * 32 + ((tt * (vseg // vp) + p) * 32 + lane) * vp
                    for byte in range(vp):
                        assert owner.setdefault(off + byte, (lane, "v", tt, p)) == \
                            (lane, "v", tt, p)
                    words_written[("v", tt, p * vp)] = off
            # read_stage fills kt[rr*kseg/4 + p*kp/4 + w] from the same offsets: word index
            # -> segment byte (rr*kseg + 4*index) like load_tile's kbuf[rr*KW + w]
            for rr in range(2):
                for p in range(kseg // kp):
                    for w in range(kp // 4):
                        idx = rr * (kseg // 4) + p * (kp // 4) + w
                        assert idx * 4 == rr * kseg + p * kp + 4 * w
        assert max(owner) + 1 == cfg.ring_stage_bytes
        # contiguity per quarter warp (16 B pieces) / half warp (8 B): lane-minor layout
        assert ((0 * 32 + 1) * kp) - ((0 * 32 + 0) * kp) == kp


@pytest.mark.compile
def test_candidate_knobs_validate_and_key():
    from fa4_tq.kernels.decode import DecodeConfig

    # shipped defaults (H100 2026-11-24, docs/decode-notes.md §8): 4-bit K at D=128 runs the
    # smem ring with early prefetch and tile bases, the other prefetching pairs the register
    # prefetch with the block-table lookahead (not K2V2 D128 at q_len > 1: it spills)
    base = DecodeConfig.for_problem(4, 4, 128, 4, 1)
    assert (base.early_prefetch, base.tile_bases, base.num_warps) == (True, True, 4)
    assert base.smem_stages == 3 and base.smem_bytes == 65536 + 4 * 3 * 2048
    k4v8 = DecodeConfig.for_problem(4, 8, 128, 4, 1)
    assert (k4v8.smem_stages, k4v8.num_warps, k4v8.min_ctas_per_sm) == (3, 8, 1)
    assert k4v8.smem_bytes + 1024 <= 227 * 1024
    assert not DecodeConfig.for_problem(8, 8, 128, 4, 1).smem_stages  # ring measured slower
    assert DecodeConfig.for_problem(4, 2, 128, 4, 1).smem_stages == 4
    k2v4 = DecodeConfig.for_problem(2, 4, 128, 4, 1)
    assert k2v4.smem_stages == 0 and k2v4.table_lookahead and not k2v4.tile_bases
    assert DecodeConfig.for_problem(4, 4, 64, 4, 1).table_lookahead  # ring measured at D=128 only
    # PRMT-addressed tables (H100 2026-12-07, §9) for the measured pairs at D=128 only
    from fa4_tq.kernels.decode import PRMT_LUT_MEASURED

    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            for d in (64, 128, 256):
                assert (DecodeConfig.for_problem(kb, vb, d, 4, 1).prmt_lut
                        == (d == 128 and (kb, vb) in PRMT_LUT_MEASURED))
    assert (8, 8) not in PRMT_LUT_MEASURED  # 129 registers: slower at B >= 8
    # K2V2: no lookahead next to the byte tables at 8 warps x 2 CTAs (60 B spill); at
    # q_len > 2 the 8-warp geometry spills either way, so 4 warps x 3 CTAs
    k2v2 = DecodeConfig.for_problem(2, 2, 128, 4, 1)
    assert (k2v2.prmt_lut, k2v2.table_lookahead, k2v2.num_warps) == (True, False, 8)
    assert not DecodeConfig.for_problem(2, 2, 128, 4, 2).table_lookahead
    k2v2q4 = DecodeConfig.for_problem(2, 2, 128, 2, 4)
    assert (k2v2q4.num_warps, k2v2q4.min_ctas_per_sm, k2v2q4.table_lookahead) == (4, 3, True)
    assert DecodeConfig.for_problem(2, 2, 64, 4, 1).table_lookahead
    # every shipped config carries a register bound except one-column-tile D <= 128 ones
    # (unbounded two-column-tile / D=256 builds spilled at ptxas's own 128/168 caps)
    from fa4_tq.kernels.decode import ctas_per_sm

    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            for d in (64, 128, 256):
                for g in (1, 3, 4, 16):
                    for q in (1, 5, 8):
                        cfg = DecodeConfig.for_problem(kb, vb, d, g, q)
                        assert cfg.min_ctas_per_sm >= 1 or (cfg.n_tiles_per_warp == 1
                                                             and d <= 128), cfg
                        assert ctas_per_sm(cfg) == (cfg.min_ctas_per_sm or 2)
    ring = DecodeConfig(4, 4, 128, 4, 1, target_warps=4, prefetch=True, min_ctas_per_sm=2,
                        smem_stages=4)
    assert ring != DecodeConfig(4, 4, 128, 4, 1, target_warps=4, prefetch=True,
                                min_ctas_per_sm=2)  # part of the compile key
    # two CTAs of tables + 4 warps x 4 stages x 2 KB fit the 227 KB per SM
    assert ring.smem_bytes == 65536 + 4 * 4 * 2048 and 2 * (ring.smem_bytes + 1024) <= 228 * 1024
    with pytest.raises(ValueError):
        DecodeConfig(4, 4, 128, 4, 1, prefetch=False, early_prefetch=True)
    with pytest.raises(ValueError):
        DecodeConfig(4, 4, 128, 4, 1, prefetch=False, smem_stages=3)
    with pytest.raises(NotImplementedError):
        DecodeConfig(2, 2, 64, 4, 1, prefetch=True, smem_stages=3)  # 2-byte V segments
    with pytest.raises(NotImplementedError):
        DecodeConfig(4, 4, 128, 4, 1, prefetch=True, smem_stages=5)
    with pytest.raises(NotImplementedError):  # tile pairs: the 4-stage ring only
        DecodeConfig(4, 4, 128, 4, 1, prefetch=True, smem_stages=3, tile_pairs=True)
    assert DecodeConfig(4, 4, 128, 4, 1, prefetch=True, smem_stages=4,
                        tile_pairs=True).name.endswith("_tp")


@pytest.mark.compile
def test_probe_candidate_names_match_kernel():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from fa4_tq.kernels.decode import SPEED_CANDIDATES, candidate_config
    from microbench.decode_probe import CANDIDATE_NAMES, correctness_cases

    assert {k: tuple(v) for k, v in SPEED_CANDIDATES.items()} == CANDIDATE_NAMES
    for kb, names in CANDIDATE_NAMES.items():
        for n in names:
            cfg = candidate_config(kb, 128, 4, 1, n)
            assert cfg.smem_bytes + 1024 <= 228 * 1024 // max(1, cfg.min_ctas_per_sm)
    cases = [c for c in correctness_cases() if c.get("candidate")]
    # q1 for every candidate, q2 + window + 7 splits for all but ring_early, bs64 for ring
    # and the tile-pair candidates
    for c in cases:
        candidate_config(c["kb"], c["D"], c["G"], c["qlen"], c["candidate"])
    with pytest.raises(NotImplementedError):
        candidate_config(4, 128, 4, 4, "regpf")  # two column tiles: no prefetch to modify
    assert len(cases) == sum(2 * len(v) - ("ring_early" in v)
                             + sum(n == "ring" or n.endswith("tp") for n in v)
                             for v in CANDIDATE_NAMES.values())


@pytest.mark.compile
def test_prmt_lut_tables_fit_every_pair():
    from fa4_tq.kernels.decode import PRMT_LUT_BYTES, DecodeConfig

    for kb in (2, 4, 8):
        for vb in (2, 4, 8):
            cfg = DecodeConfig.for_problem(kb, vb, 128, 4, 1)
            pl = DecodeConfig(**{**cfg.__dict__, "prmt_lut": True})
            assert pl.table_bytes == PRMT_LUT_BYTES == 65536
            assert pl.ring_offset >= pl.table_bytes  # merge area and ring follow the tables
            # the tables fit next to the ring at the config's CTAs per SM
            assert pl.smem_bytes + 1024 <= 228 * 1024 // max(1, pl.min_ctas_per_sm)
    assert DecodeConfig(2, 2, 128, 4, 1).table_bytes == 2 * 16 * 32 * 4
