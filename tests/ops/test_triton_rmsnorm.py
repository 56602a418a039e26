"""Triton RMSNorm, fused add + RMSNorm and gated RMSNorm against the references, in full precision and with
their int8 ends (int8 output, int8 gate).

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers are NaN-poisoned so that an unwritten element fails the test.
"""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import (add_rms_norm, add_rms_norm_quant, add_rms_norm_quant_ref, add_rms_norm_ref, gated_rms_norm,
                        gated_rms_norm_ref, qgated_rms_norm, qgated_rms_norm_ref, rms_norm, rms_norm_quant,
                        rms_norm_quant_ref, rms_norm_ref)
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]


@pytest.fixture(autouse=True)
def _kernels_not_forced_off(monkeypatch):
    """These tests are about the kernels: a QUAMBA_FORCE_REFERENCE=1 in the environment must not turn them into
    reference-vs-reference comparisons (the tests that check the switch set it themselves)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)


# (dtype, bound on the norm-wise relative error vs the reference): same fp32 arithmetic, so the
# 16-bit bounds are a few roundings of the output (2^-11 for fp16, 2^-8 for bf16).
DTYPES = [(torch.float32, 1e-5)] + ([(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d, _ in DTYPES]


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _weight(d, dtype=torch.float32):
    return (torch.rand(d, device=DEVICE) + 0.5).to(dtype)


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 300)])
def test_rms_norm(poisoned, dtype, bound, shape):
    x, w = _randn(*shape, dtype=dtype), _weight(shape[-1], dtype)
    y, y_ref = rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert rel_err(y, y_ref) < bound


def test_rms_norm_of_a_strided_view_and_an_fp32_weight(poisoned):
    x = _randn(4, 6, 3).transpose(1, 2)  # last dim not contiguous
    w = _weight(6)
    assert rel_err(rms_norm(x, w), rms_norm_ref(x, w)) < 1e-5


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("residual_kind,residual_in_fp32", [
    ("none", True), ("fp32", True), ("same", True), ("same", False), ("none", False),
])
def test_add_rms_norm(poisoned, dtype, bound, residual_kind, residual_in_fp32):
    shape = (2, 5, 45)
    x, w = _randn(*shape, dtype=dtype), _weight(shape[-1], dtype)
    residual = {"none": None, "fp32": _randn(*shape), "same": _randn(*shape, dtype=dtype)}[residual_kind]
    y, res = add_rms_norm(x, residual, w, 1e-5, residual_in_fp32)
    y_ref, res_ref = add_rms_norm_ref(x, residual, w, 1e-5, residual_in_fp32)
    assert y.dtype == y_ref.dtype and res.dtype == res_ref.dtype and res.shape == res_ref.shape
    assert torch.equal(res, res_ref)  # one add, rounded once, in the same dtype
    assert rel_err(y, y_ref) < bound


@pytest.mark.parametrize("dtype,bound", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size,with_z,norm_before_gate", [
    (None, True, False), (16, True, False), (12, True, True), (24, False, False), (None, True, True),
])
def test_gated_rms_norm(poisoned, dtype, bound, group_size, with_z, norm_before_gate):
    shape = (3, 2, 48)  # 12 is not a power of two: the group's tile is masked
    x, w = _randn(*shape, dtype=dtype), _weight(shape[-1], dtype)
    z = _randn(*shape, dtype=dtype) if with_z else None
    y = gated_rms_norm(x, z, w, 1e-5, group_size, norm_before_gate)
    y_ref = gated_rms_norm_ref(x, z, w, 1e-5, group_size, norm_before_gate)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < bound


def test_gated_norm_groups_are_independent(poisoned):
    """Scaling one group of channels leaves the other group's outputs unchanged."""
    x, z, w = _randn(2, 16), _randn(2, 16), _weight(16)
    y = gated_rms_norm(x, z, w, 1e-12, group_size=8, norm_before_gate=True)
    x2 = x.clone()
    x2[:, 8:] *= 8.0  # a power of two: the scaled group normalises to the same values (eps ~ 0)
    y2 = gated_rms_norm(x2, z, w, 1e-12, group_size=8, norm_before_gate=True)
    assert torch.equal(y2[:, :8], y[:, :8]) and rel_err(y2[:, 8:], y[:, 8:]) < 1e-6


def test_group_size_must_divide_the_channels():
    with pytest.raises(QuambaError, match="group_size"):
        gated_rms_norm(_randn(2, 10), None, _weight(10), 1e-5, group_size=4)


def test_weight_shape_is_checked():
    with pytest.raises(QuambaError, match="weight"):
        rms_norm(_randn(2, 10), _weight(9))


# ---------------------------------------------------------------------------------------------- int8 ends

# The quantized norms differ from the references only in the order of the fp32 sum of squares, so an int8
# output may be one step off where the value lies within a few ulps of a rounding tie: on at most this
# fraction of the elements.
MAX_OFF_BY_ONE = 2e-3
QDTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
QDTYPE_IDS = [str(d).replace("torch.", "") for d in QDTYPES]


def _assert_int8_close(y, y_ref):
    assert y.dtype == torch.int8 and y.shape == y_ref.shape
    diff = (y.int() - y_ref.int()).abs()
    assert diff.max() <= 1, f"int8 outputs differ by {diff.max().item()} steps"
    assert (diff > 0).float().mean() <= MAX_OFF_BY_ONE


