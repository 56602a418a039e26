"""The shared scoring core: pair encoding, batched log-likelihoods against a one-request-at-a-time loop."""
import pytest
import torch

from quamba.eval.scoring import cut_at_stop, encode, encode_pair, score_continuations
from quamba.models import build_random_model, tiny_config
from quamba.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_encode_pair_moves_trailing_space_to_the_continuation(tok):
    ctx, cont = encode_pair(tok, "ab ", "c")
    assert ctx == encode(tok, "ab") and cont == encode(tok, " c")


def test_encode_pair_splits_the_whole_encoding(neox):
    # BPE merges across the boundary: the continuation is the tail of the whole text's encoding
    ctx, cont = encode_pair(neox, "Hello", " world")
    assert ctx + cont == encode(neox, "Hello world") == [12092, 1533]


def test_encode_pair_empty_context_uses_end_of_text(tok):
    ctx, cont = encode_pair(tok, "", "hi")
    assert ctx == [tok.eos_token_id] and cont == encode(tok, "hi")


def _naive(model, ctx, cont, max_length):
    """One request alone, no padding: the definition the batched path must reproduce."""
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        lp = model(torch.tensor([inp])).logits[0].float().log_softmax(-1)
    rows = lp[len(inp) - len(cont):]
    ll = sum(float(rows[i, t]) for i, t in enumerate(cont))
    return ll, all(int(rows[i].argmax()) == t for i, t in enumerate(cont))


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("batch_size,max_length", [(1, 2048), (3, 2048), (4, 9)])
def test_batched_scores_equal_one_by_one(arch, batch_size, max_length):
    model = build_random_model(tiny_config(arch), seed=5).eval()
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, 256, (int(n),), generator=g).tolist(), torch.randint(0, 256, (int(k),), generator=g).tolist())
            for n, k in [(5, 1), (1, 3), (12, 2), (7, 7), (3, 1), (9, 4), (2, 2)]]
    got = score_continuations(model, reqs, batch_size=batch_size, max_length=max_length)
    for (ll, greedy), (ctx, cont) in zip(got, reqs):
        exp_ll, exp_greedy = _naive(model, ctx, cont, max_length)
        assert ll == pytest.approx(exp_ll, rel=1e-5, abs=1e-5)
        assert greedy == exp_greedy


def test_greedy_flag_counts_every_token():
    """A model that always predicts token 7: greedy only when every continuation token is 7."""

    class Sevens(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, ids):
            logits = torch.zeros(*ids.shape, 16)
            logits[..., 7] = 5.0
            return type("Out", (), {"logits": logits})()

    res = score_continuations(Sevens(), [([1], [7, 7]), ([1], [7, 3]), ([2, 2], [7])], batch_size=2)
    assert [g for _, g in res] == [True, False, True]
    p7 = torch.tensor([0.0] * 7 + [5.0] + [0.0] * 8).log_softmax(0)
    assert res[0][0] == pytest.approx(2 * float(p7[7]))
    assert res[1][0] == pytest.approx(float(p7[7] + p7[3]))


def test_score_continuations_rejects_empty_parts():
    with pytest.raises(ValueError, match="non-empty"):
        score_continuations(None, [([], [1])])


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("abc\n\nQ: x", ["Q:", "\n\n"]) == "abc"
    assert cut_at_stop("abc", ["", "z"]) == "abc"
