"""Compile-only harness: compile CuTeDSL kernels for sm_90a without a GPU and report resources.

Why: kernel configs must be checked for register pressure, spills and shared memory on
every change, and the machines where code is written have no GPU. CuTeDSL can compile
for any target from fake tensors (``cute.runtime.make_fake_tensor``), so this module
compiles every registered config for sm_90a and reports, per config::

    kernel,k_bits,v_bits,head_dim,variant,compile_s,registers,spill_bytes,smem_bytes

Where the numbers come from (nvidia-cutlass-dsl 4.8.1):

* registers / spills / static smem: ptxas's own verbose output. With
  ``CUTE_DSL_COMPILER_OPT="remarks{ptx}"`` CuTeDSL runs its embedded ptxas with ``-v``
  and prints the log as a ``remark[ptxas info]`` diagnostic through Python's
  ``sys.stderr`` (cutlass/base_dsl/compiler.py, ``Compiler.compile``), so it can be
  captured with ``contextlib.redirect_stderr`` and parsed (``parse_ptxas_log``). When
  ptxas reports spills, CuTeDSL instead prints a "register spills" remark with the same
  log re-wrapped at 100 columns; the parser flattens whitespace to read both.
  For warp-specialized kernels (FA4 Sm90) "registers" is the per-thread allocation at
  launch (65536 / threads per CTA, rounded down to 8); warp groups then trade registers
  with setmaxnreg, so spills and ptxas's "Potential Performance Loss" warnings (e.g.
  C7512, wgmma serialized; copied into the notes) are what shows register trouble.
* dynamic smem: CuTeDSL sizes dynamic shared memory itself (``cute.kernel_smem_size``)
  and bakes it into the host launcher as the ``dynamicSmemBytes`` field of the
  ``cudaLaunchConfig_t`` passed to ``cudaLaunchKernelEx``. The compiled object keeps the
  lowered host module (``compiled.ir_module``); ``launch_dynamic_smem_bytes`` walks it.

A number that cannot be obtained is reported as None with a note saying why.

Environment pitfall: CuTeDSL reads ``CUTE_DSL_*`` variables once, when ``cutlass`` is
first imported. ``configure_cpu_compile_env()`` must therefore run before anything
imports cutlass (``flash_attn.cute``, ``quack`` and any kernel module do). The harness
checks the effective settings and fails loudly when they did not take effect.

Registry: kernel modules contribute configs through a function
``register_configs(register)``; their module names are listed in ``REGISTRY_MODULES``
and imported lazily by ``registered_configs``. A module that cannot be imported is
skipped and recorded in ``registry_import_errors()``.

CLI: ``python -m fa4_tq.kernels.compile [--kernels fa4_fwd,...] [--csv out.csv]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TextIO

# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------

#: Variables for cross-compiling to an H100 (132 SMs) from a CPU-only machine.
#: CUTE_DSL_ARCH: CuTeDSL's compile target (read at cutlass import; without it and
#:   without a GPU, cutlass 4.8.1 defaults to sm_100a and FA4's Sm90 class asserts).
#: FLASH_ATTENTION_ARCH: FA4's kernel-family choice in interface._get_device_arch.
#: FLASH_ATTENTION_NUM_SMS: FA4's SM count for split heuristics (cute_dsl_utils.py).
CPU_COMPILE_ENV = {
    "CUTE_DSL_ARCH": "sm_90a",
    "FLASH_ATTENTION_ARCH": "sm_90",
    "FLASH_ATTENTION_NUM_SMS": "132",
}

#: Compact CuTeDSL option that makes the embedded ptxas run with -v and print its log.
PTXAS_REMARKS_OPT = "remarks{ptx}"
COMPILER_OPT_VAR = "CUTE_DSL_COMPILER_OPT"


def _has_ptxas_remarks(compiler_opt: str) -> bool:
    """Whether a CUTE_DSL_COMPILER_OPT string turns on ptxas remarks (bare or {..ptx..})."""
    for match in re.finditer(r"remarks(\{([^}]*)\})?", compiler_opt or ""):
        selectors = match.group(2)
        if selectors is None or "ptx" in [s.strip() for s in selectors.split(",")]:
            return True
    return False


def configure_cpu_compile_env() -> dict[str, str]:
    """Set the cross-compile variables (only those unset) and add ptxas remarks.

    MUST run before the first ``import cutlass`` in the process (directly or through
    flash_attn / quack / a kernel module): CuTeDSL snapshots ``CUTE_DSL_*`` at import.
    ``CUTE_DSL_COMPILER_OPT`` keeps any user value and gets `` remarks{ptx}`` appended
    if it lacks it. Returns the variables this call changed. Warns if cutlass was
    already imported, since then the changes only reach FA4's own variables.
    """
    changed: dict[str, str] = {}
    for name, value in CPU_COMPILE_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            changed[name] = value
    current = os.environ.get(COMPILER_OPT_VAR, "")
    if not _has_ptxas_remarks(current):
        os.environ[COMPILER_OPT_VAR] = f"{current} {PTXAS_REMARKS_OPT}".strip()
        changed[COMPILER_OPT_VAR] = os.environ[COMPILER_OPT_VAR]
    if "cutlass" in sys.modules and any(k.startswith("CUTE_DSL_") for k in changed):
        warnings.warn(
            "configure_cpu_compile_env() ran after cutlass was imported; CuTeDSL will not "
            f"see {sorted(k for k in changed if k.startswith('CUTE_DSL_'))}. "
            "Call it before anything imports cutlass.",
            RuntimeWarning,
            stacklevel=2,
        )
    return changed


@dataclass(frozen=True)
class DslSettings:
    """What CuTeDSL actually uses (its import-time snapshot), not what os.environ says now."""

    arch: str
    compiler_opt: str

    @property
    def ptxas_remarks(self) -> bool:
        return _has_ptxas_remarks(self.compiler_opt)


def effective_dsl_settings() -> DslSettings:
    """Read CuTeDSL's environment snapshot (imports cutlass)."""
    from cutlass.cutlass_dsl import CuTeDSL

    envar = CuTeDSL._get_dsl().envar
    return DslSettings(arch=str(envar.arch), compiler_opt=str(envar.compiler_opt or ""))


