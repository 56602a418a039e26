"""The int8-input scans in Triton (Mamba1 selective scan, Mamba2 chunked SSD; prefill and one-step update, fp32 or
int8 state) against their references: dequantize (q.float() * scale), run the float reference, cast y.

Inputs are laid out as the A8 mixers pass them (strided views of the projections' and the conv's outputs, never
copied). On a GPU the kernels run on CUDA; without one in Triton's interpreter. Float outputs are NaN-poisoned so that
an unwritten element fails the test.

Bounds (norm-wise relative error against the reference):
  Mamba1 y: the same fp32 arithmetic as the reference, so only the last rounding differs: 1e-5 for fp32 y, 1e-3
    for fp16 y (a few elements one fp16 step apart, a step being at most 2^-10 of the value). fp32 state: 1e-5.
  Mamba2 y and state: with fp32 y the products are full fp32: 2e-5; with fp16 y they run on fp16 operands (the
    decay-weighted factor and the state rounded to fp16, as the fp16 model's kernels do): 4e-3.
  int8 states: q equals quantize_state_ref of the same kernel's fp32 state (at most one step off, for at most 0.1%
    of the values, where a compiled GPU kernel rounds its fp32 state differently), scales to 1e-6.
"""
import math

import pytest
import torch

from quamba.errors import QuambaError
from quamba.modules.linear import W8A8Linear
from quamba.modules.mamba2 import QSSDScan
from quamba.modules.scan import Int8State, QSelectiveScan
from quamba.ops.quant import int_matmul_ref, w8a8_gemm_ref
from quamba.ops.selective_scan import (DT_PROJ_FUSED_MAX_BATCH, DtProj, dequantize_state_ref, qselective_scan,
                                       qselective_scan_ref, qselective_state_update, qselective_state_update_ref,
                                       quantize_state_ref)
from quamba.ops.triton import use_triton
from quamba.ops.ssd import qssd_chunked, qssd_chunked_ref, qssd_state_update, qssd_state_update_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

Y_BOUND_M1 = {torch.float32: 1e-5, torch.float16: 1e-3}
STATE_BOUND_M1 = 1e-5
BOUND_M2 = {torch.float32: 2e-5, torch.float16: 4e-3}  # y and state
SCALE_BOUND = 1e-6


def _q(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEVICE)


def _scalar(v):
    return torch.tensor(v, device=DEVICE)


def _copy_state(state):
    return tuple(t.clone() for t in state) if isinstance(state, tuple) else state.clone()


def _state_tensors(state):
    return state if isinstance(state, tuple) else (state,)


def _random_state(shape, int8):
    h = torch.randn(*shape, device=DEVICE)
    return quantize_state_ref(h) if int8 else h


def _same(a, b):
    """The same kernel computation in two compiled variants (fp32 / int8 state): identical in the interpreter; on a
    GPU the compiler may round an fp32 step differently, so a few fp16 outputs may be one step apart."""
    return torch.equal(a, b) if not ON_GPU else rel_err(a, b) < 1e-3


def _assert_int8_state_is_quantized(q_state, h):
    """The kernel's int8 state is quantize_state_ref of its fp32 state h (computed by the same kernel without int8)."""
    q, scale = q_state
    q_ref, scale_ref = quantize_state_ref(h)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == scale_ref.shape
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3
    assert rel_err(scale, scale_ref) < SCALE_BOUND


# ---------------------------------------------------------------------------------------------- Mamba1

def _mamba1_inputs(b, d, n, length, dt_rank=3, conv_channels_last=True):
    """The A8Mamba1Mixer's views: u [B, D, L] = the conv output (channels-last on the GPU, contiguous from the CPU
    reference conv), dt = dt_proj's [B, L, D] transposed, B / C = column slices of x_proj's [B, L, dt_rank + 2N]
    transposed, z = the second half of in_proj's [B, L, 2D] transposed; plus the module's parameters."""
    u = _q(b, length, d).transpose(1, 2) if conv_channels_last else _q(b, d, length)
    x_dbl = _q(b, length, dt_rank + 2 * n)
    z = _q(b, length, 2 * d).transpose(1, 2)[:, d:]
    return dict(
        u=u, delta=_q(b, length, d).transpose(1, 2), B=x_dbl[..., dt_rank:dt_rank + n].transpose(1, 2),
        C=x_dbl[..., dt_rank + n:].transpose(1, 2), z=z,
        A_log=torch.log(torch.rand(d, n, device=DEVICE) * 15 + 1), D=torch.randn(d, device=DEVICE),
        delta_bias=torch.rand(d, device=DEVICE) * 2 - 4,
        u_scale=_scalar(0.02), delta_scale=_scalar(0.01), B_scale=_scalar(0.03), C_scale=_scalar(0.03),
        z_scale=_scalar(0.03))


