"""The decode GEMV kernels (quamba/ops/triton/gemv.py) against the references, through the launchers.

Shapes are not multiples of any block (N = 37; K = 384 is a multiple of every group size tested, 48 included,
but not of every block_k), M = 1, 3, 16, every group size the formats allow (128, 64, -1 = per row, 48: no
power-of-two block of 32 or more fits it). Outputs and split-K workspaces start poisoned (NaN / a sentinel).
W8A8 / W4A8: bit-identical to the references, int8 and float outputs (dp4a on the GPU, its shift-and-mask
twin in the interpreter).
W4A16 bound: the kernel sums fp32 terms offset by -1.5 * sum(x) per word (gemv's docstring), so an output is
within one rounding step of the exactly computed result plus a few fp32 ulps of sum_k |x_k * s_k|:
|y - y_exact| <= eps(dtype) * |y_exact| + 2^-16 * sum_k |x_k s_k| + 1e-6 (y_exact: the reference's fp32
weights, sums in float64), and the norm-wise relative error vs w4a16_gemm_ref is below 1e-5 (fp32) / 1e-3
(fp16) / 8e-3 (bf16).
"""
import functools
from dataclasses import replace

import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops.quant import quantize_ref, w8a8_gemm, w8a8_gemm_ref
from quamba.ops.w4_gemm import w4a8_gemm, w4a8_gemm_ref, w4a16_gemm, w4a16_gemm_ref
from quamba.quantization.weight_formats import pack_int4, quantize_int4_groupwise, quantize_w4a8
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

N, K = 37, 384
MS = [1, 3, 16]
GROUPS = [128, 64, -1, 48]
W4A16_DTYPES = [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)]


@pytest.fixture(scope="module")
def gv(triton_kernels):
    """(gemv, gemm_w8a8, gemm_w4) with kernels runnable on DEVICE."""
    from quamba.ops.triton import gemm_w4, gemm_w8a8, gemv

    return gemv, gemm_w8a8, gemm_w4


@pytest.fixture
def poisoned(monkeypatch):
    """Every torch.empty made during the test starts as NaN (floats) or 77 (integers): outputs and split-K
    workspaces must be written wherever they are read."""
    empty = torch.empty

    def poisoned_empty(*a, **kw):
        t = empty(*a, **kw)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(torch, "empty", poisoned_empty)


def _q(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEVICE)


def _default(gv, fmt, m, g=None):
    """The GEMV's own config for this call (what the launchers use for M <= GEMV_MAX_M), forced at any M."""
    return gv[0].config_for(fmt, m, N, K, None if g is None else (K if g == -1 else g), torch.device(DEVICE))


def _small(gv, block_m=4, block_n=32, block_k=64, split=3, prefetch=True):
    """An explicit small config with split-K (3 K slices of 128 for K = 384 and block_k 64); ``prefetch`` True /
    False, 2: two steps of weights ahead (lookahead 2), or "l2": also the whole slice asked of L2 (l2_prefetch)."""
    return gv[0].GemvConfig(block_m=block_m, block_n=block_n, block_k=block_k, split=split, num_warps=1,
                            num_stages=1, prefetch=bool(prefetch), lookahead=2 if prefetch == 2 else 1,
                            l2_prefetch=prefetch == "l2")


PREFETCH = pytest.mark.parametrize("prefetch", [True, 2, False], ids=["prefetch", "ahead2", "no-prefetch"])
# and the whole slice asked of L2 (its hints are no-ops in the interpreter: this checks their addressing compiles and
# leaves the results alone), where slices are ragged or split
PREFETCH_L2 = pytest.mark.parametrize("prefetch", [True, 2, False, "l2"], ids=["prefetch", "ahead2", "no-prefetch",
                                                                           "l2"])


@functools.lru_cache(maxsize=None)
def _w4a8_weights(g):
    q, gs, cs = quantize_w4a8(torch.randn(N, K, generator=torch.Generator().manual_seed(1)) * 0.05, g)
    return pack_int4(q).to(DEVICE), gs.to(DEVICE), cs.to(DEVICE)


