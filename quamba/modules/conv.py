"""Quantized depthwise causal conv1d + SiLU: int8 in, exact integer accumulation, int8 out."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.conv1d import ConvStep, qcausal_conv1d, qcausal_conv1d_update
from ..ops.quant import quantize_ref
from .registry import register


@register
class QCausalConv1d(nn.Module):
    """Buffers: weight int8 [D, K], weight_scale fp32 [] (per tensor), bias fp32 [D], input_scale fp32 [D],
    output_scale fp32 [D] (per channel so that Mamba2's x, B and C keep their own scales). The decoding state
    is the last K int8 inputs [B, D, K]."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.register_buffer("weight", torch.zeros(channels, kernel_size, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(channels) if bias else None)
        self.register_buffer("input_scale", torch.ones(channels))
        self.register_buffer("output_scale", torch.ones(channels))

    def spec(self) -> dict:
        return {"channels": self.channels, "kernel_size": self.kernel_size, "bias": self.bias is not None}

    @classmethod
    def from_float(cls, conv: nn.Module, input_scale: torch.Tensor, output_scale: torch.Tensor) -> "QCausalConv1d":
        w = conv.weight.detach().float().squeeze(1)  # [D, K]
        m = cls(w.shape[0], w.shape[1], conv.bias is not None)
        scale = w.abs().amax().clamp_min(1e-8) / 127
        m.weight.copy_(quantize_ref(w, scale))
        m.weight_scale.fill_(float(scale))
        if conv.bias is not None:
            m.bias.copy_(conv.bias.detach().float())
        m.input_scale.copy_(input_scale.expand(m.channels))
        m.output_scale.copy_(output_scale.expand(m.channels))
        return m

    def empty_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.channels, self.kernel_size, dtype=torch.int8, device=device)

    def forward(self, x_q: torch.Tensor, state: torch.Tensor | None = None):
        """x_q: [B, D, L] int8 (may be a strided view) -> y_q [B, D, L] int8; with ``state`` [B, D, K] int8
        returns (y_q, new_state). See ``quamba.ops.conv1d.qcausal_conv1d_ref`` for the arithmetic."""
        return qcausal_conv1d(x_q, self.weight, self.weight_scale, self.input_scale, self.output_scale, self.bias,
                              state, return_final_state=state is not None)

    def step(self, x_q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """x_q: [B, D] int8 -> y_q [B, D] int8; ``state`` [B, D, K] int8 updated in place."""
        return qcausal_conv1d_update(x_q, state, self.weight, self.weight_scale, self.input_scale,
                                     self.output_scale, self.bias)

    def step_after(self, state: torch.Tensor, offset: int) -> ConvStep:
        """``step`` as a projection's ``conv=`` argument: this conv's input is channels [offset, offset + D) of the
        projection's int8 output, and on the GPU's GEMV path the projection's kernel runs the step."""
        return ConvStep(state, self.weight, self.weight_scale, self.input_scale, self.output_scale, self.bias, offset)
