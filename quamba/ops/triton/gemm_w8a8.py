"""Triton int8 GEMM with a fused dequantize / requantize epilogue: the kernel of ``w8a8_gemm``.

Contract of ``quamba.ops.quant.w8a8_gemm_ref``: x_q [M, K] int8 times w_q [N, K] int8, accumulated
exactly in int32 on the tensor cores (``tl.dot``), then an fp32 epilogue that performs the reference's
operations in the reference's order, one rounding each, so float outputs and int8 outputs are
bit-identical to it:
  y = float(acc) * (x_scale * w_scale[n])   [+ bias[n]]   then  -> out_dtype
                                                          or  -> clamp(round_half_even(y / out_scale[n]))
The kernels are launched with ``enable_fp_fusion=False`` so that the compiler does not contract the
multiply and the bias add into one fused multiply-add (rounded once instead of twice); the division
is IEEE-rounded: ``div_rn`` (Triton's ``/`` is an approximate division on NVIDIA GPUs); with
``QUAMBA_FAST_EPILOGUE=1`` a tensor-core tile, whose rows share each column's scale, takes the product by
that column's reciprocal corrected twice with fused multiply-adds instead (``_common.div_by_reciprocal``:
the same quotient). Rounding half to even is one ``cvt.rni`` (from ``floor`` in Triton's interpreter).

Shapes (``pick_config``): prefill (M > 64) runs [64|128, 128|256] tiles, picked against wave
quantization, in grouped order for L2 reuse; decode (M <= 64) runs [16..64, 64] tiles with split-K:
each K slice writes int32 partial sums, a second kernel adds them (exact, any order) and applies the
epilogue, so there are enough programs to keep every SM streaming weights. ``GemmConfig.split_last`` (off until
timed on a GPU; benchmarks/kernels_gemm.py's "split-last" rows) does without the second kernel: each tile's last K
slice to finish adds the partials and applies the epilogue, as the GEMVs do (``publish_partial``). The W4A8 kernels
(``gemm_w4``) share the epilogue, the split-K reduction and this dense kernel. For M <= ``gemv.GEMV_MAX_M``
the launcher hands the call to the CUDA-core GEMV (``gemv``), which streams the weights at decode sizes;
an explicit ``GemmConfig`` or ``GemvConfig`` picks the path.

Launch overhead: the launchers run on every decode step, so their host work is a few attribute checks,
one output allocation and cached plans (``functools.lru_cache`` on the shapes); scales and biases that
are already fp32, contiguous and on the device (the modules' buffers) are passed as they are.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from . import gemm_tma
from ._common import (FLOAT_DTYPES, cdiv, check_runnable, check_same_device, device_of, next_pow2, quantize_int8,
                      quantize_int8_shared)

# int8 x int8 products are at most 2^14 in magnitude, so K < 2^17 terms cannot overflow int32.
MAX_K = 2 ** 17 - 1
_INT32_INDEX_LIMIT = 2 ** 31  # the kernels index with int32 offsets
# The scale order of the fp32 epilogue, as in the two references:
SCALES_W8A8 = 0  # acc * (x_scale * w_scale)            (w8a8_gemm_ref)
SCALES_W4A8 = 1  # (acc * x_scale) * channel_scale      (w4a8_gemm_ref)


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape and launch options of one GEMM call; ``split_k`` > 1 adds the reduction kernel."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    tma: bool = False  # operand tiles through tensor descriptors (gemm_w8a8_tma; int8 weights, sm_90+, one K slice)
    persistent: bool = False  # with tma: one program per SM walks the tiles
    split_last: bool = False  # int8 kernels, split_k > 1: each tile's last K slice sums the partials, no second kernel


# ---------------------------------------------------------------------------------------------- jit helpers

@triton.jit
def tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` in grouped order: GROUP_M consecutive row tiles walk the
    column tiles together, so a weight tile is read from L2 by several row tiles in a row."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def int_epilogue(
    acc, offs_m, offs_n, M, N,
    xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr,
    sws, sos, sym, syn,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr,
):
    """Dequantize an int32 [BLOCK_M, BLOCK_N] tile in fp32, in the reference's order, and store it
    (as y's dtype, or requantized to int8 by the per-channel output scale); returns the stored tile (the int8
    values, or the fp32 ones before the cast). sws / sos are 0 for a per-tensor scale, 1 for per-channel."""
    mask_n = offs_n < N
    accf = acc.to(tl.float32)
    xs = tl.load(xs_ptr)
    ws = tl.load(ws_ptr + offs_n * sws, mask=mask_n, other=1.0)
    if SCALE_ORDER == 0:
        y = accf * (xs * ws)[None, :]
    else:
        y = (accf * xs) * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * sym + offs_n[None, :] * syn
    if REQUANT:
        out_scale = tl.load(os_ptr + offs_n * sos, mask=mask_n, other=1.0)
        if acc.shape[0] >= 16:  # a tensor-core tile: its rows share each column's scale
            y = quantize_int8_shared(y, out_scale[None, :])
        else:
            y = quantize_int8(y, out_scale[None, :])
        tl.store(y_ptrs, y, mask=mask)
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
    return y


@triton.jit
def float_epilogue(acc, offs_m, offs_n, M, N, bias_ptr, y_ptr, sym, syn, HAS_BIAS: tl.constexpr):
    """y = acc (+ bias) in fp32, stored in y's dtype (the W4A16 kernels' epilogue)."""
    mask_n = offs_n < N
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :] * syn, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_partial(acc, part_ptr, pid_k, offs_m, offs_n, M, N, spk, spm):
    """Split-K: this K slice's int32 (or fp32) partial sums into part[pid_k] ([SPLIT, M, N], N contiguous)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(part_ptr + pid_k * spk + offs_m[:, None] * spm + offs_n[None, :], acc, mask=mask)