def _scale_for(y_ref_float):
    """A static scale under which ~1% of the outputs clip, as calibrated percentiles do."""
    return (y_ref_float.float().abs().amax() / 127 * 0.8).reshape(())


@pytest.mark.parametrize("dtype", QDTYPES, ids=QDTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 300)])
def test_rms_norm_quant(poisoned_int8, dtype, shape):
    x, w = _randn(*shape, dtype=dtype) * 3, _weight(shape[-1], dtype)
    s = _scale_for(rms_norm_ref(x, w.float()))
    _assert_int8_close(rms_norm_quant(x, w, 1e-5, s), rms_norm_quant_ref(x, w, 1e-5, s))


@pytest.mark.parametrize("dtype", QDTYPES, ids=QDTYPE_IDS)
@pytest.mark.parametrize("residual_kind,residual_in_fp32", [
    ("none", True), ("fp32", True), ("same", True), ("same", False), ("none", False),
])
def test_add_rms_norm_quant(poisoned_int8, dtype, residual_kind, residual_in_fp32):
    shape = (2, 5, 45)
    x, w = _randn(*shape, dtype=dtype), _weight(shape[-1], dtype)
    residual = {"none": None, "fp32": _randn(*shape), "same": _randn(*shape, dtype=dtype)}[residual_kind]
    s = _scale_for(add_rms_norm_ref(x, residual, w.float())[0])
    y, res = add_rms_norm_quant(x, residual, w, 1e-5, s, residual_in_fp32)
    y_ref, res_ref = add_rms_norm_quant_ref(x, residual, w, 1e-5, s, residual_in_fp32)
    assert res.dtype == res_ref.dtype and torch.equal(res, res_ref)  # one add, rounded once
    _assert_int8_close(y, y_ref)


def test_add_rms_norm_quant_of_strided_rows(poisoned_int8):
    """Rows with a stride larger than D (slices of a wider buffer) are read in place."""
    x, residual = _randn(6, 80)[:, 3:53], _randn(6, 64)[:, :50]
    w = _weight(50)
    s = _scale_for(add_rms_norm_ref(x, residual, w)[0])
    y, res = add_rms_norm_quant(x, residual, w, 1e-5, s)
    y_ref, res_ref = add_rms_norm_quant_ref(x, residual, w, 1e-5, s)
    assert torch.equal(res, res_ref)
    _assert_int8_close(y, y_ref)


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                             (torch.float16, torch.float16)])
@pytest.mark.parametrize("group_size,norm_before_gate", [(None, False), (16, False), (12, True)])
def test_qgated_rms_norm(poisoned, x_dtype, w_dtype, group_size, norm_before_gate):
    """The gate arrives as int8 (a strided slice of in_proj's output) with a per-tensor scale; the output is
    in weight's dtype, rounded through x's dtype as the reference does."""
    b, length, d = 2, 3, 48
    z_q = torch.randint(-128, 128, (b, length, d + 21), dtype=torch.int8, device=DEVICE)[..., 5:5 + d]
    x, w, z_scale = _randn(b, length, d, dtype=x_dtype), _weight(d, w_dtype), torch.tensor(0.03, device=DEVICE)
    y = qgated_rms_norm(x, z_q, z_scale, w, 1e-5, group_size, norm_before_gate)
    y_ref = qgated_rms_norm_ref(x, z_q, z_scale, w, 1e-5, group_size, norm_before_gate)
    assert y.dtype == w_dtype and y.shape == y_ref.shape
    bound = 1e-5 if w_dtype == x_dtype == torch.float32 else 2e-3
    assert rel_err(y, y_ref) < bound


def test_quant_scale_checks():
    x, w = _randn(2, 10), _weight(10)
    with pytest.raises(QuambaError, match="per-tensor scale"):
        rms_norm_quant(x, w, 1e-5, torch.ones(10, device=DEVICE))
    with pytest.raises(QuambaError, match="int8"):
        qgated_rms_norm(x, _randn(2, 10), torch.tensor(1.0, device=DEVICE), w)


def test_parameters_read_after_the_wait_give_the_same_bits(monkeypatch):
    """``_common.EARLY_PARAMS`` off (the benchmarks' A/B switch) reads the norm weights and scales after the
    dependent-launch wait, the order before it existed: the same bits from the add + norm -> int8, the int8-gate
    norm and the Hadamard -> int8."""
    from quamba.ops import hadamard_quant
    from quamba.ops.triton import _common

    x, res, w = _randn(3, 160), _randn(3, 160), _weight(160)
    z_q = torch.randint(-128, 128, (3, 160), dtype=torch.int8, device=DEVICE)
    scale = torch.tensor(0.03, device=DEVICE)
    outs = []
    for early in (True, False):
        monkeypatch.setattr(_common, "EARLY_PARAMS", early)
        outs.append((*add_rms_norm_quant(x, res, w, 1e-5, out_scale=scale),
                     qgated_rms_norm(x, z_q, scale, w, 1e-5, group_size=80), hadamard_quant(x, scale)))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert outs[0][0].dtype == torch.int8 and (outs[0][0].abs() < 100).any()
