"""Mamba1's selective scan (S6), as a readable recurrence.

For each channel d and state n:  h_t = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
                                 y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t,   y_t *= silu(z_t)
with dt = softplus(delta + delta_bias) when asked. The state is fp32 whatever the input dtype.

The q* ops take the A8 mixer's int8 inputs with static per-tensor scales (and A as A_log): their references
dequantize and call the float references; on the GPU one kernel loads the int8 values and dequantizes in registers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .triton import use_triton


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


# Prefill lengths from which the chunked kernel (triton/selective_scan_parallel.py: a time chunk per step, scanned
# with tl.associative_scan) replaces the token-by-token one; it holds its [BLOCK_L, N, BLOCK_D] tile in registers,
# so it takes d_state up to 256. Both are exact to the same bounds; benchmarks/kernels.py times them.
CHUNKED_MIN_LEN = 16
CHUNKED_MAX_STATE = 256


def _chunked_kernel_fits(seqlen: int, dstate: int, initial_state) -> bool:
    # an int8 initial state (a (q, scale) pair) is read by the token-by-token kernel only
    return seqlen >= CHUNKED_MIN_LEN and dstate <= CHUNKED_MAX_STATE and not isinstance(initial_state, tuple)


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
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)
    if use_triton(u, delta, A, B, C, D, z, delta_bias, initial_state):
        if _chunked_kernel_fits(u.shape[-1], A.shape[-1], initial_state):
            from .triton.selective_scan_parallel import selective_scan_parallel_launch

            return selective_scan_parallel_launch(*args)
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
    *,
    prefetch_state: bool = False,
) -> torch.Tensor:
    """``selective_state_update_ref``'s contract (``state`` updated in place); Triton on CUDA.
    ``prefetch_state``: the decode step's promise that the kernel just before writes none of the state and
    parameters (A, D, dt_bias), so the kernel reads them before its dependent-launch wait; no effect on the result."""
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if use_triton(x, state, dt, A, B, C, D, z, dt_bias):
        from .triton.selective_scan import _selective_state_update_launch

        return _selective_state_update_launch(*args, prefetch_state=prefetch_state)
    return selective_state_update_ref(*args)


# ---- int8 inputs (the A8 mixers' scan) ----------------------------------------------------------------------------
# An int8 state is a pair (q int8 [..., N], scale fp32 [..., 1]) with scale = abs-max of the row / 127: the format of
# ``quamba.modules.scan.Int8State``, recomputed after every update (no calibration).

def quantize_state_ref(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 state [..., N] -> (q int8 [..., N], scale fp32 [..., 1]): per row scale = max(abs-max, 1e-12) / 127,
    q = clamp(round_half_even(h / scale), -128, 127)."""
    from .quant import quantize_ref

    scale = h.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    return quantize_ref(h, scale), scale


