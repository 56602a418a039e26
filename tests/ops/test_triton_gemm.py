"""Triton W8A8 / W4A8 / W4A16 GEMMs against their references, and the dispatch from the linear modules.

On a GPU the kernels run on CUDA; without one they run in Triton's interpreter on small shapes that are
not multiples of the tiles. Output buffers (and split-K partials) are poisoned so that an unwritten
element fails. Integer accumulation is exact, so W8A8 / W4A8 outputs must be bit-identical to the
references (int8 and float ones: the epilogue does the reference's fp32 operations in its order).
W4A16: the tensor-core kernel rounds the dequantized weights to x's dtype and accumulates in fp32 in another
order; the CUDA-core GEMV (small M, tests/ops/test_triton_gemv.py has its own cases) keeps q * s in fp32.
Bounds below. Each case runs the launcher's own choice ("auto": the GEMV for small M) and the tensor-core
kernel forced by a GemmConfig ("mma"), so both stay covered at decode sizes.
Two interpreter artefacts, not kernel behaviour: its fp32 -> bf16 cast truncates (the GPU rounds to
nearest even), and its bf16 tl.dot multiplies the raw bits; so bf16 is exact / tested with tl.dot on CUDA only.
"""
import dataclasses

import pytest
import torch

import quamba.ops.triton as qt
from quamba.errors import QuambaError
from quamba.modules.linear import W4A8Linear, W4A16Linear, W8A8Linear
from quamba.ops.quant import quantize_ref, w8a8_gemm, w8a8_gemm_ref
from quamba.ops.w4_gemm import w4a8_gemm, w4a8_gemm_ref, w4a16_gemm, w4a16_gemm_ref
from quamba.quantization.weight_formats import (pack_int4, quantize_int4_groupwise, quantize_w4a8,
                                                unpack_int4, w4a8_int8_weight)
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]
PATHS = ["auto", "mma"]


@pytest.fixture(scope="module")
def k(triton_kernels):
    """(gemm_w8a8, gemm_w4), their kernels runnable on DEVICE (Triton's interpreter on the CPU)."""
    from quamba.ops.triton import gemm_w4, gemm_w8a8

    return gemm_w8a8, gemm_w4


@pytest.fixture
def poisoned(monkeypatch):
    """Every torch.empty made during the test starts as NaN (floats) or a sentinel (integers): the kernels'
    outputs and split-K partial sums must all be written."""
    empty = torch.empty

    def poisoned_empty(*a, **kw):
        t = empty(*a, **kw)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(torch, "empty", poisoned_empty)


def _q(*shape, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, dtype=torch.int8, device=DEVICE)


def _rand(*shape, scale=1.0):
    return torch.randn(*shape, device=DEVICE) * scale


def _config(k, **kw):
    return k[0].GemmConfig(**kw)


def _split_config(k):
    """A small tile shape with split-K, for K = 128: 4 slices of 32."""
    return _config(k, block_m=16, block_n=16, block_k=32, split_k=4, num_warps=1, num_stages=1)


def _mma(k, path, block_k=64):
    """The config forcing the tensor-core kernel ("mma") with small tiles, or None for the launcher's choice."""
    return None if path == "auto" else _config(k, block_m=16, block_n=32, block_k=block_k, num_warps=1,
                                               num_stages=1)


def _bf16_equal(y, ref):
    """bf16 outputs: exact on CUDA; within one bf16 step in the interpreter (its cast truncates)."""
    if ON_GPU:
        return torch.equal(y, ref)
    return bool(((y.float() - ref.float()).abs() <= ref.float().abs() * 2 ** -7 + 1e-30).all())


# ------------------------------------------------------------------------------------------------ W8A8

