"""Decoding (quamba.generation) and the generate / chat commands: cached decoding equals full forwards, sampling is
seeded, padded vocab columns are never chosen, rows stop on their own, streaming, and chat feeds only new turns."""
import io
import sys
from types import SimpleNamespace

import pytest
import torch

import quamba
from quamba.errors import QuambaError
from quamba.generate_cli import build_parser
from quamba.generate_cli import main as cli_main
from quamba.generation import (ChatSession, TextStreamer, apply_repetition_penalty, filter_logits, generate,
                               greedy_generate)
from quamba.models import build_random_model, tiny_config
from quamba.models.mamba import MambaLMHeadModel
from quamba.tokenizer import byte_tokenizer

VOCAB = 257  # tiny_config: bytes + <|endoftext|>, padded to 264


@pytest.fixture(scope="module")
def mamba1():
    return build_random_model(tiny_config("mamba1"), seed=4).eval()


@pytest.fixture(scope="module")
def mamba2():
    return build_random_model(tiny_config("mamba2"), seed=5).eval()


def argmax_by_full_forward(model, ids, n, vocab=VOCAB):
    """The reference: re-run the whole sequence every token, no cache."""
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq).logits[:, -1, :vocab].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


@pytest.mark.parametrize("arch,recipe,options", [
    ("mamba1", "quamba1", {}),
    ("mamba2", "quamba2", {"w_bits": 4, "a_bits": 8, "group_size": 32}),
    ("mamba1", "quamba2", {"w_bits": 4, "a_bits": 16, "group_size": 32}),
])
def test_greedy_decoding_of_a_quantized_model_matches_full_forwards(arch, recipe, options):
    fp = build_random_model(tiny_config(arch), seed=1).eval()
    q = quamba.quantize(fp, recipe, calib_data=None, calib_samples=2, calib_seqlen=8, dtype="float32", **options)
    ids = torch.randint(0, VOCAB, (2, 6))
    got = generate(q, ids, 10, temperature=0)
    # On CPU the step ops and the prefill scan use the same fp32 arithmetic per token, and int8 activations are
    # re-quantized identically, so the argmax agrees exactly (an fp16 GPU kernel could flip a near-tie). Not so with
    # state_int8: decoding rounds the SSM state to int8 after every step, a full forward never does.
    assert torch.equal(got, argmax_by_full_forward(q, ids, 10))


def test_greedy_generate_keeps_its_contract(mamba2):
    ids = torch.randint(0, VOCAB, (3, 4))
    out = greedy_generate(mamba2, ids, 7)
    assert out.shape == (3, 11) and torch.equal(out[:, :4], ids)
    assert torch.equal(out, argmax_by_full_forward(mamba2, ids, 7, vocab=264))  # unmasked, as it always was


def test_seeded_sampling_is_reproducible(mamba1):
    ids = torch.randint(0, VOCAB, (2, 5))
    kw = dict(temperature=1.3, top_k=40, top_p=0.95, min_p=0.01, repetition_penalty=1.2)
    a = generate(mamba1, ids, 12, seed=7, **kw)
    assert torch.equal(a, generate(mamba1, ids, 12, seed=7, **kw))
    assert not torch.equal(a, generate(mamba1, ids, 12, seed=8, **kw))


class _PaddedVocabBait(torch.nn.Module):
    """Wraps a model and makes the padded vocab columns (>= 257) by far the most likely."""

    def __init__(self, inner: MambaLMHeadModel):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, ids, cache=None, num_last_tokens=0):
        logits = self.inner(ids, cache, num_last_tokens).logits.clone()
        logits[..., VOCAB:] += 100.0
        return SimpleNamespace(logits=logits)

    def allocate_cache(self, batch):
        return self.inner.allocate_cache(batch)

    @property
    def device(self):
        return self.inner.device


def test_padded_vocab_columns_are_never_chosen(mamba1):
    bait, ids = _PaddedVocabBait(mamba1), torch.randint(0, VOCAB, (4, 3))
    for kw in ({"temperature": 0}, {"temperature": 2.0, "seed": 0}):
        assert int(generate(bait, ids, 16, **kw)[:, 3:].max()) < VOCAB
    assert int(generate(bait, ids, 4, temperature=0, vocab_size=264)[:, 3:].min()) >= VOCAB  # mask off: bait wins


