"""Mamba1's selective scan on int8 inputs: dequantize u, dt, B, C, z with their static scales, scan with an
fp32 state, emit float. For decoding, the state may be cached as int8 with a dynamic per-row scale.

The arithmetic is ``quamba.ops.selective_scan.qselective_scan_ref`` / ``qselective_state_update_ref``; on the GPU
one Triton kernel per call loads the int8 tensors and dequantizes in registers (an int8 state too)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..ops.selective_scan import (DtProj, dequantize_state_ref, qselective_scan, qselective_state_update,
                                  quantize_state_ref)
from .linear import W8A8Linear
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
        return dequantize_state_ref(self.q, self.scale)

    def store(self, h: torch.Tensor):
        self.q, self.scale = quantize_state_ref(h)


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

    def _scales(self) -> dict:
        return dict(u_scale=self.u_scale, delta_scale=self.dt_scale, B_scale=self.B_scale, C_scale=self.C_scale,
                    z_scale=self.z_scale)

    def empty_state(self, batch_size: int, device=None):
        shape = (batch_size, self.d_inner, self.d_state)
        return Int8State.zeros(shape, device) if self.state_int8 else torch.zeros(shape, device=device)

    def forward(self, u_q, dt_q, B_q, C_q, z_q, state=None):
        """u_q, dt_q, z_q [B, D, L] int8, B_q, C_q [B, N, L] int8 (strided views are fine) -> y [B, D, L] ``dtype``
        (on the GPU a view of [B, L, D] memory). With ``state`` (fp32 tensor or Int8State) continues from it and
        returns (y, new_state): a new fp32 tensor, or the same Int8State holding the new q and scale."""
        int8_state = isinstance(state, Int8State)
        out = qselective_scan(u_q, dt_q, self.A_log, B_q, C_q, D=self.D, z=z_q, delta_bias=self.dt_bias,
                              delta_softplus=True, initial_state=op_state(state), return_final_state=state is not None,
                              final_state_int8=int8_state, out_dtype=self.out_dtype, **self._scales())
        if state is None:
            return out
        y, h = out
        if int8_state:
            state.q, state.scale = h
            h = state
        return y, h

    def step(self, u_q, dt_q, B_q, C_q, z_q, state, dt_proj: nn.Module | None = None):
        """One token: u/dt/z [B, D] int8, B/C [B, N] int8; ``state`` (fp32 or Int8State) updated in place.
        Returns y [B, D] ``dtype``.

        With ``dt_proj`` (the mixer's dt projection), dt_q is dt_low [B, R] int8 and dt = dt_proj(dt_low): a
        W8A8Linear with an int8 output and no bias runs inside the scan's kernel (``DtProj``), any other module
        before it."""
        fused = _fusable_dt_proj(dt_proj)
        if dt_proj is not None and fused is None:
            dt_q = dt_proj(dt_q)
        return qselective_state_update(op_state(state), u_q, dt_q, self.A_log, B_q, C_q, D=self.D, z=z_q,
                                       dt_bias=self.dt_bias, dt_softplus=True, out_dtype=self.out_dtype,
                                       x_scale=self.u_scale, dt_scale=self.dt_scale, B_scale=self.B_scale,
                                       C_scale=self.C_scale, z_scale=self.z_scale, dt_proj=fused, prefetch_state=True)


def _fusable_dt_proj(dt_proj: nn.Module | None) -> DtProj | None:
    """dt_proj as the fused update takes it, or None when it must run on its own (absent, a float or biased output,
    another kind of linear)."""
    if isinstance(dt_proj, W8A8Linear) and dt_proj.output == "int8" and dt_proj.bias is None:
        return DtProj(dt_proj.weight, dt_proj.input_scale, dt_proj.weight_scale, dt_proj.output_scale)
    return None


def op_state(state):
    """A module's state as the ops take it: an fp32 tensor, an int8 (q, scale) pair, or None."""
    return (state.q, state.scale) if isinstance(state, Int8State) else state
