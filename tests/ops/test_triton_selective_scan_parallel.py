"""Chunked Triton selective scan (``selective_scan_parallel_launch``) against ``selective_scan_ref``.

On a GPU the kernel runs on CUDA in fp32 / fp16 / bf16; without one in Triton's interpreter (fp32 and int8
inputs, small shapes). Outputs are NaN-poisoned, so an element the kernel does not write fails the test.

Bounds on the norm-wise relative error of y: fp32 1e-5 (the state is fp32 in both; they differ by exp2 with
log2(e) folded into A, the order of the sum over N and, in the interpreter, the scan's association order),
fp16 2e-3 and bf16 1.6e-2 (y's last rounding), int8 inputs 2e-3 (the same arithmetic on the same dequantized
values as the reference, y written in fp16). The final state is fp32: 1e-5.
"""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops.selective_scan import selective_scan_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

DTYPES = [(torch.float32, 1e-5)] + ([(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d, _ in DTYPES]
STATE_BOUND = 1e-5
INT8_BOUND = 2e-3


@pytest.fixture(scope="module")
def launch(triton_kernels):
    """The launcher, imported once the kernels are (re)loaded for the interpreter; the reference warmed up:
    under the interpreter its first call of a process has been seen ~8e-5 away from every later one."""
    from quamba.ops.triton import selective_scan_parallel

    a = _inputs(1, 3, 4, 5, torch.float32, False)
    selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"])
    return selective_scan_parallel.selective_scan_parallel_launch


def _inputs(b, d, n, length, dtype, channels_last, dt_rank=3):
    """u, delta, z [B, D, L] and B, C [B, N, L], fresh each call. channels_last: as the model passes them,
    transposes of [B, L, D] tensors, and B / C transposed column slices of one [B, L, dt_rank + 2N] tensor."""
    def seq(rows):
        if channels_last:
            return torch.randn(b, length, rows, device=DEVICE).to(dtype).transpose(1, 2)
        return torch.randn(b, rows, length, device=DEVICE).to(dtype)

    if channels_last:
        x_dbl = torch.randn(b, length, dt_rank + 2 * n, device=DEVICE).to(dtype)
        B = x_dbl[..., dt_rank:dt_rank + n].transpose(1, 2)
        C = x_dbl[..., dt_rank + n:].transpose(1, 2)
    else:
        B, C = seq(n), seq(n)
    return dict(u=seq(d), delta=seq(d), z=seq(d), B=B, C=C, A=-(torch.rand(d, n, device=DEVICE) + 0.1),
                D=torch.randn(d, device=DEVICE).to(dtype), delta_bias=torch.randn(d, device=DEVICE).to(dtype))


def _options(a, b, d, n, with_d, with_z, with_bias, softplus, with_init, final):
    if not softplus:  # raw dt must stay positive to be a decay
        a["delta"] = a["delta"].abs() * 0.5
        a["delta_bias"] = a["delta_bias"].abs() * 0.1
    return dict(D=a["D"] if with_d else None, z=a["z"] if with_z else None,
                delta_bias=a["delta_bias"] if with_bias else None, delta_softplus=softplus,
                initial_state=torch.randn(b, d, n, device=DEVICE) if with_init else None, return_final_state=final)


def _check(out, ref, final, bound, out_dtype):
    y, y_ref = (out[0], ref[0]) if final else (out, ref)
    assert y.shape == y_ref.shape and y.dtype == out_dtype
    assert rel_err(y, y_ref) < bound
    if final:
        assert out[1].dtype == torch.float32 and out[1].shape == ref[1].shape
        assert rel_err(out[1], ref[1]) < STATE_BOUND


FLAGS = [  # with_d, with_z, with_bias, softplus, with_init, final, channels_last
    (True, True, True, True, True, True, True),
    (True, True, True, True, False, True, False),
    (False, False, False, False, False, False, True),
    (True, False, True, False, True, True, False),
    (False, True, False, True, True, True, True),
]


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [16, 12])
@pytest.mark.parametrize("length", [1, 45, 130])  # one token; across chunk boundaries, not multiples of BLOCK_L
@pytest.mark.parametrize("flags", FLAGS)
def test_matches_reference(launch, poisoned, dtype, bound, n, length, flags):
    b, d = 2, 37  # D not a multiple of the channel tile
    *opts, channels_last = flags
    a = _inputs(b, d, n, length, dtype, channels_last)
    kw = _options(a, b, d, n, *opts)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    _check(launch(*args, **kw), selective_scan_ref(*args, **kw), kw["return_final_state"], bound, dtype)


def test_output_is_channels_last_for_channels_last_inputs(launch, poisoned):
    a = _inputs(2, 37, 16, 20, torch.float32, True)
    y = launch(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"])
    assert y.shape == (2, 37, 20) and y.stride() == (20 * 37, 1, 37)  # [B, L, D] memory, as out_proj reads it
    assert rel_err(y, selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"])) < 1e-5


def _quantize(t, scale):
    q = torch.clamp(torch.round(t / scale), -128, 127).to(torch.int8)
    return q, torch.tensor(scale, device=DEVICE, dtype=torch.float32)


@pytest.mark.parametrize("channels_last,out_dtype,bound", [(True, None, INT8_BOUND), (False, torch.float32, 1e-5)])
def test_int8_inputs_match_reference_on_dequantized(launch, poisoned, channels_last, out_dtype, bound):
    b, d, n, length = 2, 37, 16, 45
    a = _inputs(b, d, n, length, torch.float32, channels_last)
    names = ("u", "delta", "B", "C", "z")
    q, scales = zip(*(_quantize(a[k], s) for k, s in zip(names, (0.03, 0.02, 0.025, 0.025, 0.03))))
    deq = [x.float() * s for x, s in zip(q, scales)]  # the reference's input: q.float() * scale
    kw = dict(D=a["D"], delta_bias=a["delta_bias"], delta_softplus=True,
              initial_state=torch.randn(b, d, n, device=DEVICE), return_final_state=True)
    qu, qdt, qB, qC, qz = q
    out = launch(qu, qdt, a["A"], qB, qC, z=qz, scales=scales, out_dtype=out_dtype, **kw)
    u, dt, B, C, z = deq
    ref = selective_scan_ref(u, dt, a["A"], B, C, z=z, **kw)
    _check(out, ref, True, bound, out_dtype or torch.float16)


def test_continuing_from_a_final_state_equals_one_scan(launch, poisoned):
    b, d, n, length, split = 2, 37, 16, 70, 33
    a = _inputs(b, d, n, length, torch.float32, True)
    kw = dict(D=a["D"], delta_bias=a["delta_bias"], delta_softplus=True, return_final_state=True)
    full, last = launch(a["u"], a["delta"], a["A"], a["B"], a["C"], z=a["z"], **kw)
    parts, state = [], None
    for cut in (slice(0, split), slice(split, length)):
        p = {k: a[k][..., cut] for k in ("u", "delta", "B", "C", "z")}
        y, state = launch(p["u"], p["delta"], a["A"], p["B"], p["C"], z=p["z"], initial_state=state, **kw)
        parts.append(y)
    assert rel_err(torch.cat(parts, -1), full) < 1e-5 and rel_err(state, last) < 1e-5


def test_empty_sequence_returns_the_initial_state(launch, poisoned):
    a = _inputs(2, 5, 4, 0, torch.float32, False)
    init = torch.randn(2, 5, 4, device=DEVICE)
    y, state = launch(a["u"], a["delta"], a["A"], a["B"], a["C"], initial_state=init, return_final_state=True)
    assert y.shape == (2, 5, 0) and torch.equal(state, init)
    _, zero = launch(a["u"], a["delta"], a["A"], a["B"], a["C"], return_final_state=True)
    assert torch.equal(zero, torch.zeros_like(zero))


def test_every_sweep_candidate_matches_reference(launch, poisoned):
    from quamba.ops.triton.selective_scan_parallel import SWEEP

    b, d, n, length = 1, 20, 16, 20
    a = _inputs(b, d, n, length, torch.float32, True)
    kw = dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True, return_final_state=True)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    ref = selective_scan_ref(*args, **kw)
    for block_d, block_l, num_warps in SWEEP:
        _check(launch(*args, block_d=block_d, block_l=block_l, num_warps=num_warps, **kw), ref, True, 1e-5,
               torch.float32)


@pytest.mark.parametrize("segments", [2, 3, 16])
@pytest.mark.parametrize("flags", [FLAGS[0], FLAGS[3], FLAGS[2]])
def test_time_segments_match_reference(launch, poisoned, segments, flags):
    """Two passes over time segments (end states from zero and dt sums, then each segment from the folded entering
    state): y and the final state as one scan's, with and without an initial state, segments of whole chunks
    (3 of 130 tokens at 16 a chunk: 48 + 48 + 34), more segments asked for than there are chunks (16)."""
    b, d, n, length = 2, 37, 12, 130
    *opts, channels_last = flags
    a = _inputs(b, d, n, length, torch.float32, channels_last)
    kw = _options(a, b, d, n, *opts)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    out = launch(*args, block_d=8, block_l=16, segments=segments, **kw)
    _check(out, selective_scan_ref(*args, **kw), kw["return_final_state"], 1e-5, torch.float32)


def test_time_segments_with_int8_inputs(launch, poisoned):
    b, d, n, length = 1, 20, 16, 50
    a = _inputs(b, d, n, length, torch.float32, True)
    names = ("u", "delta", "B", "C", "z")
    q, scales = zip(*(_quantize(a[k], s) for k, s in zip(names, (0.03, 0.02, 0.025, 0.025, 0.03))))
    kw = dict(D=a["D"], delta_bias=a["delta_bias"], delta_softplus=True,
              initial_state=torch.randn(b, d, n, device=DEVICE), return_final_state=True)
    qu, qdt, qB, qC, qz = q
    one = launch(qu, qdt, a["A"], qB, qC, z=qz, scales=scales, out_dtype=torch.float32, segments=1, **kw)
    four = launch(qu, qdt, a["A"], qB, qC, z=qz, scales=scales, out_dtype=torch.float32, segments=4, block_l=8,
                  **kw)
    assert rel_err(four[0], one[0]) < 1e-5 and rel_err(four[1], one[1]) < 1e-5
    with pytest.raises(QuambaError, match="segments"):
        launch(qu, qdt, a["A"], qB, qC, z=qz, scales=scales, segments=0)


def test_associative_scan_itself(launch, poisoned, monkeypatch):
    """The interpreter normally scans by doubling (its associative_scan is per element in Python): cover
    tl.associative_scan with the kernel's combine on a shape small enough for that."""
    from quamba.ops.triton import selective_scan_parallel

    monkeypatch.setattr(selective_scan_parallel, "_INTERPRETER_SCANS_BY_DOUBLING", False)
    b, d, n, length = 1, 3, 12, 11
    a = _inputs(b, d, n, length, torch.float32, True)
    kw = dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True,
              initial_state=torch.randn(b, d, n, device=DEVICE), return_final_state=True)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    _check(launch(*args, block_d=4, block_l=8, **kw), selective_scan_ref(*args, **kw), True, 1e-5, torch.float32)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_cuda_graph_capture(launch):
    a = _inputs(1, 64, 16, 40, torch.float16, True)
    kw = dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True, return_final_state=True)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"])
    launch(*args, **kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, state = launch(*args, **kw)
    a["u"].copy_(torch.randn_like(a["u"]))  # new values in the captured input
    graph.replay()
    y_ref, state_ref = selective_scan_ref(*args, **kw)
    assert rel_err(y, y_ref) < 2e-3 and rel_err(state, state_ref) < STATE_BOUND


def test_mistakes_are_reported(launch):
    a = _inputs(1, 4, 3, 5, torch.float32, False)
    args = (a["u"], a["delta"], a["A"])
    with pytest.raises(QuambaError, match="B has shape"):
        launch(*args, a["B"][:, :2], a["C"])
    with pytest.raises(QuambaError, match="with scales, u, delta, B, C and z must be int8"):
        launch(*args, a["B"], a["C"], scales=(torch.tensor(1.0, device=DEVICE),) * 5)
    q = {k: a[k].to(torch.int8) for k in ("u", "delta", "B", "C")}
    with pytest.raises(QuambaError, match="scales must be a 5-tuple"):
        launch(q["u"], q["delta"], a["A"], q["B"], q["C"], scales=(torch.tensor(1.0, device=DEVICE),) * 4)
    with pytest.raises(QuambaError, match="B_scale must be a one-element float32 tensor"):
        scales = [torch.tensor(1.0, device=DEVICE)] * 5
        scales[2] = torch.tensor(1.0, device=DEVICE, dtype=torch.float16)
        launch(q["u"], q["delta"], a["A"], q["B"], q["C"], scales=tuple(scales))
    with pytest.raises(QuambaError, match="u is int8: pass scales"):
        launch(q["u"], a["delta"], a["A"], a["B"], a["C"])
    with pytest.raises(QuambaError, match="block_l = 12"):
        launch(*args, a["B"], a["C"], block_l=12)
    with pytest.raises(QuambaError, match="out_dtype"):
        launch(*args, a["B"], a["C"], out_dtype=torch.int8)
