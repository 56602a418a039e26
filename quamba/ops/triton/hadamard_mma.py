"""Triton Hadamard transform + int8 quantization on tensor cores: prefill's variant of ``hadamard.py``.

Same contract as ``hadamard_quant_ref``: q = quantize(y @ H_n^T), H_n = (H_m (x) H_P) / sqrt(n), n = m * P.
Why a second kernel: at prefill (1024 rows of 5120 = 20 * 256) the butterfly kernel runs at 8x its memory floor
on an H100 (41 us against 5.2); its log2(P) stages each shuffle the whole tile between threads. Here the
transform is three matrix products on tensor cores, with two transposes in between:
  1. H_m (m > 1): [MP, MP] @ x viewed [MP, ROWS * P] (rows >= m masked to zero), the +-1 entries of the Paley
     matrix generated in registers. 16-bit inputs go in as they are: the products are exact, the sums fp32.
  2. H_P = H_P1 (x) H_P2 (Sylvester order, P = P1 * P2, both >= 16): the tile viewed [.., P1, P2] times H_P2,
     transposed, times H_P1, transposed back. Their inputs are fp32 sums, so these products use "tf32x3"
     (three tf32 products: about fp32's precision; H's +-1 entries are exact in tf32).
  3. times 1/sqrt(n), / out_scale (div_rn), clamp, round half to even, int8 store (``butterflies_quant_store``'s
     step 3).
The sums run in another order than the reference's (and tf32x3 is a few fp32 ulps from fp32), so an int8
output may differ by one step where the value lies within a few ulps of a rounding tie, also for n = 2^k,
where the butterfly kernel is bit-identical (the bounds: tests/ops/test_triton_hadamard.py).
Off unless ``QUAMBA_HADAMARD_MMA=1`` (or ``HADAMARD_MMA_DEFAULT``): not yet timed on a GPU.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import cdiv, device_of, next_pow2, pdl_start, quantize_int8, use_pdl
from .hadamard import _base_column

MIN_P = 256  # P1, P2 >= 16: tl.dot's smallest operand side
MIN_ROWS = 16  # fewer rows (decode) stay on the butterfly kernel, which splits a row over programs


@triton.jit
def _sylvester(P: tl.constexpr, LOG_P: tl.constexpr):
    """The unnormalised Sylvester H_P as a [P, P] fp32 tile: entry (i, j) = (-1)^popcount(i & j)."""
    v = tl.arange(0, P)[:, None] & tl.arange(0, P)[None, :]
    parity = tl.zeros([P, P], dtype=tl.int32)
    for s in tl.static_range(LOG_P):
        parity = parity ^ ((v >> s) & 1)
    return tl.where(parity == 0, 1.0, -1.0)


@triton.jit
def _paley_block(MP: tl.constexpr, M: tl.constexpr, Q: tl.constexpr, QR: tl.constexpr):
    """The unnormalised H_m as an [MP, MP] fp32 tile (zero outside [m, m]), from ``_base_column``."""
    offs_i = tl.arange(0, MP)
    offs_j = tl.arange(0, MP)[None, :]
    h = tl.zeros([MP, MP], dtype=tl.float32)
    for j in tl.static_range(M):
        h = tl.where(offs_j == j, _base_column(offs_i, j, M, Q, QR)[:, None], h)
    return h


@triton.jit
def _hadamard_quant_mma_kernel(
    x_ptr, os_ptr, y_ptr,
    num_rows, rows_per_batch, inv_sqrt_n,
    sxb, sxr, sxc,
    M: tl.constexpr, MP: tl.constexpr, P1: tl.constexpr, LOG_P1: tl.constexpr, P2: tl.constexpr,
    LOG_P2: tl.constexpr, Q: tl.constexpr, QR: tl.constexpr, ROWS: tl.constexpr, USE_PDL: tl.constexpr,
):
    """ROWS whole rows of x ([batches, rows_per_batch, n], any strides) -> int8 rows of y ([num_rows, n],
    contiguous), as an [MP, ROWS, P] fp32 tile (MP = m padded to a power of two; 1 for n = 2^k).
    Grid (cdiv(num_rows, ROWS),)."""
    pdl_start(USE_PDL)
    P: tl.constexpr = P1 * P2
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < num_rows
    x_rows = x_ptr + (rows // rows_per_batch) * sxb + (rows % rows_per_batch) * sxr
    offs_i = tl.arange(0, MP)  # sub-rows: m's index
    offs_p = tl.arange(0, P)
    x_ptrs = x_rows[None, :, None] + (offs_i[:, None, None] * P + offs_p[None, None, :]) * sxc
    mask = (offs_i < M)[:, None, None] & row_mask[None, :, None]
    t = tl.load(x_ptrs, mask=mask, other=0.0)  # [MP, ROWS, P]
    if M > 1:
        t = tl.reshape(t, [MP, ROWS * P])
        h_m = _paley_block(MP, M, Q, QR)
        if x_ptr.dtype.element_ty == tl.float32:
            t = tl.dot(h_m, t, input_precision="tf32x3")
        else:
            t = tl.dot(h_m.to(x_ptr.dtype.element_ty), t)  # exact products, fp32 sums
    t = tl.reshape(t.to(tl.float32), [MP * ROWS * P1, P2])
    t = tl.dot(t, _sylvester(P2, LOG_P2), input_precision="tf32x3")
    t = tl.reshape(tl.permute(tl.reshape(t, [MP * ROWS, P1, P2]), (0, 2, 1)), [MP * ROWS * P2, P1])
    t = tl.dot(t, _sylvester(P1, LOG_P1), input_precision="tf32x3")
    t = tl.reshape(tl.permute(tl.reshape(t, [MP * ROWS, P2, P1]), (0, 2, 1)), [MP, ROWS, P])
    t = t * inv_sqrt_n
    y_ptrs = y_ptr + rows[None, :, None] * (M * P) + (offs_i[:, None, None] * P + offs_p[None, None, :])
    tl.store(y_ptrs, quantize_int8(t, tl.load(os_ptr)), mask=mask)


def mma_applies(num_rows: int, m: int, p: int) -> bool:
    """Whether the tensor-core kernel takes these rows: a long enough power-of-two part, and prefill's row count."""
    return p >= MIN_P and num_rows >= MIN_ROWS


def launch_mma(x3: torch.Tensor, out_scale: torch.Tensor, out: torch.Tensor, plan: tuple[int, int, int, int], *,
               rows_per_program: int | None = None, num_warps: int | None = None) -> None:
    """Launches ``_hadamard_quant_mma_kernel`` on x3 ([batches, rows, n], any strides) into out (int8, contiguous,
    n per row); plan = ``hadamard._plan(n)``, checked by the caller (``mma_applies``)."""
    m, p, q, qr = plan
    mp = next_pow2(m)
    log_p = p.bit_length() - 1
    log_p2 = (log_p + 1) // 2  # P2 >= P1: the first product's side
    num_rows = x3.shape[0] * x3.shape[1]
    rows = rows_per_program or max(1, min(4, 8192 // (mp * p)))
    pdl = use_pdl(x3)
    with device_of(x3):
        _hadamard_quant_mma_kernel[(cdiv(num_rows, rows),)](
            x3, out_scale, out,
            num_rows, x3.shape[1], 1.0 / math.sqrt(m * p),
            *x3.stride(),
            M=m, MP=mp, P1=1 << (log_p - log_p2), LOG_P1=log_p - log_p2, P2=1 << log_p2, LOG_P2=log_p2,
            Q=q, QR=qr, ROWS=rows, USE_PDL=pdl, launch_pdl=pdl,
            num_warps=num_warps or 8,
        )
