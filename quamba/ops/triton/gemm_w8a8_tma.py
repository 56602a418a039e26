"""The W8A8 prefill GEMM with its operand tiles fetched by the Tensor Memory Accelerator (Hopper's TMA).

Same contract and epilogue as ``gemm_w8a8._w8a8_gemm_kernel`` (bit-identical results): x_q [M, K] int8 times
w_q [N, K] int8, int32 accumulation, ``int_epilogue``. Only the loads differ: instead of a pointer per element
(address arithmetic and cp.async in every thread), each K step asks the TMA unit for a whole [BLOCK_M, BLOCK_K]
and [BLOCK_N, BLOCK_K] box through a tensor descriptor, which also zero-fills what lies past the edges (no
masks, no wrapped rows). That frees the warps for the int8 tensor-core instructions, whose rate on an H100 is
twice fp16's; the pointer kernel reaches about fp16's.

``PERSISTENT``: a grid of one program per SM walks the tiles (in the same grouped order), so the next tile's
loads are issued while the previous tile's epilogue stores drain.

Descriptors need 16-byte aligned bases and row strides and unit column strides (``tma_ok``); the launcher in
``gemm_w8a8`` falls back to the pointer kernel otherwise, and on GPUs before sm_90. Triton's interpreter runs
the same kernel on CPU tensors (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import is_sm90
from .gemm_w8a8 import int_epilogue, tile_ids


@triton.jit
def _tile(tile, x_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, M, N, K, sws, sos, sym, syn,
          HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_ids(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = x_desc.load([off_m, k0])
        b = w_desc.load([off_n, k0])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    int_epilogue(acc, off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N), M, N, xs_ptr, ws_ptr,
                 bias_ptr, os_ptr, y_ptr, sws, sos, sym, syn, HAS_BIAS, REQUANT, SCALE_ORDER)


@triton.jit(do_not_specialize=["M"])
def _w8a8_gemm_tma_kernel(
    x_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr,
    M, N, K, sws, sos, sym, syn,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr,
):
    """[BLOCK_M, BLOCK_N] tiles of x @ w^T, each finished by the epilogue; grid (tiles,), or with PERSISTENT
    fewer programs, each striding over the tiles."""
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            _tile(tile, x_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, M, N, K, sws, sos, sym, syn,
                  HAS_BIAS, REQUANT, SCALE_ORDER, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        _tile(tl.program_id(0), x_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, M, N, K, sws, sos, sym,
              syn, HAS_BIAS, REQUANT, SCALE_ORDER, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)


def tma_ok(*operands: torch.Tensor) -> bool:
    """Whether every [rows, K] operand can be described for the TMA: unit column stride, 16-byte aligned base
    and row stride, on a GPU of sm_90 or newer (or a CPU tensor, in Triton's interpreter)."""
    for t in operands:
        if t.stride(1) != 1 or t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    t = operands[0]
    return not t.is_cuda or is_sm90(t.get_device())


def w8a8_gemm_tma_into(x2, w8, xs, ws, sws, bias, os_, sos, y, scale_order: int, cfg, sms: int) -> None:
    """y [M, N] = epilogue(x2 [M, K] int8 @ w8 [N, K] int8) through the TMA kernel (``tma_ok`` holds; one K
    slice: the prefill shapes this is for have enough tiles)."""
    m, k = x2.shape
    n = w8.shape[0]
    x_desc = TensorDescriptor.from_tensor(x2, [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor.from_tensor(w8, [cfg.block_n, cfg.block_k])
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    programs = min(tiles, sms) if cfg.persistent else tiles
    _w8a8_gemm_tma_kernel[(programs,)](
        x_desc, w_desc, xs, ws, bias if bias is not None else ws, os_ if os_ is not None else ws, y,
        m, n, k, sws, sos, y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, REQUANT=os_ is not None, SCALE_ORDER=scale_order, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, PERSISTENT=cfg.persistent, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        enable_fp_fusion=False,
    )
