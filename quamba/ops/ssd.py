"""Mamba2's state-space dual (SSD) scan: scalar decay per head, B/C shared by groups of heads.

Recurrence, per head h (group g = h // (H // G)), channel p and state n:
    h_t = exp(dt_t * A[h]) * h_{t-1} + dt_t * x_t[p] * B_t[g, n]
    y_t[p] = sum_n C_t[g, n] * h_t[p, n] + D[h] * x_t[p]
``ssd_chunked_ref`` computes the same thing in chunks (the algorithm of the Mamba2 paper, steps
numbered as there); ``ssd_scan_sequential_ref`` is the recurrence itself, used to check it.
The q* ops take the A8 mixer's int8 inputs with static scales (and A as A_log): their references dequantize and call
the float references; on the GPU the chunked kernels load the int8 values and dequantize in registers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .triton import use_triton


def _discretize_dt(dt, dt_bias, dt_softplus, dt_limit):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi < math.inf:
        dt = dt.clamp(min=lo, max=hi)
    return dt


def _heads_from_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: each group serves H // G consecutive heads."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def _d_skip(y, x, D):
    if D is None:
        return y
    Df = D.float()
    return y + x * (Df[:, None] if Df.dim() == 1 else Df)  # D: [H] or [H, P]


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a: [..., T] -> [..., T, T] with out[i, j] = sum(a[j+1 .. i]) for j <= i, -inf above."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)
    a = a.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1), 0)
    out = torch.cumsum(a, dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), 0), -math.inf)


def ssd_chunked_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Chunked SSD scan over a full sequence (differentiable, fp32 inside).

    x: [B, L, H, P]; dt: [B, L, H]; A: [H] (negative); B, C: [B, L, G, N] with G dividing H;
    D: [H] or [H, P]; dt_bias: [H]; initial_state: [B, H, P, N] or None.
    Returns y: [B, L, H, P] in x's dtype and, with ``return_final_state``, the state [B, H, P, N] fp32.
    """
    batch, seqlen, nheads, headdim = x.shape
    chunk_size = max(1, min(chunk_size, seqlen))  # the result does not depend on it; short inputs need no padding
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, L, H]
    pad = (-seqlen) % chunk_size
    xf = F.pad(x.float(), (0, 0, 0, 0, 0, pad))
    dt = F.pad(dt, (0, 0, 0, pad))  # dt = 0 on padding: no decay, no input
    Bh = F.pad(_heads_from_groups(B.float(), nheads), (0, 0, 0, 0, 0, pad))
    Ch = F.pad(_heads_from_groups(C.float(), nheads), (0, 0, 0, 0, 0, pad))
    nchunks = (seqlen + pad) // chunk_size

    def chunks(t):  # [B, L, ...] -> [B, c, l, ...]
        return t.reshape(batch, nchunks, chunk_size, *t.shape[2:])

    xdt = chunks(xf * dt[..., None])  # [B, c, l, H, P]
    Bc, Cc = chunks(Bh), chunks(Ch)  # [B, c, l, H, N]
    a = chunks(dt * A.float()).permute(0, 3, 1, 2)  # [B, H, c, l]
    a_cum = torch.cumsum(a, dim=-1)

    # 1. Outputs within each chunk (the quadratic, attention-like part).
    Lmat = torch.exp(_segsum(a))  # [B, H, c, l, s]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, Lmat, xdt)
    # 2. State at the end of each chunk, from that chunk's inputs alone.
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)  # [B, H, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, xdt)
    # 3. Pass states across chunks (a recurrence over chunk boundaries).
    init = xf.new_zeros(batch, 1, nheads, headdim, Bc.shape[-1]) if initial_state is None else initial_state.float()[:, None]
    states = torch.cat([init, states], dim=1)  # [B, c+1, H, P, N]
    decay_chunk = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # [B, H, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = states[:, :-1], states[:, -1]
    # 4. Contribution of the state entering each chunk to that chunk's outputs.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(a_cum))

    y = (y_diag + y_off).reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :seqlen]
    y = _d_skip(y, x.float(), D).to(x.dtype)
    return (y, final_state) if return_final_state else y


def ssd_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> torch.Tensor:
    """One decoding step; ``state`` [B, H, P, N] is updated in place.

    x: [B, H, P]; dt: [B, H]; A: [H]; B, C: [B, G, N]; D: [H] or [H, P]; dt_bias: [H].
    Returns y: [B, H, P] in x's dtype.
    """
    nheads = x.shape[1]
    dtf = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, H]
    Bh, Ch = _heads_from_groups(B.float(), nheads), _heads_from_groups(C.float(), nheads)  # [B, H, N]
    xf = x.float()
    decay = torch.exp(dtf * A.float())[..., None, None]  # [B, H, 1, 1]
    h = decay * state.float() + (dtf[..., None] * xf)[..., None] * Bh[:, :, None, :]
    state.copy_(h.to(state.dtype))
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    return _d_skip(y, xf, D).to(x.dtype)