@pytest.mark.parametrize("n,out_dtype,init,final_int8,conv_channels_last", [
    (16, torch.float16, "int8", True, True),
    (12, torch.float32, "fp32", False, False),
    (12, torch.float16, None, False, True),
])
def test_qselective_scan_matches_reference(poisoned, n, out_dtype, init, final_int8, conv_channels_last):
    b, d, length = 2, 37, 45  # D, L not multiples of the tiles or of the 4-step walk
    a = _mamba1_inputs(b, d, n, length, conv_channels_last=conv_channels_last)
    state = None if init is None else _random_state((b, d, n), init == "int8")
    kw = dict(initial_state=state, return_final_state=True, out_dtype=out_dtype)
    y, h = qselective_scan(**a, **kw)
    y_ref, h_ref = qselective_scan_ref(**a, **kw)
    assert y.dtype == out_dtype and y.shape == (b, d, length)
    assert y.stride(1) == 1  # [B, L, D] memory: rows of D for the Hadamard and out_proj
    assert rel_err(y, y_ref) < Y_BOUND_M1[out_dtype]
    assert h.dtype == torch.float32 and rel_err(h, h_ref) < STATE_BOUND_M1
    if final_int8:
        y8, h8 = qselective_scan(**a, **kw, final_state_int8=True)
        assert _same(y8, y)
        _assert_int8_state_is_quantized(h8, h)


def test_qselective_scan_without_z_d_state_and_of_one_step(poisoned):
    a = _mamba1_inputs(2, 5, 4, 1)
    a.update(z=None, z_scale=None, D=None)
    y = qselective_scan(**a, out_dtype=torch.float32)
    assert rel_err(y, qselective_scan_ref(**a, out_dtype=torch.float32)) < 1e-5


@pytest.mark.parametrize("int8_state,out_dtype", [(False, torch.float32), (True, torch.float16)])
def test_qselective_state_update_matches_reference(poisoned, int8_state, out_dtype):
    b, d, n, dt_rank = 3, 37, 12, 3
    # A8Mamba1Mixer.step: x / z halves of in_proj's [B, 2D], dt from dt_proj, B / C columns of x_proj's output.
    xz, x_dbl = _q(b, 2 * d), _q(b, dt_rank + 2 * n)
    a = _mamba1_inputs(b, d, n, 1)
    args = dict(x=xz[:, :d], dt=_q(b, d), A_log=a["A_log"], B=x_dbl[:, dt_rank:dt_rank + n], C=x_dbl[:, dt_rank + n:],
                x_scale=a["u_scale"], dt_scale=a["delta_scale"], B_scale=a["B_scale"], C_scale=a["C_scale"],
                D=a["D"], z=xz[:, d:], z_scale=a["z_scale"], dt_bias=a["delta_bias"], out_dtype=out_dtype)
    state = _random_state((b, d, n), int8_state)
    start, state_ref, early = _copy_state(state), _copy_state(state), _copy_state(state)
    y = qselective_state_update(state, **args)
    y_ref = qselective_state_update_ref(state_ref, **args)
    assert y.dtype == out_dtype and rel_err(y, y_ref) < Y_BOUND_M1[out_dtype]
    # the decode step's variant: state and parameters read before the wait for the previous kernel, same bits
    assert _same(qselective_state_update(early, **args, prefetch_state=True), y)
    assert all(_same(e, s) for e, s in zip(_state_tensors(early), _state_tensors(state)))
    if not int8_state:
        assert rel_err(state, state_ref) < STATE_BOUND_M1
        return
    h = dequantize_state_ref(*start)  # the same step on the fp32 copy of the starting state, by the kernel
    assert _same(y, qselective_state_update(h, **args))  # y comes from the fp32 state before it is rounded
    _assert_int8_state_is_quantized(state, h)
    assert rel_err(dequantize_state_ref(*state), dequantize_state_ref(*state_ref)) < 1e-2  # one int8 step at most


