import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops.w4_gemm import w4a8_accumulate_ref, w4a8_gemm_ref, w4a16_gemm_ref
from quamba.quantization.weight_formats import (
    dequantize_int4_groupwise,
    dequantize_w4a8,
    pack_int4,
    quantize_int4_groupwise,
    quantize_w4a8,
)

# (M, N, K, group_size): odd M and N, K a multiple of the group size, one group per row
SHAPES = [(1, 1, 32, 32), (7, 33, 64, 32), (13, 41, 256, 128), (5, 9, 96, -1), (3, 17, 384, 64)]


def _int4_weight(n, k, group_size):
    w = torch.randn(n, k) * 0.05
    return w, quantize_int4_groupwise(w, group_size)


def _int_acc_independent(x_q, q4, group_scales, group_size):
    """x_q @ (q4 * s_g)^T in int64, per group and by explicit broadcasting (no shared helper)."""
    k = x_q.shape[-1]
    g = k if group_size == -1 else group_size
    acc = torch.zeros(*x_q.shape[:-1], q4.shape[0], dtype=torch.int64)
    for j in range(k // g):
        cols = slice(j * g, (j + 1) * g)
        # [..., 1, G] * [N, G] -> [..., N]: a group's partial dot products, scaled by its integer scale
        part = (x_q[..., None, cols].long() * q4[:, cols].long()).sum(-1)
        acc += part * group_scales[:, j].long()
    return acc


# ------------------------------------------------------------------------------------------------ W4A16

@pytest.mark.parametrize("m,n,k,group_size", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-3, 2e-3),
                                             (torch.bfloat16, 1e-2, 1e-2)])
def test_w4a16_matches_dequantize_then_matmul(m, n, k, group_size, dtype, atol, rtol):
    _, (q, scales) = _int4_weight(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    y = w4a16_gemm_ref(x, pack_int4(q), scales, group_size, bias)
    expected = x.double() @ dequantize_int4_groupwise(q, scales).double().T + bias.double()
    assert y.dtype == dtype and y.shape == (m, n)
    assert torch.allclose(y.double(), expected, atol=atol, rtol=rtol)


def test_w4a16_batch_dims_and_fidelity():
    w, (q, scales) = _int4_weight(24, 128, 32)
    x = torch.randn(2, 3, 128)
    y = w4a16_gemm_ref(x, pack_int4(q), scales, 32)
    assert y.shape == (2, 3, 24)
    assert torch.allclose(y[1, 2], w4a16_gemm_ref(x[1, 2:3], pack_int4(q), scales, 32)[0])
    ref = x @ w.T
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum())
    assert sqnr > 15  # int4 per group of 32: about 20 dB on Gaussian weights


def test_w4a16_shape_errors():
    _, (q, scales) = _int4_weight(8, 96, 32)
    p = pack_int4(q)
    with pytest.raises(QuambaError, match=r"K=96 .*group_size=64"):
        w4a16_gemm_ref(torch.randn(2, 96), p, scales, 64)
    with pytest.raises(QuambaError, match="K=64"):
        w4a16_gemm_ref(torch.randn(2, 64), p, scales, 32)
    with pytest.raises(QuambaError, match="scales must have shape"):
        w4a16_gemm_ref(torch.randn(2, 96), p, scales[:, :2], 32)
    with pytest.raises(QuambaError, match="bias"):
        w4a16_gemm_ref(torch.randn(2, 96), p, scales, 32, bias=torch.zeros(7))


# ------------------------------------------------------------------------------------------------ W4A8

@pytest.mark.parametrize("m,n,k,group_size", SHAPES)
def test_w4a8_accumulation_is_exact(m, n, k, group_size):
    w = torch.randn(n, k)
    q4, gs, _ = quantize_w4a8(w, group_size)
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    acc = w4a8_accumulate_ref(x_q, pack_int4(q4), gs, group_size)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc.long(), _int_acc_independent(x_q, q4, gs, group_size))


def test_w4a8_accumulation_extremes_are_exact():
    # every product at its extreme (-128 * -128) over a long K: large sums must stay exact
    k, g = 8192, 128
    x_q = torch.full((2, k), -128, dtype=torch.int8)
    q4 = torch.full((3, k), -8, dtype=torch.int8)
    gs = torch.full((3, k // g), 16, dtype=torch.int8)
    acc = w4a8_accumulate_ref(x_q, pack_int4(q4), gs, g)
    assert (acc.long() == k * 128 * 128).all()  # 2^27, far beyond fp32's exact integers


def test_w4a8_gemm_epilogue_and_fidelity():
    m, n, k, g = 9, 31, 256, 64
    w = torch.randn(n, k) * 0.05
    x = torch.randn(m, k)
    x_scale = x.abs().max() / 127
    x_q = torch.round(x / x_scale).clamp(-128, 127).to(torch.int8)
    q4, gs, cs = quantize_w4a8(w, g)
    bias = torch.randn(n)
    y = w4a8_gemm_ref(x_q, x_scale, pack_int4(q4), gs, cs, g, bias, out_dtype=torch.float32)
    # the epilogue as specified
    acc = _int_acc_independent(x_q, q4, gs, g)
    assert torch.allclose(y, acc.float() * x_scale * cs + bias, rtol=1e-6, atol=1e-6)
    # and the same numbers as dequantize-then-matmul in float64
    expected = (x_q.double() * x_scale.double()) @ dequantize_w4a8(q4, gs, cs).double().T + bias.double()
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5)
    # close to the float layer
    ref = x @ w.T + bias
    assert 10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum()) > 12


def test_w4a8_out_dtype_batch_dims_and_float_scale():
    n, k, g = 5, 64, 32
    q4, gs, cs = quantize_w4a8(torch.randn(n, k), g)
    x_q = torch.randint(-128, 128, (2, 3, k), dtype=torch.int8)
    y16 = w4a8_gemm_ref(x_q, 0.01, pack_int4(q4), gs, cs, g)
    assert y16.dtype == torch.float16 and y16.shape == (2, 3, n)
    ybf = w4a8_gemm_ref(x_q, torch.tensor([0.01]), pack_int4(q4), gs, cs, g, out_dtype=torch.bfloat16)
    assert ybf.dtype == torch.bfloat16
    assert torch.allclose(y16.float(), ybf.float(), rtol=2e-2, atol=1e-2)


def test_w4a8_errors():
    n, k, g = 4, 96, 32
    q4, gs, cs = quantize_w4a8(torch.randn(n, k), g)
    p = pack_int4(q4)
    x_q = torch.zeros(2, k, dtype=torch.int8)
    with pytest.raises(QuambaError, match=r"K=96 .*group_size=64"):
        w4a8_gemm_ref(x_q, 1.0, p, gs, cs, 64)
    with pytest.raises(QuambaError, match="int8"):
        w4a8_gemm_ref(x_q.float(), 1.0, p, gs, cs, g)
    with pytest.raises(QuambaError, match="channel_scales"):
        w4a8_gemm_ref(x_q, 1.0, p, gs, cs[:2], g)
    with pytest.raises(QuambaError, match="x_scale"):
        w4a8_gemm_ref(x_q, torch.ones(2), p, gs, cs, g)
