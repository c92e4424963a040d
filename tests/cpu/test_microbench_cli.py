"""The microbench CLI on a CPU-only machine: argument parsing, grids, CSV schemas, the CPU
reference run, clear exits of GPU-only subcommands, ncu command + report parsing."""

from __future__ import annotations

import csv
import os
import io
import json
import re

import pytest
import torch

from microbench import cli, ncu, report, shapes, timing
from microbench.shapes import ALL_KV, Case, KVConfig

COMPILE_HEADER = "kernel,k_bits,v_bits,head_dim,variant,compile_s,registers,spill_bytes,smem_bytes"
TINY = ["--device", "cpu", "--hq", "4", "--hkv", "2", "--head-dim", "64", "--quiet"]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


# =========================================================================== parsing
def test_parse_prefill_options():
    a = parse("prefill", "--kv", "4,4", "K2V8", "--batch", "1", "2", "--seqlens", "2K", "8k,16384",
              "--hq", "32", "--hkv", "8", "--head-dim", "128", "--block-size", "16", "128",
              "--no-causal", "--window", "128,0", "--dtype", "fp16", "--reps", "5",
              "--csv", "out.csv", "--json", "out.json", "--plot", "out.png", "--timing", "eager",
              "--backend", "sm90", "--impls", "tqkv,fa4", "--time-budget", "60")
    assert a.command == "prefill"
    assert shapes.parse_kv(a.kv) == [KVConfig(4, 4), KVConfig(2, 8)]
    assert cli._flatten(a.seqlens) == [2048, 8192, 16384]
    assert cli._flatten(a.batch) == [1, 2] and cli._flatten(a.block_size) == [16, 128]
    assert (a.hq, a.hkv, a.causal, a.window, a.dtype, a.reps) == (32, 8, False, (128, 0), "fp16", 5)
    assert (a.csv, a.json, a.plot, a.timing, a.backend) == ("out.csv", "out.json", "out.png",
                                                            "eager", "sm90")
    assert a.impls == ["tqkv", "fa4"] and a.time_budget == 60
    cases = cli.cases_from_args("prefill", a)
    assert len(cases) == 2 * 3 * 2  # batch x seqlens x block sizes
    assert all(c.seqlen_q == c.seqlen_k and not c.causal and c.window == (128, 0) for c in cases)


def test_parse_decode_compress_sweep_compile_ncu_plot_smoke():
    d = parse("decode", "--q-len", "1", "4", "--seqlens", "32K", "--batch", "8", "--num-splits", "3")
    cases = cli.cases_from_args("decode", d)
    assert [(c.seqlen_q, c.seqlen_k, c.batch, c.causal) for c in cases] == [
        (1, 32768, 8, True), (4, 32768, 8, True)]
    assert d.num_splits == 3 and d.check is True and d.decode_config is None
    k = parse("decode", "--decode-config", "prmt_lut=1,target_warps=4,combine_pdl=true,"
              "rescale=0.5")
    assert k.decode_config == {"prmt_lut": True, "target_warps": 4, "combine_pdl": True,
                               "rescale": 0.5}

    c = parse("compress", "--seqlens", "1", "64K", "--no-check", "--cache-build", "reference")
    cc = cli.cases_from_args("compress", c)
    assert [x.num_tokens for x in cc] == [1, 65536] and c.check is False
    assert c.cache_build == "reference"

    s = parse("sweep", "--ops", "prefill,decode", "--kv", "all", "--csv", "-")
    assert s.ops == ["prefill", "decode"] and len(shapes.parse_kv(s.kv)) == 9
    assert s.time_budget == cli.SWEEP_TIME_BUDGET_S

    r = parse("compile-report", "--kernels", "prefill,decode", "--kv", "4,4", "--csv", "-")
    assert r.kernels == ["prefill", "decode"] and r.csv == "-"

    n = parse("ncu", "decode", "--kv", "2,4", "--batch", "1", "--seqlens", "8K", "--dry-run")
    assert (n.op, n.impl, n.kv, n.dry_run) == ("decode", "tqkv", "2,4", True)

    p = parse("plot", "results.json", "--plot", "x.png")
    assert (p.results, p.plot) == ("results.json", "x.png")

    m = parse("smoke", "--no-compile-report", "--kv", "4,4")
    assert m.compile_report is False and m.kv == ["4,4"]


