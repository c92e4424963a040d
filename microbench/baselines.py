"""Everything that gets timed, the inputs it runs on, and the float64 correctness check.

Implementations (``impl`` column of a row):
  tqkv      the op under test, through fa4_tq's API (``torch.ops.tqkv.*``)
  fa4       FlashAttention-4 on bf16/fp16 K/V of the same shapes (``flash_attn_func``,
            contiguous [B, S, H, D]: the fastest FA4 layout, no paging)
  sdpa      ``torch.nn.functional.scaled_dot_product_attention`` (enable_gqa) on the same
            bf16/fp16 K/V, layout [B, H, S, D]
  unfused   prefill as ``tqkv.dequantize`` (gather + decode + un-rotate to bf16) followed by
            FA4 varlen attention: what fusing the dequantization into attention saves
  *-kernel  (tqkv-kernel, unfused-kernel, tqkv.compress_store-kernel, ...) the same kernels
            called through their entry point in fa4_tq.ops.CUDA_KERNELS, without torch.ops
            dispatch and validation: added when the op syncs with the host and therefore
            cannot be CUDA-graph timed like the baselines (see kernel_function)
  copy      device-to-device copy of 1 GiB: the bandwidth ceiling
  gemm      bf16 8192^3 GEMM: the tensor-core throughput ceiling

Inputs: random data only (never zeros). A paged cache pool holds several input sets (the
same tokens in distinct blocks, reached through per-set block tables with shuffled block
ids), so that rotating sets defeats L2 without compressing the data more than once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .shapes import Case, KVConfig
from fa4_tq.testing import lse_tolerance

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_BUILD_MODES = ("auto", "kernel", "reference", "reference-cpu")
# Elements per chunk when the torch reference quantizes on the device: it materializes
# [tokens, Hkv, D, 2^bits - 1] comparisons, 2 GiB at this size.
_REFERENCE_CHUNK_ELEMENTS = 2**31
# float64 scores per chunk of the dense reference attention (512 MiB).
_CHECK_CHUNK_ELEMENTS = 2**26
# Pass thresholds of the correctness check (bf16/fp16 outputs).
CHECK_REL_TOL = 1e-2
CHECK_LSE_TOL = 1e-2


class Unavailable(RuntimeError):
    """A baseline that cannot run here (e.g. FA4 without CUDA): reported, never faked."""


def torch_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[name]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------- FA4 import
def fa4_functions(device: torch.device):
    """(flash_attn_func, flash_attn_varlen_func) from FA4, or raise Unavailable."""
    if device.type != "cuda":
        raise Unavailable("FA4 needs a CUDA GPU")
    try:
        from flash_attn.cute.interface import flash_attn_func, flash_attn_varlen_func
    except Exception as e:  # noqa: BLE001 - any import failure means "no FA4 here"
        raise Unavailable(f"flash_attn.cute could not be imported ({type(e).__name__}: {e})") from e
    return flash_attn_func, flash_attn_varlen_func


def _fa4_window(case: Case):
    return (None if case.window_left < 0 else case.window_left,
            None if case.window_right < 0 else case.window_right)


# --------------------------------------------------------------------------- paged inputs
@dataclass
class PagedInputs:
    """A cache pool with ``num_sets`` copies of the same compressed tokens, per-set block
    tables and per-set random queries (or, for compress, per-set new K/V + slot mappings)."""

    cache: object  # fa4_tq.TQCache
    block_tables: list[torch.Tensor]
    seqused_k: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    queries: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    slot_mappings: list[torch.Tensor] = field(default_factory=list)
    built_by: str = ""

    @property
    def num_sets(self) -> int:
        return len(self.block_tables)


def _slot_mapping(block_table: torch.Tensor, seqlen: int, block_size: int) -> torch.Tensor:
    """int64 slots of tokens 0..seqlen-1 of every sequence of ``block_table`` (flattened)."""
    t = torch.arange(seqlen, device=block_table.device)
    blocks = block_table[:, t // block_size].to(torch.int64)  # [B, seqlen]
    return (blocks * block_size + t % block_size).reshape(-1)


def _reference_compress(key, value, cache, slot_mapping, *, on_cpu: bool) -> None:
    """fa4_tq's reference quantizer (torch ops), in chunks to bound its temporaries; on the
    cache's device, or on the CPU with the results copied to the device."""
    from fa4_tq import reference

    c = cache.codec
    hkv, d = key.shape[1], key.shape[2]
    levels = 2 ** max(cache.layout.k_bits, cache.layout.v_bits) - 1
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // (hkv * d * levels))
    if on_cpu:
        tensors = [t.cpu() for t in cache.tensors()]
        codec = [t.cpu() for t in (c.k_signs, c.v_signs, c.k_codebook, c.v_codebook)]
        key, value, slot_mapping = key.cpu(), value.cpu(), slot_mapping.cpu()
    else:
        tensors = list(cache.tensors())
        codec = [c.k_signs, c.v_signs, c.k_codebook, c.v_codebook]
    for s in range(0, key.shape[0], chunk):
        reference.compress_store(key[s:s + chunk], value[s:s + chunk], *tensors,
                                 slot_mapping[s:s + chunk], *codec)
    if on_cpu:
        for dst, src in zip(cache.tensors(), tensors):
            dst.copy_(src)