def _dt_proj(d, r, scales):
    """A random DtProj. "channel" / "tensor": per-channel / per-tensor scales that spread dt over the int8 range; "ties": power-of-two scales and weights in [-1, 1], so that dt = acc / 4 and every acc = 2
    mod 4 is a rounding tie (to even, as the reference's torch.round)."""
    if scales == "ties":
        w = torch.randint(-1, 2, (d, r), dtype=torch.int8, device=DEVICE)
        return DtProj(w, _scalar(0.25), torch.ones(1, device=DEVICE), torch.ones(1, device=DEVICE))
    n_scales = d if scales == "channel" else 1
    x_scale, w_scale = _scalar(0.02), torch.rand(n_scales, device=DEVICE) * 0.01 + 0.005
    # acc has a std of about 5500 sqrt(R) (int8 values: 74 each): dt's is about 75
    out_scale = x_scale * w_scale * math.sqrt(r) * 70 * (1 + 0.1 * torch.rand(n_scales, device=DEVICE))
    return DtProj(_q(d, r), x_scale, w_scale, out_scale)


def _update_args(b, d, n, dt_rank, out_dtype):
    """qselective_state_update's arguments but dt, laid out as A8Mamba1Mixer.step passes them (x / z halves of
    in_proj's [B, 2D]; B / C columns of x_proj's [B, R + 2N]), and dt_low: the first R columns of x_proj's output."""
    xz, x_dbl = _q(b, 2 * d), _q(b, dt_rank + 2 * n)
    a = _mamba1_inputs(b, d, n, 1)
    args = dict(x=xz[:, :d], A_log=a["A_log"], B=x_dbl[:, dt_rank:dt_rank + n], C=x_dbl[:, dt_rank + n:],
                x_scale=a["u_scale"], dt_scale=a["delta_scale"], B_scale=a["B_scale"], C_scale=a["C_scale"],
                D=a["D"], z=xz[:, d:], z_scale=a["z_scale"], dt_bias=a["delta_bias"], out_dtype=out_dtype)
    return args, x_dbl[:, :dt_rank]


@pytest.mark.parametrize("dt_rank,scales,int8_state,out_dtype,b", [
    (5, "channel", False, torch.float32, 2),
    (5, "tensor", True, torch.float16, 1),
    (12, "ties", False, torch.float16, 2),
    (300, "channel", True, torch.float32, 2),  # words (dp4a): 75 words in one pass
    (301, "channel", True, torch.float32, 2),  # bytes (R not a multiple of 4), over one 256-wide tile: two passes
    (12, "channel", False, torch.float32, 3),  # over DT_PROJ_FUSED_MAX_BATCH: dt_proj's own GEMV, then the update
])
@pytest.mark.parametrize("words", [True, False], ids=["words", "bytes"])
def test_qselective_state_update_with_dt_proj_equals_dt_proj_then_update(poisoned, monkeypatch, dt_rank, scales,
                                                                        int8_state, out_dtype, b, words):
    """dt_proj fused into the update computes the int8 dt exactly as w8a8_gemm_ref does, so the kernel's y and state
    equal the same kernel's on that dt, bit for bit; the reference with dt_proj is the two-step reference."""
    from quamba.ops import quant

    gemms = []
    real_gemm = quant.w8a8_gemm
    monkeypatch.setattr(quant, "w8a8_gemm", lambda *a, **kw: gemms.append(1) or real_gemm(*a, **kw))
    d, n = 37, 12  # D over several 16-channel programs, the last one partial
    args, dt_low = _update_args(b, d, n, dt_rank, out_dtype)
    proj = _dt_proj(d, dt_rank, scales)
    dt_low[0], proj.weight[-2], proj.weight[-1] = 127, 127, -127  # two dt values far over the int8 range
    dt = w8a8_gemm_ref(dt_low, proj.input_scale, proj.weight, proj.weight_scale, None, proj.out_scale)
    assert dt.dtype == torch.int8 and dt.shape == (b, d)
    assert dt[0, -2] == 127 and dt[0, -1] == -128  # those two clamp, many others are well inside
    assert (dt.int().abs() < 100).float().mean() > 0.4
    if scales == "ties":
        assert (int_matmul_ref(dt_low, proj.weight) % 4 == 2).any()
    start = _random_state((b, d, n), int8_state)
    fused, two_kernels, ref, two_refs = (_copy_state(start) for _ in range(4))

    from quamba.ops.triton import selective_scan as triton_scan

    monkeypatch.setattr(triton_scan, "DT_PROJ_WORDS", words)  # the dp4a words where R allows, or the byte tile
    assert triton_scan.dt_proj_words(proj.weight, dt_low) == (words and dt_rank % 4 == 0)  # R + 2N = 36 / 324
    y = qselective_state_update(fused, dt=dt_low, dt_proj=proj, **args)
    assert len(gemms) == (b > DT_PROJ_FUSED_MAX_BATCH and use_triton(dt_low))
    assert torch.equal(y, qselective_state_update(two_kernels, dt=dt, **args))
    for t, t_ref in zip(_state_tensors(fused), _state_tensors(two_kernels)):
        assert torch.equal(t, t_ref)

    y_ref = qselective_state_update_ref(ref, dt=dt_low, dt_proj=proj, **args)
    assert torch.equal(y_ref, qselective_state_update_ref(two_refs, dt=dt, **args))
    for t, t_ref in zip(_state_tensors(ref), _state_tensors(two_refs)):
        assert torch.equal(t, t_ref)
    assert y.dtype == out_dtype and rel_err(y, y_ref) < Y_BOUND_M1[out_dtype]
    if int8_state:
        assert rel_err(dequantize_state_ref(*fused), dequantize_state_ref(*ref)) < 1e-2  # one int8 step at most
    else:
        assert rel_err(fused, ref) < STATE_BOUND_M1


