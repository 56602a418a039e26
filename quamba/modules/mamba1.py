"""The int8-activation Mamba1 mixer (Quamba1 W8A8, Quamba2 W4A8). It owns its forward: every tensor between its parts is int8
with a static scale, except the scan output (float) and the mixer output (float, into the residual stream).

    h_q [B, L, d_model] int8 (from QRMSNorm)
      -> in_proj (W8A8 or W4A8, int8 out: x | z)   x_q, z_q [B, L, D]
      -> conv1d (int8 -> int8, SiLU)                u_q [B, D, L]   (percentile-clipped scale)
      -> x_proj (W8A8, int8 out: dt_low | B | C)
      -> dt_proj (W8A8, int8 out, bias in the scan)  dt_q [B, L, D]
      -> scan (int8 inputs, fp32 state)              y [B, D, L] float
      -> had (Hadamard + int8)                       y_q [B, L, D]
      -> out_proj (W8A8 on H-rotated weight, float out) [B, L, d_model]
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register


@register
class A8Mamba1Mixer(nn.Module):
    CHILDREN = ("in_proj", "conv1d", "x_proj", "dt_proj", "scan", "had", "out_proj")

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, layer_idx: int):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.layer_idx = d_inner, d_state, dt_rank, layer_idx

    def spec(self) -> dict:
        return {"d_inner": self.d_inner, "d_state": self.d_state, "dt_rank": self.dt_rank, "layer_idx": self.layer_idx}

    def allocate_state(self, batch_size: int):
        device = self.in_proj.weight.device
        return self.conv1d.empty_state(batch_size, device), self.scan.empty_state(batch_size, device)

    def forward(self, h_q: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None and h_q.shape[1] == 1:
            return self.step(h_q, cache)
        x_q, z_q = self.in_proj(h_q).transpose(1, 2).chunk(2, dim=1)  # [B, D, L] each
        if cache is None:
            u_q = self.conv1d(x_q)
        else:
            u_q, cache.conv_states[self.layer_idx] = self.conv1d(x_q, cache.conv_states[self.layer_idx])
        dt_low, B_q, C_q = self.x_proj(u_q.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_q = self.dt_proj(dt_low).transpose(1, 2)
        args = (u_q, dt_q, B_q.transpose(1, 2), C_q.transpose(1, 2), z_q)
        if cache is None:
            y = self.scan(*args)
        else:
            y, cache.ssm_states[self.layer_idx] = self.scan(*args, state=cache.ssm_states[self.layer_idx])
        return self.out_proj(self.had(y.transpose(1, 2)))

    def step(self, h_q: torch.Tensor, cache) -> torch.Tensor:
        x_q, z_q = self.in_proj(h_q[:, 0]).chunk(2, dim=-1)  # [B, D]
        u_q = self.conv1d.step(x_q, cache.conv_states[self.layer_idx])
        dt_low, B_q, C_q = self.x_proj(u_q).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = self.scan.step(u_q, self.dt_proj(dt_low), B_q, C_q, z_q, cache.ssm_states[self.layer_idx])
        return self.out_proj(self.had(y)).unsqueeze(1)
