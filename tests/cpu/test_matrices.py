"""The GPU correctness matrices of issues 3, 4 and 6 cover what the issues list (checked here on
the CPU, where the case lists are built)."""

import itertools
import os
import sys

from fa4_tq.testing import PREFILL_MATRIX_K_LENS, PREFILL_MATRIX_Q_LENS, prefill_matrix

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from microbench.decode_probe import correctness_cases, decode_matrix_cases  # noqa: E402

PAIRS = [(kb, vb) for kb in (2, 4, 8) for vb in (2, 4, 8)]


def _mask(c):
    if c["wl"] >= 0 or c["wr"] >= 0:
        return "window"
    return "causal" if c["causal"] else "full"


def test_prefill_matrix_is_the_full_product():
    cells = prefill_matrix()
    keys = [(c["kb"], c["vb"], c["d"], c["hq"] // c["hkv"], _mask(c)) for c in cells]
    assert sorted(keys) == sorted(itertools.product((2, 4, 8), (2, 4, 8), (64, 128), (1, 4, 8),
                                                    ("full", "causal", "window")))
    assert all(c["args"] == (list(PREFILL_MATRIX_Q_LENS), list(PREFILL_MATRIX_K_LENS), c["hq"],
                             c["hkv"], c["d"], c["kb"], c["vb"], c["bs"], c["causal"], c["wl"],
                             c["wr"]) for c in cells)
    assert len({c["id"] for c in cells}) == len(cells)
    assert len({c["seed"] for c in cells}) == len(cells)
    # both block sizes for every pair and every head_dim; both window kinds
    for kb, vb in PAIRS:
        for d in (64, 128):
            assert {c["bs"] for c in cells if (c["kb"], c["vb"], c["d"]) == (kb, vb, d)} == \
                {16, 128}
    assert {(c["causal"], c["wl"], c["wr"]) for c in cells if _mask(c) == "window"} == \
        {(True, 257, -1), (False, 100, 33)}
    assert 1 in PREFILL_MATRIX_Q_LENS and 17 in PREFILL_MATRIX_Q_LENS
    assert 4097 in PREFILL_MATRIX_K_LENS and 1000 in PREFILL_MATRIX_K_LENS


def test_decode_matrix_covers_every_pair_and_factor():
    cells = decode_matrix_cases()
    assert sorted((c["kb"], c["vb"], c["D"]) for c in cells) == \
        sorted(itertools.product((2, 4, 8), (2, 4, 8), (64, 128, 256)))
    for field, values in (("G", {1, 4, 8, 16}), ("qlen", {1, 4, 8}), ("bs", {16, 128})):
        for d in (64, 128, 256):  # every value at every head_dim
            assert {c[field] for c in cells if c["D"] == d} == values, (field, d)
        for kb, vb in PAIRS:  # and a spread of values for every pair
            assert len({c[field] for c in cells if (c["kb"], c["vb"]) == (kb, vb)}) > 1
    assert any(c["wl"] >= 0 for c in cells) and any(c["wl"] < 0 for c in cells)
    assert max(max(c["lens"]) for c in cells) == 131072
    assert all(max(c["lens"]) == 131072 for c in cells if c["D"] == 128)
    assert any(0 in c["lens"] and 1 in c["lens"] for c in cells)
    assert all(c["G"] * c["qlen"] <= 128 for c in cells)


def test_decode_matrix_is_in_the_gpu_cases_with_distinct_seeds():
    cases = correctness_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    assert len({c["seed"] for c in cases}) == len(cases)
    assert {c["name"] for c in decode_matrix_cases()} <= set(names)
