"""Triton kernel of ``quamba.ops.hadamard.qgated_norm_hadamard_quant``: Mamba2's gated RMSNorm (int8 gate) and
the Hadamard transform + int8 quantization of out_proj's input, in one launch.

Per row of n = D = m * P channels (the layout of ``hadamard.py``: the row viewed as m sub-rows of P, the
Hadamard tile [ROWS, MP, P] in registers), for norm groups of GS channels that divide P (so every sub-row holds
whole groups; one group per row when m = 1):
  1. the norm, with ``rmsnorm.py``'s gated-norm arithmetic, on sub-row j viewed as [ROWS, P / GS, GS]:
     gate = silu(z_q * z_scale); x = y * gate (unless norm_before_gate); rstd = 1 / sqrt_rn(div_rn(sum(x^2), GS)
     + eps); v = x * rstd * w (* gate when norm_before_gate), rounded to y's dtype and then to weight's, as the
     two-kernel path stores it, and read back as fp32;
  2. the normalised sub-row j enters the Hadamard tile as column j of H_m times it (``hadamard.py``'s loop);
  3. log2(P) butterflies, * 1/sqrt(n), div_rn by out_scale, clamp, round half to even, int8 store.
The group's squares are summed by the same tl.sum as the two-kernel path's, so the result is theirs.

Groups larger than P (mamba2-2.7b: one group of 5120 = 20 * 256) are not fused by this kernel: a group spanning
sub-rows needs a pass over the row for its sums of squares before the first sub-row can be normalised, and a
single-program version of that (since removed) measured slower than the two kernels on an H100: 19.3 vs 16.4 us at
1 row of 5120, 118 vs 69 us at 1024 rows, and 1.3 ms vs 16 us with groups of 1280. A row kernel (also removed)
took the decode case, one group per row and few rows, with the Hadamard kernel's parallelism (one program per
output sub-row, each repeating the row's sum of squares): it too was slower (W4A8 mamba2-2.7b 1.873 against 1.639 ms a
token, H100, 2026-12-07). Neither are group sizes that do not divide P, nor orders the Hadamard
kernel does not take: for all of these the launcher returns None and the dispatcher runs the two kernels.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, check_shape, dequant, device_of,
                      early_params, next_pow2, pdl_start, silu, use_pdl)
from .hadamard import _MAX_N, _as_3d, _base_column, _plan, _rows_per_program, butterflies_quant_store


@triton.jit
def _gated_sub_row(y_rows, z_rows, zs, j: tl.constexpr, row_mask, syc, szc,
                   P: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """Sub-row j ([ROWS, P] fp32) of the rows at pointers y_rows / z_rows ([ROWS]): (x, gate) with
    x = y * gate unless NORM_BEFORE_GATE (then x = y), gate = silu(z_q * z_scale)."""
    cols = j * P + tl.arange(0, P)
    x = tl.load(y_rows[:, None] + cols[None, :] * syc, mask=row_mask[:, None], other=0.0).to(tl.float32)
    gate = silu(dequant(tl.load(z_rows[:, None] + cols[None, :] * szc, mask=row_mask[:, None], other=0), zs, True))
    if not NORM_BEFORE_GATE:
        x = x * gate
    return x, gate


@triton.jit
def _rstd(sum_sq, eps, GS: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) from the group's fp32 sum of squares, IEEE-rounded as in rmsnorm.py."""
    mean_sq = tl.math.div_rn(sum_sq, GS * 1.0)
    return tl.math.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))


