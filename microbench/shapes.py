"""What gets benchmarked: KV bit configs, benchmark cases, default grids, FLOP/byte counts.

Pure Python (imports neither torch nor fa4_tq), so argument parsing and the grid logic are
cheap to test. A ``Case`` is one shape of one op; the KV config is kept separate because
baselines (FA4-bf16, SDPA) are measured once per shape and shared by all nine configs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, replace

SUPPORTED_BITS = (2, 4, 8)
OPS = ("prefill", "decode", "compress")
DTYPES = ("bf16", "fp16")


# --------------------------------------------------------------------------- KV configs
@dataclass(frozen=True, order=True)
class KVConfig:
    k_bits: int
    v_bits: int

    def __post_init__(self):
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {getattr(self, name)}")

    @property
    def label(self) -> str:
        return f"K{self.k_bits}V{self.v_bits}"

    @property
    def cli(self) -> str:
        return f"{self.k_bits},{self.v_bits}"


ALL_KV = tuple(KVConfig(k, v) for k in SUPPORTED_BITS for v in SUPPORTED_BITS)

_KV_LABEL = re.compile(r"^[kK](\d)[vV](\d)$")


def parse_kv(tokens) -> list[KVConfig]:
    """``["4,4", "2,4"]`` / ``["K4V4"]`` / ``["all"]`` -> KV configs (order kept, duplicates
    dropped). ``all`` is the nine (k_bits, v_bits) in {2,4,8}^2."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    out: list[KVConfig] = []
    for tok in tokens:
        tok = tok.strip()
        if tok.lower() == "all":
            cfgs = list(ALL_KV)
        else:
            m = _KV_LABEL.match(tok)
            parts = m.groups() if m else tok.split(",")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"--kv: expected K_BITS,V_BITS (e.g. 4,4), K4V4 or 'all'; got {tok!r}")
            cfgs = [KVConfig(int(parts[0]), int(parts[1]))]
        for c in cfgs:
            if c not in out:
                out.append(c)
    if not out:
        raise ValueError("--kv: no configs given")
    return out


