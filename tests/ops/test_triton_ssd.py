"""Triton SSD (Mamba2 chunked prefill + state update) against the references.

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers (and the kernels' fp32 intermediates) are NaN-poisoned so that
an unwritten element fails the test.
"""
import math

import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import ssd_chunked, ssd_chunked_ref, ssd_scan_sequential_ref, ssd_state_update, ssd_state_update_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

# (dtype, bound on y's norm-wise relative error vs the fp32 reference). fp32 runs its products in
# full fp32 ("ieee"); fp16 / bf16 run them on tensor cores with the decay-weighted operand rounded
# to the input dtype (fp32 accumulation), so a few of those roundings add to the output's one.
DTYPES = [(torch.float32, 2e-5)] + ([(torch.float16, 4e-3), (torch.bfloat16, 3e-2)] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d, _ in DTYPES]
# The final state is fp32 but its inputs pass through the same (rounded) products for 16-bit x.
STATE_BOUNDS = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _ssd_inputs(b, length, h, p, g, n, dtype=torch.float32, packed=False):
    """x [B, L, H, P], dt [B, L, H], B/C [B, L, G, N]; with ``packed`` x, B, C are strided views of one
    [B, L, H*P + 2*G*N] tensor, as the model splits its conv output."""
    if packed:
        xbc = torch.randn(b, length, h * p + 2 * g * n, device=DEVICE).to(dtype)
        x, B, C = xbc.split([h * p, g * n, g * n], dim=-1)
        x, B, C = x.reshape(b, length, h, p), B.reshape(b, length, g, n), C.reshape(b, length, g, n)
    else:
        x = torch.randn(b, length, h, p, device=DEVICE).to(dtype)
        B = torch.randn(b, length, g, n, device=DEVICE).to(dtype)
        C = torch.randn(b, length, g, n, device=DEVICE).to(dtype)
    return dict(x=x, dt=torch.randn(b, length, h, device=DEVICE).to(dtype), A=-(torch.rand(h, device=DEVICE) + 0.1),
                B=B, C=C, D=torch.randn(h, device=DEVICE).to(dtype), dt_bias=torch.randn(h, device=DEVICE).to(dtype))


# (b, L, H, P, G, N, chunk): L not a multiple of the chunk, P / N not multiples of 16, chunk not a
# power of two, one sequence shorter than its chunk, and chunks spanning several inner tiles.
CASES = {
    "base": (2, 37, 4, 5, 2, 12, 16),
    "odd_chunk_groups_eq_heads": (2, 21, 3, 5, 3, 6, 5),
    "one_short_chunk": (2, 13, 2, 5, 1, 6, 16),
    "multi_tile": (2, 50, 2, 70, 1, 80, 40),
    "long_chunk": (2, 100, 1, 5, 1, 6, 80),  # several row blocks per chunk
}


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case,with_init,d_per_channel,dt_limit,packed", [
    ("base", True, False, (0.0, math.inf), True),
    ("odd_chunk_groups_eq_heads", False, True, (0.05, 0.5), False),
    ("one_short_chunk", True, True, (0.0, math.inf), False),
    ("multi_tile", True, False, (0.0, 1.0), True),
    ("long_chunk", False, False, (0.0, math.inf), False),
])
def test_chunked_matches_reference(poisoned, dtype, bound, case, with_init, d_per_channel, dt_limit, packed):
    b, length, h, p, g, n, chunk = CASES[case]
    a = _ssd_inputs(b, length, h, p, g, n, dtype, packed)
    if d_per_channel:
        a["D"] = torch.randn(h, p, device=DEVICE).to(dtype)
    init = torch.randn(b, h, p, n, device=DEVICE) if with_init else None
    kw = dict(chunk_size=chunk, dt_softplus=True, dt_limit=dt_limit, initial_state=init, return_final_state=True)
    y, state = ssd_chunked(**a, **kw)
    y_ref, state_ref = ssd_chunked_ref(**a, **kw)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < bound
    assert rel_err(state, state_ref) < STATE_BOUNDS[dtype]


def test_chunked_without_options_matches_the_recurrence(poisoned):
    """No D, no bias, no softplus, no final state: checked against the token-by-token recurrence."""
    a = _ssd_inputs(2, 19, 2, 5, 2, 6)
    a["dt"] = a["dt"].abs() * 0.3  # raw dt must stay positive to be a decay
    y = ssd_chunked(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=8)
    y_seq, _ = ssd_scan_sequential_ref(a["x"], a["dt"], a["A"], a["B"], a["C"])
    assert rel_err(y, y_seq) < 2e-5


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("g,d_per_channel,dt_limit", [(2, False, (0.0, math.inf)), (1, True, (0.05, 0.3))])
def test_state_update_matches_reference(poisoned, dtype, bound, g, d_per_channel, dt_limit):
    b, h, p, n = 3, 4, 37, 12
    a = _ssd_inputs(b, 1, h, p, g, n, dtype)
    if d_per_channel:
        a["D"] = torch.randn(h, p, device=DEVICE).to(dtype)
    state = torch.randn(b, h, p, n, device=DEVICE)
    state_ref = state.clone()
    args = (a["x"][:, 0], a["dt"][:, 0], a["A"], a["B"][:, 0], a["C"][:, 0], a["D"], a["dt_bias"], True, dt_limit)
    early = state.clone()
    y = ssd_state_update(state, *args)
    y_ref = ssd_state_update_ref(state_ref, *args)
    assert y.dtype == y_ref.dtype and rel_err(y, y_ref) < bound
    assert rel_err(state, state_ref) < 1e-5
    # the decode step's variant (state and parameters read before the wait for the previous kernel): same bits
    assert torch.equal(ssd_state_update(early, *args, prefetch_state=True), y) and torch.equal(early, state)


def test_prefill_then_steps_equals_full_prefill(poisoned):
    length, split = 20, 14
    a = _ssd_inputs(2, length, 2, 5, 1, 6)
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True)
    full, last = ssd_chunked(a["x"], a["dt"], a["A"], a["B"], a["C"], 8, return_final_state=True, **kw)
    head, state = ssd_chunked(a["x"][:, :split], a["dt"][:, :split], a["A"], a["B"][:, :split], a["C"][:, :split], 8,
                              return_final_state=True, **kw)
    steps = [ssd_state_update(state, a["x"][:, t], a["dt"][:, t], a["A"], a["B"][:, t], a["C"][:, t], **kw)
             for t in range(split, length)]
    assert rel_err(torch.cat([head, torch.stack(steps, 1)], 1), full) < 2e-5
    assert rel_err(state, last) < 2e-5


def test_groups_must_divide_heads():
    a = _ssd_inputs(1, 4, 3, 2, 2, 4)
    with pytest.raises(QuambaError, match="groups"):
        ssd_chunked(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=4)