@triton.jit
def _store_dtype_round(v, y_ptr, w_ptr):
    """The norm's value as the two-kernel path stores it: rounded to y's dtype, then to weight's; back to fp32."""
    return v.to(y_ptr.dtype.element_ty).to(w_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _qgated_norm_hadamard_kernel(
    y_ptr, z_ptr, zs_ptr, w_ptr, os_ptr, out_ptr,
    num_rows, rows_per_batch, eps, inv_sqrt_n,
    syb, syr, syc, szb, szr, szc,
    M: tl.constexpr, MP: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr, HCOLS: tl.constexpr,
    GS: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, ROWS: tl.constexpr,
    USE_PDL: tl.constexpr, EARLY: tl.constexpr,
):
    """ROWS rows of y and z_q, each viewed as [batches, rows_per_batch, n] (any strides) -> the int8 rows of out
    ([num_rows, n], contiguous). GS: the norm group size, a divisor of P. Grid (cdiv(num_rows, ROWS),).
    EARLY: the two scales are read before the dependent-launch wait."""
    if EARLY:
        zs, out_scale = tl.load(zs_ptr), tl.load(os_ptr)
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    if not EARLY:
        zs, out_scale = tl.load(zs_ptr), tl.load(os_ptr)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < num_rows
    batch, r = rows // rows_per_batch, rows % rows_per_batch
    y_rows = y_ptr + batch * syb + r * syr  # [ROWS] pointers
    z_rows = z_ptr + batch * szb + r * szr
    offs_i = tl.arange(0, MP)
    offs_p = tl.arange(0, P)
    t = tl.zeros([ROWS, MP, P], dtype=tl.float32)
    # normalise sub-row j (whole groups), accumulate it into the Hadamard tile
    for j in tl.static_range(M):
        x, gate = _gated_sub_row(y_rows, z_rows, zs, j, row_mask, syc, szc, P, NORM_BEFORE_GATE)
        w = tl.load(w_ptr + j * P + offs_p).to(tl.float32)
        x3 = tl.reshape(x, [ROWS, P // GS, GS])
        r3 = _rstd(tl.sum(x3 * x3, axis=2), eps, GS)  # [ROWS, P // GS]
        v = tl.reshape(x3 * r3[:, :, None], [ROWS, P]) * w[None, :]
        if NORM_BEFORE_GATE:
            v = v * gate
        v = _store_dtype_round(v, y_ptr, w_ptr)
        if M == 1:
            t = tl.reshape(v, [ROWS, MP, P])
        else:
            t += _base_column(offs_i, j, HCOLS)[None, :, None] * v[:, None, :]
    butterflies_quant_store(t, rows, row_mask, offs_i, offs_p, inv_sqrt_n, out_scale, out_ptr, M, MP, P, LOG_P, ROWS)


@functools.lru_cache(maxsize=None)
def _fused_plan(n: int, group_size: int) -> tuple[int, int, int] | None:
    """(m, P, H_m's column bits) for rows of n channels normed in groups of group_size, or None where the fused
    kernel does not apply (groups that do not divide P; the dispatcher then runs the two kernels)."""
    plan = _plan(n)
    if plan is None:
        return None
    m, p, hcols = plan
    if next_pow2(m) * p > _MAX_N or p % group_size:
        return None
    return plan


def _check_scalar(name: str, t: torch.Tensor) -> None:
    if t.numel() != 1 or t.dtype != torch.float32:
        raise QuambaError(f"{name} is {t.dtype} of shape {list(t.shape)}: expected one float32 per-tensor scale")


def _qgated_norm_hadamard_launch(y: torch.Tensor, z_q: torch.Tensor, z_scale: torch.Tensor, weight: torch.Tensor,
                                 eps: float, group_size: int | None, norm_before_gate: bool,
                                 out_scale: torch.Tensor) -> torch.Tensor | None:
    """Checks and launches ``_qgated_norm_hadamard_kernel``; the contract of ``qgated_norm_hadamard_quant_ref``. y
    and z_q may be strided views (z_q is a slice of in_proj's output); returns a new contiguous int8 tensor, or None
    where the shape is not fused (see ``_fused_plan``) and the caller must run the two kernels."""
    if y.dim() == 0:
        raise QuambaError("the gated norm + Hadamard takes y of shape [..., D], got a scalar")
    n = y.shape[-1]
    check_shape("gated norm weight", weight, (n,))
    check_shape("gate z_q", z_q, tuple(y.shape))
    group_size = n if group_size is None else int(group_size)
    if group_size <= 0 or n % group_size:
        raise QuambaError(f"group_size {group_size} does not divide the {n} channels of the gated norm")
    plan = _fused_plan(n, group_size)
    if plan is None:
        return None
    check_float("y", y)
    check_float("weight", weight)
    if z_q.dtype != torch.int8:
        raise QuambaError(f"the int8-gate norm takes z_q as int8, got {z_q.dtype}")
    _check_scalar("gated norm z_scale", z_scale)
    _check_scalar("hadamard out_scale", out_scale)
    check_same_device(("y", y), ("z_q", z_q), ("z_scale", z_scale), ("weight", weight), ("out_scale", out_scale))
    check_runnable(_qgated_norm_hadamard_kernel, y)
    m, p, hcols = plan
    out = torch.empty(y.shape, device=y.device, dtype=torch.int8)
    y3, z3 = _as_3d(y), _as_3d(z_q)
    num_rows = y3.shape[0] * y3.shape[1]
    if num_rows == 0:
        return out
    pdl = use_pdl(y)
    tile = next_pow2(m) * p
    rows = _rows_per_program(num_rows, tile, y.is_cuda)
    with device_of(y):
        _qgated_norm_hadamard_kernel[(cdiv(num_rows, rows),)](
            y3, z3, z_scale, weight, out_scale, out,
            num_rows, y3.shape[1], float(eps), 1.0 / math.sqrt(n),
            *y3.stride(), *z3.stride(),
            M=m, MP=next_pow2(m), P=p, LOG_P=p.bit_length() - 1, HCOLS=hcols,
            GS=group_size, NORM_BEFORE_GATE=bool(norm_before_gate), ROWS=rows,
            num_warps=min(32, max(4, rows * tile // 512)),  # as hadamard.py: <= 16 fp32 of the tile per thread
            USE_PDL=pdl, EARLY=early_params(), launch_pdl=pdl,
        )
    return out