W8A8_CASES = [  # (M, N, K, per_channel, bias, output)
    (1, 24, 64, True, True, "int8"),
    (3, 40, 128, False, True, "float16"),
    (17, 40, 128, True, False, "int8"),
    (17, 24, 64, True, True, "float32"),
    (3, 24, 128, False, False, "bfloat16"),
    (1, 40, 64, True, False, "float16"),
]


def _w8a8_operands(m, n, kdim, per_channel, with_bias, output):
    x_q, w_q = _q(m, kdim), _q(n, kdim)
    x_scale = torch.tensor(0.0123, device=DEVICE)
    w_scale = (torch.rand(n, device=DEVICE) + 0.5) * 1e-3 if per_channel else torch.tensor([7e-4], device=DEVICE)
    bias = _rand(n) if with_bias else None
    out_scale = None
    if output == "int8":  # per channel, spread so that some results clamp and most do not
        y = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias, out_dtype=torch.float32)
        out_scale = y.abs().amax() / 200 * (torch.rand(n, device=DEVICE) + 0.5)
    out_dtype = getattr(torch, output) if output != "int8" else torch.float16
    return x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,n,kdim,per_channel,with_bias,output", W8A8_CASES)
def test_w8a8_bit_exact(k, poisoned, m, n, kdim, per_channel, with_bias, output, path):
    args = _w8a8_operands(m, n, kdim, per_channel, with_bias, output)
    y, ref = k[0]._w8a8_gemm_launch(*args, config=_mma(k, path)), w8a8_gemm_ref(*args)
    assert y.dtype == ref.dtype and y.shape == ref.shape == (m, n)
    assert _bf16_equal(y, ref) if output == "bfloat16" else torch.equal(y, ref)
    if output == "int8":  # the requantized outputs use the int8 range, clamping included
        assert (y.abs() >= 127).any() and (y.abs() < 100).any()


@pytest.mark.parametrize("split_last,depth", [(False, 128), (True, 128), (True, 112)])
@pytest.mark.parametrize("output", ["int8", "float16"])
def test_w8a8_split_k_and_batch_dims(k, poisoned, output, split_last, depth):
    """Split-K sums int32 partials (exact in any order) before the same epilogue, in a second kernel or, with
    split_last, in each tile's last K slice to finish (its counter back at 0 after); [..., K] inputs keep their
    dims. N = 40 and M = 6 leave part-filled tiles; K = 112 a short last slice."""
    x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype = _w8a8_operands(5, 40, depth, True, True, output)
    x_q = _q(2, 3, depth)
    ref = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype)
    cfg = dataclasses.replace(_split_config(k), split_last=split_last)
    y = k[0]._w8a8_gemm_launch(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype, config=cfg)
    assert y.shape == (2, 3, 40) and torch.equal(y, ref)
    assert torch.equal(w8a8_gemm(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype), ref)
    if split_last:
        assert not k[0]._COUNTERS[x_q.get_device()].any()


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("output", ["int8", "float16"])
def test_w8a8_tma_kernel_bit_exact(k, poisoned, output, persistent):
    """The TMA kernel (tiles through tensor descriptors, zero-filled past the edges): M, N and K not multiples of
    the tiles, a row-strided x (a slice of a wider tensor, as dt_proj reads x_proj's output), the same integers."""
    x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype = _w8a8_operands(37, 40, 96, True, True, output)
    x_q = _q(37, 112)[:, :96]  # row stride 112 bytes: 16-byte aligned, not contiguous
    cfg = _config(k, block_m=16, block_n=32, block_k=32, num_warps=1, num_stages=1, tma=True, persistent=persistent)
    ref = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype)
    assert torch.equal(k[0]._w8a8_gemm_launch(x_q, x_scale, w_q, w_scale, bias, out_scale, out_dtype, config=cfg),
                       ref)


