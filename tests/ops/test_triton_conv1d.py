"""Triton causal conv1d (prefill + update), full precision and int8, against the references, and the dispatch
switches.

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers are NaN-poisoned so that an unwritten element fails the test.
"""
import pytest
import torch

import quamba.ops.triton as qt
from quamba.errors import QuambaError
from quamba.ops import (causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref,
                        qcausal_conv1d, qcausal_conv1d_ref, qcausal_conv1d_update, qcausal_conv1d_update_ref)
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]


@pytest.fixture(autouse=True)
def _kernels_not_forced_off(monkeypatch):
    """These tests are about the kernels: a QUAMBA_FORCE_REFERENCE=1 in the environment must not turn them into
    reference-vs-reference comparisons (the tests that check the switch set it themselves)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)


# (dtype, bound on the norm-wise relative error vs the reference): the arithmetic is the same fp32,
# so only the last rounding of the output differs.
DTYPES = [(torch.float32, 1e-5)] + ([(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d, _ in DTYPES]


def _randn(*shape, dtype=torch.float32, channels_last=False):
    """[B, D, L] either contiguous or, as the models pass it, a transposed view of [B, L, D]."""
    if channels_last:
        b, d, l = shape
        return torch.randn(b, l, d, device=DEVICE).to(dtype).transpose(1, 2)
    return torch.randn(*shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k,with_bias,with_state,channels_last", [
    (2, True, True, False), (3, False, True, True), (4, True, True, True), (4, False, False, False),
    (3, True, False, True),
])
def test_prefill_matches_reference(poisoned, dtype, bound, k, with_bias, with_state, channels_last):
    b, d, length = 2, 37, 45  # not multiples of the 64 / 16 tiles
    x = _randn(b, d, length, dtype=dtype, channels_last=channels_last)
    w = torch.randn(d, k, device=DEVICE).to(dtype)
    bias = torch.randn(d, device=DEVICE).to(dtype) if with_bias else None
    state = torch.randn(b, d, k, device=DEVICE).to(dtype) if with_state else None
    y, final = causal_conv1d(x, w, bias, state, return_final_state=True)
    y_ref, final_ref = causal_conv1d_ref(x, w, bias, state, return_final_state=True)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and final.dtype == final_ref.dtype
    assert rel_err(y, y_ref) < bound
    assert torch.equal(final, final_ref)  # a copy of inputs: exact


@pytest.mark.parametrize("length", [1, 3])
def test_short_sequence_and_no_activation(poisoned, length):
    """Sequences shorter than K take part of the state from initial_state; activation None is linear."""
    x, w = _randn(2, 5, length), torch.randn(5, 4, device=DEVICE)
    state = torch.randn(2, 5, 4, device=DEVICE)
    y, final = causal_conv1d(x, w, None, state, activation=None, return_final_state=True)
    y_ref, final_ref = causal_conv1d_ref(x, w, None, state, activation=None, return_final_state=True)
    assert rel_err(y, y_ref) < 1e-5 and torch.equal(final, final_ref)
    assert torch.equal(final[..., -length:], x)


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k,with_bias", [(2, True), (3, False), (4, True)])
def test_update_matches_reference(poisoned, dtype, bound, k, with_bias):
    b, d = 3, 70
    x = torch.randn(b, d, device=DEVICE).to(dtype)
    w = torch.randn(d, k, device=DEVICE).to(dtype)
    bias = torch.randn(d, device=DEVICE).to(dtype) if with_bias else None
    state = torch.randn(b, d, k, device=DEVICE).to(dtype)
    state_ref = state.clone()
    y = causal_conv1d_update(x, state, w, bias)
    y_ref = causal_conv1d_update_ref(x, state_ref, w, bias)
    assert y.dtype == y_ref.dtype and rel_err(y, y_ref) < bound
    assert torch.equal(state, state_ref)


def test_prefill_then_steps_equals_full_prefill(poisoned):
    x, w, bias = _randn(2, 9, 12, channels_last=True), torch.randn(9, 4, device=DEVICE), torch.randn(9, device=DEVICE)
    y_full = causal_conv1d(x, w, bias)
    y_head, state = causal_conv1d(x[..., :7], w, bias, return_final_state=True)
    steps = [causal_conv1d_update(x[..., t], state, w, bias) for t in range(7, 12)]
    assert rel_err(torch.cat([y_head, torch.stack(steps, -1)], -1), y_full) < 1e-5
    assert torch.equal(state, x[..., -4:])


def test_bad_width_is_a_user_error():
    with pytest.raises(QuambaError, match="conv width"):
        causal_conv1d(_randn(1, 4, 8), torch.randn(4, 5, device=DEVICE))


def test_force_reference_switch(monkeypatch):
    """QUAMBA_FORCE_REFERENCE=1 skips the kernel; without it the kernel runs (its launcher is called)."""
    import quamba.ops.triton.conv1d as kernels

    calls = []
    launch = kernels._causal_conv1d_launch
    monkeypatch.setattr(kernels, "_causal_conv1d_launch", lambda *a: calls.append(1) or launch(*a))
    x, w = _randn(1, 4, 8), torch.randn(4, 3, device=DEVICE)
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    y_forced = causal_conv1d(x, w)
    assert calls == []
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    y = causal_conv1d(x, w)
    assert calls == [1] and rel_err(y, y_forced) < 1e-5


def test_autograd_inputs_take_the_differentiable_reference():
    x = _randn(1, 4, 8).requires_grad_()
    if ON_GPU:  # silently slow would spoil GPU timings: it says so
        with pytest.warns(UserWarning, match="inference_mode"):
            assert not qt.use_triton(x)
    else:
        assert not qt.use_triton(x)
    with torch.no_grad():
        assert qt.use_triton(x)
    causal_conv1d(x, torch.randn(4, 3, device=DEVICE)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_cpu_takes_the_reference_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not qt.use_triton(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert qt.use_triton(torch.zeros(1))


# ---------------------------------------------------------------------------------------------- int8 conv

# An int8 output may differ from the reference by one step where SiLU's value lies within an ulp or two
# of a rounding tie (exp differs between libraries); on at most this fraction of the elements.
MAX_OFF_BY_ONE = 2e-3


@pytest.fixture
def poisoned_int8(poisoned, monkeypatch):
    """Also fill every int8 torch.empty with 85, a value the random outputs rarely take, so that an
    element the kernel does not write fails the comparison with the reference."""
    empty = torch.empty

    def fill(*a, **k):
        t = empty(*a, **k)
        return t.fill_(85) if t.dtype == torch.int8 else t

    monkeypatch.setattr(torch, "empty", fill)


def _rand_q(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEVICE)


def _in_proj_slice(b, d, length, offset=3, extra=11):
    """x_q [B, D, L] as the mixers pass it: the transpose of a channel slice of in_proj's [B, L, N] output."""
    out = _rand_q(b, length, offset + d + extra)
    return out[..., offset:offset + d].transpose(1, 2)


