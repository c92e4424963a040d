"""Compile stock FA4 Sm90 forward for sm_90a on the CPU through the harness.

Proves the harness end to end: fake-tensor compile without a GPU, and registers,
spills and shared memory really parsed from CuTeDSL's ptxas remarks / host IR.
The parser tests at the bottom need no compiler and are not marked ``compile``.
"""

from fa4_tq.kernels.compile import configure_cpu_compile_env

# Before anything imports cutlass: CuTeDSL reads CUTE_DSL_* once, at import.
configure_cpu_compile_env()

import io  # noqa: E402

import pytest  # noqa: E402

from fa4_tq.kernels import compile as harness  # noqa: E402

FA4_MODULE = "fa4_tq.kernels.fa4_reference_configs"
EXPECTED_KEYS = {
    ("fa4_fwd", 16, 16, d, v) for d in (64, 128) for v in ("sm90", "sm90-causal")
}
SM90_SMEM_LIMIT = 232448  # 227 KB per block on H100


@pytest.fixture(scope="module")
def fa4_results():
    configs = harness.registered_configs(["fa4_fwd"])
    assert FA4_MODULE not in harness.registry_import_errors()
    assert {c.key for c in configs} == EXPECTED_KEYS
    return {c.key: r for c, r in zip(configs, harness.compile_report(configs))}


@pytest.mark.compile
@pytest.mark.parametrize("key", sorted(EXPECTED_KEYS), ids=lambda k: f"D{k[3]}-{k[4]}")
def test_fa4_fwd_sm90_compiles_with_parsed_resources(fa4_results, key):
    r = fa4_results[key]
    assert r.error is None, r.error
    assert r.compile_s is not None and r.compile_s > 0
    assert r.registers is not None, r.notes  # really parsed, not defaulted
    assert 0 < r.registers <= 255
    assert r.spill_bytes == 0, r.notes
    assert r.smem_bytes is not None, r.notes
    assert 0 < r.smem_bytes <= SM90_SMEM_LIMIT
    assert len(r.ptxas) == 1 and r.ptxas[0].arch == "sm_90a"
    assert r.notes == ()


@pytest.mark.compile
def test_fa4_smem_matches_shared_storage_layout(fa4_results):
    """Dynamic smem from the host IR equals FA4's SharedStorage, computed by hand:
    1 KB of mbarriers (aligned up), then sV, sQ, sK (bf16, 2 K/V stages, P in registers)."""

    def expected(tile_m, tile_n, d):
        return 1024 + 2 * (2 * tile_n * d) + 2 * (tile_m * d) + 2 * (2 * tile_n * d)

    assert fa4_results[("fa4_fwd", 16, 16, 64, "sm90")].smem_bytes == expected(192, 128, 64)
    assert fa4_results[("fa4_fwd", 16, 16, 128, "sm90")].smem_bytes == expected(128, 128, 128)


@pytest.mark.compile
def test_report_rows_and_csv(fa4_results):
    results = [fa4_results[k] for k in sorted(EXPECTED_KEYS)]
    out = io.StringIO()
    harness.write_csv(results, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == ",".join(harness.CSV_HEADER)
    assert len(lines) == 1 + len(results)
    row = dict(zip(harness.CSV_HEADER, results[0].as_row()))
    assert row["kernel"] == "fa4_fwd" and row["registers"] == results[0].registers
    assert "fa4_fwd" in harness.format_table(results)


# ---------------------------------------------------------------------------------
# Parser tests (no compiler). Logs are real ptxas output, kernel names shortened.
# ---------------------------------------------------------------------------------

# As CuTeDSL prints it when nothing is wrong (ptxas log verbatim, ANSI colours).
CLEAN_LOG = """\x1b[96mremark[ptxas info]:\x1b[0m ptxas output: ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'kernel_fwd_0' for 'sm_90a'
ptxas info    : Function properties for kernel_fwd_0
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers
ptxas info    : Compile time = 244.229 ms
"""

# As CuTeDSL prints it inside the "register spills" remark: re-wrapped at 100 columns.
SPILL_LOG = """remark[ptxas]: ptxas detected register spills
  remark: Spilled values are placed in local memory and can add memory traffic and latency.

          ptxas output:
          ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are
          serialized due to insufficient register resources for the function
          'kernel_fwd_0'
          ptxas info    : 0 bytes gmem
          ptxas info    : Compiling entry function
          'kernel_fwd_0'
          for 'sm_90a'
          ptxas info    : Function properties for
          kernel_fwd_0
          ptxas         .     704 bytes stack frame, 704 bytes spill stores, 704 bytes spill loads
          ptxas info    : Used 168 registers, used 2 barriers, 704 bytes cumulative stack size
          ptxas info    : Compile time = 1361.985 ms
"""

# Plain ptxas -v of a kernel with 4 KB of static shared memory.
STATIC_SMEM_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 1 barriers, 4096 bytes smem
ptxas info    : Compile time = 60.483 ms
"""


def test_parse_clean_log():
    (e,) = harness.parse_ptxas_log(CLEAN_LOG)
    assert (e.function, e.arch, e.registers) == ("kernel_fwd_0", "sm_90a", 168)
    assert (e.static_smem_bytes, e.spill_store_bytes, e.spill_load_bytes) == (0, 0, 0)
    assert harness.total_spill_bytes(CLEAN_LOG) == 0
    assert harness.ptxas_perf_warnings(CLEAN_LOG) == []


def test_parse_wrapped_spill_log():
    (e,) = harness.parse_ptxas_log(SPILL_LOG)
    assert (e.function, e.registers, e.static_smem_bytes) == ("kernel_fwd_0", 168, 0)
    assert (e.spill_store_bytes, e.spill_load_bytes, e.stack_frame_bytes) == (704, 704, 704)
    assert harness.total_spill_bytes(SPILL_LOG) == 1408
    (warning,) = harness.ptxas_perf_warnings(SPILL_LOG)
    assert warning.startswith("wgmma.mma_async instructions are serialized")


def test_parse_static_smem():
    (e,) = harness.parse_ptxas_log(STATIC_SMEM_LOG)
    assert (e.registers, e.static_smem_bytes) == (8, 4096)


def test_no_log_means_unknown_not_zero():
    assert harness.parse_ptxas_log("") == []
    assert harness.total_spill_bytes("no ptxas here") is None
    registers, spill, smem, notes = harness._summarize([], None, [1024], remarks_on=False)
    assert (registers, spill, smem) == (None, None, None)
    assert any("remarks are off" in n for n in notes)


def test_ptxas_remarks_option_detection():
    assert harness._has_ptxas_remarks("remarks{ptx}")
    assert harness._has_ptxas_remarks("warnings{nvvm} remarks")
    assert harness._has_ptxas_remarks("remarks{nvvm,ptx}")
    assert not harness._has_ptxas_remarks("remarks{nvvm}")
    assert not harness._has_ptxas_remarks("")
