"""Online Hadamard transform fused with int8 quantization: the input of a rotated out_proj.

out_proj's weight is rotated offline by the same orthonormal matrix H (see ``quamba.quantization.hadamard``),
so W @ y = (W H^T) @ (H y); the transform spreads the scan output's outlier channels before it is quantized.
In the A8 Mamba2 mixer the gated RMSNorm before it runs in the same kernel (``qgated_norm_hadamard_quant``).
"""
from __future__ import annotations

import torch

from .quant import quantize_ref
from .triton import use_triton


def hadamard_quant_ref(y: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """q = quantize_ref(hadamard_transform_ref(y.float()), out_scale): the normalised transform y @ H_n^T over
    the last dim, then clamp(round_half_even(. / out_scale), -128, 127).

    y: [..., n] fp16 / bf16 / fp32, n = m * 2^k with m in {1, 12, 20, 28} (40 * 2^k = 20 * 2^(k+1));
    out_scale: [] fp32 (static, per tensor). Returns int8 [..., n].
    """
    from ..quantization.hadamard import hadamard_transform_ref  # lazy: quamba.quantization imports the models

    return quantize_ref(hadamard_transform_ref(y.float()), out_scale)


def hadamard_quant(y: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """``hadamard_quant_ref``'s contract; one Triton kernel on CUDA (one row per program, fp32 in another
    order than the reference: an output may differ from it by one int8 step where the value lies within
    a few ulps of a rounding tie; exact for n = 2^k), the reference elsewhere."""
    if use_triton(y, out_scale):
        from .triton.hadamard import _hadamard_quant_launch

        return _hadamard_quant_launch(y, out_scale)
    return hadamard_quant_ref(y, out_scale)


# ------------------------------------------------------------------------------ fused with Mamba2's gated norm

def qgated_norm_hadamard_quant_ref(
    y: torch.Tensor,
    z_q: torch.Tensor,
    z_scale: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool,
    out_scale: torch.Tensor,
) -> torch.Tensor:
    """The A8 Mamba2 mixer's output path, norm then rotation + int8:
    hadamard_quant_ref(qgated_rms_norm_ref(y, z_q, z_scale, weight, eps, group_size, norm_before_gate), out_scale).

    y: [..., D] fp16 / bf16 / fp32 (the scan output); z_q: [..., D] int8 (may be a strided slice of in_proj's
    output); z_scale: [] fp32; weight: [D] (its dtype is the norm's output dtype, which the Hadamard then reads);
    group_size divides D (None: one group); out_scale: [] fp32. D = m * 2^k, m in {1, 12, 20, 28}.
    Returns int8 [..., D].
    """
    from .rmsnorm import qgated_rms_norm_ref

    normed = qgated_rms_norm_ref(y, z_q, z_scale, weight, eps, group_size, norm_before_gate)
    return hadamard_quant_ref(normed, out_scale)


def qgated_norm_hadamard_quant(
    y: torch.Tensor,
    z_q: torch.Tensor,
    z_scale: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool,
    out_scale: torch.Tensor,
) -> torch.Tensor:
    """``qgated_norm_hadamard_quant_ref``'s contract. On CUDA one Triton kernel where it applies (norm groups that
    divide the power-of-two part of D, e.g. mamba2-8b's 8 groups of 1024 in 8192; see
    ``quamba.ops.triton.norm_hadamard``), else the two kernels ``qgated_rms_norm`` + ``hadamard_quant``; the
    reference elsewhere."""
    from .rmsnorm import qgated_rms_norm
    if use_triton(y, z_q, z_scale, weight, out_scale):
        from .triton.norm_hadamard import _qgated_norm_hadamard_launch

        out = _qgated_norm_hadamard_launch(y, z_q, z_scale, weight, eps, group_size, norm_before_gate, out_scale)
        if out is not None:
            return out
    normed = qgated_rms_norm(y, z_q, z_scale, weight, eps, group_size, norm_before_gate)
    return hadamard_quant(normed, out_scale)
