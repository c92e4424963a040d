"""LSB-first bit packing of 2/4/8-bit codes along the last dim (format contract).

Element e of a row occupies bits [(e*b) mod 8, (e*b) mod 8 + b) of byte floor(e*b/8).
4-bit: byte j = code[2j] | code[2j+1] << 4.  2-bit: byte j = c[4j] | c[4j+1]<<2 | c[4j+2]<<4 | c[4j+3]<<6.
"""

from __future__ import annotations

import torch

from .codebook import SUPPORTED_BITS


def _check(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return 8 // bits


def packed_row_bytes(head_dim: int, bits: int) -> int:
    _check(bits)
    return head_dim * bits // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., D] (values < 2**bits) -> uint8 [..., D*bits/8]."""
    per = _check(bits)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    d = codes.shape[-1]
    if d % per:
        raise ValueError(f"last dim {d} is not a multiple of {per} for {bits}-bit packing")
    if per == 1:
        return codes.clone()
    c = codes.reshape(*codes.shape[:-1], d // per, per).to(torch.int32)
    out = torch.zeros(c.shape[:-1], dtype=torch.int32, device=codes.device)
    for k in range(per):
        out |= (c[..., k] & ((1 << bits) - 1)) << (k * bits)
    return out.to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [..., D*bits/8] -> uint8 codes [..., D]."""
    per = _check(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    if per == 1:
        return packed.clone()
    p = packed.to(torch.int32).unsqueeze(-1)
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    codes = (p >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per).to(torch.uint8)
