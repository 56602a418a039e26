import pytest
import torch

from quamba.errors import QuambaError
from quamba.quantization.weight_formats import (
    WeightFormat,
    as_weight_format,
    dequantize_int4_groupwise,
    dequantize_int8,
    dequantize_rows,
    dequantize_w4a8,
    dequantize_weight,
    pack_int4,
    quantize_int4_groupwise,
    quantize_int8,
    quantize_rows,
    quantize_w4a8,
    quantize_weight,
    unpack_int4,
    w4a8_int8_weight,
)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.double(), approx.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum())).item()


def _weight(n=37, k=256, dtype=torch.float32):
    w = torch.randn(n, k) * 0.02
    w[3, 5] = 0.5  # an outlier
    w[7] = -w[7].abs() * 10  # a strongly negative row
    return w.to(dtype)


# ------------------------------------------------------------------------------------------------ int8

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_per_channel(dtype):
    w = _weight(dtype=dtype)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (w.shape[0],)
    assert torch.allclose(s, w.float().abs().amax(1) / 127)
    assert q.abs().amax(1).eq(127).all()  # the absmax maps to +-127 exactly, nothing clips
    # error bounded by half a step
    err = (dequantize_int8(q, s) - w.float()).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()
    assert sqnr_db(w, dequantize_int8(q, s)) > 35


def test_int8_per_tensor_and_zero_rows():
    w = _weight()
    w[0] = 0
    q, s = quantize_int8(w, per_channel=False)
    assert s.shape == (1,) and torch.isclose(s, w.abs().max() / 127).all()
    assert torch.equal(q[0], torch.zeros_like(q[0]))
    q, s = quantize_int8(w)
    assert s[0] == pytest.approx(1 / 127) and torch.equal(q[0], torch.zeros_like(q[0]))
    assert torch.isfinite(dequantize_int8(q, s)).all()


def test_int8_matches_independent_formula():
    w = torch.randn(5, 16)
    q, s = quantize_int8(w)
    for n in range(5):
        step = w[n].abs().max().item() / 127
        expected = [max(-128, min(127, round(v / step))) for v in w[n].tolist()]
        assert q[n].tolist() == expected


# ------------------------------------------------------------------------------------------------ int4

