"""Quantized RMSNorm: normalises the residual stream and emits int8 for the int8 projection that follows.
(Where the consumer is not quantized — the final norm before an fp16 lm_head — the plain RMSNorm stays.)"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.rmsnorm import add_rms_norm_quant, qgated_rms_norm, rms_norm_quant
from .registry import dtype_name, parse_dtype, register


@register
class QRMSNorm(nn.Module):
    """x [..., D] float -> int8 [..., D] = quantize(rms_norm(x) * weight, output_scale).

    Buffers: weight [D] (``dtype``), output_scale fp32 [] (static, from calibration).
    """

    def __init__(self, dim: int, eps: float = 1e-5, dtype: str = "float16"):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.register_buffer("weight", torch.ones(dim, dtype=parse_dtype(dtype)))
        self.register_buffer("output_scale", torch.ones(()))

    def spec(self) -> dict:
        return {"dim": self.dim, "eps": self.eps, "dtype": dtype_name(self.weight.dtype)}

    @classmethod
    def from_float(cls, norm: nn.Module, output_scale: float, dtype: torch.dtype) -> "QRMSNorm":
        m = cls(norm.weight.shape[0], norm.eps, dtype_name(dtype))
        m.weight.copy_(norm.weight.detach().to(dtype))
        m.output_scale.fill_(float(output_scale.detach() if torch.is_tensor(output_scale) else output_scale))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] float -> int8 [..., D] (one kernel on CUDA: ``quamba.ops.rmsnorm.rms_norm_quant``)."""
        return rms_norm_quant(x, self.weight, self.eps, self.output_scale)

    def add_forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool = True):
        """The block prologue fused with this norm: residual = hidden (+ residual), fp32 when
        ``residual_in_fp32``; returns (int8 [..., D] of the normed residual, residual). One kernel on CUDA
        (``quamba.ops.rmsnorm.add_rms_norm_quant``)."""
        return add_rms_norm_quant(hidden, residual, self.weight, self.eps, self.output_scale, residual_in_fp32)


@register
class QGatedRMSNorm(nn.Module):
    """Gated RMSNorm whose gate z arrives as int8: y [..., D] float, z_q [..., D] int8 -> float [..., D].
    Buffers: weight [D] (``dtype``), z_scale fp32 []."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 dtype: str = "float16"):
        super().__init__()
        self.dim, self.group_size, self.eps, self.norm_before_gate = dim, group_size, eps, norm_before_gate
        self.register_buffer("weight", torch.ones(dim, dtype=parse_dtype(dtype)))
        self.register_buffer("z_scale", torch.ones(()))

    def spec(self) -> dict:
        return {"dim": self.dim, "group_size": self.group_size, "eps": self.eps,
                "norm_before_gate": self.norm_before_gate, "dtype": dtype_name(self.weight.dtype)}

    def forward(self, y: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """y [..., D] float, z_q [..., D] int8 (may be a strided slice of in_proj's output) -> weight's dtype.
        One kernel on CUDA (``quamba.ops.rmsnorm.qgated_rms_norm``)."""
        return qgated_rms_norm(y, z_q, self.z_scale, self.weight, self.eps, self.group_size, self.norm_before_gate)
