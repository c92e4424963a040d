"""The TurboQuant codec: rotation, codebooks, quantization and packing (pure torch/numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .codebook import (SUPPORTED_BITS, check_codebook, codebook_bits, codebook_thresholds, default_codebook,
                       lloyd_max_gaussian)
from .packing import pack_codes, packed_row_bytes, unpack_codes
from .quantizer import dequantize_rotated, quantize
from .rotation import (SUPPORTED_HEAD_DIMS, check_head_dim, fwht, rademacher_signs, rotate,
                       unrotate)

__all__ = [
    "SUPPORTED_BITS", "SUPPORTED_HEAD_DIMS", "TQCodec", "check_codebook", "codebook_bits", "check_head_dim",
    "codebook_thresholds", "default_codebook", "dequantize_rotated", "fwht",
    "lloyd_max_gaussian", "pack_codes", "packed_row_bytes", "quantize", "rademacher_signs",
    "rotate", "unpack_codes", "unrotate",
]


@dataclass
class TQCodec:
    """Codec parameters of one layer: head_dim, K/V bit widths, seed, signs and codebooks.

    ``k_codebook`` / ``v_codebook`` default to the Lloyd-Max Gaussian tables scaled by
    1/sqrt(head_dim); pass any strictly increasing float32 table of 2**bits entries instead.
    """

    head_dim: int
    k_bits: int = 4
    v_bits: int = 4
    seed: int = 0
    k_codebook: torch.Tensor | None = None
    v_codebook: torch.Tensor | None = None
    k_signs: torch.Tensor = field(init=False)
    v_signs: torch.Tensor = field(init=False)

    def __post_init__(self):
        check_head_dim(self.head_dim)
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {getattr(self, name)!r}")
        if self.k_codebook is None:
            self.k_codebook = default_codebook(self.k_bits, self.head_dim)
        if self.v_codebook is None:
            self.v_codebook = default_codebook(self.v_bits, self.head_dim)
        for side, bits in (("k", self.k_bits), ("v", self.v_bits)):
            cb = getattr(self, f"{side}_codebook")
            got = check_codebook(cb, f"{side}_codebook")
            if got != bits:
                raise ValueError(f"{side}_codebook has {cb.numel()} entries but {side}_bits={bits}")
        self.k_signs = rademacher_signs(self.head_dim, self.seed, 0)
        self.v_signs = rademacher_signs(self.head_dim, self.seed, 1)

    def to(self, device) -> "TQCodec":
        for name in ("k_codebook", "v_codebook", "k_signs", "v_signs"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def tensors(self, side: str):
        if side not in ("k", "v"):
            raise ValueError(f"side must be 'k' or 'v', got {side!r}")
        return getattr(self, f"{side}_signs"), getattr(self, f"{side}_codebook")

    def quantize(self, x: torch.Tensor, side: str):
        """x [..., D] -> (packed uint8 [..., D*bits/8], norm bf16 [...])."""
        signs, cb = self.tensors(side)
        codes, norm = quantize(x, signs, cb)
        return pack_codes(codes, self.k_bits if side == "k" else self.v_bits), norm

    def dequantize(self, packed: torch.Tensor, norm: torch.Tensor, side: str, *,
                   rotated: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        signs, cb = self.tensors(side)
        codes = unpack_codes(packed, self.k_bits if side == "k" else self.v_bits)
        x = dequantize_rotated(codes, norm, cb, dtype)
        return x if rotated else unrotate(x, signs)

    def rotate_query(self, q: torch.Tensor) -> torch.Tensor:
        """Queries into K's rotated space (computed in float32, returned in q's dtype)."""
        return rotate(q.float(), self.k_signs).to(q.dtype)

    def unrotate_output(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output from V's rotated space back to the original space."""
        return unrotate(o.float(), self.v_signs).to(o.dtype)
