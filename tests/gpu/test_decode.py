"""GPU correctness of the split-K decode kernel against the float64 reference over the same
packed cache (fresh random inputs, NaN-poisoned outputs, NaN never passes, rel. err <= 1e-2).

The cases (all nine bit pairs at D=128 for q_len 1 and 4, mixed lengths incl. 0, 1, ~5000,
block sizes 16..128, windows, D=64/256, GQA 1/5/16, q_len up to 8, fp16, no rotations, fixed
split counts, the torch.ops entry point, each rotation flag alone — the query rotation runs
inside the decode kernel and the output un-rotation inside the combine) live in
microbench/decode_probe.py, which also runs them on the device in parallel processes."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from microbench.decode_probe import check_case, correctness_cases  # noqa: E402

CASES = correctness_cases()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decode_matches_reference(case):
    r = check_case(case)
    assert "error" not in r, r.get("tb", r.get("error"))
    assert not r["nan"], r
    assert r["inf_ok"] and r["zero_ok"], r
    assert r["rel_err"] <= 1e-2, r
    assert r["lse_err"] <= r["lse_tol"], r  # 1e-2, or the bf16-operand bound for large logits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_unsupported_raises_before_launch():
    from fa4_tq.kernels.decode import DecodeConfig

    with pytest.raises(NotImplementedError):
        DecodeConfig(4, 4, 128, 32, 8)
