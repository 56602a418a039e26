"""W8A8Linear: int8 weights x static int8 activations, exact int32 accumulation, fused dequantisation."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.quant import quantize_ref, w8a8_gemm
from ..ops.w4_gemm import w4a8_gemm, w4a16_gemm
from .registry import parse_dtype, register


def _set_epilogue(m: nn.Module, input_scale, bias, output_scale) -> nn.Module:
    """The static scales and bias that an int8-input linear applies after its integer GEMM."""
    m.input_scale.fill_(float(input_scale))
    if bias is not None:
        m.bias.copy_(bias.detach().float())
    if m.output == "int8":
        m.output_scale.copy_(output_scale.expand(m.out_features) if output_scale.numel() == 1 else output_scale)
    return m


@register
class W8A8Linear(nn.Module):
    """y = dequant(x_q @ W_q^T) (+ bias), as ``dtype`` or requantized to int8 (``output="int8"``).

    Buffers: weight int8 [N, K]; weight_scale fp32 [N] (per channel) or [1] (per tensor); input_scale fp32 [];
    output_scale fp32 [N] when the output is int8 (one value per output channel, so that the segments of a
    fused projection — x and z of in_proj, dt/B/C of x_proj — each keep their own scale); bias fp32 [N].
    forward: x_q int8 [..., K] -> [..., N] int8 or ``dtype``.
    """

    def __init__(self, in_features: int, out_features: int, per_channel: bool = True, output: str = "float16",
                 bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.per_channel, self.output = in_features, out_features, per_channel, output
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features if per_channel else 1))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("output_scale", torch.ones(out_features) if output == "int8" else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "per_channel": self.per_channel,
                "output": self.output, "bias": self.bias is not None}

    @classmethod
    def from_float(cls, weight: torch.Tensor, input_scale: float, output: str = "float16", per_channel: bool = True,
                   bias: torch.Tensor | None = None, output_scale: torch.Tensor | None = None,
                   quantized: tuple[torch.Tensor, torch.Tensor] | None = None) -> "W8A8Linear":
        """Round-to-nearest int8 weights (or ``quantized`` = (q, scale) from GPTQ), static input scale."""
        n, k = weight.shape
        m = cls(k, n, per_channel=per_channel, output=output, bias=bias is not None)
        if quantized is None:
            w = weight.detach().float()
            absmax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
            scale = absmax.clamp_min(1e-8) / 127
            quantized = (quantize_ref(w, scale[:, None] if per_channel else scale), scale)
        m.weight.copy_(quantized[0])
        m.weight_scale.copy_(quantized[1].reshape(m.weight_scale.shape))
        return _set_epilogue(m, input_scale, bias, output_scale)

    def forward(self, x_q: torch.Tensor, conv=None):
        """x_q [..., K] int8 -> y; with ``conv`` (a ``ConvStep``, int8 output, x_q [B, K]) -> (y, the conv step's
        u_q), in one kernel where the GEMV runs (decoding on the GPU)."""
        if x_q.dtype != torch.int8:
            raise TypeError(f"W8A8Linear takes int8 input, got {x_q.dtype}")
        b = self._buffers  # (nn.Module's attribute fallback costs about a microsecond a buffer, at every call)
        requant = self.output == "int8"
        return w8a8_gemm(x_q, b["input_scale"], b["weight"], b["weight_scale"], b["bias"],
                         b["output_scale"] if requant else None,
                         torch.float16 if requant else parse_dtype(self.output), conv=conv)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, per_channel={self.per_channel}, "
                f"output={self.output}, bias={self.bias is not None}")



def _w4_weights(weight: torch.Tensor, fmt: str, group_size: int, quantized):
    from ..quantization.weight_formats import quantize_weight, resolve_group_size

    g = resolve_group_size(weight.shape[1], group_size)
    return g, (quantized if quantized is not None else quantize_weight(weight.detach().float(), fmt, g))


@register
class W4A16Linear(nn.Module):
    """Packed int4 weights with fp16 group scales, float activations: a drop-in for nn.Linear.

    Buffers: weight uint8 [N, K // 2] (two int4 per byte), scales fp16 [N, K // group_size], bias fp32 [N].
    forward: x [..., K] float -> [..., N] in x's dtype.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "group_size": self.group_size,
                "bias": self.bias is not None}

    @classmethod
    def from_float(cls, weight, bias=None, group_size: int = 128, quantized=None) -> "W4A16Linear":
        """quantized: (q int8 [N, K], scales fp16 [N, K // G]) from GPTQ, else round-to-nearest."""
        from ..quantization.weight_formats import pack_int4

        g, (q, scales) = _w4_weights(weight, "int4", group_size, quantized)
        m = cls(weight.shape[1], weight.shape[0], g, bias is not None)
        m.weight.copy_(pack_int4(q))
        m.scales.copy_(scales)
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w4a16_gemm(x, self.weight, self.scales, self.group_size, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}"


@register
class W4A8Linear(nn.Module):
    """Packed int4 weights with a two-level scale (int8 group scale x fp32 channel scale) so that the GEMM runs on
    int8 units, static per-tensor int8 activations; int8 or float output as W8A8Linear.

    Buffers: weight uint8 [N, K // 2], group_scales int8 [N, K // G], channel_scales fp32 [N], input_scale fp32 [],
    output_scale fp32 [N] (int8 output), bias fp32 [N]. forward: x_q int8 [..., K] -> [..., N].
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, output: str = "float16",
                 bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.group_size, self.output = in_features, out_features, group_size, output
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("group_scales", torch.ones(out_features, in_features // group_size, dtype=torch.int8))
        self.register_buffer("channel_scales", torch.ones(out_features))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("output_scale", torch.ones(out_features) if output == "int8" else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "group_size": self.group_size,
                "output": self.output, "bias": self.bias is not None}

    @classmethod
    def from_float(cls, weight, input_scale, output: str = "float16", bias=None, output_scale=None,
                   group_size: int = 128, quantized=None) -> "W4A8Linear":
        """quantized: (q, group_scales, channel_scales) from GPTQ, else round-to-nearest."""
        from ..quantization.weight_formats import pack_int4

        g, (q, gs, cs) = _w4_weights(weight, "w4a8", group_size, quantized)
        n = weight.shape[0]
        m = cls(weight.shape[1], n, g, output, bias is not None)
        m.weight.copy_(pack_int4(q))
        m.group_scales.copy_(gs)
        m.channel_scales.copy_(cs)
        return _set_epilogue(m, input_scale, bias, output_scale)

    def forward(self, x_q: torch.Tensor, conv=None):
        """x_q [..., K] int8 -> y; ``conv`` as in ``W8A8Linear.forward``."""
        if x_q.dtype != torch.int8:
            raise TypeError(f"W4A8Linear takes int8 input, got {x_q.dtype}")
        b = self._buffers  # as in W8A8Linear.forward
        if self.output == "int8":  # quantize_ref of the fp32 result, fused into the kernel's epilogue on CUDA
            return w4a8_gemm(x_q, b["input_scale"], b["weight"], b["group_scales"], b["channel_scales"],
                             self.group_size, b["bias"], torch.float32, out_scale=b["output_scale"], conv=conv)
        return w4a8_gemm(x_q, b["input_scale"], b["weight"], b["group_scales"], b["channel_scales"],
                         self.group_size, b["bias"], parse_dtype(self.output), conv=conv)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, output={self.output}"