@triton.jit
def publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Split-K within one launch (the GEMVs; the tensor-core GEMM with ``GemmConfig.split_last``): store this K
    slice's (program_id 1) partial tile into the tile's workspace [SPLIT, BLOCK_M, BLOCK_N], then count it; returns
    how many slices were counted before (SPLIT - 1: this program is the tile's last and finishes it)."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tl.store(part_ptr + (tile * SPLIT + tl.program_id(1)) * (BLOCK_M * BLOCK_N) + offs, acc)
    tl.debug_barrier()  # every thread's stores precede the (single-thread) release below
    return tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")


@triton.jit
def sum_partials(part_ptr, cnt_ptr, tile, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split-K, last slice of a tile: the partial tiles summed in slice order (deterministic); resets the counter."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    ptrs = part_ptr + tile * SPLIT * (BLOCK_M * BLOCK_N) + offs
    total = tl.load(ptrs, cache_modifier=".cg")  # .cg: from L2, where the other SMs' partials are
    for s in tl.static_range(1, SPLIT):
        total += tl.load(ptrs + s * (BLOCK_M * BLOCK_N), cache_modifier=".cg")
    tl.store(cnt_ptr + tile, 0)
    return total


@triton.jit
def finish_int_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                    sws, sos, sym, syn, spk, spm, HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr,
                    SCALE_ORDER: tl.constexpr, SPLIT: tl.constexpr, SPLIT_LAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A tensor-core kernel's int32 tile over K slice program_id(1): the epilogue; with SPLIT, the slice's partial
    sums for ``_int_splitk_reduce_kernel``; with SPLIT_LAST (the number of slices), the partials to the tile's
    workspace, and the tile's last slice to finish adds them and runs the epilogue."""
    if SPLIT_LAST:
        tile = tl.program_id(0)
        if publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT_LAST, BLOCK_M, BLOCK_N) == SPLIT_LAST - 1:
            int_epilogue(sum_partials(part_ptr, cnt_ptr, tile, SPLIT_LAST, BLOCK_M, BLOCK_N), offs_m, offs_n, M, N,
                         xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, sym, syn, HAS_BIAS, REQUANT, SCALE_ORDER)
    elif SPLIT:
        store_partial(acc, part_ptr, tl.program_id(1), offs_m, offs_n, M, N, spk, spm)
    else:
        int_epilogue(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, sym, syn,
                     HAS_BIAS, REQUANT, SCALE_ORDER)


# ---------------------------------------------------------------------------------------------- kernels

@triton.jit(do_not_specialize=["M"])  # M = 1 and M = 16 share one compiled kernel
def _w8a8_gemm_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, k_split,
    sxm, sxk, swn, swk, sws, sos, sym, syn, spk, spm,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr, SPLIT: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_LAST: tl.constexpr = 0,
):
    """One [BLOCK_M, BLOCK_N] tile of x @ w^T over K slice pid_k, finished by the epilogue or, when SPLIT,
    stored as int32 partial sums; grid (row x column tiles, K slices). SPLIT_LAST = the number of K slices (> 1):
    the partials go to the tile's workspace and the tile's last slice to finish adds them and runs the epilogue
    (``publish_partial``), instead of ``_int_splitk_reduce_kernel``."""
    pid_m, pid_n = tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows / columns past the edge read row M-1 / ... wrapped in range (never stored): no masks in the loop.
    rows = offs_m % M
    cols = offs_n % N
    k_lo = pid_k * k_split
    x_ptrs = x_ptr + rows[:, None] * sxm + (k_lo + offs_k)[None, :] * sxk
    w_ptrs = w_ptr + cols[None, :] * swn + (k_lo + offs_k)[:, None] * swk  # [BLOCK_K, BLOCK_N], K-major
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(k_lo, tl.minimum(k_lo + k_split, K), BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            in_k = (k0 + offs_k) < K
            a = tl.load(x_ptrs, mask=in_k[None, :], other=0)
            b = tl.load(w_ptrs, mask=in_k[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # triton < 3.7 does not take the type from acc
        x_ptrs += BLOCK_K * sxk
        w_ptrs += BLOCK_K * swk
    finish_int_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                    sws, sos, sym, syn, spk, spm, HAS_BIAS, REQUANT, SCALE_ORDER, SPLIT, SPLIT_LAST, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["M", "n_split"])
def _int_splitk_reduce_kernel(
    part_ptr, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr,
    M, N, n_split, spk, spm, sws, sos, sym, syn,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Sum the int32 partials of the K slices (exact in any order) and apply the epilogue; grid (M tiles, N tiles)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ptrs = part_ptr + offs_m[:, None] * spm + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for s in range(n_split):
        acc += tl.load(ptrs + s * spk, mask=mask, other=0)
    int_epilogue(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, sym, syn,
                 HAS_BIAS, REQUANT, SCALE_ORDER)


# ---------------------------------------------------------------------------------------------- split-K buffers

COUNTER_SLOTS = 1 << 14  # split-K tiles per launch (N blocks x M blocks); 64 KiB of int32 per device
_COUNTERS: dict[int, torch.Tensor] = {}


def check_counter_slots(tiles: int) -> None:
    """A launch that splits K within itself needs a counter per tile."""
    if tiles > COUNTER_SLOTS:
        raise QuambaError(f"split-K over {tiles} tiles exceeds the {COUNTER_SLOTS} counters: use one K slice or "
                          "larger blocks")


def split_buffers(t: torch.Tensor, work: int, dtype: torch.dtype, dummy: torch.Tensor):
    """(partials workspace of ``work`` elements, the device's counters) of a launch that splits K within itself
    (``publish_partial``); (dummy, dummy) without split. The counters are one zeroed int32 buffer per device, each
    tile's counter reset by its last slice: allocated at the first such launch (run one eagerly before capturing a
    CUDA graph); kernels using them must not run concurrently on two streams of one device."""
    if not work:
        return dummy, dummy
    key = t.get_device()
    counters = _COUNTERS.get(key)
    if counters is None:
        if t.is_cuda and torch.cuda.is_current_stream_capturing():
            raise QuambaError("the first split-K GEMV or GEMM on a device allocates its counters, which a CUDA graph "
                              "capture cannot do: run the model once eagerly (a warm-up) before capturing")
        counters = _COUNTERS[key] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=t.device)
    return torch.empty(work, dtype=dtype, device=t.device), counters


# ---------------------------------------------------------------------------------------------- configs

@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def block_k_for_groups(preferred: int, group_size: int | None, minimum: int) -> int | None:
    """The largest power-of-two block_k <= preferred (>= minimum) that divides group_size, so that a K
    tile lies inside one scale group; None when there is none (the kernel then gathers a scale per column)."""
    if group_size is None:
        return preferred
    bk = preferred
    while bk >= minimum:
        if group_size % bk == 0:
            return bk
        bk //= 2
    return None


# Prefill tile candidates (block_m, block_n, assumed efficiency of one full wave of such tiles relative to the
# largest): the choice minimises waves x tile area / efficiency, so that a last, part-filled wave of big tiles
# (e.g. M=1024, N=2560: 160 tiles of 128 x 128 on 132 SMs) is traded for more, smaller ones. The efficiencies
# are assumptions to check with benchmarks/kernels_gemm.py. Packed (W4) kernels dequantize a [block_n, block_k]
# tile in registers, so they stay at block_n 128.
_PREFILL_TILES = {
    "int8": ((128, 256, 1.0), (128, 128, 0.95), (64, 128, 0.8)),
    "packed": ((128, 128, 1.0), (64, 128, 0.8)),
}
_DECODE_PROGRAMS_PER_SM = 8  # memory-bound decode: enough small programs to balance the SMs' weight streams


@functools.lru_cache(maxsize=4096)
def pick_config(m: int, n: int, k: int, device: torch.device, float_dot: bool = False,
                group_size: int | None = None, packed: bool = False) -> tuple[GemmConfig, bool]:
    """Tile shape for an [M, K] x [K, N] product on ``device``; returns (config, scales_per_tile).

    CUDA (chosen for H100 by reasoning; benchmarks/kernels_gemm.py measures them): M <= 64 is memory bound
    (decode): [16..64, 64] tiles, long K steps, split-K into ~8 programs per SM; larger M: 64..128-row tiles
    chosen against wave quantization (``_PREFILL_TILES``), split-K when even the small tiles leave SMs idle.
    Elsewhere (Triton's interpreter): one small fixed shape, because interpreted programs are slow.
    ``float_dot``: fp16/bf16 operands (half the K step of int8 for the same bytes); ``group_size``: the
    K tile must not straddle a scale group (see block_k_for_groups); ``packed``: int4 weights unpacked in registers.
    """
    # int8 tensor-core instructions take K in steps of 32; packed int4 tiles of block_k 16 gave wrong W4A16 products on
    # an H100 (Triton 3.6, test_cuda_w4a16_tensor_core_block_k_16), so packed weights never get them there either
    min_k = 16 if float_dot and not packed else 32
    if device.type != "cuda":
        cfg = GemmConfig(block_m=max(16, min(32, next_pow2(m))), block_n=max(16, min(32, next_pow2(n))),
                         block_k=64, num_warps=1, num_stages=1)
    elif m <= 64:
        cfg = GemmConfig(block_m=max(16, next_pow2(m)), block_n=64, block_k=128 if float_dot else 256,
                         num_warps=4, num_stages=4)
    else:
        cfg = _prefill_tiles(m, n, "packed" if packed or float_dot else "int8", _sm_count(device.index or 0),
                             block_k=64 if float_dot else 128)
    bk = block_k_for_groups(cfg.block_k, group_size, min_k)
    per_tile = bk is not None
    cfg = replace(cfg, block_k=bk if per_tile else cfg.block_k)
    if device.type == "cuda":
        sms = _sm_count(device.index or 0)
        if m <= 64:
            cfg = with_split_k(cfg, m, n, k, _DECODE_PROGRAMS_PER_SM * sms)
        elif cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n) < sms // 2:
            cfg = with_split_k(cfg, m, n, k, sms)
    return cfg, per_tile


def _prefill_tiles(m: int, n: int, kind: str, sms: int, block_k: int) -> GemmConfig:
    def cost(tile):
        bm, bn, eff = tile
        return cdiv(cdiv(m, bm) * cdiv(n, bn), sms) * bm * bn / eff

    bm, bn, _ = min(_PREFILL_TILES[kind], key=cost)
    return GemmConfig(block_m=bm, block_n=bn, block_k=block_k, num_warps=8 if bm == 128 else 4,
                      num_stages=3 if bn == 256 else 4)


def with_split_k(cfg: GemmConfig, m: int, n: int, k: int, target_programs: int) -> GemmConfig:
    """Split K into equal slices of at least two K blocks until there are about ``target_programs`` programs
    (at most 16 slices: each adds an int32 / fp32 [M, N] partial to write and read back)."""
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    k_blocks = cdiv(k, cfg.block_k)
    split = max(1, min(target_programs // max(tiles, 1), k_blocks // 2, 16))
    return replace(cfg, split_k=split)


@functools.lru_cache(maxsize=4096)
def split_plan(cfg: GemmConfig, k: int) -> tuple[GemmConfig, int]:
    """(cfg with the number of non-empty K slices, slice length in whole K blocks)."""
    k_blocks = max(cdiv(k, cfg.block_k), 1)
    per_slice = cdiv(k_blocks, max(cfg.split_k, 1))
    return replace(cfg, split_k=cdiv(k_blocks, per_slice)), per_slice * cfg.block_k


# ---------------------------------------------------------------------------------------------- launch

def _as_scale(name: str, s: torch.Tensor | float, n: int, device: torch.device, allow_channels: bool):
    """fp32 scale tensor on ``device`` and its stride for the kernel (0: one value, 1: one per channel).

    Fast path: an fp32 tensor already on the device, one value or a contiguous [N] (the modules' buffers), is
    used as it is. Otherwise a one-value CPU tensor (or Python float) is moved (torch broadcasts CPU scalars
    onto the GPU too); anything larger must already be on the activations' device.
    """
    if isinstance(s, torch.Tensor) and s.dtype is torch.float32 and s.device == device:
        numel = s.numel()
        if numel == 1:
            return s, 0
        if allow_channels and numel == n and s.dim() == 1 and s.stride(0) == 1:
            return s, 1
    s = torch.as_tensor(s, dtype=torch.float32, device=device) if not torch.is_tensor(s) else s
    if s.device != device:
        if s.numel() != 1:
            raise QuambaError(f"{name} is on {s.device} but the activations are on {device}: move them together")
        s = s.to(device)
    s = s.float().reshape(-1)
    if s.numel() == 1:
        return s, 0
    if allow_channels and s.numel() == n:
        return s.contiguous(), 1
    expected = f"one value or {n} (one per output channel)" if allow_channels else "one value (per tensor)"
    raise QuambaError(f"{name} has {s.numel()} values, expected {expected}")


def as_bias(bias: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    """bias [N] as the fp32 contiguous tensor the kernels read (as it is when it already is one)."""
    if bias is None:
        return None
    if bias.dim() != 1 or bias.shape[0] != n:
        raise QuambaError(f"bias has shape {list(bias.shape)}, expected [{n}]")
    if bias.device != device:
        raise QuambaError(f"bias is on {bias.device} but the activations are on {device}: move them together")
    if bias.dtype != torch.float32 or bias.stride(0) != 1:
        bias = bias.float().contiguous()
    return bias


def int_epilogue_args(x_scale, w_scale, bias, out_scale, n: int, device, x_scale_name: str, w_scale_name: str):
    """The epilogue's tensors as the kernels take them: (xs, ws, sws, bias, os, sos)."""
    xs, _ = _as_scale(x_scale_name, x_scale, n, device, allow_channels=False)
    ws, sws = _as_scale(w_scale_name, w_scale, n, device, allow_channels=True)
    os_, sos = (None, 0) if out_scale is None else _as_scale("out_scale", out_scale, n, device, allow_channels=True)
    return xs, ws, sws, as_bias(bias, n, device), os_, sos


def new_output(m: int, n: int, device, requant: bool, out_dtype: torch.dtype) -> torch.Tensor:
    if requant:
        return torch.empty(m, n, device=device, dtype=torch.int8)
    if out_dtype not in FLOAT_DTYPES:
        raise QuambaError(f"out_dtype {out_dtype} is not supported: use float16, bfloat16 or float32 "
                          "(or out_scale for an int8 output)")
    return torch.empty(m, n, device=device, dtype=out_dtype)


def check_index_range(*tensors: torch.Tensor) -> None:
    largest = max(t.numel() for t in tensors)
    if largest >= _INT32_INDEX_LIMIT:
        raise QuambaError(f"a GEMM operand of {largest} elements exceeds the kernels' int32 indexing: split the batch")


def rows_of(x: torch.Tensor, k: int) -> torch.Tensor:
    """[..., K] -> [M, K] (a view when possible; x itself when already 2-D)."""
    if x.dim() == 2:
        return x
    return x.reshape(-1, k) if k else x.reshape(math.prod(x.shape[:-1]), k)


@functools.lru_cache(maxsize=4096)
def mma_plan(config: GemmConfig | None, m: int, n: int, k: int, device: torch.device, float_dot: bool = False,
             group_size: int | None = None, split_k: bool = True):
    """The tensor-core kernels' launch plan, cached: (config with its split, K slice, grid, EVEN_K, per-tile
    scales). ``group_size``: packed weights' group size (None for dense int8 / float weights); ``split_k``
    False: the kernel has no split-K, so the picked config gets one K slice."""
    if config is None:
        config, per_tile = pick_config(m, n, k, device, float_dot=float_dot, group_size=group_size,
                                       packed=group_size is not None)
        if not split_k:
            config = replace(config, split_k=1)
    else:
        per_tile = group_size is None or group_size % config.block_k == 0
    if group_size is not None and config.block_k % 2:
        raise QuambaError(f"block_k must be even to unpack int4 pairs, got {config.block_k}")
    if group_size is not None and device.type == "cuda" and config.block_k < 32:
        raise QuambaError(f"block_k {config.block_k} with packed int4 weights computes wrong products on CUDA "
                          "(Triton 3.6): use block_k >= 32")
    config, ks = split_plan(config, k)
    grid = (cdiv(m, config.block_m) * cdiv(n, config.block_n), config.split_k)
    return config, ks, grid, k % config.block_k == 0 and ks % config.block_k == 0, per_tile


def split_k_buffers(cfg: GemmConfig, grid: tuple, x2: torch.Tensor, y: torch.Tensor):
    """(part, counters, part's slice and row strides, SPLIT_LAST) of a tensor-core launch: without split, y
    stands in; with split, part [SPLIT, M, N] int32 for the reduction kernel or, with ``cfg.split_last``, a
    tile-major workspace and the device's counters (``split_buffers``)."""
    if cfg.split_k == 1:
        return y, y, 0, 0, 0
    if cfg.split_last:
        check_counter_slots(grid[0])
        part, cnt = split_buffers(x2, grid[0] * cfg.split_k * cfg.block_m * cfg.block_n, torch.int32, y)
        return part, cnt, 0, 0, cfg.split_k
    part = torch.empty(cfg.split_k, x2.shape[0], y.shape[1], device=x2.device, dtype=torch.int32)
    return part, y, part.stride(0), part.stride(1), 0


def launch_int_reduce(part, y, xs, ws, sws, bias, os_, sos, scale_order: int, cfg: GemmConfig) -> None:
    """Second pass of split-K: sum part [SPLIT, M, N] int32, epilogue into y [M, N]."""
    m, n = y.shape
    bm, bn = min(32, max(16, next_pow2(m))), 128 if y.is_cuda else 32
    _int_splitk_reduce_kernel[(cdiv(m, bm), cdiv(n, bn))](
        part, xs, ws, bias if bias is not None else ws, os_ if os_ is not None else ws, y,
        m, n, cfg.split_k, part.stride(0), part.stride(1), sws, sos, y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, REQUANT=os_ is not None, SCALE_ORDER=scale_order,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=4, enable_fp_fusion=False,
    )


def int8_gemm_into(x2, w8, xs, ws, sws, bias, os_, sos, y, scale_order: int, config: GemmConfig | None = None):
    """y [M, N] = epilogue(x2 [M, K] int8 @ w8 [N, K] int8): the dense kernel (+ split-K reduction)."""
    m, k = x2.shape
    n = w8.shape[0]
    cfg, ks, grid, even_k, _ = mma_plan(config, m, n, k, x2.device)
    if config is None:  # the default: TMA for prefill shapes when the switch is on and the operands allow it
        tma = m > 64 and cfg.split_k == 1 and gemm_tma() and tma_ok(x2, w8)
    else:
        tma = cfg.tma
        if tma and (cfg.split_k > 1 or not tma_ok(x2, w8)):
            raise QuambaError("GemmConfig(tma=True) needs one K slice, an sm_90+ GPU (or the interpreter) and "
                              "operands with unit column stride and 16-byte aligned rows")
    if tma:
        with device_of(x2):
            gemm_w8a8_tma.w8a8_gemm_tma_into(x2, w8, xs, ws, sws, bias, os_, sos, y, scale_order, cfg,
                                              _sm_count(x2.get_device()) if x2.is_cuda else 1)
        return
    part, cnt, spk, spm, split_last = split_k_buffers(cfg, grid, x2, y)
    with device_of(x2):
        _w8a8_gemm_kernel[grid](
            x2, w8, xs, ws, bias if bias is not None else ws, os_ if os_ is not None else ws, y, part, cnt,
            m, n, k, ks,
            *x2.stride(), *w8.stride(), sws, sos, *y.stride(), spk, spm,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, SCALE_ORDER=scale_order, SPLIT=cfg.split_k > 1,
            EVEN_K=even_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, SPLIT_LAST=split_last,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False,
        )
        if cfg.split_k > 1 and not split_last:
            launch_int_reduce(part, y, xs, ws, sws, bias, os_, sos, scale_order, cfg)


def _w8a8_gemm_launch(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float16,
    config=None,
    conv=None,
):
    """Checks and launches the W8A8 GEMM; same contract as ``w8a8_gemm_ref`` (and ``w8a8_gemm``'s ``conv``).

    x_q: [..., K] int8; x_scale: one fp32 value; w_q: [N, K] int8; w_scale: [N] or one value; bias: [N] or
    None; out_scale: [N] or one value for an int8 output. Returns [..., N] (int8 or ``out_dtype``).
    ``config``: a ``GemmConfig`` (tensor-core kernel) or ``gemv.GemvConfig`` (CUDA-core GEMV) overrides the
    choice (tests, benchmarks); by default M <= ``gemv.GEMV_MAX_M["w8a8"]`` rows take the GEMV.
    """
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise QuambaError(f"w8a8_gemm takes int8 x_q and w_q, got {x_q.dtype} and {w_q.dtype}")
    if w_q.dim() != 2 or x_q.dim() == 0 or x_q.shape[-1] != w_q.shape[1]:
        raise QuambaError(f"x_q {list(x_q.shape)} and w_q {list(w_q.shape)} do not fit: expected [..., K] and [N, K]")
    n, k = w_q.shape
    if k > MAX_K:
        raise QuambaError(f"K={k} may overflow the int32 accumulator (max {MAX_K}): use w8a8_gemm_ref")
    device = x_q.device
    if w_q.device != device:
        check_same_device(("x_q", x_q), ("w_q", w_q))
    check_runnable(_w8a8_gemm_kernel, x_q)
    xs, ws, sws, bias, os_, sos = int_epilogue_args(x_scale, w_scale, bias, out_scale, n, device,
                                                    "x_scale", "w_scale")
    x2 = rows_of(x_q, k)
    m = x2.shape[0]
    y = new_output(m, n, device, os_ is not None, out_dtype)
    check_index_range(x2, w_q, y)
    u = None
    if m and n:
        if gemv.use_gemv("w8a8", m, config, k, w_q):
            u = gemv.w8a8_gemv_into(x2, w_q, xs, ws, sws, bias, os_, sos, y, SCALES_W8A8, config, conv)
        else:
            int8_gemm_into(x2, w_q, xs, ws, sws, bias, os_, sos, y, SCALES_W8A8, config)
    return finish_output(y, x_q, n, conv, u)


def finish_output(y: torch.Tensor, x_q: torch.Tensor, n: int, conv, u: torch.Tensor | None):
    """A launcher's result: y in x_q's leading shape, or with ``conv`` (a ``ConvStep``, which needs 2-D x_q)
    (y, u_q): u from the GEMV that stepped the conv in its epilogue, else the conv's own kernel run on y now."""
    if conv is None:
        return y if x_q.dim() == 2 else y.reshape(*x_q.shape[:-1], n)
    return y, u if u is not None else conv.run(y)


# gemv's and the TMA kernel use this file's epilogue, so they import this module: import them last, once everything
# is defined
from . import gemm_w8a8_tma, gemv  # noqa: E402
from .gemm_w8a8_tma import tma_ok  # noqa: E402
