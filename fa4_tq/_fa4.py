"""The one place where fa4_tq touches FlashAttention-4 (FA4) internals.

fa4_tq subclasses and calls classes that FA4 does not publish as a stable API
(``FlashAttentionForwardSm90`` and friends, see ``third_party/FA4_API.md``). Their
constructor arguments, method names and call signatures change between FA4 betas, so
the exact versions below are pinned, and every accessor checks them before it imports
anything, so that a mismatch fails with a message naming expected and found versions
instead of a confusing AttributeError or a miscompiled kernel.

Importing this module is cheap: it imports neither ``flash_attn`` nor ``cutlass``.
Importing ``flash_attn.cute.<anything>`` runs ``flash_attn/cute/__init__.py``, which
imports ``interface.py`` and with it cutlass, quack, tvm_ffi and every FA4 kernel
(about 4 s). Which is why the accessors below are functions, called only when a kernel
is actually built. Nothing here patches FA4.

Pitfall: ``flash_attn.cute.__version__`` is not usable to check the version: in
4.0.0b36 it asks importlib for a distribution named ``fa4`` (flash_attn/cute/__init__.py:6),
which does not exist, and falls back to "0.0.0". The distribution is ``flash-attn-4``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Any, Callable

FLASH_ATTN_4_VERSION = "4.0.0b36"
CUTLASS_DSL_VERSION = "4.8.1"

FLASH_ATTN_4_DIST = "flash-attn-4"
CUTLASS_DSL_DIST = "nvidia-cutlass-dsl"


class FA4VersionError(ImportError):
    """An installed FA4 / CuTeDSL version differs from the one fa4_tq was written against."""


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(
    flash_attn_4: str = FLASH_ATTN_4_VERSION,
    cutlass_dsl: str = CUTLASS_DSL_VERSION,
) -> dict[str, str]:
    """Raise FA4VersionError unless the installed FA4 and CuTeDSL match the pins exactly.

    The expected versions are parameters only so tests can exercise the failure path;
    production code calls this with the defaults. Returns ``{distribution: version}``.
    Exact equality (not >=) because fa4_tq depends on private signatures that change
    between FA4 betas.
    """
    expected = {FLASH_ATTN_4_DIST: flash_attn_4, CUTLASS_DSL_DIST: cutlass_dsl}
    found = {dist: installed_version(dist) for dist in expected}
    problems = [
        f"  {dist}: expected {want}, found {found[dist] or 'not installed'}"
        for dist, want in expected.items()
        if found[dist] != want
    ]
    if problems:
        fix = " ".join(f"'{dist}=={want}'" for dist, want in expected.items())
        raise FA4VersionError(
            "fa4_tq builds on FA4/CuTeDSL internals and needs exact versions:\n"
            + "\n".join(problems)
            + f"\nFix: pip install {fix}"
        )
    return {dist: str(version) for dist, version in found.items()}


def _import(module: str) -> ModuleType:
    """Import an FA4 module after the version check (see module docstring for the cost)."""
    check_versions()
    return importlib.import_module(module)


def _attr(module: str, name: str) -> Any:
    return getattr(_import(module), name)


def flash_fwd_base() -> type:
    """``flash_attn.cute.flash_fwd.FlashAttentionForwardBase`` (__init__, _setup_attributes)."""
    return _attr("flash_attn.cute.flash_fwd", "FlashAttentionForwardBase")


def flash_fwd_sm80() -> type:
    """``flash_attn.cute.flash_fwd.FlashAttentionForwardSm80`` (mma.sync path)."""
    return _attr("flash_attn.cute.flash_fwd", "FlashAttentionForwardSm80")


def flash_fwd_sm90() -> type:
    """``flash_attn.cute.flash_fwd_sm90.FlashAttentionForwardSm90`` (TMA + WGMMA path)."""
    return _attr("flash_attn.cute.flash_fwd_sm90", "FlashAttentionForwardSm90")


def flash_fwd_sm120() -> type:
    """``flash_attn.cute.flash_fwd_sm120.FlashAttentionForwardSm120`` (Sm80 code on sm_120)."""
    return _attr("flash_attn.cute.flash_fwd_sm120", "FlashAttentionForwardSm120")


def flash_fwd_combine() -> type:
    """``flash_attn.cute.flash_fwd_combine.FlashAttentionForwardCombine`` (split-KV combine)."""
    return _attr("flash_attn.cute.flash_fwd_combine", "FlashAttentionForwardCombine")


def aux_data() -> type:
    """``flash_attn.cute.utils.AuxData``: FA4 kernels' NamedTuple of aux tensors/scalars."""
    return _attr("flash_attn.cute.utils", "AuxData")


def interface() -> ModuleType:
    """``flash_attn.cute.interface`` (``_flash_attn_fwd``, compile caches, tile heuristics)."""
    return _import("flash_attn.cute.interface")


def tile_size_fwd_sm90() -> Callable[..., Any]:
    """``interface._tile_size_fwd_sm90(head_dim, head_dim_v, is_causal, is_local, ...)``.

    Returns FA4's ``FwdConfig`` (tile_m, tile_n, mma_pv_is_rs, intra_wg_overlap), the
    Sm90 tile choice that ``_flash_attn_fwd`` makes for a given head dim.
    """
    return interface()._tile_size_fwd_sm90
