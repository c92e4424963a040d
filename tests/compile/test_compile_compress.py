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
    # 35 binary/dequantize + 14 compress 'lut' + 5 'lut-wide' + 3 'lut-pf' ("auto"'s choice
    # for large K4V4/K4V2/K2V2 calls) + 2 opt-in H7 candidates ('lut-pf-s4', 'lut-wide-s4',
    # D128 K4V4) + 3 session-8 candidates ('lut-wide-r3' and 'lut-pf-i8' D128 K4V4,
    # 'lut-r2' D128 K8V8)
    assert len(results) == 62
    bad = []
    for key, r in results.items():
        if r.error is not None or r.spill_bytes != 0 or r.registers is None or r.registers > 255:
            bad.append((key, r.error, r.registers, r.spill_bytes, r.notes))
    assert not bad, bad
    # Every 256-thread compress config fits two CTAs per SM (<= 128 registers); 'lut-wide'
    # (128 threads, launch bound of 3 CTAs per SM) fits three (<= 170).
    limit = {k: (170 if "-wide" in k[4] else 128) for k in results if k[0] == "compress"}
    assert all(results[k].registers <= lim for k, lim in limit.items()), \
        {k: results[k].registers for k in limit}
