"""Quantized embedding lookup: int8 rows (or int4 rows packed two per byte) with one scale per row."""
from __future__ import annotations

import torch

from .triton import use_triton


def qembedding_ref(ids: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """out[..., :] = weight[ids] (dequantized) * scale[ids], in ``out_dtype``.

    ids: [...] integer token ids in [0, V); weight: int8 [V, D] (bits 8) or uint8 [V, D // 2] (bits 4: column
    2j in the low nibble, 2j + 1 in the high one, 4-bit two's complement); scale: fp16 [V]. Returns
    [..., D] ``out_dtype``, computed as q.float() * scale.float() (exact in fp32), then rounded once.
    """
    from ..quantization.weight_formats import unpack_int4  # lazy: quamba.quantization imports the models

    rows = weight[ids]
    q = rows if bits == 8 else unpack_int4(rows)
    return (q.float() * scale[ids, None].float()).to(out_dtype)


def qembedding(ids: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``qembedding_ref``'s contract, bit-exact; one gather kernel on CUDA, the reference elsewhere."""
    if use_triton(ids, weight, scale):
        from .triton.embedding import _qembedding_launch

        return _qembedding_launch(ids, weight, scale, bits, out_dtype)
    return qembedding_ref(ids, weight, scale, bits, out_dtype)