def test_filters_and_penalty():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    p = logits.softmax(-1)[0]  # ~[0.64, 0.24, 0.09, 0.03, 0.004]
    assert float(p[0]) < 0.7 < float(p[:2].sum())
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True, True]]
    assert torch.isinf(filter_logits(logits, min_p=0.1)).tolist() == [[False, False, False, True, True]]
    seen = torch.tensor([[True, False, False, False, True]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[2.0, 3.0, 2.0, 1.0, -2.0]]


def test_repetition_penalty_discourages_repeats(mamba2):
    ids = torch.randint(0, VOCAB, (1, 4))
    out = generate(mamba2, ids, 20, temperature=0, repetition_penalty=1e4)[0].tolist()
    assert len(set(out)) == len(out)  # neither the prompt nor a generated token comes back


class _CountingLM(torch.nn.Module):
    """A fake LM: the next token is always the last token + 1 (so each row reaches eos when it pleases)."""

    def __init__(self, vocab=20):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)
        self.device = torch.device("cpu")
        self.calls = []

    def allocate_cache(self, batch):
        return SimpleNamespace(conv_states=[], ssm_states=[], seqlen_offset=0)

    def forward(self, ids, cache=None, num_last_tokens=0):
        self.calls.append(ids.shape[1])
        return SimpleNamespace(logits=torch.nn.functional.one_hot((ids + 1) % self.config.vocab_size, self.config.vocab_size).float())


def test_rows_stop_independently_and_pad_with_eos():
    lm = _CountingLM()
    prompts = torch.tensor([[5], [9], [1]])
    out = generate(lm, prompts, 12, temperature=0, eos_token_id=10, pad_token_id=0)
    assert out.tolist() == [[5, 6, 7, 8, 9, 10, 0, 0, 0, 0], [9, 10, 0, 0, 0, 0, 0, 0, 0, 0],
                            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]  # ends once the last row reaches eos
    assert lm.calls == [1] * 9  # one prefill + a step per token except the last: no wasted step
    lm.calls.clear()
    assert generate(lm, prompts, 3, temperature=0, eos_token_id=10).tolist() == [[5, 6, 7, 8], [9, 10, 10, 10], [1, 2, 3, 4]]
    assert lm.calls == [1, 1, 1]


def test_streamer_sees_every_position_and_can_stop():
    lm, seen = _CountingLM(), []

    def streamer(tokens):
        seen.append(tokens.tolist())
        return tokens[0] == 4  # stop every row when row 0 writes 4

    out = generate(lm, torch.tensor([[0, 1], [5, 6]]), 10, temperature=0, streamer=streamer)
    assert seen == [[2, 7], [3, 8], [4, 9]]
    assert out.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_prompts_of_different_lengths_are_exact(mamba2):
    rows = [torch.randint(0, VOCAB, (n,)) for n in (3, 9, 5)]
    out = generate(mamba2, rows, 6, temperature=0)
    for row, got in zip(rows, out):
        assert torch.equal(got, generate(mamba2, row[None], 6, temperature=0)[0])  # no padding entered the state


def test_text_streamer_holds_back_stop_strings_and_partial_characters():
    tok, out = byte_tokenizer(), io.StringIO()
    st = TextStreamer(tok, out, stop=["\nUser:"])
    stopped = [st(torch.tensor([b])) for b in "h\u00e9llo\nUser: more".encode()]
    assert stopped.index(True) == len("h\u00e9llo\nUser:".encode()) - 1  # stops on the colon
    st.end()
    assert out.getvalue() == "h\u00e9llo" == st.text


def test_cache_graph_needs_cuda(mamba1):
    with pytest.raises(QuambaError, match="needs a CUDA device"):
        generate(mamba1, torch.zeros(1, 2, dtype=torch.long), 3, cache_graph=True)


