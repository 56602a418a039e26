"""Our models against transformers' own MambaForCausalLM / Mamba2ForCausalLM (random weights, fp32)."""
import pytest
import torch

import quamba
from tests.conftest import rel_err

transformers = pytest.importorskip("transformers")

MAMBA1_CASES = [
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=8, tie_word_embeddings=True),
    dict(hidden_size=48, num_hidden_layers=3, vocab_size=77, state_size=16, expand=2, conv_kernel=3,
         time_step_rank=5, tie_word_embeddings=False, use_bias=True),
]
MAMBA2_CASES = [
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=16, num_heads=8, head_dim=16, n_groups=1,
         chunk_size=8, tie_word_embeddings=False),
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=91, state_size=8, num_heads=4, head_dim=32, n_groups=2,
         chunk_size=16, tie_word_embeddings=True),
]


def _hf_model(kind, cfg, tmp_path):
    torch.manual_seed(1)
    if kind == "mamba":
        model = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg))
    else:
        model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**cfg))
    with torch.no_grad():  # make every parameter non-trivial so a mix-up cannot hide
        for name, p in model.named_parameters():
            if "A_log" in name or "dt_bias" in name or name.endswith("D"):
                p.copy_(torch.rand_like(p) + 0.2)
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("kind,cfg", [("mamba", c) for c in MAMBA1_CASES] + [("mamba2", c) for c in MAMBA2_CASES])
@pytest.mark.parametrize("seqlen", [1, 13, 33])
def test_logits_match_transformers(kind, cfg, seqlen, tmp_path):
    hf = _hf_model(kind, cfg, tmp_path)
    ours = quamba.load_model(tmp_path)
    ids = torch.randint(0, cfg["vocab_size"], (2, seqlen))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids).logits
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-4
