"""Timing: medians of CUDA-event (or CPU wall-clock) samples, warm-up excluded.

Method, per implementation and shape:
  1. The first call is timed separately as ``compile_s`` (JIT compile + first run); it is
     never part of the statistics.
  2. Warm-up: every input set is called at least once (at least ``warmup`` calls).
  3. Samples. ``graph`` mode (CUDA, default): the calls of one sample are captured once in
     a CUDA graph (cycling through the input sets) and the graph is replayed ``reps`` times,
     each replay bracketed by CUDA events; a sample is replay time / calls per replay. This
     removes Python launch overhead, which would otherwise dominate microsecond-scale decode
     kernels, and is how serving engines run decode. If capture fails (e.g. the op syncs
     with the host) the measurement falls back to ``eager`` and says so in ``note``.
     A call that syncs with the host (detected with torch's sync debug mode before any
     capture) cannot be captured and is timed eagerly, with a note. After capture the
     last call's floating-point outputs are poisoned with NaN and one replay must rewrite
     them, which proves the kernels are in the graph (``_verify_replay``).
     ``eager`` mode: every call is bracketed by CUDA events (host overhead included when
     the GPU outruns the host). CPU: ``time.perf_counter`` around each call.
  4. The reported time is the median sample.
Several input sets (distinct tensors, same shapes) are rotated so that a small working set
is not served from L2 on every call (``num_input_sets``). Every timed call or replay sits in
an NVTX range named by the caller (``tqkv.prefill K4V4 ...``) so that ncu can filter on it;
warm-up and compile calls are outside the ranges.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

TIMING_MODES = ("graph", "eager")
# Rotate enough input sets that their total footprint is several times the L2 size.
L2_FOOTPRINT_FACTOR = 4
MAX_INPUT_SETS = 16
DEFAULT_L2_BYTES = 50 * 2**20  # H100 SXM
# A graph replay should last at least this long so event resolution (~0.5 us) is negligible.
MIN_REPLAY_MS = 0.5
MAX_CALLS_PER_REPLAY = 256


@dataclass
class Measurement:
    median_ms: float
    min_ms: float
    max_ms: float
    samples: list[float] = field(repr=False)
    method: str  # "cuda-graph", "cuda-events", "cpu-wall"
    compile_s: float
    calls_per_sample: int
    input_sets: int
    note: str = ""
    host_sync: bool = False  # the call syncs with the host, so it was timed eagerly


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES)


def num_input_sets(bytes_per_set: int, device: torch.device, *, minimum: int = 1) -> int:
    """How many distinct input sets to rotate so the working set exceeds L2 several times."""
    if device.type != "cuda":
        return max(1, minimum)
    need = math.ceil(L2_FOOTPRINT_FACTOR * l2_bytes(device) / max(1, bytes_per_set))
    return max(minimum, min(MAX_INPUT_SETS, need))


class NvtxRanges:
    """NVTX push/pop through the ``nvtx`` package (a dependency of fa4_tq). On the CPU there
    is nothing for a profiler to see, so ranges are a no-op there."""

    def __init__(self, enabled: bool):
        self._nvtx = None
        if enabled:
            try:
                import nvtx
            except ImportError as e:  # pragma: no cover - nvtx is a declared dependency
                raise RuntimeError("the `nvtx` package is required for GPU timing (ncu filters "
                                   "on NVTX ranges): pip install nvtx") from e
            self._nvtx = nvtx

    @contextlib.contextmanager
    def range(self, name: str):
        if self._nvtx is None:
            yield
            return
        self._nvtx.push_range(name)
        try:
            yield
        finally:
            self._nvtx.pop_range()


class Timer:
    def __init__(self, device: torch.device, *, mode: str = "graph", reps: int = 10,
                 warmup: int = 3):
        if mode not in TIMING_MODES:
            raise ValueError(f"timing mode must be one of {TIMING_MODES}, got {mode!r}")
        if reps < 1:
            raise ValueError(f"reps must be >= 1, got {reps}")
        self.device = torch.device(device)
        self.mode = mode if self.device.type == "cuda" else "eager"
        self.reps = reps
        self.warmup = max(0, warmup)
        self.nvtx = NvtxRanges(self.device.type == "cuda")

    # ------------------------------------------------------------------ helpers
    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _first_call(self, call: Callable[[int], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        call(0)
        self.sync()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ main entry
    def measure(self, call: Callable[[int], Any], num_sets: int, name: str) -> Measurement:
        """Time ``call(i)`` (i = input set index in [0, num_sets)).

        Exceptions from the first call (NotImplementedError for a missing kernel, validation
        errors) propagate to the caller before anything is timed."""
        num_sets = max(1, int(num_sets))
        compile_s = self._first_call(call)
        for i in range(max(self.warmup, num_sets)):
            call(i % num_sets)
        self.sync()
        if self.device.type != "cuda":
            return self._cpu(call, num_sets, compile_s)
        if self.mode == "graph":
            blocker = self._host_sync_in(call)
            if blocker is not None:
                m = self._eager(call, num_sets, name, compile_s)
                m.note = f"not graph-capturable, the call syncs with the host ({blocker}); eager timing"
                m.host_sync = True
                return m
            try:
                return self._graph(call, num_sets, name, compile_s)
            except Exception as e:  # noqa: BLE001 - reported in the row, then eager timing
                self._recover_after_capture()
                m = self._eager(call, num_sets, name, compile_s)
                m.note = f"graph capture failed ({_one_line(e)}); eager timing"
                return m
        return self._eager(call, num_sets, name, compile_s)

    def _host_sync_in(self, call) -> str | None:
        """Run one call with torch's sync debug mode set to "error": a torch-level host sync
        (.item(), bool(tensor), .tolist(), .cpu()) would make graph capture fail, so it is
        detected here instead of by a failed capture. Returns the error text or None."""
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            call(0)
        except RuntimeError as e:
            if "synchroniz" not in str(e).lower():
                raise
            return _one_line(e)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        self.sync()
        return None

    # ------------------------------------------------------------------ CPU
    def _cpu(self, call, num_sets, compile_s) -> Measurement:
        samples = []
        for r in range(self.reps):
            t0 = time.perf_counter()
            call(r % num_sets)
            samples.append((time.perf_counter() - t0) * 1e3)
        return _summary(samples, "cpu-wall", compile_s, 1, num_sets)

    # ------------------------------------------------------------------ CUDA eager
    def _eager(self, call, num_sets, name, compile_s) -> Measurement:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for r in range(self.reps):
            with self.nvtx.range(name):
                starts[r].record()
                call(r % num_sets)
                ends[r].record()
        self.sync()
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return _summary(samples, "cuda-events", compile_s, 1, num_sets)

    # ------------------------------------------------------------------ CUDA graph
    def _calls_per_replay(self, call, num_sets) -> int:
        """Enough calls per replay that one replay lasts >= MIN_REPLAY_MS (a multiple of
        num_sets, so every set is used equally)."""
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(num_sets):
            call(i)
        end.record()
        self.sync()
        per_call = max(start.elapsed_time(end) / num_sets, 1e-4)
        rounds = math.ceil(MIN_REPLAY_MS / (per_call * num_sets))
        return max(num_sets, min(MAX_CALLS_PER_REPLAY, rounds * num_sets))

    def _graph(self, call, num_sets, name, compile_s) -> Measurement:
        calls = self._calls_per_replay(call, num_sets)
        graph = torch.cuda.CUDAGraph()
        # Capture on a side stream after a warm call there (the pattern torch documents).
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            call(0)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.sync()
        with torch.cuda.graph(graph):
            for i in range(calls):
                last = call(i % num_sets)
        _verify_replay(graph, last)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for r in range(self.reps):
            with self.nvtx.range(name):
                starts[r].record()
                graph.replay()
                ends[r].record()
        self.sync()
        samples = [s.elapsed_time(e) / calls for s, e in zip(starts, ends)]
        del graph
        return _summary(samples, "cuda-graph", compile_s, calls, num_sets)

    def _recover_after_capture(self):
        """After a failed capture: make sure the stream is usable again (a sticky CUDA error
        surfaces here and is raised, which aborts the remaining rows)."""
        self.sync()


def _float_outputs(result) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _verify_replay(graph, last_result) -> None:
    """Make sure the graph really contains the call's kernels: a kernel launched on another
    stream during capture would run once, eagerly, and be missing from the graph, so the
    timing would be of an empty graph. The last captured call's outputs are overwritten
    with NaN and must be rewritten by a replay. (Calls without a floating-point output,
    such as compress_store, cannot be verified this way.) The replay is also the untimed
    first one, which uploads the graph."""
    outs = _float_outputs(last_result)
    for t in outs:
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for t in outs:
        if bool(torch.isnan(t).any()):
            raise RuntimeError("a graph replay left NaN in the call's output: its kernels were "
                               "not captured (launched on another stream?) or do not write "
                               "every output element")


def _summary(samples, method, compile_s, calls, num_sets) -> Measurement:
    return Measurement(median_ms=statistics.median(samples), min_ms=min(samples),
                       max_ms=max(samples), samples=samples, method=method,
                       compile_s=compile_s, calls_per_sample=calls, input_sets=num_sets)


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    first = text[0] if text else type(e).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def time_cpu_once(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call (setup work such as building a cache)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
