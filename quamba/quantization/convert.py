"""Pieces shared by the recipes' conversion steps: making quantized projections (RTN or GPTQ, W8A8 / W4A8 / W4A16)
and assembling the quantized model around the converted layers."""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn as nn

from ..models.mamba import MambaLMHeadModel, RMSNorm
from ..modules.embedding import QEmbedding
from ..modules.linear import W4A8Linear, W4A16Linear, W8A8Linear
from ..modules.norm import QRMSNorm


def expand_scales(scales: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """One scale per segment -> one value per channel: [s0]*n0 + [s1]*n1 + ..."""
    return torch.cat([s.reshape(-1).expand(n) if s.numel() == 1 else s.reshape(-1) for s, n in zip(scales, sizes)])


class LinearFactory:
    """Builds the quantized projections of one recipe. ``hessians`` maps an fp nn.Linear to its HessianAccumulator
    (of the input the quantized layer will see, i.e. Hadamard-rotated for an out_proj behind an online Hadamard)."""

    def __init__(self, cfg, hessians: dict | None, dtype: torch.dtype):
        self.cfg, self.hessians, self.dtype = cfg, hessians, dtype
        self.group_size = getattr(cfg, "group_size", 128)
        self.per_channel = getattr(cfg, "weight_granularity", "per_channel") == "per_channel"

    def _fits_w4(self, k: int) -> bool:
        g = k if self.group_size == -1 else self.group_size
        return k % 2 == 0 and k % g == 0

    def _gptq(self, linear, w, fmt):
        if not self.cfg.gptq:
            return None
        from .gptq import gptq_quantize

        H = self.hessians[linear].hessian  # GPTQ runs where the Hessian was collected; modules are built on the CPU
        out = gptq_quantize(w.to(H.device), H, fmt, group_size=self.group_size, damp=self.cfg.gptq_damp,
                            act_order=getattr(self.cfg, "gptq_act_order", False), per_channel=self.per_channel)
        return tuple(t.cpu() for t in out)

    def a8(self, linear: nn.Linear, w_bits: int, input_scale, output: str, output_scale=None, weight=None,
           drop_bias: bool = False):
        """int8 input. W4A8 where the input width allows int4 groups, otherwise W8A8 ("where shapes allow").
        ``weight`` replaces the layer's weight (e.g. Hadamard-rotated); ``drop_bias`` leaves the bias out."""
        w = (linear.weight if weight is None else weight).detach().float().cpu()
        bias = None if drop_bias else linear.bias
        if w_bits == 4 and self._fits_w4(w.shape[1]):
            return W4A8Linear.from_float(w, input_scale, output, bias, output_scale, self.group_size,
                                         self._gptq(linear, w, "w4a8"))
        return W8A8Linear.from_float(w, input_scale, output, self.per_channel, bias, output_scale,
                                     self._gptq(linear, w, "int8"))

    def a16(self, linear: nn.Linear, weight=None):
        """float input: W4A16 where the input width allows int4 groups, otherwise the float projection."""
        w = (linear.weight if weight is None else weight).detach().float().cpu()
        if self._fits_w4(w.shape[1]):
            return W4A16Linear.from_float(w, linear.bias, self.group_size, self._gptq(linear, w, "int4"))
        out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, dtype=self.dtype)
        out.weight.data.copy_(w)
        if linear.bias is not None:
            out.bias.data.copy_(linear.bias.detach())
        return out


def float_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(module).to(dtype)


def new_quantized_model(model: MambaLMHeadModel, cfg, dtype: torch.dtype) -> MambaLMHeadModel:
    """An empty (meta) model of the same architecture; ties the lm_head only if both ends stay in float."""
    c = model.config
    tied = c.tie_embeddings and model.lm_head.weight is model.backbone.embedding.weight \
        and not (cfg.quantize_embedding or cfg.quantize_lm_head)
    with torch.device("meta"):
        return MambaLMHeadModel(replace(c, tie_embeddings=tied), dtype=dtype)


def set_embedding(qmodel, model, cfg, dtype, bits: int = 8):
    src = model.backbone.embedding
    if cfg.quantize_embedding:
        qmodel.backbone.embedding = QEmbedding.from_float(src, dtype, bits)
    else:
        qmodel.backbone.embedding = nn.Embedding.from_pretrained(src.weight.detach().to(dtype).clone(), freeze=False)


def set_head(qmodel, model, cfg, dtype, head_scale=None, make_head=None):
    """norm_f + lm_head: a quantized norm feeding ``make_head(input_scale)`` (int8 head), or ``make_head(None)``
    (a float-input head, e.g. W4A16) after the plain norm, or the plain norm and float lm_head."""
    src = model.backbone.norm_f
    if cfg.quantize_lm_head and head_scale is not None:
        qmodel.backbone.norm_f = QRMSNorm.from_float(src, head_scale, dtype)
        qmodel.lm_head = make_head(head_scale)
        return
    qmodel.backbone.norm_f = RMSNorm(src.weight.shape[0], src.eps, dtype=dtype)
    qmodel.backbone.norm_f.weight.data.copy_(src.weight.detach())
    if cfg.quantize_lm_head:
        qmodel.lm_head = make_head(None)
    elif qmodel.config.tie_embeddings:
        qmodel.lm_head = nn.Linear(src.weight.shape[0], qmodel.config.padded_vocab_size, bias=False, dtype=dtype)
        qmodel.tie_weights()
    else:
        qmodel.lm_head = nn.Linear(src.weight.shape[0], qmodel.config.padded_vocab_size, bias=False, dtype=dtype)
        qmodel.lm_head.weight.data.copy_(model.lm_head.weight.detach())
