"""Residual-stream Hadamard rotation of a full-precision model (QuaRot-style, used by Quamba2).

Two function-preserving transformations of a ``MambaLMHeadModel`` (Mamba1 or Mamba2), each returning a
transformed deep copy and leaving its input untouched:

1. ``fold_norms``: every RMSNorm weight w is moved into the linear layer that reads the norm's output
   (block norm -> the mixer's ``in_proj`` columns, ``norm_f`` -> ``lm_head`` columns): W' = W * w[None, :],
   then w = 1. Needed because RMSNorm only commutes with a rotation when its weight is all ones.
2. ``rotate_residual``: with the orthonormal Q = hadamard_matrix(d_model) and row vectors (h -> h @ Q), the
   residual stream is carried rotated. Writers of the residual are rotated on their output side
   (embedding E' = E @ Q, out_proj W' = Q^T @ W and b' = b @ Q), readers on their input side
   (in_proj and lm_head W' = W @ Q). A unit-weight RMSNorm commutes with Q because ||h Q|| = ||h||, so
   the logits are unchanged (up to rounding).

dtype: the arithmetic is done in fp64 on the weights' device and the result is cast back to each weight's
own dtype, so an fp32 model changes by fp32 rounding only (~1e-7 relative per weight), and an fp16/bf16
model by one rounding of each transformed weight to its dtype (the same as storing it once).

Nothing is recorded globally or on the model: the caller records that the rotation was applied.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from ..errors import QuambaError
from ..models.mamba import Mamba1Mixer, Mamba2Mixer, MambaLMHeadModel, RMSNorm
from .hadamard import hadamard_matrix, is_hadamard_size

__all__ = ["fold_norms", "rotate_residual"]


def _check_full_precision(model: MambaLMHeadModel, what: str):
    """The transformations read plain weights: refuse quantized (swapped-module) models."""
    if not isinstance(model, MambaLMHeadModel):
        raise QuambaError(f"{what} needs a MambaLMHeadModel, got {type(model).__name__}")
    bad = []
    for i, layer in enumerate(model.backbone.layers):
        mixer = layer.mixer
        if type(layer.norm) is not RMSNorm or not isinstance(mixer, (Mamba1Mixer, Mamba2Mixer)):
            bad.append(i)
        elif type(mixer.in_proj) is not nn.Linear or type(mixer.out_proj) is not nn.Linear:
            bad.append(i)
    if bad or type(model.backbone.norm_f) is not RMSNorm or type(model.lm_head) is not nn.Linear \
            or type(model.backbone.embedding) is not nn.Embedding:
        where = f"layers {bad}" if bad else "embedding / norm_f / lm_head"
        raise QuambaError(f"{what} needs a full-precision model, but {where} hold quantized modules: "
                          "apply it before quantizing")


@torch.no_grad()
def _assign(param: torch.Tensor, value: torch.Tensor):
    """Write an fp64 result back into ``param`` in its own dtype (the Parameter object is kept)."""
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def _fold_into_columns(linear: nn.Linear, norm: RMSNorm):
    """linear(norm(x)) = linear'(norm'(x)) with W' = W * w[None, :] and norm' of unit weight."""
    w = norm.weight.double()
    _assign(linear.weight, linear.weight.double() * w[None, :])
    norm.weight.fill_(1.0)


def _untie_lm_head(model: MambaLMHeadModel):
    """Give lm_head its own Parameter and mark the config untied (on every module that shares it)."""
    old = model.config
    new = dataclasses.replace(old, tie_embeddings=False)
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(),
                                        requires_grad=model.lm_head.weight.requires_grad)


def _is_tied(model: MambaLMHeadModel) -> bool:
    return model.lm_head.weight is model.backbone.embedding.weight


@torch.no_grad()
def fold_norms(model: MambaLMHeadModel) -> MambaLMHeadModel:
    """A deep copy of ``model`` with every RMSNorm weight folded into the linear layer after it.

    Block i: in_proj.weight [out, d_model] *= norm.weight[None, :]; ``norm_f.weight`` likewise into
    ``lm_head.weight`` [V, d_model]. All RMSNorm weights become 1 (the Mamba2 gated norm inside the mixer
    is not touched: it is not on the residual stream). A tied lm_head is untied (own Parameter,
    ``config.tie_embeddings=False``) only when ``norm_f``'s weight is not already all ones, since
    folding would otherwise rescale the embedding too. Biases are unaffected (they are added after the
    matmul). Math in fp64, results in each weight's dtype. The input model is not modified.
    """
    _check_full_precision(model, "fold_norms")
    model = copy.deepcopy(model)
    for layer in model.backbone.layers:
        _fold_into_columns(layer.mixer.in_proj, layer.norm)
    norm_f = model.backbone.norm_f
    if not bool((norm_f.weight == 1).all()):
        if _is_tied(model):
            _untie_lm_head(model)
        _fold_into_columns(model.lm_head, norm_f)
    return model


@torch.no_grad()
def rotate_residual(model: MambaLMHeadModel) -> MambaLMHeadModel:
    """A deep copy of ``model`` with norms folded and the residual stream rotated by Q = H_{d_model}.

    Q = hadamard_matrix(d_model) (orthonormal, [d_model, d_model]); with hidden rows h -> h @ Q:
    embedding.weight [V, d] -> E @ Q; in_proj.weight [out, d] -> W @ Q; out_proj.weight [d, d_inner] ->
    Q^T @ W and out_proj.bias [d] -> b @ Q; lm_head.weight [V, d] -> W @ Q (once, if still tied to the
    embedding). Raises QuambaError when d_model is not a supported Hadamard order (2^k, or 12/20/28/40
    times 2^k). Math in fp64; weights keep their dtype. The input model is not modified.
    """
    _check_full_precision(model, "rotate_residual")
    d = model.config.d_model
    if not is_hadamard_size(d):
        raise QuambaError(f"rotate_residual: d_model = {d} has no Hadamard matrix (supported: 2^k or 12, 20, 28, "
                          "40 times 2^k); skip the residual rotation for this model")
    model = fold_norms(model)
    q = hadamard_matrix(d, dtype=torch.float64, device=model.backbone.embedding.weight.device)
    emb = model.backbone.embedding.weight
    _assign(emb, emb.double() @ q)
    for layer in model.backbone.layers:
        mixer = layer.mixer
        _assign(mixer.in_proj.weight, mixer.in_proj.weight.double() @ q)
        _assign(mixer.out_proj.weight, q.T @ mixer.out_proj.weight.double())
        if mixer.out_proj.bias is not None:
            _assign(mixer.out_proj.bias, mixer.out_proj.bias.double() @ q)
    if not _is_tied(model):  # a tied lm_head was rotated with the embedding: W = E, so W @ Q = E @ Q
        _assign(model.lm_head.weight, model.lm_head.weight.double() @ q)
    return model