def test_w8a8_tma_switch_and_refusals(k, monkeypatch):
    """QUAMBA_GEMM_TMA picks the TMA kernel for prefill shapes (M > 64) where the operands allow it, the pointer
    kernel where they do not (a row stride that is no multiple of 16 bytes); an explicit TMA config refuses them."""
    calls = []
    real = k[0].gemm_w8a8_tma.w8a8_gemm_tma_into
    monkeypatch.setattr(k[0].gemm_w8a8_tma, "w8a8_gemm_tma_into", lambda *a: calls.append(1) or real(*a))
    args = _w8a8_operands(65, 24, 64, True, False, "float16")
    ref = w8a8_gemm_ref(*args)
    for env, expected in (("1", 1), ("0", 0)):
        monkeypatch.setenv("QUAMBA_GEMM_TMA", env)
        calls.clear()
        assert torch.equal(k[0]._w8a8_gemm_launch(*args), ref) and len(calls) == expected
    monkeypatch.setenv("QUAMBA_GEMM_TMA", "1")
    calls.clear()
    odd = _q(65, 72)[:, :64]  # row stride 72 bytes
    assert torch.equal(k[0]._w8a8_gemm_launch(odd, *args[1:]), w8a8_gemm_ref(odd, *args[1:])) and not calls
    cfg = _config(k, block_m=16, block_n=32, block_k=32, num_warps=1, num_stages=1, tma=True)
    with pytest.raises(QuambaError, match="tma=True"):
        k[0]._w8a8_gemm_launch(odd, *args[1:], config=cfg)
    with pytest.raises(QuambaError, match="tma=True"):
        k[0]._w8a8_gemm_launch(*args, config=dataclasses.replace(cfg, split_k=2))
    monkeypatch.setenv("QUAMBA_GEMM_TMA", "maybe")
    with pytest.raises(QuambaError, match="QUAMBA_GEMM_TMA"):
        k[0]._w8a8_gemm_launch(*args)


def test_w8a8_requant_rounds_half_to_even(k, poisoned):
    """Scales of 1 and an output scale of 2 (or 4) put many results exactly on .5 (or .25 / .75) steps."""
    x_q, w_q = _q(9, 64, lo=-3, hi=4), _q(24, 64, lo=-3, hi=4)
    one = torch.ones((), device=DEVICE)
    acc = (x_q.cpu().long() @ w_q.cpu().long().T).to(DEVICE)  # CUDA has no int64 matmul
    assert (acc % 2 == 1).any()  # ties are present
    # x_scale 3.5, out_scale 7: y / 7 = acc / 2 exactly, but y * fl(1 / 7) lands past some ties (6.5, 12.5, ...),
    # so a kernel that multiplied by the reciprocal instead of dividing would round those the other way
    y7, seven = (acc * 3.5).float(), torch.tensor(7.0, device=DEVICE)
    assert not torch.equal(torch.round(y7 * (1 / seven)), torch.round(y7 / seven))
    for x_scale, out_scale in ((one, torch.full((24,), 2.0, device=DEVICE)), (one, torch.tensor(4.0, device=DEVICE)),
                               (one * 3.5, seven)):
        y = w8a8_gemm(x_q, x_scale, w_q, one.reshape(1), None, out_scale)
        assert torch.equal(y, w8a8_gemm_ref(x_q, x_scale, w_q, one.reshape(1), None, out_scale))
        assert torch.equal(y.long(), torch.round(acc.double() * x_scale.double() / out_scale.double()).long())


def test_w8a8_rejects_bad_inputs(k):
    x_q, w_q, s = _q(2, 64), _q(8, 64), torch.ones((), device=DEVICE)
    with pytest.raises(QuambaError, match="int8"):
        k[0]._w8a8_gemm_launch(x_q.float(), s, w_q, s)
    with pytest.raises(QuambaError, match="do not fit"):
        k[0]._w8a8_gemm_launch(_q(2, 32), s, w_q, s)
    with pytest.raises(QuambaError, match="w_scale has 3 values"):
        k[0]._w8a8_gemm_launch(x_q, s, w_q, torch.ones(3, device=DEVICE))
    with pytest.raises(QuambaError, match="out_dtype"):
        k[0]._w8a8_gemm_launch(x_q, s, w_q, s, out_dtype=torch.int32)


