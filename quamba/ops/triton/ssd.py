"""Triton SSD (Mamba2): chunked prefill in four kernels and the one-token state update.

Contracts of ``quamba.ops.ssd``'s references. The prefill follows the steps of ``ssd_chunked_ref``
(the chunked algorithm of the Mamba2 paper), each kernel parallel over (batch, chunk, head, tiles):
  1. ``_ssd_chunk_cumsum_kernel``  dt = limit(softplus(dt + dt_bias)); cumulative dt * A within each chunk
  2. ``_ssd_chunk_state_kernel``   each chunk's own end state: sum_s B_s exp(cs_last - cs_s) dt_s x_s
  3. ``_ssd_state_passing_kernel`` states entering each chunk (the only loop over chunks) + final state
  4. ``_ssd_chunk_scan_kernel``    y = causal (C B^T * decay * dt) x within the chunk
                                     + exp(cs) C . entering state + D x
Matrix products run on tensor cores: in x's dtype with fp32 accumulation for fp16/bf16 inputs (the
decay-weighted factor is rounded to that dtype), in full fp32 ("ieee", no tf32) for fp32 inputs.
Chunk-local intermediates (dt, cumsum, states) are fp32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, device_of, next_pow2,
                      softplus)

_MAX_STATE = 256  # the scan kernel keeps a [BLOCK_M, N] tile of C in registers
_FLOAT_MAX = 3.4e38  # stands in for an infinite upper dt limit


@triton.jit
def _mm(a, b, acc, like_ptr, IEEE: tl.constexpr):
    """acc + a @ b: full fp32 when IEEE, else on operands rounded to like_ptr's element type."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(like_ptr.dtype.element_ty), b.to(like_ptr.dtype.element_ty), acc)


@triton.jit
def _discretize(dt, bias, lo, hi, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr):
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    return dt


