"""Rows -> a readable table, CSV, JSON and PNG plots; run metadata; a progress line.

One row per (implementation, op, KV config, shape). CSV and JSON are rewritten after every
row, so a run cut short (e.g. by a command time limit) still leaves its finished rows.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Stable CSV schema (tests pin it). Ratios are "baseline time / this time": > 1 = faster.
COLUMNS = (
    "op", "impl", "kv", "k_bits", "v_bits", "batch", "seqlen_q", "seqlen_k", "num_heads",
    "num_kv_heads", "head_dim", "block_size", "causal", "window_left", "window_right",
    "dtype", "status", "time_ms", "tflops", "gbps", "vs_fa4", "vs_unfused", "vs_sdpa",
    "frac_ceiling", "check_rel_err", "check_lse_err", "check_ok", "compile_s", "timing",
    "calls_per_sample", "input_sets", "cache_built_by", "note", "nvtx_range",
    "device", "sm_clock_mhz", "sm_clock_max_mhz", "torch", "cutlass_dsl", "flash_attn_4",
    "git_sha", "timestamp",
)
META_COLUMNS = ("device", "sm_clock_mhz", "sm_clock_max_mhz", "torch", "cutlass_dsl",
                "flash_attn_4", "git_sha", "timestamp")

STATUS_OK = "ok"
STATUS_NOT_IMPLEMENTED = "not implemented"
STATUS_UNAVAILABLE = "unavailable"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"


# --------------------------------------------------------------------------- metadata
def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_sha() -> str:
    """$FA4TQ_GIT_SHA when set (the device gets a copy of the work tree whose .git may be a
    stale snapshot, so the caller passes the real HEAD), else HEAD of the checkout
    (+"-dirty" with uncommitted changes), else "unknown"."""
    if os.environ.get("FA4TQ_GIT_SHA"):
        return os.environ["FA4TQ_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        if sha.returncode == 0 and sha.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def sm_clocks_mhz(device) -> tuple[str, str]:
    """(current SM clock, max SM clock) in MHz from nvidia-smi, or ("", "") if unreadable."""
    if getattr(device, "type", "cpu") != "cuda":
        return "", ""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        r = subprocess.run(["nvidia-smi", f"--id={index}",
                            "--query-gpu=clocks.sm,clocks.max.sm",
                            "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=15)
        if r.returncode == 0:
            parts = [p.strip() for p in r.stdout.strip().split(",")]
            if len(parts) == 2:
                return parts[0], parts[1]
    except (OSError, subprocess.SubprocessError):
        pass
    return "", ""


def device_name(device) -> str:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_metadata(device) -> dict:
    import torch

    cur, mx = sm_clocks_mhz(device)
    return {
        "device": device_name(device),
        "sm_clock_mhz": cur,
        "sm_clock_max_mhz": mx,
        "torch": torch.__version__,
        "cutlass_dsl": _dist_version("nvidia-cutlass-dsl"),
        "flash_attn_4": _dist_version("flash-attn-4"),
        "git_sha": git_sha(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- formatting
def _fmt(v, digits=3) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def _shape_text(r: dict) -> str:
    if r["op"] == "compress":
        return f"T={r['batch'] * r['seqlen_k']}"
    if r["op"] in ("ceiling",):
        return ""
    s = f"B={r['batch']} Sq={r['seqlen_q']} Sk={r['seqlen_k']}"
    if r["op"] == "prefill":
        s += " causal" if r["causal"] else " noncausal"
    if (r.get("window_left"), r.get("window_right")) not in ((-1, -1), (None, None)):
        s += f" win=({r['window_left']},{r['window_right']})"
    return s


TABLE_COLUMNS = (
    ("op", lambda r: r["op"]),
    ("impl", lambda r: r["impl"]),
    ("kv", lambda r: r["kv"]),
    ("shape", _shape_text),
    ("ms", lambda r: _fmt(r.get("time_ms"), 4)),
    ("TFLOP/s", lambda r: _fmt(r.get("tflops"), 1)),
    ("GB/s", lambda r: _fmt(r.get("gbps"), 0)),
    ("vs fa4", lambda r: _fmt(r.get("vs_fa4"), 2)),
    ("vs unfused", lambda r: _fmt(r.get("vs_unfused"), 2)),
    ("vs sdpa", lambda r: _fmt(r.get("vs_sdpa"), 2)),
    ("of ceiling", lambda r: _fmt(r.get("frac_ceiling"), 2)),
    ("check", lambda r: _check_text(r)),
    ("compile s", lambda r: _fmt(r.get("compile_s"), 2)),
    ("status", lambda r: _status_text(r)),
)


def _check_text(r: dict) -> str:
    if r.get("check_ok") in (None, ""):
        return "-"
    err = r.get("check_rel_err")
    text = f"{err:.1e}" if isinstance(err, float) and math.isfinite(err) else _fmt(err)
    return ("ok " if r["check_ok"] else "FAIL ") + text


def _status_text(r: dict, limit: int = 140) -> str:
    """Status plus the note, shortened for the table (CSV/JSON keep the whole note)."""
    s = r.get("status", "")
    note = r.get("note")
    if note:
        s += f" ({note if len(note) <= limit else note[:limit - 3] + '...'})"
    return s


def format_table(rows) -> str:
    rows = list(rows)
    head = [name for name, _ in TABLE_COLUMNS]
    body = [[get(r) for _, get in TABLE_COLUMNS] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    # the status column is last and can be long: don't pad it
    widths[-1] = len(head[-1])
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def format_row_line(r: dict) -> str:
    """One row as a single line (printed as rows finish)."""
    return "  ".join(f"{name}={get(r)}" for name, get in TABLE_COLUMNS if get(r) not in ("-", ""))


# --------------------------------------------------------------------------- writers
def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def rows_to_csv(rows, out) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r.get(k)) for k in COLUMNS})


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class ResultSink:
    """Collects rows; (re)writes CSV/JSON files after every row. ``csv_path == "-"`` writes
    the CSV to stdout once, at the end (stdout then carries nothing else)."""

    def __init__(self, csv_path: str | None = None, json_path: str | None = None,
                 meta: dict | None = None, command: str = ""):
        self.rows: list[dict] = []
        self.csv_path = csv_path
        self.json_path = json_path
        self.meta = dict(meta or {})
        self.command = command
        for p in (csv_path, json_path):
            if p and p != "-":
                Path(p).parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> dict:
        full = {k: None for k in COLUMNS}
        full.update({k: self.meta.get(k) for k in META_COLUMNS})
        full.update(row)
        self.rows.append(full)
        self.flush(final=False)
        return full

    def flush(self, final: bool = True) -> None:
        if self.csv_path and self.csv_path != "-":
            with open(self.csv_path, "w", newline="") as f:
                rows_to_csv(self.rows, f)
        elif self.csv_path == "-" and final:
            rows_to_csv(self.rows, sys.stdout)
            sys.stdout.flush()
        if self.json_path:
            doc = {"meta": self.meta, "command": self.command, "columns": list(COLUMNS),
                   "rows": [{k: _json_safe(v) for k, v in r.items()} for r in self.rows]}
            text = json.dumps(doc, indent=1)
            if self.json_path == "-":
                if final:
                    print(text)
            else:
                with open(self.json_path, "w") as f:
                    f.write(text + "\n")


def load_rows(path: str) -> list[dict]:
    """Rows from a JSON file written by ResultSink (or a CSV with the COLUMNS header)."""
    p = Path(path)
    if p.suffix == ".json":
        return json.loads(p.read_text())["rows"]
    with open(p, newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            for k in ("batch", "seqlen_q", "seqlen_k", "k_bits", "v_bits"):
                if r.get(k):
                    r[k] = int(r[k])
            for k in ("time_ms", "vs_fa4", "vs_unfused", "vs_sdpa", "tflops", "gbps"):
                r[k] = float(r[k]) if r.get(k) else None
            r["causal"] = r.get("causal") == "True"
            rows.append(r)
        return rows


# --------------------------------------------------------------------------- plots
class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise PlotUnavailable("--plot needs matplotlib, which is not installed "
                              "(pip install matplotlib, or fa4_tq[plot])") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# (op, ratio column, y label) plotted for the tqkv rows
PLOT_RATIOS = (
    ("prefill", "vs_fa4", "speed vs FA4-bf16 (×)"),
    ("prefill", "vs_unfused", "speed vs unfused dequantize+FA4 (×)"),
    ("decode", "vs_fa4", "speedup vs FA4-bf16 (×)"),
    ("decode", "vs_sdpa", "speedup vs SDPA-bf16 (×)"),
    ("compress", "frac_ceiling", "fraction of copy bandwidth"),
)
_RATIO_TITLE = {"vs_fa4": "vs FA4-bf16", "vs_unfused": "vs unfused", "vs_sdpa": "vs SDPA",
                "frac_ceiling": "of copy bandwidth"}


def plot_rows(rows, path: str) -> list[str]:
    """Ratio vs sequence length, one line per KV config, one panel per (op, ratio, other
    shape parameters). Returns the panel titles (empty: nothing to plot)."""
    plt = require_matplotlib()
    panels: dict[tuple, dict[str, list]] = {}
    # Where an op row has a "-kernel" twin (the op syncs with the host, so only the direct
    # kernel call was CUDA-graph timed like the baselines), plot the twin, marked "*".
    shape_cols = ("op", "kv", "batch", "seqlen_q", "seqlen_k", "causal", "block_size",
                  "head_dim", "window_left", "window_right", "dtype")
    twins = {(r["impl"].removesuffix("-kernel"),) + tuple(r.get(c) for c in shape_cols)
             for r in rows if str(r.get("impl", "")).endswith("-kernel")
             and r.get("status") == STATUS_OK}
    starred = False
    for op, col, ylabel in PLOT_RATIOS:
        for r in rows:
            impl = str(r.get("impl", ""))
            base = impl.removesuffix("-kernel")
            if r.get("op") != op or base not in ("tqkv", "tqkv.compress_store",
                                                 "tqkv.dequantize"):
                continue
            if r.get(col) in (None, "") or r.get("status") != STATUS_OK:
                continue
            has_twin = (base,) + tuple(r.get(c) for c in shape_cols) in twins
            if has_twin and not impl.endswith("-kernel"):
                continue
            label = r["kv"] + ("*" if has_twin else "")
            starred |= has_twin
            if op == "prefill":
                rest = f"B={r['batch']} {'causal' if r['causal'] else 'noncausal'}"
            elif op == "decode":
                rest = f"B={r['batch']} q_len={r['seqlen_q']}"
            else:
                rest = base
            key = (op, col, ylabel, rest)
            panels.setdefault(key, {}).setdefault(label, []).append(
                (r["batch"] * r["seqlen_k"] if op == "compress" else r["seqlen_k"], float(r[col])))
    if not panels:
        return []
    n = len(panels)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    titles = []
    for ax, ((op, col, ylabel, rest), lines) in zip(axes.flat, sorted(panels.items())):
        for kv, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kv)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("tokens" if op == "compress" else "sequence length (keys)")
        ax.set_ylabel(ylabel)
        title = f"{op} {_RATIO_TITLE[col]}: {rest}"
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=3)
        titles.append(f"{title} [{col}]")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if starred:
        fig.suptitle("* kernel called directly\n(the op syncs with the host: not graph-timed)",
                     fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return titles


# --------------------------------------------------------------------------- progress
class Progress:
    """A progress line on stderr: tqdm when installed, else a plain counter."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.done, self.desc = total, 0, desc
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def extend(self, n: int) -> None:
        """More steps than planned (e.g. "-kernel" rows decided at run time)."""
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def step(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(what[:60])
            self._bar.update(1)
            return
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.desc} {self.done}/{self.total} {elapsed:6.1f}s] {what}", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def stdout_or_stderr(csv_to_stdout: bool):
    """Where human-readable output goes: stderr when stdout carries CSV/JSON."""
    return sys.stderr if csv_to_stdout else sys.stdout


def csv_text(rows) -> str:
    buf = io.StringIO()
    rows_to_csv(rows, buf)
    return buf.getvalue()