# ------------------------------------------------------------------------------------------------ W4A8

W4_CASES = [  # (M, N, K, group_size)
    (1, 24, 64, 32),
    (3, 40, 128, 64),
    (17, 40, 128, -1),
    (17, 24, 64, 64),
]


def _w4a8_operands(n, kdim, g):
    q, gs, cs = quantize_w4a8(torch.randn(n, kdim) * 0.05, g)
    return pack_int4(q).to(DEVICE), gs.to(DEVICE), cs.to(DEVICE)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,n,kdim,g", W4_CASES)
@pytest.mark.parametrize("output", ["float16", "int8"])
def test_w4a8_bit_exact(k, poisoned, m, n, kdim, g, output, path):
    packed, gs, cs = _w4a8_operands(n, kdim, g)
    x_q, x_scale, bias = _q(m, kdim), torch.tensor(0.021, device=DEVICE), _rand(n)
    cfg = _mma(k, path)
    if output == "int8":
        y_fp32 = w4a8_gemm_ref(x_q, x_scale, packed, gs, cs, g, bias, torch.float32)
        out_scale = y_fp32.abs().amax(0) / 100 + 1e-3  # [N], a little clamping
        ref = quantize_ref(y_fp32, out_scale)
        y = k[1]._w4a8_gemm_launch(x_q, x_scale, packed, gs, cs, g, bias, torch.float32, out_scale, config=cfg)
        assert y.dtype == torch.int8
    else:
        ref = w4a8_gemm_ref(x_q, x_scale, packed, gs, cs, g, bias, torch.float16)
        y = k[1]._w4a8_gemm_launch(x_q, x_scale, packed, gs, cs, g, bias, torch.float16, config=cfg)
    assert y.shape == (m, n) and torch.equal(y, ref)
    assert torch.equal(w4a8_gemm(x_q, x_scale, packed, gs, cs, g, bias, torch.float32 if output == "int8"
                                 else torch.float16, out_scale=out_scale if output == "int8" else None), ref)


@pytest.mark.parametrize("variant", ["split_k", "split_last", "dense", "gathered_scales"])
def test_w4a8_other_paths_bit_exact(k, poisoned, variant):
    """Split-K, its partials summed by a second kernel or by each tile's last K slice; dequantize-then-dense (the
    prefill option); a group size (48) that no K tile fits, so a scale is gathered per column, with a ragged last K
    tile (K = 96)."""
    n, kdim, g = (40, 128, 32) if variant != "gathered_scales" else (24, 96, 48)
    packed, gs, cs = _w4a8_operands(n, kdim, g)
    x_q, x_scale = _q(2, 3, kdim), 0.017  # a Python float scale, as the reference allows
    ref = w4a8_gemm_ref(x_q, x_scale, packed, gs, cs, g, None, torch.float32)
    kw = {"split_k": dict(config=_split_config(k)), "dense": dict(dense_min_m=1),
          "split_last": dict(config=dataclasses.replace(_split_config(k), split_last=True)),
          "gathered_scales": dict(config=_config(k, block_m=16, block_n=16, block_k=64, num_warps=1, num_stages=1))}
    y = k[1]._w4a8_gemm_launch(x_q, x_scale, packed, gs, cs, g, None, torch.float32, **kw[variant])
    assert y.shape == (2, 3, n) and torch.equal(y, ref)
    if variant == "split_last":
        assert not k[0]._COUNTERS[x_q.get_device()].any()


