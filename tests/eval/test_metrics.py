"""Perplexity windows and agreement metrics on hand-computable cases."""
import math

import pytest
import torch

from quamba.errors import QuambaError
from quamba.eval.metrics import agreement, mean_stderr, perplexity, split_windows
from quamba.models import build_random_model, tiny_config


class FixedLM(torch.nn.Module):
    """Ignores its input: every position gets the same logits (so each token's probability is known)."""

    def __init__(self, logits):
        super().__init__()
        self.row = torch.as_tensor(logits, dtype=torch.float32)

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, ids):
        return type("Out", (), {"logits": self.row.expand(*ids.shape, -1).clone()})()


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    res = perplexity(FixedLM(torch.zeros(50)), torch.arange(23) % 50, window=5)
    assert res["perplexity"] == pytest.approx(50.0, rel=1e-6)
    assert res["windows"] == 4 and res["tokens"] == 16  # 23 // 5 windows, 4 predicted tokens each


def test_perplexity_by_hand():
    """p = softmax(log [1, 2, 1]) = [.25, .5, .25]; ids 0 1 1 2 | 1 0 0 1 | 2 (tail dropped), window 4.
    Predicted: 1 1 2 (NLL ln2 + ln2 + 2 ln2) and 0 0 1 (2 ln2 + 2 ln2 + ln2): 9 ln2 over 6 tokens,
    so ppl = exp(1.5 ln 2) = 2 ** 1.5."""
    model = FixedLM(torch.log(torch.tensor([1.0, 2.0, 1.0])))
    res = perplexity(model, torch.tensor([0, 1, 1, 2, 1, 0, 0, 1, 2]), window=4)
    assert res["perplexity"] == pytest.approx(2 ** 1.5, rel=1e-6)
    assert res["tokens"] == 6 and res["windows"] == 2
    # per-window mean NLL: (ln2 + ln2 + 2ln2)/3 and (2ln2 + 2ln2 + ln2)/3 -> stderr by the delta method
    means = [4 * math.log(2) / 3, 5 * math.log(2) / 3]
    assert res["perplexity_stderr"] == pytest.approx(2 ** 1.5 * mean_stderr(means), rel=1e-6)


def test_perplexity_windows_reset_the_state():
    """A real (tiny) model: each window is scored alone, not continuing the previous one's state."""
    model = build_random_model(tiny_config("mamba1"), seed=4).eval()
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(1))
    res = perplexity(model, ids, window=16, batch_size=2)
    nll, count = 0.0, 0
    for w in range(3):  # 50 // 16 = 3 windows; the last 2 tokens are dropped
        chunk = ids[16 * w:16 * (w + 1)]
        with torch.no_grad():
            lp = model(chunk[None]).logits[0].log_softmax(-1)
        for t in range(1, 16):
            nll -= float(lp[t - 1, chunk[t]])
            count += 1
    assert res["tokens"] == count == 45
    assert res["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert perplexity(model, ids, window=16, max_windows=1)["windows"] == 1


def test_perplexity_rejects_text_shorter_than_a_window():
    with pytest.raises(QuambaError, match="fewer than one window"):
        split_windows(torch.arange(10), 2048)


def test_agreement_of_a_model_with_itself():
    model = build_random_model(tiny_config("mamba2"), seed=0).eval()
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(2))
    res = agreement(model, model, ids, window=20)
    assert res["kl"] == pytest.approx(0.0, abs=1e-6) and res["top1"] == 1.0 and res["tokens"] == 40


def test_agreement_by_hand():
    """p = [.5, .25, .25] (reference), q = [.25, .5, .25]: KL(p||q) = .5 ln2 - .25 ln2 = .25 ln 2; argmaxes differ."""
    p = FixedLM(torch.log(torch.tensor([0.5, 0.25, 0.25])))
    q = FixedLM(torch.log(torch.tensor([0.25, 0.5, 0.25])))
    res = agreement(q, p, torch.zeros(2, 6, dtype=torch.long))
    assert res["kl"] == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert res["top1"] == 0.0 and res["tokens"] == 12


def test_agreement_needs_equal_widths_or_a_vocab_size():
    a, b = FixedLM(torch.zeros(8)), FixedLM(torch.zeros(5))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(QuambaError, match="vocab_size"):
        agreement(a, b, ids)
    assert agreement(a, b, ids, vocab_size=5)["kl"] == pytest.approx(0.0, abs=1e-7)


def test_mean_stderr_is_the_sample_standard_error():
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    assert mean_stderr([1.0]) is None
