"""python -m microbench: benchmark fa4_tq's ops against bf16 baselines measured in the
same run, print a table, write CSV/JSON/PNG; compile report; ncu profiles.

Subcommands (``python -m microbench <cmd> -h`` for options):
  (none) / smoke   CPU: reference ops on tiny shapes (time + float64 check), then the
                   compile report (K4V4, D=128 subset). Runs on any machine.
  prefill          tqkv.prefill vs FA4-bf16, SDPA and unfused dequantize+FA4   [GPU]
  decode           tqkv.decode vs FA4-bf16 and SDPA                             [GPU]
  compress         tqkv.compress_store and tqkv.dequantize vs copy bandwidth   [GPU]
  sweep            all three over the default grids, all nine KV configs        [GPU]
  compile-report   compile registered kernel configs for sm_90a (no GPU needed)
  ncu              re-run one kernel config under Nsight Compute, summarize to
                   ncu_reports/<op>-<config>-<gpu>.md                           [GPU]
  plot             PNG from a results JSON/CSV written earlier
GPU subcommands accept ``--device cpu`` to time the CPU reference ops instead (tiny shapes
only: the reference is a float64 dense implementation).

Rows: one per (implementation, op, KV config, shape); baselines are measured once per shape
in the same run and shared by the nine KV configs. Every tqkv/unfused output is checked
against float64 attention over the same packed cache. When an op cannot be CUDA-graph
timed because it syncs with the host, a "-kernel" row times its kernel entry point
directly as well, so kernel time is compared like for like (``--kernel-rows``). A failing
or missing kernel becomes a row ("not implemented" / "error"), never a crash of the run.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time

from . import shapes
from .shapes import ALL_KV, Case, KVConfig

GPU_COMMANDS = ("prefill", "decode", "compress", "sweep", "ncu")
IMPLS = {
    "prefill": ("tqkv", "fa4", "sdpa", "unfused"),
    "decode": ("tqkv", "fa4", "sdpa"),
    "compress": ("compress", "dequantize"),
}
CEILINGS = ("copy", "gemm")
ALL_IMPLS = tuple(sorted({i for v in IMPLS.values() for i in v} | set(CEILINGS)))
SWEEP_TIME_BUDGET_S = 540.0  # leaves room for output inside a 10-minute command
SMOKE_COMPILE_SUBSET = dict(kv=(KVConfig(4, 4),), head_dims=(128,))
SMOKE_KV = (KVConfig(2, 2), KVConfig(4, 4), KVConfig(8, 8))
# FA4 (and so the unfused baseline) needs CUDA: the CPU run leaves them out.
SMOKE_IMPLS = ("tqkv", "sdpa", "compress", "dequantize", "copy", "gemm")


# =========================================================================== arguments
def _kv_type(text):
    """Validate a --kv item at parse time (argparse then prints a usage error)."""
    try:
        shapes.parse_kv([text])
        return text
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sizes_type(text):
    try:
        return shapes.parse_sizes([text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _window_type(text):
    try:
        return shapes.parse_window(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _csv_list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _knobs(text):
    """'prmt_lut=1,target_warps=4,combine_pdl=true' -> {'prmt_lut': True, ...}: 1/0/true/
    false are booleans, other integers ints, decimals floats."""
    out = {}
    for item in _csv_list(text):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        v = val.strip()
        low = v.lower()
        if low in ("1", "true", "0", "false"):
            out[key.strip()] = low in ("1", "true")
            continue
        try:
            out[key.strip()] = int(v)
        except ValueError:
            try:
                out[key.strip()] = float(v)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key}: not a number or boolean: {v!r}") \
                    from None
    return out


def _flatten(lists):
    if lists is None:
        return None
    out = []
    for x in lists:
        out.extend(x if isinstance(x, list) else [x])
    return out


def _add_output_options(p):
    g = p.add_argument_group("output")
    g.add_argument("--csv", metavar="PATH", help="write rows as CSV ('-' = stdout; the table "
                   "then goes to stderr)")
    g.add_argument("--json", metavar="PATH", help="write rows + run metadata as JSON")
    g.add_argument("--plot", metavar="PATH.png", help="plot ratio vs sequence length per KV "
                   "config (needs matplotlib)")
    g.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _add_bench_options(p, *, sweep=False):
    g = p.add_argument_group("benchmark")
    g.add_argument("--kv", nargs="+", type=_kv_type, metavar="K,V",
                   help="KV bit configs, e.g. --kv 4,4 2,4 (or K4V4), or 'all' (default: all)")
    g.add_argument("--dtype", choices=shapes.DTYPES, default="bf16",
                   help="query/output (and baseline K/V) dtype (default bf16)")
    g.add_argument("--reps", type=int, default=None,
                   help="timed samples per row; the median is reported (default 10 GPU, 3 CPU)")
    g.add_argument("--warmup", type=int, default=3, help="untimed calls after the first "
                   "(compile) call (at least one per input set; default 3)")
    g.add_argument("--timing", choices=("graph", "eager"), default="graph",
                   help="graph: replay calls captured in a CUDA graph (no launch overhead; "
                   "falls back to eager, noted, if capture fails); eager: CUDA events around "
                   "every call (default graph)")
    g.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu times the reference ops (tiny shapes only)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare every tqkv/unfused output with float64 attention over the "
                   "same packed cache (default on)")
    g.add_argument("--cache-build", choices=("auto", "kernel", "reference", "reference-cpu"),
                   default="auto", help="how the packed cache is filled: auto = the "
                   "tqkv.compress_store kernel if it exists, else fa4_tq's reference "
                   "quantizer run with torch ops on the device (default auto)")
    g.add_argument("--time-budget", type=float, default=SWEEP_TIME_BUDGET_S if sweep else None,
                   metavar="S", help="stop measuring after S seconds; remaining rows are "
                   "reported as skipped" + (f" (default {SWEEP_TIME_BUDGET_S:.0f})" if sweep
                                            else ""))
    g.add_argument("--kernel-rows", choices=("auto", "always", "never"), default="auto",
                   help="also time the kernel entry point directly (rows 'tqkv-kernel', "
                   "'unfused-kernel', ...: no torch.ops dispatch/validation): auto = only when "
                   "the op syncs with the host and so cannot be CUDA-graph timed (default auto)")
    g.add_argument("--impls", type=_csv_list, default=None,
                   help=f"comma-separated subset of {','.join(ALL_IMPLS)} (default: all)")
    g.add_argument("--backend", choices=("auto", "sm90", "sm80"), default="auto",
                   help="tqkv.prefill backend (default auto)")
    g.add_argument("--num-splits", type=int, default=0,
                   help="tqkv.decode split count (0 = the kernel's heuristic)")
    g.add_argument("--decode-config", type=_knobs, default=None, metavar="KEY=VAL,...",
                   help="tqkv.decode: DecodeConfig field overrides of the shipped tuning (e.g. "
                   "prmt_lut=1,target_warps=4) and combine_pdl=1, applied to extra "
                   "'tqkv-kernel' rows (always added and checked against float64 when set)")


def _add_shape_options(p):
    g = p.add_argument_group("shapes (each list option multiplies the grid)")
    g.add_argument("--batch", nargs="+", type=_sizes_type, help="batch sizes")
    g.add_argument("--seqlens", nargs="+", type=_sizes_type,
                   help="sequence lengths (keys; prefill: also queries; compress: tokens per "
                   "batch entry), e.g. 2K 8K 16384")
    g.add_argument("--hq", type=int, help="query heads (default 32)")
    g.add_argument("--hkv", type=int, help="KV heads (default 8)")
    g.add_argument("--head-dim", nargs="+", type=_sizes_type, help="head dims (default 128)")
    g.add_argument("--q-len", nargs="+", type=_sizes_type, help="decode queries per "
                   "sequence, 1..8 (default 1)")
    g.add_argument("--block-size", nargs="+", type=_sizes_type,
                   help="cache block size, multiple of 16 up to 256 (default 16)")
    g.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                   help="prefill default: both; decode default: causal")
    g.add_argument("--window", type=_window_type, default=(-1, -1), metavar="L,R",
                   help="sliding window, e.g. --window 128,0 (-1 = unlimited; write "
                   "--window=-1,0 when L is negative; default -1,-1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m microbench", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Run without arguments for the CPU reference run + compile report.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("smoke", help="CPU reference ops on tiny shapes + compile report "
                       "(the default)")
    s.add_argument("--kv", nargs="+", type=_kv_type, metavar="K,V",
                   help="KV configs (default: 2,2 4,4 8,8; 'all' for nine)")
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--compile-report", action=argparse.BooleanOptionalAction, default=True,
                   help="also compile the K4V4 D=128 kernel configs for sm_90a (default on)")
    _add_output_options(s)

    for op, text in (("prefill", "tqkv.prefill vs FA4-bf16, SDPA, unfused dequantize+FA4"),
                     ("decode", "tqkv.decode vs FA4-bf16 and SDPA"),
                     ("compress", "tqkv.compress_store / tqkv.dequantize vs copy bandwidth")):
        sp = sub.add_parser(op, help=text + " [GPU]")
        _add_bench_options(sp)
        _add_shape_options(sp)
        _add_output_options(sp)

    sw = sub.add_parser("sweep", help="prefill + decode + compress over the default grids [GPU]",
                        description="prefill (B=1, S 2K/8K/16K, causal and not), decode "
                        "(B 1/8, L 8K/32K, q_len 1) and compress (1..64K tokens), Hq=32, Hkv=8, "
                        "D=128, block size 16, all nine KV configs, with every baseline. Sized "
                        "for one 10-minute command on an H100 (--time-budget guards it). With "
                        "--device cpu: the tiny CPU grid.")
    sw.add_argument("--ops", type=_csv_list, default=list(shapes.OPS),
                    help="comma-separated subset of prefill,decode,compress")
    _add_bench_options(sw, sweep=True)
    _add_output_options(sw)

    c = sub.add_parser("compile-report", help="compile kernel configs for sm_90a on the CPU "
                       "and report registers/spills/smem")
    c.add_argument("--kernels", type=_csv_list, help="comma-separated kernel names "
                   "(default: all registered)")
    c.add_argument("--kv", nargs="+", type=_kv_type, metavar="K,V",
                   help="only configs with these (k_bits, v_bits); configs of other widths "
                   "(bf16 baselines) are kept")
    c.add_argument("--head-dim", nargs="+", type=_sizes_type, help="only these head dims")
    c.add_argument("--csv", metavar="PATH", help="CSV ('-' = stdout; the table then goes to "
                   "stderr)")
    c.add_argument("--verbose", action="store_true", help="echo compiler output")
    c.add_argument("--list", action="store_true", help="list the configs, compile nothing")

    n = sub.add_parser("ncu", help="profile one kernel config with Nsight Compute [GPU]")
    n.add_argument("op", choices=("prefill", "decode", "compress", "dequantize"))
    n.add_argument("--impl", default="tqkv",
                   choices=("tqkv", "tqkv-kernel", "fa4", "sdpa", "unfused", "unfused-kernel"),
                   help="what to profile (default tqkv, the op; tqkv-kernel: the kernel entry "
                   "point without the op's validation; compress/dequantize: tqkv or "
                   "tqkv-kernel)")
    n.add_argument("--kv", type=_kv_type, default="4,4", metavar="K,V",
                   help="one KV config (default 4,4)")
    n.add_argument("--dtype", choices=shapes.DTYPES, default="bf16")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--backend", choices=("auto", "sm90", "sm80"), default="auto")
    n.add_argument("--num-splits", type=int, default=0)
    n.add_argument("--cache-build", choices=("auto", "kernel", "reference", "reference-cpu"),
                   default="auto")
    _add_shape_options(n)
    n.add_argument("--ncu", default=None, metavar="PATH", help="ncu binary (default: on PATH "
                   "or /usr/local/cuda/bin/ncu)")
    n.add_argument("--out-dir", default=None, help="where the .ncu-rep and .md go (default: "
                   "ncu_reports/ at the repository root)")
    n.add_argument("--dry-run", action="store_true", help="print the ncu command, run nothing")

    pl = sub.add_parser("plot", help="plot ratio vs sequence length from a results file")
    pl.add_argument("results", help="JSON (or CSV) written by --json/--csv")
    pl.add_argument("--plot", required=True, metavar="PATH.png")
    return p


# =========================================================================== helpers
def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gpu_required_message(command: str) -> str:
    return (f"microbench {command}: no CUDA GPU is available (torch.cuda.is_available() is "
            f"False), and this subcommand times CUDA kernels.\n"
            f"On this machine: `python -m microbench` (CPU reference run + compile report), "
            f"`python -m microbench compile-report`, or add `--device cpu` to {command} to "
            f"time the CPU reference ops on small shapes.")


def _kv_list(tokens, default=ALL_KV) -> list[KVConfig]:
    return shapes.parse_kv(tokens) if tokens else list(default)


def cases_from_args(op: str, args, grid=None) -> list[Case]:
    return shapes.build_cases(
        op, batch=_flatten(args.batch), seqlens=_flatten(args.seqlens),
        q_len=_flatten(getattr(args, "q_len", None)), num_heads=args.hq, num_kv_heads=args.hkv,
        head_dim=_flatten(args.head_dim), block_size=_flatten(args.block_size),
        causal=args.causal, window=args.window, dtype=args.dtype, grid=grid)


def _one_line(e: BaseException, limit: int = 200) -> str:
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_plot(args) -> None:
    """Warn up front (not after a 10-minute run) when --plot cannot be honoured."""
    if getattr(args, "plot", None):
        from .report import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as e:
            _err(f"warning: {e}; the plot will be skipped. CSV/JSON are still written; plot "
                 f"them later with `python -m microbench plot RESULTS.json --plot OUT.png`.")
            args.plot = None


# =========================================================================== the runner
class Bench:
    """Measures rows and writes them to a ResultSink, never letting one row stop the rest."""

    def __init__(self, args, device, sink, *, progress_enabled=True):
        import torch

        from .timing import Timer

        self.torch = torch
        self.args = args
        self.device = torch.device(device)
        self.sink = sink
        reps = args.reps if args.reps is not None else (10 if self.device.type == "cuda" else 3)
        self.timer = Timer(self.device, mode=getattr(args, "timing", "graph"), reps=reps,
                           warmup=getattr(args, "warmup", 3))
        self.impls = set(getattr(args, "impls", None) or ALL_IMPLS)
        unknown = self.impls - set(ALL_IMPLS)
        if unknown:
            raise ValueError(f"--impls: unknown {sorted(unknown)}; choose from {ALL_IMPLS}")
        self.check = getattr(args, "check", True)
        self.kernel_rows = getattr(args, "kernel_rows", "auto")
        self.decode_config = getattr(args, "decode_config", None) or {}
        if self.decode_config and self.device.type != "cuda":
            raise ValueError("--decode-config selects CUDA decode kernels; it needs --device "
                             "cuda")
        self.cache_build = getattr(args, "cache_build", "auto")
        budget = getattr(args, "time_budget", None)
        self.deadline = None if budget is None else time.perf_counter() + budget
        self.budget = budget
        self.context_broken: str | None = None
        self.ceiling: dict[str, float] = {}
        self.progress_enabled = progress_enabled
        self.progress = None
        self.failures = 0

    # ------------------------------------------------------------------ plumbing
    def _sets(self, bytes_per_set: int) -> int:
        from .timing import num_input_sets

        return num_input_sets(bytes_per_set, self.device,
                              minimum=1 if self.device.type == "cuda" else 2)

    def _free(self):
        """Return the GPU memory of finished inputs (gc.collect costs ~0.2 s: GPU only)."""
        if self.device.type == "cuda":
            gc.collect()
            self.torch.cuda.empty_cache()

    def _skip_reason(self) -> str | None:
        if self.context_broken:
            return f"CUDA context unusable after an earlier error ({self.context_broken})"
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return f"time budget of {self.budget:.0f} s used up"
        return None

    def _base_row(self, op, impl, case: Case | None, kv: KVConfig | None, name: str) -> dict:
        row = {"op": op, "impl": impl, "kv": kv.label if kv else "bf16",
               "k_bits": kv.k_bits if kv else 16, "v_bits": kv.v_bits if kv else 16,
               "nvtx_range": name}
        if case is not None:
            row.update(batch=case.batch, seqlen_q=case.seqlen_q, seqlen_k=case.seqlen_k,
                       num_heads=case.num_heads, num_kv_heads=case.num_kv_heads,
                       head_dim=case.head_dim, block_size=case.block_size, causal=case.causal,
                       window_left=case.window_left, window_right=case.window_right,
                       dtype=case.dtype)
        return row

    def _fail(self, row: dict, e: BaseException) -> None:
        from .baselines import Unavailable
        from .report import STATUS_ERROR, STATUS_NOT_IMPLEMENTED, STATUS_UNAVAILABLE

        if isinstance(e, NotImplementedError):
            row.update(status=STATUS_NOT_IMPLEMENTED, note=_one_line(e))
            return
        if isinstance(e, Unavailable):
            row.update(status=STATUS_UNAVAILABLE, note=str(e))
            return
        row.update(status=STATUS_ERROR, note=_one_line(e))
        self.failures += 1
        if self.device.type == "cuda":
            try:
                self.torch.cuda.synchronize(self.device)
            except Exception as sync_error:  # noqa: BLE001 - a sticky CUDA error
                self.context_broken = f"{row['impl']}.{row['op']} {row['kv']}: {_one_line(sync_error)}"

    def _emit(self, row: dict) -> dict:
        from .report import format_row_line

        full = self.sink.add(row)
        if self.progress is not None:
            self.progress.step(format_row_line(full))
        if full.get("check_ok") is False:
            self.failures += 1
        return full

    def measure(self, row: dict, make_call, num_sets: int, *, check=None):
        """Fill ``row`` with timing (and check) results; returns the Measurement or None.

        ``make_call()`` builds the callable (may raise Unavailable/NotImplementedError);
        ``check(call)`` returns a CheckResult for a fresh call's output."""
        from .report import STATUS_OK, STATUS_SKIPPED

        reason = self._skip_reason()
        if reason:
            row.update(status=STATUS_SKIPPED, note=reason)
            return None
        try:
            call = make_call()
            m = self.timer.measure(call, num_sets, row["nvtx_range"])
            row.update(status=STATUS_OK, time_ms=m.median_ms, compile_s=round(m.compile_s, 3),
                       timing=m.method, calls_per_sample=m.calls_per_sample,
                       input_sets=m.input_sets, note=m.note or None)
            if check is not None and self.check:
                c = check(call)
                row.update(check_rel_err=c.rel_err, check_lse_err=c.lse_err, check_ok=c.ok)
                if not c.ok:
                    row["note"] = "; ".join(filter(None, [row.get("note"),
                                                          f"CHECK FAILED vs {c.what}"]))
            return m
        except Exception as e:  # noqa: BLE001 - every failure becomes a row
            self._fail(row, e)
            return None

    # ------------------------------------------------------------------ ceilings
    def run_ceilings(self, dtype_name: str):
        from . import baselines

        dt = baselines.torch_dtype(dtype_name)
        for impl in CEILINGS:
            if impl not in self.impls or impl in self.ceiling:
                continue
            name = f"{impl}.ceiling {dtype_name}"
            row = self._base_row("ceiling", impl, None, None, name)
            row["dtype"] = dtype_name
            holder = {}

            def make(impl=impl):
                fn = baselines.copy_ceiling if impl == "copy" else baselines.gemm_ceiling
                call, work = fn(self.device, dt, seed=self.args.seed)
                holder["work"] = work
                return call

            m = self.measure(row, make, 1)
            if m is not None:
                work = holder["work"]
                if impl == "copy":
                    self.ceiling["copy"] = row["gbps"] = work / m.median_ms / 1e6
                    what = f"device-to-device copy of {work // 2 // 2**20} MiB"
                else:
                    self.ceiling["gemm"] = row["tflops"] = work / m.median_ms / 1e9
                    what = f"{round((work / 2) ** (1 / 3))}^3 GEMM"
                row["note"] = "; ".join(filter(None, [what, row.get("note")]))
                row["frac_ceiling"] = 1.0
            self._emit(row)
            self._free()

    # ------------------------------------------------------------------ attention
    def _attention_steps(self, op, cases, kvs) -> int:
        per_case = sum(i in self.impls for i in ("fa4", "sdpa"))
        per_kv = sum(i in self.impls for i in IMPLS[op] if i not in ("fa4", "sdpa"))
        return len(cases) * (per_case + len(kvs) * per_kv)

    def run_attention(self, op: str, cases: list[Case], kvs: list[KVConfig]):
        from . import baselines
        from .shapes import range_name

        dev = self.device
        seed = self.args.seed
        for case in cases:
            times: dict[str, tuple[float, str]] = {}  # impl -> (median ms, timing method)
            # ---- bf16 baselines: once per shape, shared by every KV config
            for impl, layout, make_call in (("fa4", "bshd", baselines.fa4_call),
                                            ("sdpa", "bhsd", baselines.sdpa_call)):
                if impl not in self.impls:
                    continue
                name = range_name(impl, op, case, None)
                row = self._base_row(op, impl, case, None, name)
                n = self._sets(case.bf16_bytes())
                holder = {}

                def make(impl=impl, layout=layout, make_call=make_call, n=n, holder=holder):
                    if impl == "fa4":
                        baselines.fa4_functions(dev)  # Unavailable before building inputs
                    holder["dense"] = baselines.build_dense_inputs(case, n, dev, seed=seed,
                                                                   layout=layout)
                    return make_call(case, holder["dense"], dev)

                m = self.measure(row, make, n)
                holder.clear()
                if m is not None:
                    times[impl] = (m.median_ms, m.method)
                    self._fill_rates(row, case, None, m.median_ms)
                    self._fill_ratios(row, times, "fa4" if impl == "sdpa" else None)
                self._emit(row)
                self._free()
            # ---- per KV config: unfused (prefill) and the tqkv op
            for kv in kvs:
                self._run_tq_attention(op, case, kv, dict(times))
                self._free()

    def _kernel_rows_wanted(self, m) -> bool:
        """Whether to add a "-kernel" row (direct kernel call) after an op row timed as ``m``:
        --kernel-rows always, or auto when the op could not be graph-timed (host sync)."""
        if self.device.type != "cuda" or self.kernel_rows == "never":
            return False
        return self.kernel_rows == "always" or (m is not None and m.host_sync)

    def _measure_kernel_row(self, op_row: dict, make, n, rate, check=None) -> object:
        """The "-kernel" twin of an op row: same kernels, called directly, no check (the op
        row checked them), so its time is comparable with graph-timed baselines. With
        ``check`` (a --decode-config row: other kernels than the op row's) it is checked."""
        row = dict(op_row)
        for k in ("status", "time_ms", "tflops", "gbps", "vs_fa4", "vs_unfused", "vs_sdpa",
                  "frac_ceiling", "check_rel_err", "check_lse_err", "check_ok", "compile_s",
                  "timing", "calls_per_sample", "input_sets", "note"):
            row.pop(k, None)
        row["impl"] = op_row["impl"] + "-kernel"
        parts = op_row["nvtx_range"].split(" ", 1)
        impl_name, op_name = parts[0].split(".", 1)
        row["nvtx_range"] = f"{impl_name}-kernel.{op_name} {parts[1]}"
        if self.progress is not None:
            self.progress.extend(1)
        m = self.measure(row, make, n, check=check)
        if m is not None:
            rate(row, m)
            how = ("checked here, decode config " + ",".join(
                f"{k}={v}" for k, v in sorted(self.decode_config.items()))
                if check is not None else "checked in the op row")
            row["note"] = "; ".join(filter(None, [
                row.get("note"), "kernel entry point called directly (no torch.ops dispatch "
                f"or validation); {how}"]))
        return row, m

    def _run_tq_attention(self, op, case, kv, times):
        from . import baselines
        from .shapes import range_name

        dev = self.device
        wanted = [i for i in ("unfused", "tqkv") if i in self.impls and i in IMPLS[op]]
        if not wanted:
            return
        n = self._sets(case.tq_bytes(kv))
        inputs = None
        build_error = None
        if not self._skip_reason():
            try:
                inputs = baselines.build_paged_inputs(case, kv, n, dev, seed=self.args.seed,
                                                      cache_build=self.cache_build)
            except Exception as e:  # noqa: BLE001
                build_error = e
        # The check uses the last input set: that also verifies the replicated blocks and
        # the per-set block tables.
        last = n - 1
        args = self.args

        def rate(row, m):
            times[row["impl"]] = (m.median_ms, m.method)
            self._fill_rates(row, case, kv, m.median_ms)
            self._fill_ratios(row, times, None)

        for impl in wanted:
            row = self._base_row(op, impl, case, kv, range_name(impl, op, case, kv))
            if build_error is not None:
                self._fail(row, build_error)
                row["note"] = f"building the packed cache failed: {row.get('note')}"
                self._emit(row)
                continue
            if inputs is not None:
                row["cache_built_by"] = inputs.built_by
            if impl == "unfused":
                make = lambda: baselines.unfused_prefill_call(case, inputs, dev)  # noqa: E731
                make_kernel = lambda: baselines.unfused_prefill_call(  # noqa: E731
                    case, inputs, dev, direct=True)
            elif op == "prefill":
                make = lambda: baselines.tq_prefill_call(case, inputs, args.backend)  # noqa: E731
                make_kernel = lambda: baselines.tq_kernel_call(  # noqa: E731
                    "prefill", case, inputs, backend=args.backend)
            else:
                make = lambda: baselines.tq_decode_call(case, inputs, args.num_splits)  # noqa: E731
                make_kernel = lambda: baselines.tq_kernel_call(  # noqa: E731
                    "decode", case, inputs, num_splits=args.num_splits,
                    decode_config=self.decode_config)
            check = lambda call: baselines.check_attention(case, inputs, last, *call(last))  # noqa: E731
            m = self.measure(row, make, n, check=check)
            if m is not None:
                rate(row, m)
            self._emit(row)
            knobbed = op == "decode" and impl == "tqkv" and bool(self.decode_config)
            if knobbed or self._kernel_rows_wanted(m):
                # a kernel row with a different config is not what the op row checked
                krow, _ = self._measure_kernel_row(row, make_kernel, n, rate,
                                                   check=check if knobbed else None)
                self._emit(krow)
        inputs = None  # free the pool before the next config

    def _fill_rates(self, row, case: Case, kv: KVConfig | None, ms: float):
        if case.op == "prefill":
            row["tflops"] = case.flops() / ms / 1e9
            if "gemm" in self.ceiling:
                row["frac_ceiling"] = row["tflops"] / self.ceiling["gemm"]
        else:
            nbytes = case.tq_bytes(kv) if kv is not None else case.bf16_bytes()
            row["gbps"] = nbytes / ms / 1e6
            row["tflops"] = case.flops() / ms / 1e9
            if "copy" in self.ceiling:
                row["frac_ceiling"] = row["gbps"] / self.ceiling["copy"]

    @staticmethod
    def _fill_ratios(row, times, only: str | None):
        """vs_X = time of baseline X / time of this row. A "-kernel" row compares with the
        "-kernel" variant of a baseline when there is one. Ratios between different timing
        methods (CUDA graph vs eager with host overhead) are flagged in the note."""
        t = row.get("time_ms")
        if not t:
            return
        mixed = []
        for base, col in (("fa4", "vs_fa4"), ("unfused", "vs_unfused"), ("sdpa", "vs_sdpa")):
            if only is not None and base != only:
                continue
            if row["impl"] in (base, base + "-kernel"):
                continue
            key = base + "-kernel" if row["impl"].endswith("-kernel") and \
                base + "-kernel" in times else base
            if key in times:
                ms, method = times[key]
                row[col] = ms / t
                if method != row.get("timing"):
                    mixed.append(f"{col} compares {row.get('timing')} with {method} timing")
        if mixed:
            row["note"] = "; ".join(filter(None, [row.get("note")] + mixed))

    # ------------------------------------------------------------------ compress
    def run_compress(self, cases: list[Case], kvs: list[KVConfig]):
        from . import baselines
        from .shapes import range_name

        dev = self.device
        for case in cases:
            for kv in kvs:
                wanted = [i for i in IMPLS["compress"] if i in self.impls]
                if not wanted:
                    continue
                n = self._sets(case.compress_bytes(kv))
                inputs, build_error = None, None
                if not self._skip_reason():
                    try:
                        inputs = baselines.build_paged_inputs(case, kv, n, dev,
                                                              seed=self.args.seed,
                                                              cache_build=self.cache_build)
                    except Exception as e:  # noqa: BLE001
                        build_error = e
                # Every set was written by the timed calls (warm-up covers all sets); the
                # last set's K/V are not the ones the cache was built from.
                last = n - 1
                for impl in wanted:
                    op_name = "compress_store" if impl == "compress" else "dequantize"
                    row = self._base_row("compress", f"tqkv.{op_name}", case, kv,
                                         range_name("tqkv", op_name, case, kv))
                    if build_error is not None:
                        self._fail(row, build_error)
                        row["note"] = f"building the packed cache failed: {row.get('note')}"
                        self._emit(row)
                        continue
                    if inputs is not None:
                        row["cache_built_by"] = inputs.built_by
                    if impl == "compress":
                        make = lambda: baselines.tq_compress_call(case, inputs)  # noqa: E731
                        check = lambda call: baselines.check_compress(case, inputs, last)  # noqa: E731
                        nbytes = case.compress_bytes(kv)
                    else:
                        make = lambda: baselines.tq_dequantize_call(case, inputs)  # noqa: E731
                        check = lambda call: baselines.check_dequantize(  # noqa: E731
                            case, inputs, last, call(last))
                        nbytes = case.dequantize_bytes(kv)

                    def rate(row, m, nbytes=nbytes):
                        row["gbps"] = nbytes / m.median_ms / 1e6
                        if "copy" in self.ceiling:
                            row["frac_ceiling"] = row["gbps"] / self.ceiling["copy"]

                    m = self.measure(row, make, n, check=check)
                    if m is not None:
                        rate(row, m)
                    self._emit(row)
                    if self._kernel_rows_wanted(m):
                        make_kernel = (lambda op_name=op_name: baselines.tq_kernel_call(
                            op_name, case, inputs))
                        krow, _ = self._measure_kernel_row(row, make_kernel, n, rate)
                        self._emit(krow)
                inputs = None  # free the pool before the next config
                self._free()

    # ------------------------------------------------------------------ plans
    def run(self, plan: list[tuple[str, list[Case]]], kvs: list[KVConfig], dtype: str):
        from .report import Progress

        ceilings = [c for c in CEILINGS if c in self.impls]
        total = len(ceilings)
        for op, cases in plan:
            if op == "compress":
                total += len(cases) * len(kvs) * sum(i in self.impls for i in IMPLS["compress"])
            else:
                total += self._attention_steps(op, cases, kvs)
        self.progress = Progress(total, "microbench", enabled=self.progress_enabled)
        try:
            self.run_ceilings(dtype)
            for op, cases in plan:
                if op == "compress":
                    self.run_compress(cases, kvs)
                else:
                    self.run_attention(op, cases, kvs)
        finally:
            self.progress.close()


