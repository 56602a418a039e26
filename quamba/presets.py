"""Named architectures of the published Mamba / Mamba2 checkpoints, and random models of exactly that shape
(profiling needs no trained weights).

Shapes, from the checkpoints' own config.json files on the Hugging Face Hub:
- state-spaces/mamba-{130m,370m,790m,1.4b,2.8b}: d_model / n_layer 768/24, 1024/48, 1536/48, 2048/48, 2560/64;
  vocab_size 50277, pad_vocab_size_multiple 8 (padded 50280), d_state 16, d_conv 4, expand 2, dt_rank "auto"
  (= ceil(d_model / 16)), tied embeddings, residual in fp32.
  e.g. https://huggingface.co/state-spaces/mamba-130m/blob/main/config.json and the transformers conversions
  (state-spaces/mamba-2.8b-hf: hidden_size 2560, 64 layers, time_step_rank 160, vocab 50280).
- state-spaces/mamba2-{130m,370m,780m,1.3b,2.7b}: the same d_model / n_layer ladder (768/24 ... 2560/64);
  vocab_size 50277 with pad_vocab_size_multiple **16** (padded 50288; the mamba2 configs say 16, not 8), the
  Mamba2 defaults of mamba-ssm: d_state 128, headdim 64, ngroups 1, expand 2, d_conv 4, chunk_size 256; tied.
  e.g. https://huggingface.co/state-spaces/mamba2-130m/blob/main/config.json
- nvidia/mamba2-8b-3t-4k (a Megatron-LM checkpoint; shape as converted to the mamba-ssm layout): d_model 4096,
  56 layers, vocab 256000 (pad multiple 128: unchanged), d_state 128, headdim 64, ngroups 8, expand 2,
  chunk_size 128 (Megatron's default), untied lm_head, residual not in fp32.
"""
from __future__ import annotations

import math

import torch

from .errors import QuambaError
from .models.config import MambaConfig
from .models.mamba import Mamba1Mixer, Mamba2Mixer, MambaLMHeadModel

_MAMBA1 = dict(arch="mamba1", vocab_size=50277, pad_vocab_size_multiple=8, d_state=16)
_MAMBA2 = dict(arch="mamba2", vocab_size=50277, pad_vocab_size_multiple=16, d_state=128, headdim=64, ngroups=1,
               chunk_size=256)
_LADDER = {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "780m": (1536, 48), "1.4b": (2048, 48),
           "1.3b": (2048, 48), "2.8b": (2560, 64), "2.7b": (2560, 64)}

PRESETS: dict[str, dict] = {
    **{f"mamba-{s}": dict(_MAMBA1, d_model=_LADDER[s][0], n_layer=_LADDER[s][1])
       for s in ("130m", "370m", "790m", "1.4b", "2.8b")},
    **{f"mamba2-{s}": dict(_MAMBA2, d_model=_LADDER[s][0], n_layer=_LADDER[s][1])
       for s in ("130m", "370m", "780m", "1.3b", "2.7b")},
    "mamba2-8b": dict(arch="mamba2", d_model=4096, n_layer=56, vocab_size=256000, pad_vocab_size_multiple=128,
                      d_state=128, headdim=64, ngroups=8, chunk_size=128, tie_embeddings=False,
                      residual_in_fp32=False),
}


def preset_config(name: str) -> MambaConfig:
    """The MambaConfig of a named architecture (see ``PRESETS``)."""
    if name not in PRESETS:
        raise QuambaError(f"unknown architecture {name!r}; known: {', '.join(PRESETS)}")
    return MambaConfig(**PRESETS[name])


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _random_dt(n: int, g: torch.Generator, device) -> torch.Tensor:
    """dt log-uniform in [1e-3, 0.1] (mamba-ssm's init), fp32 [n]."""
    u = torch.rand(n, generator=g, device=device)
    return torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)


@torch.no_grad()
def _init_in_place(model: MambaLMHeadModel, g: torch.Generator):
    """The same recipe as ``quamba.models.init.init_weights`` (normal weights scaled by 1/sqrt(fan_in), 0.02 for
    the embedding, zero biases, unit norms, S4D-real A, D = 1, log-uniform dt), drawn directly on the parameters'
    device and in their dtype, so no full-size fp32 copy is ever made."""
    c = model.config
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p.shape[1] * (p.shape[2] if p.dim() == 3 else 1)
            p.normal_(0.0, 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in), generator=g)
        elif name.endswith("bias"):
            p.zero_()
        else:  # norm weights (A_log, D and dt_bias are set below)
            p.fill_(1.0)
    for m in model.modules():
        dev = m.D.device if isinstance(m, (Mamba1Mixer, Mamba2Mixer)) else None
        if isinstance(m, Mamba1Mixer):
            m.A_log.copy_(torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32, device=dev)).repeat(c.d_inner, 1))
            m.D.fill_(1.0)
            m.dt_proj.weight.uniform_(-c.dt_rank ** -0.5, c.dt_rank ** -0.5, generator=g)
            m.dt_proj.bias.copy_(_inv_softplus(_random_dt(c.d_inner, g, dev)))
        elif isinstance(m, Mamba2Mixer):
            m.A_log.copy_(torch.log(torch.rand(c.nheads, generator=g, device=dev) * 15 + 1))
            m.D.fill_(1.0)
            m.dt_bias.copy_(_inv_softplus(_random_dt(c.nheads, g, dev)))


def build_random(config: MambaConfig | str, device="cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> MambaLMHeadModel:
    """A randomly initialised model of ``config`` (or a preset name), built on the meta device and materialised
    directly in ``dtype`` on ``device`` (a 2.8B model is never built in fp32 on the CPU first). Same seed, device and
    dtype give the same weights. The model records ``random_weights = True``."""
    if isinstance(config, str):
        config = preset_config(config)
    device = torch.device(device)
    model = MambaLMHeadModel(config, device="meta", dtype=dtype)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty makes new tensors: re-tie lm_head to the embedding
    _init_in_place(model, torch.Generator(device=device).manual_seed(seed))
    model.random_weights = True
    return model.requires_grad_(False).eval()
