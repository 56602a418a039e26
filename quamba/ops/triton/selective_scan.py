"""Triton selective scan (Mamba1's S6): full-sequence prefill and the one-token state update.

Contracts of ``quamba.ops.selective_scan``'s references: the float ops (``selective_scan_ref``,
``selective_state_update_ref``) and the int8-input ops (``qselective_scan_ref``, ``qselective_state_update_ref``),
which differ only in how an input is loaded: a float is converted to fp32, an int8 value is multiplied by its fp32
per-tensor scale in registers (the reference's ``q.float() * scale``), and A may come as A_log (A = -exp(A_log)).
The prefill runs one program per (batch, block of channels), walks the sequence in order and keeps the
[BLOCK_D, N] state in fp32 registers, so the state never goes to memory until the end:
    dt = softplus(delta + delta_bias);  h = exp(dt * A) * h + dt * u * B_t;  y = C_t . h + D * u;  y *= silu(z)
The walk takes 4 time steps per iteration (written out): their loads are issued one iteration ahead (memory latency
overlaps the arithmetic) and their arithmetic, all of it independent of the state but one multiply-add per element,
interleaves in one basic block (the one-step walk stalled on each step's dependent chain). Inputs may be strided
(the model passes transposed views).

An int8 state (``Int8State``: q int8 [..., N], scale fp32 [..., 1], scale = abs-max of the row / 127) is read as
q * scale and written back by ``quantize_state_rows`` in registers: a row of N values is always in one program.

The one-token update may also take Mamba1's dt_proj (``DtProj``, W8A8 with an int8 output): each program then
computes the int8 dt of its channels from dt_low [B, R] with exact int32 dot products and the W8A8 epilogue, so the
decode step runs one kernel where it ran two (the GEMV launch and its dt round trip through memory are gone). Where R
is a multiple of 4 and the rows are 4-byte aligned (every Mamba1 checkpoint: R = d_model / 16), the weights may be
read as int32 words and summed with ``dp4a`` (``DT_PROJ_WORDS``; one instruction per 4 products, a quarter of the
registers of the byte tile), and with ``prefetch_state`` they are loaded before the dependent-launch wait like the
state: only dt_low comes from the kernel before.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, dequant, device_of, dp4a,
                      next_pow2, pdl_start, quantize_int8, silu, softplus, stride_or_zero, use_pdl)

_MAX_STATE = 256  # the state of a channel block lives in registers


# ---------------------------------------------------------------------------------------------- jit helpers

@triton.jit
def quantize_state_rows(h):
    """``Int8State.store`` in registers, per row of h [R, N] (padding columns must hold 0):
    scale = max(abs-max, 1e-12) / 127 and q = clamp(round_half_even(h / scale)) as int8; returns (q, scale [R])."""
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(h), axis=1), 1e-12), 127.0)
    return quantize_int8(h, scale[:, None]), scale


@triton.jit
def _load_A2(A_ptr, offs_d, offs_n, sad, san, mask_dn, A_LOG: tl.constexpr):
    """A * log2(e) as fp32 [BLOCK_D, BLOCK_N] (from A, or from A_log as -exp(A_log)); 0 on padding, so padded
    state slots (also B = 0 there) stay exactly 0 and add nothing to y."""
    a = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mask_dn, other=0.0).to(tl.float32)
    if A_LOG:
        a = tl.where(mask_dn, -tl.exp(a), 0.0)
    return a * 1.4426950408889634  # log2(e): exp(dt * A) = exp2(dt * A2), A scaled once rather than every step


@triton.jit
def _dt_from_proj(dtl_ptr, w_ptr, dxs_ptr, dws_ptr, dos_ptr, pid_b, offs_d, mask_d, rank,
                  stlb, stlr, swd, swr, sdws, sdos, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """dt_proj for this program's channels: int8 dt [BLOCK_D] = requantize(dt_low[pid_b] . W[offs_d]^T), the
    ``w8a8_gemm_ref`` epilogue with an out_scale in gemm_w8a8's ``int_epilogue`` order (SCALE_ORDER 0, REQUANT):
    acc * (x_scale * w_scale), div_rn by out_scale, clamp, round half to even. R is padded to BLOCK_R (masked 0s
    add nothing); the int32 sums are exact (|acc| < 2^14 R), so the int8 dt equals the separate GEMV's.
    sdws / sdos are 0 for a per-tensor scale, else the [D] scale's stride."""
    acc = tl.zeros([BLOCK_D], dtype=tl.int32)
    for r0 in range(0, rank, BLOCK_R):  # one pass for R <= BLOCK_R (every Mamba1: dt_rank <= 256)
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        x = tl.load(dtl_ptr + pid_b * stlb + offs_r * stlr, mask=mask_r, other=0).to(tl.int32)
        w = tl.load(w_ptr + offs_d[:, None] * swd + offs_r[None, :] * swr, mask=mask_d[:, None] & mask_r[None, :],
                    other=0).to(tl.int32)
        acc += tl.sum(w * x[None, :], axis=1)
    ws = tl.load(dws_ptr + offs_d * sdws, mask=mask_d, other=1.0)
    out_scale = tl.load(dos_ptr + offs_d * sdos, mask=mask_d, other=1.0)
    y = acc.to(tl.float32) * (tl.load(dxs_ptr) * ws)
    return quantize_int8(y, out_scale)


