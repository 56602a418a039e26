"""Memory-bound GEMV kernels for decode (few rows of x): W8A8, W4A8 and W4A16 on the CUDA cores.

At decode sizes a quantized linear is a stream of its weights: [N, K] int8 (W8A8) or packed uint8 [N, K // 2]
(W4, the low nibble holding the even k). Each program owns BLOCK_N output channels (and BLOCK_M rows of x) and
walks K in steps of BLOCK_K: it loads a [BLOCK_N, BLOCK_K] weight tile with wide loads along K, unpacks the
nibbles in registers, multiplies by the x chunk (tiny, re-read from L1 / L2) and reduces over K with ``tl.sum``.
No ``tl.dot``: at M = 1 a tensor-core MMA wastes 15 of its 16 rows and needs the unpacked tile rearranged
through shared memory into its operand layout. For M > 1 the same unpacked tile meets each row of x in turn
(unrolled over BLOCK_M), so the weights are read and unpacked once per row block; but the FMAs grow with M,
so the launchers take this path only for M <= ``GEMV_MAX_M`` and hand larger M to the tensor-core kernels
(``benchmarks/kernels_gemm.py`` times both sides of the crossover, ``--sweep`` every candidate config).

Exactness: the references' contracts hold as in gemm_w8a8 / gemm_w4.
  W8A8 / W4A8: exact integer sums, then gemm_w8a8's fp32 epilogue (``int_epilogue``: the reference's order,
  ``div_rn``, ties-to-even requantization), so outputs are bit-identical to the references. The integer sums
  run on the integer units (int32 products), or with ``float_math`` as fp32 products of small integers whose
  per-step sums stay below 2^24 (|x * w| <= 2^14 and BLOCK_K <= 1024 terms), hence exact, converted to int32
  once per step (an option for the sweep: the integer kernels are compiled without multiply-add fusion, which
  their epilogue needs, so fp32 products cost a multiply and an add each).
  W4A16: q * s and x in fp32, fp32 sums: y = sum_steps s[n, g] * sum_{k in step} q[n, k] x[m, k] (one scale per
  step when BLOCK_K divides the group size, else q * s per element), rounded once to x's dtype. It differs from
  the fp32 reference only by the fp32 summation order (the tests state the bound).
Small integers become fp32 without the int -> float conversion instruction (a quarter-rate one): OR-ing an
integer 0 <= n < 2^23 into the mantissa of 2^23 gives the float 2^23 + n exactly, and one subtraction recovers it.

Split-K (``split`` > 1, for shapes with few N blocks): program (tile, s) sums K slice s and stores its partial
sums into a per-tile workspace; the program that finishes last (an int32 atomic counter per tile, acq_rel at GPU
scope, after a CTA barrier so every thread's partial is written) adds the partials in slice order 0, 1, ... and
runs the epilogue, so results do not depend on which slice finishes last (deterministic, fp32 included); it then
resets its counter to 0 for the next launch. The counters live in one zeroed int32 buffer per device, allocated
at the first split launch (do one eager call before capturing a CUDA graph); kernels using them must not run
concurrently on two streams of one device. Everything else is sized by shapes only: CUDA-graph capturable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from ._common import cdiv, next_pow2
from .gemm_w8a8 import _sm_count, block_k_for_groups, float_epilogue, int_epilogue, launch_device

# The formats: the FMT constexpr of the shared loop (jit code cannot read module globals: the kernels pass literals)
FMT_W8A8, FMT_W4A8, FMT_W4A16 = 0, 1, 2

# The launchers take this path for M <= GEMV_MAX_M[format] (M = rows of x after flattening the batch dims)
GEMV_MAX_M = {"w8a8": 4, "w4a8": 8, "w4a16": 8}
MAX_FLOAT_MATH_K = 1024  # float_math: a step's sum of <= 1024 int8 x int8 products stays below 2^24 (exact in fp32)
_COUNTER_SLOTS = 1 << 14  # split-K tiles per launch (N blocks x M blocks); 64 KiB of int32 per device
_IN_FLIGHT_PER_SM = 24 * 1024  # weight bytes a default config keeps in flight per SM (see default_config)


@dataclass(frozen=True)
class GemvConfig:
    """Tile shape and launch options of one GEMV call (all block sizes powers of two).

    block_m: rows of x per program (each step's weight tile meets them one after the other); block_n: output
    channels per program; block_k: K per loop step (W4: even, and a divisor of the group size for one scale per
    row and step, else a scale is gathered per element); split: K slices, summed by the last one to finish;
    num_stages: software pipelining of the loop's loads (``tl.range``; 1: none); unroll: the K loop unrolled that
    many times (more loads in flight per thread); float_math: integer formats multiply in fp32 (exact, see the
    module docstring); W4A16 always does.
    """

    block_m: int = 1
    block_n: int = 32
    block_k: int = 128
    split: int = 1
    num_warps: int = 4
    num_stages: int = 1
    float_math: bool = False
    unroll: int = 1

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise QuambaError(f"GemvConfig.{name}={v} must be a power of two")
        if self.block_k < 2 or min(self.split, self.num_stages, self.num_warps, self.unroll) < 1:
            raise QuambaError(f"GemvConfig {self} is invalid: block_k >= 2; split, num_stages, num_warps, "
                              "unroll >= 1")

    def describe(self) -> str:
        unroll = f" u{self.unroll}" if self.unroll > 1 else ""
        return (f"gemv {self.block_m}x{self.block_n}x{self.block_k} split{self.split} w{self.num_warps} "
                f"s{self.num_stages}{unroll}{' fp32' if self.float_math else ''}")


# ---------------------------------------------------------------------------------------------- jit helpers

@triton.jit
def _int8_to_f32(v):
    """int8 -> fp32, exact: 0x4B000080 + v is the bit pattern of 2^23 + 128 + v (0 <= 128 + v < 256)."""
    return (v.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _unpack_int4(p, AS_FLOAT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """uint8 [BLOCK_N, BLOCK_K // 2] packed pairs -> signed int4 values [BLOCK_N, BLOCK_K] (column 2j from the low
    nibble of byte j). A nibble n holds q + 8 = n ^ 8.

    int32: q. fp32 (exact): q in the even columns, 16 q in the odd ones, so that both nibbles take one bitwise op
    (the high one is not shifted down): (n ^ 8) | 0x4B000000 is 2^23 + q + 8, and (16 n ^ 128) | 0x4B000000 is
    2^23 + 16 (q + 8). The caller multiplies x's odd columns by 1 / 16 (exact) instead."""
    b = p.to(tl.int32)
    if AS_FLOAT:
        lo = ((b & 0x0F) ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
        hi = ((b & 0xF0) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    else:
        lo = ((b & 15) ^ 8) - 8
        hi = ((b >> 4) ^ 8) - 8
    return tl.reshape(tl.join(lo, hi), [BLOCK_N, BLOCK_K])


@triton.jit
def _tile(M, N, k_slice, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(tile id, first row, row offsets, column offsets, K start) of this program; the row blocks of one column
    block are neighbours in the grid, so they read the same weights from L2 at about the same time."""
    tile = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    row0 = (tile % num_m) * BLOCK_M
    offs_n = (tile // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    return tile, row0, row0 + tl.arange(0, BLOCK_M), offs_n, tl.program_id(1) * k_slice


@triton.jit
def _accumulate(
    acc, x_ptr, w_ptr, s_ptr, row0, M, cols, k_lo, k_hi, K, G,
    sxm, sxk, swn, swk, ssn, ssg,
    FMT: tl.constexpr, FLOAT_MATH: tl.constexpr, SCALES_PER_TILE: tl.constexpr, GROUP_K: tl.constexpr,
    EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr, UNROLL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """acc [BLOCK_M, BLOCK_N] + x[row0:row0 + BLOCK_M, k_lo:k_hi] @ W[cols, k_lo:k_hi]^T (int32 for W8A8 / W4A8,
    fp32 for W4A16).

    Rows past M and cols past N wrap into range (never stored), so only K needs masks (and only when not EVEN_K).
    Each step unpacks one [BLOCK_N, BLOCK_K] weight tile and reduces its products with each row of x over K in
    registers (one row at a time: a [BLOCK_M, BLOCK_N, BLOCK_K] broadcast spreads K over the lanes instead).
    SCALES_PER_TILE: a step lies in one group of GROUP_K columns (0: one group per row), so the scale multiplies
    the step's sums (a constant divisor: no integer division in the loop); else a scale per element (G)."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_j = tl.arange(0, BLOCK_K // 2)  # bytes of a packed tile row
    # unpacked fp32 int4 weights hold 16 q in their odd columns (_unpack_int4): x's odd columns get 1 / 16 (exact)
    x_odd_scale = tl.where(offs_k % 2 == 0, 1.0, 0.0625)
    row_ids = tl.arange(0, BLOCK_M)[:, None]
    if FMT == 0:
        w_ptrs = w_ptr + cols[:, None] * swn + (k_lo + offs_k)[None, :] * swk
    else:
        w_ptrs = w_ptr + cols[:, None] * swn + (k_lo // 2 + offs_j)[None, :] * swk
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES, loop_unroll_factor=UNROLL):
        in_k = (k0 + offs_k) < K
        if EVEN_K:
            wt = tl.load(w_ptrs)
        elif FMT == 0:
            wt = tl.load(w_ptrs, mask=in_k[None, :], other=0)
        else:
            wt = tl.load(w_ptrs, mask=((k0 + 2 * offs_j) < K)[None, :], other=0)
        if FMT == 0:
            if FLOAT_MATH:
                w = _int8_to_f32(wt)
            else:
                w = wt.to(tl.int32)
        else:
            w = _unpack_int4(wt, FLOAT_MATH or FMT == 2, BLOCK_N, BLOCK_K)
            if not SCALES_PER_TILE:  # the step spans groups: a scale per element (q * s, |q * s| <= 128 for W4A8)
                s = tl.load(s_ptr + cols[:, None] * ssn + ((k0 + offs_k) // G)[None, :] * ssg,
                            mask=in_k[None, :], other=0)
                w = w * s.to(w.dtype)
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=w.dtype)
        for m in tl.static_range(BLOCK_M):
            x_ptrs = x_ptr + ((row0 + m) % M) * sxm + (k0 + offs_k) * sxk
            if EVEN_K:
                x = tl.load(x_ptrs)
            else:
                x = tl.load(x_ptrs, mask=in_k, other=0)
            # x as the products need it (inline: a jit call per row costs the interpreter milliseconds)
            if FMT == 2:
                x = x.to(tl.float32) * x_odd_scale
            elif FLOAT_MATH:
                x = (x.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0  # _int8_to_f32
                if FMT == 1:
                    x = x * x_odd_scale
            else:
                x = x.to(tl.int32)
            dot = tl.sum(w * x[None, :], axis=1)
            if BLOCK_M == 1:
                part = dot[None, :]
            else:
                part = tl.where(row_ids == m, dot[None, :], part)
        if FLOAT_MATH and FMT != 2:
            part = part.to(tl.int32)  # an integer below 2^24 in magnitude: exact
        if FMT != 0 and SCALES_PER_TILE:
            if GROUP_K == 0:
                s = tl.load(s_ptr + cols * ssn)
            else:
                s = tl.load(s_ptr + cols * ssn + (k0 // GROUP_K) * ssg)
            part = part * s.to(part.dtype)[None, :]
        acc += part
        if FMT == 0:
            w_ptrs += BLOCK_K * swk
        else:
            w_ptrs += (BLOCK_K // 2) * swk
    return acc


@triton.jit
def _publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """Split-K: store this K slice's partial tile, then count it; returns how many slices were counted before."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tl.store(part_ptr + (tile * SPLIT + tl.program_id(1)) * (BLOCK_M * BLOCK_N) + offs, acc)
    tl.debug_barrier()  # every thread's stores precede the (single-thread) release below
    return tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")


@triton.jit
def _sum_partials(part_ptr, cnt_ptr, tile, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split-K, last slice of a tile: the partial tiles summed in slice order (deterministic); resets the counter."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    ptrs = part_ptr + tile * SPLIT * (BLOCK_M * BLOCK_N) + offs
    total = tl.load(ptrs, cache_modifier=".cg")  # .cg: from L2, where the other SMs' partials are
    for s in tl.static_range(1, SPLIT):
        total += tl.load(ptrs + s * (BLOCK_M * BLOCK_N), cache_modifier=".cg")
    tl.store(cnt_ptr + tile, 0)
    return total


# ---------------------------------------------------------------------------------------------- kernels

@triton.jit(do_not_specialize=["M"])
def _w8a8_gemv_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, k_slice, sxm, sxk, swn, swk, sws, sos,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, SCALE_ORDER: tl.constexpr, FLOAT_MATH: tl.constexpr,
    SPLIT: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y [M, N] = int_epilogue(x_q @ w^T) for int8 w [N, K]; grid (M blocks x N blocks, SPLIT)."""
    tile, row0, offs_m, offs_n, k_lo = _tile(M, N, k_slice, BLOCK_M, BLOCK_N)
    acc = _accumulate(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32), x_ptr, w_ptr, w_ptr, row0, M, offs_n % N,
                      k_lo, tl.minimum(k_lo + k_slice, K), K, 1, sxm, sxk, swn, swk, 0, 0,
                      0, FLOAT_MATH, True, 0,
                      EVEN_K, NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K)  # 0: FMT_W8A8
    if SPLIT == 1:
        int_epilogue(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, N, 1,
                     HAS_BIAS, REQUANT, SCALE_ORDER)
    elif _publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N) == SPLIT - 1:
        int_epilogue(_sum_partials(part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N), offs_m, offs_n, M, N,
                     xs_ptr, ws_ptr, bias_ptr, os_ptr, y_ptr, sws, sos, N, 1, HAS_BIAS, REQUANT, SCALE_ORDER)


@triton.jit(do_not_specialize=["M"])
def _w4a8_gemv_kernel(
    x_ptr, w_ptr, gs_ptr, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, G, k_slice, sxm, sxk, swn, swk, sgn, sgg, sos,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, FLOAT_MATH: tl.constexpr, SPLIT: tl.constexpr,
    SCALES_PER_TILE: tl.constexpr, GROUP_K: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y [M, N] = int_epilogue(x_q @ (q4 * s_g)^T), w4a8_gemm_ref's scale order; grid (M x N blocks, SPLIT)."""
    tile, row0, offs_m, offs_n, k_lo = _tile(M, N, k_slice, BLOCK_M, BLOCK_N)
    acc = _accumulate(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32), x_ptr, w_ptr, gs_ptr, row0, M, offs_n % N,
                      k_lo, tl.minimum(k_lo + k_slice, K), K, G, sxm, sxk, swn, swk, sgn, sgg,
                      1, FLOAT_MATH, SCALES_PER_TILE, GROUP_K,
                      EVEN_K, NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K)  # 1: FMT_W4A8
    if SPLIT == 1:
        int_epilogue(acc, offs_m, offs_n, M, N, xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, 1, sos, N, 1,
                     HAS_BIAS, REQUANT, 1)  # 1: SCALES_W4A8
    elif _publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N) == SPLIT - 1:
        int_epilogue(_sum_partials(part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N), offs_m, offs_n, M, N,
                     xs_ptr, cs_ptr, bias_ptr, os_ptr, y_ptr, 1, sos, N, 1, HAS_BIAS, REQUANT, 1)


@triton.jit(do_not_specialize=["M"])
def _w4a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, bias_ptr, y_ptr, part_ptr, cnt_ptr,
    M, N, K, G, k_slice, sxm, sxk, swn, swk, ssn, ssg,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SCALES_PER_TILE: tl.constexpr, GROUP_K: tl.constexpr,
    EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr, UNROLL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y [M, N] = x @ (q4 * s)^T (+ bias) with fp32 sums, in y's dtype; grid (M x N blocks, SPLIT)."""
    tile, row0, offs_m, offs_n, k_lo = _tile(M, N, k_slice, BLOCK_M, BLOCK_N)
    acc = _accumulate(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x_ptr, w_ptr, s_ptr, row0, M, offs_n % N,
                      k_lo, tl.minimum(k_lo + k_slice, K), K, G, sxm, sxk, swn, swk, ssn, ssg,
                      2, True, SCALES_PER_TILE, GROUP_K,
                      EVEN_K, NUM_STAGES, UNROLL, BLOCK_M, BLOCK_N, BLOCK_K)  # 2: FMT_W4A16
    if SPLIT == 1:
        float_epilogue(acc, offs_m, offs_n, M, N, bias_ptr, y_ptr, N, 1, HAS_BIAS)
    elif _publish_partial(acc, part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N) == SPLIT - 1:
        float_epilogue(_sum_partials(part_ptr, cnt_ptr, tile, SPLIT, BLOCK_M, BLOCK_N), offs_m, offs_n, M, N,
                       bias_ptr, y_ptr, N, 1, HAS_BIAS)


# ---------------------------------------------------------------------------------------------- configs

def use_gemv(fmt: str, m: int, config) -> bool:
    """Whether a launcher takes the GEMV path: an explicit GemvConfig, or no config and M <= GEMV_MAX_M[fmt]."""
    if config is None:
        return m <= GEMV_MAX_M[fmt]
    return isinstance(config, GemvConfig)


@functools.lru_cache(maxsize=4096)
def default_config(fmt: str, m: int, n: int, k: int, group_size: int | None, device_index: int) -> GemvConfig:
    """The heuristic config for an [M, K] x [N, K]^T GEMV of ``fmt`` (device_index -1: the CPU interpreter).

    Reasoned for an H100 (132 SMs, ~3 TB/s) from the kernels' sm_90 SASS compiled offline (instructions in the K
    loop per weight at M = 1: W8A8 3.9, W4A8 4.4, W4A16 5.9; W4A16 grows to 8 / 12 / 21 / 43 at M = 2 / 4 / 8 /
    16, hence GEMV_MAX_M), to be tuned from ``benchmarks/kernels_gemm.py --sweep``:
    - a step reads 256 k of int8 rows (W8A8) or 128 k of packed rows (W4: the largest power of two <= 128 that
      divides the group size, so that a step needs one scale per row);
    - enough rows that each thread of the 4 warps loads 32 bytes a step (4 KiB: 16 int8 rows, 64 packed rows;
      more rows also share each x row's conversion and broadcast, paid per row and step);
    - split-K for memory parallelism: the weight bytes in flight are about one step of every program, N x (bytes
      of a row's step) whatever BLOCK_N, so K is split until that reaches ~24 KiB per SM (Little's law: ~3 TB/s x
      ~1 us of latency / 132 SMs), at most 8 slices of >= 2 steps (W4 in_proj: ~5 slices, out_proj / x_proj 8);
    - integer products on the integer units (fewer instructions than exact fp32 products while the integer
      kernels may not fuse multiply-adds: their epilogue needs the reference's two roundings);
    - no ``tl.range`` pipelining: it stages the tiles in shared memory, and the compiler then reads the weights
      back in x's layout (3-5x the instructions per weight).
    The interpreter gets a few large programs (its cost is per program and per step) and fp32 products.
    """
    bm = min(next_pow2(m), 16)
    packed = fmt != "w8a8"
    if device_index < 0:  # fp32 products: the interpreter checks every int32 operation for overflow (slow)
        bk = (block_k_for_groups(128, group_size, 32) or 128) if packed else 128
        return GemvConfig(block_m=bm, block_n=32, block_k=bk, num_warps=1, num_stages=1, float_math=True)
    pref_k = 128 if packed else 256
    bk = (block_k_for_groups(pref_k, group_size, 16) or pref_k) if packed else pref_k
    row_bytes = bk // 2 if packed else bk
    bn = min(64, max(8, 4096 // row_bytes))
    step_bytes = cdiv(n, bn) * cdiv(m, bm) * bn * row_bytes  # one step of every program
    split = max(1, min(cdiv(_IN_FLIGHT_PER_SM * _sm_count(device_index), step_bytes), cdiv(k, bk) // 2, 8))
    return GemvConfig(block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=4)


def candidate_configs(fmt: str, m: int, n: int, k: int, group_size: int | None,
                      device_index: int = 0) -> list[GemvConfig]:
    """The configs ``benchmarks/kernels_gemm.py --sweep`` times for one shape, the default first: a grid of
    block_n x block_k, then num_warps, pipelining depth, unrolling, split-K and (integer formats) integer vs fp32
    products varied one at a time around the default."""
    base = default_config(fmt, m, n, k, group_size, device_index)
    packed = fmt != "w8a8"
    ks = (32, 64, 128) if packed else (64, 128, 256, 512)
    if packed and group_size is not None:  # one scale per step; a gathering block_k is never faster
        ks = tuple(b for b in ks if group_size % b == 0) or (base.block_k,)
    # weight tiles of 2 / 4 / 8 KiB a step at M = 1 (1 / 2 / 4 KiB above: the FMAs grow with M), 8 to 128 rows
    sizes = (2048, 4096, 8192) if base.block_m == 1 else (1024, 2048, 4096)
    tiles = [(size // (bk // 2 if packed else bk), bk) for size in sizes for bk in ks]
    out = [base]

    def add(**changes):
        cfg = replace(base, **changes)
        if cfg not in out and not (cfg.float_math and fmt != "w4a16" and cfg.block_k > MAX_FLOAT_MATH_K):
            out.append(cfg)

    for bn, bk in tiles:
        if 8 <= bn <= 128:
            add(block_n=bn, block_k=bk)
    for nw in (2, 8):
        add(num_warps=nw)
    for st in (2, 3, 4):
        add(num_stages=st)
    for un in (2, 4):
        add(unroll=un)
    for sp in (1, 2, 4, 8):
        add(split=sp)
    if fmt != "w4a16":
        add(float_math=not base.float_math)
    return out


@functools.lru_cache(maxsize=4096)
def _plan(fmt: str, m: int, n: int, k: int, group_size: int | None, device_index: int, config: GemvConfig | None):
    """The whole launch plan of one call, cached on its shapes: (config, grid, SPLIT, K slice length, EVEN_K,
    (SCALES_PER_TILE, GROUP_K), split-K workspace elements)."""
    cfg = config or default_config(fmt, m, n, k, group_size, device_index)
    packed = fmt != "w8a8"
    if packed and cfg.block_k % 2:
        raise QuambaError(f"block_k must be even to unpack int4 pairs, got {cfg.block_k}")
    if cfg.float_math and fmt != "w4a16" and cfg.block_k > MAX_FLOAT_MATH_K:
        raise QuambaError(f"float_math sums block_k={cfg.block_k} products per step exactly only up to "
                          f"{MAX_FLOAT_MATH_K}: use a smaller block_k")
    k_blocks = max(cdiv(k, cfg.block_k), 1)
    per_slice = cdiv(k_blocks, cfg.split)
    split = cdiv(k_blocks, per_slice)  # non-empty slices only: the last one to finish is the split-th
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    if split > 1 and tiles > _COUNTER_SLOTS:
        raise QuambaError(f"split-K over {tiles} tiles exceeds the {_COUNTER_SLOTS} counters: use split=1 or "
                          "larger blocks")
    per_tile = packed and group_size % cfg.block_k == 0
    group_k = group_size if per_tile and group_size < k else 0  # the constexpr group width (0: one per row)
    work = tiles * split * cfg.block_m * cfg.block_n if split > 1 else 0
    return cfg, (tiles, split), split, per_slice * cfg.block_k, k % cfg.block_k == 0, (per_tile, group_k), work


_COUNTERS: dict[int, torch.Tensor] = {}


def _split_buffers(t: torch.Tensor, work: int, dtype: torch.dtype, dummy: torch.Tensor):
    """(partials workspace, counters) of a split launch; (dummy, dummy) without split."""
    if not work:
        return dummy, dummy
    key = t.get_device()
    counters = _COUNTERS.get(key)
    if counters is None:
        if t.is_cuda and torch.cuda.is_current_stream_capturing():
            raise QuambaError("the first split-K GEMV on a device allocates its counters, which a CUDA graph "
                              "capture cannot do: run the model once eagerly (a warm-up) before capturing")
        counters = _COUNTERS[key] = torch.zeros(_COUNTER_SLOTS, dtype=torch.int32, device=t.device)
    return torch.empty(work, dtype=dtype, device=t.device), counters


# ---------------------------------------------------------------------------------------------- launch
# Callers (gemm_w8a8 / gemm_w4 launchers) have checked dtypes, shapes and devices, and allocated y [M, N].

def w8a8_gemv_into(x2, w8, xs, ws, sws, bias, os_, sos, y, scale_order: int, config: GemvConfig | None = None):
    """y [M, N] = epilogue(x2 [M, K] int8 @ w8 [N, K] int8), the W8A8 (scale_order 0) or W4A8 (1) epilogue."""
    (m, k), n = x2.shape, w8.shape[0]
    cfg, grid, split, k_slice, even_k, _, work = _plan("w8a8", m, n, k, None, x2.get_device(), config)
    part, cnt = _split_buffers(x2, work, torch.int32, y)
    with launch_device(x2):
        _w8a8_gemv_kernel[grid](
            x2, w8, xs, ws, ws if bias is None else bias, ws if os_ is None else os_, y, part, cnt,
            m, n, k, k_slice, *x2.stride(), *w8.stride(), sws, sos,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, SCALE_ORDER=scale_order,
            FLOAT_MATH=cfg.float_math, SPLIT=split, EVEN_K=even_k, NUM_STAGES=cfg.num_stages,
            UNROLL=cfg.unroll, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            enable_fp_fusion=False,
        )


def w4a8_gemv_into(x2, w_packed, group_scales, g: int, xs, cs, bias, os_, sos, y, config: GemvConfig | None = None):
    """y [M, N] = epilogue(x2 [M, K] int8 @ (q4 * group_scales)^T), w4a8_gemm_ref's order."""
    (m, k), n = x2.shape, w_packed.shape[0]
    cfg, grid, split, k_slice, even_k, (per_tile, group_k), work = _plan("w4a8", m, n, k, g, x2.get_device(),
                                                                         config)
    part, cnt = _split_buffers(x2, work, torch.int32, y)
    with launch_device(x2):
        _w4a8_gemv_kernel[grid](
            x2, w_packed, group_scales, xs, cs, cs if bias is None else bias, cs if os_ is None else os_, y,
            part, cnt,
            m, n, k, g, k_slice, *x2.stride(), *w_packed.stride(), *group_scales.stride(), sos,
            HAS_BIAS=bias is not None, REQUANT=os_ is not None, FLOAT_MATH=cfg.float_math, SPLIT=split,
            SCALES_PER_TILE=per_tile, GROUP_K=group_k, EVEN_K=even_k, NUM_STAGES=cfg.num_stages,
            UNROLL=cfg.unroll,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            enable_fp_fusion=False,
        )


def w4a16_gemv_into(x2, w_packed, scales, g: int, bias, y, config: GemvConfig | None = None):
    """y [M, N] = x2 [M, K] @ (q4 * scales)^T (+ bias) in y's dtype."""
    (m, k), n = x2.shape, w_packed.shape[0]
    cfg, grid, split, k_slice, even_k, (per_tile, group_k), work = _plan("w4a16", m, n, k, g, x2.get_device(),
                                                                         config)
    part, cnt = _split_buffers(x2, work, torch.float32, y)
    with launch_device(x2):
        _w4a16_gemv_kernel[grid](
            x2, w_packed, scales, scales if bias is None else bias, y, part, cnt,
            m, n, k, g, k_slice, *x2.stride(), *w_packed.stride(), *scales.stride(),
            HAS_BIAS=bias is not None, SPLIT=split, SCALES_PER_TILE=per_tile, GROUP_K=group_k, EVEN_K=even_k,
            NUM_STAGES=cfg.num_stages, UNROLL=cfg.unroll, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        )


def config_for(fmt: str, m: int, n: int, k: int, group_size: int | None, device: torch.device,
               config: GemvConfig | None = None) -> GemvConfig:
    """The config a launch on ``device`` runs with (``config``, or the default; benchmarks, debugging)."""
    return _plan(fmt, m, n, k, group_size, -1 if device.type != "cuda" else (device.index or 0), config)[0]