def dequantize_state_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(q int8 [..., N], scale fp32 [..., 1]) -> fp32 state q * scale."""
    return q.float() * scale


def _float_state(state):
    """A state argument (None, fp32 tensor, or (q, scale) pair) as fp32 (a new tensor for the pair)."""
    return dequantize_state_ref(*state) if isinstance(state, tuple) else state


def _dequantize(tensors, scales):
    """int8 inputs -> fp32, q.float() * scale (each scale broadcastable to its tensor); None stays None."""
    return [None if t is None else t.float() * s for t, s in zip(tensors, scales)]


def _qselective_scan_torch(scan, u, delta, A_log, B, C, scales, D, z, delta_bias, delta_softplus, initial_state,
                           return_final_state, final_state_int8, out_dtype):
    """Dequantize, run the float ``scan`` (the reference loop, or the dispatcher's CPU path), cast y."""
    uf, dtf, Bf, Cf, zf = _dequantize((u, delta, B, C, z), scales)
    out = scan(uf, dtf, -torch.exp(A_log.float()), Bf, Cf, D, zf, delta_bias, delta_softplus,
               _float_state(initial_state), return_final_state)
    if not return_final_state:
        return out.to(out_dtype)
    y, h = out
    return y.to(out_dtype), (quantize_state_ref(h) if final_state_int8 else h)


def qselective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    u_scale: torch.Tensor,
    delta_scale: torch.Tensor,
    B_scale: torch.Tensor,
    C_scale: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    z_scale: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state=None,
    return_final_state: bool = False,
    final_state_int8: bool = False,
    out_dtype: torch.dtype = torch.float16,
):
    """Selective scan on int8 inputs: dequantize (q.float() * scale), then ``selective_scan_ref`` with
    A = -exp(A_log), y cast to ``out_dtype``.

    u, delta, z: [B, D, L] int8; B, C: [B, N, L] int8; *_scale: fp32 one-element tensors (per tensor, static);
    A_log: [D, N] fp32; D, delta_bias: [D] fp32; initial_state: fp32 [B, D, N], an int8 pair
    (q [B, D, N], scale [B, D, 1]) or None. Returns y [B, D, L] ``out_dtype`` and, with ``return_final_state``,
    the final state: fp32 [B, D, N], or the int8 pair with ``final_state_int8``.
    """
    return _qselective_scan_torch(selective_scan_ref, u, delta, A_log, B, C,
                                  (u_scale, delta_scale, B_scale, C_scale, z_scale), D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, final_state_int8, out_dtype)


# Above this batch the update runs dt_proj as its own GEMV first: fused, each batch row's programs read dt_proj's
# weights again (on an H100 at batch 8: 14.5 us fused against 12.7 us for the two kernels; batch 1: 9.5 against 13.5)
DT_PROJ_FUSED_MAX_BATCH = 2


class DtProj(NamedTuple):
    """Mamba1's dt_proj as the one-step update takes it (``dt_proj=``): a W8A8 projection with an int8 output and no
    bias (dt's bias is the scan's), dt = quantize(w8a8(dt_low)). On the GPU the update computes it in its own
    kernel, each program the dt of its channels (R is small: dt_rank, 160 for mamba-2.8b), so dt never goes to
    memory and the step is one kernel instead of two.

    weight: int8 [D, R]; input_scale: fp32, one value (dt_low's); weight_scale, out_scale: fp32 [D] or one value.
    """

    weight: torch.Tensor
    input_scale: torch.Tensor
    weight_scale: torch.Tensor
    out_scale: torch.Tensor

    def apply_ref(self, dt_low: torch.Tensor) -> torch.Tensor:
        """dt_low int8 [B, R] -> dt int8 [B, D]: ``w8a8_gemm_ref`` requantized by out_scale (exact int32 products,
        one fp32 epilogue)."""
        from .quant import w8a8_gemm_ref

        return w8a8_gemm_ref(dt_low, self.input_scale, self.weight, self.weight_scale, None, self.out_scale)


def qselective_state_update_ref(
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
    z: torch.Tensor | None = None,
    z_scale: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    out_dtype: torch.dtype = torch.float16,
    *,
    dt_proj: DtProj | None = None,
) -> torch.Tensor:
    """One decoding step on int8 inputs: dequantize, then ``selective_state_update_ref`` with A = -exp(A_log).

    state: fp32 [B, D, N], or an int8 pair (q [B, D, N], scale [B, D, 1]) re-quantized after the update; updated
    in place either way. x, dt, z: [B, D] int8; B, C: [B, N] int8; scales as in ``qselective_scan_ref``.
    With ``dt_proj`` (a ``DtProj``), dt is instead dt_low [B, R] int8, projected to the int8 [B, D] dt first.
    Returns y [B, D] ``out_dtype`` (computed from the fp32 state before it is rounded to int8).
    """
    if dt_proj is not None:
        dt = dt_proj.apply_ref(dt)
    return _qselective_state_update_torch(selective_state_update_ref, state, x, dt, A_log, B, C,
                                          (x_scale, dt_scale, B_scale, C_scale, z_scale), D, z, dt_bias, dt_softplus,
                                          out_dtype)


