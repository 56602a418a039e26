"""Triton selective scan (Mamba1's S6) prefill, chunked over time: ``selective_scan_parallel_launch``.

Contract of ``quamba.ops.selective_scan.selective_scan_ref`` (and, with ``scales``, of that reference on the
dequantized inputs ``q.float() * scale``):
    dt = softplus(delta + delta_bias);  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  y_t = C_t . h_t + D u_t;
    y *= silu(z)

Design. The sequential kernel (``selective_scan._selective_scan_kernel``) waits for one token's loads per step
(~470 ns a step at mamba-2.8b's shape on an H100). Here each program owns BLOCK_D channels of one sequence and
walks it in chunks of BLOCK_L tokens:
  * chunk k+1's inputs are loaded at the top of iteration k, and prepared (dequantized, dt = softplus(delta +
    bias), dt * u, B and C in fp32) at its bottom, after chunk k's arithmetic has hidden their latency;
  * the recurrence of a chunk is one [BLOCK_L, BLOCK_N, BLOCK_D] tile: a = exp2(dt * A log2(e)) (log2(e) is
    folded into A once, so each factor is a bare MUFU.EX2), b = dt u B; the carried state is folded into the
    first row (b_0 += a_0 h), and ``tl.associative_scan`` along L with (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)
    yields every h_t; y_t = sum_n C_t[n] h_t[n] is a reduction over the N axis and the carry is the last row;
  * the epilogue (y += D u, y *= silu(z)) and the store run on the [BLOCK_L, BLOCK_D] tile.
Tokens past the end of the sequence get dt = 0 (a = 1, b = 0), so the last row of the last chunk is the final
state. Padded states (N not a power of two) see A = 0 and B = C = 0: they stay 0 and add nothing.

Why this layout is fast. Triton gives the 3-d tile its default blocked layout: lanes over D first (BLOCK_D of
them), then over N, nothing over L while BLOCK_D * BLOCK_N >= 32 * num_warps. So each thread holds whole columns
of L: the scan is sequential in registers (b = dt u B and the step h = a h + b are one multiply and one fused
multiply-add, no shuffles), the first-row fold and the carry are register selects, and the reduction over N is
in-thread plus log2(lanes over N) shuffles. At BLOCK_D = 8, N = 16, one warp: 8 lanes over D x 4 over N, a thread
holds 16 (token) x 4 (state) elements of one channel. softplus / silu run once per (token, channel) on the 2-d
tile, not once per state lane, because the prepared chunk is carried through the loop in fp32 (with a convert at
the f16 load, Triton re-runs them on every lane: ~26 instead of ~13 instructions an element).

Offline sm_90 SASS of the loop body (Triton 3.6, fp16, N = 16, the JIT's divisibility specialisation of dim and
L), instructions per (token, channel, state) element, one of them MUFU.EX2; registers per thread:
    (block_d, block_l, warps)  (8,16,1) 12.8, 234 | (16,8,1) 11.5, 215 | (16,16,2) 12.8, 164 | (32,8,2) 11.8, 164
                               (64,8,4) 11.7, 166 | (32,16,4) 13.1, 168 | (4,16,1) 16.8, 128 | (8,16,2) 16.6, 142
(8,32,1), (16,16,1), (32,16,2) spill. ~4 of the ~13 are softplus, silu and D u; 5 are the recurrence itself.

Parallelism. At batch 1 a program of one warp per 8 channels gives D / 8 warps (640 at d_inner 5120): ~1.2 per
SM sub-partition, so the time is set by those that hold two. Bigger tiles (16, 8, 1) halve the warps and cut the
instructions; smaller ones (4, 16, 1) double the warps and add shuffles.

Time segments (``segments`` > 1). The sequence is cut into S segments of whole chunks, one program each, in two
launches of this kernel: pass 1 scans each segment from a zero state without y, keeping its end state and its dt
sum; pass 2 first folds the earlier segments into the state entering its own (h <- exp(A * sum dt) h + h_end, S
steps of one [N, BLOCK_D] tile: the product of a segment's decays is the exponential of its dt sum), then scans the
segment with y as in one pass. S times the warps, for a second pass that recomputes the exponentials (the MUFU
floor is ~20 us a pass at d_inner 5120 x 1024 tokens x N 16: 84 M exponentials). It does not pay on an H100
(``SEGMENT_PROGRAMS_PER_SM``, off: the numbers beside it).

Tuning: time each ``SWEEP`` entry (block_d, block_l, num_warps) on the GPU at the model's shapes, e.g.
    for bd, bl, nw in SWEEP: selective_scan_parallel_launch(..., block_d=bd, block_l=bl, num_warps=nw)
BLOCK_D sets the lanes over D (32 / BLOCK_D lanes over N when BLOCK_D < 32); BLOCK_L the chunk (registers grow
with it); num_warps > 1 puts warps over N (a cross-warp reduction through shared memory) or over D. Keep
BLOCK_D * BLOCK_N >= 32 * num_warps, or lanes land on L and the scan turns into shuffles.

Under Triton's interpreter (CPU tensors, tests) the chunk is scanned by ``_scan_by_doubling`` (the same combine
in log2(BLOCK_L) vectorised steps) instead of tl.associative_scan, which the interpreter runs element by element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (FLOAT_DTYPES, cdiv, check_float, check_runnable, check_same_device, check_shape, dequant,
                      device_of, next_pow2, silu, softplus, stride_or_zero)

_MAX_STATE = 256  # a program's [BLOCK_L, N, BLOCK_D] tile lives in registers
# CPU tensors (the interpreter) scan by doubling (see the module docstring); a test turns it off to cover
# tl.associative_scan on a small shape.
_INTERPRETER_SCANS_BY_DOUBLING = True

# (block_d, block_l, num_warps) candidates to time on an H100 (the default, (8, 16, 1) at N = 16, first); all
# compile for sm_90 without spills at N = 16.
SWEEP = [
    (8, 16, 1), (16, 8, 1), (16, 16, 2), (32, 8, 2), (64, 8, 4), (32, 16, 4),
    (8, 8, 1), (4, 16, 1), (4, 32, 1), (16, 8, 2), (32, 8, 4), (8, 16, 2),
]


# ---------------------------------------------------------------------------------------------- jit helpers

@triton.jit
def _combine(a1, b1, a2, b2):
    """h -> a h + b maps composed, first (a1, b1) then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_by_doubling(a, b, offs_l, BLOCK_L: tl.constexpr):
    """``tl.associative_scan((a, b), 0, _combine)``'s result in log2(BLOCK_L) doubling steps (Hillis-Steele:
    row t takes in row t - step), with tl.gather for the shifted rows. For Triton's interpreter, whose
    associative_scan calls the combine once per element in Python (~0.1 ms each); the rounding order differs
    from the in-thread sequential scan of the GPU, within the tests' bounds."""
    for k in tl.static_range(BLOCK_L):
        if (1 << k) < BLOCK_L:  # steps 1, 2, 4, ... below BLOCK_L
            src = tl.broadcast_to(tl.maximum(offs_l - (1 << k), 0)[:, None, None], a.shape)
            a_in, b_in = _combine(tl.gather(a, src, 0), tl.gather(b, src, 0), a, b)
            has_prev = (offs_l >= (1 << k))[:, None, None]
            a = tl.where(has_prev, a_in, a)
            b = tl.where(has_prev, b_in, b)
    return b