def compress_into(cache, key, value, slot_mapping, mode: str) -> str:
    """Fill the cache with compressed key/value; return how (reported in every row)."""
    import fa4_tq

    if mode not in CACHE_BUILD_MODES:
        raise ValueError(f"cache build mode must be one of {CACHE_BUILD_MODES}, got {mode!r}")
    dev = cache.k_cache.device
    if mode in ("auto", "kernel"):
        if dev.type != "cuda":
            fa4_tq.compress_store(cache, key, value, slot_mapping)  # the CPU op is the reference
            return "tqkv.compress_store (CPU reference op)"
        try:
            fa4_tq.compress_store(cache, key, value, slot_mapping)
            return "tqkv.compress_store CUDA kernel"
        except Exception as e:  # noqa: BLE001 - "auto" reports the reason in every row
            if mode == "kernel":
                raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            torch.cuda.synchronize(dev)  # a sticky CUDA error must not be papered over
        _reference_compress(key, value, cache, slot_mapping, on_cpu=False)
        return (f"fa4_tq reference quantizer run with torch ops on {dev.type}, because the "
                f"compress_store kernel failed ({reason})")
    if mode == "reference":
        _reference_compress(key, value, cache, slot_mapping, on_cpu=False)
        return f"fa4_tq reference quantizer run with torch ops on {dev.type}"
    _reference_compress(key, value, cache, slot_mapping, on_cpu=True)
    return "fa4_tq reference quantizer on the CPU, copied to the device"


