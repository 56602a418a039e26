"""Triton causal depthwise conv1d (+ SiLU): prefill over [B, D, L] and the one-token update, in
full precision and quantized (int8 in, int8 out).

Same contracts as ``quamba.ops.conv1d.causal_conv1d_ref`` / ``causal_conv1d_update_ref``: the
conv state is the last K inputs of each channel, oldest first; arithmetic is fp32 whatever the
input dtype. Inputs may be strided (the models pass transposed views of in_proj's output).

The int8 kernels (``qcausal_conv1d_ref`` / ``qcausal_conv1d_update_ref``) accumulate the taps exactly
in int32, then run the reference's fp32 epilogue in its order, one rounding per operation (launched
with ``enable_fp_fusion=False`` so the scale multiply and the bias add stay two roundings, divisions
``div_rn``): only SiLU's exp may differ from torch's by an ulp, so an int8 output may differ from the
reference by one step where the value lies within a few ulps of a rounding tie. The state is copied
exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, device_of, next_pow2,
                      pdl_start, quantize_int8, silu, stride_or_zero, use_pdl)

_MAX_WIDTH = 4  # d_conv of every Mamba checkpoint is 4; the kernels unroll the taps
QCONV_TILE = (128, 8, 4)  # the int8 prefill kernel's (block_d, block_l, num_warps) on long inputs: the fastest of
# QCONV_SWEEP on an H100 at mamba-2.8b's prefill (17.6 us with SiLU's approximate division; (128, 16, 4) 17.7,
# (256, 16, 8) 18.1, (64, 16, 8) 20.1, fp16 conv 15.5; 2026-12-07; benchmarks/sweep_prefill.py)
# (block_d, block_l, num_warps) of the int8 prefill kernel to time on a GPU (the default first)
QCONV_SWEEP = [(64, 16, 8), (64, 32, 8), (128, 16, 8), (128, 32, 8), (64, 64, 8), (256, 16, 8), (128, 8, 4),
               (32, 32, 4), (64, 16, 4), (256, 32, 16), (128, 32, 4), (256, 16, 4), (128, 16, 4)]


@triton.jit
def _conv_taps(acc, x_base, init_base, w_ptr, offs_d, offs_l, mask_d, mask_l, sxd, sxl, swd, swk, sid, sik,
               K: tl.constexpr, HAS_INIT: tl.constexpr, BCAST: tl.constexpr = False):
    """acc [BLOCK_D, BLOCK_L] + the K taps, multiplied in acc's dtype (fp32, or int32: exact for int8 inputs).

    Tap k reads input position t + k - (K - 1); negative positions are the history, which the initial state holds
    at index K + position (its slot 0 is the one that just fell out)."""
    for k in tl.static_range(K):
        pos = offs_l + (k - (K - 1))
        if BCAST:
            w = tl.load(w_ptr + offs_d[:, None] * swd + k * swk + offs_l[None, :] * 0, mask=mask_d[:, None],
                        other=0).to(acc.dtype)
        else:
            w = tl.load(w_ptr + offs_d * swd + k * swk, mask=mask_d, other=0).to(acc.dtype)[:, None]
        in_x = mask_d[:, None] & (mask_l & (pos >= 0))[None, :]
        xv = tl.load(x_base + offs_d[:, None] * sxd + pos[None, :] * sxl, mask=in_x, other=0).to(acc.dtype)
        if HAS_INIT:
            in_h = mask_d[:, None] & (pos < 0)[None, :]
            xv += tl.load(init_base + offs_d[:, None] * sid + (pos + K)[None, :] * sik, mask=in_h,
                          other=0).to(acc.dtype)
        acc += w * xv
    return acc


@triton.jit
def _store_final_state(x_base, init_base, final_base, offs_d, mask_d, seqlen, sxd, sxl, sid, sik, sfd, sfk,
                       K: tl.constexpr, KP: tl.constexpr, HAS_INIT: tl.constexpr):
    """The new state: the last K positions of history ++ x (positions L-K .. L-1), copied without rounding (the
    two loads cover disjoint positions)."""
    offs_k = tl.arange(0, KP)
    last_pos = seqlen - K + offs_k
    from_x = mask_d[:, None] & ((last_pos >= 0) & (offs_k < K))[None, :]
    last = tl.load(x_base + offs_d[:, None] * sxd + last_pos[None, :] * sxl, mask=from_x, other=0)
    if HAS_INIT:
        from_h = mask_d[:, None] & ((last_pos < 0) & (offs_k < K))[None, :]
        last += tl.load(init_base + offs_d[:, None] * sid + (last_pos + K)[None, :] * sik, mask=from_h, other=0)
    f_ptrs = final_base + offs_d[:, None] * sfd + offs_k[None, :] * sfk
    tl.store(f_ptrs, last.to(final_base.dtype.element_ty), mask=mask_d[:, None] & (offs_k < K)[None, :])


@triton.jit
def _causal_conv1d_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
    dim, seqlen,
    sxb, sxd, sxl, swd, swk, sib, sid, sik, syb, syd, syl, sfb, sfd, sfk,
    K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    WRITE_FINAL: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One [BLOCK_D, BLOCK_L] tile of y; grid (B, cdiv(D, BLOCK_D), cdiv(L, BLOCK_L))."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_l = offs_l < seqlen
    x_base = x_ptr + pid_b * sxb
    init_base = init_ptr + pid_b * sib

    acc = _conv_taps(tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32), x_base, init_base, w_ptr, offs_d, offs_l,
                     mask_d, mask_l, sxd, sxl, swd, swk, sid, sik, K, HAS_INIT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = silu(acc)
    y_ptrs = y_ptr + pid_b * syb + offs_d[:, None] * syd + offs_l[None, :] * syl
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_d[:, None] & mask_l[None, :])

    if WRITE_FINAL:
        if pid_l == 0:
            _store_final_state(x_base, init_base, final_ptr + pid_b * sfb, offs_d, mask_d, seqlen, sxd, sxl, sid, sik,
                               sfd, sfk, K, KP, HAS_INIT)


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr,
    dim,
    sxb, sxd, ssb, ssd, ssk, swd, swk, syb, syd,
    K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Shift the state left by one, append x, dot with the taps; grid (B, cdiv(D, BLOCK_D))."""
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, KP)
    mask_d = offs_d < dim
    mask_dk = mask_d[:, None] & (offs_k < K)[None, :]
    s_ptrs = state_ptr + pid_b * ssb + offs_d[:, None] * ssd + offs_k[None, :] * ssk

    shifted = tl.load(s_ptrs + ssk, mask=mask_d[:, None] & (offs_k + 1 < K)[None, :], other=0.0)
    xv = tl.load(x_ptr + pid_b * sxb + offs_d * sxd, mask=mask_d, other=0.0).to(state_ptr.dtype.element_ty)
    new = tl.where((offs_k == K - 1)[None, :], xv[:, None], shifted)
    # Slot k is written with what slot k + 1 held: every thread must have read before any writes.
    tl.debug_barrier()
    tl.store(s_ptrs, new, mask=mask_dk)

    w = tl.load(w_ptr + offs_d[:, None] * swd + offs_k[None, :] * swk, mask=mask_dk, other=0.0).to(tl.float32)
    acc = tl.sum(new.to(tl.float32) * w, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + pid_b * syb + offs_d * syd, acc.to(y_ptr.dtype.element_ty), mask=mask_d)


