"""Round-to-nearest weight quantizers, int4 packing and the matching dequantizers (reference, plain PyTorch).

All integers are symmetric, rounding is torch.round (half to even), and the scale of a set of values is
absmax / qmax so that nothing clips (int8: qmax 127, int4: qmax 7; -128 / -8 are representable but only
reached by rounding fuzz). An all-zero row or group would give scale 0; it gets the scale of absmax 1
instead (any positive scale stores zeros exactly, and dequantization never divides by zero).

Formats (weights are nn.Linear's [N, K] = [out_features, in_features]):
- int8 per channel (or per tensor): q int8 [N, K], scale fp32 [N] (or [1]).
- int4 per group (W4A16): q int8 [N, K] in [-8, 7], scales fp16 [N, K // G].
- W4A8 two-level: q int8 [N, K] in [-8, 7], group_scales int8 [N, K // G] in [1, 16], channel_scales fp32 [N];
  q * group_scale is an int8 value in [-128, 112], so the GEMM can run on int8 units.
- rows (embedding / lm_head): q int8 [V, D], scales fp16 [V], int8 or int4 values.
"""
from __future__ import annotations

from enum import Enum

import torch

from quamba.errors import QuambaError

INT8_QMAX = 127
INT4_QMAX = 7
# W4A8: the channel scale maps the row's absmax to 7 * 16 = 112, so a group integer scale in [1, 16]
# times an int4 value in [-8, 7] stays inside int8.
W4A8_GROUP_SCALE_MAX = 16
W4A8_CHANNEL_QMAX = INT4_QMAX * W4A8_GROUP_SCALE_MAX
_FP16_SMALLEST = 2.0 ** -24  # smallest positive fp16 (subnormal): keeps an fp16 scale from rounding to 0


class WeightFormat(str, Enum):
    """The weight formats; a plain string ("int8", "int4", "w4a8") is accepted wherever this is."""

    INT8 = "int8"  # per output channel, fp32 scale
    INT4 = "int4"  # per group, fp16 scales (W4A16)
    W4A8 = "w4a8"  # per group int8 scale x per channel fp32 scale


def as_weight_format(fmt: str | WeightFormat) -> WeightFormat:
    """Validate a format name; QuambaError lists the valid ones."""
    try:
        return WeightFormat(fmt)
    except ValueError:
        valid = ", ".join(repr(f.value) for f in WeightFormat)
        raise QuambaError(f"unknown weight format {fmt!r}: use one of {valid}") from None


# ---------------------------------------------------------------------------------------------- checks

def _check_matrix(w: torch.Tensor, name: str = "weight") -> None:
    if w.dim() != 2 or not w.is_floating_point():
        raise QuambaError(f"{name} must be a 2-D floating tensor [N, K], got {w.dim()}-D {w.dtype}")


def resolve_group_size(k: int, group_size: int) -> int:
    """The effective group size for K input features: -1 means one group per row (K).

    Raises QuambaError if group_size is not positive (or -1) or does not divide K.
    """
    if group_size == -1:
        return k
    if not isinstance(group_size, int) or group_size <= 0:
        raise QuambaError(f"group_size must be a positive integer or -1 (one group per row), got {group_size!r}")
    if k % group_size != 0:
        raise QuambaError(
            f"K={k} input features is not a multiple of group_size={group_size}: "
            "choose a group size that divides K (or -1 for one group per row)"
        )
    return group_size


