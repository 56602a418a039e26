"""Triton causal conv1d (prefill + update) against the references, and the dispatch switches.

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers are NaN-poisoned so that an unwritten element fails the test.
"""
import pytest
import torch

import quamba.ops.triton as qt
from quamba.errors import QuambaError
from quamba.ops import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

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