def _qselective_state_update_torch(update, state, x, dt, A_log, B, C, scales, D, z, dt_bias, dt_softplus, out_dtype):
    xf, dtf, Bf, Cf, zf = _dequantize((x, dt, B, C, z), scales)
    h = _float_state(state)
    y = update(h, xf, dtf, -torch.exp(A_log.float()), Bf, Cf, D, zf, dt_bias, dt_softplus)
    if isinstance(state, tuple):
        q, scale = quantize_state_ref(h)
        state[0].copy_(q)
        state[1].copy_(scale)
    return y.to(out_dtype)


def _state_tensors(state) -> tuple:
    return () if state is None else state if isinstance(state, tuple) else (state,)


def qselective_scan(
    u, delta, A_log, B, C, u_scale, delta_scale, B_scale, C_scale, D=None, z=None, z_scale=None, delta_bias=None,
    delta_softplus=True, initial_state=None, return_final_state=False, final_state_int8=False,
    out_dtype=torch.float16,
):
    """``qselective_scan_ref``'s contract. On CUDA one Triton kernel that loads the int8 inputs and dequantizes in
    registers, writing y [B, D, L] as a view of [B, L, D] memory (rows of D for the Hadamard / out_proj that
    follow); elsewhere the dequantized inputs go through ``selective_scan`` (vectorised on the CPU)."""
    scales = (u_scale, delta_scale, B_scale, C_scale, z_scale)
    if use_triton(u, delta, A_log, B, C, D, z, delta_bias, *_state_tensors(initial_state)):
        if not final_state_int8 and _chunked_kernel_fits(u.shape[-1], A_log.shape[-1], initial_state):
            from .triton.selective_scan_parallel import selective_scan_parallel_launch

            return selective_scan_parallel_launch(u, delta, A_log, B, C, D, z, delta_bias, delta_softplus,
                                                  initial_state, return_final_state, scales=scales, A_is_log=True,
                                                  out_dtype=out_dtype)
        from .triton.selective_scan import _selective_scan_launch

        return _selective_scan_launch(u, delta, A_log, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      return_final_state, scales=scales, A_is_log=True,
                                      final_state_int8=final_state_int8, out_dtype=out_dtype)
    return _qselective_scan_torch(selective_scan, u, delta, A_log, B, C, scales, D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, final_state_int8, out_dtype)


def qselective_state_update(
    state, x, dt, A_log, B, C, x_scale, dt_scale, B_scale, C_scale, D=None, z=None, z_scale=None, dt_bias=None,
    dt_softplus=True, out_dtype=torch.float16, *, dt_proj: DtProj | None = None, prefetch_state: bool = False,
) -> torch.Tensor:
    """``qselective_state_update_ref``'s contract (``state`` fp32 or an int8 pair, updated in place; with
    ``dt_proj``, dt is dt_low [B, R]); one Triton kernel on CUDA (an int8 state is re-quantized in registers, and
    dt_proj's GEMV and epilogue run in it too)."""
    scales = (x_scale, dt_scale, B_scale, C_scale, z_scale)
    if use_triton(x, *_state_tensors(state), dt, A_log, B, C, D, z, dt_bias):
        from .triton.selective_scan import _selective_state_update_launch

        if dt_proj is not None and x.shape[0] > DT_PROJ_FUSED_MAX_BATCH:  # its own GEMV reads the weights once
            from .quant import w8a8_gemm

            dt, dt_proj = w8a8_gemm(dt, dt_proj.input_scale, dt_proj.weight, dt_proj.weight_scale, None,
                                    dt_proj.out_scale), None

        return _selective_state_update_launch(state, x, dt, A_log, B, C, D, z, dt_bias, dt_softplus, scales=scales,
                                              A_is_log=True, out_dtype=out_dtype, dt_proj=dt_proj,
                                              prefetch_state=prefetch_state)
    if dt_proj is not None:
        dt = dt_proj.apply_ref(dt)
    return _qselective_state_update_torch(selective_state_update, state, x, dt, A_log, B, C, scales, D, z, dt_bias,
                                          dt_softplus, out_dtype)
