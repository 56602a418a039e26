"""Triton RMSNorm, fused residual add + RMSNorm, and Mamba2's gated RMSNorm: one row (or one
group of a row) per program, fp32 arithmetic, contracts of ``quamba.ops.rmsnorm``'s references.

The quantized variants fuse the int8 ends into the same kernels: the norm's output is requantized
(``rms_norm_quant`` / ``add_rms_norm_quant``: y / out_scale, round half to even, clamp, int8 store),
and the gated norm reads its gate as int8 with a per-tensor scale (``qgated_rms_norm``). Divisions
and the square root are IEEE-rounded (``div_rn`` / ``sqrt_rn``; with QUAMBA_FAST_EPILOGUE=1 the requantizing
division goes through the scale's reciprocal, ``div_by_reciprocal``, the same quotient), so the only difference from the
reference is the order of the fp32 sum of squares: an int8 output can differ by one step where the
value lies within a few ulps of a rounding tie.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (check_float, check_runnable, check_same_device, check_shape, dequant, device_of,
                      early_params, next_pow2, pdl_start, quantize_int8_shared, silu, use_pdl)

_MAX_ROW = 65536  # one program holds a whole row (or group) in registers


@triton.jit
def _norm_params(w_ptr, os_ptr, cols, mask, QUANT: tl.constexpr):
    """(weight as fp32, the per-tensor out_scale or 1.0)."""
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out_scale = 1.0
    if QUANT:
        out_scale = tl.load(os_ptr)
    return w, out_scale


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, os_ptr, y_ptr, res_out_ptr,
    ncols, eps,
    sx, sr, sy, so,
    HAS_RES: tl.constexpr, WRITE_RES: tl.constexpr, SUM_ROUND: tl.constexpr, QUANT: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr, EARLY: tl.constexpr,
):
    """Row r: s = x (+ residual, rounded to the residual-out dtype, which may be written);
    y = s * rsqrt(mean(s^2) + eps) * weight, stored in y's dtype or, with QUANT, as int8
    clamp(round_half_even(y / out_scale)). Grid (rows,). SUM_ROUND 1 / 2: the add is first
    rounded to fp16 / bf16 (two 16-bit inputs add in their dtype before any fp32 upcast).
    EARLY: weight and out_scale are read before the dependent-launch wait (see _common)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < ncols
    if EARLY:
        w, out_scale = _norm_params(w_ptr, os_ptr, cols, mask, QUANT)
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    if not EARLY:
        w, out_scale = _norm_params(w_ptr, os_ptr, cols, mask, QUANT)
    s = tl.load(x_ptr + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * sr + cols, mask=mask, other=0.0).to(tl.float32)
        if SUM_ROUND == 1:
            s = s.to(tl.float16).to(tl.float32)
        if SUM_ROUND == 2:
            s = s.to(tl.bfloat16).to(tl.float32)
    if WRITE_RES:
        # The norm sees the residual as stored (rounded), exactly as the reference normalises it.
        s = s.to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * so + cols, s, mask=mask)
        s = s.to(tl.float32)
    mean_sq = tl.math.div_rn(tl.sum(s * s, axis=0), ncols * 1.0)
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))
    y = s * rstd * w
    if QUANT:
        q = quantize_int8_shared(y, out_scale)  # one scale for the row
        tl.store(y_ptr + row * sy + cols, q, mask=mask)
    else:
        tl.store(y_ptr + row * sy + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_rms_norm_kernel(
    x_ptr, z_ptr, zs_ptr, w_ptr, y_ptr,
    group_size, eps,
    sx, sz, sy,
    HAS_Z: tl.constexpr, Z_INT8: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr, EARLY: tl.constexpr,
):
    """Group g of row r: rms_norm(x * silu(z)) * w, or rms_norm(x) * w * silu(z), rounded to x's dtype
    and then to y's. With Z_INT8 the gate is z_q * z_scale (int8 z_q, fp32 per-tensor z_scale).
    Grid (rows, groups). EARLY: the weight and z_scale are read before the dependent-launch wait."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * group_size + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < group_size
    if EARLY:
        w, z_scale = _norm_params(w_ptr, zs_ptr, cols, mask, Z_INT8)
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    if not EARLY:
        w, z_scale = _norm_params(w_ptr, zs_ptr, cols, mask, Z_INT8)
    x = tl.load(x_ptr + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        gate = silu(dequant(tl.load(z_ptr + row * sz + cols, mask=mask, other=0), z_scale, Z_INT8))
        if not NORM_BEFORE_GATE:
            x = x * gate
    mean_sq = tl.math.div_rn(tl.sum(x * x, axis=0), group_size * 1.0)
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))
    y = x * rstd * w
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y = y * gate
    # The reference returns x's dtype; a caller that wants another (the weight's) converts that.
    y = y.to(x_ptr.dtype.element_ty).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + row * sy + cols, y, mask=mask)


def _rows(t: torch.Tensor, ncols: int) -> torch.Tensor:
    """[..., D] -> [rows, D] with unit stride along D (a view when possible)."""
    t2 = t.reshape(-1, ncols)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _check_row(name: str, x: torch.Tensor, weight: torch.Tensor) -> int:
    ncols = x.shape[-1] if x.dim() > 0 else 0
    check_shape(f"{name} weight", weight, (ncols,))
    if ncols > _MAX_ROW:
        raise QuambaError(f"{name} rows of {ncols} exceed the Triton kernel's {_MAX_ROW}: use the *_ref op")
    return ncols


def _check_out_scale(name: str, out_scale: torch.Tensor | None) -> None:
    if out_scale is not None and (out_scale.numel() != 1 or out_scale.dtype != torch.float32):
        raise QuambaError(f"{name} is {out_scale.dtype} of shape {list(out_scale.shape)}: expected one float32 "
                          "per-tensor scale")


def _norm_rows(x2, res2, weight, y, res_out, eps, sum_round=0, out_scale=None):
    """Launch ``_rms_norm_kernel`` over the rows of x2 [rows, D]; int8 y when ``out_scale`` is given."""
    rows, ncols = x2.shape
    if rows == 0 or ncols == 0:
        return
    block = next_pow2(ncols)
    pdl = use_pdl(x2)
    with device_of(x2):
        _rms_norm_kernel[(rows,)](
            x2, res2 if res2 is not None else x2, weight, out_scale if out_scale is not None else weight, y,
            res_out if res_out is not None else y,
            ncols, float(eps),
            x2.stride(0), res2.stride(0) if res2 is not None else 0, y.stride(0),
            res_out.stride(0) if res_out is not None else 0,
            HAS_RES=res2 is not None, WRITE_RES=res_out is not None, SUM_ROUND=sum_round,
            QUANT=out_scale is not None, BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
            USE_PDL=pdl, EARLY=early_params(), launch_pdl=pdl,
        )


def _rms_norm_launch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                     out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Checks and launches ``_rms_norm_kernel``; same contract as ``rms_norm_ref`` (y in weight's dtype),
    or with ``out_scale`` as ``rms_norm_quant_ref`` (int8 y)."""
    ncols = _check_row("rms_norm", x, weight)
    check_float("x", x)
    check_float("weight", weight)
    _check_out_scale("rms_norm out_scale", out_scale)
    check_same_device(("x", x), ("weight", weight), ("out_scale", out_scale))
    check_runnable(_rms_norm_kernel, x)
    x2 = _rows(x, ncols)
    y = torch.empty(x2.shape, device=x.device, dtype=weight.dtype if out_scale is None else torch.int8)
    _norm_rows(x2, None, weight, y, None, eps, out_scale=out_scale)
    return y.reshape(x.shape)


def _add_rms_norm_launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    out_scale: torch.Tensor | None = None,
):
    """Checks and launches the fused add + norm; same contract as ``add_rms_norm_ref``, or with
    ``out_scale`` as ``add_rms_norm_quant_ref`` (int8 y).

    Returns (y in weight's dtype or int8, new residual: fp32 with ``residual_in_fp32``, else the promoted
    dtype of x and residual). The residual is always a new tensor (the reference may alias x).
    """
    ncols = _check_row("add_rms_norm", x, weight)
    check_shape("residual", residual, tuple(x.shape))
    for name, t in (("x", x), ("residual", residual), ("weight", weight)):
        check_float(name, t)
    _check_out_scale("add_rms_norm out_scale", out_scale)
    check_same_device(("x", x), ("residual", residual), ("weight", weight), ("out_scale", out_scale))
    check_runnable(_rms_norm_kernel, x)
    sum_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    res_dtype = torch.float32 if residual_in_fp32 else sum_dtype
    sum_round = {torch.float16: 1, torch.bfloat16: 2}.get(sum_dtype, 0) if residual is not None else 0
    x2 = _rows(x, ncols)
    res2 = None if residual is None else _rows(residual, ncols)
    y = torch.empty(x2.shape, device=x.device, dtype=weight.dtype if out_scale is None else torch.int8)
    res_out = torch.empty(x2.shape, device=x.device, dtype=res_dtype)
    _norm_rows(x2, res2, weight, y, res_out, eps, sum_round, out_scale)
    return y.reshape(x.shape), res_out.reshape(x.shape)


