import pytest
import torch

from tests.ops.triton_harness import ON_GPU


@pytest.fixture(scope="module")
def triton_kernels():
    """Kernels on CUDA, or in Triton's interpreter for the CPU (only while the module's tests run)."""
    if ON_GPU:
        yield
    else:
        import quamba.ops.triton as qt

        with qt.interpreted_kernels():
            yield


@pytest.fixture
def poisoned(monkeypatch):
    """NaN-fill every float torch.empty / empty_like made during the test (the kernels' outputs)."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


@pytest.fixture
def poisoned_int8(poisoned, monkeypatch):
    """Also fill every int8 torch.empty with 85, so that an element the kernel does not write fails."""
    empty = torch.empty

    def fill(*a, **k):
        t = empty(*a, **k)
        return t.fill_(85) if t.dtype == torch.int8 else t

    monkeypatch.setattr(torch, "empty", fill)