@functools.lru_cache(maxsize=None)
def _w4a16_weights(g):
    q, s = quantize_int4_groupwise(torch.randn(N, K, generator=torch.Generator().manual_seed(2)) * 0.05, g)
    return pack_int4(q).to(DEVICE), s.to(DEVICE), q.to(DEVICE)


# ------------------------------------------------------------------------------------------------ W8A8

def _w8a8_args(m, with_bias, output):
    x_q, w_q = _q(m, K), _q(N, K)
    x_scale, w_scale = torch.tensor(0.0123, device=DEVICE), torch.rand(N, device=DEVICE) * 1e-3 + 5e-4
    bias = torch.randn(N, device=DEVICE) if with_bias else None
    out_scale = None
    if output == "int8":  # spread so that some outputs clamp and most do not
        y = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias, out_dtype=torch.float32)
        out_scale = y.abs().amax() / 200 * (torch.rand(N, device=DEVICE) + 0.5)
    return x_q, x_scale, w_q, w_scale, bias, out_scale, torch.float16


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("output", ["float16", "int8"])
def test_w8a8_gemv_bit_exact(gv, poisoned, m, with_bias, output):
    args = _w8a8_args(m, with_bias, output)
    ref = w8a8_gemm_ref(*args)
    block_m = {1: 1, 3: 2, 16: 8}[m]  # M = 3, 16: several row blocks
    y = gv[1]._w8a8_gemm_launch(*args, config=gv[0].GemvConfig(block_m=block_m, block_n=16, block_k=128,
                                                                 num_warps=1))
    assert y.dtype == ref.dtype and y.shape == (m, N) and torch.equal(y, ref)
    assert torch.equal(w8a8_gemm(*args), ref)  # the launcher's own choice: the GEMV at these M
    if output == "int8" and m == 16:  # the data reach both clamped and unclamped outputs
        assert (y.abs() >= 127).any() and (y.abs() < 100).any()


@PREFETCH
@pytest.mark.parametrize("block_k", [4, 32, 256])  # 4: one word a step; 256: K = 384 ends in a half step
def test_w8a8_gemv_split(gv, poisoned, block_k, prefetch):
    args = _w8a8_args(3, True, "int8")
    cfg = _small(gv, block_m=2, block_k=block_k, split=3 if block_k <= 32 else 2, prefetch=prefetch)
    assert torch.equal(gv[1]._w8a8_gemm_launch(*args, config=cfg), w8a8_gemm_ref(*args))


# ------------------------------------------------------------------------------------------------ W4A8

