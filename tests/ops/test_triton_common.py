"""The shared jit helpers' integer -> float conversions (``quamba.ops.triton._common``), which the int8 scans, norms
and the SSD's products use instead of the conversion pipe: exact for every int8 value, and for int32 sums up to
2^22 in magnitude. On the CPU they run in Triton's interpreter."""
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