@triton.jit
def _load_chunk(u_p, dt_p, z_p, b_p, c_p, t, seqlen, sul, sdl, szl, sbl, scl, mask_d, mask_n, HAS_Z: tl.constexpr):
    """Raw (stored-dtype) inputs of tokens t [BLOCK_L]: u, delta, z [BLOCK_L, BLOCK_D]; B, C [BLOCK_L, BLOCK_N].
    Tokens past the end read as 0."""
    in_seq = (t < seqlen)[:, None]
    mask_ld = in_seq & mask_d[None, :]
    mask_ln = in_seq & mask_n[None, :]
    u = tl.load(u_p + t[:, None] * sul, mask=mask_ld, other=0)
    dt = tl.load(dt_p + t[:, None] * sdl, mask=mask_ld, other=0)
    if HAS_Z:
        z = tl.load(z_p + t[:, None] * szl, mask=mask_ld, other=0)
    else:
        z = u  # unused
    b = tl.load(b_p + t[:, None] * sbl, mask=mask_ln, other=0)
    c = tl.load(c_p + t[:, None] * scl, mask=mask_ln, other=0)
    return u, dt, z, b, c


@triton.jit
def _prepare_chunk(u, dt, b, c, t, seqlen, bias, u_s, dt_s, b_s, c_s, HAS_BIAS: tl.constexpr,
                   SOFTPLUS: tl.constexpr, QUANT: tl.constexpr):
    """fp32 dt and dt * u [BLOCK_L, BLOCK_D], B and C [BLOCK_L, BLOCK_N] of a loaded chunk (int8 inputs times
    their scales); dt = 0 past the end (a = 1, b = 0 there: the state passes through unchanged)."""
    dt = dequant(dt, dt_s, QUANT)
    if HAS_BIAS:
        dt += bias[None, :]
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.where((t < seqlen)[:, None], dt, 0.0)
    return dt, dt * dequant(u, u_s, QUANT), dequant(b, b_s, QUANT), dequant(c, c_s, QUANT)


