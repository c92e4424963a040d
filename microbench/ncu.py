"""``python -m microbench ncu <op> [options]``: one kernel config under Nsight Compute.

Flow: the options select exactly one case and KV config; the command re-runs microbench
itself (eager timing, one timed call, no check) under

    ncu --clock-control none --nvtx --nvtx-include "<range>/" --section SpeedOfLight
        --section Occupancy --section LaunchStats --section WarpStateStats
        --section InstructionStats -o ncu_reports/<name> -f  python -m microbench ...

where <range> is the NVTX range microbench puts around each timed call (e.g.
``tqkv.prefill K4V4 B1 Sq8192 ...``), so only the kernels of that one call are profiled
(compile and warm-up calls sit outside the ranges). It then exports the report with
``ncu --import <rep> --csv --page details`` (and ``--page raw`` for stall reasons and the
instruction mix) and writes a markdown summary to ``ncu_reports/<name>.md`` with
<name> = ``<op>-<config>-<gpu>``. The ``.ncu-rep`` stays out of git (.gitignore).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import shapes
from .report import REPO_ROOT

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "InstructionStats")
# Single-case defaults for ncu (the benchmark grids have several shapes).
NCU_DEFAULTS = {
    "prefill": dict(seqlens=[8192], causal=True),
    "decode": dict(batch=[8], seqlens=[32768], causal=True),
    "compress": dict(seqlens=[8192]),
}


# =========================================================================== planning
@dataclass
class NcuPlan:
    op: str  # prefill | decode | compress | dequantize
    impl: str
    case: shapes.Case
    kv: shapes.KVConfig | None
    range_name: str
    name: str  # <op>-<config>-<gpu>
    report_base: Path  # ncu -o (ncu adds .ncu-rep)
    markdown: Path
    child: list[str]
    command: list[str] = field(default_factory=list)

    @property
    def report_file(self) -> Path:
        return self.report_base.with_name(self.report_base.name + ".ncu-rep")


def gpu_slug(device_name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"."""
    s = re.sub(r"^nvidia\s+", "", device_name.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"


def find_ncu(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    found = shutil.which("ncu")
    if found:
        return found
    for cand in ("/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/ncu"):
        if Path(cand).exists():
            return cand
    return None


def _single_case(args) -> shapes.Case:
    from .cli import _flatten

    bench_op = "compress" if args.op in ("compress", "dequantize") else args.op
    defaults = NCU_DEFAULTS[bench_op]
    kwargs = dict(batch=_flatten(args.batch) or defaults.get("batch"),
                  seqlens=_flatten(args.seqlens) or defaults.get("seqlens"),
                  q_len=_flatten(args.q_len), num_heads=args.hq, num_kv_heads=args.hkv,
                  head_dim=_flatten(args.head_dim), block_size=_flatten(args.block_size),
                  causal=defaults.get("causal") if args.causal is None else args.causal,
                  window=args.window, dtype=args.dtype)
    cases = shapes.build_cases(bench_op, **kwargs)
    if len(cases) != 1:
        raise ValueError(f"ncu profiles exactly one kernel config, but the options give "
                         f"{len(cases)} cases ({'; '.join(c.label() for c in cases[:4])}"
                         f"{'; ...' if len(cases) > 4 else ''}): pass single values")
    return cases[0]


def plan(args, device_name: str) -> NcuPlan:
    op, impl = args.op, args.impl
    if op in ("compress", "dequantize") and impl not in ("tqkv", "tqkv-kernel"):
        raise ValueError(f"ncu {op}: only --impl tqkv or tqkv-kernel exists")
    if op == "decode" and impl.startswith("unfused"):
        raise ValueError("ncu decode: there is no unfused decode baseline")
    if op != "prefill" and impl.startswith("unfused"):
        raise ValueError(f"ncu {op}: unfused is a prefill baseline")
    case = _single_case(args)
    kvs = shapes.parse_kv([args.kv])
    if len(kvs) != 1:
        raise ValueError("ncu profiles one KV config: pass --kv K,V")
    kernel_row = impl.endswith("-kernel")  # the "-kernel" twin row of an op row
    base_impl = impl.removesuffix("-kernel")
    kv = kvs[0] if base_impl in ("tqkv", "unfused") else None
    if op in ("compress", "dequantize"):
        range_op = "compress_store" if op == "compress" else "dequantize"
        rname = shapes.range_name(impl, range_op, case, kv)
        bench_cmd, impls = "compress", op
    else:
        rname = shapes.range_name(impl, op, case, kv)
        bench_cmd, impls = op, base_impl
    if impl == "tqkv":
        config = kv.label
    elif kv is None:
        config = f"{impl}-bf16"
    else:
        config = f"{impl}-{kv.label}"
    name = f"{op}-{config}-{case.slug()}-{gpu_slug(device_name)}"
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "ncu_reports"
    child = [sys.executable, "-m", "microbench", bench_cmd, *case.cli_args(),
             "--kv", (kv or shapes.KVConfig(4, 4)).cli, "--impls", impls,
             "--timing", "eager", "--reps", "1", "--warmup", "1", "--no-check", "--quiet",
             "--seed", str(args.seed), "--cache-build", args.cache_build,
             "--kernel-rows", "always" if kernel_row else "never"]
    if bench_cmd == "prefill":
        child += ["--backend", args.backend]
    if bench_cmd == "decode":
        child += ["--num-splits", str(args.num_splits)]
    return NcuPlan(op, impl, case, kv, rname, name, out_dir / name, out_dir / f"{name}.md",
                   child)


def ncu_command(ncu: str, p: NcuPlan) -> list[str]:
    cmd = [ncu, "--clock-control", "none", "--nvtx", "--nvtx-include", f"{p.range_name}/"]
    for s in SECTIONS:
        cmd += ["--section", s]
    return cmd + ["-o", str(p.report_base), "-f", *p.child]


# =========================================================================== parsing
_NUM = re.compile(r"^-?[\d,]*\.?\d+(?:[eE][-+]?\d+)?$")
_TIME_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3,
               "ms": 1e3, "second": 1e6, "s": 1e6}


def to_number(text):
    t = str(text).strip().replace(",", "") if _NUM.match(str(text).strip()) else None
    if t is None:
        return None
    try:
        return float(t)
    except ValueError:
        return None


@dataclass
class KernelProfile:
    id: str
    name: str
    block: str = ""
    grid: str = ""
    metrics: dict = field(default_factory=dict)  # metric name -> (value text, unit)
    rules: list = field(default_factory=list)  # (type, text)
    stalls: list = field(default_factory=list)  # (reason, warps per issue)
    opcodes: list = field(default_factory=list)  # (opcode, count)

    def value(self, *names):
        for n in names:
            if n in self.metrics:
                return self.metrics[n]
        return None

    def number(self, *names):
        v = self.value(*names)
        return None if v is None else to_number(v[0])

    def duration_us(self):
        v = self.value("Duration", "gpu__time_duration.sum")
        if v is None:
            return None
        num = to_number(v[0])
        factor = _TIME_TO_US.get(v[1].strip().lower(), None)
        return None if num is None or factor is None else num * factor


def parse_details_csv(text: str) -> list[KernelProfile]:
    """``ncu --import R --csv --page details``: one row per (kernel, section, metric)."""
    kernels: dict[str, KernelProfile] = {}
    rows = csv.DictReader(io.StringIO(_strip_preamble(text)))
    for r in rows:
        kid = (r.get("ID") or "").strip()
        if not kid:
            continue
        k = kernels.setdefault(kid, KernelProfile(kid, (r.get("Kernel Name") or "").strip(),
                                                  (r.get("Block Size") or "").strip(),
                                                  (r.get("Grid Size") or "").strip()))
        metric = (r.get("Metric Name") or "").strip()
        if metric:
            k.metrics.setdefault(metric, ((r.get("Metric Value") or "").strip(),
                                          (r.get("Metric Unit") or "").strip()))
        rule_type = (r.get("Rule Type") or "").strip()
        rule_text = (r.get("Rule Description") or "").strip()
        if rule_text and rule_type in ("WRN", "OPT", "Warning", "Optimization"):
            if (rule_type, rule_text) not in k.rules:
                k.rules.append((rule_type, rule_text))
    return list(kernels.values())


_STALL = re.compile(r"issue_stalled_([a-z0-9_]+?)_per_issue_active\.ratio$")
_STALL_ANY = re.compile(r"issue_stalled_([a-z0-9_]+?)(?:_per_\w+)?\.(?:ratio|pct|sum)$")
_OPCODE_PAIR = re.compile(r"\(?\s*([A-Z][A-Z0-9_.]*)\s*[:;,=]\s*([\d.,eE+]+)\s*\)?")


def parse_raw_csv(text: str) -> dict[str, dict]:
    """``ncu --import R --csv --page raw``: header = metric names, one units row, then one
    row per kernel. Returns {ID: {"stalls": [(reason, value)], "opcodes": [(op, count)]}}."""
    reader = csv.reader(io.StringIO(_strip_preamble(text)))
    rows = list(reader)
    if not rows:
        return {}
    header = rows[0]
    idx = {h: i for i, h in enumerate(header)}
    out: dict[str, dict] = {}
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        kid = row[idx["ID"]].strip() if "ID" in idx else ""
        if not kid or to_number(kid) is None:
            continue  # the units row
        stalls = _stall_values(header, row, _STALL) or _stall_values(header, row, _STALL_ANY)
        stalls.sort(key=lambda s: -s[1])
        opcodes = []
        for h, v in zip(header, row):
            if h.startswith("sass__inst_executed_per_opcode"):
                opcodes = _parse_opcodes(v)
                break
        out[kid] = {"stalls": stalls, "opcodes": opcodes}
    return out


def _stall_values(header, row, pattern) -> list[tuple[str, float]]:
    found = []
    for h, v in zip(header, row):
        m = pattern.search(h)
        if m and "not_issued" not in h:
            num = to_number(v)
            if num is not None:
                found.append((m.group(1), num))
    return found


def _parse_opcodes(cell: str) -> list[tuple[str, float]]:
    """Instance values of sass__inst_executed_per_opcode: pairs "OPCODE;count;..." or
    "(OPCODE: count)" depending on the ncu version; [] if the cell has no pairs."""
    pairs = []
    tokens = [t.strip() for t in re.split(r"[;\n]", cell) if t.strip()]
    if len(tokens) >= 2 and len(tokens) % 2 == 0 and all(
            re.match(r"^[A-Z][A-Z0-9_.]*$", tokens[i]) and to_number(tokens[i + 1]) is not None
            for i in range(0, len(tokens), 2)):
        pairs = [(tokens[i], to_number(tokens[i + 1])) for i in range(0, len(tokens), 2)]
    else:
        for m in _OPCODE_PAIR.finditer(cell):
            num = to_number(m.group(2))
            if num is not None:
                pairs.append((m.group(1), num))
    pairs.sort(key=lambda p: -p[1])
    return pairs


def _strip_preamble(text: str) -> str:
    """Drop ncu's "==PROF==" / "==WARNING==" lines that may precede the CSV."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('"') or line.startswith("ID,"):
            return "\n".join(lines[i:])
    return text


# =========================================================================== markdown
def _cell(v, unit=None):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def _short(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def markdown_summary(p: NcuPlan, kernels: list[KernelProfile], raw: dict[str, dict], *,
                     device_name: str, command: list[str]) -> str:
    lines = [f"# ncu: `{p.range_name}`", "",
             f"- GPU: {device_name}; clocks not locked (`--clock-control none`)",
             f"- date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
             f"- raw report: `{p.report_file.name}` (not in git; open with `ncu-ui` or "
             f"`ncu --import`)",
             f"- command: `{' '.join(_quote(c) for c in command)}`", ""]
    if not kernels:
        lines += ["No kernel was profiled: the NVTX range matched no kernel launch (check the "
                  "range name, and that the op has a CUDA kernel).", ""]
        return "\n".join(lines)
    total = sum(k.duration_us() or 0.0 for k in kernels)
    lines += [f"{len(kernels)} kernel(s) in the range, {total:,.1f} µs in total.", "",
              "## Kernels", "",
              "| # | kernel | duration µs | SM thru % | mem thru % | DRAM thru % | achieved "
              "occ. % | theor. occ. % | regs/thread | smem/block B (static+dyn) | grid | block |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, k in enumerate(kernels):
        smem_s = k.number("Static Shared Memory Per Block")
        smem_d = k.number("Dynamic Shared Memory Per Block")
        smem = None if smem_s is None and smem_d is None else f"{_smem_bytes(k)}"
        lines.append("| " + " | ".join([
            str(i), f"`{_short(k.name)}`", _cell(k.duration_us()),
            _cell(k.number("Compute (SM) Throughput")), _cell(k.number("Memory Throughput")),
            _cell(k.number("DRAM Throughput")), _cell(k.number("Achieved Occupancy")),
            _cell(k.number("Theoretical Occupancy")),
            _cell(k.number("Registers Per Thread")), smem or "-", k.grid or "-",
            k.block or "-"]) + " |")
    lines.append("")
    for i, k in enumerate(kernels):
        info = raw.get(k.id, {})
        lines += [f"## Kernel {i}: `{_short(k.name, 100)}`", ""]
        extra = [(label, k.value(*names)) for label, names in (
            ("SM frequency", ("SM Frequency",)), ("elapsed cycles", ("Elapsed Cycles",)),
            ("L1/TEX throughput", ("L1/TEX Cache Throughput",)),
            ("L2 throughput", ("L2 Cache Throughput",)),
            ("warp cycles per issued instruction", ("Warp Cycles Per Issued Instruction",)),
            ("executed IPC (active)", ("Executed Ipc Active",)),
            ("issue slots busy", ("Issue Slots Busy",)),
            ("executed instructions", ("Executed Instructions",)),
            ("waves per SM", ("Waves Per SM",)),
            ("block limit (registers)", ("Block Limit Registers",)),
            ("block limit (shared mem)", ("Block Limit Shared Mem",)))]
        for label, v in extra:
            if v is not None:
                lines.append(f"- {label}: {v[0]} {v[1]}".rstrip())
        stalls = info.get("stalls") or []
        if stalls:
            lines += ["", "Top stall reasons (warps per issued instruction):", ""]
            tot = sum(s[1] for s in stalls) or 1.0
            for reason, val in stalls[:6]:
                lines.append(f"- {reason}: {val:.2f} ({100 * val / tot:.0f}%)")
        else:
            lines += ["", "Stall reasons: not in the raw export of this ncu version (see the "
                      "WarpStateStats section in the report)."]
        ops = info.get("opcodes") or []
        if ops:
            tot = sum(o[1] for o in ops) or 1.0
            lines += ["", "Instruction mix (top SASS opcodes by executed warp instructions):", ""]
            lines.append(", ".join(f"{op} {100 * n / tot:.1f}%" for op, n in ops[:12]))
        else:
            lines += ["", "Instruction mix: not in the raw export of this ncu version (see "
                      "InstructionStats in the report)."]
        if k.rules:
            lines += ["", "ncu rule hints:", ""]
            lines += [f"- {t}: {_short(' '.join(text.split()), 400)}" for t, text in k.rules[:6]]
        lines.append("")
    return "\n".join(lines)


def _smem_bytes(k: KernelProfile) -> str:
    def b(name):
        v = k.value(name)
        if v is None:
            return 0
        num = to_number(v[0]) or 0.0
        unit = v[1].strip().lower().split("/")[0]
        mult = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "kibyte": 1024, "mibyte": 2**20}.get(unit, 1)
        return int(round(num * mult))

    s, d = b("Static Shared Memory Per Block"), b("Dynamic Shared Memory Per Block")
    return f"{s + d} ({s}+{d})"


def _quote(s: str) -> str:
    return f'"{s}"' if (" " in s or not s) else s


# =========================================================================== command
def _export(ncu: str, report: Path, page: str, extra=()) -> str:
    r = subprocess.run([ncu, "--import", str(report), "--csv", "--page", page, *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ncu --import --page {page} failed ({r.returncode}): "
                           f"{r.stderr.strip()[:500]}")
    return r.stdout


def main(args) -> int:
    from .cli import _cuda_available, _err, gpu_required_message

    device_name = "GPU"
    if not args.dry_run:
        if not _cuda_available():
            _err(gpu_required_message("ncu"))
            return 2
        import torch

        device_name = torch.cuda.get_device_name()
    try:
        p = plan(args, device_name)
    except ValueError as e:
        _err(f"microbench ncu: {e}")
        return 2
    ncu = find_ncu(args.ncu)
    if ncu is None and not args.dry_run:
        _err("microbench ncu: the Nsight Compute CLI `ncu` was not found on PATH (or in "
             "/usr/local/cuda/bin); pass --ncu PATH")
        return 2
    cmd = ncu_command(ncu or "ncu", p)
    print(f"# NVTX range: {p.range_name!r}")
    print("# " + " ".join(_quote(c) for c in cmd), flush=True)
    if args.dry_run:
        print(f"# would write {p.report_file} and {p.markdown}")
        return 0
    p.report_base.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(cmd)
    if run.returncode != 0:
        _err(f"microbench ncu: the profiled run failed with exit code {run.returncode} (an "
             "ERR_NVGPUCTRPERM message above means this user may not read GPU performance "
             "counters)")
        return 1
    if not p.report_file.exists():
        _err(f"microbench ncu: no report at {p.report_file}: no kernel matched the NVTX range "
             f"{p.range_name!r} (is the op implemented on CUDA?)")
        return 1
    kernels = parse_details_csv(_export(ncu, p.report_file, "details"))
    try:
        raw_text = _export(ncu, p.report_file, "raw", ("--print-metric-instances", "values"))
    except RuntimeError:  # older ncu without --print-metric-instances
        raw_text = _export(ncu, p.report_file, "raw")
    raw = parse_raw_csv(raw_text)
    md = markdown_summary(p, kernels, raw, device_name=device_name, command=cmd)
    p.markdown.write_text(md + "\n")
    print(md)
    print(f"# wrote {p.markdown} (raw report: {p.report_file})")
    return 0
