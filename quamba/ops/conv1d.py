"""Depthwise causal conv1d (+ optional SiLU): full-sequence prefill and one-token update.

The conv state is the last ``K`` inputs of each channel (mamba-ssm's convention), oldest first,
so a step is "shift left, append x, dot with the kernel".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    from .triton import use_triton

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
    from .triton import use_triton

    if use_triton(x, conv_state, weight, bias):
        from .triton.conv1d import _causal_conv1d_update_launch

        return _causal_conv1d_update_launch(x, conv_state, weight, bias, activation)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