# ---------------------------------------------------------------------------------------------- Mamba2

def _mamba2_inputs(b, length, h, p, g, n, conv_channels_last=True):
    """The A8Mamba2Mixer's views: x [.., H, P], B / C [.., G, N] split from the conv output over x|B|C (rows of
    channels on the GPU; on the CPU the reference conv gives [B, D, L], so a transposed view), dt = the last H columns
    of in_proj's output; plus the module's parameters. Leading dims [B, L], or [B] for one token (length None)."""
    cd = h * p + 2 * g * n
    if length is None:  # one token: [B, ...]
        xbc, zxbcdt = _q(b, cd), _q(b, 7 + cd + h)
    else:
        xbc = _q(b, length, cd) if conv_channels_last else _q(b, cd, length).transpose(1, 2)
        zxbcdt = _q(b, length, 7 + cd + h)
    x, B, C = xbc.split([h * p, g * n, g * n], dim=-1)
    lead = x.shape[:-1]
    return dict(
        x=x.reshape(*lead, h, p), dt=zxbcdt[..., -h:], B=B.reshape(*lead, g, n), C=C.reshape(*lead, g, n),
        A_log=torch.log(torch.linspace(1, 16, h, device=DEVICE)), x_scale=torch.rand(h * p, device=DEVICE) * 0.02 + 0.005,
        dt_scale=torch.rand(h, device=DEVICE) * 0.01 + 0.005, B_scale=torch.rand(g, device=DEVICE) * 0.02 + 0.01,
        C_scale=torch.rand(g, device=DEVICE) * 0.02 + 0.01, D=torch.randn(h, device=DEVICE),
        dt_bias=torch.rand(h, device=DEVICE) * 2 - 4)


@pytest.mark.parametrize("g,n,out_dtype,init,final_int8,d_per_channel,dt_limit,conv_channels_last", [
    (1, 40, torch.float16, "int8", True, False, (0.0, math.inf), True),  # N >= 32: C B^T as an int8 product
    (5, 12, torch.float32, "fp32", True, True, (0.01, 0.5), False),
    (5, 16, torch.float16, None, False, False, (0.0, math.inf), False),
])
@pytest.mark.parametrize("int8_dots", [False, True])
def test_qssd_chunked_matches_reference(poisoned, monkeypatch, g, n, out_dtype, init, final_int8, d_per_channel,
                                        dt_limit, conv_channels_last, int8_dots):
    from quamba.ops.triton import ssd as ssd_kernels

    monkeypatch.setattr(ssd_kernels, "INT8_DOTS", int8_dots)  # the chunk scan's integer products (N >= 32)
    b, length, h, p, chunk = 2, 45, 5, 12, 16  # L not a multiple of the chunk, P / N / H not powers of two
    a = _mamba2_inputs(b, length, h, p, g, n, conv_channels_last)
    if d_per_channel:
        a["D"] = torch.randn(h, p, device=DEVICE)
    state = None if init is None else _random_state((b, h, p, n), init == "int8")
    kw = dict(chunk_size=chunk, dt_limit=dt_limit, initial_state=state, return_final_state=True, out_dtype=out_dtype)
    y, st = qssd_chunked(**a, **kw)
    y_ref, st_ref = qssd_chunked_ref(**a, **kw)
    assert y.dtype == out_dtype and y.shape == (b, length, h, p)
    assert rel_err(y, y_ref) < BOUND_M2[out_dtype]
    assert st.dtype == torch.float32 and rel_err(st, st_ref) < BOUND_M2[out_dtype]
    if final_int8:
        y8, st8 = qssd_chunked(**a, **kw, final_state_int8=True)
        assert _same(y8, y)
        _assert_int8_state_is_quantized(st8, st)


