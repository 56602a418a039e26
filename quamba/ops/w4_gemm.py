"""Reference GEMMs for packed int4 weights: W4A16 (fp activations) and W4A8 (int8 activations).

These are the spec that GPU kernels are tested against. Weights are nn.Linear's [N, K], packed two int4
values per byte along K (see quantization.weight_formats.pack_int4), with one scale per group of
``group_size`` consecutive input features (-1: one group per row).
"""
from __future__ import annotations

import torch

from quamba.errors import QuambaError
from quamba.quantization.weight_formats import resolve_group_size, unpack_int4, w4a8_int8_weight
from .triton import use_triton, w4_dense_min_m

# float64 represents every integer below 2^53 exactly, so an int8 x int8 dot product of length K
# (|term| <= 128 * 128 = 2^14) is computed exactly in float64 whatever the summation order while K < 2^39.
_FLOAT64_EXACT_K = 2 ** 39
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def _check_packed(k: int, w_packed: torch.Tensor, scales: torch.Tensor, group_size: int, name: str) -> int:
    """Shape checks shared by both GEMMs; returns the effective group size."""
    if w_packed.dtype != torch.uint8 or w_packed.dim() != 2:
        raise QuambaError(f"w_packed must be uint8 [N, K // 2], got {w_packed.dim()}-D {w_packed.dtype}")
    n, half_k = w_packed.shape
    if 2 * half_k != k:
        raise QuambaError(f"activations have K={k} features but w_packed {tuple(w_packed.shape)} holds K={2 * half_k}")
    g = resolve_group_size(k, group_size)
    if tuple(scales.shape) != (n, k // g):
        raise QuambaError(f"{name} must have shape {(n, k // g)} for N={n}, K={k}, group_size={g}, "
                          f"got {tuple(scales.shape)}")
    return g


def _check_bias(bias: torch.Tensor | None, n: int) -> None:
    if bias is not None and tuple(bias.shape) != (n,):
        raise QuambaError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def w4a16_gemm_ref(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ bias) with W = unpack(w_packed) * scales (per group).

    x: [..., K] fp16/bf16/fp32; w_packed: uint8 [N, K // 2]; scales: fp16 [N, K // G]; bias: [N] or None.
    Dequantizes to fp32, multiplies in fp32, returns [..., N] in x's dtype.
    """
    if not x.is_floating_point():
        raise QuambaError(f"w4a16_gemm_ref takes floating activations, got {x.dtype}")
    g = _check_packed(x.shape[-1], w_packed, scales, group_size, "scales")
    _check_bias(bias, w_packed.shape[0])
    w = unpack_int4(w_packed).float() * scales.float().repeat_interleave(g, dim=1)  # [N, K] fp32
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w4a8_accumulate_ref(
    x_q: torch.Tensor, w_packed: torch.Tensor, group_scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The exact integer part of the W4A8 GEMM: acc = x_q @ (q4 * group_scales)^T.

    x_q: int8 [..., K]; w_packed: uint8 [N, K // 2]; group_scales: int8 [N, K // G] in [1, 16].
    Returns int32 [..., N]; raises QuambaError if a sum leaves the int32 range (it cannot for K < 131072).
    Computed in float64, which is exact here (see _FLOAT64_EXACT_K) and runs on CPU and GPU alike.
    """
    if x_q.dtype != torch.int8:
        raise QuambaError(f"w4a8 activations must be int8, got {x_q.dtype}")
    k = x_q.shape[-1]
    _check_packed(k, w_packed, group_scales, group_size, "group_scales")
    if k >= _FLOAT64_EXACT_K:
        raise QuambaError(f"K={k} is too large for the exact reference accumulation")
    w8 = w4a8_int8_weight(unpack_int4(w_packed), group_scales)  # int8 [N, K] in [-128, 112]
    acc = x_q.double() @ w8.double().T
    if acc.numel() and (acc.min() < _INT32_MIN or acc.max() > _INT32_MAX):
        raise QuambaError(f"W4A8 accumulation overflows int32 (K={k}); split K")
    return acc.to(torch.int32)


def w4a8_gemm_ref(
    x_q: torch.Tensor,
    x_scale: torch.Tensor | float,
    w_packed: torch.Tensor,
    group_scales: torch.Tensor,
    channel_scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """y = (x_q @ (q4 * group_scales)^T) * x_scale * channel_scales (+ bias), the W4A8 linear layer.

    x_q: int8 [..., K]; x_scale: fp32 scalar (one-element tensor or float), the static activation scale;
    w_packed: uint8 [N, K // 2]; group_scales: int8 [N, K // G]; channel_scales: fp32 [N]; bias: [N] or None.
    The accumulation is exact int32 (w4a8_accumulate_ref); the epilogue runs in fp32 in this order:
    acc.float() * x_scale, then * channel_scales, then + bias. Returns [..., N] in ``out_dtype``.
    """
    acc = w4a8_accumulate_ref(x_q, w_packed, group_scales, group_size)
    n = w_packed.shape[0]
    if tuple(channel_scales.shape) != (n,):
        raise QuambaError(f"channel_scales must have shape ({n},), got {tuple(channel_scales.shape)}")
    x_scale = torch.as_tensor(x_scale, dtype=torch.float32, device=acc.device)
    if x_scale.numel() != 1:
        raise QuambaError(f"x_scale must be one value (per-tensor), got shape {tuple(x_scale.shape)}")
    _check_bias(bias, n)
    y = acc.float() * x_scale.reshape(()) * channel_scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w4a16_gemm(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w4a16_gemm_ref``'s contract: the Triton kernels on CUDA, the reference elsewhere. Not bit-identical to the
    fp32 reference: for few rows (decode) the GEMV keeps q * s in fp32 and only sums in another order; larger M
    runs the tensor cores on weights rounded to x's dtype, with fp32 accumulation (tests state both bounds)."""
    if use_triton(x, w_packed, scales, bias):
        from .triton.gemm_w4 import _w4a16_gemm_launch

        return _w4a16_gemm_launch(x, w_packed, scales, group_size, bias, dense_min_m=w4_dense_min_m())
    return w4a16_gemm_ref(x, w_packed, scales, group_size, bias)


def w4a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor | float,
    w_packed: torch.Tensor,
    group_scales: torch.Tensor,
    channel_scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
    out_scale: torch.Tensor | None = None,
    conv=None,
):
    """``w4a8_gemm_ref``'s contract, bit-exact: the Triton kernels on CUDA (a CUDA-core GEMV for few rows, the
    tensor cores above), the reference elsewhere.

    out_scale ([N] or one fp32 value, optional): return ``quantize_ref(y, out_scale)`` (int8) of the fp32
    result instead of ``out_dtype``, the int8-output W4A8Linear; the kernel fuses it into its epilogue.
    conv: a ``quamba.ops.conv1d.ConvStep`` (with out_scale): also return its step's output, as ``w8a8_gemm``.
    """
    if use_triton(x_q, w_packed, group_scales, channel_scales, bias, out_scale):
        from .triton.gemm_w4 import _w4a8_gemm_launch

        return _w4a8_gemm_launch(x_q, x_scale, w_packed, group_scales, channel_scales, group_size, bias,
                                 out_dtype, out_scale, conv=conv, dense_min_m=w4_dense_min_m())
    if out_scale is None:
        if conv is not None:
            raise QuambaError("a conv step after a W4A8 projection needs its int8 output: pass out_scale")
        return w4a8_gemm_ref(x_q, x_scale, w_packed, group_scales, channel_scales, group_size, bias, out_dtype)
    from .quant import quantize_ref

    y = w4a8_gemm_ref(x_q, x_scale, w_packed, group_scales, channel_scales, group_size, bias, torch.float32)
    y = quantize_ref(y, out_scale)
    return y if conv is None else (y, conv.run(y))
