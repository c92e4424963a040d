"""TurboQuant quantization of one side (K or V): the exact arithmetic of the format.

For each vector x (bf16/fp16/fp32, last dim D), in this order:
  1. xf = float32(x)                                    (exact for bf16/fp16)
  2. y  = rotate(xf, signs)                             float32 (see rotation.py)
  3. n  = float32(sqrt(sum_i float64(y_i)^2))           float64 accumulation
  4. t  = codebook_thresholds(codebook) * n             float32 multiply
  5. code_i = #{j : t_j < y_i}                          ties go to the lower code
  6. r  = n / sqrt(sum_i float64(codebook[code_i])^2)   float64 (0 if the denominator is 0)
  7. norm = bfloat16(float32(r))                        round-to-nearest-even twice
Codes are centroid indices in ascending centroid order. Dequantized (rotated space):
x̂_i = float(norm) * codebook[code_i]. The float64 sums make the result independent of the
summation order except with probability ~2^-29 per vector (a float32 rounding tie).
"""

from __future__ import annotations

import torch

from .codebook import codebook_thresholds
from .rotation import rotate


def nearest_codes(y: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor | None = None):
    """Index of the nearest centroid of ``codebook * scale`` for every element of y (float32).

    code = #{j : t_j * scale < y}; a value exactly on a threshold takes the lower code.
    ``scale`` has y's shape without the last dim (None = 1)."""
    t = codebook_thresholds(codebook.to(device=y.device, dtype=torch.float32))
    if scale is None:
        t = t.expand(*y.shape[:-1], t.shape[0])
    else:
        t = t * scale.to(torch.float32).unsqueeze(-1)  # [..., 2^b - 1], float32 multiply
    # side="left": index = #{j : t_j < y}
    return torch.searchsorted(t.contiguous(), y.contiguous(), side="left").to(torch.uint8)


def quantize(x: torch.Tensor, signs: torch.Tensor, codebook: torch.Tensor):
    """x [..., D] -> (codes uint8 [..., D], norm bf16 [...])."""
    xf = x.to(torch.float32)
    y = rotate(xf, signs.to(torch.float32))
    n = y.to(torch.float64).square().sum(-1).sqrt().to(torch.float32)
    codes = nearest_codes(y, codebook, n)
    c = codebook.to(device=x.device, dtype=torch.float32)[codes.long()]
    cn = c.to(torch.float64).square().sum(-1).sqrt()
    r = torch.where(cn > 0, n.to(torch.float64) / torch.where(cn > 0, cn, 1.0), 0.0)
    norm = r.to(torch.float32).to(torch.bfloat16)
    return codes, norm


def dequantize_rotated(codes: torch.Tensor, norm: torch.Tensor, codebook: torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """codes [..., D], norm [...] -> x̂ in rotated space, computed in ``dtype`` (fp32/fp64)."""
    cb = codebook.to(device=codes.device, dtype=dtype)
    return cb[codes.long()] * norm.to(dtype).unsqueeze(-1)
