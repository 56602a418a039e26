"""Pieces every kernel file shares: element-wise jit helpers and launch-time checks."""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ...errors import QuambaError
from . import interpreting

try:  # programmatic dependent launch (Hopper and later), Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: the decode kernels launch the ordinary way
    gdc_launch_dependents = gdc_wait = None

# Launch-time dtype of the float outputs and inputs the kernels accept.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def softplus(x):
    """torch's softplus (beta 1, threshold 20): log1p(e^x), and x itself above 20 where they agree.

    log1p by Kahan's trick, log(u) * y / (u - 1) with u = 1 + y, because log(1 + y) alone loses
    small dt values (very negative x) to rounding.
    """
    y = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + y
    small = u == 1.0
    log1p = tl.where(small, y, tl.log(u) * (y / tl.where(small, 1.0, u - 1.0)))
    return tl.where(x <= 20.0, log1p, x)


@triton.jit
def silu(x):
    return x / (1.0 + tl.exp(-x))


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceil division on the host (triton.cdiv is a constexpr function, slow to call from Python)."""
    return -(-a // b)


def check_float(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.dtype not in FLOAT_DTYPES:
        raise QuambaError(f"{name} has dtype {t.dtype}: the Triton ops take float32, float16 or bfloat16")


def check_shape(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise QuambaError(f"{name} has shape {list(t.shape)}, expected {list(shape)}")


def check_same_device(*named: tuple[str, torch.Tensor | None]) -> None:
    tensors = [(n, t) for n, t in named if t is not None]
    device = tensors[0][1].device
    for name, t in tensors[1:]:
        if t.device != device:
            raise QuambaError(f"{name} is on {t.device} but {tensors[0][0]} is on {device}: move them together")


def check_runnable(kernel, t: torch.Tensor) -> None:
    """CPU tensors only run through interpreted kernels; say how to get those instead of crashing in triton."""
    if not t.is_cuda and type(kernel).__name__ != "InterpretedFunction":
        raise QuambaError(
            "CPU tensors reached a compiled Triton kernel: set TRITON_INTERPRET=1 before quamba.ops.triton's "
            "kernel files are first imported, or call the *_ref op")


_NO_CONTEXT = contextlib.nullcontext()


def device_of(t: torch.Tensor):
    """The device context a launch on ``t`` needs: none on the CPU or when t is on the current CUDA device (the
    usual case; entering torch.cuda.device costs microseconds per launch), else t's GPU (multi-GPU safe)."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NO_CONTEXT


def stride_or_zero(t: torch.Tensor | None, dim: int) -> int:
    return 0 if t is None else t.stride(dim)


# ---------------------------------------------------------------------------------------------- dependent launch
# A decode step is a chain of small kernels, each waiting for the one before. With programmatic dependent launch
# (PDL, sm_90+) a kernel lets its successor launch as soon as all of its own programs are running; the successor's
# programs are scheduled onto free SMs and wait in ``griddepcontrol.wait`` until their predecessor has finished and
# its writes are visible. The launch and scheduling latency of each kernel then overlaps the kernel before it.
# Every kernel launched this way waits (``pdl_start``) before it reads anything a kernel of the step writes and
# before it stores, so no access can race its predecessor. What no kernel of a step writes, its parameters (weights,
# scales, norm weights) and a state update's own state, is read before the wait, so that those loads (from DRAM: a
# decode step streams more than L2 holds) overlap the kernel before; ``EARLY_PARAMS`` = False moves the parameters'
# loads after the wait (an A/B switch for benchmarks, read at each launch). QUAMBA_PDL=0 turns dependent launch off.
EARLY_PARAMS = True


def early_params() -> bool:
    """The EARLY constexpr of a kernel's launch: its parameters read before the wait (without PDL, merely earlier in
    the program; the CPU tests run that order too)."""
    return EARLY_PARAMS


