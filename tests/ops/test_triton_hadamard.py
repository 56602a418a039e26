"""Triton Hadamard transform + int8 quantization (``hadamard_quant``) against its reference.

On a GPU the kernel runs on CUDA; without one in Triton's interpreter (small shapes). Bounds: for n = 2^k
the kernel performs the reference's operations in its order, so the output is bit-identical; with a
12/20/28 factor its fp32 sums run in another order, so an output may be one int8 step off where the value
lies within a few ulps of a rounding tie, on at most MAX_OFF_BY_ONE of the elements.
"""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import hadamard_quant, hadamard_quant_ref
from quamba.quantization.hadamard import hadamard_matrix, hadamard_transform_ref
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]


@pytest.fixture(autouse=True)
def _kernels_not_forced_off(monkeypatch):
    """These tests are about the kernels: a QUAMBA_FORCE_REFERENCE=1 in the environment must not turn them into
    reference-vs-reference comparisons (the tests that check the switch set it themselves)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)


MAX_OFF_BY_ONE = 2e-3
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
DTYPE_IDS = [str(d).replace("torch.", "") for d in DTYPES]
# (n, m): the orders the tests use, 40 * 4 = 20 * 8 included; the real ones are 2560 ... 8192
SIZES = [64, 12 * 4, 20 * 8, 28 * 2, 40 * 4, 12, 2]


def _scale_for(y):
    """A static scale under which a few outputs clip (calibration takes percentiles of the activations)."""
    return (hadamard_transform_ref(y.float()).abs().amax() / 127 * 0.8).reshape(())


def _is_power_of_two(n):
    return n & (n - 1) == 0


def _assert_matches(q, y, scale):
    q_ref = hadamard_quant_ref(y, scale)
    assert q.dtype == torch.int8 and q.shape == q_ref.shape
    if _is_power_of_two(y.shape[-1]):
        assert torch.equal(q, q_ref)
        return
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1, f"int8 outputs differ by {diff.max().item()} steps"
    assert (diff > 0).float().mean() <= MAX_OFF_BY_ONE


@pytest.fixture(params=["whole-rows", "4-sub-rows", "1-sub-row"])
def sub_rows(request, monkeypatch):
    """Each program's share of a row's output sub-rows, forced: all (prefill's layout), blocks of 4 (the last one
    partly masked for m = 12, 20, 28), one (decode's layout)."""
    import quamba.ops.triton.hadamard as kernels

    per_program = {"whole-rows": None, "4-sub-rows": 4, "1-sub-row": 1}[request.param]
    monkeypatch.setattr(kernels, "_sub_rows_per_program",
                        lambda rows, m, mp: mp if per_program is None or m == 1 else min(per_program, mp))
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", SIZES)
def test_prefill_rows(poisoned_int8, sub_rows, dtype, n):
    y = torch.randn(2, 7, n, device=DEVICE).to(dtype)
    scale = _scale_for(y)
    _assert_matches(hadamard_quant(y, scale), y, scale)


def test_sub_row_layouts_are_bit_identical(sub_rows, monkeypatch):
    """Splitting a row's output sub-rows over programs changes no arithmetic: each output element is the same
    sum in the same order, so every layout gives the whole-row layout's bytes."""
    import quamba.ops.triton.hadamard as kernels

    y = torch.randn(5, 20 * 8, device=DEVICE).half()
    scale = _scale_for(y)
    q = hadamard_quant(y, scale)
    monkeypatch.setattr(kernels, "_sub_rows_per_program", lambda rows, m, mp: mp)
    assert torch.equal(q, hadamard_quant(y, scale))


def test_default_sub_row_blocks():
    """The default layout: one output sub-row per program for a single row, blocks of 4 otherwise, whole rows
    when the order has no m factor."""
    import quamba.ops.triton.hadamard as kernels

    assert kernels._sub_rows_per_program(1, 20, 32) == 1
    assert kernels._sub_rows_per_program(16, 20, 32) == kernels._sub_rows_per_program(4096, 12, 16) == 4
    assert kernels._sub_rows_per_program(1, 1, 1) == kernels._sub_rows_per_program(64, 1, 1) == 1


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("n", [28 * 4, 20 * 2, 128])
def test_decode_rows(poisoned_int8, rows, n):
    y = torch.randn(rows, n, device=DEVICE)
    scale = _scale_for(y)
    _assert_matches(hadamard_quant(y, scale), y, scale)


@pytest.mark.parametrize("n", [20 * 256, 4096])
def test_real_sizes(poisoned_int8, n):
    """Mamba2-2.7b's d_inner (5120 = 20 * 256) and a power of two, a few rows."""
    y = torch.randn(2, n, device=DEVICE).half()
    scale = _scale_for(y)
    _assert_matches(hadamard_quant(y, scale), y, scale)


def test_strided_views(poisoned_int8):
    """Mamba1 passes the scan output transposed ([B, D, L] memory as [B, L, D]), others pass channel slices."""
    y_bdl = torch.randn(2, 160, 5, device=DEVICE)
    transposed = y_bdl.transpose(1, 2)  # unit stride on the sequence, not on the transformed dim
    scale = _scale_for(transposed)
    _assert_matches(hadamard_quant(transposed, scale), transposed, scale)
    sliced = torch.randn(3, 4, 80, device=DEVICE)[..., 8:56]  # n = 48, rows 80 apart
    scale = _scale_for(sliced)
    _assert_matches(hadamard_quant(sliced, scale), sliced, scale)
    four_d = torch.randn(2, 3, 2, 56, device=DEVICE).transpose(0, 1)  # leading dims that cannot merge
    scale = _scale_for(four_d)
    _assert_matches(hadamard_quant(four_d, scale), four_d, scale)


@pytest.mark.parametrize("n", [12, 20, 28, 40])
def test_kernel_builds_the_base_matrices(sub_rows, n):
    """Transforming the unit vectors e_j gives column j of H_n: the kernel's in-register H_m entries are the
    reference's. With the scale 1 / (127 sqrt(n)) every entry +-1/sqrt(n) maps to +-127."""
    eye = torch.eye(n, device=DEVICE)
    q = hadamard_quant(eye, torch.tensor(1.0 / (127 * n ** 0.5), device=DEVICE))
    expected = torch.round(hadamard_matrix(n).to(DEVICE) * n ** 0.5).T * 127
    assert torch.equal(q.float(), expected)


def test_unsupported_order_is_a_user_error():
    with pytest.raises(QuambaError, match="Hadamard"):
        hadamard_quant(torch.randn(2, 36, device=DEVICE), torch.tensor(1.0, device=DEVICE))
    with pytest.raises(QuambaError, match="per-tensor scale"):
        hadamard_quant(torch.randn(2, 64, device=DEVICE), torch.ones(64, device=DEVICE))


def test_force_reference_switch(monkeypatch):
    import quamba.ops.triton.hadamard as kernels

    calls = []
    launch = kernels._hadamard_quant_launch
    monkeypatch.setattr(kernels, "_hadamard_quant_launch", lambda *a: calls.append(1) or launch(*a))
    y = torch.randn(3, 48, device=DEVICE)
    scale = _scale_for(y)
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    q_forced = hadamard_quant(y, scale)
    assert calls == [] and torch.equal(q_forced, hadamard_quant_ref(y, scale))
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    _assert_matches(hadamard_quant(y, scale), y, scale)
    assert calls == [1]