def _qconv_params(d, k, with_bias=True):
    """(weight_q, weight_scale, input_scale, out_scale, bias) with outputs spread over the int8 range."""
    weight_q = _rand_q(d, k)
    weight_scale = torch.tensor(0.004, device=DEVICE)
    input_scale = torch.rand(d, device=DEVICE) * 0.02 + 0.01
    out_scale = torch.rand(d, device=DEVICE) * 0.05 + 0.02  # some outputs clip at 127
    bias = torch.randn(d, device=DEVICE) if with_bias else None
    return weight_q, weight_scale, input_scale, out_scale, bias


def _assert_int8_close(y, y_ref):
    assert y.dtype == torch.int8 and y.shape == y_ref.shape
    diff = (y.int() - y_ref.int()).abs()
    assert diff.max() <= 1, f"int8 outputs differ by {diff.max().item()} steps"
    assert (diff > 0).float().mean() <= MAX_OFF_BY_ONE


@pytest.mark.parametrize("b,d,length,k,with_bias,with_state", [
    (2, 37, 45, 4, True, True), (2, 70, 45, 3, False, True), (1, 37, 33, 2, True, False),
    (3, 16, 5, 4, True, False), (2, 9, 2, 4, False, True),  # a sequence shorter than the conv
])
def test_qconv_prefill_matches_reference(poisoned_int8, b, d, length, k, with_bias, with_state):
    x_q = _in_proj_slice(b, d, length)
    params = _qconv_params(d, k, with_bias)
    state = _rand_q(b, d, k) if with_state else None
    y, final = qcausal_conv1d(x_q, *params, state, return_final_state=True)
    y_ref, final_ref = qcausal_conv1d_ref(x_q, *params, state, return_final_state=True)
    _assert_int8_close(y, y_ref)
    assert torch.equal(final, final_ref)  # a copy of inputs: exact
    assert y.transpose(1, 2).is_contiguous()  # channels-last: x_proj / the scan read it without a copy
    assert torch.equal(qcausal_conv1d(x_q, *params, state), y)  # without the state: the same y