def test_w4_dense_switch_routes_the_public_ops(k, monkeypatch):
    """QUAMBA_W4_DENSE_MIN_M sends w4a8_gemm / w4a16_gemm calls of that many rows or more through the dequantize-
    then-dense path (same results), fewer rows through the packed kernels; unset, both go dense from 128 rows (the
    measured defaults); bad values name the variable."""
    dequants = []
    dequant = k[1]._int4_dequant_launch
    monkeypatch.setattr(k[1], "_int4_dequant_launch", lambda *a: dequants.append(a[-1]) or dequant(*a))
    n, kdim, g = 24, 128, 32
    packed, gs, cs = _w4a8_operands(n, kdim, g)
    packed16, s16, _ = _w4a16_operands(n, kdim, g)
    for setting, m, dense in ((None, 12, False), ("0", 12, False), ("12", 12, True), ("12", 11, False)):
        if setting is None:
            monkeypatch.delenv("QUAMBA_W4_DENSE_MIN_M", raising=False)
        else:
            monkeypatch.setenv("QUAMBA_W4_DENSE_MIN_M", setting)
        dequants.clear()
        x_q = _q(m, kdim)
        ref = w4a8_gemm_ref(x_q, 0.02, packed, gs, cs, g, None, torch.float16)
        assert torch.equal(w4a8_gemm(x_q, 0.02, packed, gs, cs, g), ref)
        x = _rand(m, kdim)
        y16 = w4a16_gemm(x, packed16, s16, g)
        assert rel_err(y16, w4a16_gemm_ref(x, packed16, s16, g)) < 1e-5
        assert dequants == ([torch.int8, torch.float32] if dense else []), (setting, m)
    monkeypatch.delenv("QUAMBA_W4_DENSE_MIN_M")  # the defaults: both formats from 128 rows (measured)
    for m in (127, 128):
        dequants.clear()
        x_q, x = _q(m, kdim), _rand(m, kdim)
        assert torch.equal(w4a8_gemm(x_q, 0.02, packed, gs, cs, g),
                           w4a8_gemm_ref(x_q, 0.02, packed, gs, cs, g, None, torch.float16))
        assert rel_err(w4a16_gemm(x, packed16, s16, g), w4a16_gemm_ref(x, packed16, s16, g)) < 1e-5
        assert dequants == ([torch.int8, torch.float32] if m == 128 else []), m
    for bad in ("many", "-3"):
        monkeypatch.setenv("QUAMBA_W4_DENSE_MIN_M", bad)
        with pytest.raises(QuambaError, match="QUAMBA_W4_DENSE_MIN_M"):
            w4a8_gemm(_q(12, kdim), 0.02, packed, gs, cs, g)


def test_w4a8_rejects_bad_inputs(k):
    packed, gs, cs = _w4a8_operands(8, 64, 32)
    with pytest.raises(QuambaError, match="int8"):
        k[1]._w4a8_gemm_launch(_q(2, 64).float(), 1.0, packed, gs, cs, 32)
    with pytest.raises(QuambaError, match="group_scales must have shape"):
        k[1]._w4a8_gemm_launch(_q(2, 64), 1.0, packed, gs, cs, 64)
    with pytest.raises(QuambaError, match="group_scales must be int8"):
        k[1]._w4a8_gemm_launch(_q(2, 64), 1.0, packed, gs.float(), cs, 32)


# ------------------------------------------------------------------------------------------------ W4A16

# (dtype, bound on the norm-wise relative error vs the fp32 reference): the tensor-core kernel rounds q * s to
# fp16 / bf16, then sums in fp32; the GEMV keeps q * s in fp32 (tighter). Element-wise bounds: see _check_w4a16.
W4A16_DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3)] + ([(torch.bfloat16, 1.6e-2)] if ON_GPU else [])
W4A16_IDS = [str(d).replace("torch.", "") for d, _ in W4A16_DTYPES]


def _w4a16_operands(n, kdim, g):
    w = torch.randn(n, kdim) * 0.05
    q, s = quantize_int4_groupwise(w, g)
    return pack_int4(q).to(DEVICE), s.to(DEVICE), q.to(DEVICE)