@pytest.mark.parametrize("g,int8_state,out_dtype", [(5, False, torch.float32), (1, True, torch.float16)])
def test_qssd_state_update_matches_reference(poisoned, g, int8_state, out_dtype):
    b, h, p, n = 3, 5, 12, 12
    a = _mamba2_inputs(b, None, h, p, g, n)
    a["out_dtype"] = out_dtype
    state = _random_state((b, h, p, n), int8_state)
    start, state_ref = _copy_state(state), _copy_state(state)
    early = _copy_state(state)
    y = qssd_state_update(state, **a)
    y_ref = qssd_state_update_ref(state_ref, **a)
    assert y.dtype == out_dtype and rel_err(y, y_ref) < Y_BOUND_M1[out_dtype]  # same fp32 arithmetic as Mamba1's
    # the decode step's variant: state and parameters read before the wait for the previous kernel, same bits
    assert _same(qssd_state_update(early, **a, prefetch_state=True), y)
    assert all(_same(e, s) for e, s in zip(_state_tensors(early), _state_tensors(state)))
    if not int8_state:
        assert rel_err(state, state_ref) < STATE_BOUND_M1
        return
    hf = dequantize_state_ref(*start)
    assert _same(y, qssd_state_update(hf, **a))
    _assert_int8_state_is_quantized(state, hf)


# ---------------------------------------------------------------------------------------------- modules

def _qselective_scan_module(d, n):
    scan = QSelectiveScan(d, n, "float16").to(DEVICE)
    scan.A_log.copy_(torch.log(torch.rand(d, n) * 15 + 1)), scan.D.copy_(torch.randn(d))
    scan.dt_bias.copy_(torch.rand(d) * 2 - 4)
    for name, v in zip(QSelectiveScan.SCALES, (0.02, 0.01, 0.03, 0.03, 0.03)):
        getattr(scan, name).fill_(v)
    return scan


def _qssd_module(h, p, g, n, chunk):
    scan = QSSDScan(h, p, g, n, chunk, dtype="float16").to(DEVICE)
    scan.A_log.copy_(torch.log(torch.linspace(1, 16, h))), scan.D.copy_(torch.randn(h))
    scan.dt_bias.copy_(torch.rand(h) * 2 - 4)
    scan.x_scale.copy_(torch.rand(h * p) * 0.02 + 0.005), scan.dt_scale.copy_(torch.rand(h) * 0.01 + 0.005)
    scan.B_scale.copy_(torch.rand(g) * 0.02 + 0.01), scan.C_scale.copy_(torch.rand(g) * 0.02 + 0.01)
    return scan


def _prefill_then_steps(scan, prefill_args, step_args, state):
    y, state = scan(*prefill_args, state=state)
    ys = [scan.step(*args, state) for args in step_args]
    return [y] + ys, state


def _state_values(state):
    return dequantize_state_ref(state.q, state.scale) if isinstance(state, Int8State) else state


