"""Online Hadamard transform + int8 quantization (the out_proj input, whose outlier channels it spreads out).
out_proj's weight is rotated offline by the same matrix, so W @ y = (W H^T) @ (H y)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.hadamard import hadamard_quant
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
        """y [..., D] float (may be a strided view) -> int8 [..., D]; one kernel on CUDA
        (``quamba.ops.hadamard.hadamard_quant``)."""
        return hadamard_quant(y, self.output_scale)