def ssd_scan_sequential_ref(
    x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf), initial_state=None
):
    """The SSD recurrence token by token (same arguments as ``ssd_chunked_ref`` minus chunk_size).

    Returns (y [B, L, H, P] in x's dtype, final state [B, H, P, N] fp32).
    """
    batch, seqlen, nheads, headdim = x.shape
    state = x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=torch.float32)
    if initial_state is not None:
        state.copy_(initial_state)
    ys = [
        ssd_state_update_ref(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_bias, dt_softplus, dt_limit)
        for t in range(seqlen)
    ]
    return torch.stack(ys, dim=1), state


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """``ssd_chunked_ref``'s contract (y in x's dtype, final state fp32); the chunked Triton kernels on
    CUDA (see ``quamba.ops.triton.use_triton`` for the switches), the reference elsewhere."""
    args = (x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, initial_state, return_final_state)
    if use_triton(x, dt, A, B, C, D, dt_bias, initial_state):
        from .triton.ssd import _ssd_chunked_launch

        return _ssd_chunked_launch(*args)
    return ssd_chunked_ref(*args)


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    *,
    prefetch_state: bool = False,
) -> torch.Tensor:
    """``ssd_state_update_ref``'s contract (``state`` [B, H, P, N] updated in place); Triton on CUDA.
    ``prefetch_state``: see ``quamba.ops.triton.ssd._ssd_state_update_launch`` (a decode step's promise that the
    kernel just before writes none of the state and parameters; no effect on the result)."""
    args = (state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit)
    if use_triton(x, state, dt, A, B, C, D, dt_bias):
        from .triton.ssd import _ssd_state_update_launch

        return _ssd_state_update_launch(*args, prefetch_state=prefetch_state)
    return ssd_state_update_ref(*args)


# ---- int8 inputs (the A8 mixer's scan) ----------------------------------------------------------------------------
# x has a per-channel scale [H * P] (head grouping gives the channels of a group one value), dt a per-head scale [H],
# B and C one scale per group [G]. An int8 state is a pair (q int8 [B, H, P, N], scale fp32 [B, H, P, 1]), the format
# of ``quamba.modules.scan.Int8State`` (see ``quamba.ops.selective_scan.quantize_state_ref``).

def _dequantize_ssd(x, dt, B, C, x_scale, dt_scale, B_scale, C_scale):
    """int8 -> fp32 by q.float() * scale, each scale broadcast along its own axis."""
    nheads, headdim = x.shape[-2:]
    return (x.float() * x_scale.view(nheads, headdim), dt.float() * dt_scale, B.float() * B_scale[:, None],
            C.float() * C_scale[:, None])


def _qssd_chunked_torch(scan, x, dt, A_log, B, C, chunk_size, scales, D, dt_bias, dt_softplus, dt_limit,
                        initial_state, return_final_state, final_state_int8, out_dtype):
    from .selective_scan import _float_state, quantize_state_ref

    xf, dtf, Bf, Cf = _dequantize_ssd(x, dt, B, C, *scales)
    out = scan(xf, dtf, -torch.exp(A_log.float()), Bf, Cf, chunk_size, D, dt_bias, dt_softplus, dt_limit,
               _float_state(initial_state), return_final_state)
    if not return_final_state:
        return out.to(out_dtype)
    y, h = out
    return y.to(out_dtype), (quantize_state_ref(h) if final_state_int8 else h)


def _qssd_state_update_torch(update, state, x, dt, A_log, B, C, scales, D, dt_bias, dt_softplus, dt_limit, out_dtype):
    from .selective_scan import _float_state, quantize_state_ref

    xf, dtf, Bf, Cf = _dequantize_ssd(x, dt, B, C, *scales)
    h = _float_state(state)
    y = update(h, xf, dtf, -torch.exp(A_log.float()), Bf, Cf, D, dt_bias, dt_softplus, dt_limit)
    if isinstance(state, tuple):
        q, scale = quantize_state_ref(h)
        state[0].copy_(q)
        state[1].copy_(scale)
    return y.to(out_dtype)