@triton.jit
def _ssd_chunk_cumsum_kernel(
    dt_ptr, A_ptr, bias_ptr, dt_out_ptr, cs_ptr,
    seqlen, nheads, chunk_size, lo, hi,
    sdb, sdl, sdh, sob, soh, soc, sol,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dt_out and cs (= cumsum of dt * A) as [B, H, nchunks, chunk] fp32; grid (B, nchunks, cdiv(H, BLOCK_H)).
    Positions past the sequence get dt = 0: no decay, no input, as the reference's padding."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, BLOCK_C)
    pos = pid_c * chunk_size + offs_l
    mask_h = offs_h < nheads
    valid = mask_h[:, None] & ((offs_l < chunk_size) & (pos < seqlen))[None, :]

    dt = tl.load(dt_ptr + pid_b * sdb + pos[None, :] * sdl + offs_h[:, None] * sdh, mask=valid, other=0.0)
    bias = tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    dt = _discretize(dt.to(tl.float32), bias, lo, hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
    dt = tl.where(valid, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * A[:, None], axis=1)

    out = pid_b * sob + offs_h[:, None] * soh + pid_c * soc + offs_l[None, :] * sol
    store_mask = mask_h[:, None] & (offs_l < chunk_size)[None, :]
    tl.store(dt_out_ptr + out, dt, mask=store_mask)
    tl.store(cs_ptr + out, cs, mask=store_mask)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, cs_ptr, st_ptr,
    seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
    sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, sob, soh, soc, sol, ssb, ssc, ssh, ssp, ssn,
    IEEE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """A chunk's end state from its own inputs, one [BLOCK_P, BLOCK_N] tile:
    st[b, c, h] = x^T diag(exp(cs_last - cs) * dt) B. Grid (tiles, nchunks, B * H)."""
    pid_bh = tl.program_id(2)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    pid_c = tl.program_id(1)
    num_n = tl.cdiv(dstate, BLOCK_N)
    offs_p = (tl.program_id(0) // num_n) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (tl.program_id(0) % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    chunk_start = pid_c * chunk_size
    chunk_len = tl.minimum(chunk_size, seqlen - chunk_start)

    x_base = x_ptr + pid_b * sxb + pid_h * sxh + chunk_start.to(tl.int64) * sxl
    b_base = B_ptr + pid_b * sbb + (pid_h // heads_per_group) * sbg + chunk_start.to(tl.int64) * sbl
    o_base = pid_b * sob + pid_h * soh + pid_c * soc
    cs_last = tl.load(cs_ptr + o_base + (chunk_size - 1) * sol)

    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for l0 in range(0, chunk_len, BLOCK_L):
        ls = l0 + offs_l
        in_l = ls < chunk_len
        xt = tl.load(x_base + offs_p[:, None] * sxp + ls[None, :] * sxl,
                     mask=(offs_p < headdim)[:, None] & in_l[None, :], other=0.0)  # [P, L]
        bm = tl.load(b_base + ls[:, None] * sbl + offs_n[None, :] * sbn,
                     mask=in_l[:, None] & (offs_n < dstate)[None, :], other=0.0).to(tl.float32)  # [L, N]
        cs = tl.load(cs_ptr + o_base + ls * sol, mask=in_l, other=0.0)
        dt = tl.load(dt_ptr + o_base + ls * sol, mask=in_l, other=0.0)
        scale = tl.where(in_l, tl.exp(cs_last - cs) * dt, 0.0)
        acc = _mm(xt, bm * scale[:, None], acc, x_ptr, IEEE)

    st = st_ptr + pid_b * ssb + pid_c * ssc + pid_h * ssh
    tl.store(st + offs_p[:, None] * ssp + offs_n[None, :] * ssn, acc,
             mask=(offs_p < headdim)[:, None] & (offs_n < dstate)[None, :])


@triton.jit
def _ssd_state_passing_kernel(
    st_ptr, cs_ptr, init_ptr, final_ptr,
    nchunks, chunk_size, nheads, size,
    ssb, ssc, ssh, sob, soh, soc, sol, sib, sih, sfb, sfh,
    HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """In place over st [B, nchunks, H, P*N] (each head's P x N block contiguous): chunk c's own
    state is replaced by the state entering chunk c; s <- exp(cs_last[c]) s + own[c].
    Grid (cdiv(P * N, BLOCK), B, H)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_h = tl.program_id(2)
    mask = offs < size
    if HAS_INIT:
        s = tl.load(init_ptr + pid_b * sib + pid_h * sih + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BLOCK], dtype=tl.float32)
    st = st_ptr + pid_b * ssb + pid_h * ssh + offs
    cs_last = cs_ptr + pid_b * sob + pid_h * soh + (chunk_size - 1) * sol
    for c in range(nchunks):
        own = tl.load(st + c * ssc, mask=mask, other=0.0)
        tl.store(st + c * ssc, s, mask=mask)  # same thread, same address: the load above has its value
        s = tl.exp(tl.load(cs_last + c * soc)) * s + own
    if WRITE_FINAL:
        tl.store(final_ptr + pid_b * sfb + pid_h * sfh + offs, s, mask=mask)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, B_ptr, C_ptr, dt_ptr, cs_ptr, st_ptr, D_ptr, y_ptr,
    seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
    sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, scb, scl, scg, scn, sob, soh, soc, sol,
    ssb, ssc, ssh, ssp, ssn, sdh, sdp, syb, syl, syh, syp,
    HAS_D: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Outputs of BLOCK_M positions x BLOCK_P channels of one chunk and head.
    Grid (cdiv(chunk, BLOCK_M) * cdiv(P, BLOCK_P), nchunks, B * H)."""
    pid_bh = tl.program_id(2)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    pid_g = pid_h // heads_per_group
    pid_c = tl.program_id(1)
    num_p = tl.cdiv(headdim, BLOCK_P)
    offs_m = (tl.program_id(0) // num_p) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = (tl.program_id(0) % num_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_s = tl.arange(0, BLOCK_S)
    chunk_start = pid_c * chunk_size
    chunk_len = tl.minimum(chunk_size, seqlen - chunk_start)
    in_m = offs_m < chunk_len
    in_p = offs_p < headdim
    in_n = offs_n < dstate

    x_base = x_ptr + pid_b * sxb + pid_h * sxh + chunk_start.to(tl.int64) * sxl
    b_base = B_ptr + pid_b * sbb + pid_g * sbg + chunk_start.to(tl.int64) * sbl
    c_base = C_ptr + pid_b * scb + pid_g * scg + chunk_start.to(tl.int64) * scl
    o_base = pid_b * sob + pid_h * soh + pid_c * soc

    cs_m = tl.load(cs_ptr + o_base + offs_m * sol, mask=in_m, other=0.0)
    c_tile = tl.load(c_base + offs_m[:, None] * scl + offs_n[None, :] * scn, mask=in_m[:, None] & in_n[None, :],
                     other=0.0)  # [M, N]

    # The state entering the chunk, decayed to each position: exp(cs_m) * C_m . state
    st = tl.load(st_ptr + pid_b * ssb + pid_c * ssc + pid_h * ssh + offs_n[:, None] * ssn + offs_p[None, :] * ssp,
                 mask=in_n[:, None] & in_p[None, :], other=0.0)  # [N, P]
    acc = _mm(c_tile, st, tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32), x_ptr, IEEE)
    acc = acc * tl.exp(cs_m)[:, None]

    # Inputs of this chunk up to the block's last row: causal, decay-weighted C B^T times dt x.
    s_hi = tl.minimum((tl.program_id(0) // num_p + 1) * BLOCK_M, chunk_len)
    for s0 in range(0, s_hi, BLOCK_S):
        ss = s0 + offs_s
        in_s = ss < chunk_len
        b_t = tl.load(b_base + ss[None, :] * sbl + offs_n[:, None] * sbn, mask=in_n[:, None] & in_s[None, :],
                      other=0.0)  # [N, S]
        cb = _mm(c_tile, b_t, tl.zeros([BLOCK_M, BLOCK_S], dtype=tl.float32), x_ptr, IEEE)
        cs_s = tl.load(cs_ptr + o_base + ss * sol, mask=in_s, other=0.0)
        dt_s = tl.load(dt_ptr + o_base + ss * sol, mask=in_s, other=0.0)
        causal = (offs_m[:, None] >= ss[None, :]) & in_s[None, :]
        # Above the diagonal cs_m - cs_s > 0 may overflow exp: clamp before, mask after.
        decay = tl.exp(tl.minimum(cs_m[:, None] - cs_s[None, :], 0.0))
        w = tl.where(causal, cb * decay * dt_s[None, :], 0.0)
        xs = tl.load(x_base + ss[:, None] * sxl + offs_p[None, :] * sxp, mask=in_s[:, None] & in_p[None, :],
                     other=0.0)  # [S, P]
        acc = _mm(w, xs, acc, x_ptr, IEEE)

    x_m = tl.load(x_base + offs_m[:, None] * sxl + offs_p[None, :] * sxp, mask=in_m[:, None] & in_p[None, :],
                  other=0.0).to(tl.float32)
    if HAS_D:
        acc += x_m * tl.load(D_ptr + pid_h * sdh + offs_p * sdp, mask=in_p, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + pid_b * syb + pid_h * syh + chunk_start.to(tl.int64) * syl
    tl.store(y + offs_m[:, None] * syl + offs_p[None, :] * syp, acc.to(y_ptr.dtype.element_ty),
             mask=in_m[:, None] & in_p[None, :])


@triton.jit
def _ssd_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
    headdim, dstate, heads_per_group, lo, hi,
    ssb, ssh, ssp, ssn, sxb, sxh, sxp, stb, sth, sbb, sbg, sbn, scb, scg, scn, sdh, sdp, syb, syh, syp,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One step for a [BLOCK_P, N] slice of one head's state; grid (B, H, cdiv(P, BLOCK_P))."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    pid_g = pid_h // heads_per_group
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    in_p = offs_p < headdim
    in_n = offs_n < dstate
    in_pn = in_p[:, None] & in_n[None, :]

    dt = tl.load(dt_ptr + pid_b * stb + pid_h * sth).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)
    dt = _discretize(dt, bias, lo, hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
    decay = tl.exp(dt * tl.load(A_ptr + pid_h).to(tl.float32))

    s_ptrs = state_ptr + pid_b * ssb + pid_h * ssh + offs_p[:, None] * ssp + offs_n[None, :] * ssn
    x = tl.load(x_ptr + pid_b * sxb + pid_h * sxh + offs_p * sxp, mask=in_p, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + pid_b * sbb + pid_g * sbg + offs_n * sbn, mask=in_n, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + pid_b * scb + pid_g * scg + offs_n * scn, mask=in_n, other=0.0).to(tl.float32)
    h = decay * tl.load(s_ptrs, mask=in_pn, other=0.0).to(tl.float32) + (dt * x)[:, None] * b[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=in_pn)
    y = tl.sum(h * c[None, :], axis=1)  # from the fp32 state, as the reference does
    if HAS_D:
        y += x * tl.load(D_ptr + pid_h * sdh + offs_p * sdp, mask=in_p, other=0.0).to(tl.float32)
    tl.store(y_ptr + pid_b * syb + pid_h * syh + offs_p * syp, y.to(y_ptr.dtype.element_ty), mask=in_p)


def _limit_args(dt_limit) -> tuple[bool, float, float]:
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    has = lo > 0.0 or hi < math.inf
    return has, lo, min(hi, _FLOAT_MAX)


def _d_strides(D: torch.Tensor | None, nheads: int, headdim: int) -> tuple[int, int]:
    """D [H] reads D[h] for every channel (stride 0 along P); D [H, P] reads D[h, p]."""
    if D is None:
        return 0, 0
    if tuple(D.shape) == (nheads,):
        return D.stride(0), 0
    if tuple(D.shape) == (nheads, headdim):
        return D.stride(0), D.stride(1)
    raise QuambaError(f"D has shape {list(D.shape)}, expected [{nheads}] or [{nheads}, {headdim}]")


def _check_groups(B: torch.Tensor, nheads: int) -> int:
    ngroups = B.shape[-2]
    if ngroups == 0 or nheads % ngroups:
        raise QuambaError(f"{ngroups} B/C groups do not divide {nheads} heads: use a group count dividing nheads")
    if B.shape[-1] > _MAX_STATE:
        raise QuambaError(f"d_state {B.shape[-1]} exceeds the Triton SSD's {_MAX_STATE}: use the *_ref op")
    return nheads // ngroups


def _tile(n: int, cap: int) -> int:
    """Power-of-two tile for a dot operand: at least 16 (the tensor-core minimum), at most cap."""
    return max(16, min(next_pow2(n), cap))


def _ssd_chunked_launch(
    x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    initial_state=None, return_final_state=False,
):
    """Checks and launches the four SSD kernels; same contract as ``ssd_chunked_ref``."""
    if x.dim() != 4:
        raise QuambaError(f"x has shape {list(x.shape)}, expected [B, L, H, P]")
    batch, seqlen, nheads, headdim = x.shape
    if B.dim() != 4:
        raise QuambaError(f"B has shape {list(B.shape)}, expected [B, L, G, N]")
    ngroups, dstate = B.shape[-2:]
    check_shape("dt", dt, (batch, seqlen, nheads))
    check_shape("A", A, (nheads,))
    check_shape("B", B, (batch, seqlen, ngroups, dstate))
    check_shape("C", C, (batch, seqlen, ngroups, dstate))
    check_shape("dt_bias", dt_bias, (nheads,))
    check_shape("initial_state", initial_state, (batch, nheads, headdim, dstate))
    named = [("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias),
             ("initial_state", initial_state)]
    for name, t in named:
        check_float(name, t)
    check_same_device(*named)
    heads_per_group = _check_groups(B, nheads)
    sdh, sdp = _d_strides(D, nheads, headdim)
    if int(chunk_size) < 1:
        raise QuambaError(f"chunk_size must be a positive integer, got {chunk_size}")
    chunk_size = int(chunk_size)
    check_runnable(_ssd_chunk_scan_kernel, x)
    has_limit, lo, hi = _limit_args(dt_limit)

    y = torch.empty(batch, seqlen, nheads, headdim, device=x.device, dtype=x.dtype)
    final = (torch.empty(batch, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
             if return_final_state else None)
    if batch * seqlen * nheads * headdim * dstate == 0:
        if final is not None:
            final.copy_(initial_state if initial_state is not None and seqlen == 0 else torch.zeros_like(final))
        return (y, final) if return_final_state else y

    nchunks = cdiv(seqlen, chunk_size)
    f32 = dict(device=x.device, dtype=torch.float32)
    dt_c = torch.empty(batch, nheads, nchunks, chunk_size, **f32)
    cs = torch.empty_like(dt_c)
    states = torch.empty(batch, nchunks, nheads, headdim, dstate, **f32)
    ieee = x.dtype == torch.float32
    on_gpu = x.is_cuda
    bias = dt_bias if dt_bias is not None else A
    with device_of(x):
        block_c = next_pow2(chunk_size)
        block_h = max(1, min(next_pow2(nheads), 4096 // block_c))
        _ssd_chunk_cumsum_kernel[(batch, nchunks, cdiv(nheads, block_h))](
            dt, A, bias, dt_c, cs,
            seqlen, nheads, chunk_size, lo, hi,
            *dt.stride(), *dt_c.stride(),
            HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
            BLOCK_H=block_h, BLOCK_C=block_c,
        )

        bp, bn, bl = _tile(headdim, 64), _tile(dstate, 64), _tile(chunk_size, 64 if on_gpu else 32)
        grid = (cdiv(headdim, bp) * cdiv(dstate, bn), nchunks, batch * nheads)
        _ssd_chunk_state_kernel[grid](
            x, B, dt_c, cs, states,
            seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
            *x.stride(), *B.stride(), *dt_c.stride(), *states.stride(),
            IEEE=ieee, BLOCK_P=bp, BLOCK_N=bn, BLOCK_L=bl,
        )

        size = headdim * dstate
        block = min(1024, next_pow2(size))
        init = initial_state.reshape(batch, nheads, size) if initial_state is not None else None
        if init is not None and init.stride(-1) != 1:
            init = init.contiguous()
        _ssd_state_passing_kernel[(cdiv(size, block), batch, nheads)](
            states, cs, init if init is not None else states, final if final is not None else states,
            nchunks, chunk_size, nheads, size,
            states.stride(0), states.stride(1), states.stride(2), *cs.stride()[:3], cs.stride(3),
            init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
            final.stride(0) if final is not None else 0, final.stride(1) if final is not None else 0,
            HAS_INIT=init is not None, WRITE_FINAL=final is not None, BLOCK=block,
        )

        bm, bp, bs = _tile(chunk_size, 64), _tile(headdim, 64), _tile(chunk_size, 32 if ieee else 64)
        bn = max(16, next_pow2(dstate))
        grid = (cdiv(chunk_size, bm) * cdiv(headdim, bp), nchunks, batch * nheads)
        _ssd_chunk_scan_kernel[grid](
            x, B, C, dt_c, cs, states, D if D is not None else A, y,
            seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
            *x.stride(), *B.stride(), *C.stride(), *dt_c.stride(), *states.stride(), sdh, sdp, *y.stride(),
            HAS_D=D is not None, IEEE=ieee, BLOCK_M=bm, BLOCK_P=bp, BLOCK_N=bn, BLOCK_S=bs,
            num_warps=4 if ieee or bn <= 64 else 8,
        )
    return (y, final) if return_final_state else y


def _ssd_state_update_launch(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
) -> torch.Tensor:
    """Checks and launches ``_ssd_state_update_kernel``; same contract as ``ssd_state_update_ref``."""
    if x.dim() != 3:
        raise QuambaError(f"x has shape {list(x.shape)}, expected [B, H, P]")
    batch, nheads, headdim = x.shape
    if B.dim() != 3:
        raise QuambaError(f"B has shape {list(B.shape)}, expected [B, G, N]")
    ngroups, dstate = B.shape[-2:]
    check_shape("state", state, (batch, nheads, headdim, dstate))
    check_shape("dt", dt, (batch, nheads))
    check_shape("A", A, (nheads,))
    check_shape("B", B, (batch, ngroups, dstate))
    check_shape("C", C, (batch, ngroups, dstate))
    check_shape("dt_bias", dt_bias, (nheads,))
    named = [("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias)]
    for name, t in named:
        check_float(name, t)
    check_same_device(*named)
    heads_per_group = _check_groups(B, nheads)
    sdh, sdp = _d_strides(D, nheads, headdim)
    check_runnable(_ssd_state_update_kernel, x)
    has_limit, lo, hi = _limit_args(dt_limit)

    y = torch.empty(batch, nheads, headdim, device=x.device, dtype=x.dtype)
    if batch * nheads * headdim == 0:
        return y
    block_n = next_pow2(dstate)
    block_p = max(1, min(next_pow2(headdim), 4096 // block_n, 16 if x.is_cuda else 8))
    with device_of(x):
        _ssd_state_update_kernel[(batch, nheads, cdiv(headdim, block_p))](
            state, x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, y,
            headdim, dstate, heads_per_group, lo, hi,
            *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), sdh, sdp, *y.stride(),
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
            BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
        )
    return y