@pytest.mark.parametrize("bad", [["prefill", "--kv", "3,4"], ["prefill", "--kv", "4"],
                                 ["decode", "--seqlens", "8X"], ["prefill", "--window", "5"],
                                 ["sweep", "--timing", "fast"],
                                 ["decode", "--decode-config", "prmt_lut"],
                                 ["decode", "--decode-config", "target_warps=four"]])
def test_bad_arguments_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*bad)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_kv_all_expansion():
    kvs = shapes.parse_kv(["all"])
    assert len(kvs) == 9 and len(set(kvs)) == 9
    assert {(k.k_bits, k.v_bits) for k in kvs} == {(k, v) for k in (2, 4, 8) for v in (2, 4, 8)}
    assert kvs == list(ALL_KV)
    # mixing and duplicates
    assert shapes.parse_kv(["4,4", "all", "K4V4"])[0] == KVConfig(4, 4)
    assert len(shapes.parse_kv(["4,4", "all"])) == 9
    assert [k.label for k in shapes.parse_kv("2,8 K8V2")] == ["K2V8", "K8V2"]


def test_sizes_and_windows():
    assert shapes.parse_sizes(["2K", "8k,100", "1M"]) == [2048, 8192, 100, 2**20]
    assert shapes.parse_window("-1,-1") == (-1, -1) and shapes.parse_window("64,0") == (64, 0)
    for bad in ("x", "1", "-2,0"):
        with pytest.raises(ValueError):
            shapes.parse_window(bad)


# =========================================================================== grids and counts
def test_default_grids_are_the_modest_ones():
    pre = shapes.build_cases("prefill")
    assert {(c.batch, c.seqlen_k, c.num_heads, c.num_kv_heads, c.head_dim) for c in pre} == {
        (1, s, 32, 8, 128) for s in (2048, 8192, 16384)}
    assert sorted({c.causal for c in pre}) == [False, True] and len(pre) == 6
    dec = shapes.build_cases("decode")
    assert {(c.batch, c.seqlen_k, c.seqlen_q) for c in dec} == {
        (b, s, 1) for b in (1, 8) for s in (8192, 32768)}
    assert len(shapes.build_cases("compress")) == 4


def test_case_validation():
    with pytest.raises(ValueError, match="causal"):
        Case("prefill", 1, 8, 8, 4, 2, 64, causal=True, window_right=4)
    with pytest.raises(ValueError, match="q_len"):
        Case("decode", 1, 9, 8, 4, 2, 64)
    with pytest.raises(ValueError, match="multiple"):
        Case("decode", 1, 1, 8, 6, 4, 64)


def test_flops_and_bytes():
    c = Case("prefill", 1, 8192, 8192, 32, 8, 128, causal=False)
    assert c.flops() == 4 * 8192 * 8192 * 32 * 128
    assert Case("prefill", 1, 8192, 8192, 32, 8, 128, causal=True).flops() == c.flops() // 2
    # windowed: counts visible pairs exactly (bottom-right aligned)
    w = Case("prefill", 1, 4, 6, 1, 1, 64, causal=True, window_left=1)
    assert w.visible_pairs() == 2 + 2 + 2 + 2 and w.keys_needed() == 5
    d = Case("decode", 2, 1, 1000, 32, 8, 128)
    io_bytes = 2 * (2 * 32 * 128 * 2) + 2 * 32 * 4
    assert d.tq_bytes(KVConfig(4, 4)) == 2 * 1000 * 8 * 132 + io_bytes  # format.md: 132 B
    assert d.tq_bytes(KVConfig(2, 2)) == 2 * 1000 * 8 * 68 + io_bytes
    assert d.bf16_bytes() == 2 * 1000 * 8 * 512 + io_bytes
    k = Case("compress", 1, 0, 10, 8, 8, 128, causal=False)
    assert k.compress_bytes(KVConfig(8, 8)) == 10 * 8 * 128 * 4 + 10 * 8 + 10 * 8 * 260