def build_paged_inputs(case: Case, kv: KVConfig, num_sets: int, device: torch.device, *,
                       seed: int, cache_build: str = "auto") -> PagedInputs:
    """Random K/V compressed once into a pool, replicated into ``num_sets`` block sets.

    prefill/decode: per-set random queries. compress: per-set fresh random K/V and the
    slot mappings of that set's blocks (the pool is pre-filled, so dequantize works too).
    Rows of the pool no sequence uses hold random bytes and finite norms: a kernel must
    never read them, and if it does the check fails instead of reading zeros."""
    from fa4_tq import TQCache

    device = torch.device(device)
    gen = _generator(device, seed)
    cpu_gen = torch.Generator().manual_seed(seed)
    dt = torch_dtype(case.dtype)
    b, seqlen, bs = case.batch, case.seqlen_k, case.block_size
    hkv, d = case.num_kv_heads, case.head_dim
    nblk = math.ceil(seqlen / bs)
    num_blocks = num_sets * b * nblk + 1
    cache = TQCache.allocate(num_blocks, bs, hkv, d, kv.k_bits, kv.v_bits, device=device,
                             seed=seed)
    cache.k_cache.random_(0, 256, generator=gen)
    cache.v_cache.random_(0, 256, generator=gen)
    cache.k_norm.uniform_(0.5, 2.0, generator=gen)
    cache.v_norm.uniform_(0.5, 2.0, generator=gen)
    perm = torch.randperm(num_blocks, generator=cpu_gen)[: num_sets * b * nblk]
    tables = [t.reshape(b, nblk).to(device=device, dtype=torch.int32)
              for t in perm.reshape(num_sets, b * nblk)]

    key = torch.randn(b * seqlen, hkv, d, generator=gen, device=device).to(dt)
    value = torch.randn(b * seqlen, hkv, d, generator=gen, device=device).to(dt)
    built_by = compress_into(cache, key, value, _slot_mapping(tables[0], seqlen, bs),
                             cache_build)
    src = tables[0].reshape(-1).to(torch.int64)
    for t in tables[1:]:
        dst = t.reshape(-1).to(torch.int64)
        for pool in cache.tensors():
            pool[dst] = pool[src]

    lens = torch.full((b,), seqlen, dtype=torch.int32, device=device)
    cu_k = torch.arange(b + 1, dtype=torch.int32, device=device) * seqlen
    cu_q = torch.arange(b + 1, dtype=torch.int32, device=device) * case.seqlen_q
    inputs = PagedInputs(cache, tables, lens, cu_q, cu_k, built_by=built_by)
    hq, sq = case.num_heads, case.seqlen_q
    for i in range(num_sets):
        if case.op == "prefill":
            inputs.queries.append(torch.randn(b * sq, hq, d, generator=gen, device=device).to(dt))
        elif case.op == "decode":
            inputs.queries.append(torch.randn(b, sq, hq, d, generator=gen, device=device).to(dt))
        else:
            inputs.keys.append(key if i == 0 else
                               torch.randn(b * seqlen, hkv, d, generator=gen, device=device).to(dt))
            inputs.values.append(value if i == 0 else
                                 torch.randn(b * seqlen, hkv, d, generator=gen, device=device).to(dt))
            inputs.slot_mappings.append(_slot_mapping(tables[i], seqlen, bs))
    return inputs


@dataclass
class DenseInputs:
    """Per-set bf16/fp16 q, k, v for FA4 ([B, S, H, D]) or SDPA ([B, H, S, D])."""

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor | None = None  # SDPA only: bool [Sq, Sk], True = visible


def build_dense_inputs(case: Case, num_sets: int, device: torch.device, *, seed: int,
                       layout: str) -> DenseInputs:
    if layout not in ("bshd", "bhsd"):
        raise ValueError(f"layout must be 'bshd' or 'bhsd', got {layout!r}")
    gen = _generator(torch.device(device), seed + 1)
    dt = torch_dtype(case.dtype)
    b, sq, sk = case.batch, case.seqlen_q, case.seqlen_k
    hq, hkv, d = case.num_heads, case.num_kv_heads, case.head_dim

    def rand(s, h):
        shape = (b, s, h, d) if layout == "bshd" else (b, h, s, d)
        return torch.randn(shape, generator=gen, device=device).to(dt)

    out = DenseInputs([], [], [])
    for _ in range(num_sets):
        out.q.append(rand(sq, hq))
        out.k.append(rand(sk, hkv))
        out.v.append(rand(sk, hkv))
    return out


# --------------------------------------------------------------------------- callables
def tq_prefill_call(case: Case, inp: PagedInputs, backend: str = "auto") -> Callable[[int], object]:
    import fa4_tq

    def call(i: int):
        return fa4_tq.prefill(inp.queries[i], inp.cache, inp.cu_seqlens_q, inp.block_tables[i],
                              inp.seqused_k, case.seqlen_q, causal=case.causal,
                              window=case.window, backend=backend)
    return call


