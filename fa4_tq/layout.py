"""The paged compressed KV cache (format version 1): shapes, sizes, allocation.

Per layer:
  k_cache  uint8    [num_blocks, block_size, num_kv_heads, head_dim * k_bits / 8]
  v_cache  uint8    [num_blocks, block_size, num_kv_heads, head_dim * v_bits / 8]
  k_norm   bfloat16 [num_blocks, block_size, num_kv_heads]
  v_norm   bfloat16 [num_blocks, block_size, num_kv_heads]
Token t of sequence b lives in block ``block_table[b, t // block_size]`` at row
``t % block_size``; a flat slot index is ``block * block_size + row`` (vLLM's slot_mapping).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codec import SUPPORTED_BITS, TQCodec, check_head_dim, packed_row_bytes

FORMAT_VERSION = 1
MAX_BLOCK_SIZE = 256


def check_block_size(block_size: int) -> None:
    if not (isinstance(block_size, int) and 16 <= block_size <= MAX_BLOCK_SIZE and block_size % 16 == 0):
        raise ValueError(f"block_size must be a multiple of 16 in [16, {MAX_BLOCK_SIZE}], got {block_size!r}")


@dataclass(frozen=True)
class TQCacheLayout:
    """Shapes and sizes of one layer's paged compressed cache."""

    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    k_bits: int
    v_bits: int

    def __post_init__(self):
        check_head_dim(self.head_dim)
        check_block_size(self.block_size)
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {getattr(self, name)!r}")
        if self.num_blocks < 1 or self.num_kv_heads < 1:
            raise ValueError("num_blocks and num_kv_heads must be >= 1")

    @property
    def k_row_bytes(self) -> int:
        return packed_row_bytes(self.head_dim, self.k_bits)

    @property
    def v_row_bytes(self) -> int:
        return packed_row_bytes(self.head_dim, self.v_bits)

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token over all KV heads (codes + two bf16 norms per head)."""
        return self.num_kv_heads * (self.k_row_bytes + self.v_row_bytes + 4)

    @property
    def bytes_per_token_per_head(self) -> int:
        return self.k_row_bytes + self.v_row_bytes + 4

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        base = (self.num_blocks, self.block_size, self.num_kv_heads)
        return {"k_cache": base + (self.k_row_bytes,), "v_cache": base + (self.v_row_bytes,),
                "k_norm": base, "v_norm": base}

    def total_bytes(self) -> int:
        return self.num_slots * self.bytes_per_token

    def describe(self) -> str:
        s = self.shapes()
        bf16 = self.num_kv_heads * self.head_dim * 2 * 2
        lines = [
            f"TurboQuant paged KV cache, format v{FORMAT_VERSION}: K{self.k_bits}V{self.v_bits}, "
            f"head_dim={self.head_dim}, num_kv_heads={self.num_kv_heads}",
            f"  k_cache uint8 {list(s['k_cache'])}  (LSB-first {self.k_bits}-bit codes)",
            f"  v_cache uint8 {list(s['v_cache'])}  (LSB-first {self.v_bits}-bit codes)",
            f"  k_norm  bf16  {list(s['k_norm'])}",
            f"  v_norm  bf16  {list(s['v_norm'])}",
            f"  {self.num_blocks} blocks x {self.block_size} tokens = {self.num_slots} slots; "
            f"{self.bytes_per_token_per_head} B/token/head, {self.bytes_per_token} B/token "
            f"(bf16: {bf16}, {bf16 / self.bytes_per_token:.2f}x smaller); "
            f"{self.total_bytes() / 2**20:.1f} MiB",
        ]
        return "\n".join(lines)


@dataclass
class TQCache:
    """One layer's allocated cache tensors plus its layout and codec."""

    layout: TQCacheLayout
    codec: TQCodec
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    k_norm: torch.Tensor
    v_norm: torch.Tensor

    @classmethod
    def allocate(cls, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 k_bits: int = 4, v_bits: int = 4, device="cpu", *, codec: TQCodec | None = None,
                 seed: int = 0) -> "TQCache":
        layout = TQCacheLayout(num_blocks, block_size, num_kv_heads, head_dim, k_bits, v_bits)
        if codec is None:
            codec = TQCodec(head_dim, k_bits, v_bits, seed=seed)
        elif (codec.head_dim, codec.k_bits, codec.v_bits) != (head_dim, k_bits, v_bits):
            raise ValueError("codec head_dim/k_bits/v_bits do not match the cache layout")
        codec = codec.to(device)
        s = layout.shapes()
        return cls(layout, codec,
                   torch.zeros(s["k_cache"], dtype=torch.uint8, device=device),
                   torch.zeros(s["v_cache"], dtype=torch.uint8, device=device),
                   torch.zeros(s["k_norm"], dtype=torch.bfloat16, device=device),
                   torch.zeros(s["v_norm"], dtype=torch.bfloat16, device=device))

    @property
    def bytes_per_token(self) -> int:
        return self.layout.bytes_per_token

    def describe(self) -> str:
        return self.layout.describe()

    def tensors(self):
        return self.k_cache, self.v_cache, self.k_norm, self.v_norm