@triton.jit
def pdl_start(USE_PDL: tl.constexpr):
    """Wait for the previous kernel in the stream, then let the next one launch (no-op unless USE_PDL)."""
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs, USE_ASM: tl.constexpr):
    """Asks L2 for the cache lines at ``ptrs`` (``prefetch.global.L2``: a hint, nothing is returned or waited for,
    no register is held); a no-op in the interpreter (USE_ASM False). Pointers must be in range."""
    if USE_ASM:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


def is_sm90(index: int) -> bool:
    """Whether CUDA device ``index`` is Hopper or newer (dependent launch, TMA; torch caches the properties)."""
    return torch.cuda.get_device_capability(index) >= (9, 0)


@functools.lru_cache(maxsize=None)
def _pdl_device(index: int) -> bool:
    return gdc_wait is not None and os.environ.get("QUAMBA_PDL", "1") != "0" and is_sm90(index)


def use_pdl(t: torch.Tensor) -> bool:
    """Whether kernels on t's device launch with programmatic dependent launch (CUDA, sm_90+, QUAMBA_PDL != 0)."""
    return t.is_cuda and _pdl_device(t.get_device())


@triton.jit
def _byte(v, i: tl.constexpr):
    """Signed byte i of int32 words v (the interpreter's dp4a)."""
    return (((v >> (8 * i)) & 0xFF) ^ 0x80) - 0x80


@triton.jit
def dp4a(a, b, c, USE_ASM: tl.constexpr):
    """c + the sum of the four signed int8 x int8 products of int32 words a and b (PTX ``dp4a``, one instruction;
    USE_ASM False, for the interpreter: the same sum from shifts and masks). a, b and c broadcast."""
    if USE_ASM:
        out = tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                        dtype=tl.int32, is_pure=True, pack=1)
    else:
        out = c + _byte(a, 0) * _byte(b, 0) + _byte(a, 1) * _byte(b, 1)
        out += _byte(a, 2) * _byte(b, 2) + _byte(a, 3) * _byte(b, 3)
    return out


@triton.jit
def round_half_even(v):
    """torch.round for fp32 v (ties to even), from floor: exact, and the same in the interpreter."""
    f = tl.floor(v)
    frac = v - f
    half = f * 0.5
    odd = half != tl.floor(half)
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


# Compiled kernels round with one PTX instruction; the interpreter rounds from floor (it runs no inline assembly) and
# divides with div_rn (its fma is not fused). Read when this file is (re)imported: quamba.ops.triton.interpreted_kernels
# reimports it under TRITON_INTERPRET=1.
COMPILED: tl.constexpr = tl.constexpr(not interpreting())
# QUAMBA_FAST_EPILOGUE=1 (read at import; off until checked on a GPU): the int8 epilogues divide by a scale that many
# elements share through its reciprocal (div_by_reciprocal) and round and clamp in one saturating conversion
# (round_to_int8). Both give the same bits by construction; compiled for sm_90 they cut the int8 GEMM's prefill
# epilogue from 2152 to 1872 instructions a thread (32 fewer branches) and the Hadamard program's fast path from 670
# to 604 (benchmarks/sass_counts.py, Triton 3.6). Not yet run on a GPU: gpu_check.sh runs the bit-exactness tests
# with it on and times it.
FAST_EPILOGUE: tl.constexpr = tl.constexpr(not interpreting() and os.environ.get("QUAMBA_FAST_EPILOGUE") == "1")


