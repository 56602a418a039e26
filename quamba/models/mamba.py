"""Full-precision Mamba1 and Mamba2 language models in plain PyTorch.

Layout and parameter names follow the state-spaces checkpoints (``backbone.embedding``,
``backbone.layers.N.{norm,mixer}``, ``backbone.norm_f``, ``lm_head``) so that their state dicts load
unchanged. Data flow for input_ids [B, L]:
    embedding -> N x (residual add + RMSNorm -> mixer) -> residual add + norm_f -> lm_head -> logits [B, L, V]
Every mixer runs either a full sequence (optionally continuing from an ``InferenceCache``) or, for one
token with a cache, a recurrent step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..ops import (
    add_rms_norm,
    causal_conv1d,
    causal_conv1d_update,
    gated_rms_norm,
    rms_norm,
    selective_scan,
    selective_state_update,
    ssd_chunked,
    ssd_state_update,
)
from ..errors import QuambaError
from .config import MambaConfig


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, L, padded_vocab]


class InferenceCache:
    """Per-layer recurrent state for decoding, allocated by each mixer (``mixer.allocate_state``): conv_states[i]
    (the last K conv inputs, [B, conv_dim, K]) and ssm_states[i] ([B, d_inner, N] for Mamba1, [B, H, P, N] for
    Mamba2). ``seqlen_offset`` counts the tokens seen."""

    def __init__(self, states: list[tuple]):
        self.conv_states = [conv for conv, _ in states]
        self.ssm_states = [ssm for _, ssm in states]
        self.seqlen_offset = 0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool):
        """(norm(residual'), residual') with residual' = x (+ residual), fp32 if asked: one fused kernel on CUDA."""
        return add_rms_norm(x, residual, self.weight, self.eps, residual_in_fp32)


class GatedRMSNorm(nn.Module):
    """Mamba2's norm of the scan output, gated by z (silu), normalised per group of channels."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)


class CausalConv1d(nn.Module):
    """Depthwise causal conv1d + SiLU. Parameters are stored as nn.Conv1d stores them (weight [D, 1, K]) so that
    checkpoint keys and shapes match; the op is ``causal_conv1d`` (Triton on CUDA, ``causal_conv1d_ref`` elsewhere)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """x: [B, D, L]. With ``state`` ([B, D, K], previous inputs) returns (y, new_state), else y."""
        if state is None:
            return causal_conv1d(x, self.weight.squeeze(1), self.bias)
        return causal_conv1d(x, self.weight.squeeze(1), self.bias, state, return_final_state=True)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """x: [B, D]; ``state`` [B, D, K] is updated in place."""
        return causal_conv1d_update(x, state, self.weight.squeeze(1), self.bias)


class NegExpA:
    """A = -exp(A_log) in fp32, recomputed only when A_log changes (its storage or version): a decode step would
    otherwise spend two launches per layer on it."""

    def __init__(self):
        self.key, self.value = None, None

    def __call__(self, A_log: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and A_log.requires_grad:  # training: autograd must see the op every time
            return -torch.exp(A_log.float())
        # tensors made under inference_mode keep no version counter: keyed on their storage alone (they can only be
        # changed in place inside inference_mode, which model code does not do)
        version = None if A_log.is_inference() else A_log._version
        key = (A_log.data_ptr(), version, A_log.dtype, A_log.device)
        if key != self.key:
            self.key, self.value = key, -torch.exp(A_log.float())
        return self.value


class Mamba1Mixer(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        c = self.config = config
        self.layer_idx = layer_idx
        self._neg_exp_A = NegExpA()
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner, bias=c.bias, **f)
        self.conv1d = CausalConv1d(c.d_inner, c.d_conv, c.conv_bias, **f)
        self.x_proj = nn.Linear(c.d_inner, c.dt_rank + 2 * c.d_state, bias=False, **f)
        self.dt_proj = nn.Linear(c.dt_rank, c.d_inner, bias=True, **f)
        self.A_log = nn.Parameter(torch.empty(c.d_inner, c.d_state, **f))
        self.D = nn.Parameter(torch.empty(c.d_inner, **f))
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias, **f)

    def allocate_state(self, batch_size: int):
        c, w = self.config, self.conv1d.weight  # the conv's dtype: a W4A16 in_proj stores packed uint8 weights
        return (torch.zeros(batch_size, c.d_inner, c.d_conv, device=w.device, dtype=w.dtype),
                torch.zeros(batch_size, c.d_inner, c.d_state, device=w.device, dtype=torch.float32))

    def forward(self, hidden: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """hidden: [B, L, d_model] -> [B, L, d_model]."""
        c = self.config
        if cache is not None and hidden.shape[1] == 1:
            return self.step(hidden, cache)
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # [B, d_inner, L] each
        if cache is None:
            x = self.conv1d(x)
        else:
            x, cache.conv_states[self.layer_idx] = self.conv1d(x, cache.conv_states[self.layer_idx])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        # dt_proj on the rows as a 2-D view: a 3-D strided input makes torch add the bias in a separate kernel over
        # all of dt, a 2-D one lets the GEMM add it in its epilogue
        dt = self.dt_proj(dt.reshape(-1, c.dt_rank)).view(*dt.shape[:2], -1).transpose(1, 2)
        A = self._neg_exp_A(self.A_log)
        y = selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D, z=z, delta_softplus=True, initial_state=None if cache is None else cache.ssm_states[self.layer_idx],
            return_final_state=cache is not None)
        if cache is not None:
            y, cache.ssm_states[self.layer_idx] = y
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """hidden: [B, 1, d_model]; updates this layer's states in ``cache``."""
        c = self.config
        x, z = self.in_proj(hidden.squeeze(1)).chunk(2, dim=-1)  # [B, d_inner]
        x = self.conv1d.step(x, cache.conv_states[self.layer_idx])
        dt, B, C = self.x_proj(x).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        dt = self.dt_proj(dt)
        A = self._neg_exp_A(self.A_log)
        y = selective_state_update(cache.ssm_states[self.layer_idx], x, dt, A, B, C, self.D, z=z, dt_softplus=True,
                                   prefetch_state=True)  # dt_proj comes just before
        return self.out_proj(y).unsqueeze(1)


class Mamba2Mixer(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        c = self.config = config
        self.layer_idx = layer_idx
        self._neg_exp_A = NegExpA()
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner + 2 * c.ngroups * c.d_state + c.nheads, bias=c.bias, **f)
        self.conv1d = CausalConv1d(c.conv_dim, c.d_conv, c.conv_bias, **f)
        self.dt_bias = nn.Parameter(torch.empty(c.nheads, **f))
        self.A_log = nn.Parameter(torch.empty(c.nheads, **f))
        self.D = nn.Parameter(torch.empty(c.d_inner if c.D_has_hdim else c.nheads, **f))
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.ngroups, c.norm_eps, c.norm_before_gate, **f)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias, **f)

    def allocate_state(self, batch_size: int):
        c, w = self.config, self.conv1d.weight  # the conv's dtype: a W4A16 in_proj stores packed uint8 weights
        return (torch.zeros(batch_size, c.conv_dim, c.d_conv, device=w.device, dtype=w.dtype),
                torch.zeros(batch_size, c.nheads, c.headdim, c.d_state, device=w.device, dtype=torch.float32))

    def _D(self):
        c = self.config
        return self.D.view(c.nheads, c.headdim) if c.D_has_hdim else self.D

    def _split_xbc(self, xBC: torch.Tensor):
        c = self.config
        gn = c.ngroups * c.d_state
        x, B, C = xBC.split([c.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, c.nheads, c.headdim), B.reshape(*lead, c.ngroups, c.d_state),
                C.reshape(*lead, c.ngroups, c.d_state))

    def forward(self, hidden: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """hidden: [B, L, d_model] -> [B, L, d_model]."""
        c = self.config
        if cache is not None and hidden.shape[1] == 1:
            return self.step(hidden, cache)
        batch, seqlen, _ = hidden.shape
        z, xBC, dt = self.in_proj(hidden).split([c.d_inner, c.conv_dim, c.nheads], dim=-1)
        if cache is None:
            xBC = self.conv1d(xBC.transpose(1, 2))
        else:
            xBC, cache.conv_states[self.layer_idx] = self.conv1d(xBC.transpose(1, 2), cache.conv_states[self.layer_idx])
        x, B, C = self._split_xbc(xBC.transpose(1, 2))
        A = self._neg_exp_A(self.A_log)
        y = ssd_chunked(x, dt, A, B, C, c.chunk_size, self._D(), self.dt_bias, dt_softplus=True,
                            dt_limit=c.dt_limit, initial_state=None if cache is None else cache.ssm_states[self.layer_idx],
                            return_final_state=cache is not None)
        if cache is not None:
            y, cache.ssm_states[self.layer_idx] = y
        y = self.norm(y.reshape(batch, seqlen, c.d_inner), z)
        return self.out_proj(y)

    def step(self, hidden: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        c = self.config
        z, xBC, dt = self.in_proj(hidden.squeeze(1)).split([c.d_inner, c.conv_dim, c.nheads], dim=-1)
        xBC = self.conv1d.step(xBC, cache.conv_states[self.layer_idx])
        x, B, C = self._split_xbc(xBC)
        A = self._neg_exp_A(self.A_log)
        y = ssd_state_update(cache.ssm_states[self.layer_idx], x, dt, A, B, C, self._D(), self.dt_bias,
                             dt_softplus=True, dt_limit=c.dt_limit, prefetch_state=True)  # the conv comes just before
        y = self.norm(y.reshape(-1, c.d_inner), z)
        return self.out_proj(y).unsqueeze(1)


class Block(nn.Module):
    """residual += hidden; hidden = mixer(norm(residual)). The residual is carried separately (fp32 when
    ``residual_in_fp32``). Norms take one tensor and return one tensor (a quantized norm returns int8), so the
    block is the same for full-precision and quantized models; only ``norm`` and ``mixer`` are swapped."""

    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.norm = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype)
        mixer_cls = Mamba1Mixer if config.arch == "mamba1" else Mamba2Mixer
        self.mixer = mixer_cls(config, layer_idx, device=device, dtype=dtype)

    def forward(self, hidden, residual, cache=None):
        normed, residual = add_norm(self.norm, hidden, residual, self.config.residual_in_fp32)
        return self.mixer(normed, cache), residual


def add_norm(norm: nn.Module, hidden, residual, residual_in_fp32: bool):
    """residual' = hidden (+ residual; mixed dtypes promote to the wider one), fp32 if asked; returns
    (norm(residual'), residual'). Norms with ``add_forward`` fuse the add into their kernel."""
    if hasattr(norm, "add_forward"):
        return norm.add_forward(hidden, residual, residual_in_fp32)
    residual = hidden if residual is None else hidden + residual
    if residual_in_fp32:
        residual = residual.float()
    return norm(residual), residual


class Backbone(nn.Module):
    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(config, i, device=device, dtype=dtype) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        hidden, residual = self.embedding(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cache)
        return add_norm(self.norm_f, hidden, residual, self.config.residual_in_fp32)[0]


class MambaLMHeadModel(nn.Module):
    """A Mamba1 or Mamba2 causal language model: ``model(input_ids).logits`` is [B, L, padded_vocab]."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.quantization: dict | None = None  # recipe, calibration provenance and dtype of a quantized model
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None,
                num_last_tokens: int = 0) -> CausalLMOutput:
        """input_ids: [B, L] int64. With ``cache``, continues from and updates its state. ``num_last_tokens`` > 0:
        logits of the last that many positions only ([B, num_last_tokens, V]); a prefill that only needs the next
        token then skips the lm_head over the whole prompt (and its [B, L, V] output)."""
        if num_last_tokens < 0:
            raise QuambaError(f"num_last_tokens must be >= 0, got {num_last_tokens}")
        hidden = self.backbone(input_ids, cache)
        if num_last_tokens:
            hidden = hidden[:, -num_last_tokens:]
        if type(self.lm_head) is nn.Linear:  # a float head reads the norm's output in its own dtype
            hidden = hidden.to(self.lm_head.weight.dtype)
        logits = self.lm_head(hidden)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return CausalLMOutput(logits=logits)

    def allocate_cache(self, batch_size: int) -> InferenceCache:
        return InferenceCache([layer.mixer.allocate_state(batch_size) for layer in self.backbone.layers])

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of the model's activations (a quantized model's float parts)."""
        return self.backbone.norm_f.weight.dtype

    def quantization_config(self) -> dict | None:
        return self.quantization

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """Decode on the inference cache: see ``quamba.generation.generate`` for sampling options."""
        from ..generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save_pretrained(self, path, tokenizer=None, overwrite: bool = False):
        from .io import save_model

        save_model(self, path, tokenizer=tokenizer, overwrite=overwrite)
