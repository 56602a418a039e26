"""Random initialisation of a full-precision model, following mamba-ssm's recipe (S4D-real A,
D = 1, dt spread log-uniformly in [dt_min, dt_max] through the dt bias)."""
from __future__ import annotations

import math

import torch

from .config import MambaConfig
from .mamba import Mamba1Mixer, Mamba2Mixer, MambaLMHeadModel


def _inv_softplus(dt: torch.Tensor) -> torch.Tensor:
    return dt + torch.log(-torch.expm1(-dt))


def _random_dt(n: int, g: torch.Generator, dt_min=1e-3, dt_max=0.1) -> torch.Tensor:
    u = torch.rand(n, generator=g)
    return torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)


@torch.no_grad()
def init_weights(model: MambaLMHeadModel, seed: int = 0) -> MambaLMHeadModel:
    g = torch.Generator().manual_seed(seed)
    c = model.config

    def fill(p: torch.Tensor, t: torch.Tensor):
        p.copy_(t.to(p.dtype))

    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p.shape[1] * (p.shape[2] if p.dim() == 3 else 1)
            std = 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in)
            fill(p, torch.randn(p.shape, generator=g) * std)
        elif name.endswith("bias"):
            fill(p, torch.zeros(p.shape))
        elif "norm" in name:
            fill(p, torch.ones(p.shape))
    for m in model.modules():
        if isinstance(m, Mamba1Mixer):
            fill(m.A_log, torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32)).repeat(c.d_inner, 1))
            fill(m.D, torch.ones(c.d_inner))
            fill(m.dt_proj.weight, (torch.rand(m.dt_proj.weight.shape, generator=g) * 2 - 1) * c.dt_rank ** -0.5)
            fill(m.dt_proj.bias, _inv_softplus(_random_dt(c.d_inner, g)))
        elif isinstance(m, Mamba2Mixer):
            fill(m.A_log, torch.log(torch.rand(c.nheads, generator=g) * 15 + 1))
            fill(m.D, torch.ones(m.D.shape))
            fill(m.dt_bias, _inv_softplus(_random_dt(c.nheads, g)))
    return model


def build_random_model(config: MambaConfig, seed: int = 0, dtype=torch.float32, device="cpu") -> MambaLMHeadModel:
    """A randomly initialised model of the given shape (for tests, demos and profiling)."""
    model = MambaLMHeadModel(config, device=device, dtype=dtype)
    return init_weights(model, seed)


def tiny_config(arch: str = "mamba1", **overrides) -> MambaConfig:
    """A few-layer config small enough for CPU tests (vocab 256 + specials: bytes)."""
    base = dict(arch=arch, d_model=64, n_layer=2, vocab_size=257, d_state=16 if arch == "mamba1" else 16,
                headdim=16, ngroups=1, chunk_size=16, pad_vocab_size_multiple=8)
    base.update(overrides)
    return MambaConfig(**base)
