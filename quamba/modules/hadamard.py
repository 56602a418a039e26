"""Online Hadamard transform + int8 quantization (the out_proj input, whose outlier channels it spreads out).
out_proj's weight is rotated offline by the same matrix, so W @ y = (W H^T) @ (H y)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.quant import quantize_ref
from ..quantization.hadamard import hadamard_transform_ref
from .registry import register


@register
class QHadamard(nn.Module):
    """y [..., D] float -> int8 [..., D] = quantize(y @ H_D^T, output_scale). Buffer: output_scale fp32 []."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("output_scale", torch.ones(()))

    def spec(self) -> dict:
        return {"dim": self.dim}

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return quantize_ref(hadamard_transform_ref(y.float()), self.output_scale)