@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_int4_groupwise(group_size):
    w = _weight()
    q, s = quantize_int4_groupwise(w, group_size)
    g = w.shape[1] if group_size == -1 else group_size
    assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7
    assert s.dtype == torch.float16 and s.shape == (w.shape[0], w.shape[1] // g)
    expected = (w.reshape(w.shape[0], -1, g).abs().amax(-1) / 7).half()
    assert torch.equal(s, expected)
    deq = dequantize_int4_groupwise(q, s)
    step = s.float().repeat_interleave(g, 1)
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    assert sqnr_db(w, deq) > 15


def test_int4_group_size_errors():
    w = torch.randn(4, 96)
    with pytest.raises(QuambaError, match=r"K=96 .*group_size=64"):
        quantize_int4_groupwise(w, 64)
    with pytest.raises(QuambaError, match="group_size"):
        quantize_int4_groupwise(w, 0)
    with pytest.raises(QuambaError, match="2-D"):
        quantize_int4_groupwise(torch.randn(96), 32)


def test_int4_zero_group_and_tiny_group():
    w = torch.randn(2, 64)
    w[0, :32] = 0
    w[1, :32] *= 1e-9  # absmax / 7 underflows fp16's normal range
    q, s = quantize_int4_groupwise(w, 32)
    assert (s > 0).all() and torch.isfinite(s).all()
    assert torch.equal(q[0, :32], torch.zeros(32, dtype=torch.int8))
    assert q.min() >= -8 and q.max() <= 7


# ------------------------------------------------------------------------------------------------ W4A8

@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_w4a8_two_level(group_size):
    w = _weight()
    q, gs, cs = quantize_w4a8(w, group_size)
    g = w.shape[1] if group_size == -1 else group_size
    assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7
    assert gs.dtype == torch.int8 and gs.shape == (w.shape[0], w.shape[1] // g)
    assert gs.min() >= 1 and gs.max() <= 16
    assert cs.dtype == torch.float32 and torch.allclose(cs, w.abs().amax(1) / 112)
    # the row holding the absmax uses the full range: its group scale is 16
    assert (gs.amax(1) == 16).all()
    w8 = w4a8_int8_weight(q, gs)
    assert w8.dtype == torch.int8 and w8.min() >= -128 and w8.max() <= 112
    assert torch.equal(w8.long(), q.long() * gs.long().repeat_interleave(g, 1))
    deq = dequantize_w4a8(q, gs, cs)
    # a step is at most group_scale * channel_scale; rounding error at most half of it
    step = gs.float().repeat_interleave(g, 1) * cs[:, None]
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    assert sqnr_db(w, deq) > 12


def test_w4a8_group_scale_formula():
    w = torch.randn(3, 64)
    q, gs, cs = quantize_w4a8(w, 16)
    w8 = w / cs[:, None]
    for n in range(3):
        for j in range(4):
            absmax = w8[n, 16 * j: 16 * (j + 1)].abs().max().item()
            scale = gs[n, j].item()
            # the smallest integer scale in [1, 16] that covers the group: no clipping, no wasted range
            assert 1 <= scale <= 16
            assert scale * 7 >= absmax - 1e-4
            assert scale == 1 or (scale - 1) * 7 < absmax + 1e-4


# ------------------------------------------------------------------------------------------------ rows

@pytest.mark.parametrize("bits,qmax", [(8, 127), (4, 7)])
def test_rows_use_absmax_not_signed_max(bits, qmax):
    w = torch.randn(10, 48)
    w[2] = -torch.rand(48) - 1.0  # all negative: the signed max would be negative / tiny
    q, s = quantize_rows(w, bits)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (10,)
    assert q.min() >= -qmax - 1 and q.max() <= qmax
    assert torch.equal(s, (w.abs().amax(1) / qmax).half())
    deq = dequantize_rows(q, s)
    assert ((deq - w).abs() <= s.float()[:, None] / 2 + 1e-3 * s.float()[:, None] + 1e-6).all()
    # the negative row keeps its large magnitudes (clipping would cap them)
    assert deq[2].min() < -1.0


def test_rows_bad_bits():
    with pytest.raises(QuambaError, match="bits"):
        quantize_rows(torch.randn(2, 4), 3)


# ------------------------------------------------------------------------------------------------ packing

def test_pack_all_sixteen_values_round_trip():
    values = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(values, values).to(torch.int8).reshape(1, -1)  # every (low, high) pair
    p = pack_int4(pairs)
    assert p.dtype == torch.uint8 and p.shape == (1, 256)
    assert torch.equal(unpack_int4(p), pairs)
    assert len(set(p.flatten().tolist())) == 256  # every byte value appears once


def test_pack_nibble_layout():
    p = pack_int4(torch.tensor([[1, 2, -1, -8, 7, 0]], dtype=torch.int8))
    # low nibble = element 2j, high nibble = element 2j+1, two's complement
    assert p.tolist() == [[0x21, 0x8F, 0x07]]


def test_pack_batch_dims_and_errors():
    q = torch.randint(-8, 8, (2, 3, 10), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    with pytest.raises(QuambaError, match="even"):
        pack_int4(torch.zeros(4, 7, dtype=torch.int8))
    with pytest.raises(QuambaError, match=r"\[-8, 7\]"):
        pack_int4(torch.full((2, 2), 8, dtype=torch.int8))
    with pytest.raises(QuambaError, match="int8"):
        pack_int4(torch.zeros(2, 2, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ by name

@pytest.mark.parametrize("fmt", ["int8", "int4", "w4a8", WeightFormat.W4A8])
def test_quantize_weight_by_name(fmt):
    w = _weight()
    out = quantize_weight(w, fmt, 64)
    assert len(out) == (2 if as_weight_format(fmt) != WeightFormat.W4A8 else 3)
    assert sqnr_db(w, dequantize_weight(fmt, out)) > 12
    with pytest.raises(QuambaError, match="unknown weight format 'int3'"):
        quantize_weight(w, "int3")