def require_dsl_target(expected_arch: str | None = None) -> DslSettings:
    """Fail loudly if CuTeDSL does not target the expected arch (default: $CUTE_DSL_ARCH)."""
    expected = expected_arch or os.environ.get("CUTE_DSL_ARCH", CPU_COMPILE_ENV["CUTE_DSL_ARCH"])
    settings = effective_dsl_settings()
    if settings.arch != expected:
        raise RuntimeError(
            f"CuTeDSL targets {settings.arch}, expected {expected}: cutlass was imported "
            "before configure_cpu_compile_env() (CuTeDSL reads CUTE_DSL_ARCH at import). "
            f"Export CUTE_DSL_ARCH={expected} or call configure_cpu_compile_env() first."
        )
    return settings


# --------------------------------------------------------------------------------------
# Fake arguments (for kernel modules' build functions)
# --------------------------------------------------------------------------------------


def fake_tensor(
    dtype: Any,
    shape: Sequence[int | None],
    *,
    leading_dim: int | None = -1,
    align_bytes: int = 16,
) -> Any:
    """A CuTe fake tensor: no memory, symbolic sizes/strides, for compile-only builds.

    ``None`` in ``shape`` is a symbolic (runtime) size; ints are static. All strides are
    symbolic and divisible by ``align_bytes`` except ``leading_dim`` (static 1, None for
    none). This mirrors what ``to_cute_tensor(t)`` gives FA4's interface for a real
    contiguous tensor (``mark_layout_dynamic(leading_dim)``, 16-byte ``assumed_align``),
    so the kernel compiled here is the one a real call would compile.
    """
    import cutlass.cute as cute

    if dtype is None:
        return None
    ndim = len(shape)
    lead = None if leading_dim is None else leading_dim % ndim
    divisibility = max(1, align_bytes * 8 // dtype.width)
    sizes = tuple(cute.sym_int() if s is None else int(s) for s in shape)
    strides = tuple(
        1 if i == lead else cute.sym_int64(divisibility=divisibility) for i in range(ndim)
    )
    return cute.runtime.make_fake_tensor(dtype, sizes, stride=strides, assumed_align=align_bytes)


def fake_stream() -> Any:
    """The fake stream FA4 compiles with (real stream taken from the TVM FFI env at call)."""
    import cutlass.cute as cute

    return cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

BuildFn = Callable[[], tuple[Callable[..., Any], Sequence[Any]]]


@dataclass(frozen=True)
class KernelConfig:
    """One compilable kernel configuration.

    ``build()`` returns ``(compile_fn, args)``; the harness times ``compile_fn(*args)``,
    which must return CuTeDSL's compiled object (e.g. ``partial(cute.compile, options=..)``
    with the kernel object and fake arguments). Building is deferred so that listing
    configs never imports cutlass. Identity is the report key, not the build function.
    """

    kernel: str
    k_bits: int
    v_bits: int
    head_dim: int
    variant: str
    build: BuildFn = field(compare=False, repr=False)

    @property
    def key(self) -> tuple[str, int, int, int, str]:
        return (self.kernel, self.k_bits, self.v_bits, self.head_dim, self.variant)


#: Modules that contribute configs, each through ``register_configs(register)``.
#: Add a kernel module's config module here when it is written.
REGISTRY_MODULES: tuple[str, ...] = (
    "fa4_tq.kernels.fa4_reference_configs",
    "fa4_tq.kernels.prefill_sm90",
    "fa4_tq.kernels.prefill_sm80",
    "fa4_tq.kernels.decode",
    "fa4_tq.kernels.compress",
)


class _Registry:
    """Configs by key, in registration order, plus which modules were loaded or failed."""

    def __init__(self) -> None:
        self.configs: dict[tuple, KernelConfig] = {}
        self.loaded_modules: set[str] = set()
        self.import_errors: dict[str, str] = {}

    def register(self, config: KernelConfig) -> None:
        if config.key in self.configs:
            raise ValueError(f"kernel config registered twice: {config.key}")
        self.configs[config.key] = config

    def load(self, module_name: str) -> None:
        """Import a registry module once and let it register; record failures by name."""
        if module_name in self.loaded_modules or module_name in self.import_errors:
            return
        try:
            module = importlib.import_module(module_name)
            module.register_configs(self.register)
        except Exception as exc:  # recorded and reported, never silently dropped
            self.import_errors[module_name] = f"{type(exc).__name__}: {exc}"
            return
        self.loaded_modules.add(module_name)


_REGISTRY = _Registry()


def register(config: KernelConfig) -> None:
    """Add a config; registering the same key twice is an error."""
    _REGISTRY.register(config)


def registered_configs(kernels: Iterable[str] | None = None) -> list[KernelConfig]:
    """Configs from every module in REGISTRY_MODULES (imported on first use), optionally
    only those whose ``kernel`` is in ``kernels``. Does not import cutlass by itself."""
    for module_name in REGISTRY_MODULES:
        _REGISTRY.load(module_name)
    wanted = None if kernels is None else set(kernels)
    return [c for c in _REGISTRY.configs.values() if wanted is None or c.kernel in wanted]


def registry_import_errors() -> dict[str, str]:
    """``{module: error}`` for registry modules that could not be imported/registered."""
    return dict(_REGISTRY.import_errors)


# --------------------------------------------------------------------------------------
# ptxas log and launch-config parsing
# --------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
# After flattening, every ptxas line starts with "ptxas", which ends the previous one.
_USED = re.compile(r"Used (\d+) registers(?P<rest>.*?)(?= ptxas |$)")
_SMEM = re.compile(r"(\d+) bytes smem")
_PERF_LOSS = re.compile(r"Potential Performance Loss: (.*?)(?= ptxas |$)")


def _flatten(text: str) -> str:
    """Drop ANSI colours and collapse all whitespace to single spaces.

    CuTeDSL prints the ptxas log verbatim when nothing is wrong, but re-wraps it at 100
    columns (textwrap, break_long_words=False) inside the "register spills" remark, so
    line structure cannot be relied on; tokens themselves are never split.
    """
    return " ".join(_ANSI.sub("", text).split())


@dataclass(frozen=True)
class PtxasEntry:
    """ptxas -v facts for one entry function (kernel)."""

    function: str
    arch: str
    registers: int
    static_smem_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_frame_bytes: int


def parse_ptxas_log(text: str) -> list[PtxasEntry]:
    """Parse ptxas ``-v`` output (raw or as CuTeDSL renders it) into one entry per kernel.

    Layout per kernel (ptxas 12.x/13.x)::

        ptxas info    : Compiling entry function 'K' for 'sm_90a'
        ptxas info    : Function properties for K
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 168 registers, used 16 barriers[, N bytes smem][, ..cmem..]

    ptxas omits "bytes smem" when the kernel has no static shared memory, so absence
    means 0. Per-entry spills count the "Function properties" lines between this entry
    and the next; ``total_spill_bytes`` counts every such line in the log.
    """
    flat = _flatten(text)
    entries: list[PtxasEntry] = []
    starts = list(_ENTRY.finditer(flat))
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(flat)
        block = flat[start.end() : end]
        used = _USED.search(block)
        spills = _SPILLS.findall(block)
        if used is None or not spills:
            continue  # incomplete log for this entry: better no entry than a guessed one
        smem = _SMEM.search(used.group("rest"))
        entries.append(
            PtxasEntry(
                function=start.group(1),
                arch=start.group(2),
                registers=int(used.group(1)),
                static_smem_bytes=int(smem.group(1)) if smem else 0,
                spill_store_bytes=sum(int(s[1]) for s in spills),
                spill_load_bytes=sum(int(s[2]) for s in spills),
                stack_frame_bytes=max(int(s[0]) for s in spills),
            )
        )
    return entries


def total_spill_bytes(text: str) -> int | None:
    """Spill stores + loads over every function ptxas reports (entries and callees),
    or None if the log has no "Function properties" line at all."""
    spills = _SPILLS.findall(_flatten(text))
    return sum(int(s[1]) + int(s[2]) for s in spills) if spills else None


def ptxas_perf_warnings(text: str) -> list[str]:
    """ptxas "Potential Performance Loss" messages (e.g. C7512: wgmma serialized),
    without the (very long) mangled kernel name."""
    found = _PERF_LOSS.findall(_flatten(text))
    return sorted({re.sub(r" for the function '[^']*'", "", w) for w in found})


def smem_capacity_bytes(arch: str) -> int | None:
    """Max shared memory per block for an arch like "sm_90a" (cutlass's table), or None."""
    import cutlass.memory

    base = re.sub(r"[af]$", "", arch)
    try:
        return int(cutlass.memory.get_smem_capacity_in_bytes(base))
    except Exception:
        return None


#: LLVM lowering of cudaLaunchConfig_t {gridDim, blockDim, dynamicSmemBytes, stream,
#: attrs, numAttrs}; field 2 is the dynamic shared memory size.
_LAUNCH_CONFIG_TYPE = re.compile(
    r"struct<\(array<3 x i32>, array<3 x i32>, i64, ptr, ptr, i32\)>"
)


def launch_dynamic_smem_bytes(compiled: Any) -> list[int | None]:
    """Dynamic smem of every kernel launch in a compiled object's lowered host module.

    Finds each ``llvm.store`` into field 2 (``dynamicSmemBytes``) of a
    ``cudaLaunchConfig_t`` and reads the stored ``llvm.mlir.constant``; a value computed
    at run time gives None. Raises ValueError when there is no ``ir_module``.
    """
    module = getattr(compiled, "ir_module", None)
    if module is None:
        raise ValueError(f"{type(compiled).__name__} has no ir_module to read the launch from")
    from cutlass._mlir import ir

    found: list[int | None] = []
    errors: list[BaseException] = []

    def visit(op: Any) -> Any:
        try:
            if op.name == "llvm.store":
                found.extend(_smem_from_store(ir, op))
        except Exception as exc:  # exceptions raised inside walk() would be lost
            errors.append(exc)
        return ir.WalkResult.ADVANCE

    with module.context:
        module.operation.walk(visit)
    if errors:
        raise errors[0]
    return found


def _smem_from_store(ir: Any, store: Any) -> list[int | None]:
    """[] unless ``store`` writes cudaLaunchConfig_t.dynamicSmemBytes; else [bytes|None]."""
    value, address = store.operands[0], store.operands[1]
    gep = address.owner
    if getattr(gep, "name", None) != "llvm.getelementptr":
        return []
    attrs = gep.operation.attributes
    if "elem_type" not in attrs or "rawConstantIndices" not in attrs:
        return []
    if not _LAUNCH_CONFIG_TYPE.search(str(attrs["elem_type"])):
        return []
    if str(attrs["rawConstantIndices"]).replace(" ", "") != "array<i32:0,2>":
        return []
    producer = value.owner
    if getattr(producer, "name", None) != "llvm.mlir.constant":
        return [None]
    return [ir.IntegerAttr(producer.operation.attributes["value"]).value]


# --------------------------------------------------------------------------------------
# Compiling and reporting
# --------------------------------------------------------------------------------------

CSV_HEADER: tuple[str, ...] = (
    "kernel",
    "k_bits",
    "v_bits",
    "head_dim",
    "variant",
    "compile_s",
    "registers",
    "spill_bytes",
    "smem_bytes",
)


@dataclass(frozen=True)
class CompileResult:
    """One report row, plus why any number is missing (notes) and per-kernel ptxas facts."""

    kernel: str
    k_bits: int
    v_bits: int
    head_dim: int
    variant: str
    compile_s: float | None
    registers: int | None
    spill_bytes: int | None
    smem_bytes: int | None
    notes: tuple[str, ...] = ()
    error: str | None = None
    ptxas: tuple[PtxasEntry, ...] = ()
    dynamic_smem_bytes: tuple[int | None, ...] = ()

    def as_row(self) -> tuple[Any, ...]:
        """Values in CSV_HEADER order (None stays None; csv writes it as empty)."""
        compile_s = None if self.compile_s is None else round(self.compile_s, 2)
        return (
            self.kernel,
            self.k_bits,
            self.v_bits,
            self.head_dim,
            self.variant,
            compile_s,
            self.registers,
            self.spill_bytes,
            self.smem_bytes,
        )


def _summarize(
    entries: list[PtxasEntry],
    spill_total: int | None,
    dynamic: list[int | None],
    remarks_on: bool,
) -> tuple[int | None, int | None, int | None, list[str]]:
    """Fold per-kernel facts into (registers, spill_bytes, smem_bytes, notes)."""
    notes: list[str] = []
    if not entries:
        why = (
            "CuTeDSL printed no ptxas log"
            if remarks_on
            else f"ptxas remarks are off in CuTeDSL ({COMPILER_OPT_VAR} lacked "
            f"{PTXAS_REMARKS_OPT} when cutlass was imported)"
        )
        notes.append(f"registers/spills/static smem unknown: {why}")
    if len(entries) > 1 or len(dynamic) > 1:
        notes.append(
            f"{len(entries)} kernels, {len(dynamic)} launches: registers=max, "
            "spill_bytes=sum, smem_bytes=max static + max dynamic"
        )
    registers = max((e.registers for e in entries), default=None)
    spill = spill_total if entries else None
    smem = None
    if not dynamic:
        notes.append("smem unknown: no cudaLaunchConfig_t dynamicSmemBytes store in host IR")
    elif any(d is None for d in dynamic):
        notes.append("smem unknown: dynamic smem is computed at run time, not a constant")
    elif entries:
        smem = max(e.static_smem_bytes for e in entries) + max(d for d in dynamic if d is not None)
    return registers, spill, smem, notes


def compile_config(config: KernelConfig, *, echo: TextIO | None = None) -> CompileResult:
    """Build and compile one config, capturing CuTeDSL's stderr (the ptxas remarks).

    ``compile_s`` is the wall time of ``compile_fn(*args)`` alone (tracing, MLIR passes,
    ptxas; with remarks on it includes their rendering). Never raises for a failing
    kernel: the error lands in ``CompileResult.error``.
    ``echo`` receives the captured compiler output (e.g. sys.stderr for debugging).
    """
    base = dict(
        kernel=config.kernel,
        k_bits=config.k_bits,
        v_bits=config.v_bits,
        head_dim=config.head_dim,
        variant=config.variant,
    )
    settings = require_dsl_target()
    captured = io.StringIO()
    compile_s = None
    try:
        compile_fn, args = config.build()
        with contextlib.redirect_stderr(captured):
            start = time.perf_counter()
            compiled = compile_fn(*args)
            compile_s = time.perf_counter() - start
    except Exception as exc:
        if echo is not None:
            echo.write(captured.getvalue())
        return CompileResult(
            **base,
            compile_s=compile_s,
            registers=None,
            spill_bytes=None,
            smem_bytes=None,
            notes=("compile failed",),
            error="".join(traceback.format_exception_only(type(exc), exc)).strip(),
        )
    if echo is not None:
        echo.write(captured.getvalue())
    ir_notes: list[str] = []
    try:
        dynamic = launch_dynamic_smem_bytes(compiled)
    except Exception as exc:  # the kernel compiled; only the smem number is lost
        dynamic = []
        ir_notes.append(f"host IR unreadable ({type(exc).__name__}: {exc})")
    log = captured.getvalue()
    entries = parse_ptxas_log(log)
    registers, spill, smem, notes = _summarize(
        entries, total_spill_bytes(log), dynamic, settings.ptxas_remarks
    )
    notes = ir_notes + notes
    notes += [f"ptxas: Potential Performance Loss: {w}" for w in ptxas_perf_warnings(log)]
    capacity = smem_capacity_bytes(settings.arch)
    if smem is not None and capacity is not None and smem > capacity:
        notes.append(f"smem {smem} B exceeds the {settings.arch} limit of {capacity} B per block")
    return CompileResult(
        **base,
        compile_s=compile_s,
        registers=registers,
        spill_bytes=spill,
        smem_bytes=smem,
        notes=tuple(notes),
        ptxas=tuple(entries),
        dynamic_smem_bytes=tuple(dynamic),
    )


def compile_report(
    configs: Iterable[KernelConfig] | None = None, *, echo: TextIO | None = None
) -> list[CompileResult]:
    """Compile each config (default: all registered) for sm_90a; one CompileResult each."""
    configure_cpu_compile_env()
    configs = registered_configs() if configs is None else list(configs)
    return [compile_config(c, echo=echo) for c in configs]


def write_csv(results: Iterable[CompileResult], out: TextIO) -> None:
    """CSV with CSV_HEADER; missing numbers are empty cells."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in results:
        writer.writerow(r.as_row())


def format_table(results: Sequence[CompileResult]) -> str:
    """Fixed-width table of the CSV columns, then notes/errors, for humans."""
    rows = [CSV_HEADER] + [
        tuple("None" if v is None else str(v) for v in r.as_row()) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(CSV_HEADER))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    for r in results:
        label = f"{r.kernel}/{r.variant}/D{r.head_dim}/K{r.k_bits}V{r.v_bits}"
        lines += [f"note  {label}: {n}" for n in r.notes]
        if r.error:
            lines.append(f"ERROR {label}: {r.error}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fa4_tq.kernels.compile",
        description="Compile registered CuTeDSL kernel configs for sm_90a (no GPU needed) "
        "and report compile time, registers, spills and shared memory.",
    )
    parser.add_argument("--kernels", help="comma-separated kernel names (default: all)")
    parser.add_argument("--csv", help="also write the report as CSV to this path")
    parser.add_argument("--verbose", action="store_true", help="echo compiler output")
    ns = parser.parse_args(argv)

    configure_cpu_compile_env()  # before anything below imports cutlass
    kernels = ns.kernels.split(",") if ns.kernels else None
    configs = registered_configs(kernels)
    for module_name, err in registry_import_errors().items():
        print(f"note  registry module {module_name} skipped: {err}", file=sys.stderr)
    if not configs:
        print(f"no registered configs for kernels={kernels}", file=sys.stderr)
        return 1
    results = compile_report(configs, echo=sys.stderr if ns.verbose else None)
    print(format_table(results))
    if ns.csv:
        with open(ns.csv, "w", newline="") as f:
            write_csv(results, f)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
