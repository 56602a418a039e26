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


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_decode_on_a_model_built_under_inference_mode(arch):
    """Parameters made under torch.inference_mode() keep no version counter; the cached A = -exp(A_log) must cope,
    and follow a change of A_log made there."""
    with torch.inference_mode():
        model = build_random_model(tiny_config(arch), seed=0)
        ids = torch.randint(0, model.config.vocab_size, (1, 5))
        a = model.generate(ids, 4, temperature=0)
        for layer in model.backbone.layers:
            layer.mixer.A_log = torch.nn.Parameter(layer.mixer.A_log + 1.0, requires_grad=False)
        b = model.generate(ids, 4, temperature=0)
        mixer = model.backbone.layers[0].mixer
        assert torch.equal(mixer._neg_exp_A(mixer.A_log), -torch.exp(mixer.A_log.float()))  # the new A_log's A
    assert a.shape == b.shape == (1, 9)
