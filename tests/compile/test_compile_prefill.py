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
