"""FA4 / CuTeDSL version pins: the installed versions pass, a mismatch fails clearly,
and importing fa4_tq (or listing compile configs) does not import cutlass."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fa4_tq import _fa4

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_installed_versions_match_pins():
    found = _fa4.check_versions()
    assert found == {
        "flash-attn-4": _fa4.FLASH_ATTN_4_VERSION,
        "nvidia-cutlass-dsl": _fa4.CUTLASS_DSL_VERSION,
    }


def test_pins_agree_with_pyproject():
    tomllib = pytest.importorskip("tomllib")
    pyproject = REPO_ROOT / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert f"flash-attn-4=={_fa4.FLASH_ATTN_4_VERSION}" in deps
    assert f"nvidia-cutlass-dsl=={_fa4.CUTLASS_DSL_VERSION}" in deps


def test_wrong_fa4_version_names_expected_found_and_fix():
    with pytest.raises(ImportError) as info:
        _fa4.check_versions(flash_attn_4="4.0.0b99")
    message = str(info.value)
    assert isinstance(info.value, _fa4.FA4VersionError)
    assert "flash-attn-4: expected 4.0.0b99, found 4.0.0b36" in message
    assert "nvidia-cutlass-dsl" not in message.split("Fix:")[0]  # only the mismatch listed
    assert "pip install 'flash-attn-4==4.0.0b99' 'nvidia-cutlass-dsl==4.8.1'" in message


def test_wrong_cutlass_version_is_reported():
    expected = r"nvidia-cutlass-dsl: expected 9\.9\.9, found 4\.8\.1"
    with pytest.raises(_fa4.FA4VersionError, match=expected):
        _fa4.check_versions(cutlass_dsl="9.9.9")


def test_missing_distribution_is_reported(monkeypatch):
    monkeypatch.setattr(_fa4, "installed_version", lambda dist: None)
    expected = "flash-attn-4: expected 4.0.0b36, found not installed"
    with pytest.raises(_fa4.FA4VersionError, match=expected):
        _fa4.check_versions()


def test_importing_fa4_tq_does_not_import_cutlass():
    """Run in a fresh interpreter: this process may already have imported cutlass. (Listing
    the registered kernel configs imports the kernel modules, hence cutlass, by design.)"""
    code = textwrap.dedent(
        """
        import sys, torch
        import fa4_tq, fa4_tq._fa4
        from fa4_tq.kernels import compile as harness
        # the ops are registered and callable on CPU without CuTeDSL
        assert hasattr(torch.ops.tqkv, "prefill")
        heavy = ("cutlass", "flash_attn", "quack")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        assert not leaked, leaked
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
