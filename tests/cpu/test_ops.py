"""torch.ops.tqkv: opcheck, torch.compile, fake/meta shapes, argument validation."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fa4_tq
from fa4_tq.testing import cu_seqlens, random_paged_batch

ALLOWED = (ValueError, TypeError, NotImplementedError)


def _batch():
    return random_paged_batch([9, 20], 2, 64, 4, 2, 16, seed=1)


def _prefill_args(batch, q=None):
    c = batch.cache
    cc = c.codec
    q = torch.randn(12, 4, 64).to(torch.bfloat16) if q is None else q
    return dict(q=q, k_cache=c.k_cache, v_cache=c.v_cache, k_norm=c.k_norm, v_norm=c.v_norm,
                cu_seqlens_q=cu_seqlens([5, 7]), block_table=batch.block_table,
                seqused_k=batch.seqused_k, k_codebook=cc.k_codebook, v_codebook=cc.v_codebook,
                k_signs=cc.k_signs, v_signs=cc.v_signs, max_seqlen_q=7,
                softmax_scale=1 / math.sqrt(64), causal=True, window_left=-1, window_right=-1,
                rotate_query=True, unrotate_output=True, backend="auto")


def _decode_args(batch):
    a = _prefill_args(batch)
    for k in ("cu_seqlens_q", "max_seqlen_q", "backend"):
        a.pop(k)
    a["q"] = torch.randn(2, 2, 4, 64).to(torch.bfloat16)
    a["num_splits"] = 0
    return a


def _compress_args(batch):
    c = batch.cache
    cc = c.codec
    return dict(key=torch.randn(6, 2, 64), value=torch.randn(6, 2, 64), k_cache=c.k_cache.clone(),
                v_cache=c.v_cache.clone(), k_norm=c.k_norm.clone(), v_norm=c.v_norm.clone(),
                slot_mapping=torch.tensor([0, 5, -1, 40, 41, 2]), k_signs=cc.k_signs,
                v_signs=cc.v_signs, k_codebook=cc.k_codebook, v_codebook=cc.v_codebook)


def _dequant_args(batch):
    c = batch.cache
    cc = c.codec
    return dict(k_cache=c.k_cache, v_cache=c.v_cache, k_norm=c.k_norm, v_norm=c.v_norm,
                block_table=batch.block_table, cu_seqlens_k=batch.cu_seqlens_k,
                k_codebook=cc.k_codebook, v_codebook=cc.v_codebook, k_signs=cc.k_signs,
                v_signs=cc.v_signs, unrotate=True, total_k=29, dtype=torch.bfloat16)


OPS = {
    "prefill": (torch.ops.tqkv.prefill, _prefill_args),
    "decode": (torch.ops.tqkv.decode, _decode_args),
    "compress_store": (torch.ops.tqkv.compress_store, _compress_args),
    "dequantize": (torch.ops.tqkv.dequantize, _dequant_args),
}


@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name):
    op, make = OPS[name]
    torch.library.opcheck(op, args=(), kwargs=make(_batch()))


@pytest.mark.parametrize("name", ["prefill", "decode", "dequantize"])
def test_fake_shapes_match_real(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    op, make = OPS[name]
    kwargs = make(_batch())
    real = op(**kwargs)
    with FakeTensorMode() as mode:
        fk = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
        fake = op(**fk)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype


def test_torch_compile_fullgraph():
    batch = _batch()
    a = _prefill_args(batch)

    def f(q, k_cache, v_cache, k_norm, v_norm):
        out, lse = torch.ops.tqkv.prefill(
            q * 2, k_cache, v_cache, k_norm, v_norm, a["cu_seqlens_q"], a["block_table"],
            a["seqused_k"], a["k_codebook"], a["v_codebook"], a["k_signs"], a["v_signs"], 7,
            0.125, True, -1, -1, True, True, "auto")
        return out.float().sum() + lse.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (a["q"], a["k_cache"], a["v_cache"], a["k_norm"], a["v_norm"])
    assert torch.equal(compiled(*args), f(*args))

    def g(key, value, k_cache, v_cache, k_norm, v_norm):
        torch.ops.tqkv.compress_store(key, value, k_cache, v_cache, k_norm, v_norm,
                                      torch.tensor([1, 2]), a["k_signs"], a["v_signs"],
                                      a["k_codebook"], a["v_codebook"])
        return k_norm.float().sum()

    c = batch.cache
    kv = torch.randn(2, 2, 64)
    bufs = [t.clone() for t in c.tensors()]
    bufs2 = [t.clone() for t in c.tensors()]
    torch.compile(g, fullgraph=True, backend="aot_eager")(kv, kv * 2, *bufs)
    g(kv, kv * 2, *bufs2)
    for x, y in zip(bufs, bufs2):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))  # bitwise: NaN poison


def _mut(name, key, value):
    def apply(kw):
        kw[key] = value(kw) if callable(value) else value
        return kw
    return pytest.param(name, apply, id=f"{name}-{key}-{len(str(value))}")


BAD = [
    # (op, mutation, exception, message fragment)
    ("prefill", lambda a: a.update(q=a["q"].float()), TypeError, "q must have dtype"),
    ("prefill", lambda a: a.update(q=a["q"][..., :32]), ValueError, "head_dim"),
    ("prefill", lambda a: a.update(q=a["q"][:, :3]), ValueError, "multiple of num_kv_heads"),
    ("prefill", lambda a: a.update(q=a["q"].unsqueeze(0)), ValueError, "q must be 3-D"),
    ("prefill", lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)),
     ValueError, "unit stride"),
    ("prefill", lambda a: a.update(k_cache=a["k_cache"].to(torch.int8)), TypeError, "k_cache"),
    ("prefill", lambda a: a.update(k_cache=a["k_cache"][..., :16].contiguous()), ValueError, "head_dim"),
    ("prefill", lambda a: a.update(v_cache=a["v_cache"][:, :, :1].contiguous()), ValueError, "v_cache"),
    ("prefill", lambda a: a.update(k_norm=a["k_norm"].float()), TypeError, "k_norm"),
    ("prefill", lambda a: a.update(v_norm=a["v_norm"][:2]), ValueError, "v_norm"),
    ("prefill", lambda a: a.update(k_codebook=a["k_codebook"][:8]), ValueError, "k_codebook"),
    ("prefill", lambda a: a.update(v_codebook=a["v_codebook"].double()), TypeError, "v_codebook"),
    ("prefill", lambda a: a.update(k_signs=a["k_signs"][:32]), ValueError, "k_signs"),
    ("prefill", lambda a: a.update(v_signs=a["v_signs"].half()), TypeError, "v_signs"),
    ("prefill", lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].long()), TypeError, "cu_seqlens_q"),
    ("prefill", lambda a: a.update(cu_seqlens_q=torch.tensor([0, 7, 5], dtype=torch.int32)),
     ValueError, "cu_seqlens_q"),
    ("prefill", lambda a: a.update(cu_seqlens_q=torch.tensor([0, 5, 11], dtype=torch.int32)),
     ValueError, "cu_seqlens_q"),
    ("prefill", lambda a: a.update(cu_seqlens_q=torch.tensor([1, 5, 12], dtype=torch.int32)),
     ValueError, "cu_seqlens_q"),
    ("prefill", lambda a: a.update(block_table=a["block_table"][:1]), ValueError, "block_table"),
    ("prefill", lambda a: a.update(block_table=a["block_table"] + 1000), ValueError, "block ids"),
    ("prefill", lambda a: a.update(block_table=a["block_table"].long()), TypeError, "block_table"),
    ("prefill", lambda a: a.update(seqused_k=torch.tensor([9, 500], dtype=torch.int32)),
     ValueError, "capacity"),
    ("prefill", lambda a: a.update(seqused_k=torch.tensor([9, -2], dtype=torch.int32)),
     ValueError, "seqused_k"),
    ("prefill", lambda a: a.update(seqused_k=torch.tensor([9], dtype=torch.int32)), ValueError,
     "seqused_k"),
    ("prefill", lambda a: a.update(max_seqlen_q=6), ValueError, "max_seqlen_q"),
    ("prefill", lambda a: a.update(softmax_scale=float("nan")), ValueError, "softmax_scale"),
    ("prefill", lambda a: a.update(softmax_scale=-1.0), ValueError, "softmax_scale"),
    ("prefill", lambda a: a.update(window_left=-3), ValueError, "window_left"),
    ("prefill", lambda a: a.update(window_right=2), ValueError, "causal"),
    ("prefill", lambda a: a.update(backend="sm70"), ValueError, "backend"),
    ("decode", lambda a: a.update(q=torch.randn(2, 9, 4, 64).to(torch.bfloat16)), ValueError, "q_len"),
    ("decode", lambda a: a.update(q=torch.randn(3, 1, 4, 64).to(torch.bfloat16)), ValueError, "block_table"),
    ("decode", lambda a: a.update(q=a["q"][0]), ValueError, "q must be 4-D"),
    ("decode", lambda a: a.update(num_splits=-1), ValueError, "num_splits"),
    ("compress_store", lambda a: a.update(value=a["value"][:5]), ValueError, "value"),
    ("compress_store", lambda a: a.update(value=a["value"].double()), TypeError, "value"),
    ("compress_store", lambda a: a.update(key=a["key"].to(torch.int32)), TypeError, "key"),
    ("compress_store", lambda a: a.update(slot_mapping=a["slot_mapping"].int()), TypeError, "slot_mapping"),
    ("compress_store", lambda a: a.update(slot_mapping=a["slot_mapping"][:3]), ValueError, "slot_mapping"),
    ("compress_store", lambda a: a.update(slot_mapping=a["slot_mapping"] + 1000), ValueError, "slot"),
    ("compress_store", lambda a: a.update(k_cache=a["k_cache"][:, :8].contiguous()), ValueError, "block_size"),
    ("compress_store", lambda a: a.update(key=a["key"][:, :, :32].contiguous()), ValueError, "key"),
    ("dequantize", lambda a: a.update(total_k=30), ValueError, "cu_seqlens_k"),
    ("dequantize", lambda a: a.update(total_k=-1), ValueError, "total_k"),
    ("dequantize", lambda a: a.update(dtype=torch.int8), TypeError, "dtype"),
    ("dequantize", lambda a: a.update(block_table=a["block_table"] - 100), ValueError, "block ids"),
]


@pytest.mark.parametrize("name,mutate,exc,frag", BAD)
def test_validation_errors(name, mutate, exc, frag):
    op, make = OPS[name]
    kwargs = make(_batch())
    mutate(kwargs)
    with pytest.raises(exc, match=frag):
        op(**kwargs)


def test_cuda_without_kernel_is_not_silent(monkeypatch):
    from fa4_tq import ops
    monkeypatch.setitem(ops.CUDA_KERNELS, "prefill", ("fa4_tq.kernels.no_such_module", "x"))
    with pytest.raises(NotImplementedError, match="no CUDA kernel"):
        ops._cuda_impl("prefill")


_tensor_names = ["q", "k_cache", "v_cache", "k_norm", "v_norm", "cu_seqlens_q", "block_table",
                 "seqused_k", "k_codebook", "v_codebook", "k_signs", "v_signs"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(_tensor_names),
       shape=st.lists(st.integers(0, 70), min_size=0, max_size=5),
       dtype=st.sampled_from([torch.uint8, torch.int32, torch.int64, torch.bfloat16,
                              torch.float16, torch.float32]),
       fill=st.integers(-300, 300),
       scalars=st.tuples(st.integers(-5, 70), st.floats(allow_nan=True, allow_infinity=True),
                         st.integers(-5, 5), st.integers(-5, 5)))
def test_hypothesis_bad_prefill_inputs_never_crash(which, shape, dtype, fill, scalars):
    kwargs = _prefill_args(_batch())
    kwargs[which] = torch.full(shape, fill).to(dtype)
    kwargs["max_seqlen_q"], kwargs["softmax_scale"], kwargs["window_left"], kwargs["window_right"] = scalars
    try:
        out, lse = torch.ops.tqkv.prefill(**kwargs)
    except ALLOWED:
        return
    assert out.shape == kwargs["q"].shape  # accepted input: a well-formed result


@settings(max_examples=40, deadline=None)
@given(slots=st.lists(st.integers(-3, 100), min_size=0, max_size=8),
       t=st.integers(0, 8), d=st.sampled_from([32, 64, 96]))
def test_hypothesis_bad_compress_inputs_never_crash(slots, t, d):
    kw = _compress_args(_batch())
    kw["key"] = torch.randn(t, 2, d)
    kw["value"] = torch.randn(t, 2, d)
    kw["slot_mapping"] = torch.tensor(slots, dtype=torch.int64)
    try:
        torch.ops.tqkv.compress_store(**kw)
    except ALLOWED:
        return
    assert t == len(slots) and d == 64 and max(slots, default=-1) < kw["k_cache"].shape[0] * 16


def test_cuda_dispatch_checks_pinned_versions(monkeypatch):
    from fa4_tq import _fa4, ops

    def wrong(*a, **k):
        raise _fa4.FA4VersionError("flash-attn-4: expected 4.0.0b36, found 9.9")

    monkeypatch.setattr(_fa4, "check_versions", wrong)
    ops._pinned_versions_ok.cache_clear()
    try:
        with pytest.raises(_fa4.FA4VersionError, match="expected"):
            ops._cuda_impl("prefill")
    finally:
        ops._pinned_versions_ok.cache_clear()