def test_range_names_are_ncu_filter_safe():
    for op in shapes.OPS:
        for case in shapes.build_cases(op):
            name = shapes.range_name("tqkv", op, case, KVConfig(4, 4))
            assert not re.search(r"[/@,\[\]*]", name), name
    c = Case("prefill", 1, 100, 100, 4, 2, 64, causal=True, window_left=16)
    assert shapes.range_name("tqkv", "prefill", c, KVConfig(2, 8)).startswith("tqkv.prefill K2V8 B1 Sq100")


def test_case_cli_args_round_trip():
    for op in shapes.OPS:
        for case in shapes.build_cases(op)[:2]:
            args = parse(op, *case.cli_args())
            assert cli.cases_from_args(op, args) == [case]


# =========================================================================== timing
def test_cpu_timer_median_and_sets():
    t = timing.Timer(torch.device("cpu"), reps=5, warmup=1)
    seen = []
    m = t.measure(lambda i: seen.append(i), 3, "x")
    assert m.method == "cpu-wall" and len(m.samples) == 5 and m.min_ms <= m.median_ms <= m.max_ms
    assert set(seen) == {0, 1, 2}  # every input set used
    assert timing.num_input_sets(10**9, torch.device("cpu")) == 1
    with pytest.raises(NotImplementedError):
        t.measure(lambda i: (_ for _ in ()).throw(NotImplementedError("no kernel")), 1, "x")


# =========================================================================== ratios
def test_ratios_prefer_same_method_and_flag_mixed_timing():
    times = {"fa4": (2.0, "cuda-graph"), "sdpa": (4.0, "cuda-graph"),
             "unfused": (8.0, "cuda-events"), "unfused-kernel": (3.0, "cuda-graph")}
    op_row = {"impl": "tqkv", "time_ms": 4.0, "timing": "cuda-events"}
    cli.Bench._fill_ratios(op_row, times, None)
    assert (op_row["vs_fa4"], op_row["vs_sdpa"], op_row["vs_unfused"]) == (0.5, 1.0, 2.0)
    assert "vs_fa4 compares cuda-events with cuda-graph" in op_row["note"]
    assert "vs_unfused" not in op_row["note"]  # both eager: no flag
    k_row = {"impl": "tqkv-kernel", "time_ms": 1.0, "timing": "cuda-graph"}
    cli.Bench._fill_ratios(k_row, times, None)
    assert k_row["vs_unfused"] == 3.0 and k_row["vs_fa4"] == 2.0 and not k_row.get("note")
    sdpa = {"impl": "sdpa", "time_ms": 4.0, "timing": "cuda-graph"}
    cli.Bench._fill_ratios(sdpa, times, "fa4")
    assert sdpa == {"impl": "sdpa", "time_ms": 4.0, "timing": "cuda-graph", "vs_fa4": 0.5}


