"""Triton Hadamard transform + int8 quantization: the kernel of ``quamba.ops.hadamard.hadamard_quant``.

Contract of ``hadamard_quant_ref``: q = quantize(y @ H_n^T), H_n = (H_m (x) H_P) / sqrt(n), n = m * P,
m in {1, 12, 20, 28}, P = 2^k. The row is viewed as [m, P] (m the slow index, MP = m padded to a power of two).
Output sub-row i = H_P(sum_j H_m[i, j] y_j) needs the whole row but no other output sub-row, so a program
computes MI of them in registers, as an [ROWS, MI, P] tile (short rows go several to a program; grid dimension 1
runs over the m / MI blocks of sub-rows), reading the row once per block (from L2 after the first). One program
per whole row (MI = MP) left decode's one row of 5120 = 20 * 256 to one SM, and a [32, 256] tile's butterflies
cost more than the extra reads:
  1. H_m: the tile accumulates column j of H_m times input sub-row j, loaded once from memory, for
     j < m (rank-1 updates; padded rows are computed, never stored). H_m's +-1 entries come from a compile-time
     constant, the matrix of quamba.quantization.hadamard as bits (no table in memory, CUDA-graph safe).
  2. H_P: log2(P) butterfly stages of constant geometry: view [MP, P/2, 2], (a, b) -> (a + b, a - b),
     and put the pair index on top ([MP, 2, P/2]). Stage s combines the pairs of the original index's
     bit s, exactly the reference's butterflies in the reference's order.
  3. times 1/sqrt(n) (fp32), / out_scale (IEEE-rounded: div_rn, or with QUAMBA_FAST_EPILOGUE=1 through its
     reciprocal, ``div_by_reciprocal``), clamp, round half to even, int8 store.
For n = 2^k (no H_m) every operation is the reference's, so the output is bit-identical to it. With
m > 1 the H_m sums run before the butterflies and in another order than the reference's einsum, so
fp32 rounding differs by a few ulps: an int8 output may differ by one step where the value lies within
a few ulps of a rounding tie (measured in tests/ops/test_triton_hadamard.py).
Tried and dropped (H100, 2026-12-07): the transform as three tensor-core products (H_m, then H_P = H_P1 (x) H_P2 with
tf32x3, two transposes between) instead of the butterflies: 65.6 against 41.2 us at 1024 rows of 5120, 79 against
15.5 at 4096, 876 against 27 at 8192 (the transposes and the tf32x3 products cost more than the shuffles they save).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import (cdiv, check_float, check_runnable, check_same_device, device_of, early_params, next_pow2,
                      pdl_start, quantize_int8_shared, use_pdl)

_MAX_N = 16384  # one program holds an [MP, P] fp32 tile in registers


@triton.jit
def _base_column(i, j: tl.constexpr, HCOLS: tl.constexpr):
    """Column j of the unnormalised base matrix H_m as fp32 over rows i ([MP] int32); rows >= m (padding) get
    meaningless +-1s: the sub-rows they produce are never stored, and the butterflies keep sub-rows apart. HCOLS holds
    the columns as 32-bit fields, bit i of field j set where H_m[i, j] = +1 (see ``_column_bits``): field j is a
    compile-time constant, so an entry costs a shift, a mask and a select (the Paley construction evaluated in the
    kernel took an integer modulo per entry, half of the Hadamard kernel's instructions)."""
    col: tl.constexpr = (HCOLS >> (32 * j)) & 0xFFFFFFFF
    return tl.where(((col >> i) & 1) == 1, 1.0, -1.0)


@triton.jit
def butterflies_quant_store(t, rows, row_mask, offs_i, offs_p, inv_sqrt_n, out_scale, y_ptr, M: tl.constexpr,
                            MP: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr, ROWS: tl.constexpr):
    """Steps 2 and 3 on the [ROWS, MP, P] tile t (H_m already applied; MP: its sub-rows, offs_i their indices in the
    row, those >= M not stored): the H_P butterflies, * 1/sqrt(n), / out_scale (fp32 scalar; IEEE-rounded),
    clamp, round half to even, int8 rows of y ([num_rows, M * P], contiguous)."""
    for _ in tl.static_range(LOG_P):
        a, b = tl.split(tl.reshape(t, [ROWS, MP, P // 2, 2]))
        t = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), [ROWS, MP, P])
    t = t * inv_sqrt_n
    y_ptrs = y_ptr + rows[:, None, None] * (M * P) + offs_i[None, :, None] * P + offs_p[None, None, :]
    q = quantize_int8_shared(t, out_scale)  # one scale for the whole tile
    tl.store(y_ptrs, q, mask=row_mask[:, None, None] & (offs_i < M)[None, :, None])


@triton.jit
def _hadamard_quant_kernel(
    x_ptr, os_ptr, y_ptr,
    num_rows, rows_per_batch, inv_sqrt_n,
    sxb, sxr, sxc,
    M: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr, HCOLS: tl.constexpr, ROWS: tl.constexpr,
    MI: tl.constexpr,
    USE_PDL: tl.constexpr, EARLY: tl.constexpr,
):
    """ROWS rows of x, viewed as [batches, rows_per_batch, n] (any strides) -> output sub-rows
    program_id(1) * MI ... + MI - 1 (those < M) of the int8 rows of y ([num_rows, n], contiguous), as an
    [ROWS, MI, P] tile (MI = m padded to a power of two: whole rows). Grid (cdiv(num_rows, ROWS), cdiv(M, MI)).
    EARLY: out_scale is read before the dependent-launch wait."""
    if EARLY:
        out_scale = tl.load(os_ptr)
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    if not EARLY:
        out_scale = tl.load(os_ptr)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < num_rows
    x_rows = x_ptr + (rows // rows_per_batch) * sxb + (rows % rows_per_batch) * sxr  # [ROWS] pointers
    offs_i = tl.program_id(1) * MI + tl.arange(0, MI)  # the output sub-rows (rows of H_m) of this program
    offs_p = tl.arange(0, P)
    if M == 1:
        t = tl.load(x_rows[:, None] + offs_p[None, :] * sxc, mask=row_mask[:, None], other=0.0)
        t = tl.reshape(t.to(tl.float32), [ROWS, MI, P])
    else:
        t = tl.zeros([ROWS, MI, P], dtype=tl.float32)
        for j in tl.static_range(M):
            xj = tl.load(x_rows[:, None] + (j * P + offs_p)[None, :] * sxc, mask=row_mask[:, None], other=0.0)
            t += _base_column(offs_i, j, HCOLS)[None, :, None] * xj.to(tl.float32)[:, None, :]
    butterflies_quant_store(t, rows, row_mask, offs_i, offs_p, inv_sqrt_n, out_scale, y_ptr, M, MI, P, LOG_P, ROWS)


def _rows_per_program(num_rows: int, tile: int, on_gpu: bool) -> int:
    """A power of two: one row per program for the long rows of the models (one row already fills the
    registers of 8-16 warps), several for short rows (fewer, fuller programs; and the interpreter pays
    per program)."""
    budget = 1024 if on_gpu else 16384
    rows = max(1, budget // tile)
    return min(1 << (rows.bit_length() - 1), next_pow2(num_rows), 64)


def _sub_rows_per_program(num_rows: int, m: int, mp: int) -> int:
    """MI, the output sub-rows per program (m > 1; a 2^k row is one sub-row): one for a single row, else 4.
    Measured on an H100 at n = 5120 = 20 * 256 (fp16, one call in a CUDA graph): 1 row 5.7 us (MI 1) / 6.7 (MI 4)
    / 13.8 (whole rows, MI 32); 16 rows 15.2 / 6.9 / 14.1; 64 rows 15.7 / 8.1 / 14.0; 1024 rows 59.4 / 41.0 / 81.1,
    all before H_m's signs became compile-time constants (MI 4 at 1024 rows: 24.3 us since); not re-swept."""
    if m == 1:
        return mp
    return 1 if num_rows == 1 else min(4, mp)


@functools.lru_cache(maxsize=None)
def _plan(n: int) -> tuple[int, int, int] | None:
    """n -> (m, P, H_m's column bits) for n = m * P, or None when n is not a supported order."""
    for m in (1, 12, 20, 28):
        p = n // m
        if n % m == 0 and p >= 1 and p & (p - 1) == 0:
            return m, p, _column_bits(m)
    return None


def _column_bits(m: int) -> int:
    """The base matrix H_m of quamba.quantization.hadamard (the reference's) as one integer, the HCOLS constexpr:
    bit i of the 32-bit field j is set where H_m[i, j] = +1 (computed once per order: ``_plan`` caches it)."""
    from ...quantization.hadamard import _base_matrix  # lazy: quamba.quantization imports the models

    h = _base_matrix(m)
    return sum(1 << (32 * j + i) for j in range(m) for i in range(m) if h[i, j] > 0)


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """[..., n] -> [batches, rows, n] (a view whenever the leading dims allow one)."""
    if x.dim() == 3:
        return x
    if x.dim() < 3:
        return x.reshape((1,) * (3 - x.dim()) + tuple(x.shape))
    lead = x.shape[-2]
    try:
        return x.view(-1, lead, x.shape[-1])
    except RuntimeError:  # leading dims that cannot merge: one copy
        return x.reshape(-1, lead, x.shape[-1])


def _hadamard_quant_launch(y: torch.Tensor, out_scale: torch.Tensor, *, sub_rows: int | None = None,
                           rows_per_program: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Checks and launches ``_hadamard_quant_kernel``; same contract as ``hadamard_quant_ref``. y may be
    any strided view (the mixers pass transposed / sliced ones); the output is a new contiguous int8.
    ``sub_rows`` (MI) / ``rows_per_program`` / ``num_warps`` override the launch heuristic (powers of two), for
    tuning."""
    if y.dim() == 0:
        raise QuambaError("hadamard_quant takes y of shape [..., n], got a scalar")
    n = y.shape[-1]
    plan = _plan(n)
    if plan is None:
        raise QuambaError(f"no Hadamard matrix of order {n}: supported orders are 2^k, 12*2^k, 20*2^k, 28*2^k "
                          "or 40*2^k (k >= 0)")
    m, p, hcols = plan
    mp = next_pow2(m)
    if mp * p > _MAX_N:
        raise QuambaError(f"Hadamard rows of {n} exceed the Triton kernel's {_MAX_N}: use hadamard_quant_ref")
    check_float("y", y)
    if out_scale.numel() != 1 or out_scale.dtype != torch.float32:
        raise QuambaError(f"hadamard out_scale is {out_scale.dtype} of shape {list(out_scale.shape)}: expected one "
                          "float32 per-tensor scale")
    check_same_device(("y", y), ("out_scale", out_scale))
    check_runnable(_hadamard_quant_kernel, y)
    out = torch.empty(y.shape, device=y.device, dtype=torch.int8)
    x3 = _as_3d(y)
    num_rows = x3.shape[0] * x3.shape[1]
    if num_rows == 0:
        return out
    mi = sub_rows or _sub_rows_per_program(num_rows, m, mp)
    tile = mi * p
    rows = rows_per_program or _rows_per_program(num_rows, tile, y.is_cuda)
    pdl = use_pdl(y)
    with device_of(y):
        _hadamard_quant_kernel[(cdiv(num_rows, rows), cdiv(m, mi))](
            x3, out_scale, out,
            num_rows, x3.shape[1], 1.0 / math.sqrt(n),
            *x3.stride(),
            M=m, P=p, LOG_P=p.bit_length() - 1, HCOLS=hcols, ROWS=rows, MI=mi,
            num_warps=num_warps or min(32, max(4, rows * tile // 512)),  # <= 16 fp32 per thread: no spills,
            USE_PDL=pdl, EARLY=early_params(), launch_pdl=pdl,
        )
    return out