def test_bad_sampling_arguments_are_user_errors(mamba1):
    ids = torch.zeros(1, 2, dtype=torch.long)
    for kw, msg in [({"temperature": -1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_k": 0}, "top_k"),
                    ({"repetition_penalty": 0}, "repetition_penalty")]:
        with pytest.raises(QuambaError, match=msg):
            generate(mamba1, ids, 2, **kw)


# ---- chat ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path, mamba1):
    d = tmp_path / "tiny"
    mamba1.save_pretrained(d, tokenizer=byte_tokenizer())
    return d


def _record_model_calls(monkeypatch):
    """input_ids [1, L] of every top-level model call."""
    calls = []
    original = MambaLMHeadModel.forward

    def forward(self, input_ids, cache=None, num_last_tokens=0):
        calls.append(input_ids[0].tolist())
        return original(self, input_ids, cache, num_last_tokens)

    monkeypatch.setattr(MambaLMHeadModel, "forward", forward)
    return calls


def test_chat_feeds_only_each_turns_new_tokens(model_dir, monkeypatch, capsys):
    tok = byte_tokenizer()
    calls = _record_model_calls(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\n\n/exit\nnever read\n"))
    args = build_parser().parse_args(["chat", str(model_dir), "--max-new-tokens", "6", "--temperature", "0"])
    session = args.func(args)
    assert capsys.readouterr().out.count("bot>") == 2 and len(session.turns) == 2  # stopped at /exit
    turn1 = tok("User: hello\nAssistant:")["input_ids"]
    turn2 = tok("\nUser: how are you\nAssistant:")["input_ids"]
    assert [len(c) for c in calls] == [len(turn1)] + [1] * 5 + [1 + len(turn2)] + [1] * 5
    assert calls[0] == turn1 and calls[6][1:] == turn2  # turn 2: the unread reply token, then the new turn only
    assert [t["fed"] for t in session.turns] == [len(turn1), 1 + len(turn2)]
    # every token of the conversation was read exactly once (all but the last reply token, still pending)
    assert sum(map(len, calls)) == len(turn1) + 6 + len(turn2) + 6 - 1


def test_chat_state_equals_reading_the_whole_conversation(mamba1, monkeypatch):
    calls = _record_model_calls(monkeypatch)
    session = ChatSession(mamba1, byte_tokenizer(), max_new_tokens=6, temperature=0)
    session.send("hi")
    session.send("and then?")
    read_before_reply2 = sum(calls[:7], [])  # turn 1 prefill, 5 steps, turn 2 prefill
    reply2 = sum(calls[7:], []) + session.pending
    fresh = generate(mamba1, torch.tensor([read_before_reply2]), 6, temperature=0)[0, len(read_before_reply2):].tolist()
    assert fresh == reply2  # the state carried across turns is the state of reading everything at once


def test_chat_uses_the_tokenizer_template(mamba1):
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|endoftext|>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    session = ChatSession(mamba1, tok, system="be brief", max_new_tokens=4, temperature=0)
    session.send("one")
    first = "<system>be brief<|endoftext|><user>one<|endoftext|><assistant>"
    assert session.turns[0]["fed"] == len(tok(first, add_special_tokens=False)["input_ids"])
    session.send("two")
    assert session.turns[1]["how"] == "continued"
    rest = "<|endoftext|><user>two<|endoftext|><assistant>"  # closes the reply, then only the new turn
    assert session.turns[1]["fed"] == 1 + len(tok(rest, add_special_tokens=False)["input_ids"])


def test_generate_command_streams_text(model_dir, capsys):
    assert cli_main(["generate", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "5", "--seed", "3"]) == 0
    first = capsys.readouterr()
    assert first.out.startswith("Hi") and "5 tokens" in first.err
    assert cli_main(["generate", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "5", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first.out  # seeded: the same text
    assert cli_main(["generate", str(model_dir), "--prompt", "a", "--prompt", "bcd", "--temperature", "0",
                     "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[0] a") and "\n[1] bcd" in out


def test_generate_command_errors_are_one_line(model_dir, capsys):
    assert cli_main(["generate", str(model_dir), "--cache-graph"]) == 2
    captured = capsys.readouterr()
    assert "needs a CUDA device" in captured.err and captured.err.count("\n") == 1 and captured.out == ""
    assert cli_main(["generate", str(model_dir), "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