# ---------------------------------------------------------------------------------------------- kernel

@triton.jit
def _selective_scan_parallel_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, y_ptr, final_ptr, hseg_ptr, dtseg_ptr,
    us_ptr, dts_ptr, bs_ptr, cs_ptr, zs_ptr,
    dim, dstate, seqlen, seg_len,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl,
    szb, szd, szl, sib, sid, sin, syb, syd, syl, sfb, sfd, sfn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, HAS_SCALES: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, SCAN_DOUBLING: tl.constexpr,
    PASS: tl.constexpr,
):
    """Grid (B, cdiv(D, BLOCK_D), segments); one program scans BLOCK_D channels of one time segment of one
    sequence (seg_len tokens, a multiple of BLOCK_L), BLOCK_L tokens a step. 3-d tiles are [BLOCK_L, BLOCK_N,
    BLOCK_D] (D last, so Triton spreads lanes over D, then N, not L).
    PASS 0: one segment, the whole scan. PASS 1: each segment's own end state from zero -> hseg [B, S, N, D] and
    its dt sum -> dtseg [B, S, D] (no y). PASS 2: the state entering the segment, folded from the earlier
    segments' (h <- exp(A sum dt) h + h_end), then the scan with y (see the module docstring)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(2)
    n_seg = tl.num_programs(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]

    # [BLOCK_N, BLOCK_D] tiles: A in base 2, and the carried state.
    A2 = tl.load(A_ptr + offs_d[None, :] * sad + offs_n[:, None] * san, mask=mask_nd, other=0.0).to(tl.float32)
    if A_IS_LOG:  # the quantized model passes A_log: A = -exp(A_log), computed here instead of in two launches
        A2 = -tl.exp(A2)
    A2 = A2 * 1.4426950408889634  # log2(e): exp(dt A) = exp2(dt A2), a bare MUFU.EX2
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if HAS_INIT and PASS != 1:
        h = tl.load(init_ptr + pid_b * sib + offs_d[None, :] * sid + offs_n[:, None] * sin, mask=mask_nd,
                    other=0.0).to(tl.float32)
    # [B, S, N, D] / [B, S, D] scratch, contiguous
    hseg_p = hseg_ptr + (pid_b * n_seg) * (BLOCK_N * dim) + offs_n[:, None] * dim + offs_d[None, :]
    dtseg_p = dtseg_ptr + (pid_b * n_seg) * dim + offs_d
    if PASS == 2:  # fold the earlier segments into the entering state
        for s in range(0, pid_s):
            dsum = tl.load(dtseg_p + s * dim, mask=mask_d, other=0.0)
            h_end = tl.load(hseg_p + s * (BLOCK_N * dim), mask=mask_nd, other=0.0)
            h = tl.exp2(A2 * dsum[None, :]) * h + h_end
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_s = 1.0  # int8 inputs are read as q * scale (the reference's q.float() * scale)
    dt_s = 1.0
    b_s = 1.0
    c_s = 1.0
    z_s = 1.0
    if HAS_SCALES:
        u_s = tl.load(us_ptr)
        dt_s = tl.load(dts_ptr)
        b_s = tl.load(bs_ptr)
        c_s = tl.load(cs_ptr)
        z_s = tl.load(zs_ptr)

    u_p = u_ptr + pid_b * sub + offs_d[None, :] * sud
    dt_p = delta_ptr + pid_b * sdb + offs_d[None, :] * sdd
    z_p = z_ptr + pid_b * szb + offs_d[None, :] * szd
    b_p = B_ptr + pid_b * sbb + offs_n[None, :] * sbn
    c_p = C_ptr + pid_b * scb + offs_n[None, :] * scn
    y_p = y_ptr + pid_b * syb + offs_d[None, :] * syd
    first = (offs_l == 0)[:, None, None]
    last = (offs_l == BLOCK_L - 1)[:, None, None]

    l_begin = pid_s * seg_len
    l_end = tl.minimum(l_begin + seg_len, seqlen)  # tokens from l_end on read as past the end (dt = 0)
    u, dt_raw, z, b_raw, c_raw = _load_chunk(u_p, dt_p, z_p, b_p, c_p, l_begin + offs_l, l_end, sul, sdl, szl, sbl,
                                             scl, mask_d, mask_n, HAS_Z)
    dt, dtu, Bc, Cc = _prepare_chunk(u, dt_raw, b_raw, c_raw, l_begin + offs_l, l_end, bias, u_s, dt_s, b_s, c_s,
                                     HAS_BIAS, SOFTPLUS, HAS_SCALES)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    for l0 in range(l_begin, l_end, BLOCK_L):
        t = l0 + offs_l
        # Next chunk's loads first: they land while this chunk computes.
        u_nx, dt_nx, z_nx, b_nx, c_nx = _load_chunk(u_p, dt_p, z_p, b_p, c_p, t + BLOCK_L, l_end, sul, sdl, szl,
                                                    sbl, scl, mask_d, mask_n, HAS_Z)
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])
        b = dtu[:, None, :] * Bc[:, :, None]
        b = tl.where(first, b + a * h[None, :, :], b)
        if SCAN_DOUBLING:
            hs = _scan_by_doubling(a, b, offs_l, BLOCK_L)
        else:
            _, hs = tl.associative_scan((a, b), 0, _combine)
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # the last row: a register select when L is in-thread
        if PASS == 1:
            dsum += tl.sum(dt, axis=0)
        else:
            y = tl.sum(hs * Cc[:, :, None], axis=1)
            if HAS_D:
                y += Dv[None, :] * dequant(u, u_s, HAS_SCALES)
            if HAS_Z:
                y *= silu(dequant(z, z_s, HAS_SCALES))
            tl.store(y_p + t[:, None] * syl, y.to(y_ptr.dtype.element_ty),
                     mask=(t < l_end)[:, None] & mask_d[None, :])

        u = u_nx
        z = z_nx
        dt, dtu, Bc, Cc = _prepare_chunk(u_nx, dt_nx, b_nx, c_nx, t + BLOCK_L, l_end, bias, u_s, dt_s, b_s, c_s,
                                         HAS_BIAS, SOFTPLUS, HAS_SCALES)

    if PASS == 1:
        tl.store(hseg_p + pid_s * (BLOCK_N * dim), h, mask=mask_nd)
        tl.store(dtseg_p + pid_s * dim, dsum, mask=mask_d)
    elif WRITE_FINAL:
        if pid_s == n_seg - 1:
            tl.store(final_ptr + pid_b * sfb + offs_d[None, :] * sfd + offs_n[:, None] * sfn, h, mask=mask_nd)


# ---------------------------------------------------------------------------------------------- launcher

def _check_scales(scales, named) -> None:
    """With scales, u / delta / B / C / z are int8 and scales is (u, delta, B, C, z) 0-d fp32 tensors."""
    if not isinstance(scales, (tuple, list)) or len(scales) != 5:
        raise QuambaError("scales must be a 5-tuple (u_scale, delta_scale, B_scale, C_scale, z_scale) of 0-d "
                          "float32 tensors")
    for name, s in zip(("u_scale", "delta_scale", "B_scale", "C_scale", "z_scale"), scales):
        if not isinstance(s, torch.Tensor) or s.numel() != 1 or s.dtype != torch.float32:
            raise QuambaError(f"{name} must be a one-element float32 tensor (a per-tensor scale)")
    for name, t in named:
        if t is not None and t.dtype != torch.int8:
            raise QuambaError(f"{name} has dtype {t.dtype}: with scales, u, delta, B, C and z must be int8")


def _default_tiles(dim: int, block_n: int, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps). GPU: 128 / BLOCK_N channels (at least one) on one warp, two warps from
    N = 256, so that a thread holds 4 states of one channel over 16 tokens (64 fp32 elements: 8 x 16 x 16 at
    N = 16, no spills). The interpreter prefers few, large programs."""
    if not on_gpu:
        return max(1, min(next_pow2(dim), 64)), 32, 1
    return max(1, min(next_pow2(dim), 128 // block_n)), 16, max(1, block_n // 128)


def selective_scan_parallel_launch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    return_final_state=False, *, scales=None, out_dtype=None, A_is_log=False, block_d=None, block_l=None,
    num_warps=None, segments=None,
):
    """``selective_scan_ref``'s contract, chunked over time (see the module docstring).

    u, delta, z: [B, D, L]; A: [D, N] fp32 (negative; with ``A_is_log`` it holds A_log, and A = -exp(A_log));
    B, C: [B, N, L]; D, delta_bias: [D];
    initial_state: [B, D, N] fp32 or None. Any strides (the model passes transposed views), nothing is copied.
    scales: None (float inputs), or (u_scale, delta_scale, B_scale, C_scale, z_scale) 0-d fp32 device tensors,
    and then u, delta, B, C, z are int8, read as q * scale.
    Returns y [B, D, L] in ``out_dtype`` (default u's dtype; float16 for int8 inputs), laid out [B, L, D] in
    memory when u's channels are contiguous (as in the model, so out_proj reads it without a copy), and with
    ``return_final_state`` the last state [B, D, N] fp32. ``block_d`` / ``block_l`` / ``num_warps`` override the
    launch heuristic (powers of two), for tuning (``SWEEP``); so does ``segments``, the number of time segments
    scanned in parallel (1: one pass; more: two passes, see the module docstring).
    """
    if u.dim() != 3:
        raise QuambaError(f"u has shape {list(u.shape)}, expected [B, D, L]")
    batch, dim, seqlen = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise QuambaError(f"A has shape {list(A.shape)}, expected [{dim}, N]")
    dstate = A.shape[1]
    if dstate > _MAX_STATE:
        raise QuambaError(f"d_state {dstate} exceeds the Triton scan's {_MAX_STATE}: use selective_scan_ref")
    check_shape("delta", delta, (batch, dim, seqlen))
    check_shape("z", z, (batch, dim, seqlen))
    check_shape("B", B, (batch, dstate, seqlen))
    check_shape("C", C, (batch, dstate, seqlen))
    check_shape("D", D, (dim,))
    check_shape("delta_bias", delta_bias, (dim,))
    check_shape("initial_state", initial_state, (batch, dim, dstate))
    inputs = [("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)]
    params = [("A", A), ("D", D), ("delta_bias", delta_bias), ("initial_state", initial_state)]
    if scales is None:
        for name, t in inputs:
            if t is not None and t.dtype == torch.int8:
                raise QuambaError(f"{name} is int8: pass scales=(u_scale, delta_scale, B_scale, C_scale, z_scale)")
            check_float(name, t)
    else:
        _check_scales(scales, inputs)
    for name, t in params:
        check_float(name, t)
    check_same_device(*inputs, *params, *[(f"scales[{i}]", s) for i, s in enumerate(scales or ())])
    if out_dtype is None:
        out_dtype = torch.float16 if scales is not None else u.dtype
    if out_dtype not in FLOAT_DTYPES:
        raise QuambaError(f"out_dtype {out_dtype}: the selective scan writes float32, float16 or bfloat16")
    check_runnable(_selective_scan_parallel_kernel, u)

    if (u.stride(1) == 1 or scales is not None) and dim > 1:  # the quantized mixer's Hadamard wants rows of D
        y = torch.empty(batch, seqlen, dim, device=u.device, dtype=out_dtype).transpose(1, 2)
    else:
        y = torch.empty(batch, dim, seqlen, device=u.device, dtype=out_dtype)
    final = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32) if return_final_state else None
    if batch * dim == 0:
        return (y, final) if return_final_state else y

    block_n = next_pow2(dstate)
    default_d, default_l, default_w = _default_tiles(dim, block_n, u.is_cuda)
    block_d, block_l, num_warps = block_d or default_d, block_l or default_l, num_warps or default_w
    for name, v in (("block_d", block_d), ("block_l", block_l), ("num_warps", num_warps)):
        if v & (v - 1):
            raise QuambaError(f"{name} = {v}: the tile sizes and warp count must be powers of two")
    if segments is None:
        segments = _default_segments(batch * cdiv(dim, block_d), u.device) if u.is_cuda else 1
    if segments < 1:
        raise QuambaError(f"segments = {segments}: expected at least 1")
    chunks = max(cdiv(seqlen, block_l), 1)
    seg_len = cdiv(chunks, min(segments, chunks)) * block_l  # whole chunks per segment
    segments = max(cdiv(seqlen, seg_len), 1)
    if segments > 1:  # per segment: its end state from zero and its dt sum (pass 1), read by pass 2
        hseg = torch.empty(batch, segments, block_n, dim, device=u.device, dtype=torch.float32)
        dtseg = torch.empty(batch, segments, dim, device=u.device, dtype=torch.float32)
    else:
        hseg = dtseg = A
    zz = z if z is not None else u
    init = initial_state
    us, dts, bs, cs, zs = scales if scales is not None else (A,) * 5
    with device_of(u):
        for pass_ in ((1, 2) if segments > 1 else (0,)):
            _selective_scan_parallel_kernel[(batch, cdiv(dim, block_d), segments)](
                u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
                init if init is not None else A, y, final if final is not None else y, hseg, dtseg,
                us, dts, bs, cs, zs,
                dim, dstate, seqlen, seg_len,
                *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
                stride_or_zero(init, 0), stride_or_zero(init, 1), stride_or_zero(init, 2), *y.stride(),
                stride_or_zero(final, 0), stride_or_zero(final, 1), stride_or_zero(final, 2),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, WRITE_FINAL=final is not None,
                HAS_SCALES=scales is not None, A_IS_LOG=bool(A_is_log), BLOCK_D=block_d, BLOCK_N=block_n,
                BLOCK_L=block_l,
                SCAN_DOUBLING=not u.is_cuda and _INTERPRETER_SCANS_BY_DOUBLING, PASS=pass_, num_warps=num_warps,
            )
    return (y, final) if return_final_state else y


# Time segments: the default launch gives one warp per BLOCK_D channels of a sequence, ~1.2 per SM sub-partition at
# batch 1 (d_inner 5120), too few to hide the scan's latencies; segments multiply them at the price of a second pass.
# SEGMENT_PROGRAMS_PER_SM = 0 keeps one pass: on an H100 (2026-12-07, fp16, mamba-2.8b, 1024 tokens) 2-16 segments took
# 112-274 us against 96 us in one pass (tile (8, 16, 1); benchmarks/sweep_prefill.py).
SEGMENT_PROGRAMS_PER_SM = 0


def _default_segments(programs: int, device: torch.device) -> int:
    if not SEGMENT_PROGRAMS_PER_SM:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, round(SEGMENT_PROGRAMS_PER_SM * sms / max(programs, 1))))
