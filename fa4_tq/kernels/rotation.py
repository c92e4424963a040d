"""Query rotation / output un-rotation on the GPU, shared by prefill and decode.

The rotation is linear: rotate(x) = x @ R with R = diag(s) H / sqrt(D) (H symmetric), and
unrotate(y) = y @ R^T. On the GPU one float32 GEMM against the precomputed D x D matrix is the
fast separate kernel (cuBLAS; ~2·D flops per element, far below attention's cost, and a single
launch instead of log2(D) butterfly passes). TF32 is disabled for it so the rotation stays at
float32 accuracy. Results are rounded once to the input dtype.
"""

from __future__ import annotations

import functools

import torch

from ..codec import fwht


@functools.lru_cache(maxsize=16)
def _hadamard(d: int, device: torch.device) -> torch.Tensor:
    """Sylvester H_D / sqrt(D) in float32 (symmetric), cached per device."""
    h = fwht(torch.eye(d, dtype=torch.float64)) / d ** 0.5
    return h.to(device=device, dtype=torch.float32)


def rotation_matrix(signs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The float32 [D, D] matrix M with rotate(x) = x @ M (unrotate(x) if ``inverse``).

    Built on the signs' device with one elementwise op and no host sync, so it is safe inside
    CUDA-graph capture: R = diag(s) H / sqrt(D); R^T = H diag(s) / sqrt(D)."""
    h = _hadamard(signs.shape[0], signs.device)
    s = signs.to(torch.float32)
    return h * s.unsqueeze(0) if inverse else s.unsqueeze(1) * h


def apply_rotation(x: torch.Tensor, matrix: torch.Tensor, out: torch.Tensor | None = None):
    """x [..., D] @ matrix in float32 (TF32 off), rounded to x.dtype."""
    lead = x.shape[:-1]
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        y = torch.mm(x.reshape(-1, x.shape[-1]).float(), matrix)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    y = y.to(x.dtype).reshape(*lead, x.shape[-1])
    if out is not None:
        out.copy_(y)
        return out
    return y