# =========================================================================== commands
def _print_header(meta: dict, out, extra: list[str]) -> None:
    clocks = (f"  (SM clock {meta['sm_clock_mhz'] or '?'} / max {meta['sm_clock_max_mhz'] or '?'} "
              f"MHz)" if not meta["device"].startswith("CPU") else "")
    print(f"# microbench on {meta['device']}{clocks}", file=out)
    print(f"# torch {meta['torch']}, nvidia-cutlass-dsl {meta['cutlass_dsl']}, flash-attn-4 "
          f"{meta['flash_attn_4']}, git {meta['git_sha']}, {meta['timestamp']}", file=out)
    for line in extra:
        print(f"# {line}", file=out)
    out.flush()


def _finish(sink, args, out) -> int:
    from .report import format_table, plot_rows

    sink.flush(final=True)
    print(format_table(sink.rows), file=out)
    if getattr(args, "plot", None):
        titles = plot_rows(sink.rows, args.plot)
        print(f"# plot: {args.plot} ({len(titles)} panels)" if titles else
              "# plot: no tqkv rows with ratios to plot", file=out)
    out.flush()
    return 0


def _bench_command(args, plan_ops: list[str], grid_source) -> int:
    import torch

    from .report import ResultSink, run_metadata, stdout_or_stderr

    device = torch.device(args.device)
    kvs = _kv_list(args.kv)
    plan = [(op, grid_source(op)) for op in plan_ops]
    _check_plot(args)
    out = stdout_or_stderr(args.csv == "-" or args.json == "-")
    meta = run_metadata(device)
    sink = ResultSink(args.csv, args.json, meta, command=shlex.join(sys.argv))
    try:
        bench = Bench(args, device, sink, progress_enabled=not args.quiet)
    except ValueError as e:
        _err(f"microbench {args.command}: {e}")
        return 2
    how = {"graph": "CUDA-graph replays", "eager": "CUDA events around each call"}[
        bench.timer.mode] if device.type == "cuda" else "wall clock around each call"
    extra = [f"timing: {how}, median of {bench.timer.reps} samples, warm-up excluded; "
             f"ratios = baseline time / row time (> 1 = faster)",
             f"KV configs: {' '.join(k.label for k in kvs)}; cases: "
             + ", ".join(f"{op} {len(c)}" for op, c in plan)]
    if device.type != "cuda":
        extra.append("device cpu: tqkv ops run fa4_tq's reference implementation")
    _print_header(meta, out, extra)
    bench.run(plan, kvs, args.dtype)
    _finish(sink, args, out)
    built = sorted({r["cache_built_by"] for r in sink.rows if r.get("cache_built_by")})
    for b in built:
        print(f"# packed cache built by: {b}", file=out)
    out.flush()
    return 1 if bench.failures else 0


