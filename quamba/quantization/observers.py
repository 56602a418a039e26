"""Observers: running statistics of activations seen during calibration, turned into static scales.

``MinMaxObserver`` keeps the abs-max (per tensor, or per channel of the last dim); ``PercentileObserver`` keeps the
running average over batches of the alpha-quantile of |x| (Quamba1's clipping of the SSM input's rare outliers).
Scales are symmetric int8: scale = absmax / 127.
"""
from __future__ import annotations

import math

import torch


class MinMaxObserver:
    """Abs-max of everything seen (kept on the CPU, where the quantized modules are assembled)."""

    def __init__(self, per_channel: bool = False):
        self.per_channel = per_channel
        self.absmax: torch.Tensor | None = None

    def update(self, x: torch.Tensor):
        """x: [..., C] (channels last)."""
        x = x.detach().float()
        cur = (x.abs().reshape(-1, x.shape[-1]).amax(0) if self.per_channel else x.abs().amax()).cpu()
        self.absmax = cur if self.absmax is None else torch.maximum(self.absmax, cur)

    def scale(self) -> torch.Tensor:
        if self.absmax is None:
            raise RuntimeError("observer saw no data")
        return self.absmax.clamp_min(1e-8) / 127


class PercentileObserver:
    """Running mean (over update calls) of the ``alpha``-quantile of |x| over all elements of a batch."""

    def __init__(self, alpha: float = 0.99999):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"percentile alpha must be in (0, 1], got {alpha}")
        self.alpha, self.total, self.count = alpha, 0.0, 0

    def update(self, x: torch.Tensor):
        a = x.detach().float().abs().flatten()
        k = min(a.numel(), max(1, math.ceil(self.alpha * a.numel())))
        self.total += float(a.kthvalue(k).values)
        self.count += 1

    def scale(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("observer saw no data")
        return torch.tensor(max(self.total / self.count, 1e-8) / 127)


def io_hook(obs_in, obs_out=None):
    """A forward hook feeding a module's input (and output) to observers."""
    def hook(module, args, out):
        obs_in.update(args[0])
        if obs_out is not None:
            obs_out.update(out)
    return hook


def hadamard_input_hook(obs):
    """A forward hook observing the Hadamard transform of a module's input (what an online Hadamard will emit)."""
    from .hadamard import hadamard_transform_ref

    def hook(module, args, out):
        obs.update(hadamard_transform_ref(args[0].float()))
    return hook