# --------------------------------------------------------------------------- numbers
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_size(text) -> int:
    """``"8K"`` -> 8192, ``"1M"`` -> 1048576, ``"100"`` -> 100 (binary suffixes)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"expected a size like 2048, 2K or 1M, got {text!r}")
    mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return int(m.group(1)) * mult


def parse_sizes(items) -> list[int]:
    """Sizes from argparse ``nargs='+'`` values; each item may also be comma-separated."""
    out: list[int] = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                out.append(parse_size(part))
    return out


def parse_window(text) -> tuple[int, int]:
    """``"L,R"`` -> (L, R); -1 means unlimited on that side."""
    parts = str(text).split(",")
    try:
        left, right = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--window: expected L,R integers (-1 = unlimited), got {text!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"--window: values must be >= -1, got {text!r}")
    return left, right


def format_size(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    prefill: ``batch`` sequences of ``seqlen_q`` queries against ``seqlen_k`` cached keys
    (the cache already holds the chunk, so seqlen_q == seqlen_k for a whole prompt).
    decode: q [batch, seqlen_q (= q_len), Hq, D] against ``seqlen_k`` cached keys.
    compress: ``batch * seqlen_k`` new tokens compressed into the cache (seqlen_q = 0), and
    the same tokens dequantized back (one sequence per batch entry).
    """

    op: str
    batch: int
    seqlen_q: int
    seqlen_k: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int = 16
    causal: bool = True
    window_left: int = -1
    window_right: int = -1
    dtype: str = "bf16"

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("batch", "seqlen_k", "num_heads", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads "
                             f"{self.num_kv_heads}")
        if self.block_size % 16 or self.block_size > 256:
            raise ValueError(f"block_size must be a multiple of 16 up to 256, got {self.block_size}")
        if self.op != "compress" and self.seqlen_q < 1:
            raise ValueError(f"seqlen_q must be >= 1 for {self.op}")
        if self.op == "decode" and self.seqlen_q > 8:
            raise ValueError(f"decode q_len must be in [1, 8], got {self.seqlen_q}")
        if self.causal and self.window_right > 0:
            raise ValueError("causal implies window_right = 0; use --no-causal with --window L,R>0")

    # ---- naming
    @property
    def window(self) -> tuple[int, int]:
        return self.window_left, self.window_right

    @property
    def num_tokens(self) -> int:
        """compress: tokens written per call."""
        return self.batch * self.seqlen_k

    def label(self) -> str:
        """Short human/NVTX-safe description (no '/', '@', ',', brackets: ncu filter syntax)."""
        if self.op == "compress":
            s = f"T{self.num_tokens} Hkv{self.num_kv_heads} D{self.head_dim} bs{self.block_size}"
        else:
            s = (f"B{self.batch} Sq{self.seqlen_q} Sk{self.seqlen_k} Hq{self.num_heads} "
                 f"Hkv{self.num_kv_heads} D{self.head_dim} bs{self.block_size} "
                 f"{'causal' if self.causal else 'noncausal'}")
            if self.window != (-1, -1):
                s += f" win{self.window_left}_{self.window_right}"
        return f"{s} {self.dtype}"

    def slug(self) -> str:
        """File-name form of label()."""
        return re.sub(r"[^A-Za-z0-9_.]+", "-", self.label()).strip("-")

    # ---- work counts
    def visible_pairs(self) -> int:
        """Number of visible (query, key) pairs per sequence and head (bottom-right aligned,
        as in fa4_tq.reference.visible_mask)."""
        sq, sk = self.seqlen_q, self.seqlen_k
        wr = 0 if self.causal else self.window_right
        wl = self.window_left
        total = 0
        for i in range(sq):
            p = i + sk - sq
            hi = sk - 1 if wr < 0 else min(sk - 1, p + wr)
            lo = 0 if wl < 0 else max(0, p - wl)
            total += max(0, hi - lo + 1)
        return total

    def flops(self) -> int:
        """Attention FLOPs: 4·B·Sq·Sk·Hq·D, halved when causal (the usual convention); with a
        sliding window, 4·B·Hq·D·(visible pairs)."""
        if self.op == "compress":
            return 0
        base = 4 * self.batch * self.num_heads * self.head_dim
        if self.window == (-1, -1):
            full = base * self.seqlen_q * self.seqlen_k
            return full // 2 if self.causal and self.op == "prefill" else full
        return base * self.visible_pairs()

    def keys_needed(self) -> int:
        """Keys per sequence that some query can see (what a decode kernel must read)."""
        sq, sk = self.seqlen_q, self.seqlen_k
        wr = 0 if self.causal else self.window_right
        wl = self.window_left
        first_p, last_p = sk - sq, sk - 1
        hi = sk - 1 if wr < 0 else min(sk - 1, last_p + wr)
        lo = 0 if wl < 0 else max(0, first_p - wl)
        return max(0, hi - lo + 1)

    @property
    def elt_bytes(self) -> int:
        return 2  # bf16 / fp16

    def io_bytes(self) -> int:
        """Query read + output written + fp32 LSE written (the same for every implementation)."""
        q = self.batch * self.seqlen_q * self.num_heads * self.head_dim * self.elt_bytes
        lse = self.batch * self.seqlen_q * self.num_heads * 4
        return 2 * q + lse

    def tq_bytes(self, kv: KVConfig) -> int:
        """Bytes a tqkv attention kernel must move: packed codes + bf16 norms of the visible
        keys, plus io_bytes()."""
        per_token = self.num_kv_heads * (self.head_dim * (kv.k_bits + kv.v_bits) // 8 + 4)
        return self.batch * self.keys_needed() * per_token + self.io_bytes()

    def bf16_bytes(self) -> int:
        """Bytes a bf16 attention kernel must move: K and V of the visible keys + io_bytes()."""
        per_token = self.num_kv_heads * self.head_dim * self.elt_bytes * 2
        return self.batch * self.keys_needed() * per_token + self.io_bytes()

    def compress_bytes(self, kv: KVConfig) -> int:
        """compress_store: K and V read, slot_mapping read, codes + norms written."""
        t, h, d = self.num_tokens, self.num_kv_heads, self.head_dim
        return (t * h * d * self.elt_bytes * 2 + t * 8
                + t * h * (d * (kv.k_bits + kv.v_bits) // 8 + 4))

    def dequantize_bytes(self, kv: KVConfig) -> int:
        """dequantize: codes + norms read, K and V written in dtype."""
        t, h, d = self.num_tokens, self.num_kv_heads, self.head_dim
        return t * h * (d * (kv.k_bits + kv.v_bits) // 8 + 4) + t * h * d * self.elt_bytes * 2

    def to_dict(self) -> dict:
        return asdict(self)

    def cli_args(self) -> list[str]:
        """Options of ``python -m microbench <op>`` that select exactly this case."""
        args = ["--batch", str(self.batch), "--hq", str(self.num_heads), "--hkv",
                str(self.num_kv_heads), "--head-dim", str(self.head_dim), "--block-size",
                str(self.block_size), "--dtype", self.dtype,
                f"--window={self.window_left},{self.window_right}",  # "-1,.." is not an option
                "--causal" if self.causal else "--no-causal"]
        if self.op == "decode":
            args += ["--seqlens", str(self.seqlen_k), "--q-len", str(self.seqlen_q)]
        else:
            args += ["--seqlens", str(self.seqlen_k)]
        return args


# --------------------------------------------------------------------------- default grids
# Sized so that `sweep` (all nine configs, prefill + decode + compress) finishes on an H100
# within one 10-minute command, compile time included (~5 s per kernel config).
DEFAULT_GRID = {
    "prefill": dict(batch=[1], seqlens=[2048, 8192, 16384], q_len=None, num_heads=32,
                    num_kv_heads=8, head_dim=[128], block_size=[16], causal=[True, False]),
    "decode": dict(batch=[1, 8], seqlens=[8192, 32768], q_len=[1], num_heads=32,
                   num_kv_heads=8, head_dim=[128], block_size=[16], causal=[True]),
    "compress": dict(batch=[1], seqlens=[1, 512, 8192, 65536], q_len=None, num_heads=32,
                     num_kv_heads=8, head_dim=[128], block_size=[16], causal=[False]),
}

# Tiny shapes for the CPU reference run (`python -m microbench` without a GPU).
CPU_SMOKE_GRID = {
    "prefill": dict(batch=[1], seqlens=[100], q_len=None, num_heads=4, num_kv_heads=2,
                    head_dim=[64], block_size=[16], causal=[True, False]),
    "decode": dict(batch=[2], seqlens=[200], q_len=[1, 3], num_heads=4, num_kv_heads=2,
                   head_dim=[64], block_size=[16], causal=[True]),
    "compress": dict(batch=[1], seqlens=[50], q_len=None, num_heads=4, num_kv_heads=2,
                     head_dim=[64], block_size=[16], causal=[False]),
}


def build_cases(op: str, *, batch=None, seqlens=None, q_len=None, num_heads=None,
                num_kv_heads=None, head_dim=None, block_size=None, causal=None,
                window=(-1, -1), dtype="bf16", grid=None) -> list[Case]:
    """The cartesian product of the given options, each defaulting to ``grid[op]``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    g = (grid or DEFAULT_GRID)[op]
    batches = batch or g["batch"]
    lens = seqlens or g["seqlens"]
    hq = num_heads or g["num_heads"]
    hkv = num_kv_heads or g["num_kv_heads"]
    dims = head_dim or g["head_dim"]
    blocks = block_size or g["block_size"]
    causals = g["causal"] if causal is None else [bool(causal)]
    qlens = (q_len or g["q_len"]) if op == "decode" else [None]
    if op == "compress":
        hq = hkv  # query heads play no role in compress
    cases = []
    for b, s, ql, d, bs, c in itertools.product(batches, lens, qlens, dims, blocks, causals):
        sq = {"prefill": s, "decode": ql, "compress": 0}[op]
        wl, wr = window
        if op == "compress":
            wl = wr = -1
        cases.append(Case(op, int(b), int(sq), int(s), int(hq), int(hkv), int(d), int(bs),
                          bool(c), int(wl), int(wr), dtype))
    return cases


def with_dtype(cases, dtype: str) -> list[Case]:
    return [replace(c, dtype=dtype) for c in cases]


def range_name(impl: str, op: str, case: Case, kv: KVConfig | None) -> str:
    """NVTX range name of one measured call, e.g. ``tqkv.prefill K4V4 B1 Sq8192 ...``.

    ncu filters on it (``--nvtx-include "<name>/"``), so it avoids the filter syntax
    characters / @ , [ ] * and is unique per (implementation, op, config, shape)."""
    kvl = kv.label if kv is not None else "bf16"
    return f"{impl}.{op} {kvl} {case.label()}"
