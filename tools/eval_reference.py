"""Quick WikiText-2 perplexity and LAMBADA accuracy for the reference models (a repository tool; the
project's official evaluator is `quamba eval`).

    PYTHONPATH=. python tools/eval_reference.py mamba1-tiny --data ../shared/data --device cuda --json out.json

WikiText-2: the lines of wiki.test.raw joined by "\\n\\n", tokenized with the model's tokenizer, cut into
non-overlapping windows of --window tokens (the remainder dropped); perplexity = exp(summed next-token NLL /
predicted tokens). LAMBADA (lambada_test.jsonl, the lambada_openai file): context = text up to the last space,
target = " " + last word, tokenized as lm-evaluation-harness does (encode context + target, the target's tokens
being what follows the context's encoding); an example counts as correct when every target token is the greedy
argmax; perplexity = exp(mean over examples of the target's summed NLL).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


@torch.no_grad()
def wikitext2_ppl(model, tok, path: Path, window: int = 2048, batch: int = 8, limit: int | None = None) -> dict:
    text = "\n\n".join(path.read_text(encoding="utf-8").splitlines())
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = min(ids.numel() // window, limit or ids.numel())
    wins = ids[: n * window].view(n, window)
    nll, count = 0.0, 0
    for i in range(0, n, batch):
        x = wins[i : i + batch].to(model.device)
        logits = model(x).logits[:, :-1].float()
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return dict(ppl=math.exp(nll / count), windows=n, window=window, tokens=count)


def _lambada_pairs(tok, path: Path) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        cut = text.rindex(" ")
        context, target = text[:cut], text[cut:]
        whole = tok(context + target, add_special_tokens=False)["input_ids"]
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        pairs.append((ctx, whole[len(ctx):]))
    return pairs


@torch.no_grad()
def lambada(model, tok, path: Path, batch: int = 32, limit: int | None = None) -> dict:
    pairs = _lambada_pairs(tok, path)[:limit]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    pad = tok.eos_token_id or 0  # right padding: a causal model's earlier positions never see it
    correct, nlls = 0, []
    for s in range(0, len(order), batch):
        group = [pairs[i] for i in order[s : s + batch]]
        seqs = [c + t for c, t in group]
        width = max(map(len, seqs)) - 1
        x = torch.full((len(seqs), width), pad, dtype=torch.long)
        for r, seq in enumerate(seqs):
            x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
        logp = model(x.to(model.device)).logits.float().log_softmax(-1)  # stays on the device: only targets come back
        for r, (ctx, tgt) in enumerate(group):
            lp = logp[r, len(ctx) - 1 : len(ctx) - 1 + len(tgt)]
            target = torch.tensor(tgt, device=lp.device)
            correct += int(bool((lp.argmax(-1) == target).all()))
            nlls.append(-lp.gather(-1, target[:, None]).sum().item())
    return dict(acc=correct / len(pairs), ppl=math.exp(sum(nlls) / len(nlls)), n=len(pairs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory or bundled name")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with wikitext2/ and lambada/ (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["stored", "float32"], default="stored", help="weights as stored (bf16) or fp32")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--wikitext-limit", type=int, help="only the first N windows (a quick check)")
    p.add_argument("--lambada-limit", type=int, help="only the first N LAMBADA examples (a quick check)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import quamba

    t0 = time.time()
    model = quamba.load_model(args.model, device=args.device, dtype=None if args.dtype == "stored" else torch.float32)
    tok = quamba.load_tokenizer(args.model)
    data = Path(args.data)
    res = dict(model=str(args.model), device=torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
               dtype=str(model.dtype).replace("torch.", ""))
    res["wikitext2"] = wikitext2_ppl(model, tok, data / "wikitext2" / "wiki.test.raw", args.window,
                                     limit=args.wikitext_limit)
    res["lambada"] = lambada(model, tok, data / "lambada" / "lambada_test.jsonl", limit=args.lambada_limit)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
