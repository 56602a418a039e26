"""Triton RMSNorm, fused add + RMSNorm and gated RMSNorm against the references.

On a GPU the kernels run on CUDA in fp32/fp16/bf16; without one they run in Triton's interpreter
(fp32, small shapes). Output buffers are NaN-poisoned so that an unwritten element fails the test.
"""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import add_rms_norm, add_rms_norm_ref, gated_rms_norm, gated_rms_norm_ref, rms_norm, rms_norm_ref
from tests.conftest import rel_err
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

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