def qssd_chunked_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    x_scale: torch.Tensor,
    dt_scale: torch.Tensor,
    B_scale: torch.Tensor,
    C_scale: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state=None,
    return_final_state: bool = False,
    final_state_int8: bool = False,
    out_dtype: torch.dtype = torch.float16,
):
    """Chunked SSD on int8 inputs: dequantize (q.float() * scale), then ``ssd_chunked_ref`` with A = -exp(A_log),
    y cast to ``out_dtype``.

    x: [B, L, H, P] int8, x_scale [H * P] fp32; dt: [B, L, H] int8, dt_scale [H] fp32; B, C: [B, L, G, N] int8,
    B_scale / C_scale [G] fp32; A_log, dt_bias: [H] fp32; D: [H] or [H, P] fp32; initial_state: fp32 [B, H, P, N],
    an int8 pair (q [B, H, P, N], scale [B, H, P, 1]) or None. Returns y [B, L, H, P] ``out_dtype`` and, with
    ``return_final_state``, the final state: fp32 [B, H, P, N], or the int8 pair with ``final_state_int8``.
    """
    return _qssd_chunked_torch(ssd_chunked_ref, x, dt, A_log, B, C, chunk_size, (x_scale, dt_scale, B_scale, C_scale),
                               D, dt_bias, dt_softplus, dt_limit, initial_state, return_final_state, final_state_int8,
                               out_dtype)


def qssd_state_update_ref(
    state,
    x: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    x_scale: torch.Tensor,
    dt_scale: torch.Tensor,
    B_scale: torch.Tensor,
    C_scale: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """One decoding step on int8 inputs: dequantize, then ``ssd_state_update_ref`` with A = -exp(A_log).

    state: fp32 [B, H, P, N], or an int8 pair (q [B, H, P, N], scale [B, H, P, 1]) re-quantized after the update;
    updated in place either way. x: [B, H, P] int8; dt: [B, H] int8; B, C: [B, G, N] int8; scales as in
    ``qssd_chunked_ref``. Returns y [B, H, P] ``out_dtype`` (from the fp32 state before it is rounded to int8).
    """
    return _qssd_state_update_torch(ssd_state_update_ref, state, x, dt, A_log, B, C,
                                    (x_scale, dt_scale, B_scale, C_scale), D, dt_bias, dt_softplus, dt_limit, out_dtype)


def qssd_chunked(
    x, dt, A_log, B, C, chunk_size, x_scale, dt_scale, B_scale, C_scale, D=None, dt_bias=None, dt_softplus=True,
    dt_limit=(0.0, math.inf), initial_state=None, return_final_state=False, final_state_int8=False,
    out_dtype=torch.float16,
):
    """``qssd_chunked_ref``'s contract; on CUDA the four chunked Triton kernels, each dequantizing what it loads
    (products in fp16, or fp32 for an fp32 y); elsewhere the reference."""
    from .selective_scan import _state_tensors
    scales = (x_scale, dt_scale, B_scale, C_scale)
    if use_triton(x, dt, A_log, B, C, D, dt_bias, *_state_tensors(initial_state)):
        from .triton.ssd import _ssd_chunked_launch

        return _ssd_chunked_launch(x, dt, A_log, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, initial_state,
                                   return_final_state, scales=scales, A_is_log=True,
                                   final_state_int8=final_state_int8, out_dtype=out_dtype)
    return _qssd_chunked_torch(ssd_chunked, x, dt, A_log, B, C, chunk_size, scales, D, dt_bias, dt_softplus, dt_limit,
                               initial_state, return_final_state, final_state_int8, out_dtype)


def qssd_state_update(
    state, x, dt, A_log, B, C, x_scale, dt_scale, B_scale, C_scale, D=None, dt_bias=None, dt_softplus=True,
    dt_limit=(0.0, math.inf), out_dtype=torch.float16, *, prefetch_state=False,
) -> torch.Tensor:
    """``qssd_state_update_ref``'s contract (``state`` fp32 or an int8 pair, updated in place); one Triton kernel
    on CUDA. ``prefetch_state``: as in ``ssd_state_update``."""
    from .selective_scan import _state_tensors
    scales = (x_scale, dt_scale, B_scale, C_scale)
    if use_triton(x, *_state_tensors(state), dt, A_log, B, C, D, dt_bias):
        from .triton.ssd import _ssd_state_update_launch

        return _ssd_state_update_launch(state, x, dt, A_log, B, C, D, dt_bias, dt_softplus, dt_limit, scales=scales,
                                        A_is_log=True, out_dtype=out_dtype, prefetch_state=prefetch_state)
    return _qssd_state_update_torch(ssd_state_update, state, x, dt, A_log, B, C, scales, D, dt_bias, dt_softplus,
                                    dt_limit, out_dtype)
