"""Offline evaluation tasks: read local files, build the harness's requests, score them, aggregate.

Files live under a data directory (``--data-dir``; the project's ``../shared/data``):

| task           | file                          | protocol (as lm-evaluation-harness defines it)                      |
|----------------|-------------------------------|---------------------------------------------------------------------|
| lambada_openai | lambada/lambada_test.jsonl    | context = text up to the last space, target = " " + last word;       |
|                |                               | acc = all target tokens greedy; ppl = exp(-mean target log-lik)     |
| piqa, arc_easy | zeroshot/<task>.jsonl         | "Question: ...\\nAnswer:" + " " + choice; acc = argmax log-lik,      |
|                | (llm-foundry query/choices)   | acc_norm = argmax log-lik / len(choice in characters)               |
| winogrande     | zeroshot/winogrande.jsonl     | partial scoring: log-lik of " " + the shared continuation after      |
|                | (context_options/continuation)| each option's context; acc = argmax                                 |
| wikitext2      | wikitext2/wiki.test.raw       | "\\n\\n".join(rows), token perplexity over non-overlapping windows   |

Nothing here reaches the network, and a missing file is an error (never a substitute).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QuambaError
from .metrics import mean_stderr, perplexity, perplexity_of_mean_ll
from .scoring import DEFAULT_MAX_LENGTH, encode, encode_pair, score_continuations


@dataclass(frozen=True)
class TaskSpec:
    name: str
    relpath: str  # under the data directory
    kind: str  # "lambada" | "choice" | "partial" | "perplexity"
    protocol: str
    harness: bool = True  # lm-evaluation-harness has a task of this name and protocol


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("lambada_openai", "lambada/lambada_test.jsonl", "lambada",
             "lm-eval lambada_openai, 0-shot: context = text up to the last space, target = ' ' + last word; "
             "acc = every target token is the argmax; perplexity = exp(-mean target log-likelihood)"),
    TaskSpec("piqa", "zeroshot/piqa.jsonl", "choice",
             "lm-eval piqa, 0-shot: 'Question: <goal>\\nAnswer:' + ' ' + choice; acc = argmax log-likelihood, "
             "acc_norm = argmax log-likelihood / characters of the choice"),
    TaskSpec("arc_easy", "zeroshot/arc_easy.jsonl", "choice",
             "lm-eval arc_easy, 0-shot: 'Question: <question>\\nAnswer:' + ' ' + choice; acc = argmax "
             "log-likelihood, acc_norm = argmax log-likelihood / characters of the choice"),
    TaskSpec("winogrande", "zeroshot/winogrande.jsonl", "partial",
             "lm-eval winogrande, 0-shot, partial scoring: log-likelihood of ' ' + continuation after each "
             "option's context; acc = argmax"),
    TaskSpec("wikitext2", "wikitext2/wiki.test.raw", "perplexity",
             "WikiText-2 raw test, rows joined with '\\n\\n' (GPTQ convention), token-level perplexity over "
             "non-overlapping windows (tail dropped), every token but a window's first predicted", harness=False),
]}

# Tasks people ask for that have no local copy here: say so instead of substituting something else.
NO_LOCAL_DATA = {"hellaswag": "HellaSwag", "arc_challenge": "ARC-Challenge"}


# ---- files ------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def task_file(name: str, data_dir: Path | None) -> Path:
    """The local file of task ``name``; QuambaError naming the missing path if it is not there."""
    if name in NO_LOCAL_DATA:
        raise QuambaError(f"{name}: {NO_LOCAL_DATA[name]} has no local data here (only "
                          f"{', '.join(TASKS)} do); it needs lm-evaluation-harness with access to the Hugging Face Hub")
    if name not in TASKS:
        raise QuambaError(f"{name!r} is not an offline task; offline tasks: {', '.join(TASKS)}")
    if data_dir is None:
        raise QuambaError(f"{name}: no data directory found; pass --data-dir (the directory holding {TASKS[name].relpath})")
    path = Path(data_dir) / TASKS[name].relpath
    if not path.is_file():
        raise QuambaError(f"{name}: data file {path} is missing; pass the --data-dir that holds {TASKS[name].relpath}")
    return path


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise QuambaError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
    if not docs:
        raise QuambaError(f"{path} holds no examples")
    return docs


def _field(doc: dict, key: str, path: Path, i: int):
    if key not in doc:
        raise QuambaError(f"{path}: example {i} has no {key!r} field (fields: {', '.join(doc)})")
    return doc[key]


# ---- building requests (strings) ----------------------------------------------------------------------
def lambada_request(text: str) -> tuple[str, str]:
    """(context, target) exactly as the harness's lambada_openai template splits a passage."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def choice_context(query: str) -> str:
    """llm-foundry's query ('Question: ...' , PIQA's with a trailing newline) -> the harness prompt."""
    if query.endswith("\n"):
        query = query[:-1]
    return query + "\nAnswer:"


@dataclass
class ChoiceItem:
    requests: list[tuple[str, str]]  # one (context, continuation) per option
    gold: int
    lengths: list[int]  # characters of each choice (acc_norm divides the log-likelihood by it)


