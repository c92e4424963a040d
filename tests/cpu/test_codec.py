"""Codec: codebooks, rotation, packing, quantization (format v1)."""

import math

import pytest
import torch

from fa4_tq.codec import (TQCodec, check_codebook, codebook_thresholds, default_codebook, fwht,
                          lloyd_max_gaussian, pack_codes, rademacher_signs, rotate, unpack_codes,
                          unrotate)
from fa4_tq.codec.quantizer import nearest_codes, quantize

# Lloyd-Max distortion of N(0,1), ../shared/docs/quality.md
GAUSS_MSE = {2: 0.117482, 4: 0.00950101, 8: 4.11851e-5}
# Full codec (norm-corrected, bf16 norms) on random unit vectors at D=64, same document
UNIT_D64_REL = {2: -0.008, 4: -0.066, 8: -0.041}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lloyd_max_table(bits):
    c, mse = lloyd_max_gaussian(bits)
    assert c.shape == (2 ** bits,)
    assert (c[1:] > c[:-1]).all()
    assert abs(c + c[::-1]).max() < 1e-12  # symmetric
    assert mse == pytest.approx(GAUSS_MSE[bits], rel=2e-5)
    # a fixed point of Lloyd's condition: each centroid is its cell's conditional mean
    cb = default_codebook(bits, 128)
    assert cb.dtype == torch.float32 and cb.shape == (2 ** bits,)
    assert check_codebook(cb) == bits


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gaussian_distortion_matches_lloyd_max(bits):
    """i.i.d. Gaussian vectors (coords N(0,1/D)), rotated, each coordinate quantized to the
    nearest centroid: the MSE is the Lloyd-Max distortion within 0.5%."""
    d = 128
    g = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(60000, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    signs = rademacher_signs(d, 7, 0)
    y = rotate(x, signs.double())
    cb = default_codebook(bits, d)
    codes = nearest_codes(y.float(), cb)
    yq = cb.double()[codes.long()]
    mse = float((y - yq).square().sum(-1).mean() / x.square().sum(-1).mean())
    assert mse == pytest.approx(GAUSS_MSE[bits], rel=5e-3)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unit_vector_distortion(d, bits):
    """The full codec (norm correction, bf16 norms) on random unit vectors: lighter tails than a
    Gaussian give a lower MSE; norm correction adds ~mse²/4 (relative mse/4)."""
    g = torch.Generator().manual_seed(bits * 1000 + d)
    x = torch.randn(40000, d, generator=g)
    x = x / x.norm(dim=-1, keepdim=True)
    codec = TQCodec(d, bits, bits, seed=11)
    packed, norm = codec.quantize(x, "k")
    xh = codec.dequantize(packed, norm, "k", dtype=torch.float64)
    mse = float((x.double() - xh).square().sum(-1).mean())
    table = GAUSS_MSE[bits]
    assert mse <= table * (1 + table / 4) * 1.005
    if d == 64:  # the measured values of quality.md, to 0.5 percentage points
        assert mse / table - 1 == pytest.approx(UNIT_D64_REL[bits], abs=5e-3)


def test_fwht_is_sylvester_hadamard():
    for d in (64, 128, 256):
        h = fwht(torch.eye(d, dtype=torch.float64))
        h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        ref = h2
        while ref.shape[0] < d:
            ref = torch.kron(h2, ref)
        assert torch.equal(h, ref)


def test_signs_are_seeded_and_independent():
    a = rademacher_signs(128, 0, 0)
    assert torch.equal(a, rademacher_signs(128, 0, 0))
    assert set(a.tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, rademacher_signs(128, 0, 1))  # K and V differ
    assert not torch.equal(a, rademacher_signs(128, 1, 0))
    # golden values: the generator is part of the format
    assert rademacher_signs(64, 0, 0)[:8].tolist() == GOLDEN_SIGNS_SEED0_K
    with pytest.raises(ValueError, match="head_dim"):
        rademacher_signs(96, 0, 0)


# splitmix64(0) starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f,
# 0xf88bb8a8724c81ec, 0x1b39896a51a8749b (the published reference sequence): bit 63 -> -1.
GOLDEN_SIGNS_SEED0_K = [-1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0]


@pytest.mark.parametrize("d", [64, 128, 256])
def test_rotation_orthogonal_and_invertible(d):
    s = rademacher_signs(d, 3, 1).double()
    x = torch.randn(50, d, dtype=torch.float64)
    y = rotate(x, s)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert torch.allclose(unrotate(y, s), x, atol=1e-12)
    q = torch.randn(50, d, dtype=torch.float64)
    assert torch.allclose((rotate(q, s) * y).sum(-1), (q * x).sum(-1), atol=1e-10)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_roundtrip(bits):
    codes = torch.randint(0, 2 ** bits, (3, 5, 128), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 5, 128 * bits // 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack_codes(packed, bits), codes)


def test_pack_is_lsb_first():
    c = torch.tensor([1, 2, 3, 0, 2, 1, 0, 3], dtype=torch.uint8)
    assert pack_codes(c, 2).tolist() == [1 | 2 << 2 | 3 << 4, 2 | 1 << 2 | 0 << 4 | 3 << 6]
    c4 = torch.tensor([0x3, 0xA, 0xF, 0x1], dtype=torch.uint8)
    assert pack_codes(c4, 4).tolist() == [0xA3, 0x1F]
    with pytest.raises(ValueError):
        pack_codes(torch.zeros(5, dtype=torch.uint8), 2)
    with pytest.raises(TypeError):
        pack_codes(torch.zeros(4, dtype=torch.int32), 2)


def test_ties_go_to_lower_code():
    cb = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    t = codebook_thresholds(cb)  # [-2, 0, 2]
    y = torch.tensor([[-2.0, 0.0, 2.0, -2.5, 0.5, 9.0, -9.0]])
    assert nearest_codes(y, cb).tolist() == [[0, 1, 2, 0, 2, 3, 0]]
    assert t.tolist() == [-2.0, 0.0, 2.0]


def test_quantize_matches_spec_and_zero_vector():
    d = 64
    codec = TQCodec(d, 4, 2, seed=5)
    x = torch.randn(10, d, dtype=torch.bfloat16)
    codes, norm = quantize(x, codec.k_signs, codec.k_codebook)
    y = rotate(x.float(), codec.k_signs)
    n = y.double().square().sum(-1).sqrt().float()
    assert torch.equal(codes, nearest_codes(y, codec.k_codebook, n))
    c = codec.k_codebook.double()[codes.long()]
    r = (n.double() / c.square().sum(-1).sqrt()).float().to(torch.bfloat16)
    assert torch.equal(norm, r)
    # the dequantized vector has the input's norm up to bf16 rounding
    xh = codec.dequantize(pack_codes(codes, 4), norm, "k")
    assert torch.allclose(xh.norm(dim=-1), x.float().norm(dim=-1), rtol=8e-3)
    zc, zn = quantize(torch.zeros(2, d), codec.k_signs, codec.k_codebook)
    assert zn.float().abs().max() == 0


def test_custom_codebook():
    d = 128
    cb = torch.linspace(-0.3, 0.3, 16, dtype=torch.float32)
    codec = TQCodec(d, 4, 4, k_codebook=cb)
    x = torch.randn(100, d)
    p, n = codec.quantize(x, "k")
    xh = codec.dequantize(p, n, "k", rotated=True)
    y = rotate(x, codec.k_signs)
    codes = unpack_codes(p, 4)
    # every coordinate decodes to a member of the custom table (times its norm)
    assert torch.allclose(xh / n.float().unsqueeze(-1), cb[codes.long()])
    # nearest: no other centroid is closer to y / (norm scale) than the chosen one
    scale = y.norm(dim=-1, keepdim=True)
    dist = ((y / scale).unsqueeze(-1) - cb).abs()
    assert torch.all(dist.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
                     <= dist.min(-1).values + 1e-6)


@pytest.mark.parametrize("bad,err", [
    (torch.tensor([0.0, 1.0, 2.0]), ValueError),  # 3 entries
    (torch.tensor([1.0, 0.0, 2.0, 3.0]), ValueError),  # not increasing
    (torch.tensor([0.0, 1.0, 2.0, float("inf")]), ValueError),
    (torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), TypeError),
    (torch.zeros(2, 2), ValueError),
])
def test_bad_codebooks(bad, err):
    with pytest.raises(err):
        check_codebook(bad)


def test_codec_rejects_bad_config():
    with pytest.raises(ValueError, match="head_dim"):
        TQCodec(96)
    with pytest.raises(ValueError, match="k_bits"):
        TQCodec(128, 3, 4)
    with pytest.raises(ValueError, match="k_codebook"):
        TQCodec(128, 2, 4, k_codebook=torch.linspace(-1, 1, 16))