def tq_decode_call(case: Case, inp: PagedInputs, num_splits: int = 0) -> Callable[[int], object]:
    import fa4_tq

    def call(i: int):
        return fa4_tq.decode(inp.queries[i], inp.cache, inp.block_tables[i], inp.seqused_k,
                             causal=case.causal, window=case.window, num_splits=num_splits)
    return call


def tq_compress_call(case: Case, inp: PagedInputs) -> Callable[[int], object]:
    import fa4_tq

    def call(i: int):
        fa4_tq.compress_store(inp.cache, inp.keys[i], inp.values[i], inp.slot_mappings[i])
    return call


def tq_dequantize_call(case: Case, inp: PagedInputs) -> Callable[[int], object]:
    import fa4_tq

    total = case.batch * case.seqlen_k
    dt = torch_dtype(case.dtype)

    def call(i: int):
        return fa4_tq.dequantize(inp.cache, inp.block_tables[i], inp.cu_seqlens_k, total,
                                 unrotate=True, dtype=dt)
    return call


def kernel_function(op: str):
    """The CUDA kernel entry point registered for ``tqkv.<op>`` (fa4_tq.ops.CUDA_KERNELS),
    called directly: the same kernels as the op minus torch.ops dispatch and argument
    validation. Used for "-kernel" rows when the op itself cannot be CUDA-graph captured
    (validation that syncs with the host), so kernel time can still be compared with
    graph-timed baselines. Raises NotImplementedError when the kernel module is missing."""
    from fa4_tq import ops

    return ops._cuda_impl(op)


def tq_kernel_call(op: str, case: Case, inp: PagedInputs, *, backend: str = "auto",
                   num_splits: int = 0, decode_config: dict | None = None
                   ) -> Callable[[int], object]:
    """Direct-kernel counterpart of tq_{prefill,decode,compress,dequantize}_call, with the
    arguments the op would pass (fa4_tq/ops.py order; rotations on, default scale).
    ``decode_config``: DecodeConfig field overrides of the shipped tuning, plus
    ``combine_pdl`` (decode_cuda's); an unknown field raises TypeError here, before any
    launch."""
    from fa4_tq.reference import default_softmax_scale

    fn = kernel_function(op)
    c = inp.cache.codec
    cache = inp.cache.tensors()
    scale = default_softmax_scale(case.head_dim)
    dt = torch_dtype(case.dtype)
    total_k = case.batch * case.seqlen_k
    if op == "prefill":
        return lambda i: fn(inp.queries[i], *cache, inp.cu_seqlens_q, inp.block_tables[i],
                            inp.seqused_k, c.k_codebook, c.v_codebook, c.k_signs, c.v_signs,
                            case.seqlen_q, scale, case.causal, case.window_left,
                            case.window_right, True, True, backend=backend)
    if op == "decode":
        knobs = dict(decode_config or {})
        pdl = knobs.pop("combine_pdl", None)
        cfg = None
        if knobs:
            from fa4_tq.codec import codebook_bits
            from fa4_tq.kernels.decode import tuned_config
            cfg = tuned_config(codebook_bits(c.k_codebook), codebook_bits(c.v_codebook),
                               case.head_dim, case.num_heads // case.num_kv_heads,
                               case.seqlen_q, "bfloat16" if dt == torch.bfloat16 else
                               "float16", **knobs)
        return lambda i: fn(inp.queries[i], *cache, inp.block_tables[i], inp.seqused_k,
                            c.k_codebook, c.v_codebook, c.k_signs, c.v_signs, scale,
                            case.causal, case.window_left, case.window_right, True, True,
                            num_splits=num_splits, config=cfg, combine_pdl=pdl)
    if op == "compress_store":
        return lambda i: fn(inp.keys[i], inp.values[i], *cache, inp.slot_mappings[i],
                            c.k_signs, c.v_signs, c.k_codebook, c.v_codebook)
    if op == "dequantize":
        return lambda i: fn(*cache, inp.block_tables[i], inp.cu_seqlens_k, c.k_codebook,
                            c.v_codebook, c.k_signs, c.v_signs, True, total_k, dt)
    raise ValueError(f"no direct kernel call for op {op!r}")