def _group_absmax(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """absmax of each group of consecutive columns: w [N, K] -> [N, K // group_size] fp32."""
    n, k = w.shape
    return w.float().abs().reshape(n, k // group_size, group_size).amax(dim=-1)


def _expand_groups(s: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K // G] -> [N, K] by repeating each group's value over its G columns."""
    return s.repeat_interleave(group_size, dim=-1)


# ---------------------------------------------------------------------------------------------- scales

def scale_from_absmax(absmax: torch.Tensor, qmax: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """absmax / qmax stored in ``dtype`` (absmax 0 is treated as 1; the stored scale is never 0)."""
    absmax = torch.where(absmax > 0, absmax.float(), torch.ones_like(absmax, dtype=torch.float32))
    scale = (absmax / qmax).to(dtype)
    if dtype == torch.float16:
        scale = scale.clamp_min(_FP16_SMALLEST)
    return scale


def w4a8_group_scale_from_absmax(absmax_w8: torch.Tensor) -> torch.Tensor:
    """The W4A8 integer group scale: clamp(ceil(absmax(w / channel_scale) / 7), 1, 16) as int8."""
    return torch.ceil(absmax_w8.float() / INT4_QMAX).clamp(1, W4A8_GROUP_SCALE_MAX).to(torch.int8)


def _round_clamp(v: torch.Tensor, qmax: int) -> torch.Tensor:
    """round(v) clamped to [-qmax - 1, qmax], as int8."""
    return torch.round(v).clamp(-qmax - 1, qmax).to(torch.int8)


# ---------------------------------------------------------------------------------------------- int8

def quantize_int8(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: w [N, K] float -> (q int8 [N, K], scale fp32 [N] per channel or [1] per tensor).

    scale = absmax / 127 (of the row, or of the whole tensor); q = clamp(round(w / scale), -128, 127).
    """
    _check_matrix(w)
    absmax = w.float().abs().amax(dim=1) if per_channel else w.float().abs().amax().reshape(1)
    scale = scale_from_absmax(absmax, INT8_QMAX)
    q = _round_clamp(w.float() / scale[:, None], INT8_QMAX)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K], scale [N] or [1] -> fp32 [N, K]."""
    return q.float() * scale.float()[:, None]


# ---------------------------------------------------------------------------------------------- int4 (W4A16)

def quantize_int4_groupwise(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of ``group_size`` consecutive input features (-1: one group per row).

    w [N, K] float -> (q int8 [N, K] in [-8, 7], scales fp16 [N, K // G]); scale = absmax_group / 7, rounded
    to fp16 first, and q is computed with that stored scale so dequantization is consistent with it.
    """
    _check_matrix(w)
    g = resolve_group_size(w.shape[1], group_size)
    scales = scale_from_absmax(_group_absmax(w, g), INT4_QMAX, torch.float16)
    q = _round_clamp(w.float() / _expand_groups(scales.float(), g), INT4_QMAX)
    return q, scales


def dequantize_int4_groupwise(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K], scales [N, K // G] -> fp32 [N, K] (the group size is K // scales.shape[1])."""
    g = _group_size_from_shapes(q, scales)
    return q.float() * _expand_groups(scales.float(), g)


def _group_size_from_shapes(q: torch.Tensor, scales: torch.Tensor) -> int:
    n, k = q.shape
    if scales.dim() != 2 or scales.shape[0] != n or scales.shape[1] == 0 or k % scales.shape[1] != 0:
        raise QuambaError(f"scales of shape {tuple(scales.shape)} do not fit weights of shape {(n, k)}")
    return k // scales.shape[1]


# ---------------------------------------------------------------------------------------------- W4A8

def quantize_w4a8(
    w: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-level W4A8: w [N, K] float -> (q int8 [N, K] in [-8, 7], group_scales int8 [N, K // G] in [1, 16],
    channel_scales fp32 [N]).

    channel_scales = absmax_row / 112; w8 = w / channel_scales (|w8| <= 112);
    group_scales = clamp(ceil(absmax_group(w8) / 7), 1, 16); q = clamp(round(w8 / group_scales), -8, 7).
    Then w ~= q * group_scales * channel_scales, and q * group_scales lies in [-128, 112].
    """
    _check_matrix(w)
    g = resolve_group_size(w.shape[1], group_size)
    channel_scales = scale_from_absmax(w.float().abs().amax(dim=1), W4A8_CHANNEL_QMAX)
    w8 = w.float() / channel_scales[:, None]
    group_scales = w4a8_group_scale_from_absmax(_group_absmax(w8, g))
    q = _round_clamp(w8 / _expand_groups(group_scales.float(), g), INT4_QMAX)
    return q, group_scales, channel_scales


def w4a8_int8_weight(q: torch.Tensor, group_scales: torch.Tensor) -> torch.Tensor:
    """The int8 operand of the W4A8 GEMM: q * group_scale, int8 [N, K] in [-128, 112]."""
    g = _group_size_from_shapes(q, group_scales)
    return (q.to(torch.int16) * _expand_groups(group_scales.to(torch.int16), g)).to(torch.int8)


def dequantize_w4a8(q: torch.Tensor, group_scales: torch.Tensor, channel_scales: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K], group_scales int8 [N, K // G], channel_scales [N] -> fp32 [N, K]."""
    return w4a8_int8_weight(q, group_scales).float() * channel_scales.float()[:, None]


# ---------------------------------------------------------------------------------------------- rows

def quantize_rows(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization for embeddings / lm_head: w [V, D] -> (q int8 [V, D], scales fp16 [V]).

    bits 8: q in [-128, 127], scale = absmax_row / 127; bits 4: q in [-8, 7], scale = absmax_row / 7.
    The absolute max is used (not the signed max), so strongly negative rows are not clipped.
    """
    _check_matrix(w, "rows")
    if bits not in (8, 4):
        raise QuambaError(f"quantize_rows supports bits 8 or 4, got {bits!r}")
    qmax = INT8_QMAX if bits == 8 else INT4_QMAX
    scales = scale_from_absmax(w.float().abs().amax(dim=1), qmax, torch.float16)
    q = _round_clamp(w.float() / scales.float()[:, None], qmax)
    return q, scales


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q int8 [V, D], scales [V] -> fp32 [V, D]."""
    return q.float() * scales.float()[:, None]


# ---------------------------------------------------------------------------------------------- packing

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values per byte: q int8 [..., K] in [-8, 7] (K even) -> uint8 [..., K // 2].

    Element 2j goes to the low nibble and element 2j+1 to the high nibble, each as a 4-bit two's complement.
    """
    if q.dtype != torch.int8:
        raise QuambaError(f"pack_int4 takes int8 values in [-8, 7], got {q.dtype}")
    if q.dim() == 0 or q.shape[-1] % 2 != 0:
        raise QuambaError(f"pack_int4 needs an even last dim, got shape {tuple(q.shape)}: pad K to an even size")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise QuambaError(f"pack_int4 values must lie in [-8, 7], got [{q.min().item()}, {q.max().item()}]")
    nibbles = q.to(torch.int16) & 0xF
    low, high = nibbles[..., 0::2], nibbles[..., 1::2]
    return (low | (high << 4)).to(torch.uint8)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: uint8 [..., K // 2] -> int8 [..., K] in [-8, 7]."""
    if p.dtype != torch.uint8:
        raise QuambaError(f"unpack_int4 takes packed uint8, got {p.dtype}")
    b = p.to(torch.int16)
    nibbles = torch.stack((b & 0xF, b >> 4), dim=-1)  # [..., K // 2, 2]: low nibble first
    signed = (nibbles ^ 8) - 8  # 4-bit two's complement sign extension
    return signed.reshape(*p.shape[:-1], p.shape[-1] * 2).to(torch.int8)


# ---------------------------------------------------------------------------------------------- by name

def quantize_weight(w: torch.Tensor, fmt: str | WeightFormat, group_size: int = 128) -> tuple[torch.Tensor, ...]:
    """Round-to-nearest in format ``fmt``; returns the tuple of the format's quantizer
    (int8: quantize_int8 per channel; int4: quantize_int4_groupwise; w4a8: quantize_w4a8)."""
    fmt = as_weight_format(fmt)
    if fmt is WeightFormat.INT8:
        return quantize_int8(w, per_channel=True)
    if fmt is WeightFormat.INT4:
        return quantize_int4_groupwise(w, group_size)
    return quantize_w4a8(w, group_size)


def dequantize_weight(fmt: str | WeightFormat, quantized: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """fp32 [N, K] from the tuple that quantize_weight / gptq_quantize returned for ``fmt``."""
    fmt = as_weight_format(fmt)
    if fmt is WeightFormat.INT8:
        return dequantize_int8(*quantized)
    if fmt is WeightFormat.INT4:
        return dequantize_int4_groupwise(*quantized)
    return dequantize_w4a8(*quantized)
