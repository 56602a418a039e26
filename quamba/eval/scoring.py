"""The one place that runs a model for evaluation: log-likelihoods of continuations and greedy text.

Offline tasks (``tasks.py``) and the lm-evaluation-harness model class (``harness.py``) both call these
functions, so the two paths tokenize and score identically. The conventions are the harness's:

- a (context, continuation) pair is encoded as ``encode(context + continuation)`` split after
  ``len(encode(context))`` tokens, with trailing spaces of the context moved to the continuation;
  an empty context is replaced by the end-of-text token;
- the model reads ``(context + continuation)[:-1]``, left-truncated to ``max_length`` tokens; the
  continuation is scored by the log-softmax over the model's full (padded) vocabulary; "greedy" means
  every continuation token is the argmax at its position;
- requests are run longest first, right-padded with id 0 (a causal model never sees the padding of
  the positions it is scored on).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

DEFAULT_MAX_LENGTH = 2048  # what lm-evaluation-harness uses for Mamba checkpoints


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (Mamba checkpoints are trained without BOS)."""
    return tokenizer.encode(text, add_special_tokens=False)


def encode_pair(tokenizer, context: str, continuation: str, prefix_token_id: int | None = None) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) for scoring ``continuation`` after ``context``.

    The continuation's ids are the tail of the encoding of the whole string, so a word split differently
    at the boundary is scored the way the model sees it in running text.
    """
    if context == "":
        prefix = tokenizer.eos_token_id if prefix_token_id is None else prefix_token_id
        cont = encode(tokenizer, continuation)
        # a continuation that already starts with the prefix token conditions on it instead
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    n_ctx = len(encode(tokenizer, context))
    return whole[:n_ctx], whole[n_ctx:]


def _batches(order: list[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def score_continuations(model, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 8,
                        max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False,
                        desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation given its context.

    requests: (context_ids, continuation_ids) pairs, both non-empty lists of ints.
    Returns, in the order given, (sum of the continuation tokens' log-probabilities as a Python float
    computed in fp32, whether every continuation token is the greedy argmax).
    """
    for ctx, cont in requests:
        if not ctx or not cont:
            raise ValueError("every request needs a non-empty context and continuation")
        if len(cont) > max_length:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length {max_length}")
    # longest first (ties by content, so the order and hence the batches are deterministic)
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][0]) - len(requests[i][1]),
                                                        tuple(requests[i][0] + requests[i][1])))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress, leave=False)
    for idx in _batches(order, batch_size):
        inputs = [(requests[i][0] + requests[i][1])[-(max_length + 1):][:-1] for i in idx]
        width = max(len(x) for x in inputs)
        batch = torch.zeros(len(idx), width, dtype=torch.long)
        for row, x in enumerate(inputs):
            batch[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        logits = model(batch.to(model.device)).logits  # [B, width, V]
        for row, i in enumerate(idx):
            cont = torch.tensor(requests[i][1], dtype=torch.long, device=logits.device)
            end = len(inputs[row])
            logprobs = logits[row, end - len(cont):end].float().log_softmax(-1)  # [n_cont, V]
            greedy = bool((logprobs.argmax(-1) == cont).all())
            results[i] = (float(logprobs.gather(1, cont[:, None]).sum()), greedy)
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


@torch.no_grad()
def greedy_continue(model, context_ids: list[int], max_new_tokens: int, stop: Sequence[str] = (), tokenizer=None,
                    eos_token_id: int | None = None) -> list[int]:
    """Greedy continuation of one context: at most ``max_new_tokens`` new ids, ending early at
    ``eos_token_id`` (not returned) or once the decoded text contains one of ``stop``.

    Uses the model's recurrent cache when it has one (``allocate_cache``), else re-runs the prefix.
    """
    ids = torch.tensor([context_ids], dtype=torch.long, device=model.device)
    cache = model.allocate_cache(1) if hasattr(model, "allocate_cache") else None
    logits = model(ids, cache).logits[0, -1] if cache is not None else model(ids).logits[0, -1]
    new: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits.argmax())
        if nxt == eos_token_id:
            break
        new.append(nxt)
        if stop and tokenizer is not None and any(s in tokenizer.decode(new) for s in stop):
            break
        step = torch.tensor([[nxt]], dtype=torch.long, device=model.device)
        if cache is not None:
            logits = model(step, cache).logits[0, -1]
        else:
            ids = torch.cat([ids, step], dim=1)
            logits = model(ids).logits[0, -1]
    return new


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]