def test_kernel_row_naming(capsys):
    args = parse("prefill", *TINY)
    sink = report.ResultSink()
    bench = cli.Bench(args, torch.device("cpu"), sink, progress_enabled=False)
    assert not bench._kernel_rows_wanted(None)  # never on the CPU
    op_row = {"op": "prefill", "impl": "tqkv", "kv": "K4V4", "status": "ok", "time_ms": 5.0,
              "check_ok": True, "note": "x",
              "nvtx_range": "tqkv.prefill K4V4 B1 Sq64 Sk64 Hq4 Hkv2 D64 bs16 causal bf16"}
    seen = {}
    row, m = bench._measure_kernel_row(op_row, lambda: (lambda i: None), 2,
                                       lambda r, m: seen.update(ms=m.median_ms))
    assert row["impl"] == "tqkv-kernel" and row["status"] == "ok" and "check_ok" not in row
    assert row["nvtx_range"] == "tqkv-kernel.prefill K4V4 B1 Sq64 Sk64 Hq4 Hkv2 D64 bs16 causal bf16"
    assert "called directly" in row["note"] and "ms" in seen
    case = Case("compress", 1, 0, 64, 2, 2, 64, causal=False)
    name = shapes.range_name("tqkv", "compress_store", case, KVConfig(4, 4))
    row, _ = bench._measure_kernel_row(dict(op_row, impl="tqkv.compress_store", nvtx_range=name),
                                       lambda: (lambda i: None), 1, lambda r, m: None)
    assert row["impl"] == "tqkv.compress_store-kernel"
    assert row["nvtx_range"] == shapes.range_name("tqkv-kernel", "compress_store", case,
                                                  KVConfig(4, 4))


# =========================================================================== compile report
@pytest.fixture
def fake_harness(monkeypatch):
    """The real harness module with a tiny monkeypatched config list and a fake compiler, so
    the CLI plumbing is tested without compiling anything."""
    from fa4_tq.kernels import compile as harness

    configs = [
        harness.KernelConfig("prefill_sm90", 4, 4, 128, "causal", build=lambda: None),
        harness.KernelConfig("prefill_sm90", 2, 8, 128, "causal", build=lambda: None),
        harness.KernelConfig("compress", 8, 8, 64, "bf16", build=lambda: None),
        harness.KernelConfig("fa4_fwd", 16, 16, 128, "sm90", build=lambda: None),
    ]

    def registered(kernels=None):
        return [c for c in configs if kernels is None or c.kernel in set(kernels)]

    def fake_compile(config, *, echo=None):
        return harness.CompileResult(config.kernel, config.k_bits, config.v_bits,
                                     config.head_dim, config.variant, 0.5, 128, 0, 1024)

    monkeypatch.setattr(harness, "registered_configs", registered)
    monkeypatch.setattr(harness, "compile_config", fake_compile)
    monkeypatch.setattr(harness, "configure_cpu_compile_env", lambda: {})
    return harness


