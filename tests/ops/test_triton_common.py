"""The shared jit helpers' integer -> float conversions (``quamba.ops.triton._common``), which the int8 scans, norms
and the SSD's products use instead of the conversion pipe: exact for every int8 value, and for int32 sums up to
2^22 in magnitude. On the CPU they run in Triton's interpreter."""
import random

import numpy as np
import pytest
import torch

from quamba.ops.triton import _common
from tests.ops.triton_harness import DEVICE, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]


def _convert_kernel():
    """Made inside the fixture's scope: triton.jit reads TRITON_INTERPRET when it wraps the function. The helpers are
    looked up on the module when the kernel runs (the fixture reloads it for the interpreter)."""
    import triton
    import triton.language as tl

    @triton.jit
    def convert(x_ptr, f_ptr, h_ptr, n, HALF: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        v = tl.load(x_ptr + offs, mask=mask, other=0)
        tl.store(f_ptr + offs, _common.int8_to_float(v), mask=mask)
        if HALF:
            tl.store(h_ptr + offs, _common.int8_to_half(v), mask=mask)

    return convert


def test_every_int8_converts_exactly():
    x = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).to(DEVICE)
    f = torch.full((256,), float("nan"), device=DEVICE)
    h = torch.full((256,), float("nan"), device=DEVICE, dtype=torch.float16)
    _convert_kernel()[(2,)](x, f, h, 256, HALF=True, BLOCK=128)
    assert torch.equal(f, x.float()) and torch.equal(h, x.half())


def test_bounded_int32_sums_convert_exactly():
    """The conv's and the scans' int32 accumulators stay within +-2^22, where 1.5 * 2^23 + v is still exact."""
    limit = 2 ** 22
    x = torch.cat([torch.tensor([-limit, -limit + 1, -1, 0, 1, limit - 1, limit], dtype=torch.int32),
                   torch.randint(-limit, limit + 1, (500,), generator=torch.Generator().manual_seed(0),
                                 dtype=torch.int32)]).to(DEVICE)
    f = torch.full(x.shape, float("nan"), device=DEVICE)
    _convert_kernel()[(4,)](x, f, f, x.numel(), HALF=False, BLOCK=128)
    assert torch.equal(f, x.float())


def _rn32(x) -> float:
    """The float32 nearest to the exact rational x (ties to even)."""
    import struct
    from fractions import Fraction

    near = float(np.float32(float(x)))  # within an ulp of x
    candidates = [float(c) for c in (np.nextafter(np.float32(near), np.float32(-np.inf)), np.float32(near),
                                     np.nextafter(np.float32(near), np.float32(np.inf)))]
    def key(c):
        return abs(Fraction(c) - x), struct.unpack("<I", struct.pack("<f", c))[0] & 1  # nearest, then even
    return min(candidates, key=key)


def test_reciprocal_quotient_is_the_ieee_quotient():
    """``div_by_reciprocal``'s compiled arithmetic (q = y * r; twice q = fma(fma(q, -d, y), r, q), r = RN(1 / d)),
    each operation rounded once in exact rational arithmetic, gives RN(y / d): random quotients, a third of them
    within a few ulps of a rounding tie (k + 0.5). (40,000 such quotients were checked when it was written.)"""
    from fractions import Fraction

    rng = random.Random(1)

    def fma(a, b, c):
        return _rn32(Fraction(a) * Fraction(b) + Fraction(c))

    for i in range(3000):
        d = float(np.float32(rng.uniform(1e-4, 1.0) * 10 ** rng.uniform(-4, 2)))
        if i % 3 == 0:
            y = float(np.float32(rng.uniform(-200, 200) * d))
        elif i % 3 == 1:  # next to a tie of round-half-even
            y = np.float32((rng.randint(-130, 130) + 0.5) * d)
            for _ in range(rng.randint(0, 3)):
                y = np.nextafter(y, np.float32(rng.choice([-1e30, 1e30])))
            y = float(y)
        else:
            y = float(np.float32(rng.uniform(-1e4, 1e4)))
        r = _rn32(1 / Fraction(d))
        q = _rn32(Fraction(y) * Fraction(r))
        for _ in range(2):
            q = fma(fma(q, -d, y), r, q)
        assert q == _rn32(Fraction(y) / Fraction(d)), (y, d)
