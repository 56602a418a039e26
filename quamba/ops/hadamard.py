"""Online Hadamard transform fused with int8 quantization: the input of a rotated out_proj.

out_proj's weight is rotated offline by the same orthonormal matrix H (see ``quamba.quantization.hadamard``),
so W @ y = (W H^T) @ (H y); the transform spreads the scan output's outlier channels before it is quantized.
"""
from __future__ import annotations

import torch

from .quant import quantize_ref


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
    from .triton import use_triton

    if use_triton(y, out_scale):
        from .triton.hadamard import _hadamard_quant_launch

        return _hadamard_quant_launch(y, out_scale)
    return hadamard_quant_ref(y, out_scale)
