"""Shared pieces for the evaluation tests: the NeoX tokenizer, tiny random models, and a memorising
n-gram model whose predictions are far from uniform (so accuracies are not all zero)."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import quamba
from quamba.models import build_random_model, tiny_config

NEOX_VOCAB = 50277


@pytest.fixture(scope="session")
def neox(request):
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "tokenizer" / "gpt-neox-20b"
    if not path.is_dir():
        pytest.skip(f"needs the GPT-NeoX tokenizer at {path}")
    return quamba.load_tokenizer(path)


@pytest.fixture(scope="session")
def mamba1_neox():
    return build_random_model(tiny_config("mamba1", vocab_size=NEOX_VOCAB, n_layer=1), seed=0).eval()


@pytest.fixture(scope="session")
def mamba2_neox():
    # Mamba2's chunked reference scan is the faster of the two on CPU: the harness tests use it
    return build_random_model(tiny_config("mamba2", vocab_size=NEOX_VOCAB, n_layer=1), seed=0).eval()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    # nothing in these tests may reach the Hugging Face Hub (lm-eval, datasets, transformers)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@dataclass
class _Out:
    logits: torch.Tensor


class NGramLM(nn.Module):
    """Predicts the next token from counts of what followed the previous ``order`` tokens in ``texts``
    (falling back to shorter histories), as logits log(count + 0.01) over ``vocab`` columns. Deterministic,
    batch-independent, and confident on text it has seen."""

    def __init__(self, token_lists: list[list[int]], vocab: int, order: int = 3):
        super().__init__()
        self.vocab, self.order = vocab, order
        self.counts: dict[tuple, dict[int, int]] = {}
        for ids in token_lists:
            for i in range(1, len(ids)):
                for k in range(1, order + 1):
                    if i - k >= 0:
                        nxt = self.counts.setdefault(tuple(ids[i - k:i]), {})
                        nxt[ids[i]] = nxt.get(ids[i], 0) + 1
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids: torch.Tensor) -> _Out:
        batch, length = input_ids.shape
        logits = torch.full((batch, length, self.vocab), -4.6)  # log(0.01)
        rows = input_ids.tolist()
        for b in range(batch):
            for t in range(length):
                for k in range(self.order, 0, -1):
                    hist = tuple(rows[b][max(0, t - k + 1):t + 1])
                    if len(hist) == k and hist in self.counts:
                        for tok, c in self.counts[hist].items():
                            logits[b, t, tok] = torch.log(torch.tensor(c + 0.01))
                        break
        return _Out(logits)
