"""Compile every shipped compress / dequantize config for sm_90a on the CPU (fake tensors)
through the compile harness: no errors, no register spills."""

from fa4_tq.kernels.compile import configure_cpu_compile_env

configure_cpu_compile_env()  # before anything imports cutlass

import pytest  # noqa: E402

from fa4_tq.kernels import compile as harness  # noqa: E402


def _configs():
    from fa4_tq.kernels import compress

    found = []
    compress.register_configs(found.append)
    return found


@pytest.fixture(scope="module")
def results():
    configs = _configs()
    return {c.key: r for c, r in zip(configs, harness.compile_report(configs))}


@pytest.mark.compile
def test_compress_configs_compile_without_spills(results):
    assert len(results) == 49  # 35 binary/dequantize + 14 compress 'lut'
    bad = []
    for key, r in results.items():
        if r.error is not None or r.spill_bytes != 0 or r.registers is None or r.registers > 255:
            bad.append((key, r.error, r.registers, r.spill_bytes, r.notes))
    assert not bad, bad
    # Every compress config fits two 256-thread CTAs per SM (<= 128 registers).
    assert all(r.registers <= 128 for k, r in results.items() if k[0] == "compress"), \
        {k: r.registers for k, r in results.items()}
