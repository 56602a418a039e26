"""Triton selective scan (Mamba1 prefill + state update) against the references.

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers are NaN-poisoned so that an unwritten element fails the test.
"""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import selective_scan, selective_scan_ref, selective_state_update, selective_state_update_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

# (dtype, bound on y's norm-wise relative error vs the reference): the state is fp32 in both; they
# differ by the order of the N-sum and the last rounding of y. The final state is fp32: 1e-5.
DTYPES = [(torch.float32, 1e-5)] + ([(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d, _ in DTYPES]
STATE_BOUND = 1e-5


def _scan_inputs(b, d, n, length, dtype, channels_last):
    """u, delta, z [B, D, L] (contiguous, or transposed views of [B, L, D] as in the model), B, C [B, N, L]."""
    def seq(rows):
        if channels_last:
            return torch.randn(b, length, rows, device=DEVICE).to(dtype).transpose(1, 2)
        return torch.randn(b, rows, length, device=DEVICE).to(dtype)

    return dict(u=seq(d), delta=seq(d), z=seq(d), B=seq(n), C=seq(n),
                A=-(torch.rand(d, n, device=DEVICE) + 0.1), D=torch.randn(d, device=DEVICE).to(dtype),
                delta_bias=torch.randn(d, device=DEVICE).to(dtype))


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_d,with_z,softplus_bias,with_init,channels_last", [
    (True, True, True, True, True),
    (True, True, True, False, False),
    (False, False, False, False, True),
    (True, False, True, True, False),
])
def test_scan_matches_reference(poisoned, dtype, bound, with_d, with_z, softplus_bias, with_init, channels_last):
    b, d, n, length = 2, 37, 6, 19  # D and N not multiples of the channel / state tiles
    a = _scan_inputs(b, d, n, length, dtype, channels_last)
    if not softplus_bias:
        a["delta"] = a["delta"].abs() * 0.5  # raw dt must stay positive to be a decay
    kw = dict(D=a["D"] if with_d else None, z=a["z"] if with_z else None,
              delta_bias=a["delta_bias"] if softplus_bias else None, delta_softplus=softplus_bias,
              initial_state=torch.randn(b, d, n, device=DEVICE) if with_init else None, return_final_state=True)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    # On the CPU under Triton's interpreter, the first reference call of a process now and then gives a result
    # ~8e-5 away from every later call (seen only with the interpreter loaded): warm it up once.
    selective_scan_ref(*args, **kw)
    y_ref, state_ref = selective_scan_ref(*args, **kw)
    y, state = selective_scan(*args, **kw)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < bound
    assert rel_err(state, state_ref) < STATE_BOUND


def test_scan_without_final_state_and_of_one_step(poisoned):
    a = _scan_inputs(2, 5, 4, 1, torch.float32, False)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], True)
    assert rel_err(selective_scan(*args), selective_scan_ref(*args)) < 1e-5


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_d,with_z,softplus_bias", [(True, True, True), (False, False, False)])
def test_state_update_matches_reference(poisoned, dtype, bound, with_d, with_z, softplus_bias):
    b, d, n = 3, 37, 6
    a = _scan_inputs(b, d, n, 1, dtype, False)
    x, dt, z, B, C = (a[k][..., 0] for k in ("u", "delta", "z", "B", "C"))
    if not softplus_bias:
        dt = dt.abs() * 0.5
    state = torch.randn(b, d, n, device=DEVICE)
    state_ref, early = state.clone(), state.clone()
    args = (x, dt, a["A"], B, C, a["D"] if with_d else None, z if with_z else None,
            a["delta_bias"] if softplus_bias else None, softplus_bias)
    y = selective_state_update(state, *args)
    y_ref = selective_state_update_ref(state_ref, *args)
    assert y.dtype == y_ref.dtype and rel_err(y, y_ref) < bound
    assert rel_err(state, state_ref) < STATE_BOUND
    # the decode step's variant (state and parameters read before the wait for the previous kernel): same bits
    assert torch.equal(selective_state_update(early, *args, prefetch_state=True), y) and torch.equal(early, state)


def test_prefill_then_steps_equals_full_scan(poisoned):
    b, d, n, length, split = 2, 12, 5, 14, 9
    a = _scan_inputs(b, d, n, length, torch.float32, True)
    kw = dict(D=a["D"], delta_bias=a["delta_bias"], delta_softplus=True)
    full, last = selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], z=a["z"], return_final_state=True, **kw)
    cut = {k: a[k][..., :split] for k in ("u", "delta", "B", "C", "z")}
    head, state = selective_scan(cut["u"], cut["delta"], a["A"], cut["B"], cut["C"], z=cut["z"],
                                 return_final_state=True, **kw)
    steps = [selective_state_update(state, a["u"][..., t], a["delta"][..., t], a["A"], a["B"][..., t],
                                    a["C"][..., t], a["D"], a["z"][..., t], a["delta_bias"], True)
             for t in range(split, length)]
    assert rel_err(torch.cat([head, torch.stack(steps, -1)], -1), full) < 1e-5
    assert rel_err(state, last) < 1e-5


def test_shapes_are_checked():
    a = _scan_inputs(1, 4, 3, 5, torch.float32, False)
    with pytest.raises(QuambaError, match="B has shape"):
        selective_scan(a["u"], a["delta"], a["A"], a["B"][:, :2], a["C"])
