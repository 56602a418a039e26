"""Memory-bound GEMV kernels for decode (few rows of x): W8A8, W4A8 and W4A16 on the CUDA cores.

At decode sizes a quantized linear is a stream of its weights: [N, K] int8 (W8A8) or packed uint8 [N, K // 2]
(W4, the low nibble holding the even k, 4-bit two's complement). The kernels read the weights as 32-bit words
(4 int8 or 8 int4 values along K) and spend as few instructions per weight as they can, since at these sizes an
SM issues about one instruction per weight byte it receives:
  W8A8  one ``dp4a`` per word (4 int8 x int8 products summed into int32): 1 / 4 instruction per weight.
  W4A8  a word's nibbles become two words of bytes q + 8 (even k, odd k: a mask, a shift, a mask), each meets
        x's even / odd bytes in a ``dp4a``; the + 8 is taken back by starting the sum at -8 * sum(x) (a
        ``dp4a`` of x with -8 bytes, once per x word): 5 instructions per 8 weights.
  W4A16 nibble i, shifted to mantissa bits 19..22 and OR-ed into the exponent of 1.0, is the fp32 value
        f = 1 + (q + 8) / 16 exactly (a shift and a bitwise op); q / 16 = f - 1.5, so a word contributes
        -1.5 * sum(x) + sum(x_i * f_i) (fp32 multiply-adds) and the group scale is taken times 16:
        3 instructions per weight, and no int -> float conversion.
The step's x words (W4A8: split into even and odd bytes with ``prmt``; W4A16: converted to fp32) are prepared
once per thread and shared by every weight row the thread holds.

Each program owns BLOCK_N output channels and BLOCK_M rows of x and walks K in steps of BLOCK_K (BLOCK_W
words). The sums stay in a [BLOCK_M, BLOCK_N, BLOCK_W] register accumulator, one per word lane, and are reduced
over the words once, after the loop: no cross-thread reduction per step. A W4 group scale multiplies each
word's sum as it is accumulated (per row and step when a step lies in one group, per word otherwise, once at
the end when a row has one group).

Exactness: the references' contracts hold as in gemm_w8a8 / gemm_w4.
  W8A8 / W4A8: exact integer sums, then gemm_w8a8's fp32 epilogue (``int_epilogue``: the reference's order,
  ``div_rn``, ties-to-even requantization), so outputs are bit-identical to the references.
  W4A16: fp32 sums of fp32 products; each word's sum is offset by -1.5 * sum(x) as described, so its rounding
  error is that of summing |x| * 3.5 rather than |x * q| / 16 terms: a few fp32 ulps of sum(|x|) per group,
  far below the output's fp16 / bf16 rounding (the tests state the bound).
``dp4a`` and ``prmt`` are PTX (``tl.inline_asm_elementwise``); Triton's interpreter, which cannot run PTX, gets
the same word arithmetic written with shifts and masks (``USE_ASM`` False), so the CPU tests check every index,
mask and correction of the kernels, and the GPU tests the PTX.

Eligibility (``gemv_unfit``): K a multiple of the word (4 or 8 values), W4 groups a multiple of 8 (or one group
per row), weight rows 4-byte aligned and contiguous along K. Other shapes take the tensor-core kernels. x is
copied first if its rows are not 4-byte aligned words.

Weights before the wait (``prefetch``): in a decode step every GEMV follows a small kernel that writes its x, and
with dependent launch (``_common``) the GEMV's programs are resident while that kernel still runs. The weights do
not depend on it, so each program requests its first step of weights before ``griddepcontrol.wait`` and only x
waits; a program whose slice is one step has all of its weights in flight before its producer has finished. With
``_common.EARLY_PARAMS`` (on) the W4 group scales come a step ahead with their weights too, and K slice 0 of each
tile asks L2 for what the epilogue will read (``_prefetch_tail``), which otherwise costs a DRAM round trip at the
very end of the kernel. Only parameters are read before the wait (never x, the split-K buffers, y or the conv
state's updates), so no access races the producer.

Whole slice to L2 (``GemvConfig.l2_prefetch``): the register lookahead holds one or two steps, because registers
bound how many programs an SM keeps; a ``prefetch.global.L2`` holds none. With it, each program also asks L2 for
every weight line of its K slice before the wait (a hint per 64 bytes of each row), so the whole matrix is requested
while the previous kernel runs, as far as programs are resident, and the later steps' loads meet L2 rather than DRAM.
Off: W4A8 mamba2-2.7b decodes at 1.672 ms a token with it against 1.644 (H100, 2026-12-07, decode_ab_gemv-l2_*).

Split-K (``split`` > 1, for shapes with few N blocks): program (tile, s) sums K slice s and stores its partial
sums into a per-tile workspace; the program that finishes last (an int32 atomic counter per tile, acq_rel at GPU
scope, after a CTA barrier so every thread's partial is written) adds the partials in slice order 0, 1, ... and
runs the epilogue, so results do not depend on which slice finishes last (deterministic, fp32 included); it then
resets its counter to 0 for the next launch (``gemm_w8a8.publish_partial`` / ``sum_partials``, shared with the
tensor-core GEMM's ``split_last``). The counters live in one zeroed int32 buffer per device, allocated
at the first split launch (do one eager call before capturing a CUDA graph); kernels using them must not run
concurrently on two streams of one device. Everything else is sized by shapes only: CUDA-graph capturable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import cdiv, device_of, early_params, next_pow2, pdl_start, prefetch_l2, use_pdl
from ._common import dp4a as _dp4a
from .conv1d import conv_step_args, conv_step_tile
from .gemm_w8a8 import (_sm_count, check_counter_slots, float_epilogue, int_epilogue, publish_partial,
                         split_buffers, sum_partials)

# The formats: the FMT constexpr of the shared loop (jit code cannot read module globals: the kernels pass literals)
FMT_W8A8, FMT_W4A8, FMT_W4A16 = 0, 1, 2
# How a W4 group scale meets the sums: the SCALE_MODE constexpr
SCALE_PER_ROW, SCALE_PER_STEP, SCALE_PER_WORD = 0, 1, 2

# The launchers take this path for M <= GEMV_MAX_M[format] (M = rows of x after flattening the batch dims)
GEMV_MAX_M = {"w8a8": 4, "w4a8": 8, "w4a16": 8}
VALUES_PER_WORD = {"w8a8": 4, "w4a8": 8, "w4a16": 8}
# weight bytes a default config keeps in flight per SM, and the most programs per SM for slices of two steps
# (see default_config)
IN_FLIGHT_PER_SM = {"w8a8": 24 * 1024, "w4a8": 96 * 1024, "w4a16": 96 * 1024}
SHORT_SLICE_PROGRAMS_PER_SM = 14


@dataclass(frozen=True)
class GemvConfig:
    """Tile shape and launch options of one GEMV call (all block sizes powers of two).

    block_m: rows of x per program; block_n: output channels per program; block_k: K per loop step (a multiple
    of the 4 (W8A8) or 8 (W4) values of a word); split: K slices, summed by the last one to finish;
    num_stages: software pipelining of the loop's loads (``tl.range``; 1: none); unroll: the K loop unrolled that
    many times (more loads in flight per thread); prefetch: each program requests its first ``lookahead`` (1 or 2)
    steps' weights before it waits for the kernel that wrote x (dependent launch), then keeps that many steps of
    weights in flight ahead (2: a slice of two steps is requested whole before the wait, for two steps' registers;
    on an H100 the default configs with 2 made W4A8 mamba2-2.7b's decode step slower, 1.745 against 1.660 ms);
    l2_prefetch: each program also asks L2 for its whole K slice of weights before the wait (no registers held).
    """

    block_m: int = 1
    block_n: int = 32
    block_k: int = 128
    split: int = 1
    num_warps: int = 4
    num_stages: int = 1
    unroll: int = 1
    prefetch: bool = True
    lookahead: int = 1
    l2_prefetch: bool = False

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise QuambaError(f"GemvConfig.{name}={v} must be a power of two")
        if self.block_k < 4 or min(self.split, self.num_stages, self.num_warps, self.unroll) < 1:
            raise QuambaError(f"GemvConfig {self} is invalid: block_k >= 4; split, num_stages, num_warps, "
                              "unroll >= 1")
        if self.lookahead not in (1, 2):
            raise QuambaError(f"GemvConfig.lookahead={self.lookahead} must be 1 or 2 (steps of weights in flight)")

    def describe(self) -> str:
        unroll = f" u{self.unroll}" if self.unroll > 1 else ""
        prefetch = (f" ahead{self.lookahead}" if self.lookahead > 1 else "") if self.prefetch else " no-prefetch"
        l2 = " l2" if self.l2_prefetch else ""
        return (f"gemv {self.block_m}x{self.block_n}x{self.block_k} split{self.split} w{self.num_warps} "
                f"s{self.num_stages}{unroll}{prefetch}{l2}")


# ---------------------------------------------------------------------------------------------- jit helpers

@triton.jit
def _even_odd_bytes(a, b, USE_ASM: tl.constexpr):
    """Words a = (x0 x1 x2 x3), b = (x4 .. x7), bytes low first -> ((x0 x2 x4 x6), (x1 x3 x5 x7))."""
    if USE_ASM:
        even = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x6420;", "=r,r,r", [a, b], dtype=tl.int32,
                                         is_pure=True, pack=1)
        odd = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7531;", "=r,r,r", [a, b], dtype=tl.int32,
                                        is_pure=True, pack=1)
    else:
        even = (a & 0xFF) | ((a >> 8) & 0xFF00) | ((b & 0xFF) << 16) | ((b & 0xFF0000) << 8)
        odd = ((a >> 8) & 0xFF) | ((a >> 16) & 0xFF00) | ((b << 8) & 0xFF0000) | (b & -16777216)  # 0xFF000000
    return even, odd


@triton.jit
def _x8(x_ptrs, mask, MASKED: tl.constexpr):
    """The eight x values (fp32) of each weight word, x_ptrs pointing at the first: eight loads shaped like the
    words (the same registers as the weights they meet, no layout change; L1 serves the repeats)."""
    if MASKED:
        x0 = tl.load(x_ptrs, mask=mask, other=0).to(tl.float32)
        x1 = tl.load(x_ptrs + 1, mask=mask, other=0).to(tl.float32)
        x2 = tl.load(x_ptrs + 2, mask=mask, other=0).to(tl.float32)
        x3 = tl.load(x_ptrs + 3, mask=mask, other=0).to(tl.float32)
        x4 = tl.load(x_ptrs + 4, mask=mask, other=0).to(tl.float32)
        x5 = tl.load(x_ptrs + 5, mask=mask, other=0).to(tl.float32)
        x6 = tl.load(x_ptrs + 6, mask=mask, other=0).to(tl.float32)
        x7 = tl.load(x_ptrs + 7, mask=mask, other=0).to(tl.float32)
    else:
        x0 = tl.load(x_ptrs).to(tl.float32)
        x1 = tl.load(x_ptrs + 1).to(tl.float32)
        x2 = tl.load(x_ptrs + 2).to(tl.float32)
        x3 = tl.load(x_ptrs + 3).to(tl.float32)
        x4 = tl.load(x_ptrs + 4).to(tl.float32)
        x5 = tl.load(x_ptrs + 5).to(tl.float32)
        x6 = tl.load(x_ptrs + 6).to(tl.float32)
        x7 = tl.load(x_ptrs + 7).to(tl.float32)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _nibble_f32(w, i: tl.constexpr, one_bits):
    """Nibble i of int32 words w (4-bit two's complement q) as the fp32 1 + (q + 8) / 16, exactly: the nibble
    moved to mantissa bits 19..22, its sign bit flipped (q + 8 = n ^ 8) and its exponent set by one XOR with
    ``one_bits`` = 0x3FC00000 (a kernel argument rather than a literal, so that the mask and the XOR compile to
    one three-input bitwise instruction: two literals would need two)."""
    if 4 * i <= 19:
        sh = w << (19 - 4 * i)
    else:
        sh = w >> (4 * i - 19)  # arithmetic shift: the bits it fills are masked off
    return ((sh & 0x00780000) ^ one_bits).to(tl.float32, bitcast=True)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(tile id, row offsets, column offsets, the rows and columns clamped into range) of this program, from the
    grid (N blocks, K slices, M blocks): no integer division (M is a runtime value). Clamping (a min, where a wrap
    would be a division too) gives every load an in-range address; what the surplus rows compute is never stored."""
    pid_n, pid_m = tl.program_id(0), tl.program_id(2)
    tile = pid_n * tl.num_programs(2) + pid_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return tile, offs_m, offs_n, tl.minimum(offs_m, M - 1), tl.minimum(offs_n, N - 1)


@triton.jit
def _w_ahead(w_ptrs, k0, D: tl.constexpr, k_hi, offs_w, EVEN_K: tl.constexpr, VPW: tl.constexpr,
             BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """The weight words D steps after step k0 (w_ptrs at step k0). Past the slice: EVEN_K re-reads step k0 (cached)
    instead of masking, which would split the 16-byte loads; otherwise masked (0)."""
    if EVEN_K:
        return tl.load(w_ptrs + D * BLOCK_W * (k0 + D * BLOCK_K < k_hi).to(tl.int32))
    return tl.load(w_ptrs + D * BLOCK_W, mask=((k0 + D * BLOCK_K + VPW * offs_w) < k_hi)[None, None, :], other=0)


@triton.jit
def _s_ahead(s_cols, k0, D: tl.constexpr, k_hi, G: tl.constexpr, ssg, BLOCK_K: tl.constexpr):
    """The group scales ([1, BLOCK_N, 1]) of the step D steps after step k0 (past the slice: step k0's again)."""
    return tl.load(s_cols + (tl.where(k0 + D * BLOCK_K < k_hi, k0 + D * BLOCK_K, k0) // G) * ssg)


@triton.jit
def _slice_to_l2(row_ptrs, n_words, L2_PTS: tl.constexpr, USE_ASM: tl.constexpr):
    """Asks L2 for every line of words [0, n_words) after each of row_ptrs ([BLOCK_N, 1] int32 pointers): a hint every
    16 words (64 bytes, half a line, so no line is skipped whatever the alignment) and one at the last word;
    L2_PTS >= cdiv(n_words, 16) + 1 points a row (the surplus repeats the last word)."""
    offs = tl.minimum(tl.arange(0, L2_PTS) * 16, n_words - 1)
    prefetch_l2(row_ptrs + offs[None, :], USE_ASM)


@triton.jit
def _accumulate(
    x_ptr, w_ptr, s_ptr, rows, cols, w_slice, K, sxm, swn, ssn, ssg, bits,
    FMT: tl.constexpr, G: tl.constexpr, SCALE_MODE: tl.constexpr, USE_ASM: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr, LOOKAHEAD: tl.constexpr, USE_PDL: tl.constexpr,
    EARLY: tl.constexpr, L2_PTS: tl.constexpr,
):
    """x[rows, slice] @ W[cols, slice]^T as [BLOCK_M, BLOCK_N] (int32 for W8A8 / W4A8, fp32 for W4A16; W4 sums
    times their group scales), for K slice ``program_id(1)`` of ``w_slice`` weight words.

    rows / cols are in range (the callers clamp them; never stored out of range), so only K needs masks (and only
    when not EVEN_K): x words past K read as 0, which makes every term of theirs 0, corrections included.
    sxm: x's row stride in words (W8A8 / W4A8: int32 words of 4 int8; W4A16: elements); swn: W's in words.
    bits: a bit pattern the launcher passes as an argument (see ``_nibble_f32``): W4A8 0x08080808, W4A16
    0x3FC00000. L2_PTS > 0: the slice's weights are first asked of L2 (``_slice_to_l2``)."""
    VPW: tl.constexpr = 4 if FMT == 0 else 8  # values per weight word
    BLOCK_W: tl.constexpr = BLOCK_K // VPW
    offs_w = tl.arange(0, BLOCK_W)
    kw_lo = tl.program_id(1) * w_slice  # in words: a multiple of w_slice keeps the loads' alignment visible
    k_lo = kw_lo * VPW
    k_hi = tl.minimum(k_lo + w_slice * VPW, K)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    w_ptrs = w32 + cols[None, :, None] * swn + (kw_lo + offs_w)[None, None, :]  # [1, BLOCK_N, BLOCK_W]
    r3 = rows[:, None, None]
    if FMT == 0:
        x_ptrs = x_ptr.to(tl.pointer_type(tl.int32)) + r3 * sxm + (kw_lo + offs_w)[None, None, :]
    elif FMT == 1:  # the two x words of each weight word: [BLOCK_M, 1, BLOCK_W, 2]
        x_ptrs = (x_ptr.to(tl.pointer_type(tl.int32)) + r3[:, :, :, None] * sxm
                  + (2 * (kw_lo + offs_w))[None, None, :, None] + tl.arange(0, 2)[None, None, None, :])
    else:  # the first of the eight x values of each weight word: [BLOCK_M, 1, BLOCK_W]
        x_ptrs = x_ptr + r3 * sxm + (8 * (kw_lo + offs_w))[None, None, :]
    if FMT == 2:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.int32)
    s_cols = s_ptr + cols[None, :, None] * ssn  # [1, BLOCK_N, 1]: W4 group scales of this program's rows
    if PREFETCH:  # the first LOOKAHEAD steps' weights are requested before waiting for x's producer (docstring)
        w_next = _w_ahead(w_ptrs, k_lo, 0, k_hi, offs_w, EVEN_K, VPW, BLOCK_W, BLOCK_K)
        if LOOKAHEAD == 2:
            w_next2 = _w_ahead(w_ptrs, k_lo, 1, k_hi, offs_w, EVEN_K, VPW, BLOCK_W, BLOCK_K)
    if L2_PTS > 0:
        _slice_to_l2(w32 + cols[:, None] * swn + kw_lo, tl.minimum(w_slice, K // VPW - kw_lo), L2_PTS, USE_ASM)
    SCALES_AHEAD: tl.constexpr = PREFETCH and EARLY and SCALE_MODE == 1
    if SCALES_AHEAD:  # and their group scales (a gather of a few bytes per row), ahead like the weights
        s_next = _s_ahead(s_cols, k_lo, 0, k_hi, G, ssg, BLOCK_K)
        if LOOKAHEAD == 2:
            s_next2 = _s_ahead(s_cols, k_lo, 1, k_hi, G, ssg, BLOCK_K)
    if FMT != 0 and SCALE_MODE == 0 and EARLY:  # one group per row: its scale, used once after the loop
        s_row = tl.load(s_ptr + cols * ssn)
    pdl_start(USE_PDL)
    if FMT != 0 and SCALE_MODE == 0 and not EARLY:
        s_row = tl.load(s_ptr + cols * ssn)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES, loop_unroll_factor=UNROLL):
        if not EVEN_K:
            in_k = (k0 + VPW * offs_w) < k_hi  # whole words (K is a multiple of VPW)
        if PREFETCH:  # LOOKAHEAD steps ahead: this step's weights were asked for earlier, one more step now
            w = w_next
            if LOOKAHEAD == 2:
                w_next = w_next2
                w_next2 = _w_ahead(w_ptrs, k0, 2, k_hi, offs_w, EVEN_K, VPW, BLOCK_W, BLOCK_K)
            else:
                w_next = _w_ahead(w_ptrs, k0, 1, k_hi, offs_w, EVEN_K, VPW, BLOCK_W, BLOCK_K)
        elif EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=in_k[None, None, :], other=0)
        if FMT != 2:  # W4A16 reads its x values in _x8
            if EVEN_K:
                xw = tl.load(x_ptrs)
            elif FMT == 1:
                xw = tl.load(x_ptrs, mask=in_k[None, None, :, None], other=0)
            else:
                xw = tl.load(x_ptrs, mask=in_k[None, None, :], other=0)
        if FMT == 0:
            acc = _dp4a(w, xw, acc, USE_ASM)
        elif FMT == 1:
            xa, xb = tl.split(xw)
            xe, xo = _even_odd_bytes(xa, xb, USE_ASM)
            c0 = _dp4a(xa, -117901064, _dp4a(xb, -117901064, 0, USE_ASM), USE_ASM)  # 0xF8F8F8F8: -8 * sum(x)
            lo = (w & 0x0F0F0F0F) ^ bits  # q + 8 of the even k, one byte each (bits = 0x08080808)
            hi = ((w >> 4) & 0x0F0F0F0F) ^ bits  # of the odd k
            d = _dp4a(hi, xo, _dp4a(lo, xe, c0, USE_ASM), USE_ASM)
        else:
            if EVEN_K:
                x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, x_ptrs, False)
            else:
                x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, in_k[None, None, :], True)
            d = -1.5 * (((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))
            d += x0 * _nibble_f32(w, 0, bits)
            d += x1 * _nibble_f32(w, 1, bits)
            d += x2 * _nibble_f32(w, 2, bits)
            d += x3 * _nibble_f32(w, 3, bits)
            d += x4 * _nibble_f32(w, 4, bits)
            d += x5 * _nibble_f32(w, 5, bits)
            d += x6 * _nibble_f32(w, 6, bits)
            d += x7 * _nibble_f32(w, 7, bits)
        if SCALE_MODE == 1:  # the step lies in one group: one scale per row (3-D: no layout change)
            if SCALES_AHEAD:  # requested with their weights
                s = s_next
                if LOOKAHEAD == 2:
                    s_next = s_next2
                    s_next2 = _s_ahead(s_cols, k0, 2, k_hi, G, ssg, BLOCK_K)
                else:
                    s_next = _s_ahead(s_cols, k0, 1, k_hi, G, ssg, BLOCK_K)
            else:
                s = tl.load(s_cols + (k0 // G) * ssg)
        elif SCALE_MODE == 2:  # a scale per word
            s = tl.load(s_ptr + cols[None, :, None] * ssn + ((k0 + VPW * offs_w) // G)[None, None, :] * ssg,
                        mask=((k0 + VPW * offs_w) < K)[None, None, :], other=0)
        if FMT == 2:
            if SCALE_MODE != 0:
                d = d * (s.to(tl.float32) * 16.0)
            acc += d
        elif FMT == 1:
            if SCALE_MODE != 0:
                d = d * s.to(tl.int32)
            acc += d
        w_ptrs += BLOCK_W
        x_ptrs += BLOCK_K if FMT == 2 else BLOCK_K // 4
    out = tl.sum(acc, axis=2)
    if FMT != 0 and SCALE_MODE == 0:  # one group per row: its scale once
        if FMT == 2:
            out = out * (s_row.to(tl.float32) * 16.0)[None, :]
        else:
            out = out * s_row.to(tl.int32)[None, :]
    return out


@triton.jit
def _prefetch_tail(rows, cols, ws_ptr, sws, bias_ptr, os_ptr, sos, cv_state, cv_w, cv_is, cv_os, cv_bias, cv_lo,
                   cv_dim, cv_ssb, cv_ssd, cv_swd, cv_sis, cv_sos, HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr,
                   CONV: tl.constexpr, CONV_BIAS: tl.constexpr, USE_ASM: tl.constexpr):
    """Before the wait, K slice 0 of each tile asks L2 (``prefetch_l2``) for what the tile's epilogue reads besides
    the sums: per-channel scales, bias, and the conv step's taps, scales and state. The slice that finishes last
    (any of them) then reads those from L2 instead of DRAM (a decode step last touched them a whole token ago), at
    the end of the kernel, where every latency adds to the step. rows / cols are in range; so are the clamped
    conv channels."""
    if tl.program_id(1) == 0:
        prefetch_l2(ws_ptr + cols * sws, USE_ASM)
        if HAS_BIAS:
            prefetch_l2(bias_ptr + cols, USE_ASM)
        if REQUANT:
            prefetch_l2(os_ptr + cols * sos, USE_ASM)
        if CONV:
            chans = tl.minimum(tl.maximum(cols - cv_lo, 0), cv_dim - 1)
            prefetch_l2(cv_w + chans * cv_swd, USE_ASM)
            prefetch_l2(cv_is + chans * cv_sis, USE_ASM)
            prefetch_l2(cv_os + chans * cv_sos, USE_ASM)
            if CONV_BIAS:
                prefetch_l2(cv_bias + chans, USE_ASM)
            prefetch_l2(cv_state + rows[:, None].to(tl.int64) * cv_ssb + chans[None, :] * cv_ssd, USE_ASM)


# ---------------------------------------------------------------------------------------------- kernels

@triton.jit
def _finish_int(acc, tile, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                sws, sos, cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr, cv_lo, cv_dim,
                cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_,
                HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr,
                SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CONV: tl.constexpr, CONV_K: tl.constexpr, CONV_BIAS: tl.constexpr):
    """The int32 tile's epilogue: directly, or (split-K) by the slice that finishes last. With CONV, the program
    that writes the int8 tile then steps the conv (``ConvStep``) of its channels in [cv_lo, cv_lo + cv_dim)."""
    last = True
    if SPLIT > 1:
        last = publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N) == SPLIT - 1
    if last:
        if SPLIT > 1:
            acc = sum_partials(part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N)
        q = int_epilogue(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, N, 1,
                         HAS_BIAS, REQUANT, SCALE_ORDER)
        if CONV:
            chans = offs_n - cv_lo
            mask = (offs_m < M)[:, None] & ((chans >= 0) & (chans < cv_dim))[None, :]
            conv_step_tile(q, offs_m, chans, mask, cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr,
                           cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_, 1, CONV_K, CONV_BIAS)


@triton.jit(do_not_specialize=["M"])
def _w8a8_gemv_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, w_slice, sxm, swn, sws, sos,
    cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr, cv_lo, cv_dim,
    cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr, USE_ASM: tl.constexpr,
    SPLIT: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr, LOOKAHEAD: tl.constexpr, USE_PDL: tl.constexpr, EARLY: tl.constexpr, CONV: tl.constexpr,
    CONV_K: tl.constexpr, CONV_BIAS: tl.constexpr, L2_PTS: tl.constexpr,
):
    """y [M, N] = int_epilogue(x_q @ w^T) for int8 w [N, K] (+ a conv step, see _finish_int); grid
    (N blocks, SPLIT, M blocks)."""
    tile, offs_m, offs_n, rows, cols = _tile(M, N, BLOCK_M, BLOCK_N)
    if EARLY:
        _prefetch_tail(rows, cols, ws_ptr, sws, bias_ptr, os_ptr, sos, cv_state, cv_w, cv_is, cv_os,
                       cv_bias, cv_lo, cv_dim, cv_ssb, cv_ssd, cv_swd, cv_sis, cv_sos,
                       HAS_BIAS, REQUANT, CONV, CONV_BIAS, USE_ASM)
    acc = _accumulate(x_ptr, w_ptr, w_ptr, rows, cols, w_slice, K, sxm, swn, 0, 0, 0,
                      0, 1, 0, USE_ASM, EVEN_K,  # FMT_W8A8, no group scales
                      NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH, LOOKAHEAD, USE_PDL, EARLY, L2_PTS)
    _finish_int(acc, tile, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                sws, sos, cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr, cv_lo, cv_dim,
                cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_,
                HAS_BIAS, REQUANT, SCALE_ORDER, SPLIT, BLOCK_M, BLOCK_N, CONV, CONV_K, CONV_BIAS)


@triton.jit(do_not_specialize=["M"])
def _w4a8_gemv_kernel(
    x_ptr, w_ptr, gs_ptr, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, w_slice, sxm, swn, sgn, sgg, sos, bits,
    cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr, cv_lo, cv_dim,
    cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, USE_ASM: tl.constexpr, SPLIT: tl.constexpr,
    G: tl.constexpr, SCALE_MODE: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr, LOOKAHEAD: tl.constexpr, USE_PDL: tl.constexpr, EARLY: tl.constexpr, CONV: tl.constexpr,
    CONV_K: tl.constexpr, CONV_BIAS: tl.constexpr, L2_PTS: tl.constexpr,
):
    """y [M, N] = int_epilogue(x_q @ (q4 * s_g)^T), w4a8_gemm_ref's scale order (+ a conv step, see
    _finish_int); grid (N blocks, SPLIT, M blocks)."""
    tile, offs_m, offs_n, rows, cols = _tile(M, N, BLOCK_M, BLOCK_N)
    if EARLY:
        _prefetch_tail(rows, cols, cs_ptr, 1, bias_ptr, os_ptr, sos, cv_state, cv_w, cv_is, cv_os,
                       cv_bias, cv_lo, cv_dim, cv_ssb, cv_ssd, cv_swd, cv_sis, cv_sos,
                       HAS_BIAS, REQUANT, CONV, CONV_BIAS, USE_ASM)
    acc = _accumulate(x_ptr, w_ptr, gs_ptr, rows, cols, w_slice, K, sxm, swn, sgn, sgg, bits,
                      1, G, SCALE_MODE, USE_ASM, EVEN_K,  # 1: FMT_W4A8
                      NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH, LOOKAHEAD, USE_PDL, EARLY, L2_PTS)
    _finish_int(acc, tile, offs_m, offs_n, M, N, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
                1, sos, cv_state, cv_w, cv_ws, cv_is, cv_os, cv_bias, u_ptr, cv_lo, cv_dim,
                cv_ssb, cv_ssd, cv_ssk, cv_swd, cv_swk, cv_sis, cv_sos, sum_,
                HAS_BIAS, REQUANT, 1, SPLIT, BLOCK_M, BLOCK_N, CONV, CONV_K, CONV_BIAS)  # 1: SCALES_W4A8


@triton.jit(do_not_specialize=["M"])
def _w4a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, bias_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, w_slice, sxm, swn, ssn, ssg, bits,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, G: tl.constexpr, SCALE_MODE: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr, LOOKAHEAD: tl.constexpr, USE_PDL: tl.constexpr,
    EARLY: tl.constexpr, L2_PTS: tl.constexpr, USE_ASM: tl.constexpr,
):
    """y [M, N] = x @ (q4 * s)^T (+ bias) with fp32 sums, in y's dtype; grid (N blocks, SPLIT, M blocks)."""
    tile, offs_m, offs_n, rows, cols = _tile(M, N, BLOCK_M, BLOCK_N)
    acc = _accumulate(x_ptr, w_ptr, s_ptr, rows, cols, w_slice, K, sxm, swn, ssn, ssg, bits,
                      2, G, SCALE_MODE, USE_ASM, EVEN_K,  # 2: FMT_W4A16 (PTX only for the L2 hints)
                      NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH, LOOKAHEAD, USE_PDL, EARLY, L2_PTS)
    if SPLIT == 1:
        float_epilogue(acc, offs_m, offs_n, M, N, bias_ptr, y_ptr, N, 1, HAS_BIAS)
    elif publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N) == SPLIT - 1:
        float_epilogue(sum_partials(part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N), offs_m, offs_n, M, N,
                       bias_ptr, y_ptr, N, 1, HAS_BIAS)


# ---------------------------------------------------------------------------------------------- configs

def gemv_unfit(fmt: str, k: int, w: torch.Tensor, group_size: int | None) -> str | None:
    """Why the GEMV cannot take an [M, K] x W^T call of ``fmt`` (None: it can); see the module docstring."""
    vpw = VALUES_PER_WORD[fmt]
    if k % vpw:
        return f"K={k} is no multiple of the {vpw} values of a 32-bit weight word"
    if fmt != "w8a8" and group_size != k and group_size % 8:
        return f"group size {group_size} is no multiple of 8"
    if w.stride(1) != 1 or w.stride(0) % 4 or w.data_ptr() % 4:
        return "the weight rows are not contiguous 4-byte aligned words"
    return None


def use_gemv(fmt: str, m: int, config, k: int, w: torch.Tensor, group_size: int | None = None) -> bool:
    """Whether a launcher takes the GEMV path: an explicit GemvConfig (an error if the shape does not fit), or no
    config, M <= GEMV_MAX_M[fmt] and a shape that fits (``gemv_unfit``)."""
    if config is None:
        return m <= GEMV_MAX_M[fmt] and gemv_unfit(fmt, k, w, group_size) is None
    if not isinstance(config, GemvConfig):
        return False
    why = gemv_unfit(fmt, k, w, group_size)
    if why is not None:
        raise QuambaError(f"a GemvConfig was given but the GEMV cannot run this call: {why}; pass config=None "
                          "(the tensor-core kernels take it)")
    return True


def _scale_mode(fmt: str, k: int, g: int | None, block_k: int) -> int:
    if fmt == "w8a8" or g >= k:
        return SCALE_PER_ROW
    return SCALE_PER_STEP if g % block_k == 0 else SCALE_PER_WORD


@functools.lru_cache(maxsize=4096)
def default_config(fmt: str, m: int, n: int, k: int, group_size: int | None, device_index: int) -> GemvConfig:
    """The heuristic config for an [M, K] x [N, K]^T GEMV of ``fmt`` (device_index -1: the CPU interpreter).

    At decode sizes the kernels are bound by weight loads in flight, not by instructions (per weight in the K
    loop at M = 1, sm_90 SASS: W8A8 0.45, W4A8 1.4-1.8, W4A16 ~4). From the H100 sweep with prefetch
    (``benchmarks/kernels_gemm.py --sweep``; mamba2-2.7b / 8b in_proj and out_proj in W4A8 and W4A16, mamba-2.8b
    in_proj, out_proj and x_proj in W8A8, M = 1):
    - short slices: K split into slices of two steps (one where that leaves fewer than two programs per SM), no
      unrolling, prefetch on; W8A8 steps of 256 bytes a row, 32 rows a program; W4 steps of 64 bytes (block_k
      128, one scale group), 64 rows. The best or within 5% of it on every shape where this makes at most
      SHORT_SLICE_PROGRAMS_PER_SM programs per SM (1660 programs on mamba2-2.7b in_proj: 9.4 us against 10.7 for
      the long slices; W8A8 out_proj 6.6 against 9.4);
    - long slices, for more programs than that (mamba2-8b: 2048 and 4640 programs, 10-30% slower in short
      slices): W8A8 steps of 64 bytes and 64 rows; W4 steps of 64 bytes, 32 (W4A8) or 64 (W4A16) rows, the loop
      unrolled twice, K split until the weight bytes in flight, about one unrolled step of every program, reach
      IN_FLIGHT_PER_SM (Little's law for W8A8: ~3 TB/s x ~1 us of latency / 132 SMs; for W4 the sweep's best
      splits), at most 8 slices of >= 2 steps; prefetch on except W4A8 (4-9% slower there with the unrolled
      loop, whose registers it doubles);
    - fewer rows a program where BLOCK_M x BLOCK_N x words / 128 would exceed 32 accumulators per thread
      (M > 1), and for W4 a step no longer than a power of two dividing the scale group.
    The interpreter gets a few large programs (its cost is per program and per step).
    """
    bm = min(next_pow2(m), 16)
    packed = fmt != "w8a8"
    if device_index < 0:
        return GemvConfig(block_m=bm, block_n=32, block_k=128 if packed else 64, num_warps=1)
    sms = _sm_count(device_index)
    vpw = VALUES_PER_WORD[fmt]

    def fit(bn: int, bk: int) -> tuple[int, int]:
        if packed and group_size < k:
            while group_size % bk and bk > 8:
                bk //= 2  # one scale per row and step where a power of two divides the group
        while bm * bn * (bk // vpw) > 32 * 128 and (bn > 32 or (not packed and bk > 64)):
            if bn > 32:
                bn //= 2
            else:
                bk //= 2
        return bn, bk

    bn, bk = fit(*{"w8a8": (32, 256), "w4a8": (64, 128), "w4a16": (64, 128)}[fmt])
    tiles, steps = cdiv(n, bn) * cdiv(m, bm), cdiv(k, bk)
    split = cdiv(steps, 2)
    if tiles * split <= SHORT_SLICE_PROGRAMS_PER_SM * sms:
        if tiles * split < 2 * sms:
            split = steps
        return GemvConfig(block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=4)
    bn, bk = fit(*{"w8a8": (64, 64), "w4a8": (32, 128), "w4a16": (64, 128)}[fmt])
    unroll = 2 if packed else 1
    row_bytes = bk // 2 if packed else bk
    max_split = max(1, min(8, cdiv(k, bk) // 2))
    step_bytes = cdiv(n, bn) * cdiv(m, bm) * bn * row_bytes * unroll  # one (unrolled) step of every program
    split = max(1, min(cdiv(IN_FLIGHT_PER_SM[fmt] * sms, step_bytes), max_split))
    return GemvConfig(block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=4, unroll=unroll,
                      prefetch=fmt != "w4a8")


def candidate_configs(fmt: str, m: int, n: int, k: int, group_size: int | None,
                      device_index: int = 0) -> list[GemvConfig]:
    """The configs ``benchmarks/kernels_gemm.py --sweep`` times for one shape, the default first: short slices
    (two steps) over a grid of block_n x block_k, then prefetch, lookahead (also with four-step slices), the L2
    prefetch of whole slices (of 2, 4 and 8 steps), num_warps, pipelining depth, unrolling and split-K varied one
    at a time around the default."""
    base = default_config(fmt, m, n, k, group_size, device_index)
    packed = fmt != "w8a8"
    out = [base]

    def add(**changes):
        cfg = replace(base, **changes)
        if cfg not in out:
            out.append(cfg)

    for bk in (128, 256, 512) if packed else (64, 128, 256, 512, 1024):
        for bn in (16, 32, 64):
            if base.block_m * bn * bk // VALUES_PER_WORD[fmt] <= 64 * 128:
                add(block_n=bn, block_k=bk, split=cdiv(cdiv(k, bk), 2), unroll=1)
    add(prefetch=not base.prefetch)
    if base.prefetch:  # two steps in flight; also with slices twice as long (half the programs' fixed work)
        add(lookahead=2)
        add(lookahead=2, split=max(1, cdiv(cdiv(k, base.block_k), 4)))
        for steps in (2, 4, 8):  # the whole slice asked of L2 before the wait, with longer slices too
            add(l2_prefetch=True, split=max(1, cdiv(cdiv(k, base.block_k), steps)))
    for nw in (2, 8):
        add(num_warps=nw)
    for st in (2, 3):
        add(num_stages=st)
    for un in (1, 2, 4):
        add(unroll=un)
    for sp in (1, 2, 4, 8, 16, 32):
        add(split=sp)
    return out


@functools.lru_cache(maxsize=4096)
def _plan(fmt: str, m: int, n: int, k: int, group_size: int | None, device_index: int, config: GemvConfig | None):
    """The whole launch plan of one call, cached on its shapes: (config, grid, SPLIT, K slice length, EVEN_K,
    SCALE_MODE, split-K workspace elements, L2_PTS)."""
    cfg = config or default_config(fmt, m, n, k, group_size, device_index)
    vpw = VALUES_PER_WORD[fmt]
    if cfg.block_k < vpw:
        raise QuambaError(f"block_k={cfg.block_k} is less than one weight word ({vpw} values) of {fmt}")
    k_blocks = max(cdiv(k, cfg.block_k), 1)
    per_slice = cdiv(k_blocks, cfg.split)
    split = cdiv(k_blocks, per_slice)  # non-empty slices only: the last one to finish is the split-th
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    if split > 1:
        check_counter_slots(tiles)
    work = tiles * split * cfg.block_m * cfg.block_n if split > 1 else 0
    mode = _scale_mode(fmt, k, group_size, cfg.block_k)
    l2_pts = next_pow2(cdiv(per_slice * cfg.block_k // vpw, 16) + 1) if cfg.l2_prefetch else 0
    grid = (cdiv(n, cfg.block_n), split, cdiv(m, cfg.block_m))
    return cfg, grid, split, per_slice * cfg.block_k, k % cfg.block_k == 0, mode, work, l2_pts


class _Launch(NamedTuple):
    """One GEMV launch: x2 as the kernel reads it, the shapes, the config, grid, SPLIT, the K slice in weight words,
    EVEN_K, SCALE_MODE, the split-K workspace and counters, whether to use dependent launch, and L2_PTS."""

    x2: torch.Tensor
    m: int
    n: int
    k: int
    cfg: GemvConfig
    grid: tuple
    split: int
    w_slice: int
    even_k: bool
    mode: int
    part: torch.Tensor
    cnt: torch.Tensor
    pdl: bool
    l2_pts: int


def _launch_plan(fmt: str, x2: torch.Tensor, w: torch.Tensor, g: int | None, y: torch.Tensor,
                 config: GemvConfig | None):
    """Everything a launcher needs besides its own arguments (``_Launch``).

    x2's rows must be contiguous along K; the int8 formats also read them as int32 words, so rows that are not
    4-byte aligned are copied first."""
    (m, k), n = x2.shape, w.shape[0]
    if fmt == "w4a16":
        if x2.stride(1) != 1:
            x2 = x2.contiguous()
    elif x2.stride(1) != 1 or x2.stride(0) % 4 or x2.data_ptr() % 4:
        x2 = x2.clone(memory_format=torch.contiguous_format)
    cfg, grid, split, k_slice, even_k, mode, work, l2_pts = _plan(fmt, m, n, k, g, x2.get_device(), config)
    part, cnt = split_buffers(x2, work, torch.float32 if fmt == "w4a16" else torch.int32, y)
    return _Launch(x2, m, n, k, cfg, grid, split, k_slice // VALUES_PER_WORD[fmt], even_k, mode, part, cnt,
                   use_pdl(x2), l2_pts)


# ---------------------------------------------------------------------------------------------- launch
# Callers (gemm_w8a8 / gemm_w4 launchers) have checked dtypes, shapes and devices, that use_gemv holds, and
# allocated y [M, N].

def _conv_args(conv, p: "_Launch", y: torch.Tensor) -> tuple:
    """(u or None, the kernels' conv arguments, their CONV constexprs) for an optional ``ConvStep``."""
    if conv is None:
        return None, (y,) * 7 + (0,) * 10, dict(CONV=False, CONV_K=1, CONV_BIAS=False)
    if y.dtype != torch.int8:
        raise QuambaError("a conv step fused into a projection needs its int8 output (an out_scale)")
    u, args, width = conv_step_args(conv, p.m, p.n, y.device)
    return u, args, dict(CONV=True, CONV_K=width, CONV_BIAS=conv.bias is not None)


def w8a8_gemv_into(x2, w8, xs, ws, sws, bias, os_, sos, y, scale_order: int, config: GemvConfig | None = None,
                   conv=None):
    """y [M, N] = epilogue(x2 [M, K] int8 @ w8 [N, K] int8), the W8A8 (scale_order 0) or W4A8 (1) epilogue.
    With ``conv`` (a ``ConvStep``) also steps that conv in the epilogue and returns its output u [M, D] int8."""
    p = _launch_plan("w8a8", x2, w8, None, y, config)
    cfg = p.cfg
    u, conv_args, conv_flags = _conv_args(conv, p, y)
    with device_of(p.x2):
        _w8a8_gemv_kernel[p.grid](
            p.x2, w8, xs, ws, ws if bias is None else bias, ws if os_ is None else os_, y, p.part, p.cnt,
            p.m, p.n, p.k, p.w_slice, p.x2.stride(0) // 4, w8.stride(0) // 4, sws, sos, *conv_args,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, SCALE_ORDER=scale_order, USE_ASM=p.x2.is_cuda,
            SPLIT=p.split, EVEN_K=p.even_k, NUM_STAGES=cfg.num_stages,
            UNROLL=cfg.unroll, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            PREFETCH=cfg.prefetch, LOOKAHEAD=cfg.lookahead, USE_PDL=p.pdl, EARLY=early_params(),
            L2_PTS=p.l2_pts, launch_pdl=p.pdl, enable_fp_fusion=False, **conv_flags,
        )
    return u


def w4a8_gemv_into(x2, w_packed, group_scales, g: int, xs, cs, bias, os_, sos, y, config: GemvConfig | None = None,
                   conv=None):
    """y [M, N] = epilogue(x2 [M, K] int8 @ (q4 * group_scales)^T), w4a8_gemm_ref's order; ``conv`` as in
    ``w8a8_gemv_into``."""
    p = _launch_plan("w4a8", x2, w_packed, g, y, config)
    cfg = p.cfg
    u, conv_args, conv_flags = _conv_args(conv, p, y)
    with device_of(p.x2):
        _w4a8_gemv_kernel[p.grid](
            p.x2, w_packed, group_scales, xs, cs, cs if bias is None else bias, cs if os_ is None else os_, y,
            p.part, p.cnt,
            p.m, p.n, p.k, p.w_slice, p.x2.stride(0) // 4, w_packed.stride(0) // 4, *group_scales.stride(), sos,
            0x08080808, *conv_args,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, USE_ASM=p.x2.is_cuda, SPLIT=p.split,
            G=g, SCALE_MODE=p.mode, EVEN_K=p.even_k, NUM_STAGES=cfg.num_stages, UNROLL=cfg.unroll,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            PREFETCH=cfg.prefetch, LOOKAHEAD=cfg.lookahead, USE_PDL=p.pdl, EARLY=early_params(),
            L2_PTS=p.l2_pts, launch_pdl=p.pdl, enable_fp_fusion=False, **conv_flags,
        )
    return u


def w4a16_gemv_into(x2, w_packed, scales, g: int, bias, y, config: GemvConfig | None = None):
    """y [M, N] = x2 [M, K] @ (q4 * scales)^T (+ bias) in y's dtype."""
    p = _launch_plan("w4a16", x2, w_packed, g, y, config)
    cfg = p.cfg
    with device_of(p.x2):
        _w4a16_gemv_kernel[p.grid](
            p.x2, w_packed, scales, scales if bias is None else bias, y, p.part, p.cnt,
            p.m, p.n, p.k, p.w_slice, p.x2.stride(0), w_packed.stride(0) // 4, *scales.stride(), 0x3FC00000,
            HAS_BIAS=bias is not None, SPLIT=p.split, G=g, SCALE_MODE=p.mode, EVEN_K=p.even_k,
            NUM_STAGES=cfg.num_stages, UNROLL=cfg.unroll, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, PREFETCH=cfg.prefetch, LOOKAHEAD=cfg.lookahead,
            USE_PDL=p.pdl, EARLY=early_params(), L2_PTS=p.l2_pts, USE_ASM=p.x2.is_cuda,
            launch_pdl=p.pdl,
        )


def config_for(fmt: str, m: int, n: int, k: int, group_size: int | None, device: torch.device,
               config: GemvConfig | None = None) -> GemvConfig:
    """The config a launch on ``device`` runs with (``config``, or the default; benchmarks, debugging)."""
    return _plan(fmt, m, n, k, group_size, -1 if device.type != "cuda" else (device.index or 0), config)[0]
