"""PrefillSm80 on the CPU: every shipped config compiles for sm_90a (in this process) and for
sm_80 (in a subprocess: CuTeDSL reads CUTE_DSL_ARCH once, at its first import) with 0 spills
and shared memory within the A100's 163 KB; the loader's shared-memory addresses are FA4's
own Sm80 K/V layout; the opt-in gate and the auto-dispatch rule hold without a GPU."""

from fa4_tq.kernels.compile import configure_cpu_compile_env

configure_cpu_compile_env()  # before anything imports cutlass

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from fa4_tq.kernels import compile as harness  # noqa: E402
from fa4_tq.kernels import prefill_sm80 as P  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernel_config(cfg):
    return harness.KernelConfig("prefill", cfg.k_bits, cfg.v_bits, cfg.head_dim,
                                P._variant(cfg), partial(P.build_compile, cfg))


def _check(r, cfg, arch):
    assert r.error is None, r.error
    assert r.spill_bytes == 0, (cfg.name, arch, r.notes)
    assert r.smem_bytes is not None and r.smem_bytes <= P.SM80_SMEM_CAPACITY
    assert r.smem_bytes <= cfg.smem_bytes()  # the config's own estimate is an upper bound
    assert r.ptxas and all(e.arch == arch for e in r.ptxas)


@pytest.mark.compile
@pytest.mark.parametrize("cfg", P.shipped_configs(), ids=lambda c: c.name)
def test_prefill_sm80_compiles_sm90a(cfg):
    _check(harness.compile_config(_kernel_config(cfg)), cfg, "sm_90a")


_SM80_SCRIPT = r"""
import json, sys
from functools import partial
from fa4_tq.kernels import compile as harness
harness.configure_cpu_compile_env()
from fa4_tq.kernels import prefill_sm80 as P
assert harness.effective_dsl_settings().arch == "sm_80"
for cfg in P.shipped_configs():
    r = harness.compile_config(harness.KernelConfig(
        "prefill", cfg.k_bits, cfg.v_bits, cfg.head_dim, P._variant(cfg),
        partial(P.build_compile, cfg)))
    print("RESULT " + json.dumps(dict(
        name=cfg.name, error=r.error, spill=r.spill_bytes, smem=r.smem_bytes,
        regs=r.registers, archs=[e.arch for e in r.ptxas], notes=list(r.notes))), flush=True)
"""


@pytest.mark.compile
def test_prefill_sm80_compiles_sm80_subprocess():
    env = dict(os.environ, CUTE_DSL_ARCH="sm_80", FLASH_ATTENTION_ARCH="sm_80",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _SM80_SCRIPT], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            d = json.loads(line[len("RESULT "):])
            results[d["name"]] = d
    cfgs = {c.name: c for c in P.shipped_configs()}
    assert set(results) == set(cfgs), proc.stderr[-2000:]
    for name, d in results.items():
        assert d["error"] is None, (name, d["error"])
        assert d["spill"] == 0, (name, d["notes"])
        assert d["smem"] is not None and d["smem"] <= min(P.SM80_SMEM_CAPACITY,
                                                           cfgs[name].smem_bytes())
        assert d["archs"] and set(d["archs"]) == {"sm_80"}, (name, d["archs"])


