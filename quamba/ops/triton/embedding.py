"""Triton quantized embedding lookup: the kernel of ``quamba.ops.embedding.qembedding``.

Contract of ``qembedding_ref``: one program gathers BLOCK columns of one token's row, int8 or int4
(unpacked from the byte's low / high nibble), times the row's fp16 scale in fp32 (exact: an 8-bit
integer times an 11-bit mantissa), rounded once to the output dtype, so the result is bit-identical
to the reference. Ids outside [0, V) give zero rows (and fail a device assert when Triton's debug
mode is on) instead of reading out of bounds: the reference raises IndexError there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import FLOAT_DTYPES, cdiv, check_runnable, check_same_device, device_of, next_pow2, pdl_start, use_pdl


@triton.jit
def _qembedding_kernel(
    ids_ptr, w_ptr, s_ptr, y_ptr,
    dim, num_rows,
    sit, swv, swc, sss, syt,
    INT4: tl.constexpr, BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Columns [pid1 * BLOCK, +BLOCK) of token pid0's output row; grid (tokens, cdiv(D, BLOCK))."""
    pdl_start(USE_PDL)  # decode chains: see _common's dependent launch
    tok = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(ids_ptr + tok * sit).to(tl.int64)
    valid = (row >= 0) & (row < num_rows)
    tl.device_assert(valid, "embedding id out of range")
    row = tl.where(valid, row, 0)  # never read outside the table: such an id gives a row of zeros
    mask = cols < dim
    scale = tl.where(valid, tl.load(s_ptr + row * sss).to(tl.float32), 0.0)
    if INT4:
        byte = tl.load(w_ptr + row * swv + (cols // 2) * swc, mask=mask, other=0).to(tl.int32)  # uint8: zero-extended
        nibble = (byte >> ((cols % 2) * 4)) & 0xF
        q = (nibble ^ 8) - 8  # 4-bit two's complement
    else:
        q = tl.load(w_ptr + row * swv + cols * swc, mask=mask, other=0).to(tl.int32)
    tl.store(y_ptr + tok * syt + cols, (q.to(tl.float32) * scale).to(y_ptr.dtype.element_ty), mask=mask)


def _qembedding_launch(ids: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """Checks and launches ``_qembedding_kernel``; same contract as ``qembedding_ref``."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise QuambaError(f"embedding ids have dtype {ids.dtype}: pass integer token ids")
    expected = {8: torch.int8, 4: torch.uint8}.get(bits)
    if expected is None:
        raise QuambaError(f"quantized embedding bits must be 8 or 4, got {bits!r}")
    if weight.dim() != 2 or weight.dtype != expected:
        raise QuambaError(f"embedding weight is {weight.dtype} {list(weight.shape)}: bits {bits} takes {expected} [V, "
                          f"{'D' if bits == 8 else 'D // 2'}]")
    if scale.shape != (weight.shape[0],):
        raise QuambaError(f"embedding scale has shape {list(scale.shape)}, expected [{weight.shape[0]}]")
    if out_dtype not in FLOAT_DTYPES:
        raise QuambaError(f"embedding out_dtype {out_dtype} is not float32, float16 or bfloat16")
    check_same_device(("ids", ids), ("weight", weight), ("scale", scale))
    check_runnable(_qembedding_kernel, weight)
    dim = weight.shape[1] * (2 if bits == 4 else 1)
    flat = ids.reshape(-1)
    out = torch.empty(flat.shape[0], dim, device=weight.device, dtype=out_dtype)
    if flat.shape[0] and dim:
        block = min(1024 if weight.is_cuda else 256, next_pow2(dim))
        pdl = use_pdl(weight)
        with device_of(weight):
            _qembedding_kernel[(flat.shape[0], cdiv(dim, block))](
                flat, weight, scale, out,
                dim, weight.shape[0],
                flat.stride(0), *weight.stride(), scale.stride(0), out.stride(0),
                INT4=bits == 4, BLOCK=block, num_warps=4,
                USE_PDL=pdl, launch_pdl=pdl,
            )
    return out.reshape(*ids.shape, dim)