def _w4a8_case(m, g, with_bias, output):
    packed, gs, cs = _w4a8_weights(g)
    x_q, x_scale = _q(m, K), torch.tensor(0.021, device=DEVICE)
    bias = torch.randn(N, device=DEVICE) if with_bias else None
    y32 = w4a8_gemm_ref(x_q, x_scale, packed, gs, cs, g, bias, torch.float32)
    if output == "int8":
        out_scale = y32.abs().amax(0) / 100 + 1e-3  # a little clamping
        return (x_q, x_scale, packed, gs, cs, g, bias, torch.float32, out_scale), quantize_ref(y32, out_scale)
    ref = w4a8_gemm_ref(x_q, x_scale, packed, gs, cs, g, bias, torch.float16)
    return (x_q, x_scale, packed, gs, cs, g, bias, torch.float16, None), ref


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("g", GROUPS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("output", ["float16", "int8"])
def test_w4a8_gemv_bit_exact(gv, poisoned, m, g, with_bias, output):
    args, ref = _w4a8_case(m, g, with_bias, output)
    y = gv[2]._w4a8_gemm_launch(*args, config=_default(gv, "w4a8", m, g))
    assert y.dtype == ref.dtype and y.shape == (m, N) and torch.equal(y, ref)
    if m == 1:  # the launcher's own choice is the GEMV
        assert torch.equal(w4a8_gemm(*args[:-1], out_scale=args[-1]), ref)


PREFETCH_MODES = [True, 2, False, "l2"]  # PREFETCH_L2's values
# block_k 64: every group size x every prefetch mode; block_k 8 (one word a step, 16 steps a slice: 4.5 s a case in
# the interpreter): every prefetch mode at one group size, every group size with the default prefetch
W4A8_SPLIT_CASES = ([(64, g, p) for g in GROUPS for p in PREFETCH_MODES] + [(8, 48, p) for p in PREFETCH_MODES]
                    + [(8, g, True) for g in GROUPS if g != 48])


@pytest.mark.parametrize("block_k,g,prefetch", W4A8_SPLIT_CASES)
def test_w4a8_gemv_split(gv, poisoned, g, block_k, prefetch):
    """Split-K over 3 slices; block_k 64 does not divide 48 (a scale gathered per word), 8 is one word a step."""
    args, ref = _w4a8_case(3, g, True, "int8")
    y = gv[2]._w4a8_gemm_launch(*args, config=_small(gv, block_k=block_k, prefetch=prefetch))
    assert torch.equal(y, ref)


def test_w4_gemv_small_steps_inside_groups_of_48(gv, poisoned):
    """block_k 16 divides 48: one scale per row and step (the default on a GPU for this group size), split-K."""
    cfg = _small(gv, block_m=1, block_k=16, split=2)
    args, ref = _w4a8_case(1, 48, True, "float16")
    assert torch.equal(gv[2]._w4a8_gemm_launch(*args, config=cfg), ref)
    packed, s, q = _w4a16_weights(48)
    x = torch.randn(1, K, device=DEVICE).half()
    _check_w4a16(gv[2]._w4a16_gemm_launch(x, packed, s, 48, None, config=cfg), x, q, s, 48, None, 1e-3)


@PREFETCH_L2
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("g", [48, -1])
def test_w4_gemv_ragged_last_step(gv, poisoned, g, split, prefetch):
    """K = 96 with block_k 64: the second step (in its own slice, or the one slice's last) is half outside K
    (masked; with prefetch, the lookahead load past it too), scales gathered (48) or one per row (-1)."""
    k, cfg = 96, _small(gv, block_m=1, block_k=64, split=split, prefetch=prefetch)
    q, gs, cs = quantize_w4a8(torch.randn(N, k) * 0.05, g)
    packed, gs, cs = pack_int4(q).to(DEVICE), gs.to(DEVICE), cs.to(DEVICE)
    x_q = _q(1, k)
    ref = w4a8_gemm_ref(x_q, 0.03, packed, gs, cs, g, None, torch.float16)
    assert torch.equal(gv[2]._w4a8_gemm_launch(x_q, 0.03, packed, gs, cs, g, config=cfg), ref)
    q, s = quantize_int4_groupwise(torch.randn(N, k) * 0.05, g)
    x = torch.randn(1, k, device=DEVICE).half()
    y = gv[2]._w4a16_gemm_launch(x, pack_int4(q).to(DEVICE), s.to(DEVICE), g, None, config=cfg)
    assert rel_err(y, w4a16_gemm_ref(x, pack_int4(q).to(DEVICE), s.to(DEVICE), g)) < 1e-3


# ------------------------------------------------------------------------------------------------ W4A16

def _check_w4a16(y, x, q, s, g, bias, bound):
    """The bound of the module docstring: one output rounding step from the exactly summed fp32-weight result."""
    packed = pack_int4(q)
    ref = w4a16_gemm_ref(x, packed, s, g, bias)
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert not torch.isnan(y).any() and rel_err(y, ref) < bound
    gsz = K if g == -1 else g
    w = q.float() * s.float().repeat_interleave(gsz, dim=1)  # exact in fp32
    x2 = x.reshape(-1, K).double()
    exact = x2 @ w.double().T + (bias.double() if bias is not None else 0)
    abs_terms = x2.abs() @ s.double().repeat_interleave(gsz, dim=1).abs().T  # sum_k |x_k s_k|
    step = torch.finfo(x.dtype).eps * exact.abs() + 2.0 ** -16 * abs_terms + 1e-6
    assert ((y.reshape(exact.shape).double() - exact).abs() <= step).all()


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("g", GROUPS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_w4a16_gemv_matches_reference(gv, poisoned, m, g, with_bias):
    packed, s, q = _w4a16_weights(g)
    x = torch.randn(m, K, device=DEVICE).half()
    bias = torch.randn(N, device=DEVICE) if with_bias else None
    y = gv[2]._w4a16_gemm_launch(x, packed, s, g, bias, config=_default(gv, "w4a16", m, g))
    _check_w4a16(y, x, q, s, g, bias, 1e-3)
    if m == 1:  # the launcher's own choice is the GEMV
        assert torch.equal(w4a16_gemm(x, packed, s, g, bias), y)


@PREFETCH_L2
@pytest.mark.parametrize("dtype,bound", W4A16_DTYPES, ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("g", [128, 48])
def test_w4a16_gemv_split_and_dtypes(gv, poisoned, dtype, bound, g, prefetch):
    """Split-K (3 slices, summed in slice order by the last one to finish), x dtypes, batch dims."""
    packed, s, q = _w4a16_weights(g)
    x, bias = torch.randn(2, 3, K, device=DEVICE).to(dtype), torch.randn(N, device=DEVICE)
    cfg = _small(gv, block_m=2, prefetch=prefetch)
    y = gv[2]._w4a16_gemm_launch(x, packed, s, g, bias, config=cfg)
    assert y.shape == (2, 3, N)
    _check_w4a16(y, x, q, s, g, bias, bound)
    if dtype == torch.float16:  # deterministic: the partials are added in slice order, whoever finishes last
        assert torch.equal(y, gv[2]._w4a16_gemm_launch(x, packed, s, g, bias, config=cfg))


# ------------------------------------------------------------------------------------------------ conv step

def _conv_step(m, dim, offset, width=4, with_bias=True):
    """A ConvStep over channels [offset, offset + dim) of the projection's output, fresh int8 state and taps;
    scales put the outputs mostly inside int8 with some clamping."""
    from quamba.ops.conv1d import ConvStep

    bias = torch.randn(dim, device=DEVICE) * 0.3 if with_bias else None
    return ConvStep(_q(m, dim, width), _q(dim, width), torch.tensor(0.01, device=DEVICE),
                    torch.rand(dim, device=DEVICE) * 0.01 + 0.005, torch.rand(dim, device=DEVICE) * 0.02 + 0.01,
                    bias, offset)


def _check_conv_step(y, u, conv, y_ref, conv_ref):
    u_ref = conv_ref.run(y_ref, reference=True)
    assert torch.equal(y, y_ref) and u.dtype == torch.int8 and torch.equal(u, u_ref)
    assert torch.equal(conv.state, conv_ref.state)  # shifted in place, the new input last
    assert (u.abs() < 100).any()


@PREFETCH
@pytest.mark.parametrize("fmt", ["w8a8", "w4a8"])
@pytest.mark.parametrize("m, offset, dim, width, split", [
    (1, 5, 20, 4, 1),    # channels straddle two tiles of 16, the others of the first untouched
    (3, 0, N, 3, 3),     # every channel, batch rows in two blocks, split-K: the last slice steps the conv
    (2, 30, 7, 2, 2),    # the ragged last tile
])
def test_conv_step_in_the_gemv_epilogue(gv, poisoned, fmt, m, offset, dim, width, split, prefetch):
    """in_proj + conv update in one GEMV (the decode step's fusion): y, the conv output and the shifted state are
    bit-identical to the projection's reference followed by qcausal_conv1d_update_ref on its channels."""
    conv = _conv_step(m, dim, offset, width, with_bias=split != 2)
    conv_ref = conv._replace(state=conv.state.clone())
    cfg = _small(gv, block_m=2, block_n=16, split=split, prefetch=prefetch)
    if fmt == "w8a8":
        args = _w8a8_args(m, True, "int8")
        y, u = gv[1]._w8a8_gemm_launch(*args, config=cfg, conv=conv)
        y_ref = w8a8_gemm_ref(*args)
    else:
        args, y_ref = _w4a8_case(m, 64, True, "int8")
        y, u = gv[2]._w4a8_gemm_launch(*args, config=cfg, conv=conv)
    _check_conv_step(y, u, conv, y_ref, conv_ref)


def test_conv_step_through_the_ops_on_every_path(gv, poisoned, monkeypatch):
    """The public ops take ``conv=`` on the GEMV path (fused: no separate conv kernel) and off it (M = 16: the
    tensor-core GEMM, then the conv kernel), with the same results; a float output or a bad offset is refused."""
    from quamba.ops.triton import conv1d as conv_kernels

    updates = []
    real = conv_kernels._qcausal_conv1d_update_launch
    monkeypatch.setattr(conv_kernels, "_qcausal_conv1d_update_launch", lambda *a: updates.append(1) or real(*a))
    for m, fused in ((1, True), (16, False)):
        conv = _conv_step(m, 12, 20)
        conv_ref = conv._replace(state=conv.state.clone())
        args = _w8a8_args(m, False, "int8")
        y, u = w8a8_gemm(*args, conv=conv)
        _check_conv_step(y, u, conv, w8a8_gemm_ref(*args), conv_ref)
        w4_args, y_ref = _w4a8_case(m, 128, False, "int8")
        conv = _conv_step(m, 12, 20)
        conv_ref = conv._replace(state=conv.state.clone())
        y, u = w4a8_gemm(*w4_args[:-1], out_scale=w4_args[-1], conv=conv)
        _check_conv_step(y, u, conv, y_ref, conv_ref)
        assert len(updates) == (0 if fused else 2)
    args = _w8a8_args(1, False, "float16")
    with pytest.raises(QuambaError, match="int8 output"):
        w8a8_gemm(*args, conv=_conv_step(1, 12, 20))
    args = _w8a8_args(1, False, "int8")
    with pytest.raises(QuambaError, match="does not fit"):
        w8a8_gemm(*args, conv=_conv_step(1, 12, 30))


# ------------------------------------------------------------------------------------------------ plumbing

def test_strided_activations_and_counters_reset(gv, poisoned):
    """x as a column slice of a wider tensor (row stride != K); after split launches every counter is back at 0."""
    wide = _q(5, 2 * K)
    x_q = wide[:, K:]
    args = (x_q, torch.tensor(0.01, device=DEVICE), _q(N, K), torch.rand(N, device=DEVICE) * 1e-3)
    y = gv[1]._w8a8_gemm_launch(*args, config=_small(gv, block_m=2, block_k=32, split=4))
    assert torch.equal(y, w8a8_gemm_ref(x_q.contiguous(), *args[1:]))
    counters = gv[1]._COUNTERS[x_q.get_device()]
    assert counters.dtype == torch.int32 and not counters.any()


def test_launchers_dispatch_by_rows(gv, poisoned, monkeypatch):
    """M <= GEMV_MAX_M takes the GEMV, larger M the tensor-core kernel; an explicit config type picks the path."""
    calls = []
    for name in ("w8a8_gemv_into", "w4a8_gemv_into", "w4a16_gemv_into"):
        real = getattr(gv[0], name)
        monkeypatch.setattr(gv[0], name, lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw))
    x_q, s = _q(2, K), torch.ones((), device=DEVICE)
    w_q = _q(N, K)
    limit = gv[0].GEMV_MAX_M["w8a8"]
    w8a8_gemm(_q(limit, K), s, w_q, s)
    w8a8_gemm(_q(limit + 1, K), s, w_q, s)
    gv[1]._w8a8_gemm_launch(x_q, s, w_q, s, config=gv[1].GemmConfig(block_m=16, block_n=16, block_k=64))
    gv[1]._w8a8_gemm_launch(_q(40, K), s, w_q, s, config=_small(gv))
    packed, gs, cs = _w4a8_weights(128)
    w4a8_gemm(x_q, s, packed, gs, cs, 128)
    packed, sc, _ = _w4a16_weights(128)
    w4a16_gemm(torch.randn(2, K, device=DEVICE).half(), packed, sc, 128)
    assert calls == ["w8a8_gemv_into", "w8a8_gemv_into", "w4a8_gemv_into", "w4a16_gemv_into"]


def test_config_validation(gv):
    with pytest.raises(QuambaError, match="power of two"):
        gv[0].GemvConfig(block_n=24)
    with pytest.raises(QuambaError, match="lookahead=3 must be 1 or 2"):
        gv[0].GemvConfig(lookahead=3)
    with pytest.raises(QuambaError, match="less than one weight word"):
        args, _ = _w4a8_case(1, 128, False, "float16")
        gv[2]._w4a8_gemm_launch(*args, config=gv[0].GemvConfig(block_k=4))


def test_unfit_shapes_take_the_tensor_core_kernels(gv, poisoned):
    """K no multiple of a word, or weight rows that are not aligned words: the launchers' own choice is the
    tensor-core kernel (still exact); an explicit GemvConfig is refused with the reason."""
    x_q, s = _q(1, 102), torch.tensor(0.01, device=DEVICE)
    w_q = _q(N, 102)
    ref = w8a8_gemm_ref(x_q, s, w_q, s)
    assert torch.equal(w8a8_gemm(x_q, s, w_q, s), ref)
    with pytest.raises(QuambaError, match="K=102 is no multiple"):
        gv[1]._w8a8_gemm_launch(x_q, s, w_q, s, config=gv[0].GemvConfig())
    wide = _q(N, K + 1)
    w_view = wide[:, 1:]  # rows at odd byte offsets
    x_q = _q(1, K)
    assert torch.equal(w8a8_gemm(x_q, s, w_view, s), w8a8_gemm_ref(x_q, s, w_view.contiguous(), s))
    with pytest.raises(QuambaError, match="aligned"):
        gv[1]._w8a8_gemm_launch(x_q, s, w_view, s, config=gv[0].GemvConfig())


def test_unaligned_int8_activations_are_copied(gv, poisoned):
    """x rows at an odd byte offset cannot be read as words: the GEMV reads an aligned copy (still exact)."""
    wide = _q(2, K + 1)
    x_q = wide[:, 1:]
    w_q = _q(N, K)
    s = torch.tensor(0.01, device=DEVICE)
    y = gv[1]._w8a8_gemm_launch(x_q, s, w_q, s, config=_small(gv, block_m=2))
    assert torch.equal(y, w8a8_gemm_ref(x_q.contiguous(), s, w_q, s))


def test_default_configs_for_decode_shapes(gv, monkeypatch):
    """The heuristic on a 132-SM GPU for the model shapes: slices of two steps (one where programs are few) while
    there are at most SHORT_SLICE_PROGRAMS_PER_SM programs per SM; else long unrolled slices with split-K just
    enough for IN_FLIGHT_PER_SM bytes of weight loads in flight per SM (or capped); valid sweep candidates."""
    gemv = gv[0]
    monkeypatch.setattr(gemv, "_sm_count", lambda index: 132)
    gemv.default_config.cache_clear()
    shapes = [(8192, 2048), (2048, 4096), (10240, 2560), (2560, 5120), (192, 5120), (5120, 160), (10576, 2560),
              (18560, 4096), (4096, 8192), (50280, 2560)]
    kinds = set()
    try:
        for fmt in ("w8a8", "w4a8", "w4a16"):
            vpw = gemv.VALUES_PER_WORD[fmt]
            for n, k in shapes:
                g = None if fmt == "w8a8" else (128 if k % 128 == 0 else k)
                for m in (1, 4, 16):
                    cfg = gemv.default_config(fmt, m, n, k, g, 0)
                    assert cfg.block_m == m and cfg.block_k % vpw == 0
                    assert cfg.block_n == 32 or m * cfg.block_n * cfg.block_k // vpw <= 32 * 128
                    tiles, steps = -(-n // cfg.block_n), -(-k // cfg.block_k)
                    if cfg.unroll == 1 and -(-steps // cfg.split) <= 2:  # short slices
                        kinds.add("short")
                        assert cfg.prefetch
                        assert tiles * cfg.split <= gemv.SHORT_SLICE_PROGRAMS_PER_SM * 132
                        assert cfg.split == steps or tiles * cfg.split >= 2 * 132
                    else:
                        kinds.add("long")
                        row_bytes = cfg.block_k // (1 if fmt == "w8a8" else 2)
                        in_flight = tiles * cfg.block_n * row_bytes * cfg.unroll * cfg.split / 132
                        cap = max(1, min(8, steps // 2))
                        target = gemv.IN_FLIGHT_PER_SM[fmt]
                        assert in_flight >= target or cfg.split == cap
                        assert cfg.split == 1 or in_flight / cfg.split * (cfg.split - 1) < target
                        assert cfg.prefetch == (fmt != "w4a8") and cfg.unroll == (1 if fmt == "w8a8" else 2)
                    cands = gemv.candidate_configs(fmt, m, n, k, g, 0)
                    assert cands[0] == cfg and len(set(cands)) == len(cands) > 10
                    assert all(c.block_k >= vpw for c in cands)
                    assert any(c.prefetch != cfg.prefetch for c in cands)
                    if cfg.prefetch:  # lookahead 2, with the default's slices and with slices twice as long
                        ahead = [c for c in cands if c.lookahead == 2]
                        longer = replace(cfg, lookahead=2, split=max(1, -(-steps // 4)))
                        assert ahead == list(dict.fromkeys([replace(cfg, lookahead=2), longer]))
                        l2 = [c for c in cands if c.l2_prefetch]
                        assert l2 == list(dict.fromkeys(replace(cfg, l2_prefetch=True, split=max(1, -(-steps // s)))
                                                        for s in (2, 4, 8)))
        assert kinds == {"short", "long"}
        # the swept shapes get the sweep's best configs
        assert gemv.default_config("w4a8", 1, 10576, 2560, 128, 0).describe() == "gemv 1x64x128 split10 w4 s1"
        assert gemv.default_config("w8a8", 1, 192, 5120, None, 0).describe() == "gemv 1x32x256 split20 w4 s1"
        assert gemv.default_config("w4a8", 1, 18560, 4096, 128, 0).describe() == \
            "gemv 1x32x128 split6 w4 s1 u2 no-prefetch"
    finally:
        gemv.default_config.cache_clear()


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs and the tuned configs need a GPU")
def test_cuda_decode_shapes_and_graph_capture(gv):
    """Default configs on a model-sized shape (bit-exact), and a split-K GEMV captured in a CUDA graph: the replay
    recomputes from the (static) inputs and leaves the counters at zero."""
    n, k, g = 2560, 5120, 128
    x_q = _q(1, k)
    q, gs, cs = quantize_w4a8(torch.randn(n, k) * 0.05, g)
    packed, gs, cs = pack_int4(q).cuda(), gs.cuda(), cs.cuda()
    ref = w4a8_gemm_ref(x_q, 0.02, packed, gs, cs, g, None, torch.float16)
    assert torch.equal(w4a8_gemm(x_q, 0.02, packed, gs, cs, g), ref)
    cfg = gv[0].GemvConfig(block_n=16, block_k=128, split=4)
    x_scale = torch.tensor(0.02, device=DEVICE)  # as the modules pass it: a device tensor (no copy while capturing)
    call = lambda: gv[2]._w4a8_gemm_launch(x_q, x_scale, packed, gs, cs, g, config=cfg)  # noqa: E731
    call()  # warm-up: compiles, allocates the counters
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = call()
    x_q.copy_(_q(1, k))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, w4a8_gemm_ref(x_q, 0.02, packed, gs, cs, g, None, torch.float16))
    assert not gv[1]._COUNTERS[x_q.get_device()].any()


def test_dependent_launch_switch(monkeypatch):
    """Programmatic dependent launch: off for CPU tensors, on for sm_90+ unless QUAMBA_PDL=0, off before sm_90."""
    from quamba.ops.triton import _common

    assert not _common.use_pdl(torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    try:
        _common._pdl_device.cache_clear()
        assert _common._pdl_device(0) == (_common.gdc_wait is not None)
        _common._pdl_device.cache_clear()
        monkeypatch.setenv("QUAMBA_PDL", "0")
        assert not _common._pdl_device(0)
        _common._pdl_device.cache_clear()
        monkeypatch.delenv("QUAMBA_PDL")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0))
        assert not _common._pdl_device(0)
    finally:
        _common._pdl_device.cache_clear()


@pytest.mark.skipif(not ON_GPU, reason="programmatic dependent launch needs a GPU")
def test_dependent_launch_chain_in_a_graph(gv, monkeypatch):
    """A chain of 12 dependent decode kernels (int8 GEMV -> int8 GEMV ..., W8A8 and W4A8 alternating, split-K),
    captured in a CUDA graph with dependent launch on: every kernel waits for its predecessor, so the replay gives
    exactly the eager results computed with dependent launch off."""
    from quamba.ops.triton import _common

    n = k = 1024
    q, gs, cs = quantize_w4a8(torch.randn(n, k) * 0.05, 128)
    packed, gs, cs = pack_int4(q).cuda(), gs.cuda(), cs.cuda()
    w8, ws = _q(n, k), torch.rand(n, device=DEVICE) * 1e-3 + 5e-4
    s = torch.tensor(0.02, device=DEVICE)
    out_scale = torch.full((n,), 0.05, device=DEVICE)

    def chain(x):
        for i in range(12):
            if i % 2:
                x = w8a8_gemm(x, s, w8, ws, None, out_scale)
            else:
                x = w4a8_gemm(x, s, packed, gs, cs, 128, out_scale=out_scale)
        return x

    x0 = _q(1, k)
    try:
        monkeypatch.setenv("QUAMBA_PDL", "0")
        _common._pdl_device.cache_clear()
        expected = chain(x0.clone())
        monkeypatch.delenv("QUAMBA_PDL")
        _common._pdl_device.cache_clear()
        assert _common.use_pdl(x0)  # an H100: on
        x_in = x0.clone()
        chain(x_in)  # warm-up: compiles, allocates the split-K counters
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = chain(x_in)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, expected) and (expected != 0).any()
    finally:
        _common._pdl_device.cache_clear()


@pytest.mark.parametrize("g", [128, -1])  # group scales a step ahead with the weights; one scale per row
def test_parameters_read_after_the_wait_give_the_same_bits(gv, poisoned, monkeypatch, g):
    """``_common.EARLY_PARAMS`` off (the benchmarks' A/B switch) reads the W4 group scales and the epilogue's
    parameters after the dependent-launch wait, the order before it existed: same results, W4A8 with a conv step
    in the epilogue and W4A16."""
    from quamba.ops.triton import _common

    args, ref = _w4a8_case(3, g, True, "int8")
    packed, s, _ = _w4a16_weights(g)
    x = torch.randn(3, K, device=DEVICE).half()
    cfg = _small(gv, block_k=64)
    conv = _conv_step(3, 20, 9)
    conv_ref = conv._replace(state=conv.state.clone())
    outs = []
    for early in (True, False):
        monkeypatch.setattr(_common, "EARLY_PARAMS", early)
        step = conv._replace(state=conv_ref.state.clone())
        y, u = gv[2]._w4a8_gemm_launch(*args, config=cfg, conv=step)
        _check_conv_step(y, u, step, ref, conv_ref._replace(state=conv_ref.state.clone()))
        outs.append(gv[2]._w4a16_gemm_launch(x, packed, s, g, None, config=cfg))
    assert torch.equal(outs[0], outs[1])
