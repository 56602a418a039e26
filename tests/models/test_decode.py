"""Recurrent step decoding (and chunked prefill with a cache) equals one full forward."""
import pytest
import torch

from quamba.models import build_random_model, tiny_config
from tests.conftest import rel_err

CONFIGS = [
    ("mamba1", {}),
    ("mamba1", dict(d_conv=3, dt_rank=3, bias=True)),
    ("mamba2", {}),
    ("mamba2", dict(ngroups=2, headdim=8, chunk_size=5, D_has_hdim=True)),
    ("mamba2", dict(norm_before_gate=True, dt_limit=(0.01, 0.5))),
]


@pytest.mark.parametrize("arch,over", CONFIGS)
def test_step_decoding_equals_full_forward(arch, over):
    model = build_random_model(tiny_config(arch, **over))
    ids = torch.randint(0, 257, (3, 23))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.allocate_cache(3)
        steps = torch.cat([model(ids[:, t : t + 1], cache).logits for t in range(ids.shape[1])], dim=1)
    assert cache.seqlen_offset == 23
    assert rel_err(steps, full) <= 1e-5


@pytest.mark.parametrize("arch,over", CONFIGS)
def test_prefill_then_decode_equals_full_forward(arch, over):
    model = build_random_model(tiny_config(arch, **over))
    ids = torch.randint(0, 257, (2, 30))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.allocate_cache(2)
        parts = [model(ids[:, :11], cache).logits, model(ids[:, 11:12], cache).logits, model(ids[:, 12:], cache).logits]
    assert rel_err(torch.cat(parts, dim=1), full) <= 1e-5
