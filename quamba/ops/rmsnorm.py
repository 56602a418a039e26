"""RMSNorm, with the residual add that precedes it in every Mamba block, and Mamba2's gated RMSNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant import quantize_ref
from .triton import use_triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32.

    x: [..., D]; weight: [D]. Returns y in weight's dtype (the dtype of the consumer).
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(weight.dtype)


def add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
):
    """The block prologue: residual = x + residual; y = rms_norm(residual).

    x: [..., D]; residual: [..., D] or None (first block). Returns (y, residual); the new residual is
    fp32 when ``residual_in_fp32`` so that 64 layers of adds do not lose the small updates.
    """
    residual = x if residual is None else x + residual  # mixed dtypes promote to the wider one
    if residual_in_fp32:
        residual = residual.float()
    return rms_norm_ref(residual, weight, eps), residual


def gated_rms_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Mamba2's output norm: rms_norm(x * silu(z)) per group of ``group_size`` channels (or
    rms_norm(x) * silu(z) when ``norm_before_gate``), times weight. Computed in fp32.

    x, z: [..., D]; weight: [D]; group_size divides D (None: one group). Returns x's dtype.
    """
    xf = x.float()
    d = xf.shape[-1]
    group_size = d if group_size is None else group_size
    if z is not None and not norm_before_gate:
        xf = xf * F.silu(z.float())
    g = xf.reshape(*xf.shape[:-1], d // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    y = g.reshape(xf.shape) * weight.float()
    if z is not None and norm_before_gate:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``rms_norm_ref``'s contract (y in weight's dtype); the Triton kernel on CUDA (see
    ``quamba.ops.triton.use_triton`` for the switches), the reference elsewhere."""
    if use_triton(x, weight):
        from .triton.rmsnorm import _rms_norm_launch

        return _rms_norm_launch(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
):
    """``add_rms_norm_ref``'s contract, returning (y, residual); one fused kernel on CUDA."""
    if use_triton(x, residual, weight):
        from .triton.rmsnorm import _add_rms_norm_launch

        return _add_rms_norm_launch(x, residual, weight, eps, residual_in_fp32)
    return add_rms_norm_ref(x, residual, weight, eps, residual_in_fp32)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """``gated_rms_norm_ref``'s contract (x's dtype); the Triton kernel on CUDA."""
    if use_triton(x, z, weight):
        from .triton.rmsnorm import _gated_rms_norm_launch

        return _gated_rms_norm_launch(x, z, weight, eps, group_size, norm_before_gate)
    return gated_rms_norm_ref(x, z, weight, eps, group_size, norm_before_gate)


# ---------------------------------------------------------------------------------------------- int8 ends

def rms_norm_quant_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, out_scale: torch.Tensor) -> torch.Tensor:
    """RMSNorm emitting int8 for an int8 projection: quantize_ref(rms_norm_ref(x, weight.float(), eps), out_scale).

    x: [..., D] float; weight: [D] any float dtype (applied in fp32); out_scale: [] fp32 (static, per tensor).
    Returns int8 [..., D] = clamp(round_half_even(y / out_scale), -128, 127).
    """
    return quantize_ref(rms_norm_ref(x, weight.float(), eps), out_scale)


def add_rms_norm_quant_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out_scale: torch.Tensor,
    residual_in_fp32: bool = True,
):
    """The quantized block prologue: ``add_rms_norm_ref``'s residual add, then ``rms_norm_quant_ref``.

    x: [..., D]; residual: [..., D] or None (first block); weight: [D]; out_scale: [] fp32.
    Returns (y int8 [..., D], residual): residual = x if residual is None else x + residual (mixed dtypes
    promote), made fp32 when ``residual_in_fp32``; y = quantize(rms_norm(residual) * weight.float(), out_scale).
    """
    residual = x if residual is None else x + residual
    if residual_in_fp32:
        residual = residual.float()
    return rms_norm_quant_ref(residual, weight, eps, out_scale), residual


def qgated_rms_norm_ref(
    x: torch.Tensor,
    z_q: torch.Tensor,
    z_scale: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Mamba2's gated output norm with the gate arriving as int8: gated_rms_norm_ref(x, z_q * z_scale, ...)
    converted to weight's dtype.

    x: [..., D] float; z_q: [..., D] int8; z_scale: [] fp32; weight: [D]. Returns [..., D] in weight's dtype
    (computed in fp32, rounded to x's dtype as ``gated_rms_norm_ref`` returns it, then to weight's).
    """
    y = gated_rms_norm_ref(x, z_q.float() * z_scale, weight, eps, group_size, norm_before_gate)
    return y.to(weight.dtype)


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float, out_scale: torch.Tensor) -> torch.Tensor:
    """``rms_norm_quant_ref``'s contract (int8 out); one Triton kernel on CUDA, the reference elsewhere."""
    if use_triton(x, weight, out_scale):
        from .triton.rmsnorm import _rms_norm_launch

        return _rms_norm_launch(x, weight, eps, out_scale)
    return rms_norm_quant_ref(x, weight, eps, out_scale)


def add_rms_norm_quant(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out_scale: torch.Tensor,
    residual_in_fp32: bool = True,
):
    """``add_rms_norm_quant_ref``'s contract, returning (int8 y, residual); one fused kernel on CUDA
    (whose residual is always a new tensor, where the reference may return x itself)."""
    if use_triton(x, residual, weight, out_scale):
        from .triton.rmsnorm import _add_rms_norm_launch

        return _add_rms_norm_launch(x, residual, weight, eps, residual_in_fp32, out_scale)
    return add_rms_norm_quant_ref(x, residual, weight, eps, out_scale, residual_in_fp32)


def qgated_rms_norm(
    x: torch.Tensor,
    z_q: torch.Tensor,
    z_scale: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """``qgated_rms_norm_ref``'s contract (weight's dtype); one Triton kernel on CUDA."""
    if use_triton(x, z_q, z_scale, weight):
        from .triton.rmsnorm import _gated_rms_norm_launch

        return _gated_rms_norm_launch(x, z_q, weight, eps, group_size, norm_before_gate, z_scale, weight.dtype)
    return qgated_rms_norm_ref(x, z_q, z_scale, weight, eps, group_size, norm_before_gate)
