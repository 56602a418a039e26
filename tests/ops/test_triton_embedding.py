"""Triton quantized embedding lookup (``qembedding``) against its reference: bit-exact (an 8-bit integer
times an fp16 scale is exact in fp32, then one rounding to the output dtype)."""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.ops import qembedding, qembedding_ref
from quamba.quantization.weight_formats import pack_int4, quantize_rows
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]


@pytest.fixture(autouse=True)
def _kernels_not_forced_off(monkeypatch):
    """These tests are about the kernels: a QUAMBA_FORCE_REFERENCE=1 in the environment must not turn them into
    reference-vs-reference comparisons (the tests that check the switch set it themselves)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)


OUT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
OUT_IDS = [str(d).replace("torch.", "") for d in OUT_DTYPES]


def _table(vocab, dim, bits):
    q, scale = quantize_rows(torch.randn(vocab, dim) * 0.3, bits)
    weight = q if bits == 8 else pack_int4(q)
    return weight.to(DEVICE), scale.to(DEVICE)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=OUT_IDS)
@pytest.mark.parametrize("bits,dim", [(8, 37), (4, 38), (8, 300), (4, 600)])
def test_lookup_matches_reference(poisoned, out_dtype, bits, dim):
    weight, scale = _table(53, dim, bits)
    ids = torch.randint(0, 53, (3, 7), device=DEVICE)
    ids[0, :2] = torch.tensor([0, 52])  # the first and last rows, and repeated ids across the batch
    ids[2] = ids[1]
    out = qembedding(ids, weight, scale, bits, out_dtype)
    ref = qembedding_ref(ids, weight, scale, bits, out_dtype)
    assert out.shape == (3, 7, dim) and out.dtype == out_dtype
    assert torch.equal(out, ref)


def test_strided_ids_and_one_token(poisoned):
    weight, scale = _table(20, 16, 4)
    ids = torch.randint(0, 20, (2, 9), device=DEVICE)
    for view in (ids[:, ::2], ids[:, -1], ids[0, 3]):  # a decode step passes one id per sequence
        assert torch.equal(qembedding(view, weight, scale, 4, torch.float16),
                           qembedding_ref(view, weight, scale, 4, torch.float16))


def test_int4_nibble_order():
    """Column 2j is the low nibble, 2j + 1 the high one, both 4-bit two's complement."""
    weight = torch.tensor([[0x8F, 0x70]], dtype=torch.uint8, device=DEVICE)  # values -1, -8, 0, 7
    scale = torch.ones(1, dtype=torch.float16, device=DEVICE)
    out = qembedding(torch.zeros(1, dtype=torch.long, device=DEVICE), weight, scale, 4, torch.float32)
    assert out.tolist() == [[-1.0, -8.0, 0.0, 7.0]]


def test_mismatched_weight_is_a_user_error():
    weight, scale = _table(10, 8, 8)
    with pytest.raises(QuambaError, match="bits 4"):
        qembedding(torch.zeros(2, dtype=torch.long, device=DEVICE), weight, scale, 4, torch.float16)


def test_force_reference_switch(monkeypatch):
    import quamba.ops.triton.embedding as kernels

    calls = []
    launch = kernels._qembedding_launch
    monkeypatch.setattr(kernels, "_qembedding_launch", lambda *a: calls.append(1) or launch(*a))
    weight, scale = _table(10, 8, 8)
    ids = torch.tensor([[1, 4, 9]], device=DEVICE)
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    forced = qembedding(ids, weight, scale, 8, torch.float16)
    assert calls == []
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE")
    assert torch.equal(qembedding(ids, weight, scale, 8, torch.float16), forced) and calls == [1]


def test_out_of_range_id_reads_nothing_outside_the_table():
    """The reference raises IndexError; the kernel cannot raise without a host sync, so it writes zeros
    rather than reading memory past the table."""
    weight, scale = _table(4, 8, 8)
    out = qembedding(torch.tensor([1, 7, -1], device=DEVICE), weight, scale, 8, torch.float32)
    assert torch.equal(out[0], qembedding_ref(torch.tensor([1], device=DEVICE), weight, scale, 8, torch.float32)[0])
    assert not out[1:].any()
