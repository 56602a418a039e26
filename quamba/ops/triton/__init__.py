"""Triton kernels for the full-precision ops (fp32 / fp16 / bf16), one op family per file.

Importing this package needs no triton: only the kernel files (``conv1d``, ``rmsnorm``,
``selective_scan``, ``ssd``) import it, and the public ops in ``quamba.ops`` import those lazily,
after :func:`use_triton` has said yes.

Switches, read on every call (environment variables, so that a run can be flipped without code):
  QUAMBA_FORCE_REFERENCE=1  every op takes the plain-PyTorch ``*_ref`` path, GPU tensors too.
  TRITON_INTERPRET=1        CPU tensors go through the kernels in Triton's interpreter (tests). It must
                            be set before triton and the kernel files are first imported: ``triton.jit``
                            picks the interpreter when it decorates (see :func:`interpreted_kernels`).
  QUAMBA_FUSED_DECODE=0     turns off the fused decode kernels (on by default): in the A8 mixers' decode step
                            in_proj's GEMV steps the conv (``quamba.ops.conv1d.ConvStep``) and Mamba1's state
                            update computes dt_proj (``quamba.ops.selective_scan.DtProj``); same integers, two /
                            one kernels fewer per layer (see :func:`fused_decode`).
  QUAMBA_W4_DENSE_MIN_M=M   W4A8 / W4A16 GEMMs of M or more rows dequantize the packed weights once and run the
                            dense kernel (same results; see :func:`w4_dense_min_m`). Unset: from 128 rows
                            (``W4_DENSE_MIN_M_DEFAULT``).
Read when the kernel files are imported (compile-time constants of the kernels):
  QUAMBA_FAST_EPILOGUE=1    the int8 epilogues divide by a scale that many elements share through its reciprocal
                            and round with saturation in one instruction (same bits; not yet run on a GPU, so off:
                            see ``_common.FAST_EPILOGUE`` and benchmarks/gpu_check.sh).
Autograd: the kernels are forward-only, so an op whose inputs need gradients takes the reference
(with a warning on the GPU); run inference under ``torch.inference_mode()`` or ``torch.no_grad()``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import warnings

import torch

from ...errors import QuambaError

_TRUE = ("1", "true", "yes", "on")


def _env_on(name: str, default: str = "0") -> bool:
    value = os.environ.get(name)
    if value is None:  # the common case, at every launch
        return default in _TRUE
    return value.strip().lower() in _TRUE


def interpreting() -> bool:
    """True when Triton's interpreter is asked for (``TRITON_INTERPRET=1``)."""
    return _env_on("TRITON_INTERPRET")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Should an op whose inputs are ``tensors`` (the first one decides the device) run its Triton kernel?

    No when QUAMBA_FORCE_REFERENCE=1; no when autograd must see the op (the kernels are
    forward-only, the references are differentiable); yes for CUDA tensors; yes for CPU tensors
    only under TRITON_INTERPRET=1 with triton installed. CUDA without triton is a mistake worth a
    message rather than a silent fall-back, because the GPU timings would quietly be the slow path's.
    """
    if _env_on("QUAMBA_FORCE_REFERENCE"):
        return False
    first = tensors[0] if tensors and tensors[0] is not None else next((t for t in tensors if t is not None), None)
    if first is None:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        if first.is_cuda:
            warnings.warn("quamba ops run their PyTorch references while autograd records (the Triton kernels are "
                          "forward-only): wrap inference in torch.inference_mode() for the kernels", stacklevel=3)
        return False
    if first.is_cuda:
        if not _triton_installed():
            raise QuambaError(
                "CUDA tensors need triton for quamba's kernels: pip install 'quamba[gpu]', "
                "or set QUAMBA_FORCE_REFERENCE=1 to run the PyTorch reference ops")
        return True
    return first.device.type == "cpu" and interpreting() and _triton_installed()


def fused_decode() -> bool:
    """Whether the A8 mixers' decode steps take the fused kernels: yes unless ``QUAMBA_FUSED_DECODE=0``. Either
    way the integers are the same (on the reference path the fused ops run their parts one after the other);
    the switch is there to time the unfused kernels (``benchmarks/e2e.py --unfused-decode``)."""
    return _env_on("QUAMBA_FUSED_DECODE", default="1")


# W4 prefill dequantizes, then runs the dense kernel (W4A8: the int8 tensor-core kernel, the same integers; W4A16:
# cuBLAS on the dequantized fp16 weights). On an H100 (2026-12-07, mamba2-2.7b, 1024 tokens, prefill replayed from a
# CUDA graph): W4A8 25.1 ms against 34.4 with the packed kernel (peak memory 2.11 against 2.10 GiB); W4A16 22.8 ms
# against 28.6 (2.15 against 2.13 GiB). Decode (fewer rows) is untouched: W4A16 TPOT 1.938 against 1.942 ms.
W4_DENSE_MIN_M_DEFAULT: int | None = 128


def w4_dense_min_m() -> int | None:
    """The row count from which the W4A8 and W4A16 GEMMs take their dequantize-then-dense path
    (``QUAMBA_W4_DENSE_MIN_M``, a positive integer; 0: the packed kernels at every M; unset or empty:
    ``W4_DENSE_MIN_M_DEFAULT``)."""
    text = os.environ.get("QUAMBA_W4_DENSE_MIN_M", "").strip()
    if not text:
        return W4_DENSE_MIN_M_DEFAULT
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise QuambaError(f"QUAMBA_W4_DENSE_MIN_M={text!r}: expected a row count (a positive integer) or 0 for off")
    return value or None


# Off: on an H100 (2026-12-07) the TMA kernel's picked tile is 5-7% faster on mamba-2.8b's in_proj / out_proj at
# M = 1024, and W8A8 mamba-2.8b's prefill replayed from a CUDA graph 1.6% faster (21.86 vs 22.22 ms), but building
# the tensor descriptors on the host makes an eager prefill 30 ms slower (93.6 vs 63.8 ms).
GEMM_TMA_DEFAULT = False


def gemm_tma() -> bool:
    """Whether the W8A8 (and dense W4A8) prefill GEMMs take the TMA kernel (``gemm_w8a8_tma``) where the GPU and
    the operands allow it: ``QUAMBA_GEMM_TMA=1`` / ``0``, unset: ``GEMM_TMA_DEFAULT``. The integers are the same."""
    text = os.environ.get("QUAMBA_GEMM_TMA", "").strip().lower()
    if not text:
        return GEMM_TMA_DEFAULT
    if text not in _TRUE + ("0", "false", "no", "off"):
        raise QuambaError(f"QUAMBA_GEMM_TMA={text!r}: expected 1 (on) or 0 (off)")
    return text in _TRUE


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


_KERNEL_FILES = ("_common", "conv1d", "rmsnorm", "hadamard", "embedding", "selective_scan", "ssd", "gemm_w8a8",
                 "gemm_w8a8_tma", "gemm_w4", "gemv", "selective_scan_parallel", "norm_hadamard")  # helpers first: the others import them


@contextlib.contextmanager
def interpreted_kernels():
    """While inside, CPU tensors run through the kernels in Triton's interpreter (tests, debugging
    without a GPU): sets TRITON_INTERPRET=1 and (re)imports the kernel files so that ``triton.jit``
    wraps them for the interpreter. On exit the variable is restored, so CPU calls outside take the
    reference path again (the interpreter is far too slow for anything but small checks).

    Triton's own library functions (tl.zeros, tl.sum, ...) are wrapped when triton is first
    imported, so that import must happen in here, or with TRITON_INTERPRET=1 already set.
    """
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language as tl

        if type(tl.zeros).__name__ == "JITFunction":  # compiled-mode wrapper of triton's own library
            raise QuambaError("triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run in "
                              "the interpreter: set TRITON_INTERPRET=1 in the environment before starting Python")
        for name in _KERNEL_FILES:
            if importlib.util.find_spec(f"{__name__}.{name}") is None:
                continue
            module = importlib.import_module(f"{__name__}.{name}")
            if not _interpreted(module):
                importlib.reload(module)  # first imported for the GPU: wrap its kernels again
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _interpreted(module) -> bool:
    kinds = {type(v).__name__ for k, v in vars(module).items() if k.endswith("_kernel") or k in ("silu", "softplus")}
    return kinds == {"InterpretedFunction"}


__all__ = ["use_triton", "interpreting", "interpreted_kernels", "fused_decode"]