def _weight_oracle(x, q, s, g, bias, weight_dtype):
    """x @ (q * s in weight_dtype)^T + bias in float64: the kernels' math with exact sums. The tensor-core kernel
    rounds q * s to x's dtype; the GEMV keeps it in fp32 (exact: 4-bit q times an fp16 scale)."""
    gsz = q.shape[1] if g == -1 else g
    w = (q.float() * s.float().repeat_interleave(gsz, dim=1)).to(weight_dtype)
    return x.double() @ w.double().T + (bias.double() if bias is not None else 0)


def _check_w4a16(y, x, q, s, g, bias, bound, gemv=False):
    ref = w4a16_gemm_ref(x, pack_int4(q), s, g, bias)
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert rel_err(y, ref) < bound
    # one output step from the oracle, plus the sums' own error, bounded by a multiple of sum_k |x_k w_k|: the
    # GEMV's fp32 sums offset by -1.5 sum(x) per word (gemv's docstring), the tensor-core MMA's fp32 accumulation
    # in its own order and precision (seen on an H100: a few output steps where the sum cancels)
    x2 = x.reshape(-1, x.shape[-1])
    oracle = _weight_oracle(x2, q, s, g, bias, torch.float32 if gemv else x.dtype).reshape(y.shape)
    abs_terms = _weight_oracle(x2.abs(), q.abs(), s.abs(), g, None, torch.float32).reshape(y.shape)
    slack = 2.0 ** (-16 if gemv else -14) * abs_terms + 1e-6
    step = (1 if gemv else 4) * torch.finfo(x.dtype).eps * oracle.abs() + slack
    assert ((y.double() - oracle).abs() <= step).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,bound", W4A16_DTYPES, ids=W4A16_IDS)
@pytest.mark.parametrize("m,n,kdim,g", W4_CASES)
def test_w4a16_matches_reference(k, poisoned, dtype, bound, m, n, kdim, g, path):
    packed, s, q = _w4a16_operands(n, kdim, g)
    x, bias = _rand(m, kdim).to(dtype), _rand(n)
    if dtype == torch.bfloat16 and path == "mma" and not ON_GPU:
        pytest.skip("bf16 tl.dot is exact only on CUDA")
    y = k[1]._w4a16_gemm_launch(x, packed, s, g, bias, config=_mma(k, path, block_k=32))
    _check_w4a16(y, x, q, s, g, bias, bound, gemv=path == "auto" and m <= k[1].gemv.GEMV_MAX_M["w4a16"])
    assert torch.equal(w4a16_gemm(x, packed, s, g, bias), k[1]._w4a16_gemm_launch(x, packed, s, g, bias))


@pytest.mark.parametrize("variant", ["dense", "gathered_scales"])
def test_w4a16_other_paths(k, poisoned, variant):
    n, kdim, g = (40, 128, 32) if variant != "gathered_scales" else (24, 96, 48)
    packed, s, q = _w4a16_operands(n, kdim, g)
    x = _rand(2, 3, kdim).half()
    kw = {"dense": dict(dense_min_m=1),
          "gathered_scales": dict(config=_config(k, block_m=16, block_n=16, block_k=32, num_warps=1, num_stages=1))}
    y = k[1]._w4a16_gemm_launch(x, packed, s, g, None, **kw[variant])
    assert y.shape == (2, 3, n)
    _check_w4a16(y, x, q, s, g, None, 2e-3)


def test_w4a16_tensor_core_kernel_has_no_split_k(k):
    """Its fp32 split-K is gone (the GEMV's deterministic split-K serves the small-M shapes that needed one)."""
    packed, s, _ = _w4a16_operands(40, 128, 32)
    with pytest.raises(QuambaError, match="no split-K"):
        k[1]._w4a16_gemm_launch(_rand(3, 128).half(), packed, s, 32, config=_split_config(k))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.bfloat16, torch.float32])
