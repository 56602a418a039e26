"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight column by column, pushing each column's
rounding error onto the columns not yet quantized through the inverse Hessian of the layer's inputs.

For a layer y = x @ W^T with inputs x [n, K], the Hessian of the output error ||x W^T - x Wq^T||^2 is
H = 2/n * sum x^T x [K, K]. The results have exactly the tuples of the round-to-nearest quantizers in
weight_formats (quantize_int8 per channel, quantize_int4_groupwise, quantize_w4a8), so a caller can swap
RTN for GPTQ.
"""
from __future__ import annotations

import math

import torch

from quamba.errors import QuambaError
from quamba.quantization.weight_formats import (
    INT4_QMAX,
    INT8_QMAX,
    W4A8_CHANNEL_QMAX,
    WeightFormat,
    as_weight_format,
    resolve_group_size,
    scale_from_absmax,
    w4a8_group_scale_from_absmax,
)


class HessianAccumulator:
    """Running H = 2/n * sum_i x_i^T x_i over every input row seen so far: [K, K] in ``dtype``.

    Each batch rescales the old sum by n_old / n_new before adding, so H stays an average (no growth with
    the number of samples, which keeps fp32 accurate over long calibrations).
    """

    def __init__(self, in_features: int, device=None, dtype: torch.dtype = torch.float32):
        self.in_features = in_features
        self.hessian = torch.zeros(in_features, in_features, device=device, dtype=dtype)
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """x: [..., K] inputs of the layer (any float dtype); every leading index is one sample."""
        if x.shape[-1] != self.in_features:
            raise QuambaError(f"HessianAccumulator expects inputs with {self.in_features} features, "
                              f"got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.in_features).to(dtype=self.hessian.dtype, device=self.hessian.device)
        n = x.shape[0]
        if n == 0:
            return
        total = self.nsamples + n
        self.hessian.mul_(self.nsamples / total)
        self.nsamples = total
        x = x * math.sqrt(2.0 / total)
        self.hessian.addmm_(x.T, x)


class _ColumnQuantizer:
    """The scales of one format and the rule that rounds one column with them.

    w: [N, K] weights before GPTQ (dead columns zeroed), g: group size (K for int8).
    Per-channel scales (int8, and W4A8's fp32 channel scales) are fixed here from these weights (int8
    per tensor: one scale [1]); group scales are set by ``set_group`` (when GPTQ reaches a group, or all up
    front for static groups).
    """

    def __init__(self, fmt: WeightFormat, w: torch.Tensor, g: int, per_channel: bool = True):
        n, k = w.shape
        self.fmt, self.g = fmt, g
        absmax_row = w.abs().amax(dim=1)
        if fmt is WeightFormat.INT8:
            absmax = absmax_row if per_channel else absmax_row.amax().reshape(1)
            self.channel_scales = scale_from_absmax(absmax, INT8_QMAX)  # fp32 [N] (or [1])
        elif fmt is WeightFormat.INT4:
            self.group_scales = torch.ones(n, k // g, dtype=torch.float16, device=w.device)
        else:
            self.channel_scales = scale_from_absmax(absmax_row, W4A8_CHANNEL_QMAX)  # fp32 [N]
            self.group_scales = torch.ones(n, k // g, dtype=torch.int8, device=w.device)

    def set_group(self, j: int, cols: torch.Tensor) -> None:
        """Scales of group j from its current weights cols [N, G]."""
        if self.fmt is WeightFormat.INT4:
            self.group_scales[:, j] = scale_from_absmax(cols.abs().amax(dim=1), INT4_QMAX, torch.float16)
        elif self.fmt is WeightFormat.W4A8:
            w8 = cols / self.channel_scales[:, None].to(cols.dtype)
            self.group_scales[:, j] = w4a8_group_scale_from_absmax(w8.abs().amax(dim=1))

    def set_all_groups(self, w: torch.Tensor) -> None:
        for j in range(w.shape[1] // self.g):
            self.set_group(j, w[:, j * self.g:(j + 1) * self.g])

    def quantize(self, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """col [N] of group j -> (q int8 [N], its dequantized value [N] in col's dtype)."""
        if self.fmt is WeightFormat.INT8:
            s = self.channel_scales.to(col.dtype)
            q = torch.round(col / s).clamp(-INT8_QMAX - 1, INT8_QMAX)
            return q.to(torch.int8), q * s
        if self.fmt is WeightFormat.INT4:
            s = self.group_scales[:, j].to(col.dtype)
            q = torch.round(col / s).clamp(-INT4_QMAX - 1, INT4_QMAX)
            return q.to(torch.int8), q * s
        cs = self.channel_scales.to(col.dtype)
        sg = self.group_scales[:, j].to(col.dtype)
        q = torch.round(col / cs / sg).clamp(-INT4_QMAX - 1, INT4_QMAX)  # same rounding as quantize_w4a8
        return q.to(torch.int8), q * sg * cs

    def result(self, q: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fmt is WeightFormat.INT8:
            return q, self.channel_scales
        if self.fmt is WeightFormat.INT4:
            return q, self.group_scales
        return q, self.group_scales, self.channel_scales


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1: [K, K]; row i holds the update weights."""
    k = h.shape[0]
    h = h + damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(hinv, upper=True)
    except torch.linalg.LinAlgError:
        raise QuambaError(f"the Hessian is not positive definite with damp={damp}: "
                          "increase damp or calibrate on more samples") from None


def _block_size(block_size: int, g: int, static_groups: bool) -> int:
    """Blocks hold whole groups when group scales come from the error-updated weights, so that every
    column of a group already carries all earlier updates when its scale is computed."""
    if block_size <= 0:
        raise QuambaError(f"block_size must be positive, got {block_size}")
    if static_groups:
        return block_size
    return max(block_size // g, 1) * g


def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    fmt: str | WeightFormat,
    group_size: int = 128,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    per_channel: bool = True,
) -> tuple[torch.Tensor, ...]:
    """GPTQ-quantize w [N, K] (float) given the input Hessian H [K, K] (HessianAccumulator.hessian).

    fmt "int8": per output channel (group_size ignored) -> (q int8 [N, K], scale fp32 [N]); with
        ``per_channel=False`` one scale for the tensor, fp32 [1] (as quantize_int8(w, per_channel=False)).
        ``per_channel=False`` is for int8 only.
    fmt "int4": per group -> (q int8 [N, K] in [-8, 7], scales fp16 [N, K // G]).
    fmt "w4a8": two-level -> (q int8 [N, K] in [-8, 7], group_scales int8 [N, K // G], channel_scales fp32 [N]).
    group_size -1 means one group per row. The computation runs in H's dtype (at least fp32) on w's device.

    Steps: inputs that never fired (diag H == 0) get diag 1 and a zero weight column; H is damped by
    damp * mean(diag H); columns are processed in blocks of ``block_size`` with the upper Cholesky factor of
    H^-1, each column's rounding error spread over the later columns (lazily across blocks).
    Scales: per-channel scales (int8; the W4A8 channel scales) are fixed from the weights before GPTQ.
    Group scales are computed when GPTQ reaches the group's first column, from the error-updated weights.
    With ``act_order``, columns are processed by decreasing diag(H), so a group's columns are scattered
    over the pass and no single moment sees them all updated; groups keep their ORIGINAL column ranges and
    their scales are computed once from the weights before the pass ("static groups"). The result is
    returned in the original column order either way.
    """
    fmt = as_weight_format(fmt)
    if w.dim() != 2 or not w.is_floating_point():
        raise QuambaError(f"gptq_quantize takes a 2-D floating weight [N, K], got {w.dim()}-D {w.dtype}")
    n, k = w.shape
    if tuple(H.shape) != (k, k):
        raise QuambaError(f"the Hessian must have shape {(k, k)} for a weight with K={k}, got {tuple(H.shape)}")
    if not per_channel and fmt is not WeightFormat.INT8:
        raise QuambaError(f"per_channel=False applies to int8 only; {fmt.value} has per-group scales")
    g = k if fmt is WeightFormat.INT8 else resolve_group_size(k, group_size)
    static_groups = act_order or g == k  # one group per row: its scale is set before any update anyway

    dtype = torch.promote_types(H.dtype, torch.float32)
    W = w.to(dtype).clone()
    H = H.to(dtype=dtype, device=w.device).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1  # keeps H invertible; these inputs are always 0, so their weights do not matter
    W[:, dead] = 0

    quantizer = _ColumnQuantizer(fmt, W, g, per_channel)
    if static_groups:
        quantizer.set_all_groups(W)
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(k)
    perm = perm.to(w.device)
    W, H = W[:, perm], H[perm][:, perm]
    group_of = (perm // g).tolist()  # the ORIGINAL group of each processed column
    hinv = _inverse_hessian_factor(H, damp)

    Q = torch.zeros(n, k, dtype=torch.int8, device=w.device)
    bs = _block_size(block_size, g, static_groups)
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        W1, hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % g == 0:
                quantizer.set_group(col // g, W1[:, i:i + g])
            q, deq = quantizer.quantize(W1[:, i], group_of[col])
            Q[:, col] = q
            err = (W1[:, i] - deq) / hinv1[i, i]
            W1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    Q = Q[:, torch.argsort(perm)]
    return quantizer.result(Q)
