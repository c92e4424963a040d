"""fa4_tq: attention over a TurboQuant-compressed KV cache, on FlashAttention-4 (CuTeDSL).

Importing fa4_tq registers the ``torch.ops.tqkv.*`` operators (CPU reference, fake and CUDA
dispatch). CuTeDSL / FA4 are imported lazily, only when a CUDA kernel is compiled.
"""

from .codec import TQCodec, pack_codes, unpack_codes, rotate, unrotate, default_codebook  # noqa: F401
from .layout import FORMAT_VERSION, TQCache, TQCacheLayout  # noqa: F401

__version__ = "0.1.0"
from . import ops  # noqa: F401,E402  (registers torch.ops.tqkv.*)
from .api import compress_store, decode, dequantize, prefill  # noqa: F401,E402
