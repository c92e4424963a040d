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
    assert shipped.prefetch and shipped.num_warps == 4 and shipped.min_ctas_per_sm == 3
    # the query rotation is part of the kernel (no GEMM launch) unless the caller opts out
    assert shipped.rotate_query
    assert not DecodeConfig.for_problem(4, 4, 128, 4, 1, rotate_query=False).rotate_query
    assert not DecodeConfig.for_problem(8, 8, 128, 4, 1).prefetch
    big = DecodeConfig(4, 4, 256, 16, 8)
    assert big.col_ctas == 2 and big.num_warps == 8
    with pytest.raises(NotImplementedError):
        DecodeConfig(4, 4, 128, 32, 8)
    # shapes-only heuristic: B=1 fills the GPU, long batches do not over-split
    assert choose_num_splits(1, 8, 8192, shipped) == 16
    assert choose_num_splits(1, 8, 131072, shipped) >= 33
    assert choose_num_splits(32, 8, 131072, shipped) >= 3  # no 1.3-wave tail
    assert choose_num_splits(1, 8, 16, shipped) == 1
