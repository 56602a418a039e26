"""Label-free and perplexity metrics, and the standard errors reported with every metric.

- ``window_nll``/``perplexity``: token-level perplexity over non-overlapping windows (the GPTQ/Quamba
  WikiText-2 convention): the token stream is cut into ``len // window`` windows of ``window`` tokens
  (the shorter tail is dropped); inside each window every token but the first is predicted from its
  prefix in that window; perplexity = exp(total NLL / number of predicted tokens).
- ``agreement``: for a model and its reference (e.g. quantized vs full precision), the mean KL
  divergence KL(reference || model) of the next-token distributions and the top-1 agreement rate,
  over every position of the same windows. No labels needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import QuambaError


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean with the sample standard deviation (ddof 1), as lm-evaluation-harness
    reports for accuracies; None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def perplexity_of_mean_ll(lls: Sequence[float]) -> tuple[float, float | None]:
    """(exp(-mean ll), its standard error by the delta method: ppl * stderr of the mean ll).

    lls: one summed log-likelihood per example (LAMBADA: the target word's tokens)."""
    ppl = math.exp(-sum(lls) / len(lls))
    se = mean_stderr(lls)
    return ppl, None if se is None else ppl * se


def split_windows(ids: torch.Tensor, window: int) -> torch.Tensor:
    """ids: [N] int64 -> [N // window, window]; the tail shorter than a window is dropped."""
    if window < 2:
        raise QuambaError(f"the perplexity window must hold at least 2 tokens, got {window}")
    n = ids.numel() // window
    if n == 0:
        raise QuambaError(f"the text has {ids.numel()} tokens, fewer than one window of {window}; "
                          "use a longer text or a smaller window")
    return ids[: n * window].view(n, window)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False,
               desc: str = "perplexity") -> list[float]:
    """windows: [W, T] int64 -> per window, the summed NLL (nats, float64) of tokens 1..T-1 given their prefix."""
    out = []
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        chunk = windows[start:start + batch_size].to(model.device)
        logits = model(chunk).logits  # [b, T, V]
        for row in range(chunk.shape[0]):  # one row at a time: an fp32 copy of [T, V] is the largest temporary
            nll = F.cross_entropy(logits[row, :-1].float(), chunk[row, 1:], reduction="none")
            out.append(float(nll.double().sum()))
    return out


def perplexity_from_windows(nlls: Sequence[float], tokens_per_window: int) -> tuple[float, float | None]:
    """(token-level perplexity, delta-method standard error using the spread of the windows' mean NLL)."""
    means = [s / tokens_per_window for s in nlls]
    ppl = math.exp(sum(means) / len(means))
    se = mean_stderr(means)
    return ppl, None if se is None else ppl * se


def perplexity(model, ids: torch.Tensor, window: int = 2048, batch_size: int = 1, max_windows: int | None = None,
               progress: bool = False) -> dict:
    """Token-level perplexity of the token stream ``ids`` ([N] int64) over non-overlapping windows.

    Returns {"perplexity", "perplexity_stderr", "windows", "tokens"} (tokens = predicted tokens)."""
    windows = split_windows(ids.flatten(), window)
    if max_windows is not None:
        windows = windows[:max_windows]
    nlls = window_nll(model, windows, batch_size, progress)
    ppl, se = perplexity_from_windows(nlls, window - 1)
    return {"perplexity": ppl, "perplexity_stderr": se, "windows": len(nlls), "tokens": len(nlls) * (window - 1)}


def _vocab_logits(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    return logits if vocab_size is None else logits[..., :vocab_size]


@torch.no_grad()
def agreement(model, reference, ids: torch.Tensor, window: int = 2048, batch_size: int = 1,
              max_windows: int | None = None, vocab_size: int | None = None, progress: bool = False) -> dict:
    """How closely ``model`` follows ``reference`` on a text, without labels.

    ids: [N] int64 token stream (cut into non-overlapping windows as for perplexity) or [B, T] sequences.
    vocab_size: compare only the first ``vocab_size`` logits (needed when the two models pad their
    vocabularies differently); by default the full logits, which must then have the same width.
    Returns {"kl": mean over positions of KL(reference || model) in nats, "kl_stderr", "top1": fraction
    of positions where both argmaxes agree, "top1_stderr", "tokens"}.
    """
    seqs = split_windows(ids, window) if ids.dim() == 1 else ids
    if max_windows is not None:
        seqs = seqs[:max_windows]
    kl_rows, agree_rows = [], []
    for start in tqdm(range(0, seqs.shape[0], batch_size), desc="agreement", disable=not progress, leave=False):
        chunk = seqs[start:start + batch_size]
        p_logits = _vocab_logits(reference(chunk.to(reference.device)).logits, vocab_size)
        q_logits = _vocab_logits(model(chunk.to(model.device)).logits, vocab_size)
        if p_logits.shape[-1] != q_logits.shape[-1]:
            raise QuambaError(f"the models' logits differ in width ({p_logits.shape[-1]} vs {q_logits.shape[-1]}); "
                              "pass vocab_size (the tokenizer's vocabulary) to compare the shared columns")
        for row in range(chunk.shape[0]):
            logp = p_logits[row].float().log_softmax(-1)  # [T, V]
            logq = q_logits[row].to(logp.device).float().log_softmax(-1)
            kl = (logp.exp() * (logp - logq)).sum(-1)  # [T]
            kl_rows.append(kl.double().cpu())
            agree_rows.append((logp.argmax(-1) == logq.argmax(-1)).double().cpu())
    kl_all, agree_all = torch.cat(kl_rows), torch.cat(agree_rows)
    # standard errors treat positions as independent samples (they are not: read them as a lower bound)
    return {"kl": float(kl_all.mean()), "kl_stderr": _tensor_stderr(kl_all),
            "top1": float(agree_all.mean()), "top1_stderr": _tensor_stderr(agree_all),
            "tokens": int(kl_all.numel())}


def _tensor_stderr(x: torch.Tensor) -> float | None:
    return None if x.numel() < 2 else float(x.std(unbiased=True) / math.sqrt(x.numel()))
