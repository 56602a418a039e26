"""Depthwise causal conv1d (+ optional SiLU): full-sequence prefill and one-token update.

The conv state is the last ``K`` inputs of each channel (mamba-ssm's convention), oldest first,
so a step is "shift left, append x, dot with the kernel".
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .quant import quantize_ref
from .triton import use_triton


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unsupported conv activation {activation!r}: use 'silu' or None")


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
):
    """Causal depthwise convolution over the sequence.

    x: [B, D, L] any float dtype; weight: [D, K]; bias: [D] or None;
    initial_state: [B, D, K] (the previous K inputs) or None for zeros.
    Returns y: [B, D, L] in x's dtype (computed in fp32), and with ``return_final_state``
    also the new state [B, D, K] (the last K inputs, in x's dtype).
    """
    batch, dim, seqlen = x.shape
    k = weight.shape[-1]
    xf = x.float()
    if initial_state is None:
        history = xf.new_zeros(batch, dim, k - 1)
    else:
        history = initial_state[..., 1:].float()
    padded = torch.cat([history, xf], dim=-1)  # [B, D, K-1+L]
    y = F.conv1d(padded, weight.float().unsqueeze(1), bias.float() if bias is not None else None, groups=dim)
    y = _activate(y, activation).to(x.dtype)
    if not return_final_state:
        return y
    full = torch.cat([xf.new_zeros(batch, dim, 1), padded], dim=-1) if initial_state is None else torch.cat(
        [initial_state[..., :1].float(), padded], dim=-1
    )
    return y, full[..., -k:].to(x.dtype)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One decoding step. x: [B, D]; conv_state: [B, D, K], updated in place.

    Returns y: [B, D] in x's dtype.
    """
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return _activate(y, activation).to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
):
    """``causal_conv1d_ref``'s contract (shapes, dtypes, state convention); the Triton kernel on CUDA
    (see ``quamba.ops.triton.use_triton`` for the switches), the reference elsewhere."""
    if use_triton(x, weight, bias, initial_state):
        from .triton.conv1d import _causal_conv1d_launch

        return _causal_conv1d_launch(x, weight, bias, initial_state, activation, return_final_state)
    return causal_conv1d_ref(x, weight, bias, initial_state, activation, return_final_state)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """``causal_conv1d_update_ref``'s contract (conv_state [B, D, K] updated in place); Triton on CUDA."""
    if use_triton(x, conv_state, weight, bias):
        from .triton.conv1d import _causal_conv1d_update_launch

        return _causal_conv1d_update_launch(x, conv_state, weight, bias, activation)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)


# ---------------------------------------------------------------------------------------------- int8 (W8A8)

