"""Triton selective scan (Mamba1's S6): full-sequence prefill and the one-token state update.

Contracts of ``quamba.ops.selective_scan``'s references. The prefill runs one program per
(batch, block of channels), walks the sequence in order and keeps the [BLOCK_D, N] state in fp32
registers, so the state never goes to memory until the end:
    dt = softplus(delta + delta_bias);  h = exp(dt * A) * h + dt * u * B_t;  y = C_t . h + D * u;  y *= silu(z)
Inputs may be strided (the model passes transposed views); the next step's inputs are loaded one
step ahead so that their memory latency overlaps the current step's arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, device_of, next_pow2,
                      silu, softplus, stride_or_zero)

_MAX_STATE = 256  # the state of a channel block lives in registers


@triton.jit
def _load_step(u_p, dt_p, z_p, b_p, c_p, t, sul, sdl, szl, sbl, scl, mask_d, mask_n, HAS_Z: tl.constexpr):
    """Inputs of time step t (which the caller keeps inside the sequence), converted to fp32."""
    u = tl.load(u_p + t * sul, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_p + t * sdl, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_p + t * szl, mask=mask_d, other=0.0).to(tl.float32)
    else:
        z = u
    b = tl.load(b_p + t * sbl, mask=mask_n, other=0.0).to(tl.float32)
    c = tl.load(c_p + t * scl, mask=mask_n, other=0.0).to(tl.float32)
    return u, dt, z, b, c


@triton.jit
def _selective_scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
    dim, dstate, seqlen,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl,
    szb, szd, szl, sib, sid, sin, syb, syd, syl, sfb, sfd, sfn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (B, cdiv(D, BLOCK_D)); the whole sequence in one program."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

    # Padded state slots see A = 0 and B = 0, so they stay exactly 0 and add nothing to y.
    A = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_INIT:
        h = tl.load(init_ptr + pid_b * sib + offs_d[:, None] * sid + offs_n[None, :] * sin, mask=mask_dn,
                    other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    u_p = u_ptr + pid_b * sub + offs_d * sud
    dt_p = delta_ptr + pid_b * sdb + offs_d * sdd
    z_p = z_ptr + pid_b * szb + offs_d * szd
    b_p = B_ptr + pid_b * sbb + offs_n * sbn
    c_p = C_ptr + pid_b * scb + offs_n * scn
    y_p = y_ptr + pid_b * syb + offs_d * syd

    # seqlen >= 1 here; the look-ahead at the last step re-reads that step rather than running off the end.
    u_n, dt_n, z_n, b_n, c_n = _load_step(u_p, dt_p, z_p, b_p, c_p, 0, sul, sdl, szl, sbl, scl, mask_d, mask_n,
                                          HAS_Z)
    for t in range(seqlen):
        u, dt, z, b, c = u_n, dt_n, z_n, b_n, c_n
        t_next = tl.minimum(t + 1, seqlen - 1)
        u_n, dt_n, z_n, b_n, c_n = _load_step(u_p, dt_p, z_p, b_p, c_p, t_next, sul, sdl, szl, sbl, scl, mask_d,
                                              mask_n, HAS_Z)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = softplus(dt)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            y *= silu(z)
        tl.store(y_p + t * syl, y.to(y_ptr.dtype.element_ty), mask=mask_d)

    if WRITE_FINAL:
        tl.store(final_ptr + pid_b * sfb + offs_d[:, None] * sfd + offs_n[None, :] * sfn, h, mask=mask_dn)


@triton.jit
def _selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, dstate,
    ssb, ssd, ssn, sxb, sxd, stb, std, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One step for a [BLOCK_D, N] slice of the state; grid (B, cdiv(D, BLOCK_D))."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

    s_ptrs = state_ptr + pid_b * ssb + offs_d[:, None] * ssd + offs_n[None, :] * ssn
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * sxb + offs_d * sxd, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * stb + offs_d * std, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mask_dn, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + pid_b * sbb + offs_n * sbn, mask=mask_n, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + pid_b * scb + offs_n * scn, mask=mask_n, other=0.0).to(tl.float32)

    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * b[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * c[None, :], axis=1)  # from the fp32 state, as the reference does
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        y *= silu(tl.load(z_ptr + pid_b * szb + offs_d * szd, mask=mask_d, other=0.0).to(tl.float32))
    tl.store(y_ptr + pid_b * syb + offs_d * syd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def _check_common(dim: int, A, D, bias, named) -> int:
    if A.dim() != 2 or A.shape[0] != dim:
        raise QuambaError(f"A has shape {list(A.shape)}, expected [{dim}, N]")
    dstate = A.shape[1]
    if dstate > _MAX_STATE:
        raise QuambaError(f"d_state {dstate} exceeds the Triton scan's {_MAX_STATE}: use selective_scan_ref")
    check_shape("D", D, (dim,))
    check_shape("delta_bias", bias, (dim,))
    for name, t in named:
        check_float(name, t)
    check_same_device(*named)
    return dstate


def _scan_tiles(dim: int, dstate: int, on_gpu: bool) -> tuple[int, int]:
    """(BLOCK_D, num_warps). Small programs keep many in flight (batch 1 has only D / BLOCK_D of them):
    on an H100 at d_inner 5120, N 16, 1024 tokens (fp16), 128-element programs on one warp ran in 467 us,
    the first heuristic's 512 elements on two warps in 868 us (block_d 4..64 x 1/2/4 warps swept).
    The interpreter prefers fewer, larger programs."""
    block = max(1, min(next_pow2(dim), (128 if on_gpu else 256) // next_pow2(dstate), 64))
    size = block * next_pow2(dstate)
    return block, 1 if size <= 128 else 2 if size <= 512 else 4


def _selective_scan_launch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    return_final_state=False, *, block_d: int | None = None, num_warps: int | None = None,
):
    """Checks and launches ``_selective_scan_kernel``; same contract as ``selective_scan_ref``
    (``block_d`` / ``num_warps`` override the launch heuristic, for tuning).

    y is laid out [B, L, D] in memory (the [B, D, L] view is returned) when u's channels are
    contiguous, as in the model, so that out_proj reads it without a copy.
    """
    if u.dim() != 3:
        raise QuambaError(f"u has shape {list(u.shape)}, expected [B, D, L]")
    batch, dim, seqlen = u.shape
    named = [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("delta_bias", delta_bias), ("initial_state", initial_state)]
    dstate = _check_common(dim, A, D, delta_bias, named)
    check_shape("delta", delta, (batch, dim, seqlen))
    check_shape("z", z, (batch, dim, seqlen))
    check_shape("B", B, (batch, dstate, seqlen))
    check_shape("C", C, (batch, dstate, seqlen))
    check_shape("initial_state", initial_state, (batch, dim, dstate))
    check_runnable(_selective_scan_kernel, u)

    if u.stride(1) == 1 and dim > 1:
        y = torch.empty(batch, seqlen, dim, device=u.device, dtype=u.dtype).transpose(1, 2)
    else:
        y = torch.empty(batch, dim, seqlen, device=u.device, dtype=u.dtype)
    final = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32) if return_final_state else None
    if batch * dim * seqlen == 0:  # nothing to scan: the state is the initial one
        if final is not None:
            final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
        return (y, final) if return_final_state else y
    default_block, default_warps = _scan_tiles(dim, dstate, u.is_cuda)
    block_d, num_warps = block_d or default_block, num_warps or default_warps
    block_n = next_pow2(dstate)
    zz = z if z is not None else u
    init = initial_state
    with device_of(u):
        _selective_scan_kernel[(batch, cdiv(dim, block_d))](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
            init if init is not None else A, y, final if final is not None else y,
            dim, dstate, seqlen,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
            stride_or_zero(init, 0), stride_or_zero(init, 1), stride_or_zero(init, 2), *y.stride(),
            stride_or_zero(final, 0), stride_or_zero(final, 1), stride_or_zero(final, 2),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, WRITE_FINAL=final is not None,
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
        )
    return (y, final) if return_final_state else y


def _selective_state_update_launch(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
) -> torch.Tensor:
    """Checks and launches ``_selective_state_update_kernel``; same contract as ``selective_state_update_ref``."""
    if x.dim() != 2:
        raise QuambaError(f"x has shape {list(x.shape)}, expected [B, D]")
    batch, dim = x.shape
    named = [("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("dt_bias", dt_bias)]
    dstate = _check_common(dim, A, D, dt_bias, named)
    check_shape("state", state, (batch, dim, dstate))
    check_shape("dt", dt, (batch, dim))
    check_shape("z", z, (batch, dim))
    check_shape("B", B, (batch, dstate))
    check_shape("C", C, (batch, dstate))
    check_runnable(_selective_state_update_kernel, x)

    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    if batch * dim == 0:
        return y
    block_n = next_pow2(dstate)
    block_d = max(1, min(next_pow2(dim), 2048 // block_n, 64 if x.is_cuda else 16))
    zz = z if z is not None else x
    with device_of(x):
        _selective_state_update_kernel[(batch, cdiv(dim, block_d))](
            state, x, dt, A, B, C, D if D is not None else A, zz, dt_bias if dt_bias is not None else A, y,
            dim, dstate,
            *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
            *y.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=4,
        )
    return y
