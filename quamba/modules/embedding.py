"""Quantized embedding: int8 rows with one abs-max scale per row, dequantized on lookup."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.quant import quantize_ref
from .registry import dtype_name, parse_dtype, register


@register
class QEmbedding(nn.Module):
    """ids [...] -> [..., D] ``dtype``. Buffers: weight int8 [V, D], scale fp32 [V] (abs-max / 127 per row)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: str = "float16"):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, parse_dtype(dtype)
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "dtype": dtype_name(self.out_dtype)}

    @classmethod
    def from_float(cls, emb: nn.Embedding, dtype: torch.dtype) -> "QEmbedding":
        w = emb.weight.detach().float()
        m = cls(w.shape[0], w.shape[1], dtype_name(dtype))
        scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127  # abs-max: a signed max would clip negative rows
        m.weight.copy_(quantize_ref(w, scale[:, None]))
        m.scale.copy_(scale)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight[ids].float() * self.scale[ids, None]).to(self.out_dtype)
