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

int8 inputs (``qssd_chunked_ref`` / ``qssd_state_update_ref``: x with a per-channel scale [H * P], dt per head [H],
B / C per group [G]) take the same kernels with another load path: each kernel dequantizes what it reads
(q.float() * scale, the reference's arithmetic) in registers, A may come as A_log (A = -exp(A_log)), and y is
written in the requested dtype. Their products run in fp16 with fp32 accumulation (as the fp16 model's), or in
full fp32 when y is fp32; with ``INT8_DOTS`` the chunk scan (N >= 32, fp16 / bf16 y) instead takes C B^T as an
exact int8 product scaled after, and x's integers (exact in fp16) with x's scale applied to the sum. An int8 state (q [B, H, P, N], scale [B, H, P, 1]) is read as q * scale and the
final / updated state re-quantized per row in registers (``quantize_state_rows``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, dequant, device_of,
                      int8_to_float, int8_to_half, next_pow2, pdl_start, softplus, stride_or_zero, use_pdl)
from .selective_scan import _copy_initial, _state_parts, quantize_state_rows

_MAX_STATE = 256  # the scan kernel keeps a [BLOCK_M, N] tile of C in registers
_FLOAT_MAX = 3.4e38  # stands in for an infinite upper dt limit
# Operand types of the tensor-core products (the DOT constexpr): full fp32, or rounded to fp16 / bf16.
DOT_IEEE, DOT_F16, DOT_BF16 = 0, 1, 2


@triton.jit
def _mm(a, b, acc, DOT: tl.constexpr):
    """acc + a @ b: full fp32 (DOT_IEEE), else on operands rounded to fp16 (DOT_F16) or bf16 (DOT_BF16)."""
    if DOT == 0:
        return tl.dot(_dot_operand(a, DOT), _dot_operand(b, DOT), acc, input_precision="ieee")
    else:
        return tl.dot(_dot_operand(a, DOT), _dot_operand(b, DOT), acc)


@triton.jit
def _dot_operand(a, DOT: tl.constexpr):
    """a in the operand type of DOT's products (what _mm would convert it to)."""
    if DOT == 0:
        return a.to(tl.float32)
    elif DOT == 1:
        return a.to(tl.float16)
    else:
        return a.to(tl.bfloat16)


@triton.jit
def _int8_operand(q, DOT: tl.constexpr):
    """int8 q as _dot_operand(q, DOT), exactly (int8 fits fp16 and bf16) and without the conversion pipe."""
    if DOT == 1:
        return int8_to_half(q)
    else:
        return _dot_operand(int8_to_float(q), DOT)


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
def _load_A(ptrs, mask, A_LOG: tl.constexpr):
    """A per head as fp32, from A or from A_log (A = -exp(A_log)); 0 where masked."""
    a = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if A_LOG:
        a = tl.where(mask, -tl.exp(a), 0.0)
    return a


@triton.jit
def _ssd_chunk_cumsum_kernel(
    dt_ptr, A_ptr, bias_ptr, dt_out_ptr, cs_ptr, dts_ptr,
    seqlen, nheads, chunk_size, lo, hi,
    sdb, sdl, sdh, sob, soh, soc, sol, sds,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, QUANT: tl.constexpr,
    A_LOG: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
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

    dt = tl.load(dt_ptr + pid_b * sdb + pos[None, :] * sdl + offs_h[:, None] * sdh, mask=valid, other=0)
    dt_scale = 1.0
    if QUANT:
        dt_scale = tl.load(dts_ptr + offs_h * sds, mask=mask_h, other=0.0)[:, None]
    bias = tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    dt = _discretize(dequant(dt, dt_scale, QUANT), bias, lo, hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
    dt = tl.where(valid, dt, 0.0)
    A = _load_A(A_ptr + offs_h, mask_h, A_LOG)
    cs = tl.cumsum(dt * A[:, None], axis=1)

    out = pid_b * sob + offs_h[:, None] * soh + pid_c * soc + offs_l[None, :] * sol
    store_mask = mask_h[:, None] & (offs_l < chunk_size)[None, :]
    tl.store(dt_out_ptr + out, dt, mask=store_mask)
    tl.store(cs_ptr + out, cs, mask=store_mask)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, cs_ptr, st_ptr, xs_ptr, bs_ptr,
    seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
    sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, sob, soh, soc, sol, ssb, ssc, ssh, ssp, ssn, sxs, sbs,
    QUANT: tl.constexpr, DOT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
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

    pid_g = pid_h // heads_per_group
    x_base = x_ptr + pid_b * sxb + pid_h * sxh + chunk_start.to(tl.int64) * sxl
    b_base = B_ptr + pid_b * sbb + pid_g * sbg + chunk_start.to(tl.int64) * sbl
    o_base = pid_b * sob + pid_h * soh + pid_c * soc
    cs_last = tl.load(cs_ptr + o_base + (chunk_size - 1) * sol)
    x_scale, b_scale = 1.0, 1.0
    if QUANT:
        x_scale = tl.load(xs_ptr + (pid_h * headdim + offs_p) * sxs, mask=offs_p < headdim, other=0.0)[:, None]
        b_scale = tl.load(bs_ptr + pid_g * sbs)

    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for l0 in range(0, chunk_len, BLOCK_L):
        ls = l0 + offs_l
        in_l = ls < chunk_len
        xt = tl.load(x_base + offs_p[:, None] * sxp + ls[None, :] * sxl,
                     mask=(offs_p < headdim)[:, None] & in_l[None, :], other=0)  # [P, L]
        if QUANT:
            xt = dequant(xt, x_scale, QUANT)
        bm = tl.load(b_base + ls[:, None] * sbl + offs_n[None, :] * sbn,
                     mask=in_l[:, None] & (offs_n < dstate)[None, :], other=0)  # [L, N]
        bm = dequant(bm, b_scale, QUANT)
        cs = tl.load(cs_ptr + o_base + ls * sol, mask=in_l, other=0.0)
        dt = tl.load(dt_ptr + o_base + ls * sol, mask=in_l, other=0.0)
        scale = tl.where(in_l, tl.exp(cs_last - cs) * dt, 0.0)
        acc = _mm(xt, bm * scale[:, None], acc, DOT)

    st = st_ptr + pid_b * ssb + pid_c * ssc + pid_h * ssh
    tl.store(st + offs_p[:, None] * ssp + offs_n[None, :] * ssn, acc,
             mask=(offs_p < headdim)[:, None] & (offs_n < dstate)[None, :])


@triton.jit
def _ssd_state_passing_kernel(
    st_ptr, cs_ptr, init_ptr, init_scale_ptr, final_ptr, final_scale_ptr,
    nchunks, chunk_size, headdim, dstate,
    ssb, ssc, ssh, ssp, ssn, sob, soh, soc, sol, sib, sih, sip, sin, sisb, sish, sisp,
    sfb, sfh, sfp, sfn, sfsb, sfsh, sfsp,
    HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, INIT_INT8: tl.constexpr, FINAL_INT8: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """In place over st [B, nchunks, H, P, N]: chunk c's own state is replaced by the state entering chunk c;
    s <- exp(cs_last[c]) s + own[c]. Whole rows of N per program (an int8 final state is scaled per row).
    Grid (cdiv(P, BLOCK_P), B, H)."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_h = tl.program_id(2)
    mask_p = offs_p < headdim
    mask = mask_p[:, None] & (offs_n < dstate)[None, :]
    if HAS_INIT:
        s = tl.load(init_ptr + pid_b * sib + pid_h * sih + offs_p[:, None] * sip + offs_n[None, :] * sin,
                    mask=mask, other=0).to(tl.float32)
        if INIT_INT8:
            s = s * tl.load(init_scale_ptr + pid_b * sisb + pid_h * sish + offs_p * sisp, mask=mask_p,
                            other=0.0)[:, None]
    else:
        s = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    st = st_ptr + pid_b * ssb + pid_h * ssh + offs_p[:, None] * ssp + offs_n[None, :] * ssn
    cs_last = cs_ptr + pid_b * sob + pid_h * soh + (chunk_size - 1) * sol
    for c in range(nchunks):
        own = tl.load(st + c * ssc, mask=mask, other=0.0)
        tl.store(st + c * ssc, s, mask=mask)  # same thread, same address: the load above has its value
        s = tl.exp(tl.load(cs_last + c * soc)) * s + own
    if WRITE_FINAL:
        f_ptrs = final_ptr + pid_b * sfb + pid_h * sfh + offs_p[:, None] * sfp + offs_n[None, :] * sfn
        if FINAL_INT8:
            q, scale = quantize_state_rows(s)
            tl.store(f_ptrs, q, mask=mask)
            tl.store(final_scale_ptr + pid_b * sfsb + pid_h * sfsh + offs_p * sfsp, scale, mask=mask_p)
        else:
            tl.store(f_ptrs, s, mask=mask)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, B_ptr, C_ptr, dt_ptr, cs_ptr, st_ptr, D_ptr, y_ptr, xs_ptr, bs_ptr, ccs_ptr,
    seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
    sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, scb, scl, scg, scn, sob, soh, soc, sol,
    ssb, ssc, ssh, ssp, ssn, sdh, sdp, syb, syl, syh, syp, sxs, sbs, sccs,
    HAS_D: tl.constexpr, QUANT: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    INT_DOTS: tl.constexpr,
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
    x_scale, b_scale, c_scale = 1.0, 1.0, 1.0
    if QUANT:
        x_scale = tl.load(xs_ptr + (pid_h * headdim + offs_p) * sxs, mask=in_p, other=0.0)[None, :]
        b_scale = tl.load(bs_ptr + pid_g * sbs)
        c_scale = tl.load(ccs_ptr + pid_g * sccs)

    cs_m = tl.load(cs_ptr + o_base + offs_m * sol, mask=in_m, other=0.0)
    c_q = tl.load(c_base + offs_m[:, None] * scl + offs_n[None, :] * scn, mask=in_m[:, None] & in_n[None, :],
                  other=0)  # [M, N]
    c_tile = c_q
    if QUANT:
        c_tile = _dot_operand(dequant(c_q, c_scale, QUANT), DOT)  # rounded once, not in every product
    # INT_DOTS (int8 inputs, half-precision products, N >= 32: see int_dots): C B^T is an exact int8 product (int32
    # on the tensor cores) times c_scale * b_scale, and the x products take x's integers (exact in fp16) with x_scale
    # applied to their sum, so neither operand is dequantized and rounded inside the loop
    acc_x = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)

    # The state entering the chunk, decayed to each position: exp(cs_m) * C_m . state
    st = tl.load(st_ptr + pid_b * ssb + pid_c * ssc + pid_h * ssh + offs_n[:, None] * ssn + offs_p[None, :] * ssp,
                 mask=in_n[:, None] & in_p[None, :], other=0.0)  # [N, P]
    acc = _mm(c_tile, st, tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32), DOT)
    acc = acc * tl.exp(cs_m)[:, None]

    # Inputs of this chunk up to the block's last row: causal, decay-weighted C B^T times dt x.
    s_hi = tl.minimum((tl.program_id(0) // num_p + 1) * BLOCK_M, chunk_len)
    for s0 in range(0, s_hi, BLOCK_S):
        ss = s0 + offs_s
        in_s = ss < chunk_len
        b_t = tl.load(b_base + ss[None, :] * sbl + offs_n[:, None] * sbn, mask=in_n[:, None] & in_s[None, :],
                      other=0)  # [N, S]
        if INT_DOTS:
            cb = tl.dot(c_q, b_t, tl.zeros([BLOCK_M, BLOCK_S], dtype=tl.int32), out_dtype=tl.int32).to(tl.float32)
            cb = cb * (c_scale * b_scale)
        else:
            if QUANT:
                b_t = dequant(b_t, b_scale, QUANT)
            cb = _mm(c_tile, b_t, tl.zeros([BLOCK_M, BLOCK_S], dtype=tl.float32), DOT)
        cs_s = tl.load(cs_ptr + o_base + ss * sol, mask=in_s, other=0.0)
        dt_s = tl.load(dt_ptr + o_base + ss * sol, mask=in_s, other=0.0)
        causal = (offs_m[:, None] >= ss[None, :]) & in_s[None, :]
        # Above the diagonal cs_m - cs_s > 0 may overflow exp: clamp before, mask after.
        decay = tl.exp(tl.minimum(cs_m[:, None] - cs_s[None, :], 0.0))
        w = tl.where(causal, cb * decay * dt_s[None, :], 0.0)
        xs = tl.load(x_base + ss[:, None] * sxl + offs_p[None, :] * sxp, mask=in_s[:, None] & in_p[None, :],
                     other=0)  # [S, P]
        if INT_DOTS:
            acc_x = _mm(w, _int8_operand(xs, DOT), acc_x, DOT)
        else:
            if QUANT:
                xs = dequant(xs, x_scale, QUANT)
            acc = _mm(w, xs, acc, DOT)
    if INT_DOTS:
        acc += acc_x * x_scale

    x_m = tl.load(x_base + offs_m[:, None] * sxl + offs_p[None, :] * sxp, mask=in_m[:, None] & in_p[None, :],
                  other=0)
    x_m = dequant(x_m, x_scale, QUANT)
    if HAS_D:
        acc += x_m * tl.load(D_ptr + pid_h * sdh + offs_p * sdp, mask=in_p, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + pid_b * syb + pid_h * syh + chunk_start.to(tl.int64) * syl
    tl.store(y + offs_m[:, None] * syl + offs_p[None, :] * syp, acc.to(y_ptr.dtype.element_ty),
             mask=in_m[:, None] & in_p[None, :])


@triton.jit
def _ssd_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
    xs_ptr, dts_ptr, bs_ptr, cs_ptr, sscale_ptr,
    headdim, dstate, heads_per_group, lo, hi,
    ssb, ssh, ssp, ssn, sxb, sxh, sxp, stb, sth, sbb, sbg, sbn, scb, scg, scn, sdh, sdp, syb, syh, syp,
    sxs, sdts, sbs, scs, sqb, sqh, sqp,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
    QUANT: tl.constexpr, A_LOG: tl.constexpr, STATE_INT8: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
):
    """One step for a [BLOCK_P, N] slice of one head's state (fp32, or int8 rows with their scales, updated in
    place); grid (B, H, cdiv(P, BLOCK_P)). PREFETCH: the state and the parameters are loaded before waiting for
    the previous kernel (which must write none of them; see ``_ssd_state_update_launch``), else after."""
    if not PREFETCH:
        pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    pid_g = pid_h // heads_per_group
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    in_p = offs_p < headdim
    in_n = offs_n < dstate
    in_pn = in_p[:, None] & in_n[None, :]

    x_scale, dt_scale, b_scale, c_scale = 1.0, 1.0, 1.0, 1.0
    if QUANT:
        x_scale = tl.load(xs_ptr + (pid_h * headdim + offs_p) * sxs, mask=in_p, other=0.0)
        dt_scale = tl.load(dts_ptr + pid_h * sdts)
        b_scale = tl.load(bs_ptr + pid_g * sbs)
        c_scale = tl.load(cs_ptr + pid_g * scs)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    if A_LOG:
        A = -tl.exp(A)
    d_skip = 0.0
    if HAS_D:
        d_skip = tl.load(D_ptr + pid_h * sdh + offs_p * sdp, mask=in_p, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + pid_b * ssb + pid_h * ssh + offs_p[:, None] * ssp + offs_n[None, :] * ssn
    q_ptrs = sscale_ptr + pid_b * sqb + pid_h * sqh + offs_p * sqp
    h = tl.load(s_ptrs, mask=in_pn, other=0).to(tl.float32)
    if STATE_INT8:
        h = h * tl.load(q_ptrs, mask=in_p, other=0.0)[:, None]
    if PREFETCH:
        pdl_start(USE_PDL)  # only the inputs below come from the kernels before this one

    dt = dequant(tl.load(dt_ptr + pid_b * stb + pid_h * sth), dt_scale, QUANT)
    dt = _discretize(dt, bias, lo, hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
    decay = tl.exp(dt * A)
    x = dequant(tl.load(x_ptr + pid_b * sxb + pid_h * sxh + offs_p * sxp, mask=in_p, other=0), x_scale, QUANT)
    b = dequant(tl.load(B_ptr + pid_b * sbb + pid_g * sbg + offs_n * sbn, mask=in_n, other=0), b_scale, QUANT)
    c = dequant(tl.load(C_ptr + pid_b * scb + pid_g * scg + offs_n * scn, mask=in_n, other=0), c_scale, QUANT)
    h = decay * h + (dt * x)[:, None] * b[None, :]
    if STATE_INT8:
        q, scale = quantize_state_rows(h)
        tl.store(s_ptrs, q, mask=in_pn)
        tl.store(q_ptrs, scale, mask=in_p)
    else:
        tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=in_pn)
    y = tl.sum(h * c[None, :], axis=1)  # from the fp32 state (before rounding to int8), as the reference does
    if HAS_D:
        y += x * d_skip
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


def _check_inputs(named_inputs, named_params, scales, shapes) -> bool:
    """Float inputs, or int8 inputs with fp32 scales of the given shapes ((x, dt, B, C) order); True if int8."""
    quant = scales is not None
    if quant:
        for (name, t), s, shape in zip(named_inputs, scales, shapes):
            if t.dtype != torch.int8:
                raise QuambaError(f"{name} has dtype {t.dtype}: the quantized SSD takes int8 inputs (quantize them "
                                  "first)")
            if s is None or s.dtype != torch.float32 or tuple(s.shape) != shape:
                raise QuambaError(f"{name}'s scale must be a float32 tensor of shape {list(shape)}, got "
                                  f"{None if s is None else (list(s.shape), s.dtype)}")
    for name, t in named_params + ([] if quant else named_inputs):
        check_float(name, t)
    check_same_device(*named_inputs, *named_params, *(("scale", s) for s in (scales or ())))
    return quant


def _dot_mode(x_dtype: torch.dtype, out_dtype: torch.dtype) -> int:
    """Float inputs multiply in their own precision; int8 inputs in fp16 (exact for the int8 operand), or in full
    fp32 when y is fp32."""
    if x_dtype == torch.int8:
        return DOT_IEEE if out_dtype == torch.float32 else DOT_F16
    return {torch.float32: DOT_IEEE, torch.float16: DOT_F16, torch.bfloat16: DOT_BF16}[x_dtype]


def _ssd_chunked_launch(
    x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    initial_state=None, return_final_state=False, *, scales=None, A_is_log=False, final_state_int8=False,
    out_dtype=None,
):
    """Checks and launches the four SSD kernels; same contract as ``ssd_chunked_ref``, or with ``scales`` =
    (x [H * P], dt [H], B [G], C [G] scales) that of ``qssd_chunked_ref`` (int8 x, dt, B, C; A given as A_log when
    ``A_is_log``; initial_state fp32 or a (q, scale) pair; final state int8 (q, scale) when ``final_state_int8``;
    y in ``out_dtype``)."""
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
    init, init_scale = _state_parts(initial_state, (batch, nheads, headdim, dstate), "initial_state")
    quant = _check_inputs([("x", x), ("dt", dt), ("B", B), ("C", C)], [("A", A), ("D", D), ("dt_bias", dt_bias)],
                          scales, [(nheads * headdim,), (nheads,), (ngroups,), (ngroups,)])
    check_same_device(("x", x), ("initial_state", init), ("initial_state scale", init_scale))
    heads_per_group = _check_groups(B, nheads)
    sdh, sdp = _d_strides(D, nheads, headdim)
    if int(chunk_size) < 1:
        raise QuambaError(f"chunk_size must be a positive integer, got {chunk_size}")
    chunk_size = int(chunk_size)
    check_runnable(_ssd_chunk_scan_kernel, x)
    has_limit, lo, hi = _limit_args(dt_limit)

    out_dtype = out_dtype or x.dtype
    y = torch.empty(batch, seqlen, nheads, headdim, device=x.device, dtype=out_dtype)
    final = final_scale = None
    if return_final_state:
        final = torch.empty(batch, nheads, headdim, dstate, device=x.device,
                            dtype=torch.int8 if final_state_int8 else torch.float32)
        if final_state_int8:
            final_scale = torch.empty(batch, nheads, headdim, 1, device=x.device, dtype=torch.float32)
    if batch * seqlen * nheads * headdim * dstate == 0:
        if final is not None:
            _copy_initial(final, final_scale, init if seqlen == 0 else None, init_scale)
        return _result(y, final, final_scale, return_final_state)

    nchunks = cdiv(seqlen, chunk_size)
    f32 = dict(device=x.device, dtype=torch.float32)
    dt_c = torch.empty(batch, nheads, nchunks, chunk_size, **f32)
    cs = torch.empty_like(dt_c)
    states = torch.empty(batch, nchunks, nheads, headdim, dstate, **f32)
    dot = _dot_mode(x.dtype, out_dtype)
    on_gpu = x.is_cuda
    xs, dts, bs, ccs = scales if quant else (A,) * 4
    with device_of(x):
        block_c = next_pow2(chunk_size)
        block_h = max(1, min(next_pow2(nheads), 4096 // block_c))
        _ssd_chunk_cumsum_kernel[(batch, nchunks, cdiv(nheads, block_h))](
            dt, A, dt_bias if dt_bias is not None else A, dt_c, cs, dts,
            seqlen, nheads, chunk_size, lo, hi,
            *dt.stride(), *dt_c.stride(), dts.stride(0),
            HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit, QUANT=quant,
            A_LOG=bool(A_is_log), BLOCK_H=block_h, BLOCK_C=block_c,
        )

        bp, bn, bl = _tile(headdim, 64), _tile(dstate, 64), _tile(chunk_size, 64 if on_gpu else 32)
        grid = (cdiv(headdim, bp) * cdiv(dstate, bn), nchunks, batch * nheads)
        _ssd_chunk_state_kernel[grid](
            x, B, dt_c, cs, states, xs, bs,
            seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
            *x.stride(), *B.stride(), *dt_c.stride(), *states.stride(), xs.stride(0), bs.stride(0),
            QUANT=quant, DOT=dot, BLOCK_P=bp, BLOCK_N=bn, BLOCK_L=bl,
        )

        block_n = next_pow2(dstate)
        block_p = max(1, min(next_pow2(headdim), 1024 // block_n))
        _ssd_state_passing_kernel[(cdiv(headdim, block_p), batch, nheads)](
            states, cs, init if init is not None else states, init_scale if init_scale is not None else states,
            final if final is not None else states, final_scale if final_scale is not None else states,
            nchunks, chunk_size, headdim, dstate,
            states.stride(0), states.stride(1), states.stride(2), states.stride(3), states.stride(4),
            *cs.stride()[:3], cs.stride(3), *_strides(init, 4), *_strides(init_scale, 3),
            *_strides(final, 4), *_strides(final_scale, 3),
            HAS_INIT=init is not None, WRITE_FINAL=final is not None, INIT_INT8=init_scale is not None,
            FINAL_INT8=final_scale is not None, BLOCK_P=block_p, BLOCK_N=block_n,
        )

        bm, bp, bs_ = _tile(chunk_size, 64), _tile(headdim, 64), _tile(chunk_size, 32 if dot == DOT_IEEE else 64)
        bn = max(16, next_pow2(dstate))
        grid = (cdiv(chunk_size, bm) * cdiv(headdim, bp), nchunks, batch * nheads)
        _ssd_chunk_scan_kernel[grid](
            x, B, C, dt_c, cs, states, D if D is not None else A, y, xs, bs, ccs,
            seqlen, headdim, dstate, chunk_size, heads_per_group, nheads,
            *x.stride(), *B.stride(), *C.stride(), *dt_c.stride(), *states.stride(), sdh, sdp, *y.stride(),
            xs.stride(0), bs.stride(0), ccs.stride(0),
            HAS_D=D is not None, QUANT=quant, DOT=dot, BLOCK_M=bm, BLOCK_P=bp, BLOCK_N=bn, BLOCK_S=bs_,
            INT_DOTS=int_dots(quant, dot, bn), num_warps=4 if dot == DOT_IEEE or bn <= 64 else 8,
        )
    return _result(y, final, final_scale, return_final_state)


# The int8 chunk scan's integer products (see _ssd_chunk_scan_kernel). On an H100 at mamba2-2.7b's prefill (1024
# tokens): 135.7 us with them, 148.3 without, fp16 SSD 123.7 (2026-12-07, benchmarks/sweep_prefill.py, after the int8
# loads stopped converting on the quarter-rate pipe: 140.3 / 156.0 before); the two differ by 5e-4 relative.
INT8_DOTS = True


def int_dots(quant: bool, dot: int, block_n: int) -> bool:
    """Whether the chunk scan takes its integer products: int8 inputs, fp16 / bf16 products, and N >= 32 (int8
    tensor-core products take K = N in steps of 32)."""
    return INT8_DOTS and quant and dot != DOT_IEEE and block_n >= 32


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    """The first ndim strides of t, zeros for an absent tensor."""
    return tuple(stride_or_zero(t, i) for i in range(ndim))


def _result(y, final, final_scale, return_final_state):
    if not return_final_state:
        return y
    return y, (final if final_scale is None else (final, final_scale))


def _ssd_state_update_launch(
    state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf), *, scales=None,
    A_is_log=False, out_dtype=None, prefetch_state=False,
) -> torch.Tensor:
    """Checks and launches ``_ssd_state_update_kernel``; same contract as ``ssd_state_update_ref``, or with
    ``scales`` = (x [H * P], dt [H], B [G], C [G] scales) that of ``qssd_state_update_ref`` (``state`` fp32 or a
    (q, scale) int8 pair, updated in place).

    ``prefetch_state``: the caller's promise that the kernel launched just before this one writes neither the state
    nor A, D, dt_bias and the scales (true in a decode step, where in_proj or the conv comes just before). With
    dependent launch the state is then read while that kernel still runs: only x, dt, B and C wait for it. The
    state is the step's largest read (Mamba2-2.7B: 2.6 MB a layer in fp32): on an H100 (2026-12-07, a mamba2-2.7b
    decode step, CUDA graph, alternated in one run) W4A8 1.754 ms against 1.808, fp16 3.064 against 3.112. Without
    dependent launch (CPU, the interpreter, before sm_90, QUAMBA_PDL=0) only the order of the loads changes."""
    if x.dim() != 3:
        raise QuambaError(f"x has shape {list(x.shape)}, expected [B, H, P]")
    batch, nheads, headdim = x.shape
    if B.dim() != 3:
        raise QuambaError(f"B has shape {list(B.shape)}, expected [B, G, N]")
    ngroups, dstate = B.shape[-2:]
    st, st_scale = _state_parts(state, (batch, nheads, headdim, dstate), "state")
    check_shape("dt", dt, (batch, nheads))
    check_shape("A", A, (nheads,))
    check_shape("B", B, (batch, ngroups, dstate))
    check_shape("C", C, (batch, ngroups, dstate))
    check_shape("dt_bias", dt_bias, (nheads,))
    quant = _check_inputs([("x", x), ("dt", dt), ("B", B), ("C", C)], [("A", A), ("D", D), ("dt_bias", dt_bias)],
                          scales, [(nheads * headdim,), (nheads,), (ngroups,), (ngroups,)])
    check_same_device(("x", x), ("state", st), ("state scale", st_scale))
    heads_per_group = _check_groups(B, nheads)
    sdh, sdp = _d_strides(D, nheads, headdim)
    check_runnable(_ssd_state_update_kernel, x)
    has_limit, lo, hi = _limit_args(dt_limit)

    y = torch.empty(batch, nheads, headdim, device=x.device, dtype=out_dtype or x.dtype)
    if batch * nheads * headdim == 0:
        return y
    block_n = next_pow2(dstate)
    block_p = max(1, min(next_pow2(headdim), 4096 // block_n, 16 if x.is_cuda else 8))
    xs, dts, bs, cs = scales if quant else (A,) * 4
    pdl = use_pdl(x)
    with device_of(x):
        _ssd_state_update_kernel[(batch, nheads, cdiv(headdim, block_p))](
            st, x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, y,
            xs, dts, bs, cs, st_scale if st_scale is not None else A,
            headdim, dstate, heads_per_group, lo, hi,
            *st.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), sdh, sdp, *y.stride(),
            xs.stride(0), dts.stride(0), bs.stride(0), cs.stride(0), *_strides(st_scale, 3),
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
            QUANT=quant, A_LOG=bool(A_is_log), STATE_INT8=st_scale is not None,
            BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
            USE_PDL=pdl, PREFETCH=bool(prefetch_state), launch_pdl=pdl,
        )
    return y
