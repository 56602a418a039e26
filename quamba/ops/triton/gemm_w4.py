"""Triton GEMMs on packed int4 weights: W4A16 (float activations) and W4A8 (int8 activations).

Contracts of ``quamba.ops.w4_gemm``'s references. Weights are uint8 [N, K // 2], two's-complement
nibbles, the low one holding the even k; scales are per group of G consecutive k. Each K tile of the
weights is unpacked in registers, scaled, and fed to the tensor cores:
  W4A16: w = q * s rounded once to x's dtype (fp16 / bf16; fp32 stays fp32), tl.dot with fp32
         accumulation, + bias, -> x's dtype. The reference computes in fp32, so results differ by the
         rounding of w and of the operand products' sums (the tests state the bound).
  W4A8:  w8 = q * s_g is an int8 in [-128, 112]; tl.dot int8 x int8 -> int32 is exact, and the epilogue
         is gemm_w8a8's, in w4a8_gemm_ref's order ((acc * x_scale) * channel_scale + bias): bit-exact.
K tiles never straddle a scale group when the block size divides G (the usual G = 32..128 or -1), so
a tile needs one scale per row; other group sizes gather a scale per element.
The nibble -> fp16 / bf16 conversion builds the float's bits (0x6400 | (q + 8) is 1024 + q + 8 in
fp16) instead of int -> float conversion instructions, which run at a fraction of the ALU rate.

Small M (decode, M <= ``gemv.GEMV_MAX_M``) runs the CUDA-core GEMV of ``gemv`` instead (an explicit
``GemmConfig`` forces these kernels, a ``GemvConfig`` the GEMV). Between that and prefill, W4A8 uses split-K
like the W8A8 kernel; W4A16 runs one K slice per tile (its fp32 split-K, which had a CUDA-only test failure,
is gone: the GEMV, with its own deterministic split-K, covers the shapes that needed it). For large M,
``dense_min_m`` can instead dequantize the weights once into a dense [N, K] tensor and run a dense GEMM on it:
W4A8 the int8 kernel on the same int8 values (the same results, bit for bit), W4A16 torch's matmul (cuBLAS) on
weights in x's dtype (the same rounding of w, the sums in cuBLAS's order: within the W4A16 bounds). Which is faster
at prefill sizes is what benchmarks/kernels_gemm.py measures (off unless QUAMBA_W4_DENSE_MIN_M is set).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ..w4_gemm import _check_packed
from ._common import FLOAT_DTYPES, cdiv, check_float, check_runnable, check_same_device, device_of
from .gemm_w8a8 import (MAX_K, SCALES_W4A8, GemmConfig, as_bias, check_index_range, float_epilogue, gemv,
                        finish_int_tile, int8_gemm_into, int_epilogue_args, launch_int_reduce,
                        finish_output, mma_plan, new_output, rows_of, split_k_buffers, tile_ids)

# What a K tile of weights is unpacked to: the W_KIND constexpr of the kernels (which compare it with the
# literals, since jit code cannot read plain module globals)
W_INT8, W_FP16, W_BF16, W_FP32 = 0, 1, 2, 3
_W_KIND = {torch.float16: W_FP16, torch.bfloat16: W_BF16, torch.float32: W_FP32}


@triton.jit
def dequant_int4(p, s, W_KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """p: uint8 [BLOCK_N, BLOCK_K // 2] packed pairs; s: scales [BLOCK_N, 1] or [BLOCK_N, BLOCK_K].

    Returns [BLOCK_N, BLOCK_K], column 2j from p's low nibble: int8 q * s (W_INT8, s int8), or q * s
    rounded once to fp16 / bf16 (s fp16), or fp32.
    """
    b = p.to(tl.int16)
    lo = b & 15
    hi = b >> 4
    if W_KIND == 1:
        # fp16 0x6400 | n (n < 16) is 1024 + n, and n ^ 8 = q + 8: subtracting 1032 leaves q exactly
        bits = tl.reshape(tl.join(lo ^ 0x6408, hi ^ 0x6408), [BLOCK_N, BLOCK_K])
        w = (bits.to(tl.float16, bitcast=True) - 1032.0) * s
    elif W_KIND == 2:
        # bf16 0x4300 | n is 128 + n; the product is formed in fp32 so that it is rounded to bf16 once
        bits = tl.reshape(tl.join(lo ^ 0x4308, hi ^ 0x4308), [BLOCK_N, BLOCK_K])
        w = ((bits.to(tl.bfloat16, bitcast=True).to(tl.float32) - 136.0) * s.to(tl.float32)).to(tl.bfloat16)
    else:
        q = tl.reshape(tl.join((lo ^ 8) - 8, (hi ^ 8) - 8), [BLOCK_N, BLOCK_K])
        if W_KIND == 0:
            w = (q * s.to(tl.int16)).to(tl.int8)
        else:
            w = q.to(tl.float32) * s.to(tl.float32)
    return w


@triton.jit
def w4_accumulate(
    acc, x_ptr, w_ptr, s_ptr, rows, cols, k_lo, k_hi, K, G,
    sxm, sxk, swn, swk, ssn, ssg,
    W_KIND: tl.constexpr, SCALES_PER_TILE: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """acc + x[rows, k_lo:k_hi] @ W[cols, k_lo:k_hi]^T, the packed W unpacked tile by tile."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_w = tl.arange(0, BLOCK_K // 2)  # bytes of a tile row, two k each (contiguous: vector loads)
    x_ptrs = x_ptr + rows[:, None] * sxm + (k_lo + offs_k)[None, :] * sxk
    w_ptrs = w_ptr + cols[:, None] * swn + (k_lo // 2 + offs_w)[None, :] * swk
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            wt = tl.load(w_ptrs)
        else:
            a = tl.load(x_ptrs, mask=((k0 + offs_k) < K)[None, :], other=0)
            wt = tl.load(w_ptrs, mask=((k0 + offs_w * 2) < K)[None, :], other=0)
        if SCALES_PER_TILE:
            s = tl.load(s_ptr + cols * ssn + (k0 // G) * ssg)[:, None]
        else:
            in_k = (k0 + offs_k) < K
            s = tl.load(s_ptr + cols[:, None] * ssn + ((k0 + offs_k) // G)[None, :] * ssg,
                        mask=in_k[None, :], other=1)
        wt = dequant_int4(wt, s, W_KIND, BLOCK_N, BLOCK_K)
        # out_dtype spelled out: triton < 3.7 does not take it from acc (int32 for W_INT8, else fp32)
        if IEEE:
            acc = tl.dot(a, tl.trans(wt), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(a, tl.trans(wt), acc, out_dtype=acc.dtype)
        x_ptrs += BLOCK_K * sxk
        w_ptrs += (BLOCK_K // 2) * swk
    return acc


@triton.jit(do_not_specialize=["M"])
def _w4a8_gemm_kernel(
    x_ptr, w_ptr, gs_ptr, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, G, k_split,
    sxm, sxk, swn, swk, sgn, sgg, sos, sym, syn, spk, spm,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SPLIT: tl.constexpr, SCALES_PER_TILE: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_LAST: tl.constexpr = 0,
):
    """One [BLOCK_M, BLOCK_N] tile over K slice pid_k: int32 sums of x_q * (q4 * s_g), finished by the epilogue or,
    when SPLIT, stored as partial sums (SPLIT_LAST: summed by the tile's last slice, ``finish_int_tile``); grid
    (tiles, K slices)."""
    pid_m, pid_n = tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_lo = pid_k * k_split
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc = w4_accumulate(acc, x_ptr, w_ptr, gs_ptr, offs_m % M, offs_n % N, k_lo, tl.minimum(k_lo + k_split, K), K, G,
                        sxm, sxk, swn, swk, sgn, sgg,
                        0, SCALES_PER_TILE, EVEN_K, False, BLOCK_N, BLOCK_K)  # 0: W_INT8
    finish_int_tile(acc, offs_m, offs_n, M, N, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                    1, sos, sym, syn, spk, spm, HAS_BIAS, REQUANT, 1, SPLIT, SPLIT_LAST, BLOCK_M, BLOCK_N)  # 1: W4A8


@triton.jit(do_not_specialize=["M"])
def _w4a16_gemm_kernel(
    x_ptr, w_ptr, s_ptr, bias_ptr, y_ptr,
    M, N, K, G,
    sxm, sxk, swn, swk, ssn, ssg, sym, syn,
    W_KIND: tl.constexpr, HAS_BIAS: tl.constexpr,
    SCALES_PER_TILE: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of x @ (q4 * s)^T over all of K, fp32 accumulation; grid (tiles,)."""
    pid_m, pid_n = tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = w4_accumulate(acc, x_ptr, w_ptr, s_ptr, offs_m % M, offs_n % N, 0, K, K, G,
                        sxm, sxk, swn, swk, ssn, ssg,
                        W_KIND, SCALES_PER_TILE, EVEN_K, W_KIND == 3, BLOCK_N, BLOCK_K)
    float_epilogue(acc, offs_m, offs_n, M, N, bias_ptr, y_ptr, sym, syn, HAS_BIAS)


@triton.jit
def _int4_dequant_kernel(
    w_ptr, s_ptr, out_ptr, N, K, G,
    swn, swk, ssn, ssg, son, sok,
    W_KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out [N, K] = unpack(w) * scales, exactly the tiles the GEMM kernels build; grid (N tiles, K tiles)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_j = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    in_n = offs_n < N
    in_k = offs_k < K
    p = tl.load(w_ptr + offs_n[:, None] * swn + offs_j[None, :] * swk,
                mask=in_n[:, None] & (offs_j < K // 2)[None, :], other=0)
    s = tl.load(s_ptr + offs_n[:, None] * ssn + (offs_k // G)[None, :] * ssg, mask=in_n[:, None] & in_k[None, :],
                other=1)
    w = dequant_int4(p, s, W_KIND, BLOCK_N, BLOCK_K)
    tl.store(out_ptr + offs_n[:, None] * son + offs_k[None, :] * sok, w, mask=in_n[:, None] & in_k[None, :])


# ---------------------------------------------------------------------------------------------- launch

def _int4_dequant_launch(w_packed: torch.Tensor, scales: torch.Tensor, g: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense [N, K] weights in ``dtype`` (int8: q * s_g of W4A8; fp16 / bf16 / fp32: q * s of W4A16)."""
    n, k = w_packed.shape[0], 2 * w_packed.shape[1]
    out = torch.empty(n, k, device=w_packed.device, dtype=dtype)
    if out.numel():
        bn, bk = (64, 128) if w_packed.is_cuda else (32, 64)
        kind = W_INT8 if dtype == torch.int8 else _W_KIND[dtype]
        with device_of(w_packed):
            _int4_dequant_kernel[(cdiv(n, bn), cdiv(k, bk))](
                w_packed, scales, out, n, k, g,
                *w_packed.stride(), *scales.stride(), *out.stride(),
                W_KIND=kind, BLOCK_N=bn, BLOCK_K=bk, num_warps=4,
            )
    return out


def _dense_path(m: int, dense_min_m: int | None, config) -> bool:
    """Dequantize-then-dense (the prefill option) for M >= dense_min_m, unless a GemvConfig asks for the GEMV."""
    return dense_min_m is not None and m >= dense_min_m and not isinstance(config, gemv.GemvConfig)


def _w4a16_gemm_launch(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    config=None,
    dense_min_m: int | None = None,
) -> torch.Tensor:
    """Checks and launches the W4A16 GEMM; same contract as ``w4a16_gemm_ref``.

    x: [..., K] fp16 / bf16 / fp32; w_packed: uint8 [N, K // 2]; scales: fp16 [N, K // G]; bias: [N] or None.
    Returns [..., N] in x's dtype. ``config``: a ``GemvConfig`` (CUDA-core GEMV) or a ``GemmConfig`` without
    split-K (tensor cores) overrides the choice; by default M <= ``gemv.GEMV_MAX_M["w4a16"]`` takes the GEMV.
    With ``dense_min_m``, M >= it dequantizes the weights once and runs torch's matmul (cuBLAS) on them.
    """
    if x.dtype not in FLOAT_DTYPES:
        check_float("x", x)
    k = x.shape[-1]
    g = _check_packed(k, w_packed, scales, group_size, "scales")
    n = w_packed.shape[0]
    if scales.dtype != torch.float16:
        raise QuambaError(f"W4A16 scales must be float16 (the format's dtype), got {scales.dtype}")
    device = x.device
    if w_packed.device != device or scales.device != device:
        check_same_device(("x", x), ("w_packed", w_packed), ("scales", scales))
    check_runnable(_w4a16_gemm_kernel, x)
    bias = as_bias(bias, n, device)
    x2 = rows_of(x, k)
    m = x2.shape[0]
    y = torch.empty(m, n, device=device, dtype=x.dtype)
    check_index_range(x2, w_packed, y)
    if m and n:
        dense = _dense_path(m, dense_min_m, config)
        if not dense and gemv.use_gemv("w4a16", m, config, k, w_packed, g):
            gemv.w4a16_gemv_into(x2, w_packed, scales, g, bias, y, config)
        else:
            _w4a16_mma(x2, w_packed, scales, g, bias, y, config, dense)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def _w4a16_mma(x2, w_packed, scales, g: int, bias, y, config: GemmConfig | None, dense: bool) -> None:
    """The tensor-core W4A16 kernel on the packed weights, or (dense) the weights dequantized to x's dtype and
    torch's matmul (cuBLAS on the GPU: at prefill sizes the fastest float GEMM there is, so W4A16 costs the fp16
    GEMM plus one pass over the weights)."""
    (m, k), n = x2.shape, w_packed.shape[0]
    if config is not None and config.split_k > 1:
        raise QuambaError("the W4A16 tensor-core kernel has no split-K: use split_k=1, or a gemv.GemvConfig "
                          "with split > 1 for small M")
    if dense:
        w = _int4_dequant_launch(w_packed, scales, g, x2.dtype)
        with device_of(x2):
            if bias is None:
                torch.matmul(x2, w.t(), out=y)
            else:
                torch.addmm(bias.to(y.dtype), x2, w.t(), out=y)
        return
    cfg, _, grid, _, per_tile = mma_plan(config, m, n, k, x2.device, True, g, False)
    with device_of(x2):
        _w4a16_gemm_kernel[grid](
            x2, w_packed, scales, bias if bias is not None else scales, y,
            m, n, k, g,
            *x2.stride(), *w_packed.stride(), *scales.stride(), *y.stride(),
            W_KIND=_W_KIND[x2.dtype], HAS_BIAS=bias is not None,
            SCALES_PER_TILE=per_tile, EVEN_K=k % cfg.block_k == 0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )


def _w4a8_gemm_launch(
    x_q: torch.Tensor,
    x_scale: torch.Tensor | float,
    w_packed: torch.Tensor,
    group_scales: torch.Tensor,
    channel_scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
    out_scale: torch.Tensor | None = None,
    config=None,
    dense_min_m: int | None = None,
    conv=None,
):
    """Checks and launches the W4A8 GEMM; same contract as ``w4a8_gemm_ref``, plus ``out_scale`` ([N] or one
    value): the fp32 result requantized to int8 as ``quantize_ref(y, out_scale)``, fused into the epilogue.

    x_q: int8 [..., K]; x_scale: one fp32 value; w_packed: uint8 [N, K // 2]; group_scales: int8 [N, K // G];
    channel_scales: fp32 [N]; bias: [N] or None. Returns [..., N] in ``out_dtype`` (int8 with out_scale).
    ``config``: a ``GemvConfig`` or ``GemmConfig`` overrides the choice (by default M <= GEMV_MAX_M: the GEMV).
    """
    if x_q.dtype != torch.int8:
        raise QuambaError(f"w4a8 activations must be int8, got {x_q.dtype}")
    k = x_q.shape[-1]
    g = _check_packed(k, w_packed, group_scales, group_size, "group_scales")
    n = w_packed.shape[0]
    if group_scales.dtype != torch.int8:
        raise QuambaError(f"W4A8 group_scales must be int8, got {group_scales.dtype}")
    if channel_scales.dim() != 1 or channel_scales.shape[0] != n:
        raise QuambaError(f"channel_scales must have shape ({n},), got {tuple(channel_scales.shape)}")
    if k > MAX_K:
        raise QuambaError(f"K={k} may overflow the int32 accumulator (max {MAX_K}): use w4a8_gemm_ref")
    device = x_q.device
    if w_packed.device != device or group_scales.device != device or channel_scales.device != device:
        check_same_device(("x_q", x_q), ("w_packed", w_packed), ("group_scales", group_scales),
                          ("channel_scales", channel_scales))
    check_runnable(_w4a8_gemm_kernel, x_q)
    xs, cs, _, bias, os_, sos = int_epilogue_args(x_scale, channel_scales, bias, out_scale, n, device,
                                                  "x_scale", "channel_scales")
    x2 = rows_of(x_q, k)
    m = x2.shape[0]
    y = new_output(m, n, device, os_ is not None, out_dtype)
    check_index_range(x2, w_packed, y)
    u = None
    if m and n:
        dense = _dense_path(m, dense_min_m, config)
        if not dense and gemv.use_gemv("w4a8", m, config, k, w_packed, g):
            u = gemv.w4a8_gemv_into(x2, w_packed, group_scales, g, xs, cs, bias, os_, sos, y, config, conv)
        elif dense:
            w8 = _int4_dequant_launch(w_packed, group_scales, g, torch.int8)
            int8_gemm_into(x2, w8, xs, cs, 1, bias, os_, sos, y, SCALES_W4A8, config)
        else:
            _w4a8_mma(x2, w_packed, group_scales, g, xs, cs, bias, os_, sos, y, config)
    return finish_output(y, x_q, n, conv, u)


def _w4a8_mma(x2, w_packed, group_scales, g: int, xs, cs, bias, os_, sos, y, config: GemmConfig | None) -> None:
    """The tensor-core W4A8 kernel (+ the split-K reduction)."""
    (m, k), n = x2.shape, w_packed.shape[0]
    cfg, ks, grid, even_k, per_tile = mma_plan(config, m, n, k, x2.device, False, g)
    part, cnt, spk, spm, split_last = split_k_buffers(cfg, grid, x2, y)
    with device_of(x2):
        _w4a8_gemm_kernel[grid](
            x2, w_packed, group_scales, xs, cs, bias if bias is not None else cs, os_ if os_ is not None else cs,
            y, part, cnt,
            m, n, k, g, ks,
            *x2.stride(), *w_packed.stride(), *group_scales.stride(), sos, *y.stride(), spk, spm,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, SPLIT=cfg.split_k > 1, SCALES_PER_TILE=per_tile,
            EVEN_K=even_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            SPLIT_LAST=split_last, num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False,
        )
        if cfg.split_k > 1 and not split_last:
            launch_int_reduce(part, y, xs, cs, 1, bias, os_, sos, SCALES_W4A8, cfg)