def qcausal_conv1d_ref(
    x_q: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Quantized causal depthwise conv + SiLU: int8 in, exact integer accumulation, int8 out.

    x_q: [B, D, L] int8; weight_q: [D, K] int8; weight_scale: [] fp32 (per tensor); input_scale: [D] fp32;
    out_scale: [D] fp32; bias: [D] fp32 or None; initial_state: [B, D, K] int8 (the previous K inputs,
    oldest first) or None for zeros.
    y_q[b, d, t] = clamp(round_half_even(silu(acc * (weight_scale * input_scale[d]) + bias[d]) / out_scale[d]))
    with acc the exact integer sum over the K taps, each operation one fp32 rounding in that order.
    Returns y_q [B, D, L] int8, and with ``return_final_state`` also the new state [B, D, K] int8 (the last
    K inputs of state ++ x).
    """
    batch, dim, seqlen = x_q.shape
    k = weight_q.shape[-1]
    state_q = initial_state if initial_state is not None else x_q.new_zeros(batch, dim, k)
    padded = torch.cat([state_q[..., 1:], x_q], dim=-1)  # [B, D, K-1+L] int8
    w = weight_q.int()
    # exact integer sums, tap by tap (|acc| <= K * 2^14 fits int32; exact in fp32 too)
    acc = sum(padded[..., i:i + seqlen].int() * w[:, i, None] for i in range(k))
    y = acc.float() * (weight_scale.float() * input_scale.float())[:, None]
    if bias is not None:
        y = y + bias.float()[:, None]
    y_q = quantize_ref(F.silu(y), out_scale[:, None])
    if not return_final_state:
        return y_q
    full = torch.cat([state_q[..., :1], padded], dim=-1)
    return y_q, full[..., -k:].contiguous()


def qcausal_conv1d_update_ref(
    x_q: torch.Tensor,
    conv_state: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step of ``qcausal_conv1d_ref``: x_q [B, D] int8; conv_state [B, D, K] int8, updated in
    place (shift left, append x). Returns y_q [B, D] int8, equal to the prefill of the same token."""
    y_q, new_state = qcausal_conv1d_ref(x_q[..., None], weight_q, weight_scale, input_scale, out_scale, bias,
                                        conv_state, return_final_state=True)
    conv_state.copy_(new_state)
    return y_q[..., 0]


def qcausal_conv1d(
    x_q: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """``qcausal_conv1d_ref``'s contract; one Triton kernel on CUDA, whose y is laid out [B, L, D] in memory
    (returned as the [B, D, L] view) so that the projection and the scan read it without a copy."""
    if use_triton(x_q, weight_q, weight_scale, input_scale, out_scale, bias, initial_state):
        from .triton.conv1d import _qcausal_conv1d_launch

        return _qcausal_conv1d_launch(x_q, weight_q, weight_scale, input_scale, out_scale, bias, initial_state,
                                      return_final_state)
    return qcausal_conv1d_ref(x_q, weight_q, weight_scale, input_scale, out_scale, bias, initial_state,
                              return_final_state)


def qcausal_conv1d_update(
    x_q: torch.Tensor,
    conv_state: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor,
    out_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``qcausal_conv1d_update_ref``'s contract (conv_state [B, D, K] int8 updated in place); Triton on CUDA."""
    if use_triton(x_q, conv_state, weight_q, weight_scale, input_scale, out_scale, bias):
        from .triton.conv1d import _qcausal_conv1d_update_launch

        return _qcausal_conv1d_update_launch(x_q, conv_state, weight_q, weight_scale, input_scale, out_scale, bias)
    return qcausal_conv1d_update_ref(x_q, conv_state, weight_q, weight_scale, input_scale, out_scale, bias)


class ConvStep(NamedTuple):
    """The int8 conv's decoding step applied to channels [offset, offset + D) of a projection's int8 output
    (in_proj's x of Mamba1, xBC of Mamba2). The projections take it as ``conv=`` and, on the GPU's GEMV path,
    run it in their kernel's epilogue: the program that writes an output channel also steps that channel's conv,
    since a depthwise conv needs nothing else. Fields as ``qcausal_conv1d_update_ref`` takes them; state
    [B, D, K] int8 is updated in place."""

    state: torch.Tensor
    weight: torch.Tensor
    weight_scale: torch.Tensor
    input_scale: torch.Tensor
    out_scale: torch.Tensor
    bias: torch.Tensor | None
    offset: int

    @property
    def channels(self) -> int:
        return self.weight.shape[0]

    def run(self, y_q: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """u_q [B, D] int8 from the projection's output y_q [B, N] int8, unfused (the reference op, or the
        dispatcher with ``reference`` False)."""
        if y_q.dim() != 2 or y_q.dtype != torch.int8 or self.offset < 0 or self.offset + self.channels > y_q.shape[1]:
            from ..errors import QuambaError

            raise QuambaError(f"a conv step over channels [{self.offset}, {self.offset + self.channels}) needs the "
                              f"projection's int8 [B, N] output with N >= {self.offset + self.channels}, got "
                              f"{y_q.dtype} {list(y_q.shape)}")
        step = qcausal_conv1d_update_ref if reference else qcausal_conv1d_update
        return step(y_q[:, self.offset:self.offset + self.channels], self.state, self.weight, self.weight_scale,
                    self.input_scale, self.out_scale, self.bias)
