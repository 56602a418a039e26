import pytest
import torch

from quamba.errors import QuambaError
from quamba.quantization.gptq import HessianAccumulator, gptq_quantize
from quamba.quantization.weight_formats import dequantize_int8, dequantize_weight, quantize_int8, quantize_weight

FORMATS = ["int8", "int4", "w4a8"]


def _correlated_layer(n, k, samples, seed=0):
    """Weights [n, k] and inputs [samples, k] = z @ M: correlated features with a spread of scales."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(k, k, generator=gen) / k ** 0.5 * torch.logspace(0, -2, k)[:, None]
    x = torch.randn(samples, k, generator=gen) @ m + 0.1 * torch.randn(1, k, generator=gen)
    w = 0.05 * torch.randn(n, k, generator=gen)
    return w, x


def _hessian(x, dtype=torch.float64):
    acc = HessianAccumulator(x.shape[-1], dtype=dtype)
    for chunk in x.split(100):
        acc.add_batch(chunk)
    return acc.hessian


def _output_error(x, w, w_hat):
    ref = x.double() @ w.double().T
    return ((x.double() @ w_hat.double().T - ref).norm() / ref.norm()).item()


# ------------------------------------------------------------------------------------------------ Hessian

def test_hessian_accumulator_is_running_average():
    x = torch.randn(3, 70, 16)
    acc = HessianAccumulator(16, dtype=torch.float64)
    acc.add_batch(x[0])
    acc.add_batch(x[1:])  # leading dims are samples
    acc.add_batch(torch.zeros(0, 16))  # an empty batch changes nothing
    flat = x.reshape(-1, 16).double()
    assert acc.nsamples == 210
    assert torch.allclose(acc.hessian, 2 / 210 * flat.T @ flat, atol=1e-12)
    with pytest.raises(QuambaError, match="16 features"):
        acc.add_batch(torch.randn(4, 15))


def test_hessian_fp32_stays_accurate_over_many_batches():
    x = torch.randn(200, 8, 32) + 3.0
    acc = HessianAccumulator(32)  # fp32 default
    for batch in x:
        acc.add_batch(batch)
    flat = x.reshape(-1, 32).double()
    assert acc.hessian.dtype == torch.float32
    assert torch.allclose(acc.hessian.double(), 2 / flat.shape[0] * flat.T @ flat, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ quality

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest(fmt, act_order):
    w, x = _correlated_layer(n=32, k=128, samples=384)
    h = _hessian(x)
    rtn = _output_error(x, w, dequantize_weight(fmt, quantize_weight(w, fmt, 32)))
    out = gptq_quantize(w, h, fmt, group_size=32, act_order=act_order)
    gptq = _output_error(x, w, dequantize_weight(fmt, out))
    assert gptq < 0.6 * rtn, (fmt, act_order, gptq, rtn)  # measured 0.41-0.46 (0.36-0.40 with act_order)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
def test_gptq_results_are_valid_format_values(fmt, act_order, group_size):
    w, x = _correlated_layer(n=20, k=128, samples=300)
    out = gptq_quantize(w, _hessian(x), fmt, group_size=group_size, act_order=act_order)
    rtn = quantize_weight(w, fmt, group_size)
    # the same structure as the round-to-nearest quantizer: count, shapes and dtypes
    assert [(t.shape, t.dtype) for t in out] == [(t.shape, t.dtype) for t in rtn]
    q = out[0]
    lo, hi = (-128, 127) if fmt == "int8" else (-8, 7)
    assert q.min() >= lo and q.max() <= hi
    assert all((s > 0).all() for s in out[1:])
    if fmt == "w4a8":
        assert out[1].max() <= 16
        # channel scales are fixed from the original weights
        assert torch.equal(out[2], rtn[2])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_uncorrelated_unit_hessian_is_round_to_nearest(fmt, act_order):
    # H = I: no error is propagated (the inverse is diagonal), so GPTQ must reproduce RTN exactly
    w = torch.randn(16, 128) * 0.05
    out = gptq_quantize(w, torch.eye(128), fmt, group_size=32, act_order=act_order)
    rtn = quantize_weight(w, fmt, 32)
    for a, b in zip(out, rtn):
        assert torch.equal(a, b)


def test_gptq_int8_per_tensor():
    w, x = _correlated_layer(n=32, k=128, samples=384)
    q, scale = gptq_quantize(w, _hessian(x), "int8", per_channel=False)
    q_rtn, scale_rtn = quantize_int8(w, per_channel=False)
    assert scale.shape == (1,) and torch.equal(scale, scale_rtn)
    assert q.dtype == torch.int8
    gptq = _output_error(x, w, dequantize_int8(q, scale))
    assert gptq < 0.6 * _output_error(x, w, dequantize_int8(q_rtn, scale_rtn))
    # H = I reproduces round-to-nearest
    assert torch.equal(gptq_quantize(w, torch.eye(128), "int8", per_channel=False)[0], q_rtn)
    with pytest.raises(QuambaError, match="int8 only"):
        gptq_quantize(w, torch.eye(128), "int4", group_size=32, per_channel=False)


def test_gptq_matches_a_naive_sequential_implementation():
    # optimal-brain-surgeon updates with the explicit inverse of the remaining Hessian, one column at a time
    w, x = _correlated_layer(n=6, k=24, samples=200)
    h = _hessian(x)
    q, scale = gptq_quantize(w, h, "int8", block_size=5)  # odd block size: several partial blocks

    hd = h + 0.01 * torch.diag(h).mean() * torch.eye(24, dtype=torch.float64)
    wk = w.double().clone()
    step = scale.double()[:, None]
    expected = torch.zeros(6, 24, dtype=torch.int64)
    for i in range(24):
        rest = list(range(i, 24))
        hinv = torch.linalg.inv(hd[rest][:, rest])
        qi = torch.round(wk[:, i:i + 1] / step).clamp(-128, 127)
        expected[:, i] = qi[:, 0].long()
        err = (wk[:, i:i + 1] - qi * step) / hinv[0, 0]
        wk[:, i:] -= err * hinv[0:1, :]
    assert torch.equal(q.long(), expected)


def test_gptq_block_size_does_not_change_the_result():
    w, x = _correlated_layer(n=16, k=128, samples=300)
    h = _hessian(x)
    for fmt in FORMATS:
        a = gptq_quantize(w, h, fmt, group_size=32, block_size=128)
        b = gptq_quantize(w, h, fmt, group_size=32, block_size=7)  # rounded up to whole groups
        mismatch = (a[0] != b[0]).float().mean().item()
        assert mismatch < 1e-3, (fmt, mismatch)  # only float-summation ties may differ


def test_gptq_deterministic_and_handles_dead_inputs():
    w, x = _correlated_layer(n=16, k=128, samples=300)
    x[:, [3, 70]] = 0  # two inputs never fire
    h = _hessian(x, torch.float32)
    a = gptq_quantize(w, h, "int4", group_size=32, act_order=True)
    b = gptq_quantize(w, h, "int4", group_size=32, act_order=True)
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert (a[0][:, [3, 70]] == 0).all()
    assert all(torch.isfinite(t.float()).all() for t in a)
    assert _output_error(x, w, dequantize_weight("int4", a)) < 0.1


def test_gptq_argument_errors():
    w = torch.randn(4, 96)
    with pytest.raises(QuambaError, match=r"shape \(96, 96\)"):
        gptq_quantize(w, torch.eye(64), "int4", group_size=32)
    with pytest.raises(QuambaError, match=r"K=96 .*group_size=64"):
        gptq_quantize(w, torch.eye(96), "int4", group_size=64)
    with pytest.raises(QuambaError, match="unknown weight format"):
        gptq_quantize(w, torch.eye(96), "int2")
    with pytest.raises(QuambaError, match="positive definite"):
        gptq_quantize(w, -torch.eye(96), "int8", damp=0.0)
