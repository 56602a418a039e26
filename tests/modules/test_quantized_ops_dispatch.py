"""The quantized modules on their fused ops: the reference path computes exactly what the modules computed
before the kernels (the formulas are pinned here), the kernel path (CUDA, or Triton's interpreter on the
CPU) agrees with it, and QUAMBA_FORCE_REFERENCE=1 keeps every module on the reference.

Inputs are laid out as the A8 mixers pass them: the conv input is the transpose of a channel slice of
in_proj's [B, L, N] output, the decode-step input and the gated norm's gate are row slices of it.
"""
import pytest
import torch
import torch.nn.functional as F

import quamba.ops.triton as qt
from quamba.modules.conv import QCausalConv1d
from quamba.modules.embedding import QEmbedding
from quamba.modules.hadamard import QHadamard
from quamba.modules.norm import QGatedRMSNorm, QRMSNorm
from quamba.ops import gated_rms_norm_ref, rms_norm_ref
from quamba.ops.quant import quantize_ref
from quamba.quantization.hadamard import hadamard_transform_ref
from quamba.quantization.weight_formats import pack_int4, quantize_rows, unpack_int4
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

# int8 outputs of the kernels may be one step off the reference (a different fp32 summation order or exp),
# on at most this fraction of the elements; integer parts (conv state, embedding rows) are exact.
MAX_OFF_BY_ONE = 2e-3


@pytest.fixture
def kernels(monkeypatch):
    """The kernel path: CUDA, or Triton's interpreter for CPU tensors (only inside the test)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)
    if ON_GPU:
        yield
    else:
        with qt.interpreted_kernels():
            yield


@pytest.fixture
def reference(monkeypatch):
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")


def _rand_q(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEVICE)


def _assert_int8_close(y, y_ref):
    assert y.dtype == torch.int8 and y.shape == y_ref.shape
    diff = (y.int() - y_ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= MAX_OFF_BY_ONE


# ---------------------------------------------------------------------------------------------- pinned formulas
# What the modules computed before their ops were fused (copied from their former forward methods).

def _pinned_conv(m, x_q, state_q):
    k = m.weight.shape[-1]
    padded = torch.cat([state_q[..., 1:], x_q], dim=-1).double()
    acc = F.conv1d(padded, m.weight.double().unsqueeze(1), groups=m.weight.shape[0])
    y = acc.float() * (m.weight_scale * m.input_scale)[:, None] + m.bias[:, None]
    y_q = quantize_ref(F.silu(y), m.output_scale[:, None])
    full = torch.cat([state_q[..., :1], padded.to(torch.int8)], dim=-1)
    return y_q, full[..., -k:].contiguous()


def _pinned_rms(m, x):
    return quantize_ref(rms_norm_ref(x, m.weight.float(), m.eps), m.output_scale)


def _pinned_gated(m, y, z_q):
    return gated_rms_norm_ref(y, z_q.float() * m.z_scale, m.weight, m.eps, m.group_size,
                              m.norm_before_gate).to(m.weight.dtype)


def _pinned_hadamard(m, y):
    return quantize_ref(hadamard_transform_ref(y.float()), m.output_scale)


def _pinned_embedding(m, ids):
    rows = m.weight[ids]
    q = rows if m.bits == 8 else unpack_int4(rows)
    return (q.float() * m.scale[ids, None].float()).to(m.out_dtype)


# ---------------------------------------------------------------------------------------------- modules

def _conv(d=40, k=4):
    m = QCausalConv1d(d, k).to(DEVICE)
    m.weight.copy_(_rand_q(d, k))
    m.weight_scale.fill_(0.004)
    m.bias.copy_(torch.randn(d))
    m.input_scale.copy_(torch.rand(d) * 0.02 + 0.01)  # per channel, as Mamba2's x | B | C segments
    m.output_scale.copy_(torch.rand(d) * 0.05 + 0.02)
    return m


def _in_proj_out(b, length, d, offset=7, extra=13):
    """A slice [B, L, D] of in_proj's int8 output [B, L, N] (row stride N > D)."""
    return _rand_q(b, length, offset + d + extra)[..., offset:offset + d]