@triton.jit
def round_to_int32(v):
    """torch.round of fp32 v (ties to even) as int32, saturating at the int32 bounds. Compiled: ``cvt.rni.s32.f32``,
    one F2I instead of the ~10 instructions of round_half_even (the int8 conv's epilogue is bound by instruction
    issue, benchmarks/sass_counts.py)."""
    if COMPILED:
        out = tl.inline_asm_elementwise("cvt.rni.s32.f32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        out = round_half_even(tl.minimum(tl.maximum(v, -2147483648.0), 2147483520.0)).to(tl.int32)
    return out


@triton.jit
def round_to_int8(v):
    """clamp(torch.round(v), -128, 127) of fp32 v (ties to even) as int8. With FAST_EPILOGUE one
    ``cvt.rni.sat.s8.f32`` (F2I.S8) rounds and saturates in the conversion; otherwise ``round_to_int32`` and a
    clamp (clamping after rounding is the same: the bounds are integers and rounding is monotone)."""
    if FAST_EPILOGUE:
        out = tl.inline_asm_elementwise("cvt.rni.sat.s8.f32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True,
                                        pack=1)
    else:
        out = tl.minimum(tl.maximum(round_to_int32(v), -128), 127)
    return out.to(tl.int8)


@triton.jit
def int8_to_float(v):
    """Integer v in [-2^22, 2^22] (int8 loads, bounded int32 sums) as fp32, exactly, in two full-rate instructions:
    v added to the bits of 1.5 * 2^23 (where the float ulp is 1) reads as 1.5 * 2^23 + v. The plain conversion of
    an int8 or int16 (I2F.S8 / .S16) issues on sm_90's quarter-rate conversion pipe: in the int8 scans it is
    issued for every loaded element of every step (benchmarks/sass_counts.py counts them)."""
    return (v.to(tl.int32) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def int8_to_half(v):
    """int8 v as fp16, exactly, without the conversion pipe (I2F.F16): v + 128 in the low byte of 1024.0's bits
    (the fp16 ulp is 1 in [1024, 2048)) reads as 1152 + v."""
    return (v.to(tl.int16) + 0x6480).to(tl.float16, bitcast=True) - 1152.0


@triton.jit
def dequant(v, scale, QUANT: tl.constexpr):
    """A loaded input as fp32: int8 times its scale (the reference's ``q.float() * scale``), or the float itself."""
    if QUANT:
        v = int8_to_float(v) * scale
    else:
        v = v.to(tl.float32)
    return v


@triton.jit
def div_by_reciprocal(y, d, r):
    """The IEEE quotient y / d (what ``div_rn`` gives) from r = div_rn(1, d): q = y * r, then two corrections
    q += fma(-q, d, y) * r. The residual of a quotient within an ulp is exact, so the second correction rounds
    correctly (Markstein's theorem: r within half an ulp of 1 / d, q within an ulp of y / d; the first correction
    brings q there). No underflow or overflow at quantization's magnitudes. Where many elements share d (a scale per
    tensor or per column), this is five full-rate instructions an element in straight-line code instead of
    ``div_rn``'s reciprocal, corrections and checked branch to a slow path. Interpreted: div_rn (its fma is not
    fused)."""
    if COMPILED:
        neg_d = -d  # on d's own shape (a scalar, a row of columns), not on each element
        q = y * r
        q = tl.fma(tl.fma(q, neg_d, y), r, q)
        q = tl.fma(tl.fma(q, neg_d, y), r, q)
    else:
        q = tl.math.div_rn(y, d)
    return q


@triton.jit
def quantize_int8_shared(y, scale):
    """``quantize_int8`` where many elements of y share each scale: a scalar, or per-column scales [1, N] broadcast
    over a tile's rows. With FAST_EPILOGUE the quotient goes through the scale's reciprocal, one ``div_rn`` a scale
    (``div_by_reciprocal``: the same bits); otherwise it is ``quantize_int8``."""
    if FAST_EPILOGUE:
        q = div_by_reciprocal(y, scale, tl.math.div_rn(1.0, scale))
    else:
        q = tl.math.div_rn(y, scale)
    return round_to_int8(q)


@triton.jit
def quantize_int8(y, scale):
    """``quantize_ref`` in registers: clamp(round_half_even(y / scale), -128, 127) as int8, the division IEEE-rounded
    (``div_rn``: Triton's ``/`` is approximate on NVIDIA)."""
    return round_to_int8(tl.math.div_rn(y, scale))
