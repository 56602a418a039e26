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
A decoding step runs the same graph in fewer kernels on the GPU: in_proj steps the conv on its x channels in its
epilogue (``ConvStep``) and the scan computes dt_proj itself (``DtProj``), with the same integers
(QUAMBA_FUSED_DECODE=0: one kernel each).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.triton import fused_decode
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
        conv_state, dt_proj = cache.conv_states[self.layer_idx], None
        if fused_decode():  # in_proj steps the conv on its x channels, the scan runs dt_proj: two kernels fewer
            xz, u_q = self.in_proj(h_q[:, 0], conv=self.conv1d.step_after(conv_state, 0))
            dt_proj = self.dt_proj
        else:
            xz = self.in_proj(h_q[:, 0])  # [B, 2D]: x | z
            u_q = self.conv1d.step(xz[:, :self.d_inner], conv_state)
        dt_low, B_q, C_q = self.x_proj(u_q).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt_low if dt_proj is not None else self.dt_proj(dt_low)
        z_q, ssm_state = xz[:, self.d_inner:], cache.ssm_states[self.layer_idx]
        y = self.scan.step(u_q, dt, B_q, C_q, z_q, ssm_state, dt_proj=dt_proj)
        return self.out_proj(self.had(y)).unsqueeze(1)