@requires_triton
@pytest.mark.parametrize("tap_major", [False, True])
def test_qconv_broadcast_channel_loads_give_the_same_bits(poisoned_int8, tap_major):
    """The BCAST variant (per-channel weights and scales loaded as broadcasts in the tile's layout, being timed)
    computes the same integers and the same epilogue: the default launch's bytes, whatever the weight's strides."""
    from quamba.ops.triton.conv1d import _qcausal_conv1d_launch

    b, d, length, k = 2, 37, 21, 4
    x_q = _in_proj_slice(b, d, length)
    weight_q, *scales = _qconv_params(d, k)
    if tap_major:  # [D, K] with strides (1, D): a [K, D] tensor's transpose
        weight_q = weight_q.t().contiguous().t()
    state = _rand_q(b, d, k)
    y, final = _qcausal_conv1d_launch(x_q, weight_q, *scales, state, True)
    y_b, final_b = _qcausal_conv1d_launch(x_q, weight_q, *scales, state, True, bcast=True, block_d=16, block_l=8)
    assert torch.equal(y_b, y) and torch.equal(final_b, final)
    _assert_int8_close(y_b, qcausal_conv1d_ref(x_q, weight_q, *scales, state))


def test_qconv_accumulates_exactly():
    """Extreme inputs: K products of -128 * -128 sum to K * 2^14 = 2^16, beyond int16; with the scale 2^-14
    the expected outputs are known in closed form, so a narrow or lossy accumulator would show."""
    d, k = 8, 4
    x_q = torch.full((1, d, 6), -128, dtype=torch.int8, device=DEVICE)
    weight_q = torch.full((d, k), -128, dtype=torch.int8, device=DEVICE)
    ws, in_scale = torch.tensor(2.0 ** -8, device=DEVICE), torch.full((d,), 2.0 ** -6, device=DEVICE)
    out_scale = torch.full((d,), 2.0 ** -3, device=DEVICE)
    y = qcausal_conv1d(x_q, weight_q, ws, in_scale, out_scale)
    y_ref = qcausal_conv1d_ref(x_q, weight_q, ws, in_scale, out_scale)
    assert torch.equal(y, y_ref)
    # position 3 sees all four taps: acc = 4 * 2^14 -> y = 4.0, silu(4) / 2^-3 = 31.43 -> 31
    assert y[0, 0, 3].item() == 31 and y[0, 0, 0].item() == 6  # one tap: silu(1) / 2^-3 = 5.85 -> 6


@pytest.mark.parametrize("k,with_bias", [(2, True), (3, False), (4, True)])
def test_qconv_update_matches_reference(poisoned_int8, k, with_bias):
    b, d = 3, 70
    x_q = _rand_q(b, d + 20)[:, 5:5 + d]  # a strided slice of in_proj's output, as in the mixers' step
    params = _qconv_params(d, k, with_bias)
    state = _rand_q(b, d, k)
    state_ref = state.clone()
    y = qcausal_conv1d_update(x_q, state, *params)
    y_ref = qcausal_conv1d_update_ref(x_q, state_ref, *params)
    _assert_int8_close(y, y_ref)
    assert torch.equal(state, state_ref)


def test_qconv_prefill_then_steps_equals_full_prefill(poisoned_int8):
    """The kernels share the arithmetic, so decoding token by token reproduces the prefill exactly."""
    b, d, length, k = 2, 21, 12, 4
    x_q = _in_proj_slice(b, d, length)
    params = _qconv_params(d, k)
    y_full = qcausal_conv1d(x_q, *params)
    y_head, state = qcausal_conv1d(x_q[..., :7], *params, return_final_state=True)
    steps = [qcausal_conv1d_update(x_q[..., t], state, *params) for t in range(7, length)]
    assert torch.equal(torch.cat([y_head, torch.stack(steps, -1)], -1), y_full)
    assert torch.equal(state, x_q[..., -k:])


def test_qconv_checks_dtypes():
    with pytest.raises(QuambaError, match="int8"):
        qcausal_conv1d(_randn(1, 4, 8), *_qconv_params(4, 4))
    with pytest.raises(QuambaError, match="conv width"):
        qcausal_conv1d(_rand_q(1, 4, 8), *_qconv_params(4, 5))


def test_qconv_force_reference_switch(monkeypatch):
    import quamba.ops.triton.conv1d as kernels

    calls = []
    launch = kernels._qcausal_conv1d_update_launch
    monkeypatch.setattr(kernels, "_qcausal_conv1d_update_launch", lambda *a: calls.append(1) or launch(*a))
    x_q, params = _rand_q(2, 6), _qconv_params(6, 4)
    state = _rand_q(2, 6, 4)
    state_forced = state.clone()
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    y_forced = qcausal_conv1d_update(x_q, state_forced, *params)
    assert calls == []
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    y = qcausal_conv1d_update(x_q, state, *params)
    assert calls == [1] and torch.equal(state, state_forced)
    _assert_int8_close(y, y_forced)