def _rms(d=64, dtype="float16"):
    m = QRMSNorm(d, 1e-5, dtype).to(DEVICE)
    m.weight.copy_(torch.rand(d) + 0.5)
    m.output_scale.fill_(0.03)
    return m


def _gated(d=48, group_size=16, norm_before_gate=False, dtype="float16"):
    m = QGatedRMSNorm(d, group_size, 1e-5, norm_before_gate, dtype).to(DEVICE)
    m.weight.copy_(torch.rand(d) + 0.5)
    m.z_scale.fill_(0.04)
    return m


def _hadamard(d):
    m = QHadamard(d).to(DEVICE)
    m.output_scale.fill_(0.03)
    return m


def _embedding(bits, vocab=30, dim=24, dtype="float16"):
    m = QEmbedding(vocab, dim, bits, dtype).to(DEVICE)
    q, scale = quantize_rows(torch.randn(vocab, dim), bits)
    m.weight.copy_(q if bits == 8 else pack_int4(q))
    m.scale.copy_(scale)
    return m


# ---------------------------------------------------------------------------------------------- reference path

def test_reference_path_is_unchanged(reference):
    conv = _conv()
    x_q = _in_proj_out(2, 9, 40).transpose(1, 2)
    state = _rand_q(2, 40, 4)
    y, new_state = conv(x_q, state)
    y_pin, state_pin = _pinned_conv(conv, x_q, state)
    assert torch.equal(y, y_pin) and torch.equal(new_state, state_pin)
    assert torch.equal(conv(x_q), conv(x_q, conv.empty_state(2, DEVICE))[0])  # no state = zero state
    step_state = state.clone()
    x_t = _in_proj_out(2, 1, 40)[:, 0]
    y_t = conv.step(x_t, step_state)
    y_t_pin, state_t_pin = _pinned_conv(conv, x_t[..., None], state)
    assert torch.equal(y_t, y_t_pin[..., 0]) and torch.equal(step_state, state_t_pin)

    rms, x = _rms(), torch.randn(2, 5, 64, device=DEVICE) * 2
    assert torch.equal(rms(x), _pinned_rms(rms, x))
    gated, yg = _gated(), torch.randn(2, 5, 48, device=DEVICE).half()
    z_q = _in_proj_out(2, 5, 48)
    assert torch.equal(gated(yg, z_q), _pinned_gated(gated, yg, z_q))
    had, yh = _hadamard(160), torch.randn(2, 5, 160, device=DEVICE).half()
    assert torch.equal(had(yh), _pinned_hadamard(had, yh))
    for bits in (8, 4):
        emb, ids = _embedding(bits), torch.randint(0, 30, (2, 6), device=DEVICE)
        assert torch.equal(emb(ids), _pinned_embedding(emb, ids))


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_add_forward_is_the_block_prologue(reference, residual_in_fp32):
    """add_forward(hidden, residual) = (norm(residual'), residual') with residual' = hidden + residual, fp32
    when asked: what the Block computes today with a separate add."""
    rms = _rms()
    hidden = torch.randn(2, 3, 64, device=DEVICE).half()
    for residual in (None, torch.randn(2, 3, 64, device=DEVICE)):
        expected = hidden if residual is None else hidden + residual
        expected = expected.float() if residual_in_fp32 else expected
        y, res = rms.add_forward(hidden, residual, residual_in_fp32)
        assert res.dtype == expected.dtype and torch.equal(res, expected)
        assert torch.equal(y, rms(expected))


# ---------------------------------------------------------------------------------------------- kernel path

@requires_triton
def test_conv_kernels_agree_with_the_reference(kernels, monkeypatch):
    conv = _conv()
    x_q = _in_proj_out(2, 11, 40).transpose(1, 2)
    x_t = _in_proj_out(2, 1, 40)[:, 0]
    state = _rand_q(2, 40, 4)
    step_state, step_state_ref = state.clone(), state.clone()
    y, new_state = conv(x_q, state)
    y_t = conv.step(x_t, step_state)
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    y_ref, state_ref = conv(x_q, state)
    y_t_ref = conv.step(x_t, step_state_ref)
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    _assert_int8_close(y, y_ref)
    _assert_int8_close(y_t, y_t_ref)
    assert torch.equal(new_state, state_ref) and torch.equal(step_state, step_state_ref)
    assert y.transpose(1, 2).is_contiguous()  # channels-last for x_proj and the scan
    # decoding from the cached state reproduces the prefill of the same tokens exactly
    _, head_state = conv(x_q[..., :6], state)
    steps = torch.stack([conv.step(x_q[..., t], head_state) for t in range(6, 11)], -1)
    assert torch.equal(steps, y[..., 6:]) and torch.equal(head_state, new_state)


