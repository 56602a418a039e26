"""Symmetric integer quantization and the W8A8 GEMM, as reference ops.

Integers are symmetric: int8 in [-128, 127], scale = absmax / 127, round to nearest (ties to even).
Integer products are accumulated exactly: on the CPU through float64 (exact for any int8 GEMM whose
K < 2^37), standing for the int32 accumulator of an integer GEMM unit.
"""
from __future__ import annotations

import torch

from .triton import use_triton

INT8_MIN, INT8_MAX = -128, 127


def quantize_ref(x: torch.Tensor, scale: torch.Tensor, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> torch.Tensor:
    """q = clamp(round(x / scale), qmin, qmax) as int8; x any float dtype, scale broadcastable to x (fp32)."""
    return torch.clamp(torch.round(x.float() / scale.float()), qmin, qmax).to(torch.int8)


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """x = q * scale in ``dtype``; scale broadcastable to q."""
    return (q.float() * scale.float()).to(dtype)


def int_matmul_ref(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """Exact integer product a @ b_t.T as int32. a: [M, K] int8, b_t: [N, K] int8 (any integer dtype)."""
    acc = a.double() @ b_t.double().T
    return acc.to(torch.int32)


def w8a8_gemm_ref(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """y = (x_q @ w_q^T) * x_scale * w_scale + bias, optionally requantized to int8 by ``out_scale``.

    x_q: [..., K] int8; x_scale: [] fp32 (static per-tensor); w_q: [N, K] int8; w_scale: [N] or [1] fp32;
    bias: [N] fp32 or None; out_scale: [N] or [] fp32 for an int8 output, else None for ``out_dtype`` output.
    The dequantisation is one fp32 multiply after the exact int32 accumulation (the GEMM epilogue).
    """
    lead = x_q.shape[:-1]
    acc = int_matmul_ref(x_q.reshape(-1, x_q.shape[-1]), w_q)  # [M, N] int32
    y = acc.float() * (x_scale.float() * w_scale.float())
    if bias is not None:
        y = y + bias.float()
    y = y.reshape(*lead, w_q.shape[0])
    if out_scale is not None:
        return quantize_ref(y, out_scale)
    return y.to(out_dtype)


def w8a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
    conv=None,
):
    """``w8a8_gemm_ref``'s contract, bit-exact: the Triton kernels on CUDA (a CUDA-core GEMV for few rows, the
    tensor cores above; see ``quamba.ops.triton.use_triton`` for the switches), the reference elsewhere.

    conv: a ``quamba.ops.conv1d.ConvStep`` (decoding, x_q [B, K], int8 output): also step that conv on its
    channels of y and return (y, u_q [B, D] int8); the GEMV runs it in its epilogue."""
    if use_triton(x_q, w_q, w_scale, bias, out_scale):
        from .triton.gemm_w8a8 import _w8a8_gemm_launch

        return _w8a8_gemm_launch(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype, conv=conv)
    y = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype)
    return y if conv is None else (y, conv.run(y))