@pytest.mark.parametrize("state_int8", [False, True])
def test_qselective_scan_module_kernels_match_reference_path(monkeypatch, state_int8):
    """QSelectiveScan forward (no state, and prefill from a state) and step through the kernels equal the module's
    reference path (QUAMBA_FORCE_REFERENCE=1)."""
    b, d, n, length = 2, 20, 16, 9
    scan = _qselective_scan_module(d, n)
    scan.state_int8 = state_int8
    a = _mamba1_inputs(b, d, n, length + 2)
    prefill = [a[k][..., :length] for k in ("u", "delta", "B", "C", "z")]
    steps = [[a[k][..., t] for k in ("u", "delta", "B", "C", "z")] for t in (length, length + 1)]

    def run():
        y_alone = scan(*prefill)
        ys, state = _prefill_then_steps(scan, prefill, steps, scan.empty_state(b, DEVICE))
        return [y_alone] + ys, _state_values(state)

    ys, state = run()
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    ys_ref, state_ref = run()
    for y, y_ref in zip(ys, ys_ref):
        assert y.dtype == torch.float16 and rel_err(y, y_ref) < Y_BOUND_M1[torch.float16]
    assert rel_err(state, state_ref) < (1e-2 if state_int8 else STATE_BOUND_M1)


@pytest.mark.parametrize("dt_proj_kind,state_int8", [
    ("int8 per channel", True), ("int8 per tensor", False), ("int8 with bias", False), ("float16", True),
])
def test_qselective_scan_step_with_dt_proj_equals_dt_proj_then_step(monkeypatch, dt_proj_kind, state_int8):
    """QSelectiveScan.step(..., dt_proj=W8A8Linear) equals step(dt_proj(dt_low)): fused into the scan's kernel for an
    int8 output without bias (dt_proj's own forward is never called), run first otherwise."""
    b, d, n, dt_rank = 2, 20, 16, 6
    scan = _qselective_scan_module(d, n)
    scan.state_int8 = state_int8
    output = "float16" if dt_proj_kind == "float16" else "int8"
    proj = W8A8Linear.from_float(torch.randn(d, dt_rank), 0.02, output, per_channel="per tensor" not in dt_proj_kind,
                                 bias=torch.randn(d) if "bias" in dt_proj_kind else None,
                                 output_scale=torch.rand(d) * 0.5 + 0.5 if output == "int8" else None).to(DEVICE)
    if output != "int8":  # a float dt is not a quantized scan input: only the reference path takes it (as dt * scale)
        monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    calls = []
    monkeypatch.setattr(proj, "forward", lambda x, _forward=proj.forward: calls.append(1) or _forward(x))
    x_dbl = _q(b, dt_rank + 2 * n)
    dt_low, B, C = x_dbl[:, :dt_rank], x_dbl[:, dt_rank:dt_rank + n], x_dbl[:, dt_rank + n:]
    u, z = _q(b, d), _q(b, d)
    state, state_unfused = scan.empty_state(b, DEVICE), scan.empty_state(b, DEVICE)

    for _ in range(2):  # the second step from a non-zero state
        y = scan.step(u, dt_low, B, C, z, state, dt_proj=proj)
        fused_calls = len(calls)
        y_unfused = scan.step(u, proj(dt_low), B, C, z, state_unfused)
        assert y.dtype == torch.float16 and torch.equal(y, y_unfused)
        assert torch.equal(_state_values(state), _state_values(state_unfused))
        assert fused_calls == (0 if dt_proj_kind.startswith("int8 per") else 1)
        calls.clear()


@pytest.mark.parametrize("state_int8", [False, True])
def test_qssd_module_kernels_match_reference_path(monkeypatch, state_int8):
    b, length, h, p, g, n, chunk = 2, 21, 5, 12, 1, 16, 16
    scan = _qssd_module(h, p, g, n, chunk)
    scan.state_int8 = state_int8
    a = _mamba2_inputs(b, length + 2, h, p, g, n)
    prefill = [a[k][:, :length] for k in ("x", "dt", "B", "C")]
    steps = [[a[k][:, t] for k in ("x", "dt", "B", "C")] for t in (length, length + 1)]

    def run():
        y_alone = scan(*prefill)
        ys, state = _prefill_then_steps(scan, prefill, steps, scan.empty_state(b, DEVICE))
        return [y_alone] + ys, _state_values(state)

    ys, state = run()
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    ys_ref, state_ref = run()
    for y, y_ref in zip(ys, ys_ref):
        assert y.dtype == torch.float16 and rel_err(y, y_ref) < BOUND_M2[torch.float16]
    assert rel_err(state, state_ref) < (1e-2 if state_int8 else BOUND_M2[torch.float16])


# ---------------------------------------------------------------------------------------------- dispatch, checks