def fa4_call(case: Case, dense: DenseInputs, device: torch.device) -> Callable[[int], object]:
    flash_attn_func, _ = fa4_functions(device)
    window = _fa4_window(case)

    def call(i: int):
        return flash_attn_func(dense.q[i], dense.k[i], dense.v[i], causal=case.causal,
                               window_size=window, return_lse=True)
    return call


def sdpa_mask(case: Case, device) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) giving fa4_tq's bottom-right semantics with SDPA, whose
    is_causal is top-left aligned: an explicit mask unless the two agree."""
    from fa4_tq.reference import visible_mask

    full = case.window == (-1, -1)
    if full and not case.causal:
        return None, False
    if full and case.seqlen_q == case.seqlen_k:
        return None, True
    if full and case.seqlen_q == 1:
        return None, False  # one query at the last position sees every key
    mask = visible_mask(case.seqlen_q, case.seqlen_k, case.causal, case.window_left,
                        case.window_right, device=device)
    return mask, False


def sdpa_call(case: Case, dense: DenseInputs, device) -> Callable[[int], object]:
    import torch.nn.functional as F

    mask, is_causal = sdpa_mask(case, device)

    def call(i: int):
        return F.scaled_dot_product_attention(dense.q[i], dense.k[i], dense.v[i],
                                              attn_mask=mask, is_causal=is_causal,
                                              enable_gqa=True)
    return call


def unfused_prefill_call(case: Case, inp: PagedInputs, device, *,
                         direct: bool = False) -> Callable[[int], object]:
    """tqkv.dequantize (gather + decode + un-rotate) then FA4 varlen on the bf16 result
    (``direct``: the dequantize kernel function instead of the op, see kernel_function)."""
    import fa4_tq

    _, flash_attn_varlen_func = fa4_functions(device)
    total_k = case.batch * case.seqlen_k
    dt = torch_dtype(case.dtype)
    window = _fa4_window(case)
    dequantize = tq_kernel_call("dequantize", case, inp) if direct else (
        lambda i: fa4_tq.dequantize(inp.cache, inp.block_tables[i], inp.cu_seqlens_k, total_k,
                                    unrotate=True, dtype=dt))

    def call(i: int):
        k, v = dequantize(i)
        return flash_attn_varlen_func(inp.queries[i], k, v, cu_seqlens_q=inp.cu_seqlens_q,
                                      cu_seqlens_k=inp.cu_seqlens_k,
                                      max_seqlen_q=case.seqlen_q, max_seqlen_k=case.seqlen_k,
                                      causal=case.causal, window_size=window,
                                      return_lse=True)
    return call


# --------------------------------------------------------------------------- ceilings
def copy_ceiling(device: torch.device, dtype: torch.dtype, *, seed: int):
    """(call, bytes moved per call): a device-to-device copy, read + write counted."""
    n = (2**30 if device.type == "cuda" else 2**24) // 2
    gen = _generator(device, seed + 2)
    src = torch.randn(n, generator=gen, device=device).to(dtype)
    dst = torch.empty_like(src)
    return (lambda i: dst.copy_(src)), 2 * src.numel() * src.element_size()


def gemm_ceiling(device: torch.device, dtype: torch.dtype, *, seed: int):
    """(call, FLOPs per call): a square GEMM, 8192^3 on the GPU (256^3 on the CPU)."""
    n = 8192 if device.type == "cuda" else 256
    gen = _generator(device, seed + 3)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    return (lambda i: torch.mm(a, b)), 2 * n**3


# --------------------------------------------------------------------------- checks
@dataclass
class CheckResult:
    rel_err: float  # ‖out − ref‖ / ‖ref‖ (inf if out has NaN/inf)
    lse_err: float | None  # max |lse − ref| over rows that see a key (None: not checked)
    ok: bool
    what: str  # what the output was compared against

    def summary(self) -> str:
        s = f"rel_err={self.rel_err:.2e}"
        if self.lse_err is not None:
            s += f" lse_err={self.lse_err:.2e}"
        return s


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; any NaN/inf in ``out`` gives inf (never passes)."""
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return math.inf
    den = float(r.norm())
    return float((o - r).norm()) / (den if den > 0 else 1.0)


