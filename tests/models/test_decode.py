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


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_num_last_tokens_keeps_the_last_positions_logits(arch):
    """A prefill that only needs the next token runs the lm_head on the last positions only: the full forward's
    last positions' logits, with and without a cache; 0 keeps them all; a negative count is refused."""
    from quamba.errors import QuambaError

    model = build_random_model(tiny_config(arch), seed=1)
    ids = torch.randint(0, 257, (2, 13))
    with torch.no_grad():
        full = model(ids).logits
        assert torch.equal(model(ids, num_last_tokens=0).logits, full)
        last3 = model(ids, num_last_tokens=3).logits
        cached = model(ids, model.allocate_cache(2), num_last_tokens=1).logits
    # the lm_head's matmul over fewer rows may take another BLAS blocking: equal up to float32 rounding
    assert last3.shape == (2, 3, full.shape[-1]) and rel_err(last3, full[:, -3:]) <= 1e-6
    assert cached.shape == (2, 1, full.shape[-1]) and rel_err(cached, full[:, -1:]) <= 1e-5
    with pytest.raises(QuambaError, match="num_last_tokens"):
        model(ids, num_last_tokens=-1)


@pytest.mark.parametrize("w_bits,a_bits", [(4, 8), (8, 8), (4, 16)])
def test_num_last_tokens_with_a_quantized_lm_head(w_bits, a_bits):
    import quamba

    fp = build_random_model(tiny_config("mamba2"), seed=2).eval()
    q = quamba.quantize(fp, "quamba2", calib_data=None, calib_samples=2, calib_seqlen=8, dtype="float32",
                        w_bits=w_bits, a_bits=a_bits, group_size=32, quantize_lm_head=True)
    ids = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        full = q(ids).logits
        last = q(ids, num_last_tokens=2).logits
    assert type(q.lm_head).__name__ != "Linear"
    if a_bits == 8:  # integer GEMM: exact whatever the number of rows
        assert torch.equal(last, full[:, -2:])
    else:  # an fp32 matmul over fewer rows may block (and round) differently
        assert rel_err(last, full[:, -2:]) <= 1e-5