@triton.jit
def _dt_proj_words(w_ptr, dxs_ptr, dws_ptr, dos_ptr, offs_d, mask_d, rank, swd, sdws, sdos,
                   BLOCK_RW: tl.constexpr):
    """dt_proj's parameters for this program's channels, read as words (R a multiple of 4, rows 4-byte aligned; swd:
    the weight's row stride in words): (w int32 [BLOCK_D, BLOCK_RW] of 4 int8 along R each, 0 past R; the input
    scale; the weight and out scales [BLOCK_D])."""
    offs_w = tl.arange(0, BLOCK_RW)
    w = tl.load(w_ptr.to(tl.pointer_type(tl.int32)) + offs_d[:, None] * swd + offs_w[None, :],
                mask=mask_d[:, None] & (offs_w < rank // 4)[None, :], other=0)
    ws = tl.load(dws_ptr + offs_d * sdws, mask=mask_d, other=1.0)
    out_scale = tl.load(dos_ptr + offs_d * sdos, mask=mask_d, other=1.0)
    return w, tl.load(dxs_ptr), ws, out_scale


@triton.jit
def _dt_from_words(dtl_ptr, pid_b, rank, stlb, w, xs, ws, out_scale, BLOCK_RW: tl.constexpr, USE_ASM: tl.constexpr):
    """``_dt_from_proj`` from ``_dt_proj_words``' parameters: dt_low's row (stlb: its stride in words) as words, one
    ``dp4a`` per weight word, the same exact int32 sums and the same epilogue."""
    offs_w = tl.arange(0, BLOCK_RW)
    xw = tl.load(dtl_ptr.to(tl.pointer_type(tl.int32)) + pid_b * stlb + offs_w, mask=offs_w < rank // 4, other=0)
    acc = tl.sum(dp4a(w, xw[None, :], 0, USE_ASM), axis=1)
    y = acc.to(tl.float32) * (xs * ws)
    return quantize_int8(y, out_scale)


@triton.jit
def _load_step(u_p, dt_p, z_p, b_p, c_p, t, sul, sdl, szl, sbl, scl, mask_d, mask_n, us, ds, zs, bs, cs,
               HAS_Z: tl.constexpr, QUANT: tl.constexpr):
    """Inputs of time step t (which the caller keeps inside the sequence), as fp32."""
    u = dequant(tl.load(u_p + t * sul, mask=mask_d, other=0), us, QUANT)
    dt = dequant(tl.load(dt_p + t * sdl, mask=mask_d, other=0), ds, QUANT)
    if HAS_Z:
        z = dequant(tl.load(z_p + t * szl, mask=mask_d, other=0), zs, QUANT)
    else:
        z = u
    b = dequant(tl.load(b_p + t * sbl, mask=mask_n, other=0), bs, QUANT)
    c = dequant(tl.load(c_p + t * scl, mask=mask_n, other=0), cs, QUANT)
    return u, dt, z, b, c


@triton.jit
def _scan_step(h, A2, u, dt, z, b, c, bias, Dv, y_p, t, syl, seqlen, mask_d,
               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One time step: update the state, store y_t; steps past the sequence get dt = 0 (h unchanged, no store)."""
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = softplus(dt)
    inside = (tl.zeros_like(mask_d.to(tl.int32)) + t) < seqlen  # as a vector: t may be a plain int
    dt = tl.where(inside, dt, 0.0)
    h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * b[None, :]
    y = tl.sum(h * c[None, :], axis=1)
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        y *= silu(z)
    tl.store(y_p + t * syl, y.to(y_p.dtype.element_ty), mask=mask_d & inside)
    return h


# ---------------------------------------------------------------------------------------------- kernels

@triton.jit(do_not_specialize=["seqlen"])  # seqlen 1 (and every other length) share one compiled kernel
def _selective_scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
    us_ptr, ds_ptr, bs_ptr, cs_ptr, zs_ptr, init_scale_ptr, final_scale_ptr,
    dim, dstate, seqlen,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl,
    szb, szd, szl, sib, sid, sin, syb, syd, syl, sfb, sfd, sfn, sisb, sisd, sfsb, sfsd,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, QUANT: tl.constexpr, A_LOG: tl.constexpr,
    INIT_INT8: tl.constexpr, FINAL_INT8: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (B, cdiv(D, BLOCK_D)); the whole sequence in one program, 4 steps per iteration."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A2 = _load_A2(A_ptr, offs_d, offs_n, sad, san, mask_dn, A_LOG)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = bias
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    us, ds, zs, bs, cs = 1.0, 1.0, 1.0, 1.0, 1.0
    if QUANT:
        us, ds, bs, cs = tl.load(us_ptr), tl.load(ds_ptr), tl.load(bs_ptr), tl.load(cs_ptr)
        if HAS_Z:
            zs = tl.load(zs_ptr)
    if HAS_INIT:
        h = tl.load(init_ptr + pid_b * sib + offs_d[:, None] * sid + offs_n[None, :] * sin, mask=mask_dn,
                    other=0).to(tl.float32)
        if INIT_INT8:
            h = h * tl.load(init_scale_ptr + pid_b * sisb + offs_d * sisd, mask=mask_d, other=0.0)[:, None]
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    u_p = u_ptr + pid_b * sub + offs_d * sud
    dt_p = delta_ptr + pid_b * sdb + offs_d * sdd
    z_p = z_ptr + pid_b * szb + offs_d * szd
    b_p = B_ptr + pid_b * sbb + offs_n * sbn
    c_p = C_ptr + pid_b * scb + offs_n * scn
    y_p = y_ptr + pid_b * syb + offs_d * syd

    # seqlen >= 1 here. Look-ahead loads past the end re-read the last step (in bounds); _scan_step ignores them.
    last = seqlen - 1
    u0, d0, z0, b0, c0 = _load_step(u_p, dt_p, z_p, b_p, c_p, 0, sul, sdl, szl, sbl, scl, mask_d, mask_n,
                                    us, ds, zs, bs, cs, HAS_Z, QUANT)
    u1, d1, z1, b1, c1 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(last, 1), sul, sdl, szl, sbl, scl,
                                    mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
    u2, d2, z2, b2, c2 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(last, 2), sul, sdl, szl, sbl, scl,
                                    mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
    u3, d3, z3, b3, c3 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(last, 3), sul, sdl, szl, sbl, scl,
                                    mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
    for t in range(0, seqlen, 4):
        # This iteration's steps t .. t+3, then the next iteration's loads, then the arithmetic.
        xu0, xd0, xz0, xb0, xc0 = u0, d0, z0, b0, c0
        xu1, xd1, xz1, xb1, xc1 = u1, d1, z1, b1, c1
        xu2, xd2, xz2, xb2, xc2 = u2, d2, z2, b2, c2
        xu3, xd3, xz3, xb3, xc3 = u3, d3, z3, b3, c3
        u0, d0, z0, b0, c0 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(t + 4, last), sul, sdl, szl, sbl,
                                        scl, mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
        u1, d1, z1, b1, c1 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(t + 5, last), sul, sdl, szl, sbl,
                                        scl, mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
        u2, d2, z2, b2, c2 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(t + 6, last), sul, sdl, szl, sbl,
                                        scl, mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
        u3, d3, z3, b3, c3 = _load_step(u_p, dt_p, z_p, b_p, c_p, tl.minimum(t + 7, last), sul, sdl, szl, sbl,
                                        scl, mask_d, mask_n, us, ds, zs, bs, cs, HAS_Z, QUANT)
        h = _scan_step(h, A2, xu0, xd0, xz0, xb0, xc0, bias, Dv, y_p, t, syl, seqlen, mask_d,
                       HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
        h = _scan_step(h, A2, xu1, xd1, xz1, xb1, xc1, bias, Dv, y_p, t + 1, syl, seqlen, mask_d,
                       HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
        h = _scan_step(h, A2, xu2, xd2, xz2, xb2, xc2, bias, Dv, y_p, t + 2, syl, seqlen, mask_d,
                       HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
        h = _scan_step(h, A2, xu3, xd3, xz3, xb3, xc3, bias, Dv, y_p, t + 3, syl, seqlen, mask_d,
                       HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)

    if WRITE_FINAL:
        f_ptrs = final_ptr + pid_b * sfb + offs_d[:, None] * sfd + offs_n[None, :] * sfn
        if FINAL_INT8:
            q, scale = quantize_state_rows(h)
            tl.store(f_ptrs, q, mask=mask_dn)
            tl.store(final_scale_ptr + pid_b * sfsb + offs_d * sfsd, scale, mask=mask_d)
        else:
            tl.store(f_ptrs, h, mask=mask_dn)


@triton.jit
def _selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    xs_ptr, ds_ptr, bs_ptr, cs_ptr, zs_ptr, sscale_ptr, pw_ptr, pxs_ptr, pws_ptr, pos_ptr,
    dim, dstate, rank,
    ssb, ssd, ssn, sxb, sxd, stb, std, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd, sqb, sqd,
    spwd, spwr, spws, spos,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    QUANT: tl.constexpr, A_LOG: tl.constexpr, STATE_INT8: tl.constexpr, DT_PROJ: tl.constexpr,
    DT_WORDS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    USE_PDL: tl.constexpr, PREFETCH: tl.constexpr, USE_ASM: tl.constexpr,
):
    """One step for a [BLOCK_D, N] slice of the state (fp32, or int8 rows with their scales, updated in place);
    grid (B, cdiv(D, BLOCK_D)). With DT_PROJ, dt_ptr is dt_low [B, R] (strides stb, std) and the int8 dt comes from
    dt_proj (weight pw [D, R], scales pxs / pws / pos) in ``_dt_from_proj``, or with DT_WORDS (BLOCK_R: words of
    R, strides stb / spwd in words) in ``_dt_from_words``. PREFETCH: the state, A, D, the bias, the scales and
    dt_proj's words are loaded before waiting for the previous kernel (which must write none of them; see
    ``ssd._ssd_state_update_launch``), else after."""
    if not PREFETCH:
        pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

    xs, ds, zs, bs, cs = 1.0, 1.0, 1.0, 1.0, 1.0
    if QUANT:
        xs, ds, bs, cs = tl.load(xs_ptr), tl.load(ds_ptr), tl.load(bs_ptr), tl.load(cs_ptr)
        if HAS_Z:
            zs = tl.load(zs_ptr)
    s_ptrs = state_ptr + pid_b * ssb + offs_d[:, None] * ssd + offs_n[None, :] * ssn
    h = tl.load(s_ptrs, mask=mask_dn, other=0).to(tl.float32)
    q_ptrs = sscale_ptr + pid_b * sqb + offs_d * sqd
    if STATE_INT8:
        h = h * tl.load(q_ptrs, mask=mask_d, other=0.0)[:, None]
    A2 = _load_A2(A_ptr, offs_d, offs_n, sad, san, mask_dn, A_LOG)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    d_skip = 0.0
    if HAS_D:
        d_skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if DT_PROJ and DT_WORDS and PREFETCH:
        pw, pxs, pws, pos = _dt_proj_words(pw_ptr, pxs_ptr, pws_ptr, pos_ptr, offs_d, mask_d, rank, spwd, spws, spos,
                                           BLOCK_R)
    if PREFETCH:
        pdl_start(USE_PDL)  # only the inputs below come from the kernels before this one

    x = dequant(tl.load(x_ptr + pid_b * sxb + offs_d * sxd, mask=mask_d, other=0), xs, QUANT)
    if DT_PROJ and DT_WORDS:  # the int8 dt that dt_proj would have stored
        if not PREFETCH:
            pw, pxs, pws, pos = _dt_proj_words(pw_ptr, pxs_ptr, pws_ptr, pos_ptr, offs_d, mask_d, rank, spwd, spws,
                                               spos, BLOCK_R)
        dt = _dt_from_words(dt_ptr, pid_b, rank, stb, pw, pxs, pws, pos, BLOCK_R, USE_ASM)
    elif DT_PROJ:
        dt = _dt_from_proj(dt_ptr, pw_ptr, pxs_ptr, pws_ptr, pos_ptr, pid_b, offs_d, mask_d, rank,
                           stb, std, spwd, spwr, spws, spos, BLOCK_D, BLOCK_R)
    else:
        dt = tl.load(dt_ptr + pid_b * stb + offs_d * std, mask=mask_d, other=0)
    dt = dequant(dt, ds, QUANT)
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = softplus(dt)
    b = dequant(tl.load(B_ptr + pid_b * sbb + offs_n * sbn, mask=mask_n, other=0), bs, QUANT)
    c = dequant(tl.load(C_ptr + pid_b * scb + offs_n * scn, mask=mask_n, other=0), cs, QUANT)

    h = tl.exp2(dt[:, None] * A2) * h + (dt * x)[:, None] * b[None, :]
    if STATE_INT8:
        q, scale = quantize_state_rows(h)
        tl.store(s_ptrs, q, mask=mask_dn)
        tl.store(q_ptrs, scale, mask=mask_d)
    else:
        tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * c[None, :], axis=1)  # from the fp32 state (before rounding to int8), as the reference does
    if HAS_D:
        y += x * d_skip
    if HAS_Z:
        y *= silu(dequant(tl.load(z_ptr + pid_b * szb + offs_d * szd, mask=mask_d, other=0), zs, QUANT))
    tl.store(y_ptr + pid_b * syb + offs_d * syd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


# ---------------------------------------------------------------------------------------------- checks

def _check_params(dim: int, A, D, bias) -> int:
    if A.dim() != 2 or A.shape[0] != dim:
        raise QuambaError(f"A has shape {list(A.shape)}, expected [{dim}, N]")
    dstate = A.shape[1]
    if dstate > _MAX_STATE:
        raise QuambaError(f"d_state {dstate} exceeds the Triton scan's {_MAX_STATE}: use the *_ref op")
    check_shape("D", D, (dim,))
    check_shape("delta_bias", bias, (dim,))
    return dstate


def _check_quant_inputs(named, scales) -> None:
    """int8 inputs with fp32 per-tensor scales (one element each, read on the device)."""
    for (name, t), s in zip(named, scales):
        if t is None:
            continue
        if t.dtype != torch.int8:
            raise QuambaError(f"{name} has dtype {t.dtype}: the quantized scan takes int8 inputs (quantize them first)")
        if s is None or s.numel() != 1 or s.dtype != torch.float32:
            raise QuambaError(f"{name}'s scale must be a one-element float32 tensor, got "
                              f"{None if s is None else (list(s.shape), s.dtype)}")


def _state_parts(state, shape, what: str):
    """A state argument as (tensor, scale or None): fp32 [.., N], or a (q int8, scale fp32 [.., 1]) pair."""
    if state is None:
        return None, None
    if isinstance(state, tuple):
        q, scale = state
        check_shape(f"{what} q", q, shape)
        check_shape(f"{what} scale", scale, (*shape[:-1], 1))
        if q.dtype != torch.int8 or scale.dtype != torch.float32:
            raise QuambaError(f"an int8 {what} is (q int8, scale float32), got ({q.dtype}, {scale.dtype})")
        return q, scale
    check_shape(what, state, shape)
    check_float(what, state)
    return state, None


def _dt_proj_args(dt_proj, dt_low, batch: int, dim: int):
    """Checks a ``DtProj`` against dt_low; returns (weight, input_scale, weight_scale, its stride, out_scale, its
    stride) for the kernel (a scale's stride is 0 for one value, else that of its [D] elements)."""
    weight, input_scale, weight_scale, out_scale = dt_proj
    if weight.dtype != torch.int8 or weight.dim() != 2 or weight.shape[0] != dim:
        raise QuambaError(f"dt_proj weight is {weight.dtype} {list(weight.shape)}, expected int8 [{dim}, R]")
    rank = weight.shape[1]
    if dt_low.dtype != torch.int8 or tuple(dt_low.shape) != (batch, rank):
        raise QuambaError(f"dt_low (dt with dt_proj) is {dt_low.dtype} {list(dt_low.shape)}, "
                          f"expected int8 [{batch}, {rank}]")
    if input_scale.dtype != torch.float32 or input_scale.numel() != 1:
        raise QuambaError(f"dt_proj input_scale must be one float32 value, got "
                          f"{input_scale.dtype} {list(input_scale.shape)}")
    args = [weight, input_scale]
    for name, scale in (("weight_scale", weight_scale), ("out_scale", out_scale)):
        if scale.dtype != torch.float32 or not (scale.numel() == 1 or tuple(scale.shape) == (dim,)):
            raise QuambaError(f"dt_proj {name} must be float32 with one value or [{dim}], got "
                              f"{scale.dtype} {list(scale.shape)}")
        args += [scale, 0 if scale.numel() == 1 else scale.stride(0)]
    return tuple(args)


def _scan_tiles(dim: int, dstate: int, on_gpu: bool) -> tuple[int, int]:
    """(BLOCK_D, num_warps). Small programs keep many in flight (batch 1 has only D / BLOCK_D of them):
    on an H100 at d_inner 5120, N 16, 1024 tokens (fp16), 128-element programs on one warp ran in 467 us,
    the first heuristic's 512 elements on two warps in 868 us (block_d 4..64 x 1/2/4 warps swept; one step per
    iteration then, not yet re-swept for the 4-step walk). The interpreter prefers fewer, larger programs."""
    block = max(1, min(next_pow2(dim), (128 if on_gpu else 1024) // next_pow2(dstate), 64))
    size = block * next_pow2(dstate)
    return block, 1 if size <= 128 else 2 if size <= 512 else 4


# ---------------------------------------------------------------------------------------------- launchers

def _selective_scan_launch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    return_final_state=False, *, scales=None, A_is_log=False, final_state_int8=False, out_dtype=None,
    block_d: int | None = None, num_warps: int | None = None,
):
    """Checks and launches ``_selective_scan_kernel``; same contract as ``selective_scan_ref``, or with
    ``scales`` = (u, delta, B, C, z scales) that of ``qselective_scan_ref`` (int8 u, delta, B, C, z; A given as
    A_log when ``A_is_log``; initial_state fp32 or a (q, scale) pair; final state int8 (q, scale) when
    ``final_state_int8``; y in ``out_dtype``). ``block_d`` / ``num_warps`` override the launch heuristic (tuning).

    y is laid out [B, L, D] in memory (the [B, D, L] view is returned) for int8 inputs, and for float inputs when
    u's channels are contiguous, as in the model, so that out_proj reads it without a copy.
    """
    if u.dim() != 3:
        raise QuambaError(f"u has shape {list(u.shape)}, expected [B, D, L]")
    batch, dim, seqlen = u.shape
    quant = scales is not None
    dstate = _check_params(dim, A, D, delta_bias)
    check_shape("delta", delta, (batch, dim, seqlen))
    check_shape("z", z, (batch, dim, seqlen))
    check_shape("B", B, (batch, dstate, seqlen))
    check_shape("C", C, (batch, dstate, seqlen))
    init, init_scale = _state_parts(initial_state, (batch, dim, dstate), "initial_state")
    inputs = [("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)]
    params = [("A", A), ("D", D), ("delta_bias", delta_bias)]
    if quant:
        _check_quant_inputs(inputs, scales)
    for name, t in params + ([] if quant else inputs):
        check_float(name, t)
    check_same_device(*inputs, *params, ("initial_state", init), ("initial_state scale", init_scale),
                      *(("scale", s) for s in (scales or ())))
    check_runnable(_selective_scan_kernel, u)

    out_dtype = out_dtype or u.dtype
    if quant or (u.stride(1) == 1 and dim > 1):
        y = torch.empty(batch, seqlen, dim, device=u.device, dtype=out_dtype).transpose(1, 2)
    else:
        y = torch.empty(batch, dim, seqlen, device=u.device, dtype=out_dtype)
    final = final_scale = None
    if return_final_state:
        final = torch.empty(batch, dim, dstate, device=u.device,
                            dtype=torch.int8 if final_state_int8 else torch.float32)
        if final_state_int8:
            final_scale = torch.empty(batch, dim, 1, device=u.device, dtype=torch.float32)
    if batch * dim * seqlen == 0:  # nothing to scan: the state is the initial one
        if final is not None:
            _copy_initial(final, final_scale, init, init_scale)
        return _result(y, final, final_scale, return_final_state)
    default_block, default_warps = _scan_tiles(dim, dstate, u.is_cuda)
    block_d, num_warps = block_d or default_block, num_warps or default_warps
    zz = z if z is not None else u
    us, ds, bs, cs, zs = scales if quant else (A,) * 5
    with device_of(u):
        _selective_scan_kernel[(batch, cdiv(dim, block_d))](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
            init if init is not None else A, y, final if final is not None else y,
            us, ds, bs, cs, zs if zs is not None else us,
            init_scale if init_scale is not None else A, final_scale if final_scale is not None else A,
            dim, dstate, seqlen,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
            stride_or_zero(init, 0), stride_or_zero(init, 1), stride_or_zero(init, 2), *y.stride(),
            stride_or_zero(final, 0), stride_or_zero(final, 1), stride_or_zero(final, 2),
            stride_or_zero(init_scale, 0), stride_or_zero(init_scale, 1),
            stride_or_zero(final_scale, 0), stride_or_zero(final_scale, 1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, WRITE_FINAL=final is not None,
            QUANT=quant, A_LOG=bool(A_is_log), INIT_INT8=init_scale is not None, FINAL_INT8=final_scale is not None,
            BLOCK_D=block_d, BLOCK_N=next_pow2(dstate), num_warps=num_warps,
        )
    return _result(y, final, final_scale, return_final_state)


def _result(y, final, final_scale, return_final_state):
    if not return_final_state:
        return y
    return y, (final if final_scale is None else (final, final_scale))


def _copy_initial(final, final_scale, init, init_scale):
    """Empty sequence: the final state is the initial one (zeros without one), in the final state's format."""
    if init is None:
        final.zero_()
        if final_scale is not None:
            final_scale.fill_(1.0)
        return
    h = init.float() * init_scale if init_scale is not None else init
    if final_scale is None:
        final.copy_(h)
    else:
        from ..quant import quantize_ref

        final_scale.copy_(h.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127)
        final.copy_(quantize_ref(h, final_scale))


# dt_proj's rows per loop pass of the fused Mamba1 update read as bytes (R not a multiple of 4, or unaligned rows).
# At BLOCK_D 64 and R 160 (mamba-2.8b), sm_90 compiles of today's kernel (prefetch_state on): Triton 3.6, the H100
# machine's, 197 registers a thread, no spills (2 programs an SM); Triton 3.9 255 registers and 1.5 KB of spills.
DT_PROJ_BLOCK_R = 256
# The word path (dp4a) takes R up to this many words in one pass. DT_PROJ_WORDS, on: W8A8 mamba-2.8b decodes at 1.982
# ms a token with it against 2.495 with the byte tile (fp16 3.583; the unfused step 2.158), H100, one run alternating
# off / on (2026-12-07, benchmarks/decode_ab.py --switch dt-proj-words, decode_ab_dt-proj-words_*).
DT_PROJ_MAX_WORDS = 128
DT_PROJ_WORDS = True
# Channels per program on the GPU. With dt_proj's words a program holds a [BLOCK_D, words of R] tile too: at R 160,
# sm_90, Triton 3.6: 96 registers at 16 channels (benchmarks/sass_counts.py); 255 and spills at 64, 227 at 32 (those
# two compiled without the launch's integer specializations).
STATE_UPDATE_BLOCK_D = 64
DT_PROJ_WORDS_BLOCK_D = 16


def dt_proj_words(weight: torch.Tensor, dt_low: torch.Tensor) -> bool:
    """Whether the fused update reads dt_proj's weight [D, R] and dt_low [B, R] (int8) as int32 words: R a multiple
    of 4 and at most 4 * DT_PROJ_MAX_WORDS, both contiguous along R with 4-byte aligned rows."""
    rank = weight.shape[1]
    return (DT_PROJ_WORDS and rank % 4 == 0 and rank <= 4 * DT_PROJ_MAX_WORDS
            and all(t.stride(1) == 1 and t.stride(0) % 4 == 0 and t.data_ptr() % 4 == 0 for t in (weight, dt_low)))


def _selective_state_update_launch(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *, scales=None, A_is_log=False,
    out_dtype=None, dt_proj=None, prefetch_state=False,
) -> torch.Tensor:
    """Checks and launches ``_selective_state_update_kernel``; same contract as ``selective_state_update_ref``,
    or with ``scales`` = (x, dt, B, C, z scales) that of ``qselective_state_update_ref`` (``state`` fp32 or a
    (q, scale) int8 pair, updated in place; with ``dt_proj``, a ``DtProj``, dt is dt_low int8 [B, R] and the
    kernel computes dt_proj's int8 dt itself)."""
    if x.dim() != 2:
        raise QuambaError(f"x has shape {list(x.shape)}, expected [B, D]")
    batch, dim = x.shape
    quant = scales is not None
    dstate = _check_params(dim, A, D, dt_bias)
    st, st_scale = _state_parts(state, (batch, dim, dstate), "state")
    proj = None
    if dt_proj is None:
        check_shape("dt", dt, (batch, dim))
    elif not quant:
        raise QuambaError("dt_proj is fused into the int8-input update only (pass scales), not the float one")
    else:
        proj = _dt_proj_args(dt_proj, dt, batch, dim)
    check_shape("z", z, (batch, dim))
    check_shape("B", B, (batch, dstate))
    check_shape("C", C, (batch, dstate))
    inputs = [("x", x), ("dt" if dt_proj is None else "dt_low", dt), ("B", B), ("C", C), ("z", z)]
    params = [("A", A), ("D", D), ("dt_bias", dt_bias)]
    if quant:
        _check_quant_inputs(inputs, scales)
    for name, t in params + ([] if quant else inputs):
        check_float(name, t)
    check_same_device(*inputs, ("state", st), ("state scale", st_scale), *params,
                      *(("scale", s) for s in (scales or ())), *(("dt_proj", t) for t in (dt_proj or ())))
    check_runnable(_selective_state_update_kernel, x)

    y = torch.empty(batch, dim, device=x.device, dtype=out_dtype or x.dtype)
    if batch * dim == 0:
        return y
    block_n = next_pow2(dstate)
    zz = z if z is not None else x
    xs, ds, bs, cs, zs = scales if quant else (A,) * 5
    pw, pxs, pws, spws, pos, spos = proj or (A, A, A, 0, A, 0)
    rank = pw.shape[1] if proj else 0
    words = proj is not None and dt_proj_words(pw, dt)
    block_d = max(1, min(next_pow2(dim), 2048 // block_n,
                         (DT_PROJ_WORDS_BLOCK_D if words else STATE_UPDATE_BLOCK_D) if x.is_cuda else 16))
    block_r = next_pow2(rank // 4) if words else min(next_pow2(rank), DT_PROJ_BLOCK_R)
    dt_strides, pw_strides = dt.stride(), pw.stride()
    if words:  # in words along rows; the column strides (1) are unused
        dt_strides, pw_strides = (dt_strides[0] // 4, 1), (pw_strides[0] // 4, 1)
    pdl = use_pdl(x)
    with device_of(x):
        _selective_state_update_kernel[(batch, cdiv(dim, block_d))](
            st, x, dt, A, B, C, D if D is not None else A, zz, dt_bias if dt_bias is not None else A, y,
            xs, ds, bs, cs, zs if zs is not None else xs, st_scale if st_scale is not None else A, pw, pxs, pws, pos,
            dim, dstate, rank,
            *st.stride(), *x.stride(), *dt_strides, *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
            *y.stride(), stride_or_zero(st_scale, 0), stride_or_zero(st_scale, 1), *pw_strides, spws, spos,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
            QUANT=quant, A_LOG=bool(A_is_log), STATE_INT8=st_scale is not None, DT_PROJ=proj is not None,
            DT_WORDS=words, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=block_r, num_warps=4, USE_ASM=x.is_cuda,
            # No FMA contraction: which multiply-adds the compiler would fuse depends on the layouts it picks, which
            # differ with DT_PROJ, and the fused update must round exactly as dt_proj followed by the plain one
            # (on an H100 with contraction, y and the state differed in the last bits).
            USE_PDL=pdl, PREFETCH=bool(prefetch_state), launch_pdl=pdl, enable_fp_fusion=False,
        )
    return y
