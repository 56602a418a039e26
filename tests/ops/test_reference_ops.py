"""The reference ops agree with each other: chunked vs sequential SSD, prefill vs step, split sequences."""
import pytest
import torch
import torch.nn.functional as F

from quamba.ops import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    gated_rms_norm_ref,
    rms_norm_ref,
    selective_scan_ref,
    selective_state_update_ref,
    ssd_chunked_ref,
    ssd_scan_sequential_ref,
)
from tests.conftest import rel_err


def _ssd_inputs(b=2, L=37, H=6, P=5, G=3, N=7):
    return dict(x=torch.randn(b, L, H, P), dt=torch.randn(b, L, H), A=-torch.rand(H) - 0.1,
                B=torch.randn(b, L, G, N), C=torch.randn(b, L, G, N), D=torch.randn(H), dt_bias=torch.randn(H))


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("with_init", [False, True])
def test_ssd_chunked_equals_recurrence(chunk, with_init):
    a = _ssd_inputs()
    init = torch.randn(2, 6, 5, 7) if with_init else None
    y, state = ssd_chunked_ref(**a, chunk_size=chunk, dt_softplus=True, initial_state=init, return_final_state=True)
    y_seq, state_seq = ssd_scan_sequential_ref(**a, dt_softplus=True, initial_state=init)
    assert rel_err(y, y_seq) < 1e-5 and rel_err(state, state_seq) < 1e-5


def test_ssd_dt_limit_and_per_channel_D():
    a = _ssd_inputs()
    a["D"] = torch.randn(6, 5)
    y = ssd_chunked_ref(**a, chunk_size=8, dt_softplus=True, dt_limit=(0.05, 0.3))
    y_seq, _ = ssd_scan_sequential_ref(**a, dt_softplus=True, dt_limit=(0.05, 0.3))
    assert rel_err(y, y_seq) < 1e-5
    y_nolimit = ssd_chunked_ref(**a, chunk_size=8, dt_softplus=True)
    assert rel_err(y, y_nolimit) > 1e-3  # the limit does something


def test_ssd_output_dtype_follows_input():
    a = _ssd_inputs()
    a["x"] = a["x"].to(torch.bfloat16)
    assert ssd_chunked_ref(**a, chunk_size=8).dtype == torch.bfloat16


@pytest.mark.parametrize("k", [2, 4])
def test_conv_prefill_state_continues_like_steps(k):
    x, w, b = torch.randn(2, 5, 13), torch.randn(5, k), torch.randn(5)
    y_full = causal_conv1d_ref(x, w, b)
    # same as torch's padded conv, cropped to be causal
    expected = F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=k - 1, groups=5)[..., :13])
    assert rel_err(y_full, expected) < 1e-6
    y1, state = causal_conv1d_ref(x[..., :6], w, b, return_final_state=True)
    y2, state2 = causal_conv1d_ref(x[..., 6:9], w, b, initial_state=state, return_final_state=True)
    steps = [causal_conv1d_update_ref(x[..., t], state2, w, b) for t in range(9, 13)]
    y = torch.cat([y1, y2, torch.stack(steps, -1)], dim=-1)
    assert rel_err(y, y_full) < 1e-6
    assert torch.equal(state2, x[..., -k:])


def test_conv_short_sequence_state_is_left_padded():
    x, w = torch.randn(1, 3, 2), torch.randn(3, 4)
    _, state = causal_conv1d_ref(x, w, None, return_final_state=True)
    assert torch.equal(state[..., :2], torch.zeros(1, 3, 2)) and torch.equal(state[..., 2:], x)


def test_selective_scan_split_and_step():
    b, d, n, L = 2, 6, 4, 21
    u, delta, z = torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, d, L)
    A, B, C, D, bias = -torch.rand(d, n) - 0.1, torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d), torch.randn(d)
    kw = dict(D=D, delta_bias=bias, delta_softplus=True)
    y, h = selective_scan_ref(u, delta, A, B, C, z=z, return_final_state=True, **kw)
    y1, h1 = selective_scan_ref(u[..., :9], delta[..., :9], A, B[..., :9], C[..., :9], z=z[..., :9], return_final_state=True, **kw)
    state = h1.clone()
    steps = [selective_state_update_ref(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias, True)
             for t in range(9, L)]
    assert rel_err(torch.cat([y1, torch.stack(steps, -1)], -1), y) < 1e-6
    assert rel_err(state, h) < 1e-6


def test_selective_scan_matches_closed_form_for_one_step():
    u, dt = torch.randn(1, 2, 1), torch.rand(1, 2, 1)
    A, B, C = -torch.rand(2, 3), torch.randn(1, 3, 1), torch.randn(1, 3, 1)
    y = selective_scan_ref(u, dt, A, B, C)
    expected = ((dt * u)[..., 0, None] * B[:, None, :, 0] * C[:, None, :, 0]).sum(-1)  # h_0 = dt*B*u
    assert rel_err(y[..., 0], expected) < 1e-6


def test_ssd_step_matches_mamba1_scan_with_scalar_A():
    """With one head per channel (P=1, G=1) SSD is the Mamba1 scan with A constant over the state."""
    b, H, N, L = 1, 4, 3, 10
    x, dt = torch.randn(b, L, H, 1), torch.rand(b, L, H)
    A, B, C = -torch.rand(H), torch.randn(b, L, 1, N), torch.randn(b, L, 1, N)
    y, _ = ssd_scan_sequential_ref(x, dt, A, B, C)
    y1 = selective_scan_ref(x[..., 0].transpose(1, 2), dt.transpose(1, 2), A[:, None].expand(H, N),
                            B[:, :, 0].transpose(1, 2), C[:, :, 0].transpose(1, 2))
    assert rel_err(y[..., 0].transpose(1, 2), y1) < 1e-6


def test_norms():
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    y = rms_norm_ref(x, w, 1e-5)
    assert rel_err(y, x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * w) < 1e-6
    z = torch.randn(3, 8)
    g = gated_rms_norm_ref(x, z, w, 1e-5, group_size=4)
    gated = x * F.silu(z)
    ref = torch.cat([rms_norm_ref(gated[:, :4], w[:4]), rms_norm_ref(gated[:, 4:], w[4:])], -1)
    assert rel_err(g, ref) < 1e-6
    before = gated_rms_norm_ref(x, z, w, 1e-5, group_size=8, norm_before_gate=True)
    assert rel_err(before, rms_norm_ref(x, w) * F.silu(z)) < 1e-6