def _lse_error(lse: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs LSE difference where the reference is finite; rows that see no key must be
    -inf in both (a mismatch there, or any NaN, gives inf)."""
    lse, ref = lse.double(), ref.double()
    if bool(torch.isnan(lse).any()):
        return math.inf
    fin = torch.isfinite(ref)
    if not bool(torch.equal(torch.isneginf(lse), ~fin)):
        return math.inf
    if not bool(fin.any()):
        return 0.0
    return float((lse[fin] - ref[fin]).abs().max())


def dense_attention_f64(q, k, v, scale: float, mask: torch.Tensor):
    """float64 attention, GQA by grouping (no K/V repeat), in query chunks.

    q [Sq, Hq, D], k/v [Sk, Hkv, D], mask bool [Sq, Sk] -> (out [Sq, Hq, D], lse [Hq, Sq]);
    rows that see no key give out 0 and lse -inf."""
    sq, hq, d = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    g = hq // hkv
    q, k, v = q.double(), k.double(), v.double()
    qg = q.reshape(sq, hkv, g, d)
    out = torch.empty(sq, hq, d, dtype=torch.float64, device=q.device)
    lse = torch.empty(hq, sq, dtype=torch.float64, device=q.device)
    chunk = max(1, _CHECK_CHUNK_ELEMENTS // max(1, hq * sk))
    for r0 in range(0, sq, chunk):
        r1 = min(sq, r0 + chunk)
        s = torch.einsum("qhgd,khd->hgqk", qg[r0:r1], k) * scale
        s.masked_fill_(~mask[r0:r1], float("-inf"))
        m = torch.logsumexp(s, dim=-1)  # [Hkv, g, c]
        p = torch.exp(s - torch.where(torch.isfinite(m), m, 0.0).unsqueeze(-1))
        out[r0:r1] = torch.einsum("hgqk,khd->qhgd", p, v).reshape(r1 - r0, hq, d)
        lse[:, r0:r1] = m.reshape(hq, r1 - r0)
    return out, lse


def _dequantized_original_space(cache, bt_row, seqlen):
    """(K̂, V̂) [seqlen, Hkv, D] float64 in the original (un-rotated) space."""
    from fa4_tq.codec import unrotate
    from fa4_tq.reference import dequantize_sequence, gather_sequence

    c = cache.codec
    k = dequantize_sequence(gather_sequence(cache.k_cache, bt_row, seqlen),
                            gather_sequence(cache.k_norm, bt_row, seqlen), c.k_codebook,
                            torch.float64)
    v = dequantize_sequence(gather_sequence(cache.v_cache, bt_row, seqlen),
                            gather_sequence(cache.v_norm, bt_row, seqlen), c.v_codebook,
                            torch.float64)
    return unrotate(k, c.k_signs.double()), unrotate(v, c.v_signs.double())


def check_attention(case: Case, inp: PagedInputs, set_index: int, out, lse) -> CheckResult:
    """Compare an op's (out, lse) on input set ``set_index`` with float64 dense attention
    of the original-space query over the dequantized, un-rotated K/V of the same packed
    cache (rotation is orthogonal, so this equals the rotated-space computation)."""
    from fa4_tq.reference import default_softmax_scale, visible_mask

    scale = default_softmax_scale(case.head_dim)
    q = inp.queries[set_index]
    bt = inp.block_tables[set_index]
    mask = visible_mask(case.seqlen_q, case.seqlen_k, case.causal, case.window_left,
                        case.window_right, device=q.device)
    ref_out = torch.empty(out.shape, dtype=torch.float64, device=q.device)
    ref_lse = torch.empty(lse.shape, dtype=torch.float64, device=q.device)
    for b in range(case.batch):
        k, v = _dequantized_original_space(inp.cache, bt[b], case.seqlen_k)
        if case.op == "prefill":
            rows = slice(b * case.seqlen_q, (b + 1) * case.seqlen_q)
            o, l = dense_attention_f64(q[rows], k, v, scale, mask)
            ref_out[rows] = o
            ref_lse[:, rows] = l
        else:
            o, l = dense_attention_f64(q[b], k, v, scale, mask)
            ref_out[b] = o
            ref_lse[b] = l
    err = rel_error(out, ref_out)
    lse_err = _lse_error(lse, ref_lse)
    # bf16 QK operands: max(1e-2, 2^-8 max|LSE|) (fa4_tq.testing.lse_tolerance, the bound
    # the decode checks use); large-logit rows of long causal prefills measured ~1e-2
    ok = err <= CHECK_REL_TOL and lse_err <= lse_tolerance(ref_lse, CHECK_LSE_TOL)
    return CheckResult(err, lse_err, ok, "float64 dense attention over the same packed cache")


def check_unfused(case: Case, inp: PagedInputs, set_index: int, result) -> CheckResult:
    out, lse = result
    return check_attention(case, inp, set_index, out, lse)


def check_compress(case: Case, inp: PagedInputs, set_index: int) -> CheckResult:
    """Codes and norms written for input set ``set_index`` vs fa4_tq's reference quantizer
    on the same K/V (the format requires bit-exact agreement): rel_err is the fraction of
    mismatching bytes (codes and norms together)."""
    from fa4_tq import TQCache

    cache = inp.cache
    lay = cache.layout
    slots = inp.slot_mappings[set_index]
    key, value = inp.keys[set_index], inp.values[set_index]
    # the reference writes into a fresh pool of the same geometry
    ref = TQCache.allocate(lay.num_blocks, lay.block_size, lay.num_kv_heads, lay.head_dim,
                           lay.k_bits, lay.v_bits, device=cache.k_cache.device,
                           codec=cache.codec)
    _reference_compress(key, value, ref, slots, on_cpu=False)
    mismatch = total = 0
    for got, want in zip(cache.tensors(), ref.tensors()):
        g = got.reshape(lay.num_slots, *got.shape[2:])[slots]
        w = want.reshape(lay.num_slots, *want.shape[2:])[slots]
        g8 = g.contiguous().view(torch.uint8)
        w8 = w.contiguous().view(torch.uint8)
        mismatch += int((g8 != w8).sum())
        total += g8.numel()
    frac = mismatch / max(1, total)
    return CheckResult(frac, None, mismatch == 0,
                       "fa4_tq reference quantizer (bytes must match exactly)")


def check_dequantize(case: Case, inp: PagedInputs, set_index: int, result) -> CheckResult:
    """dequantize output vs fa4_tq.reference.dequantize (float32 math, rounded once)."""
    from fa4_tq import reference

    c = inp.cache.codec
    k, v = result
    rk, rv = reference.dequantize(*inp.cache.tensors(), inp.block_tables[set_index],
                                  inp.cu_seqlens_k, c.k_codebook, c.v_codebook, c.k_signs,
                                  c.v_signs, True, case.batch * case.seqlen_k, torch.float32)
    err = max(rel_error(k, rk), rel_error(v, rv))
    return CheckResult(err, None, err <= CHECK_REL_TOL, "fa4_tq.reference.dequantize")
