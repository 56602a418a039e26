"""Mamba1's selective scan (S6), as a readable recurrence.

For each channel d and state n:  h_t = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
                                 y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t,   y_t *= silu(z_t)
with dt = softplus(delta + delta_bias) when asked. The state is fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _discretize_dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[..., None]
    return F.softplus(dt) if softplus else dt


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Full-sequence selective scan.

    u, delta, z: [B, D, L]; A: [D, N] (negative, fp32); B, C: [B, N, L]; D, delta_bias: [D];
    initial_state: [B, D, N] or None. Returns y: [B, D, L] in u's dtype and, with
    ``return_final_state``, the last state [B, D, N] in fp32.
    """
    batch, dim, seqlen = u.shape
    dt = _discretize_dt(delta, delta_bias, delta_softplus)  # [B, D, L]
    uf, Af, Bf, Cf = u.float(), A.float(), B.float(), C.float()
    dA = torch.exp(dt.unsqueeze(-1) * Af[None, :, None, :])  # [B, D, L, N]
    dBu = (dt * uf).unsqueeze(-1) * Bf.transpose(1, 2).unsqueeze(1)  # [B, D, L, N]
    h = uf.new_zeros(batch, dim, Af.shape[-1]) if initial_state is None else initial_state.float().clone()
    ys = []
    for t in range(seqlen):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decoding step of the selective scan; ``state`` [B, D, N] is updated in place.

    x, dt, z: [B, D]; A: [D, N]; B, C: [B, N]; D, dt_bias: [D]. Returns y: [B, D] in x's dtype.
    """
    dtf = _discretize_dt(dt.unsqueeze(-1), dt_bias, dt_softplus).squeeze(-1)  # [B, D]
    xf = x.float()
    h = torch.exp(dtf.unsqueeze(-1) * A.float()) * state.float() + (dtf * xf).unsqueeze(-1) * B.float().unsqueeze(1)
    state.copy_(h.to(state.dtype))
    y = torch.einsum("bdn,bn->bd", h, C.float())
    if D is not None:
        y = y + xf * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """``selective_scan_ref``'s contract (y in u's dtype, final state fp32); the Triton kernel on CUDA
    (see ``quamba.ops.triton.use_triton`` for the switches), elsewhere ``selective_scan_chunked`` (the same
    function vectorised over time and differentiable; the loop of ``selective_scan_ref`` stays the spec)."""
    from .triton import use_triton

    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)
    if use_triton(u, delta, A, B, C, D, z, delta_bias, initial_state):
        from .triton.selective_scan import _selective_scan_launch

        return _selective_scan_launch(*args)
    from .selective_scan_chunked import selective_scan_chunked

    return selective_scan_chunked(*args)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """``selective_state_update_ref``'s contract (``state`` updated in place); Triton on CUDA."""
    from .triton import use_triton

    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if use_triton(x, state, dt, A, B, C, D, z, dt_bias):
        from .triton.selective_scan import _selective_state_update_launch

        return _selective_state_update_launch(*args)
    return selective_state_update_ref(*args)