def choice_items(docs: list[dict], path: Path, partial: bool) -> list[ChoiceItem]:
    items = []
    for i, doc in enumerate(docs):
        gold = int(_field(doc, "gold", path, i))
        if partial:  # WinoGrande: options differ in the context, the scored continuation is shared
            contexts = _field(doc, "context_options", path, i)
            cont = " " + _field(doc, "continuation", path, i).strip()
            items.append(ChoiceItem([(c, cont) for c in contexts], gold, [len(cont) - 1] * len(contexts)))
        else:
            ctx = choice_context(_field(doc, "query", path, i))
            choices = _field(doc, "choices", path, i)
            items.append(ChoiceItem([(ctx, " " + c) for c in choices], gold, [len(c) for c in choices]))
        if not 0 <= gold < len(items[-1].requests):
            raise QuambaError(f"{path}: example {i} has gold {gold} outside its {len(items[-1].requests)} options")
    return items


# ---- running -----------------------------------------------------------------------------------------
def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first of equal maxima, like numpy


def _with_stderr(name: str, values: list[float]) -> dict:
    return {name: sum(values) / len(values), f"{name}_stderr": mean_stderr(values)}


def run_lambada(model, tokenizer, docs, path, batch_size, max_length, progress) -> dict:
    pairs = [lambada_request(_field(d, "text", path, i)) for i, d in enumerate(docs)]
    scored = score_continuations(model, [encode_pair(tokenizer, c, t) for c, t in pairs], batch_size, max_length,
                                 progress, desc="lambada_openai")
    lls, hits = [s[0] for s in scored], [float(s[1]) for s in scored]
    ppl, ppl_se = perplexity_of_mean_ll(lls)
    return {**_with_stderr("acc", hits), "perplexity": ppl, "perplexity_stderr": ppl_se}


def run_choice(model, tokenizer, docs, path, batch_size, max_length, progress, partial: bool, name: str) -> dict:
    items = choice_items(docs, path, partial)
    flat = [encode_pair(tokenizer, c, k) for item in items for c, k in item.requests]
    scored = score_continuations(model, flat, batch_size, max_length, progress, desc=name)
    acc, acc_norm, pos = [], [], 0
    for item in items:
        lls = [s[0] for s in scored[pos:pos + len(item.requests)]]
        pos += len(item.requests)
        acc.append(float(_argmax(lls) == item.gold))
        # an empty choice scores -inf when normalised, as numpy's division gives in the harness
        acc_norm.append(float(_argmax([ll / n if n else -math.inf for ll, n in zip(lls, item.lengths)]) == item.gold))
    out = _with_stderr("acc", acc)
    if not partial:  # the harness's WinoGrande reports acc only
        out.update(_with_stderr("acc_norm", acc_norm))
    return out


def wikitext2_text(path: Path) -> str:
    """The raw test file as GPTQ/Quamba read it: the rows of the Hugging Face ``wikitext-2-raw-v1`` test
    split (each line with its newline; whitespace-only lines become "") joined with "\\n\\n"."""
    with open(path, encoding="utf-8") as f:
        rows = [line if line.strip() else "" for line in f]
    return "\n\n".join(rows)


def run_perplexity_text(model, tokenizer, text: str, window: int, batch_size: int, max_windows, progress) -> dict:
    ids = torch.tensor(encode(tokenizer, text), dtype=torch.long)
    return perplexity(model, ids, window, batch_size, max_windows, progress)


def run_task(name: str, model, tokenizer, data_dir: Path | None, limit: int | None = None, batch_size: int = 8,
             max_length: int = DEFAULT_MAX_LENGTH, window: int = 2048, progress: bool = False) -> dict:
    """One offline task -> {"metrics": {...}, "n": examples (or windows), "data": {path, sha256}, "protocol"}."""
    spec = TASKS.get(name)
    path = task_file(name, data_dir)
    if spec.kind == "perplexity":
        metrics = run_perplexity_text(model, tokenizer, wikitext2_text(path), window, batch_size, limit, progress)
        n, tokens = metrics.pop("windows"), metrics.pop("tokens")
        protocol = spec.protocol + f"; window {window} tokens"
    else:
        docs = read_jsonl(path, limit)
        n = len(docs)
        if spec.kind == "lambada":
            metrics = run_lambada(model, tokenizer, docs, path, batch_size, max_length, progress)
        else:
            metrics = run_choice(model, tokenizer, docs, path, batch_size, max_length, progress,
                                 spec.kind == "partial", name)
        protocol = spec.protocol + f"; max length {max_length} tokens"
    out = {"backend": "offline", "metrics": metrics, "n": n, "data": {"path": str(path), "sha256": sha256_file(path)},
           "protocol": protocol}
    if spec.kind == "perplexity":
        out["tokens"] = tokens  # predicted tokens
    return out


def run_ppl_file(path: str | Path, model, tokenizer, limit: int | None = None, batch_size: int = 1,
                 window: int = 2048, progress: bool = False) -> dict:
    """Token perplexity of any UTF-8 text file, read as is."""
    p = Path(path)
    if not p.is_file():
        raise QuambaError(f"--ppl-file {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuambaError(f"--ppl-file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    metrics = run_perplexity_text(model, tokenizer, text, window, batch_size, limit, progress)
    n, tokens = metrics.pop("windows"), metrics.pop("tokens")
    return {"backend": "offline", "metrics": metrics, "n": n, "tokens": tokens, "data": {"path": str(p), "sha256": sha256_file(p)},
            "protocol": f"file read as UTF-8, token-level perplexity over non-overlapping windows of {window} tokens "
                        "(tail dropped), every token but a window's first predicted"}
