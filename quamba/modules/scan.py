"""Mamba1's selective scan on int8 inputs: dequantize u, dt, B, C, z with their static scales, scan with an
fp32 state, emit float. For decoding, the state may be cached as int8 with a dynamic per-row scale."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..ops.quant import quantize_ref
from ..ops.selective_scan import selective_scan, selective_state_update
from .registry import dtype_name, parse_dtype, register


@dataclass
class Int8State:
    """An SSM state kept as int8 between decoding steps: q [B, D, N] int8, scale [B, D, 1] fp32 (abs-max of
    each row of N state values / 127, recomputed after every update, so no calibration is needed)."""

    q: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def zeros(cls, shape, device=None) -> "Int8State":
        return cls(torch.zeros(shape, dtype=torch.int8, device=device),
                   torch.ones(*shape[:-1], 1, device=device))

    def load(self) -> torch.Tensor:
        return self.q.float() * self.scale

    def store(self, h: torch.Tensor):
        self.scale = h.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
        self.q = quantize_ref(h, self.scale)


@register
class QSelectiveScan(nn.Module):
    """Buffers: A_log fp32 [D, N], D fp32 [D], dt_bias fp32 [D], and the static input scales u_scale, dt_scale,
    B_scale, C_scale, z_scale (fp32 []). forward(u_q, dt_q, B_q, C_q, z_q) with u/dt/z [B, D, L] int8 and
    B/C [B, N, L] int8 -> y [B, D, L] ``dtype``."""

    SCALES = ("u_scale", "dt_scale", "B_scale", "C_scale", "z_scale")

    def __init__(self, d_inner: int, d_state: int, dtype: str = "float16", state_int8: bool = False):
        super().__init__()
        self.d_inner, self.d_state, self.out_dtype, self.state_int8 = d_inner, d_state, parse_dtype(dtype), state_int8
        self.register_buffer("A_log", torch.zeros(d_inner, d_state))
        self.register_buffer("D", torch.zeros(d_inner))
        self.register_buffer("dt_bias", torch.zeros(d_inner))
        for name in self.SCALES:
            self.register_buffer(name, torch.ones(()))

    def spec(self) -> dict:
        return {"d_inner": self.d_inner, "d_state": self.d_state, "dtype": dtype_name(self.out_dtype),
                "state_int8": self.state_int8}

    def _inputs(self, u_q, dt_q, B_q, C_q, z_q):
        return (u_q.float() * self.u_scale, dt_q.float() * self.dt_scale, B_q.float() * self.B_scale,
                C_q.float() * self.C_scale, z_q.float() * self.z_scale)

    def empty_state(self, batch_size: int, device=None):
        shape = (batch_size, self.d_inner, self.d_state)
        return Int8State.zeros(shape, device) if self.state_int8 else torch.zeros(shape, device=device)

    def forward(self, u_q, dt_q, B_q, C_q, z_q, state=None):
        """With ``state`` (fp32 tensor or Int8State) continues from it and returns (y, new_state)."""
        u, dt, B, C, z = self._inputs(u_q, dt_q, B_q, C_q, z_q)
        A = -torch.exp(self.A_log)
        init = state.load() if isinstance(state, Int8State) else state
        out = selective_scan(u, dt, A, B, C, self.D, z, self.dt_bias, True, init, return_final_state=state is not None)
        if state is None:
            return out.to(self.out_dtype)
        y, h = out
        if isinstance(state, Int8State):
            state.store(h)
            h = state
        return y.to(self.out_dtype), h

    def step(self, u_q, dt_q, B_q, C_q, z_q, state):
        """One token: u/dt/z [B, D] int8, B/C [B, N] int8; ``state`` updated in place. Returns y [B, D]."""
        u, dt, B, C, z = self._inputs(u_q, dt_q, B_q, C_q, z_q)
        A = -torch.exp(self.A_log)
        h = state.load() if isinstance(state, Int8State) else state
        y = selective_state_update(h, u, dt, A, B, C, self.D, z, self.dt_bias, True)
        if isinstance(state, Int8State):
            state.store(h)
        return y.to(self.out_dtype)