def cmd_op(args) -> int:
    if args.device == "cuda" and not _cuda_available():
        _err(gpu_required_message(args.command))
        return 2
    try:
        cases = {args.command: cases_from_args(args.command, args)}
    except ValueError as e:
        _err(f"microbench {args.command}: {e}")
        return 2
    return _bench_command(args, [args.command], lambda op: cases[op])


def cmd_sweep(args) -> int:
    if args.device == "cuda" and not _cuda_available():
        _err(gpu_required_message("sweep"))
        return 2
    bad = [o for o in args.ops if o not in shapes.OPS]
    if bad:
        _err(f"microbench sweep: --ops {bad} not in {shapes.OPS}")
        return 2
    if args.kv is None:
        args.kv = ["all"]
    grid = None if args.device == "cuda" else shapes.CPU_SMOKE_GRID
    return _bench_command(args, list(args.ops),
                          lambda op: shapes.with_dtype(shapes.build_cases(op, grid=grid),
                                                       args.dtype))


def cmd_smoke(args) -> int:
    """CPU reference run on tiny shapes, then the compile report (subset)."""
    ns = argparse.Namespace(
        command="smoke", kv=args.kv or [k.cli for k in SMOKE_KV], dtype="bf16", reps=args.reps,
        warmup=1, timing="eager", device="cpu", seed=args.seed, check=True, cache_build="auto", time_budget=None,
        impls=list(SMOKE_IMPLS), backend="auto", num_splits=0, csv=args.csv, json=args.json,
        plot=args.plot, quiet=args.quiet)
    rc = _bench_command(ns, list(shapes.OPS),
                        lambda op: shapes.build_cases(op, grid=shapes.CPU_SMOKE_GRID))
    if not args.compile_report:
        return rc
    out = sys.stderr if args.csv == "-" else sys.stdout
    print("\n# compile report (sm_90a, CPU-only compile; subset K4V4, D=128 — "
          "`python -m microbench compile-report` for all configs)", file=out, flush=True)
    crc = run_compile_report(kernels=None, kvs=list(SMOKE_COMPILE_SUBSET["kv"]),
                             head_dims=list(SMOKE_COMPILE_SUBSET["head_dims"]), csv_path=None,
                             out=out, verbose=False, list_only=False, missing_ok=True)
    return rc or crc


