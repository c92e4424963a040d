"""Seeded randomized Hadamard rotation: y = H_D · (s ⊙ x) / sqrt(D).

Sign generator (part of the format): ``splitmix64`` seeded with ``stream = 2 * seed + side``
(side 0 = K, side 1 = V); the i-th draw z_i gives s_i = -1 if bit 63 of z_i is set, else +1.
This is plain integer arithmetic, so every machine and every torch version gets the same signs.

Fast Walsh–Hadamard transform (part of the format, because compress must be bit-exact with
the reference): radix-2 butterflies in natural (Sylvester) order, stages h = 1, 2, 4, …, D/2,
each mapping (a, b) = (x[i], x[i+h]) to (a + b, a - b) for every i with bit h clear, in the
working precision (float32 in the codec); then one multiply by the working-precision constant
1/sqrt(D). Additions and subtractions of the same pairs in the same stage order give
bit-identical float32 results however the work is distributed over threads.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SUPPORTED_HEAD_DIMS = (64, 128, 256)
_MASK64 = (1 << 64) - 1


def check_head_dim(head_dim: int, name: str = "head_dim") -> None:
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name} must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim!r}")


def _splitmix64(state: int):
    while True:
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        yield z ^ (z >> 31)


@functools.lru_cache(maxsize=None)
def _signs_np(head_dim: int, stream: int) -> np.ndarray:
    gen = _splitmix64(stream & _MASK64)
    return np.array([-1.0 if (next(gen) >> 63) & 1 else 1.0 for _ in range(head_dim)], np.float32)


def rademacher_signs(head_dim: int, seed: int, side: int) -> torch.Tensor:
    """The ±1 float32 sign vector of one side (0 = K, 1 = V) for ``seed``."""
    check_head_dim(head_dim)
    if side not in (0, 1):
        raise ValueError(f"side must be 0 (K) or 1 (V), got {side!r}")
    return torch.from_numpy(_signs_np(head_dim, 2 * int(seed) + side).copy())


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh–Hadamard transform over the last dim, in x's dtype (stage order above)."""
    d = x.shape[-1]
    if d & (d - 1) or d == 0:
        raise ValueError(f"fwht needs a power-of-two last dim, got {d}")
    lead = x.shape[:-1]
    h = 1
    while h < d:
        y = x.reshape(*lead, d // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, d)
        h *= 2
    return x


def _inv_sqrt(d: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(1.0 / math.sqrt(d), dtype=like.dtype, device=like.device)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """y = H (s ⊙ x) / sqrt(D) over the last dim; computed in x's (floating) dtype."""
    s = signs.to(device=x.device, dtype=x.dtype)
    return fwht(x * s) * _inv_sqrt(x.shape[-1], x)


def unrotate(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rotate``: x = s ⊙ H y / sqrt(D)."""
    s = signs.to(device=y.device, dtype=y.dtype)
    return fwht(y) * _inv_sqrt(y.shape[-1], y) * s