def test_force_reference_skips_the_kernels(monkeypatch):
    import quamba.ops.triton.selective_scan as m1
    import quamba.ops.triton.ssd as m2

    calls = []
    for module, name in ((m1, "_selective_scan_launch"), (m2, "_ssd_chunked_launch")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _real=real, **kw: calls.append(1) or _real(*args, **kw))
    a1 = _mamba1_inputs(1, 4, 4, 3)
    a2 = _mamba2_inputs(1, 3, 2, 4, 1, 4)
    qselective_scan(**a1), qssd_chunked(**a2, chunk_size=4)
    assert len(calls) == 2
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    y1, y2 = qselective_scan(**a1), qssd_chunked(**a2, chunk_size=4)
    assert len(calls) == 2
    # the fallback dequantizes and runs the float dispatchers' reference paths (Mamba1's vectorised over time)
    assert rel_err(y1, qselective_scan_ref(**a1)) < Y_BOUND_M1[torch.float16]
    assert torch.equal(y2, qssd_chunked_ref(**a2, chunk_size=4))


def test_inputs_are_checked():
    a1 = _mamba1_inputs(1, 4, 4, 3)
    with pytest.raises(QuambaError, match="int8"):
        qselective_scan(**{**a1, "u": a1["u"].float()})
    with pytest.raises(QuambaError, match="scale"):
        qselective_scan(**{**a1, "B_scale": torch.ones(4, device=DEVICE)})
    a2 = _mamba2_inputs(1, 3, 2, 4, 1, 4)
    with pytest.raises(QuambaError, match="x's scale"):
        qssd_chunked(**{**a2, "x_scale": torch.ones(2, device=DEVICE)}, chunk_size=4)
    with pytest.raises(QuambaError, match="int8 state"):
        qssd_state_update((torch.zeros(1, 2, 4, 4, dtype=torch.int8, device=DEVICE),
                           torch.ones(1, 2, 4, 1, dtype=torch.float16, device=DEVICE)),
                          **{k: v[:, 0] if k in ("x", "dt", "B", "C") else v for k, v in a2.items()})


@pytest.mark.parametrize("field,bad,message", [
    ("weight", lambda p: p.weight.float(), "dt_proj weight is torch.float32"),
    ("weight", lambda p: p.weight[:-1], r"dt_proj weight is torch.int8 \[36, 5\], expected int8 \[37, R\]"),
    ("dt_low", lambda dt_low: dt_low[:, :-1], r"dt_low .* \[2, 4\], expected int8 \[2, 5\]"),
    ("dt_low", lambda dt_low: dt_low.float(), "dt_low .*torch.float32"),
    ("input_scale", lambda p: p.weight_scale, "dt_proj input_scale must be one float32 value"),
    ("weight_scale", lambda p: p.weight_scale[:-1], r"dt_proj weight_scale .* got torch.float32 \[36\]"),
    ("out_scale", lambda p: p.out_scale.half(), "dt_proj out_scale must be float32"),
], ids=["weight dtype", "weight rows", "dt_low shape", "dt_low dtype", "input_scale size", "weight_scale size",
        "out_scale dtype"])
def test_dt_proj_is_checked(field, bad, message):
    b, d, n, dt_rank = 2, 37, 12, 5  # within DT_PROJ_FUSED_MAX_BATCH: the fused kernel's checks
    args, dt_low = _update_args(b, d, n, dt_rank, torch.float16)
    proj = _dt_proj(d, dt_rank, "channel")
    if field == "dt_low":
        dt_low = bad(dt_low)
    else:
        proj = proj._replace(**{field: bad(proj)})
    with pytest.raises(QuambaError, match=message):
        qselective_state_update(_random_state((b, d, n), False), dt=dt_low, dt_proj=proj, **args)


def test_dt_proj_needs_the_int8_update():
    from quamba.ops.triton.selective_scan import _selective_state_update_launch

    b, d, n, dt_rank = 2, 8, 4, 3
    x, z, B, C = (torch.randn(b, k, device=DEVICE) for k in (d, d, n, n))
    with pytest.raises(QuambaError, match="dt_proj is fused into the int8-input update only"):
        _selective_state_update_launch(torch.zeros(b, d, n, device=DEVICE), x, _q(b, dt_rank),
                                       -torch.rand(d, n, device=DEVICE), B, C, z=z,
                                       dt_proj=_dt_proj(d, dt_rank, "tensor"))