def _silu_flag(activation: str | None) -> bool:
    if activation is None:
        return False
    if activation in ("silu", "swish"):
        return True
    raise QuambaError(f"unsupported conv activation {activation!r}: use 'silu' or None")


def _check_weight(weight: torch.Tensor, dim: int) -> int:
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise QuambaError(f"conv weight has shape {list(weight.shape)}, expected [{dim}, K]")
    width = weight.shape[1]
    if not 2 <= width <= _MAX_WIDTH:
        raise QuambaError(f"conv width K={width} is not supported by the Triton kernel (2..{_MAX_WIDTH}): "
                          "use causal_conv1d_ref")
    return width


def _causal_conv1d_launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
):
    """Checks and launches ``_causal_conv1d_kernel``; same contract as ``causal_conv1d_ref``.

    y is laid out [B, L, D] in memory (returned as the [B, D, L] view) when x's channels are
    contiguous, as in the models, so that the next linear reads it without a copy.
    """
    if x.dim() != 3:
        raise QuambaError(f"conv input x has shape {list(x.shape)}, expected [B, D, L]")
    batch, dim, seqlen = x.shape
    width = _check_weight(weight, dim)
    check_shape("conv bias", bias, (dim,))
    check_shape("conv initial_state", initial_state, (batch, dim, width))
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        check_float(name, t)
    check_same_device(("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state))
    check_runnable(_causal_conv1d_kernel, x)
    use_silu = _silu_flag(activation)

    if x.stride(1) == 1 and dim > 1:
        y = torch.empty(batch, seqlen, dim, device=x.device, dtype=x.dtype).transpose(1, 2)
    else:
        y = torch.empty(batch, dim, seqlen, device=x.device, dtype=x.dtype)
    final = torch.empty(batch, dim, width, device=x.device, dtype=x.dtype) if return_final_state else None
    if seqlen == 0 and final is not None:  # nothing to convolve: the state is the old one (or zeros)
        final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
    if batch * dim * seqlen > 0:
        block_d = min(64, next_pow2(dim))
        block_l = min(64 if x.is_cuda else 16, next_pow2(seqlen))
        grid = (batch, cdiv(dim, block_d), cdiv(seqlen, block_l))
        init = initial_state
        with device_of(x):
            _causal_conv1d_kernel[grid](
                x, weight, bias if bias is not None else weight, init if init is not None else x, y,
                final if final is not None else y,
                dim, seqlen,
                *x.stride(), *weight.stride(),
                stride_or_zero(init, 0), stride_or_zero(init, 1), stride_or_zero(init, 2),
                *y.stride(),
                stride_or_zero(final, 0), stride_or_zero(final, 1), stride_or_zero(final, 2),
                K=width, KP=next_pow2(width), HAS_BIAS=bias is not None, HAS_INIT=init is not None,
                WRITE_FINAL=final is not None, SILU=use_silu, BLOCK_D=block_d, BLOCK_L=block_l,
            )
    return (y, final) if return_final_state else y


def _causal_conv1d_update_launch(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Checks and launches ``_causal_conv1d_update_kernel``; same contract as ``causal_conv1d_update_ref``."""
    if x.dim() != 2:
        raise QuambaError(f"conv update input x has shape {list(x.shape)}, expected [B, D]")
    batch, dim = x.shape
    width = _check_weight(weight, dim)
    check_shape("conv_state", conv_state, (batch, dim, width))
    check_shape("conv bias", bias, (dim,))
    for name, t in (("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        check_float(name, t)
    check_same_device(("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias))
    check_runnable(_causal_conv1d_update_kernel, x)
    use_silu = _silu_flag(activation)

    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    if batch * dim == 0:
        return y
    block_d = min(256 if x.is_cuda else 32, next_pow2(dim))
    pdl = use_pdl(x)
    with device_of(x):
        _causal_conv1d_update_kernel[(batch, cdiv(dim, block_d))](
            x, conv_state, weight, bias if bias is not None else weight, y,
            dim,
            *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
            K=width, KP=next_pow2(width), HAS_BIAS=bias is not None, SILU=use_silu, BLOCK_D=block_d,
            USE_PDL=pdl, launch_pdl=pdl,
        )
    return y


# ---------------------------------------------------------------------------------------------- int8 kernels

@triton.jit
def _silu_requant(acc, scale, bias, out_scale, HAS_BIAS: tl.constexpr):
    """int32 acc -> int8 in the reference's order: acc * scale (+ bias), silu, / out_scale, round half
    to even, clamp. scale / bias / out_scale fp32, broadcastable to acc.

    SiLU divides with Triton's approximate `/` (2 ulp): exp already differs from torch's by an ulp, so an output
    next to a rounding tie may be one step off either way (the tests bound how often). The IEEE division it
    replaced took a branch to its slow path and 4% of the prefill kernel's fast-path instructions (18.3 -> 17.6 us
    at mamba-2.8b's prefill, H100, 2026-12-07). The requantizing division stays IEEE."""
    y = acc.to(tl.float32) * scale
    if HAS_BIAS:
        y = y + bias
    return quantize_int8(silu(y), out_scale)


@triton.jit
def _qcausal_conv1d_kernel(
    x_ptr, w_ptr, ws_ptr, is_ptr, os_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
    dim, seqlen,
    sxb, sxd, sxl, swd, swk, sis, sos, sib, sid, sik, syb, syd, syl, sfb, sfd, sfk,
    K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    WRITE_FINAL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BCAST: tl.constexpr = False,
):
    """One [BLOCK_D, BLOCK_L] int8 tile of y; grid (B, cdiv(D, BLOCK_D), cdiv(L, BLOCK_L)). The taps
    accumulate exactly in int32 (|acc| <= K * 2^14)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_l = offs_l < seqlen
    x_base = x_ptr + pid_b * sxb
    init_base = init_ptr + pid_b * sib

    acc = _conv_taps(tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.int32), x_base, init_base, w_ptr, offs_d, offs_l,
                     mask_d, mask_l, sxd, sxl, swd, swk, sid, sik, K, HAS_INIT, BCAST)
    if BCAST:
        chan = offs_d[:, None] + offs_l[None, :] * 0
        mask_c = mask_d[:, None]
    else:
        chan = offs_d
        mask_c = mask_d
    scale = tl.load(ws_ptr) * tl.load(is_ptr + chan * sis, mask=mask_c, other=1.0)
    out_scale = tl.load(os_ptr + chan * sos, mask=mask_c, other=1.0)
    bias = scale  # placeholder, unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan, mask=mask_c, other=0.0)
    if not BCAST:
        scale = scale[:, None]
        out_scale = out_scale[:, None]
        bias = bias[:, None]
    y = _silu_requant(acc, scale, bias, out_scale, HAS_BIAS)
    y_ptrs = y_ptr + pid_b * syb + offs_d[:, None] * syd + offs_l[None, :] * syl
    tl.store(y_ptrs, y, mask=mask_d[:, None] & mask_l[None, :])

    if WRITE_FINAL:
        if pid_l == 0:
            _store_final_state(x_base, init_base, final_ptr + pid_b * sfb, offs_d, mask_d, seqlen, sxd, sxl, sid, sik,
                               sfd, sfk, K, KP, HAS_INIT)


@triton.jit
def conv_step_tile(xv, rows, chans, mask, state_ptr, w_ptr, ws_ptr, is_ptr, os_ptr, bias_ptr, u_ptr,
                   ssb, ssd, ssk, swd, swk, sis, sos, sub, sud, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``qcausal_conv1d_update_ref`` on a [R, C] tile of (batch rows, channels): xv int8 [R, C] are the new
    inputs, mask [R, C] the elements to step. Each channel's state [K] shifts left by one in place and takes xv
    last; u[rows, chans] = the SiLU of the taps' exact int32 dot with that window, requantized. Shared by the
    update kernel and the GEMVs' epilogue (``quamba.ops.conv1d.ConvStep``). K <= 4, written out."""
    offs = rows[:, None].to(tl.int64) * 0 + chans[None, :]  # [R, C] channel index
    s_ptrs = state_ptr + rows[:, None].to(tl.int64) * ssb + offs * ssd
    w_ptrs = w_ptr + offs * swd
    acc = xv.to(tl.int32) * tl.load(w_ptrs + (K - 1) * swk, mask=mask, other=0).to(tl.int32)
    if K > 1:
        s1 = tl.load(s_ptrs + ssk, mask=mask, other=0)
        acc += s1.to(tl.int32) * tl.load(w_ptrs, mask=mask, other=0).to(tl.int32)
    if K > 2:
        s2 = tl.load(s_ptrs + 2 * ssk, mask=mask, other=0)
        acc += s2.to(tl.int32) * tl.load(w_ptrs + swk, mask=mask, other=0).to(tl.int32)
    if K > 3:
        s3 = tl.load(s_ptrs + 3 * ssk, mask=mask, other=0)
        acc += s3.to(tl.int32) * tl.load(w_ptrs + 2 * swk, mask=mask, other=0).to(tl.int32)
    # Slot k takes what slot k + 1 held: every thread (an element may be held by several) reads before any writes.
    tl.debug_barrier()
    if K > 1:
        tl.store(s_ptrs, s1, mask=mask)
    if K > 2:
        tl.store(s_ptrs + ssk, s2, mask=mask)
    if K > 3:
        tl.store(s_ptrs + 2 * ssk, s3, mask=mask)
    tl.store(s_ptrs + (K - 1) * ssk, xv, mask=mask)
    scale = tl.load(ws_ptr) * tl.load(is_ptr + offs * sis, mask=mask, other=1.0)
    out_scale = tl.load(os_ptr + offs * sos, mask=mask, other=1.0)
    bias = scale  # placeholder, unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs, mask=mask, other=0.0)
    u = _silu_requant(acc, scale, bias, out_scale, HAS_BIAS)
    tl.store(u_ptr + rows[:, None].to(tl.int64) * sub + offs * sud, u, mask=mask)


@triton.jit
def _qcausal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, ws_ptr, is_ptr, os_ptr, bias_ptr, y_ptr,
    dim,
    sxb, sxd, ssb, ssd, ssk, swd, swk, sis, sos, syb, syd,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """int8 state: shift left by one, append x, exact dot with the taps, requantize; grid (B, cdiv(D, BLOCK_D))."""
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    rows = tl.program_id(0) + tl.zeros([1], dtype=tl.int32)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (chans < dim)[None, :]
    xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxb + chans[None, :] * sxd, mask=mask, other=0)
    conv_step_tile(xv, rows, chans, mask, state_ptr, w_ptr, ws_ptr, is_ptr, os_ptr, bias_ptr, y_ptr,
                   ssb, ssd, ssk, swd, swk, sis, sos, syb, syd, K, HAS_BIAS)


def _check_int8(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.dtype != torch.int8:
        raise QuambaError(f"{name} has dtype {t.dtype}: the quantized conv takes int8 (quantize it first)")


def _check_qconv_scales(weight_scale, input_scale, out_scale, bias, dim: int) -> None:
    if weight_scale.numel() != 1:
        raise QuambaError(f"conv weight_scale has shape {list(weight_scale.shape)}: expected one per-tensor scale")
    for name, t in (("conv input_scale", input_scale), ("conv out_scale", out_scale), ("conv bias", bias)):
        check_shape(name, t, (dim,))
        if t is not None and t.dtype != torch.float32:
            raise QuambaError(f"{name} has dtype {t.dtype}: the quantized conv takes float32 scales and bias")
    if weight_scale.dtype != torch.float32:
        raise QuambaError(f"conv weight_scale has dtype {weight_scale.dtype}: expected float32")


def _qcausal_conv1d_launch(
    x_q: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
    bcast: bool = False,
):
    """Checks and launches ``_qcausal_conv1d_kernel``; same contract as ``qcausal_conv1d_ref``.
    ``block_d`` / ``block_l`` / ``num_warps`` override the tile (powers of two), for tuning (``QCONV_SWEEP``);
    ``bcast`` loads the per-channel weights and scales as [BLOCK_D, BLOCK_L] broadcasts in the tile's own layout
    instead of [BLOCK_D] vectors converted to it through shared memory (being timed: benchmarks/sweep_prefill.py).

    y is allocated [B, L, D] (returned as the [B, D, L] view): the x projection / the scan read it
    channels-last without a copy. The final state is a new [B, D, K] int8 tensor.
    """
    if x_q.dim() != 3:
        raise QuambaError(f"conv input x_q has shape {list(x_q.shape)}, expected [B, D, L]")
    batch, dim, seqlen = x_q.shape
    width = _check_weight(weight_q, dim)
    check_shape("conv initial_state", initial_state, (batch, dim, width))
    for name, t in (("x_q", x_q), ("weight", weight_q), ("initial_state", initial_state)):
        _check_int8(name, t)
    _check_qconv_scales(weight_scale, input_scale, out_scale, bias, dim)
    check_same_device(("x_q", x_q), ("weight", weight_q), ("weight_scale", weight_scale),
                      ("input_scale", input_scale), ("out_scale", out_scale), ("bias", bias),
                      ("initial_state", initial_state))
    check_runnable(_qcausal_conv1d_kernel, x_q)

    y = torch.empty(batch, seqlen, dim, device=x_q.device, dtype=torch.int8).transpose(1, 2)
    final = torch.empty(batch, dim, width, device=x_q.device, dtype=torch.int8) if return_final_state else None
    if seqlen == 0 and final is not None:  # nothing to convolve: the state is the old one (or zeros)
        final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
    if batch * dim * seqlen > 0:
        # [64, 16] tiles over 8 warps: four outputs a thread (the fp32 epilogue with two IEEE divisions is
        # register-hungry: larger tiles per thread spill on sm_90)
        block_d = block_d or min(QCONV_TILE[0], next_pow2(dim))
        block_l = block_l or min(QCONV_TILE[1], next_pow2(seqlen))
        num_warps = num_warps or (QCONV_TILE[2] if block_d * block_l >= 1024 else 4)
        grid = (batch, cdiv(dim, block_d), cdiv(seqlen, block_l))
        init = initial_state
        with device_of(x_q):
            _qcausal_conv1d_kernel[grid](
                x_q, weight_q, weight_scale, input_scale, out_scale, bias if bias is not None else input_scale,
                init if init is not None else x_q, y, final if final is not None else y,
                dim, seqlen,
                *x_q.stride(), *weight_q.stride(), input_scale.stride(0), out_scale.stride(0),
                stride_or_zero(init, 0), stride_or_zero(init, 1), stride_or_zero(init, 2),
                *y.stride(),
                stride_or_zero(final, 0), stride_or_zero(final, 1), stride_or_zero(final, 2),
                K=width, KP=next_pow2(width), HAS_BIAS=bias is not None, HAS_INIT=init is not None,
                WRITE_FINAL=final is not None, BLOCK_D=block_d, BLOCK_L=block_l, BCAST=bcast,
                num_warps=num_warps, enable_fp_fusion=False,
            )
    return (y, final) if return_final_state else y


def _qcausal_conv1d_update_launch(
    x_q: torch.Tensor,
    conv_state: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Checks and launches ``_qcausal_conv1d_update_kernel``; same contract as ``qcausal_conv1d_update_ref``
    (x_q [B, D] may be a strided slice of in_proj's output; conv_state updated in place)."""
    if x_q.dim() != 2:
        raise QuambaError(f"conv update input x_q has shape {list(x_q.shape)}, expected [B, D]")
    batch, dim = x_q.shape
    width = _check_weight(weight_q, dim)
    check_shape("conv_state", conv_state, (batch, dim, width))
    for name, t in (("x_q", x_q), ("conv_state", conv_state), ("weight", weight_q)):
        _check_int8(name, t)
    _check_qconv_scales(weight_scale, input_scale, out_scale, bias, dim)
    check_same_device(("x_q", x_q), ("conv_state", conv_state), ("weight", weight_q),
                      ("weight_scale", weight_scale), ("input_scale", input_scale), ("out_scale", out_scale),
                      ("bias", bias))
    check_runnable(_qcausal_conv1d_update_kernel, x_q)

    y = torch.empty(batch, dim, device=x_q.device, dtype=torch.int8)
    if batch * dim == 0:
        return y
    block_d = min(256 if x_q.is_cuda else 64, next_pow2(dim))
    pdl = use_pdl(x_q)
    with device_of(x_q):
        _qcausal_conv1d_update_kernel[(batch, cdiv(dim, block_d))](
            x_q, conv_state, weight_q, weight_scale, input_scale, out_scale,
            bias if bias is not None else input_scale, y,
            dim,
            *x_q.stride(), *conv_state.stride(), *weight_q.stride(), input_scale.stride(0), out_scale.stride(0),
            *y.stride(),
            K=width, HAS_BIAS=bias is not None, BLOCK_D=block_d,
            num_warps=4, enable_fp_fusion=False,
            USE_PDL=pdl, launch_pdl=pdl,
        )
    return y


def conv_step_args(conv, m: int, n: int, device) -> tuple:
    """Checks a ``ConvStep`` against a projection's [M, N] int8 output and returns (u [M, D] int8, the kernel
    arguments after the projection's own: pointers, offset, D, strides) for ``conv_step_tile``."""
    dim = conv.channels
    width = _check_weight(conv.weight, dim)
    check_shape("conv_state", conv.state, (m, dim, width))
    for name, t in (("conv_state", conv.state), ("conv weight", conv.weight)):
        _check_int8(name, t)
    _check_qconv_scales(conv.weight_scale, conv.input_scale, conv.out_scale, conv.bias, dim)
    if not 0 <= conv.offset <= n - dim:
        raise QuambaError(f"a conv step over channels [{conv.offset}, {conv.offset + dim}) does not fit the "
                          f"projection's {n} output channels")
    check_same_device(("projection output", torch.empty(0, device=device)), ("conv_state", conv.state),
                      ("conv weight", conv.weight), ("conv weight_scale", conv.weight_scale),
                      ("conv input_scale", conv.input_scale), ("conv out_scale", conv.out_scale),
                      ("conv bias", conv.bias))
    u = torch.empty(m, dim, device=device, dtype=torch.int8)
    bias = conv.bias if conv.bias is not None else conv.input_scale
    return u, (conv.state, conv.weight, conv.weight_scale, conv.input_scale, conv.out_scale, bias, u,
               conv.offset, dim, *conv.state.stride(), *conv.weight.stride(), conv.input_scale.stride(0),
               conv.out_scale.stride(0), u.stride(0)), width