def test_int4_dequant_kernel(k, poisoned, dtype):
    """The unpacking every W4 kernel runs (nibble order, sign, the fp16 / bf16 bit tricks), checked whole."""
    n, kdim, g = 24, 96, 32
    q = torch.randint(-8, 8, (n, kdim), dtype=torch.int8)
    q[0, :16] = torch.arange(-8, 8, dtype=torch.int8)  # every nibble value
    if dtype == torch.int8:
        s = torch.randint(1, 17, (n, kdim // g), dtype=torch.int8)
        expected = w4a8_int8_weight(q, s)
    else:
        s = (torch.rand(n, kdim // g) * 0.1).half()
        expected = (q.float() * s.float().repeat_interleave(g, dim=1)).to(dtype)
    w = k[1]._int4_dequant_launch(pack_int4(q).to(DEVICE), s.to(DEVICE), g, dtype)
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    if dtype == torch.bfloat16:
        assert _bf16_equal(w.cpu(), expected)
    else:
        assert torch.equal(w.cpu(), expected)


# ------------------------------------------------------------------------------------------------ dispatch

def test_linear_modules_take_the_kernels(k, poisoned, monkeypatch):
    """The three modules' forwards reach the kernels (launchers called) and give the reference path's outputs."""
    calls = []
    for mod, name in ((k[0], "_w8a8_gemm_launch"), (k[1], "_w4a8_gemm_launch"), (k[1], "_w4a16_gemm_launch")):
        launch = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _l=launch, _n=name, **kw: calls.append(_n) or _l(*a, **kw))
    w, x_q, x = torch.randn(40, 64) * 0.1, _q(2, 3, 64), _rand(3, 64).half()
    y_int = torch.randn(2, 3, 40).abs().amax(dim=(0, 1)) * 0.02 + 0.01
    modules = [
        (W8A8Linear.from_float(w, 0.02, output="int8", bias=torch.randn(40), output_scale=y_int), x_q),
        (W8A8Linear.from_float(w, 0.02, output="float16"), x_q),
        (W4A8Linear.from_float(w, 0.02, output="int8", output_scale=y_int, group_size=32), x_q),
        (W4A8Linear.from_float(w, 0.02, output="float32", bias=torch.randn(40), group_size=64), x_q),
        (W4A16Linear.from_float(w, group_size=32).half(), x),
    ]
    for module, inp in modules:
        module = module.to(DEVICE)
        y = module(inp)
        monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
        ref = module(inp)
        monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
        if isinstance(module, W4A16Linear):
            assert rel_err(y, ref) < 2e-3
        else:
            assert y.dtype == ref.dtype and torch.equal(y, ref)
    assert calls == ["_w8a8_gemm_launch"] * 2 + ["_w4a8_gemm_launch"] * 2 + ["_w4a16_gemm_launch"]


def test_cpu_outside_the_interpreter_takes_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x_q, w_q, s = torch.randint(-128, 128, (2, 64), dtype=torch.int8), torch.randint(
        -128, 128, (8, 64), dtype=torch.int8), torch.ones(())
    assert not qt.use_triton(x_q)
    assert torch.equal(w8a8_gemm(x_q, s, w_q, s), w8a8_gemm_ref(x_q, s, w_q, s))


# ------------------------------------------------------------------------------------------------ GPU only

@pytest.mark.skipif(not ON_GPU, reason="prefill / decode tile shapes are compiled for CUDA only")
@pytest.mark.parametrize("m", [1, 16, 45, 300])
def test_cuda_tile_shapes_bit_exact(k, m):
    """The CUDA configs (decode GEMV and decode split-K tensor-core tiles, mid, prefill 128-row tiles), N and K not
    multiples of any tile."""
    n, kdim = 392, 640
    dev = torch.device(DEVICE)
    gemv_m = m <= k[0].gemv.GEMV_MAX_M["w4a16"]
    w8_cfg = k[0].pick_config(m, n, kdim, dev)[0]
    for output in ("int8", "bfloat16"):
        args = _w8a8_operands(m, n, kdim, True, True, output)
        ref = w8a8_gemm_ref(*args)
        assert torch.equal(w8a8_gemm(*args), ref)
        assert torch.equal(k[0]._w8a8_gemm_launch(*args, config=w8_cfg), ref)
    packed, gs, cs = _w4a8_operands(n, kdim, 128)
    x_q, bias = _q(m, kdim), _rand(n)
    ref = w4a8_gemm_ref(x_q, 0.01, packed, gs, cs, 128, bias, torch.float16)
    assert torch.equal(w4a8_gemm(x_q, 0.01, packed, gs, cs, 128, bias, torch.float16), ref)
    assert torch.equal(k[1]._w4a8_gemm_launch(x_q, 0.01, packed, gs, cs, 128, bias, torch.float16, dense_min_m=1), ref)
    w4_cfg = k[0].pick_config(m, n, kdim, dev, group_size=128, packed=True)[0]
    assert torch.equal(k[1]._w4a8_gemm_launch(x_q, 0.01, packed, gs, cs, 128, bias, torch.float16, config=w4_cfg),
                       ref)
    packed, s, q = _w4a16_operands(n, kdim, 128)
    w16_cfg = k[0].pick_config(m, n, kdim, dev, float_dot=True, group_size=128, packed=True)[0]
    w16_cfg = dataclasses.replace(w16_cfg, split_k=1)  # the W4A16 tensor-core kernel has no split-K
    for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        x = _rand(m, kdim).to(dtype)
        _check_w4a16(w4a16_gemm(x, packed, s, 128, bias), x, q, s, 128, bias, bound, gemv=gemv_m)
        _check_w4a16(k[1]._w4a16_gemm_launch(x, packed, s, 128, bias, dense_min_m=1), x, q, s, 128, bias, bound)
        _check_w4a16(k[1]._w4a16_gemm_launch(x, packed, s, 128, bias, config=w16_cfg), x, q, s, 128, bias, bound)


@pytest.mark.skipif(not ON_GPU, reason="the TMA kernel's prefill tiles are compiled for CUDA only")
@pytest.mark.parametrize("m", [300, 1024])
def test_cuda_tma_prefill_tiles_bit_exact(k, m):
    """The prefill configs through the TMA kernel, plain and persistent, N and K not multiples of the tiles."""
    n, kdim = 392, 640
    cfg = k[0].pick_config(m, n, kdim, torch.device(DEVICE))[0]
    for output in ("int8", "float16"):
        args = _w8a8_operands(m, n, kdim, True, True, output)
        ref = w8a8_gemm_ref(*args)
        for persistent in (False, True):
            tma_cfg = dataclasses.replace(cfg, split_k=1, tma=True, persistent=persistent)
            assert torch.equal(k[0]._w8a8_gemm_launch(*args, config=tma_cfg), ref)


@pytest.mark.skipif(not ON_GPU, reason="a compiled-only question")
def test_cuda_w4a16_tensor_core_block_k_16(k):
    """block_k 16 with packed int4 weights gave wrong W4A16 products on an H100 (Triton 3.6; it passes in the
    interpreter): CUDA launches refuse it, and a group size of 48 gets block_k 32+ with a scale per column."""
    n, kdim, g = 40, 192, 48
    packed, s, q = _w4a16_operands(n, kdim, g)
    x = _rand(20, kdim).half()
    cfg = k[0].GemmConfig(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
    with pytest.raises(QuambaError, match="block_k 16"):
        k[1]._w4a16_gemm_launch(x, packed, s, g, None, config=cfg)
    _check_w4a16(k[1]._w4a16_gemm_launch(x, packed, s, g, None), x, q, s, g, None, 2e-3)