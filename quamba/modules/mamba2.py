"""The int8-activation Mamba2 mixer (Quamba2 W8A8 / W4A8) and its parts. It owns its forward:

    h_q [B, L, d_model] int8 (from QRMSNorm)
      -> in_proj (W8A8 or W4A8, int8 out: z | x | B | C | dt, per-channel output scales)
      -> conv1d over x|B|C (int8 -> int8, SiLU; x scales per head-group/channel-group, B and C per SSM group)
      -> scan (QSSDScan: int8 x, dt, B, C; fp32 state; float out)   y [B, L, H, P]
      -> norm (QGatedRMSNorm: y, int8 z -> float)
      -> had (Hadamard + int8) -> out_proj (W8A8/W4A8 on H-rotated weight, float out)
norm and had run as one kernel where the norm groups allow (``quamba.ops.hadamard.qgated_norm_hadamard_quant``);
they stay two modules, so checkpoints keep their layout. A decoding step's in_proj also steps the conv
on its xBC channels in its epilogue (``quamba.ops.conv1d.ConvStep``; QUAMBA_FUSED_DECODE=0: its own kernel).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..ops.hadamard import qgated_norm_hadamard_quant
from ..ops.ssd import qssd_chunked, qssd_state_update
from ..ops.triton import fused_decode
from .hadamard import QHadamard
from .norm import QGatedRMSNorm
from .registry import dtype_name, parse_dtype, register
from .scan import Int8State, op_state


@register
class QSSDScan(nn.Module):
    """Mamba2's SSD scan on int8 inputs (``quamba.ops.ssd.qssd_chunked_ref`` / ``qssd_state_update_ref``; on the
    GPU the Triton kernels load the int8 tensors and dequantize in registers).
    Buffers: A_log, dt_bias fp32 [H], D fp32 [H] or [H, P]; static scales x_scale fp32 [H * P] (one per channel:
    head grouping gives channels of a group one value), dt_scale fp32 [H], B_scale and C_scale fp32 [G] (one per SSM
    group). forward(x_q [B, L, H, P], dt_q [B, L, H], B_q, C_q [B, L, G, N]) -> y [B, L, H, P] ``dtype``."""

    SCALES = ("x_scale", "dt_scale", "B_scale", "C_scale")

    def __init__(self, nheads: int, headdim: int, ngroups: int, d_state: int, chunk_size: int,
                 D_has_hdim: bool = False, dt_limit: tuple = (0.0, None), dtype: str = "float16",
                 state_int8: bool = False):
        super().__init__()
        self.nheads, self.headdim, self.ngroups, self.d_state = nheads, headdim, ngroups, d_state
        self.chunk_size, self.D_has_hdim, self.state_int8 = chunk_size, D_has_hdim, state_int8
        self.dt_limit = (float(dt_limit[0]), math.inf if dt_limit[1] is None else float(dt_limit[1]))
        self.out_dtype = parse_dtype(dtype)
        self.register_buffer("A_log", torch.zeros(nheads))
        self.register_buffer("dt_bias", torch.zeros(nheads))
        self.register_buffer("D", torch.zeros((nheads, headdim) if D_has_hdim else (nheads,)))
        self.register_buffer("x_scale", torch.ones(nheads * headdim))
        self.register_buffer("dt_scale", torch.ones(nheads))
        self.register_buffer("B_scale", torch.ones(ngroups))
        self.register_buffer("C_scale", torch.ones(ngroups))

    def spec(self) -> dict:
        hi = self.dt_limit[1]
        return {"nheads": self.nheads, "headdim": self.headdim, "ngroups": self.ngroups, "d_state": self.d_state,
                "chunk_size": self.chunk_size, "D_has_hdim": self.D_has_hdim,
                "dt_limit": [self.dt_limit[0], None if math.isinf(hi) else hi], "dtype": dtype_name(self.out_dtype),
                "state_int8": self.state_int8}

    def _args(self) -> dict:
        return dict(x_scale=self.x_scale, dt_scale=self.dt_scale, B_scale=self.B_scale, C_scale=self.C_scale,
                    D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
                    out_dtype=self.out_dtype)

    def empty_state(self, batch_size: int, device=None):
        shape = (batch_size, self.nheads, self.headdim, self.d_state)
        return Int8State.zeros(shape, device) if self.state_int8 else torch.zeros(shape, device=device)

    def forward(self, x_q, dt_q, B_q, C_q, state=None):
        """x_q [B, L, H, P], dt_q [B, L, H], B_q/C_q [B, L, G, N] int8 (strided views are fine) -> y [B, L, H, P]
        ``dtype``. With ``state`` (fp32 tensor or Int8State) continues from it and returns (y, new_state): a new
        fp32 tensor, or the same Int8State holding the new q and scale."""
        int8_state = isinstance(state, Int8State)
        out = qssd_chunked(x_q, dt_q, self.A_log, B_q, C_q, self.chunk_size, initial_state=op_state(state),
                           return_final_state=state is not None, final_state_int8=int8_state, **self._args())
        if state is None:
            return out
        y, h = out
        if int8_state:
            state.q, state.scale = h
            h = state
        return y, h

    def step(self, x_q, dt_q, B_q, C_q, state):
        """x_q [B, H, P], dt_q [B, H], B_q/C_q [B, G, N] int8; ``state`` (fp32 or Int8State) updated in place;
        returns y [B, H, P] ``dtype``. The kernel before this one in a decode step (in_proj, or the conv) writes no
        state, so the state is read while it runs (``prefetch_state``)."""
        return qssd_state_update(op_state(state), x_q, dt_q, self.A_log, B_q, C_q, **self._args(), prefetch_state=True)


@register
class A8Mamba2Mixer(nn.Module):
    CHILDREN = ("in_proj", "conv1d", "scan", "norm", "had", "out_proj")

    def __init__(self, d_inner: int, nheads: int, headdim: int, ngroups: int, d_state: int, layer_idx: int):
        super().__init__()
        self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state = d_inner, nheads, headdim, ngroups, d_state
        self.layer_idx = layer_idx

    def spec(self) -> dict:
        return {"d_inner": self.d_inner, "nheads": self.nheads, "headdim": self.headdim, "ngroups": self.ngroups,
                "d_state": self.d_state, "layer_idx": self.layer_idx}

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    def allocate_state(self, batch_size: int):
        device = self.in_proj.weight.device
        return self.conv1d.empty_state(batch_size, device), self.scan.empty_state(batch_size, device)

    def _split_xbc(self, xBC):
        gn = self.ngroups * self.d_state
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def forward(self, h_q: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None and h_q.shape[1] == 1:
            return self.step(h_q, cache)
        batch, seqlen, _ = h_q.shape
        z_q, xBC_q, dt_q = self.in_proj(h_q).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if cache is None:
            xBC_q = self.conv1d(xBC_q.transpose(1, 2))
        else:
            xBC_q, cache.conv_states[self.layer_idx] = self.conv1d(xBC_q.transpose(1, 2), cache.conv_states[self.layer_idx])
        x_q, B_q, C_q = self._split_xbc(xBC_q.transpose(1, 2))
        if cache is None:
            y = self.scan(x_q, dt_q, B_q, C_q)
        else:
            y, cache.ssm_states[self.layer_idx] = self.scan(x_q, dt_q, B_q, C_q, state=cache.ssm_states[self.layer_idx])
        return self.out_proj(self._norm_had(y.reshape(batch, seqlen, self.d_inner), z_q))

    def step(self, h_q: torch.Tensor, cache) -> torch.Tensor:
        conv_state, d = cache.conv_states[self.layer_idx], self.d_inner
        if fused_decode():  # in_proj steps the conv on its xBC channels: one kernel fewer
            zxbcdt, xBC_q = self.in_proj(h_q[:, 0], conv=self.conv1d.step_after(conv_state, d))
        else:
            zxbcdt = self.in_proj(h_q[:, 0])  # [B, D + conv_dim + H]: z | xBC | dt
            xBC_q = self.conv1d.step(zxbcdt[:, d:d + self.conv_dim], conv_state)
        z_q, dt_q = zxbcdt[:, :d], zxbcdt[:, d + self.conv_dim:]
        x_q, B_q, C_q = self._split_xbc(xBC_q)
        y = self.scan.step(x_q, dt_q, B_q, C_q, cache.ssm_states[self.layer_idx])
        return self.out_proj(self._norm_had(y.reshape(-1, self.d_inner), z_q)).unsqueeze(1)

    def _norm_had(self, y: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """had(norm(y, z_q)): y [..., d_inner] float (the scan output), z_q [..., d_inner] int8 (a slice of in_proj's
        output) -> int8 [..., d_inner] for out_proj. The quantized norm and Hadamard fuse into one kernel where
        the norm groups divide the power-of-two part of d_inner; other module types (none are built today) keep
        their own two calls."""
        norm, had = self.norm, self.had
        if isinstance(norm, QGatedRMSNorm) and isinstance(had, QHadamard):
            return qgated_norm_hadamard_quant(y, z_q, norm.z_scale, norm.weight, norm.eps, norm.group_size,
                                              norm.norm_before_gate, had.output_scale)
        return had(norm(y, z_q))