def sm80_tile_offset_py(row: int, col: int, stage: int, tile_n: int, head_dim: int) -> int:
    """Element offset of (row, col, stage) in FA4's Sm80 bf16 K/V smem layout: atoms of
    8 rows x 64 elements (ampere_helpers.get_smem_layout_atom, D % 64 == 0) tiled rows first,
    then columns, then stages, with Swizzle<3,3,3> on the element offset."""
    x = ((row % 8) * 64 + col % 64 + (row // 8) * 512 + (col // 64) * tile_n * 64
         + stage * tile_n * head_dim)
    return x ^ ((x >> 3) & (7 << 3))


@pytest.mark.compile
@pytest.mark.parametrize("d", [64, 128])
def test_loader_addresses_match_fa4_sm80_layout(d):
    """The loader stores 8-element chunks at ``cute.crd2idx((row, col, stage), sK_layout)``;
    that must be the swizzled offset FA4's ldmatrix partitions read (the composed layout's
    value), and the swizzle must be non-trivial (else the check proves nothing)."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import ampere_helpers as sm80_utils

    found = {}

    @cute.jit
    def probe(D: cutlass.Constexpr):
        atom = sm80_utils.get_smem_layout_atom(cutlass.BFloat16, D)
        lay = cute.tile_to_shape(atom, (64, D, 2), (0, 1, 2))
        for r in cutlass.range_constexpr(64):
            for c in cutlass.range_constexpr(D // 8):
                found[(r, c)] = (cute.crd2idx((r, c * 8, 1), lay), lay((r, c * 8, 1)),
                                 lay.outer((r, c * 8, 1)))

    cute.compile(probe, d)
    assert len(found) == 64 * d // 8
    swizzled = 0
    for (r, c), (idx, val, outer) in found.items():
        assert idx == val == sm80_tile_offset_py(r, c * 8, 1, 64, d), (r, c)
        swizzled += idx != outer
    assert swizzled > 0


def test_config_guards():
    with pytest.raises(NotImplementedError, match="head_dim 256"):
        P.make_config(256, 4, 4, 1, False, False, False, False)
    with pytest.raises(ValueError, match="register LUT"):
        P.PrefillSm80Config(128, 8, 4, 1, False, False, False, False, k_register_lut=True)
    cfg = P.make_config(128, 8, 4, 4, False, False, False, False, True, True)
    assert not cfg.k_register_lut and cfg.v_register_lut and cfg.v_lut_replicas == 1
    with pytest.raises(ValueError, match="threads per K/V row"):
        P.PrefillSm80Config(128, 4, 4, 1, False, False, False, False, tile_n=32)
    with pytest.raises(ValueError, match="tile_m must be 64"):
        P.make_config(128, 4, 4, 4, False, False, False, False, tile_m=96)
    # 8 warps: a quarter row per thread; D=64 with 2-bit codes would be 4 B per thread
    wide = P.make_config(128, 4, 4, 4, False, False, False, False)
    assert wide.num_threads == 256 and wide.threads_per_row == 4 and wide.k_part_bytes() == 16
    with pytest.raises(ValueError, match="multiple of 8"):
        P.make_config(64, 2, 4, 4, True, False, False, False, tile_m=128)
    # compile-harness keys must be unique (the registry rejects duplicates)
    keys = [(c.k_bits, c.v_bits, c.head_dim, P._variant(c)) for c in P.shipped_configs()]
    assert len(set(keys)) == len(keys)
    # default tile: 8 warps at D=128, 4 warps at D=64
    assert P.make_config(128, 4, 4, 4, False, False, False, False).tile_m == 128
    assert P.make_config(64, 2, 2, 4, False, False, False, False).tile_m == 64
    # the default decode: register LUT for 2/4-bit sides, shared-memory LUT for 8-bit
    d = P.make_config(128, 2, 8, 4, False, False, False, False)
    assert d.k_register_lut and not d.v_register_lut and d.v_lut_replicas == 8


def _dummy_args(device="cpu", d=128):
    q = torch.zeros(4, 2, d, dtype=torch.bfloat16, device=device)
    kc = torch.zeros(1, 16, 2, d // 2, dtype=torch.uint8, device=device)
    kn = torch.zeros(1, 16, 2, dtype=torch.bfloat16, device=device)
    cb = torch.linspace(-1, 1, 16, device=device)
    s = torch.ones(d, device=device)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    return (q, kc, kc, kn, kn, i32(0, 4), i32(0).view(1, 1), i32(4), cb, cb, s, s, 4, 0.1,
            False, -1, -1, True, True)


def test_sm80_backend_off_hopper_needs_opt_in(monkeypatch):
    """Validated on Hopper only: on another GPU the sm80 kernel runs only with
    FA4TQ_UNVALIDATED_SM80=1 (checked before any compile or launch)."""
    from fa4_tq.kernels import prefill as PF
    monkeypatch.delenv(PF.SM80_OPT_IN_ENV, raising=False)
    monkeypatch.setattr(PF, "_compile", lambda *a: pytest.fail("compiled"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    for backend in ("sm80", "auto"):
        with pytest.raises(NotImplementedError, match="validated on Hopper only.*8.0.*"
                                                      "FA4TQ_UNVALIDATED_SM80=1"):
            PF.prefill_cuda(*_dummy_args(), backend=backend)
    monkeypatch.setenv(PF.SM80_OPT_IN_ENV, "0")
    with pytest.raises(NotImplementedError, match="FA4TQ_UNVALIDATED_SM80=1"):
        PF.prefill_cuda(*_dummy_args(), backend="sm80")


@pytest.mark.parametrize("cap,expected", [((8, 0), "sm80"), ((8, 9), "sm80"), ((12, 0), "sm80"),
                                          ((9, 0), "sm90")])
def test_auto_backend_by_compute_capability(monkeypatch, cap, expected):
    """backend='auto': the wgmma kernel on Hopper, the portable kernel on any other GPU."""
    from fa4_tq.kernels import prefill as PF
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    routed = []

    def sm80(*a, **k):
        routed.append("sm80")
        raise RuntimeError("stop")

    def config_for(*a, **k):
        routed.append("sm90")
        raise RuntimeError("stop")
    monkeypatch.setattr(PF, "_prefill_sm80", sm80)
    monkeypatch.setattr(PF, "config_for", config_for)
    with pytest.raises(RuntimeError, match="stop"):
        PF.prefill_cuda(*_dummy_args(), backend="auto")
    assert routed == [expected]


def test_pre_ampere_gpu_is_rejected(monkeypatch):
    from fa4_tq.kernels import prefill as PF
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    for backend in ("auto", "sm80"):
        with pytest.raises(NotImplementedError, match="needs compute capability >= 8.0"):
            PF.prefill_cuda(*_dummy_args(), backend=backend)
    with pytest.raises(NotImplementedError, match="needs a Hopper GPU"):
        PF.prefill_cuda(*_dummy_args(), backend="sm90")


def test_sm80_backend_rejects_head_dim_256_before_launch(monkeypatch):
    from fa4_tq.kernels import prefill as PF
    monkeypatch.setenv(PF.SM80_OPT_IN_ENV, "1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(PF, "_compile", lambda *a: pytest.fail("compiled"))
    with pytest.raises(NotImplementedError, match="backend='sm80' supports head_dim 64 and 128"):
        PF.prefill_cuda(*_dummy_args(d=256), backend="sm80")


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm80", "sm90"])
def test_dispatcher_compile_path_with_fake_cuda_tensors(arch):
    """The dispatcher's own compile call (``prefill._compile``, shared by both classes:
    to_cute_tensor of the real arguments, int16 norm views, None windows) compiles for the
    current target."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from fa4_tq.kernels import prefill as PF
    from fa4_tq.kernels import prefill_sm90 as P90
    mod, cls = (P, P.PrefillSm80) if arch == "sm80" else (P90, P90.PrefillSm90)
    cfg = mod.make_config(128, 4, 2, 4, True, False, False, False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        dev = "cuda"
        q = torch.empty(100, 8, 128, dtype=torch.bfloat16, device=dev)
        kc = torch.empty(10, 16, 2, 64, dtype=torch.uint8, device=dev)
        vc = torch.empty(10, 16, 2, 32, dtype=torch.uint8, device=dev)
        kn = torch.empty(10, 16, 2, dtype=torch.bfloat16, device=dev).view(torch.int16)
        vn = torch.empty(10, 16, 2, dtype=torch.bfloat16, device=dev).view(torch.int16)
        kcb, vcb = torch.empty(16, device=dev), torch.empty(4, device=dev)
        out, lse = torch.empty_like(q), torch.empty(8, 100, device=dev)
        cu = torch.empty(3, dtype=torch.int32, device=dev)
        su = torch.empty(2, dtype=torch.int32, device=dev)
        bt = torch.empty(2, 5, dtype=torch.int32, device=dev)
        fn = PF._compile(cls, cfg, (q, kc, vc, kn, vn, kcb, vcb, out, lse, 0.1, cu, su, bt,
                                    None, None))
    assert callable(fn)


def test_prmt_lut_knob():
    pl = P.make_config(128, 4, 4, 4, False, False, False, False, prmt_lut=True)
    assert pl.prmt_lut and not pl.k_register_lut and not pl.v_register_lut
    assert (pl.k_lut_replicas, pl.v_lut_replicas) == (32, 32) and pl.name.endswith("_pl")
    assert pl.smem_bytes() <= P.SM80_SMEM_CAPACITY
    assert not P.make_config(128, 4, 4, 4, False, False, False, False).prmt_lut  # opt-in
    k2 = P.make_config(128, 2, 2, 4, False, False, False, False, prmt_lut=True)
    assert (k2.k_lut_replicas, k2.v_lut_replicas) == (16, 16)  # 8-byte entries: 16 x 8 B
    with pytest.raises(NotImplementedError, match="prmt_lut"):
        P.make_config(128, 4, 4, 4, False, False, False, False, True, False, prmt_lut=True)
    with pytest.raises(NotImplementedError, match="smem"):  # K8V8: 169 KB > the A100's 163
        P.make_config(128, 8, 8, 4, False, False, False, False, prmt_lut=True)