@requires_triton
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_norm_kernels_agree_with_the_reference(kernels, monkeypatch, dtype):
    rms, gated = _rms(dtype=dtype), _gated(dtype=dtype, norm_before_gate=dtype == "float32")
    hidden, residual = torch.randn(2, 7, 64, device=DEVICE).half(), torch.randn(2, 7, 64, device=DEVICE)
    y_s, z_q = torch.randn(2, 7, 48, device=DEVICE).to(getattr(torch, dtype)), _in_proj_out(2, 7, 48)
    out = rms(hidden), rms.add_forward(hidden, residual, True), gated(y_s, z_q), gated(y_s[:, 0], z_q[:, 0])
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    ref = rms(hidden), rms.add_forward(hidden, residual, True), gated(y_s, z_q), gated(y_s[:, 0], z_q[:, 0])
    _assert_int8_close(out[0], ref[0])
    _assert_int8_close(out[1][0], ref[1][0])
    assert torch.equal(out[1][1], ref[1][1])
    for got, want in (out[2], ref[2]), (out[3], ref[3]):
        assert got.dtype == want.dtype and rel_err(got, want) < (2e-3 if dtype == "float16" else 1e-5)


@requires_triton
def test_hadamard_and_embedding_kernels_agree_with_the_reference(kernels, monkeypatch):
    had = _hadamard(160)
    y_bdl = torch.randn(2, 160, 5, device=DEVICE)
    prefill, decode = y_bdl.transpose(1, 2), y_bdl[..., 0]  # Mamba1's transposed scan output; one token
    emb8, emb4 = _embedding(8), _embedding(4, dtype="float32")
    ids = torch.randint(0, 30, (3, 4), device=DEVICE)
    out = had(prefill), had(decode), emb8(ids), emb4(ids[:, -1])
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    ref = had(prefill), had(decode), emb8(ids), emb4(ids[:, -1])
    _assert_int8_close(out[0], ref[0])
    _assert_int8_close(out[1], ref[1])
    assert torch.equal(out[2], ref[2]) and torch.equal(out[3], ref[3])


@requires_triton
def test_force_reference_reaches_no_kernel(kernels, monkeypatch):
    import quamba.ops.triton.conv1d as conv_k
    import quamba.ops.triton.embedding as emb_k
    import quamba.ops.triton.hadamard as had_k
    import quamba.ops.triton.rmsnorm as norm_k

    calls = []
    for module, name in ((conv_k, "_qcausal_conv1d_launch"), (conv_k, "_qcausal_conv1d_update_launch"),
                         (norm_k, "_rms_norm_launch"), (norm_k, "_add_rms_norm_launch"),
                         (norm_k, "_gated_rms_norm_launch"), (had_k, "_hadamard_quant_launch"),
                         (emb_k, "_qembedding_launch")):
        monkeypatch.setattr(module, name, lambda *a, _n=name: calls.append(_n))

    def run_all():
        conv, x_q = _conv(), _in_proj_out(1, 3, 40)
        conv(x_q.transpose(1, 2))
        conv.step(x_q[:, 0], conv.empty_state(1, DEVICE))
        rms, hidden = _rms(), torch.randn(1, 3, 64, device=DEVICE)
        rms(hidden)
        rms.add_forward(hidden, None)
        _gated()(torch.randn(1, 3, 48, device=DEVICE), _in_proj_out(1, 3, 48))
        _hadamard(64)(hidden)
        _embedding(8)(torch.tensor([[1, 2]], device=DEVICE))

    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    run_all()
    assert calls == []
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    run_all()
    assert len(calls) == 7  # each fused op went to its launcher
