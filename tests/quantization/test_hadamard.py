import math

import pytest
import torch

from quamba.errors import QuambaError
from quamba.quantization.hadamard import hadamard_matrix, hadamard_transform_ref, is_hadamard_size

SIZES = [1, 2, 4, 8, 12, 20, 28, 40, 24, 48, 80, 160, 56, 112, 512, 1536, 2560]
UNSUPPORTED = [0, -4, 3, 6, 10, 14, 36, 44, 60, 100, 1000, 2.0]


def _signs(n: int) -> torch.Tensor:
    """The +-1 integer matrix behind hadamard_matrix(n)."""
    return (hadamard_matrix(n, torch.float64) * math.sqrt(n)).round().to(torch.int64)


@pytest.mark.parametrize("n", SIZES)
def test_matrix_is_orthonormal_with_pm_one_entries(n):
    s = _signs(n)
    assert set(s.unique().tolist()) <= {-1, 1}
    # exact: every partial sum is an integer of magnitude <= n < 2^24, so fp32 computes it exactly
    # (and much faster than an int64 matmul)
    sf = s.float()
    assert torch.equal(sf @ sf.T, n * torch.eye(n))
    h = hadamard_matrix(n)
    assert h.dtype == torch.float32 and h.shape == (n, n)
    assert torch.allclose(h @ h.T, torch.eye(n), atol=1e-5)


def test_matrix_deterministic_dtype_device_and_not_aliased():
    a = hadamard_matrix(20, torch.float64)
    a.mul_(0)  # mutating a returned matrix must not corrupt the cache
    b = hadamard_matrix(20, torch.float64)
    assert torch.equal(b, hadamard_matrix(20, torch.float64)) and b.abs().min() > 0
    assert hadamard_matrix(12, torch.bfloat16, device="cpu").dtype == torch.bfloat16


def test_supported_sizes():
    for n in SIZES:
        assert is_hadamard_size(n)
    for n in UNSUPPORTED:
        assert not is_hadamard_size(n)


@pytest.mark.parametrize("n", [6, 10, 36, 0])
def test_unsupported_size_raises_naming_size(n):
    with pytest.raises(QuambaError, match=rf"order {n}\b.*supported"):
        hadamard_matrix(n)
    with pytest.raises(QuambaError, match=rf"order {n}\b"):
        hadamard_transform_ref(torch.zeros(2, n))


@pytest.mark.parametrize("n", SIZES)
def test_transform_equals_matmul(n):
    x = torch.randn(3, 2, n, dtype=torch.float64)
    h = hadamard_matrix(n, torch.float64)
    assert torch.allclose(hadamard_transform_ref(x), x @ h.T, atol=1e-12)
    assert torch.allclose(hadamard_transform_ref(x, transpose=True), x @ h, atol=1e-12)


@pytest.mark.parametrize("n", [12, 28, 40, 1536, 2560])
def test_transform_inverse(n):
    x = torch.randn(5, n)
    y = hadamard_transform_ref(x)
    assert torch.allclose(hadamard_transform_ref(y, transpose=True), x, atol=1e-5)
    # norm preserved (orthonormal)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_transform_keeps_dtype_and_computes_in_fp32(dtype):
    x = torch.randn(4, 160).to(dtype)
    y = hadamard_transform_ref(x)
    expected = (x.float() @ hadamard_matrix(160).T).to(dtype)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.allclose(y.float(), expected.float(), atol=1e-2, rtol=1e-2)


def test_transform_empty_and_integer_inputs():
    assert hadamard_transform_ref(torch.zeros(0, 12)).shape == (0, 12)
    with pytest.raises(QuambaError, match="floating"):
        hadamard_transform_ref(torch.zeros(2, 8, dtype=torch.int8))