def test_compile_report_csv_schema(fake_harness, capsys):
    assert cli.main(["compile-report", "--csv", "-"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == COMPILE_HEADER
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert len(rows) == 4
    assert rows[0] == {"kernel": "prefill_sm90", "k_bits": "4", "v_bits": "4", "head_dim": "128",
                       "variant": "causal", "compile_s": "0.5", "registers": "128",
                       "spill_bytes": "0", "smem_bytes": "1024"}
    assert "prefill_sm90" in out.err  # the human table goes to stderr when CSV is on stdout


def test_compile_report_filters(fake_harness, capsys, tmp_path):
    path = tmp_path / "c.csv"
    assert cli.main(["compile-report", "--kernels", "prefill_sm90,fa4_fwd", "--kv", "4,4",
                     "--csv", str(path)]) == 0
    rows = list(csv.DictReader(path.open()))
    # K2V8 filtered out; the bf16 baseline (16/16) is not a KV config and stays
    assert [(r["kernel"], r["k_bits"]) for r in rows] == [("prefill_sm90", "4"), ("fa4_fwd", "16")]
    assert path.read_text().splitlines()[0] == COMPILE_HEADER
    assert cli.main(["compile-report", "--head-dim", "64", "--list"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "compress,8,8,64,bf16"


# =========================================================================== CPU runs
def test_cpu_default_run(fake_harness, capsys):
    """`python -m microbench` with no arguments: reference ops on tiny shapes, float64 check,
    then the compile report (monkeypatched configs)."""
    rc = cli.main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "compile report" in out and "prefill_sm90" in out
    table = [ln for ln in out.splitlines() if ln.startswith(("prefill ", "decode ", "compress "))]
    tq = [ln for ln in table if " tqkv" in ln]
    assert len(tq) == 3 * (2 + 2 + 2)  # 3 KV configs x (2 prefill + 2 decode + compress/dequant)
    assert all(" ok " in ln and "FAIL" not in ln for ln in tq), "\n".join(tq)


def test_cpu_bench_csv_json_and_checks(tmp_path, capsys):
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    rc = cli.main(["prefill", *TINY, "--seqlens", "40", "--kv", "4,4", "2,8", "--causal",
                   "--csv", str(csv_path), "--json", str(json_path)])
    assert rc == 0
    header = csv_path.read_text().splitlines()[0]
    assert header == ",".join(report.COLUMNS)
    rows = list(csv.DictReader(csv_path.open()))
    by_impl = {(r["impl"], r["kv"]): r for r in rows}
    assert by_impl[("fa4", "bf16")]["status"] == "unavailable"  # FA4 needs CUDA: reported
    assert by_impl[("unfused", "K4V4")]["status"] == "unavailable"
    for kv in ("K4V4", "K2V8"):
        r = by_impl[("tqkv", kv)]
        assert r["status"] == "ok" and r["check_ok"] == "True"
        assert float(r["check_rel_err"]) < 1e-2 and float(r["time_ms"]) > 0
        assert float(r["vs_sdpa"]) > 0 and r["nvtx_range"].startswith(f"tqkv.prefill {kv} ")
        for col in report.META_COLUMNS:
            assert col in r
        assert r["torch"] == torch.__version__ and r["git_sha"]
    doc = json.loads(json_path.read_text())
    assert doc["meta"]["device"].startswith("CPU") and len(doc["rows"]) == len(rows)


def test_not_implemented_rows_do_not_stop_the_run(monkeypatch, capsys):
    import fa4_tq

    def missing(*a, **k):
        raise NotImplementedError("tqkv.decode: no CUDA kernel is implemented yet")

    monkeypatch.setattr(fa4_tq, "decode", missing)
    rc = cli.main(["decode", *TINY, "--batch", "2", "--seqlens", "40", "--kv", "4,4", "8,2",
                   "--csv", "-"])
    out = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out.out)))
    tq = [r for r in rows if r["impl"] == "tqkv"]
    assert [r["status"] for r in tq] == ["not implemented", "not implemented"]
    assert "no CUDA kernel" in tq[0]["note"]
    assert any(r["impl"] == "sdpa" and r["status"] == "ok" for r in rows)
    assert rc == 0  # "not implemented" is a reported state, not a failure


def test_failed_check_is_reported_and_fails_the_run(monkeypatch, capsys):
    import fa4_tq

    real = fa4_tq.prefill

    def wrong(*a, **k):
        out, lse = real(*a, **k)
        return out * 1.1, lse

    monkeypatch.setattr(fa4_tq, "prefill", wrong)
    rc = cli.main(["prefill", *TINY, "--seqlens", "40", "--kv", "4,4", "--causal",
                   "--impls", "tqkv", "--csv", "-"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[-1]["check_ok"] == "False" and "CHECK FAILED" in rows[-1]["note"]
    assert rc == 1


def test_compress_rows_on_cpu(capsys):
    rc = cli.main(["compress", *TINY, "--seqlens", "50", "--kv", "2,4", "--impls",
                   "compress,dequantize,copy", "--csv", "-"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rc == 0
    got = {r["impl"]: r for r in rows}
    assert got["copy"]["status"] == "ok" and float(got["copy"]["gbps"]) > 0
    for impl in ("tqkv.compress_store", "tqkv.dequantize"):
        assert got[impl]["status"] == "ok" and got[impl]["check_ok"] == "True"
        assert 0 < float(got[impl]["frac_ceiling"])


@pytest.mark.parametrize("command", ["prefill", "decode", "compress", "sweep"])
def test_gpu_subcommands_exit_clearly_without_cuda(command, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err and "python -m microbench" in err


def test_ncu_exits_clearly_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["ncu", "prefill"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_message(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed here")
    except ImportError:
        pass
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"rows": []}))
    assert cli.main(["plot", str(results), "--plot", str(tmp_path / "x.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_plot_from_results_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = []
    for seqlen in (2048, 8192):
        for kv in ("K4V4", "K2V2"):
            r = {k: None for k in report.COLUMNS}
            r.update(op="prefill", impl="tqkv", kv=kv, batch=1, seqlen_q=seqlen, seqlen_k=seqlen,
                     causal=True, status="ok", vs_fa4=0.9, vs_unfused=1.2)
            rows.append(r)
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"rows": rows}))
    assert cli.main(["plot", str(results), "--plot", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0
    assert "prefill vs FA4-bf16: B=1 causal" in capsys.readouterr().out


# =========================================================================== ncu
def test_ncu_dry_run_command(capsys, tmp_path):
    rc = cli.main(["ncu", "prefill", "--kv", "2,4", "--seqlens", "8K", "--causal", "--dry-run",
                   "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "--clock-control none" in out and "--nvtx" in out
    for section in ncu.SECTIONS:
        assert f"--section {section}" in out
    name = "tqkv.prefill K2V4 B1 Sq8192 Sk8192 Hq32 Hkv8 D128 bs16 causal bf16"
    assert f'--nvtx-include "{name}/"' in out
    # the child re-runs microbench on exactly that case, one timed call, no check
    assert "-m microbench prefill" in out and "--reps 1" in out and "--impls tqkv" in out


def test_ncu_plan_single_case_and_names():
    args = parse("ncu", "decode", "--kv", "8,4", "--batch", "1")
    p = ncu.plan(args, "NVIDIA H100 80GB HBM3")
    assert p.name.startswith("decode-K8V4-B1-Sq1-Sk32768") and p.name.endswith("-h100-80gb-hbm3")
    assert p.markdown.name == p.name + ".md" and p.report_file.name == p.name + ".ncu-rep"
    child = parse(*p.child[3:])  # after: python -m microbench
    assert cli.cases_from_args("decode", child) == [p.case]
    assert child.impls == ["tqkv"] and child.kv == ["8,4"]
    with pytest.raises(ValueError, match="exactly one"):
        ncu.plan(parse("ncu", "prefill", "--seqlens", "2K", "8K"), "H100")
    with pytest.raises(ValueError, match="only --impl tqkv"):
        ncu.plan(parse("ncu", "compress", "--impl", "fa4"), "H100")
    d = ncu.plan(parse("ncu", "dequantize", "--kv", "4,4"), "H100")
    assert d.range_name.startswith("tqkv.dequantize K4V4 T8192")
    assert d.child[3] == "compress" and "dequantize" in d.child
    f = ncu.plan(parse("ncu", "prefill", "--impl", "fa4"), "H100")
    assert f.range_name.startswith("fa4.prefill bf16 ") and "-fa4-bf16-" in f.name
    k = ncu.plan(parse("ncu", "compress", "--impl", "tqkv-kernel", "--kv", "2,2"), "H100")
    assert k.range_name.startswith("tqkv-kernel.compress_store K2V2 T8192")
    assert k.child[k.child.index("--kernel-rows") + 1] == "always"
    assert "compress-tqkv-kernel-K2V2-" in k.name
    with pytest.raises(ValueError, match="unfused"):
        ncu.plan(parse("ncu", "decode", "--impl", "unfused-kernel"), "H100")


DETAILS_CSV = '''==PROF== Disconnected from process 1
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value","Rule Name","Rule Type","Rule Description"
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","usecond","1,234.56","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","71.2","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","GPU Speed Of Light Throughput","Memory Throughput","%","40.5","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","Occupancy","Achieved Occupancy","%","18.7","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","Launch Statistics","Registers Per Thread","register/thread","168","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","Launch Statistics","Static Shared Memory Per Block","byte/block","0","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","Launch Statistics","Dynamic Shared Memory Per Block","Kbyte/block","164.86","","",""
"0","1","python","h","kernel_PrefillSm90_0","1","7","(384, 1, 1)","(64, 32, 1)","0","9.0","Warp State Statistics","Warp Cycles Per Issued Instruction","cycle","9.5","CPIStall","WRN","On average, each warp spends 4.2 cycles stalled on a barrier."
"1","1","python","h","gemm_kernel","1","7","(256, 1, 1)","(8, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","msecond","0.01","","",""
'''

RAW_CSV = '''"ID","Kernel Name","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_not_issued_per_issue_active.ratio","sass__inst_executed_per_opcode"
"","","ratio","ratio","ratio","inst"
"0","kernel_PrefillSm90_0","4.2","1.5","9.0","HMMA;100;LDS;300;FFMA;50"
"1","gemm_kernel","0.1","0.2","0","(IMAD: 5) (FADD: 7)"
'''


def test_ncu_report_parsing_and_markdown():
    kernels = ncu.parse_details_csv(DETAILS_CSV)
    assert [k.name for k in kernels] == ["kernel_PrefillSm90_0", "gemm_kernel"]
    k0 = kernels[0]
    assert k0.duration_us() == pytest.approx(1234.56)
    assert kernels[1].duration_us() == pytest.approx(10.0)
    assert k0.number("Registers Per Thread") == 168 and k0.grid == "(64, 32, 1)"
    assert k0.rules and "barrier" in k0.rules[0][1]
    raw = ncu.parse_raw_csv(RAW_CSV)
    assert raw["0"]["stalls"] == [("barrier", 4.2), ("long_scoreboard", 1.5)]  # not_issued dropped
    assert raw["0"]["opcodes"][0] == ("LDS", 300.0)
    assert dict(raw["1"]["opcodes"]) == {"FADD": 7.0, "IMAD": 5.0}
    plan = ncu.plan(parse("ncu", "prefill"), "NVIDIA H100 80GB HBM3")
    md = ncu.markdown_summary(plan, kernels, raw, device_name="NVIDIA H100 80GB HBM3",
                              command=["ncu", "x"])
    assert "| 0 | `kernel_PrefillSm90_0` | 1,234.6 | 71.2 | 40.5 |" in md
    assert "164860 (0+164860)" in md  # smem in bytes from Kbyte
    assert "barrier: 4.20" in md and "LDS 66.7%" in md and "WRN" in md
    empty = ncu.markdown_summary(plan, [], {}, device_name="H100", command=["ncu"])
    assert "No kernel was profiled" in empty


def test_lse_tolerance_floor_and_bf16_operand_bound():
    from fa4_tq.testing import lse_tolerance

    ninf = float("-inf")
    assert lse_tolerance(torch.tensor([1.0, -2.0, ninf])) == 1e-2  # small logits: the floor
    assert lse_tolerance(torch.tensor([[ninf, 12.8], [-25.6, 2.0]], dtype=torch.float64)) == 25.6 / 256
    assert lse_tolerance(torch.tensor([ninf, ninf])) == 1e-2  # no row sees a key
    assert lse_tolerance(torch.tensor([12.8]), floor=0.1) == 0.1


def test_decode_config_needs_cuda(capsys):
    assert cli.main(["decode", "--device", "cpu", "--decode-config", "prmt_lut=1",
                     "--kv", "4,4", "--seqlens", "64", "--batch", "1"]) != 0
    assert "--decode-config" in capsys.readouterr().err


def test_device_recipes_parse():
    """Every device recipe (microbench/*.sh) is valid bash: a syntax error would only show on
    the device, costing a whole call of the session's device time."""
    import glob
    import subprocess

    scripts = glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "microbench",
                                     "*.sh"))
    assert scripts
    for path in scripts:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)
