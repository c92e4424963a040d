"""Opt-in prefill builds waiting for a device measurement (plain data, no cutlass import, so
that the GPU tests can parametrize over them at collection time; the kernels' compile lists
register them with the compile harness).

Each entry is (k_bits, v_bits, causal, knobs) at D=128, GQA 4.
"""

#: PrefillSm90 step 10 (docs/prefill-sm90-notes.md): 32-replica conflict-free byte tables with
#: one staging slot (one side) or the staging-free producer (both; (192, 64): the causal build
#: spills 40 B at (200, 56)), the 8-bit V side of K4V8, and PRMT-addressed interleaved tables
#: (prmt_lut: one PRMT per lookup instead of BFE + IMAD, and each 8-element chunk stored as
#: soon as it is decoded; K8V8 spills 8-64 B at every split tried, so not listed). ``knobs`` go
#: to prefill_sm90.make_config / tqkv.prefill.
SM90_LUT_CANDIDATES = (
    (4, 4, False, dict(lut_replicas=(32, 16))), (4, 4, True, dict(lut_replicas=(32, 16))),
    (4, 4, True, dict(lut_replicas=(16, 32))),
    (4, 4, False, dict(lut_replicas=(32, 32), direct_loads=True, num_stages=2,
                       register_split=(192, 64))),
    (4, 4, True, dict(lut_replicas=(32, 32), direct_loads=True, num_stages=2,
                      register_split=(192, 64))),
    (4, 8, False, dict(lut_replicas=(1, 32))), (4, 8, True, dict(lut_replicas=(1, 32))),
    (4, 4, False, dict(prmt_lut=True, direct_loads=True, num_stages=2,
                       register_split=(200, 56))),
    (4, 4, True, dict(prmt_lut=True, direct_loads=True, num_stages=2,
                      register_split=(200, 56))),
    (4, 8, False, dict(prmt_lut=True, direct_loads=True, num_stages=2, cluster_share=1,
                       register_split=(192, 64))),
    # 2-bit sides (16 replicas x 8-byte entries, one LDS.64 per byte of 4 codes) at the
    # default (208, 48) split; the causal K2V2 build spills 16 B, (200, 56) / (192, 64) spill
    # 32-36 B full
    (2, 2, False, dict(prmt_lut=True, direct_loads=True, num_stages=2)),
    (4, 2, False, dict(prmt_lut=True, direct_loads=True, num_stages=2)),
    (2, 4, False, dict(prmt_lut=True, direct_loads=True, num_stages=2)),
    # chunked prefill (the packed GQA tile, where decode work per FLOP is highest; K2V2 packed
    # spills 72 B)
    (4, 4, True, dict(prmt_lut=True, direct_loads=True, num_stages=2,
                      register_split=(200, 56), pack_gqa=True)))

#: PrefillSm80 (docs/prefill-sm80-notes.md, session 9): prmt_lut builds (K8V8 needs 169 KB,
#: over the A100's 163 KB portable bound).
SM80_PRMT_LUT_CANDIDATES = (
    (4, 4, False, dict(prmt_lut=True)), (4, 4, True, dict(prmt_lut=True)),
    (4, 8, True, dict(prmt_lut=True)), (2, 2, False, dict(prmt_lut=True)),
    (2, 2, True, dict(prmt_lut=True)))
