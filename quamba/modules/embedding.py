"""Quantized embedding: int8 or int4 rows with one abs-max scale per row, dequantized on lookup."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.embedding import qembedding
from .registry import dtype_name, parse_dtype, register


@register
class QEmbedding(nn.Module):
    """ids [...] -> [..., D] ``dtype``. Buffers: weight int8 [V, D] (bits 8) or uint8 [V, D // 2] (bits 4, two per
    byte), scale fp16 [V] (abs-max of the row / 127 or / 7: a signed max would clip strongly negative rows)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 8, dtype: str = "float16"):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.bits = num_embeddings, embedding_dim, bits
        self.out_dtype = parse_dtype(dtype)
        shape, wdtype = ((num_embeddings, embedding_dim), torch.int8) if bits == 8 else \
            ((num_embeddings, embedding_dim // 2), torch.uint8)
        self.register_buffer("weight", torch.zeros(shape, dtype=wdtype))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
                "dtype": dtype_name(self.out_dtype)}

    @classmethod
    def from_float(cls, emb: nn.Embedding, dtype: torch.dtype, bits: int = 8) -> "QEmbedding":
        from ..quantization.weight_formats import pack_int4, quantize_rows

        w = emb.weight.detach().float()
        m = cls(w.shape[0], w.shape[1], bits, dtype_name(dtype))
        q, scale = quantize_rows(w, bits)
        m.weight.copy_(q if bits == 8 else pack_int4(q))
        m.scale.copy_(scale)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] integer -> [..., D] ``dtype`` (one gather kernel on CUDA: ``quamba.ops.embedding.qembedding``)."""
        return qembedding(ids, self.weight, self.scale, self.bits, self.out_dtype)
