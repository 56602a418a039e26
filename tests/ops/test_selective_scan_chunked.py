"""The chunked selective scan computes the same function as the reference recurrence, with the same gradients."""
import pytest
import torch

from quamba.ops import selective_scan_ref
from quamba.ops.selective_scan_chunked import _LinearScan, selective_scan_chunked
from tests.conftest import rel_err


def _inputs(b=2, d=5, n=3, L=37, dtype=torch.float32):
    return dict(u=torch.randn(b, d, L, dtype=dtype), delta=torch.randn(b, d, L, dtype=dtype) * 0.5,
                A=-(torch.rand(d, n) * 4 + 0.1), B=torch.randn(b, n, L, dtype=dtype), C=torch.randn(b, n, L, dtype=dtype))


@pytest.mark.parametrize("L", [1, 7, 37, 100])
@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
@pytest.mark.parametrize("extras", [False, True])
def test_forward_matches_reference(L, chunk, extras):
    a = _inputs(L=L)
    kw = {}
    if extras:  # every optional input at once: D skip, z gate, delta bias + softplus, an initial state
        kw = dict(D=torch.randn(5), z=torch.randn(2, 5, L), delta_bias=torch.randn(5), delta_softplus=True,
                  initial_state=torch.randn(2, 5, 3))
    y, last = selective_scan_chunked(**a, **kw, return_final_state=True, chunk_size=chunk)
    y_ref, last_ref = selective_scan_ref(**a, **kw, return_final_state=True)
    assert y.shape == y_ref.shape and last.shape == last_ref.shape
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(last, last_ref) <= 1e-5
    assert last.dtype == torch.float32


def test_plain_call_returns_only_y_and_follows_input_dtype():
    a = _inputs()
    a["u"] = a["u"].to(torch.bfloat16)
    y = selective_scan_chunked(**a)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    assert rel_err(y, selective_scan_ref(**a)) <= 1e-2  # only the bf16 rounding of the output differs


def test_empty_sequence_keeps_the_initial_state():
    a = _inputs(L=0)
    init = torch.randn(2, 5, 3)
    y, last = selective_scan_chunked(**a, initial_state=init, return_final_state=True)
    assert y.shape == (2, 5, 0) and torch.equal(last, init)


def test_split_sequence_continues_from_final_state():
    a = _inputs(L=40)
    full = selective_scan_chunked(**a, delta_softplus=True)
    first = {k: (v[..., :13] if k != "A" else v) for k, v in a.items()}
    rest = {k: (v[..., 13:] if k != "A" else v) for k, v in a.items()}
    y1, state = selective_scan_chunked(**first, delta_softplus=True, return_final_state=True)
    y2 = selective_scan_chunked(**rest, delta_softplus=True, initial_state=state)
    assert rel_err(torch.cat([y1, y2], dim=-1), full) <= 1e-5


def test_huge_decays_stay_finite_and_exact():
    # dt * A down to about -2000 per step: any formula dividing by a cumulative decay would overflow.
    a = _inputs(L=50)
    a["delta"] = torch.rand(2, 5, 50) * 100
    a["A"] = -(torch.rand(5, 3) * 20 + 1)
    y = selective_scan_chunked(**a, chunk_size=16)
    assert torch.isfinite(y).all()
    assert rel_err(y, selective_scan_ref(**a)) <= 1e-5


def _grads(fn, tensors, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}
    y, last = fn(**leaves, **kw, return_final_state=True)
    g_y, g_last = torch.linspace(-1, 1, y.numel()).view_as(y), torch.linspace(1, -1, last.numel()).view_as(last)
    ((y * g_y).sum() + (last * g_last).sum()).backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("chunk", [None, 4])
def test_gradients_match_reference(chunk):
    a = _inputs(L=29)
    a.update(D=torch.randn(5), z=torch.randn(2, 5, 29), delta_bias=torch.randn(5), initial_state=torch.randn(2, 5, 3))
    g = _grads(selective_scan_chunked, a, delta_softplus=True, chunk_size=chunk)
    g_ref = _grads(selective_scan_ref, a, delta_softplus=True)
    for k in a:
        assert torch.isfinite(g[k]).all(), k
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k


def test_gradients_finite_under_huge_decays():
    a = _inputs(L=33)
    a["delta"] = torch.rand(2, 5, 33) * 100
    g = _grads(selective_scan_chunked, a, chunk_size=8)
    assert all(torch.isfinite(v).all() for v in g.values())


def test_linear_scan_gradcheck_fp64():
    a = torch.rand(1, 2, 9, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 9, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, h0: _LinearScan.apply(a, b, h0, 4), (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b: _LinearScan.apply(a, b, None, 2), (a, b))


def test_autocast_keeps_fp32_state():
    a = _inputs(L=21)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, last = selective_scan_chunked(**a, return_final_state=True)
    assert last.dtype == torch.float32
    assert rel_err(y, selective_scan_ref(**a)) <= 1e-5


def test_bad_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(**_inputs(), chunk_size=-3)