def _gated_rms_norm_launch(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    z_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Checks and launches ``_gated_rms_norm_kernel``; same contract as ``gated_rms_norm_ref`` (x's dtype),
    or with ``z_scale`` as ``qgated_rms_norm_ref`` (int8 z, y in ``out_dtype``, rounded through x's dtype)."""
    ncols = _check_row("gated_rms_norm", x, weight)
    check_shape("gate z", z, tuple(x.shape))
    group_size = ncols if group_size is None else int(group_size)
    if group_size <= 0 or ncols % group_size:
        raise QuambaError(f"group_size {group_size} does not divide the {ncols} channels of the gated norm")
    for name, t in (("x", x), ("weight", weight)):
        check_float(name, t)
    if z_scale is None:
        check_float("z", z)
    else:
        if z is None or z.dtype != torch.int8:
            raise QuambaError(f"the int8-gate norm takes z as int8, got {None if z is None else z.dtype}")
        _check_out_scale("gated norm z_scale", z_scale)
    check_same_device(("x", x), ("z", z), ("weight", weight), ("z_scale", z_scale))
    check_runnable(_gated_rms_norm_kernel, x)
    x2 = _rows(x, ncols)
    z2 = None if z is None else _rows(z, ncols)
    y = torch.empty(x2.shape, device=x.device, dtype=x.dtype if out_dtype is None else out_dtype)
    rows = x2.shape[0]
    if rows and ncols:
        block = next_pow2(group_size)
        pdl = use_pdl(x)
        with device_of(x):
            _gated_rms_norm_kernel[(rows, ncols // group_size)](
                x2, z2 if z2 is not None else x2, z_scale if z_scale is not None else weight, weight, y,
                group_size, float(eps),
                x2.stride(0), z2.stride(0) if z2 is not None else 0, y.stride(0),
                HAS_Z=z is not None, Z_INT8=z_scale is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
                BLOCK=block, num_warps=min(16, max(1, block // 256)),
                USE_PDL=pdl, EARLY=early_params(), launch_pdl=pdl,
            )
    return y.reshape(x.shape)