# ----------------------------------------------------------------------- compile report
def _import_harness():
    """fa4_tq.kernels.compile, with the sm_90a cross-compile environment set first (CuTeDSL
    reads it when cutlass is first imported)."""
    import importlib

    harness = importlib.import_module("fa4_tq.kernels.compile")
    harness.configure_cpu_compile_env()
    return harness


def select_configs(configs, kvs=None, head_dims=None):
    """Filter KernelConfigs: (k_bits, v_bits) in ``kvs`` — configs whose widths are not
    TurboQuant widths (bf16 baselines, 16/16) always pass — and head_dim in ``head_dims``."""
    keep = []
    pairs = {(k.k_bits, k.v_bits) for k in kvs} if kvs else None
    for c in configs:
        tq = c.k_bits in shapes.SUPPORTED_BITS and c.v_bits in shapes.SUPPORTED_BITS
        if pairs is not None and tq and (c.k_bits, c.v_bits) not in pairs:
            continue
        if head_dims and c.head_dim not in head_dims:
            continue
        keep.append(c)
    return keep


def run_compile_report(*, kernels, kvs, head_dims, csv_path, out, verbose, list_only,
                       missing_ok=False) -> int:
    try:
        harness = _import_harness()
    except ModuleNotFoundError as e:
        if e.name != "fa4_tq.kernels.compile":
            raise
        _err("compile report: fa4_tq.kernels.compile (the compile-only harness) is not "
             "available in this checkout")
        return 0 if missing_ok else 2
    configs = select_configs(harness.registered_configs(kernels), kvs, head_dims)
    for module_name, err in harness.registry_import_errors().items():
        _err(f"note  registry module {module_name} skipped: {err}")
    if not configs:
        _err(f"compile report: no registered configs match kernels={kernels} "
             f"kv={[k.label for k in kvs] if kvs else 'any'} head_dim={head_dims or 'any'}")
        return 0 if missing_ok else 1
    if list_only:
        for c in configs:
            print(f"{c.kernel},{c.k_bits},{c.v_bits},{c.head_dim},{c.variant}", file=out)
        return 0
    results = harness.compile_report(configs, echo=sys.stderr if verbose else None)
    if csv_path == "-":
        harness.write_csv(results, sys.stdout)
        sys.stdout.flush()
        print(harness.format_table(results), file=sys.stderr)
    else:
        print(harness.format_table(results), file=out)
        if csv_path:
            with open(csv_path, "w", newline="") as f:
                harness.write_csv(results, f)
    return 1 if any(r.error for r in results) else 0


def cmd_compile_report(args) -> int:
    kvs = shapes.parse_kv(args.kv) if args.kv else None
    out = sys.stderr if args.csv == "-" else sys.stdout
    return run_compile_report(kernels=args.kernels, kvs=kvs,
                              head_dims=_flatten(args.head_dim), csv_path=args.csv, out=out,
                              verbose=args.verbose, list_only=args.list)


# ----------------------------------------------------------------------- ncu / plot
def cmd_ncu(args) -> int:
    from . import ncu

    return ncu.main(args)


def cmd_plot(args) -> int:
    from .report import PlotUnavailable, load_rows, plot_rows

    try:
        titles = plot_rows(load_rows(args.results), args.plot)
    except PlotUnavailable as e:
        _err(f"microbench plot: {e}")
        return 2
    if not titles:
        _err("microbench plot: no tqkv rows with ratios in the results")
        return 1
    print(f"wrote {args.plot}: " + "; ".join(titles))
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS = {
    "smoke": cmd_smoke, "prefill": cmd_op, "decode": cmd_op, "compress": cmd_op,
    "sweep": cmd_sweep, "compile-report": cmd_compile_report, "ncu": cmd_ncu,
    "plot": cmd_plot,
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["smoke"] + argv
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)
