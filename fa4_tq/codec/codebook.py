"""Lloyd-Max codebooks for the coordinates of a rotated vector.

After the randomized Hadamard rotation every coordinate of a D-dimensional unit vector is
approximately N(0, 1/D). The default codebook is therefore the Lloyd-Max (MSE-optimal scalar)
quantizer of a standard Gaussian, scaled by 1/sqrt(D).

The Gaussian tables are computed here with numpy (no scipy): Lloyd iteration with the exact
conditional means of a Gaussian on each cell, started from the companding (phi^(1/3))
quantiles and over-relaxed, to steps < 1e-10. The result is deterministic; it is cached in
memory and, because b=8 takes a few seconds, on disk (``$FA4TQ_CACHE_DIR`` or
``~/.cache/fa4_tq``), keyed by the algorithm version.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

SUPPORTED_BITS = (2, 4, 8)
_ALGO_VERSION = 1
_TOL = 1e-10
_OMEGA = 1.5  # over-relaxation of the Lloyd step (1.0 = plain Lloyd)

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _upper_tail(x: np.ndarray) -> np.ndarray:
    """Q(x) = P(X > x) for X ~ N(0, 1), accurate in the tail (no 1 - Phi cancellation)."""
    return 0.5 * _erfc(x / math.sqrt(2.0)).astype(np.float64)


def _pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cells(c_pos: np.ndarray):
    """Cell edges of the positive half: [0, t_1), ..., [t_{h-1}, inf)."""
    lo = np.concatenate([[0.0], 0.5 * (c_pos[:-1] + c_pos[1:])])
    hi = np.concatenate([0.5 * (c_pos[:-1] + c_pos[1:]), [np.inf]])
    return lo, hi


def _cell_moments(lo: np.ndarray, hi: np.ndarray):
    fin = np.isfinite(hi)
    hi0 = np.where(fin, hi, 0.0)
    p = _upper_tail(lo) - np.where(fin, _upper_tail(hi0), 0.0)
    m1 = _pdf(lo) - np.where(fin, _pdf(hi0), 0.0)  # integral of x phi(x)
    m2 = lo * _pdf(lo) - np.where(fin, hi0 * _pdf(hi0), 0.0) + p  # integral of x^2 phi(x)
    return p, m1, m2


def _companding_init(half: int) -> np.ndarray:
    # Optimal point density for a Gaussian is proportional to phi^(1/3), i.e. N(0, 3).
    levels = 0.5 + (np.arange(half) + 0.5) / (2 * half)
    lo, hi = np.zeros(half), np.full(half, 40.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = (1.0 - _upper_tail(mid / math.sqrt(3.0))) < levels
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _lloyd_max_gaussian_uncached(bits: int) -> tuple[np.ndarray, float]:
    half = 2 ** bits // 2
    c = _companding_init(half)
    for _ in range(1_000_000):
        lo, hi = _cells(c)
        p, m1, _ = _cell_moments(lo, hi)
        new = m1 / p
        step = float(np.max(np.abs(new - c)))
        c = c + _OMEGA * (new - c)
        if step < _TOL:
            break
    c = np.sort(c)
    lo, hi = _cells(c)
    p, m1, m2 = _cell_moments(lo, hi)
    mse = float(2.0 * np.sum(m2 - 2 * c * m1 + c * c * p))
    return np.concatenate([-c[::-1], c]), mse


def _cache_dir() -> Path:
    return Path(os.environ.get("FA4TQ_CACHE_DIR", Path.home() / ".cache" / "fa4_tq"))


@functools.lru_cache(maxsize=None)
def lloyd_max_gaussian(bits: int) -> tuple[np.ndarray, float]:
    """Sorted Lloyd-Max centroids for N(0, 1) with ``2**bits`` levels, and their MSE."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    path = _cache_dir() / f"lloyd_max_gauss_b{bits}_v{_ALGO_VERSION}.npy"
    try:
        arr = np.load(path)
        if arr.shape == (2 ** bits + 1,):
            return arr[:-1].copy(), float(arr[-1])
    except (OSError, ValueError):
        pass
    centroids, mse = _lloyd_max_gaussian_uncached(bits)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, np.concatenate([centroids, [mse]]))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs recomputation
    return centroids, mse


def default_codebook(bits: int, head_dim: int) -> torch.Tensor:
    """The default float32 codebook (unit-vector scale): Lloyd-Max(N(0,1)) / sqrt(head_dim)."""
    centroids, _ = lloyd_max_gaussian(bits)
    return torch.from_numpy(centroids / math.sqrt(head_dim)).to(torch.float32)


def codebook_bits(codebook: torch.Tensor) -> int:
    """Bit width of an already-validated codebook (4, 16 or 256 entries -> 2, 4 or 8)."""
    n = codebook.numel()
    # comparisons (not a dict lookup) so symbolic sizes under torch.compile/opcheck work
    bits = 2 if n == 4 else 4 if n == 16 else 8 if n == 256 else None
    if bits is None:
        raise ValueError(f"codebook must have 4, 16 or 256 entries (2, 4 or 8 bits), got {n}")
    return bits


def check_codebook(codebook: torch.Tensor, name: str = "codebook") -> int:
    """Validate a codebook tensor; return its bit width."""
    if not isinstance(codebook, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codebook).__name__}")
    if codebook.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {codebook.dtype}")
    if codebook.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(codebook.shape)}")
    try:
        bits = codebook_bits(codebook)
    except ValueError:
        raise ValueError(f"{name} must have 4, 16 or 256 entries (2, 4 or 8 bits), "
                         f"got {codebook.numel()}") from None
    # Value checks read the tensor: always on CPU; on a GPU only with FA4TQ_DEBUG_CHECKS=1,
    # because a device->host read per op call is a sync that breaks CUDA-graph capture.
    if codebook.device.type == "cpu" and not _is_fake(codebook) or (
            codebook.device.type == "cuda" and _debug_checks()):
        if not bool(torch.all(codebook[1:] > codebook[:-1])):
            raise ValueError(f"{name} must be strictly increasing")
        if not bool(torch.all(torch.isfinite(codebook))):
            raise ValueError(f"{name} must be finite")
    return bits


def _debug_checks() -> bool:
    return os.environ.get("FA4TQ_DEBUG_CHECKS", "0") not in ("", "0", "false", "False")


def _is_fake(t: torch.Tensor) -> bool:
    return type(t).__name__ == "FakeTensor"


def codebook_thresholds(codebook: torch.Tensor) -> torch.Tensor:
    """Decision thresholds between neighbouring centroids, computed in float32 as
    ``(c[i] + c[i+1]) * 0.5`` — the exact op the compress kernel performs."""
    return (codebook[:-1] + codebook[1:]) * 0.5
