"""Train the bundled reference models ``mamba1-tiny`` and ``mamba2-tiny`` from scratch (a repository tool, not
part of the installed package's API).

Three steps, each a subcommand, run from the repository root:

    # 1. CPU: byte-level BPE tokenizer (8,192 tokens) on the training books, then token arrays (np.uint16)
    PYTHONPATH=. python tools/train_reference.py prepare --out carry/data
    # 2. GPU: one model; resumable, each call trains for at most --time-budget seconds and checkpoints
    PYTHONPATH=. python tools/train_reference.py train --arch mamba1 --data carry/data \
        --ckpt carry/ckpt/mamba1 --export out/mamba1-tiny
    # 3. the model card, once the exported model has been evaluated (tools/eval_reference.py)
    PYTHONPATH=. python tools/train_reference.py card --model out/mamba1-tiny --data carry/data \
        --log carry/ckpt/mamba1/train_log.json --eval out/mamba1-tiny-eval.json

Books in the corpus are separated by "\\n\\n<|endoftext|>\\n\\n"; a few of them (picked with the seed) are held out
for validation and never seen by the tokenizer trainer or the model. Training samples random windows of the
training token stream; window k of step s is a pure function of (seed, s), so a resumed run sees the same data.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "gutenberg-train.txt.gz"
BOOK_SEPARATOR = "\n\n<|endoftext|>\n\n"
EOS = "<|endoftext|>"

# Both models: d_model 256, 6 layers, tied embeddings, bf16 weights -> under 10 MB each (9.45 MB and 9.38 MB).
PRESETS = {
    "mamba1": dict(arch="mamba1", d_model=256, n_layer=6, d_state=16, expand=2),
    "mamba2": dict(arch="mamba2", d_model=256, n_layer=6, d_state=64, expand=2, headdim=64, ngroups=1, chunk_size=64),
}
EXPORT_NAMES = {"mamba1": "mamba1-tiny", "mamba2": "mamba2-tiny"}


def log(msg: str):
    print(msg, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- 1. tokenizer and token arrays -------------------------------------------------------------------
def split_books(corpus: Path, n_val: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """(train books, validation books, indices of the validation books in the file)."""
    books = [b for b in gzip.open(corpus, "rt", encoding="utf-8").read().split(BOOK_SEPARATOR) if b.strip()]
    if n_val >= len(books):
        raise SystemExit(f"--val-books {n_val} leaves no training books (the corpus has {len(books)})")
    val_idx = sorted(random.Random(seed).sample(range(len(books)), n_val))
    held = set(val_idx)
    return [b for i, b in enumerate(books) if i not in held], [books[i] for i in val_idx], val_idx


def train_tokenizer(books: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenization, no prefix space) with <|endoftext|> as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    paragraphs = (p for b in books for p in b.split("\n\n"))
    tok.train_from_iterator(paragraphs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def encode_books(tok, books: list[str]) -> np.ndarray:
    """Token ids of the books, each followed by <|endoftext|>, as one np.uint16 stream."""
    eos = tok.convert_tokens_to_ids(EOS)
    enc = tok.backend_tokenizer.encode_batch(books, add_special_tokens=False)
    ids = [np.asarray(e.ids + [eos], dtype=np.uint16) for e in enc]
    return np.concatenate(ids)


def portable_tokenizer_config(folder: Path):
    """Name the class every transformers version knows (4.x has no TokenizersBackend, which 5.x writes)."""
    f = folder / "tokenizer_config.json"
    cfg = json.loads(f.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    f.write_text(json.dumps(cfg, indent=2) + "\n")


def cmd_prepare(args):
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise SystemExit(f"corpus {corpus} not found; pass --corpus PATH/gutenberg-train.txt.gz")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_books, val_books, val_idx = split_books(corpus, args.val_books, args.seed)
    log(f"{len(train_books)} training books, {len(val_books)} validation books (indices {val_idx})")
    tok = train_tokenizer(train_books, args.vocab_size)
    tok.save_pretrained(str(out / "tokenizer"))
    portable_tokenizer_config(out / "tokenizer")
    log(f"tokenizer: {len(tok)} tokens ({time.time() - t0:.0f} s)")
    train, val = encode_books(tok, train_books), encode_books(tok, val_books)
    train.tofile(out / "train.u16")
    val.tofile(out / "val.u16")
    meta = dict(corpus=corpus.name, corpus_sha256=sha256(corpus), seed=args.seed, vocab_size=len(tok),
                n_books=len(train_books) + len(val_books), val_book_indices=val_idx,
                val_book_openings=[b.strip()[:60] for b in val_books],
                train_chars=sum(map(len, train_books)), val_chars=sum(map(len, val_books)),
                train_tokens=int(train.size), val_tokens=int(val.size))
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"train {train.size:,} tokens, val {val.size:,} tokens ({time.time() - t0:.0f} s) -> {out}")


# ---- 2. training ----------------------------------------------------------------------------------------
def load_tokens(path: Path, device):
    import torch

    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64)).to(device)


def batch_at(tokens, step: int, batch: int, seqlen: int, seed: int):
    """Random windows of seqlen + 1 tokens, a pure function of (seed, step): (inputs, targets) [batch, seqlen]."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, tokens.numel() - seqlen - 1, (batch,), generator=g).to(tokens.device)
    win = tokens[starts[:, None] + torch.arange(seqlen + 1, device=tokens.device)]
    return win[:, :-1], win[:, 1:]


def lm_loss(model, inputs, targets):
    import torch.nn.functional as F

    logits = model(inputs).logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def validation_loss(model, val_tokens, seqlen: int, max_windows: int, batch: int) -> tuple[float, int]:
    """Mean next-token loss over consecutive non-overlapping windows of the held-out books: (loss, tokens)."""
    import torch

    n = min((val_tokens.numel() - 1) // seqlen, max_windows)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            idx = torch.arange(i, min(i + batch, n), device=val_tokens.device)[:, None] * seqlen
            win = val_tokens[idx + torch.arange(seqlen + 1, device=val_tokens.device)]
            loss = lm_loss(model, win[:, :-1], win[:, 1:])
            total += loss.item() * win[:, 1:].numel()
            count += win[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1), count


def lr_at(step: int, max_steps: int, peak: float, warmup: int, final_frac: float) -> float:
    """Linear warmup, then cosine decay to final_frac * peak at max_steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model, weight_decay: float):
    """Weight decay on the embedding and the projection matrices only (not on A_log, D, dt bias, norms, conv)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and not name.endswith("A_log") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def save_state(path: Path, state: dict):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_model(model, tokenizer, out: Path):
    """The shipped checkpoint: bf16 weights, written by the project's own save_pretrained."""
    import torch

    shipped = copy.deepcopy(model).to(device="cpu", dtype=torch.bfloat16)
    shipped.save_pretrained(out, tokenizer=tokenizer, overwrite=True)
    portable_tokenizer_config(out)
    return shipped


def cmd_train(args):
    import torch
    from transformers import AutoTokenizer

    from quamba.models import MambaConfig, build_random_model

    t_start = time.time()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights and activations; TF32 matmuls
    torch.backends.cudnn.allow_tf32 = True
    data = Path(args.data)
    meta = json.loads((data / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    config = MambaConfig(vocab_size=meta["vocab_size"], **PRESETS[args.arch])
    model = build_random_model(config, seed=args.seed, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    ckpt = Path(args.ckpt) / "state.pt"
    hparams = dict(arch=args.arch, config=config.to_dict(), seed=args.seed, batch=args.batch, seqlen=args.seqlen,
                   lr=args.lr, warmup=args.warmup, final_lr_frac=args.final_lr_frac, weight_decay=args.weight_decay,
                   grad_clip=args.grad_clip)
    state = dict(step=0, tokens=0, train_seconds=0.0, max_steps=args.max_steps, history=[], calls=[])
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["hparams"] != hparams:
            raise SystemExit(f"{ckpt} was written with other settings ({saved['hparams']}); use another --ckpt")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log(f"resumed from {ckpt} at step {state['step']} ({state['tokens']:,} tokens)")
    train_tokens = load_tokens(data / "train.u16", device)
    val_tokens = load_tokens(data / "val.u16", device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{args.arch}: {n_params:,} parameters, {train_tokens.numel():,} train tokens, {val_tokens.numel():,} val "
        f"tokens, {args.batch}x{args.seqlen} tokens per step, device {torch.cuda.get_device_name() if device.type == 'cuda' else device}")

    deadline = t_start + args.time_budget - args.reserve
    model.train()
    step_times, tokens_at_log, time_at_log = [], state["tokens"], time.time()
    call = dict(start_step=state["step"], device=torch.cuda.get_device_name() if device.type == "cuda" else str(device))
    while state["max_steps"] == 0 or state["step"] < state["max_steps"]:
        t0 = time.time()
        step = state["step"]
        lr = lr_at(step, state["max_steps"] or 10**9, args.lr, args.warmup, args.final_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        inputs, targets = batch_at(train_tokens, step, args.batch, args.seqlen, args.seed)
        loss = lm_loss(model, inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        state["step"] += 1
        state["tokens"] += inputs.numel()
        if state["step"] % args.log_every == 0 or state["step"] == 1:
            loss_v, gnorm_v = loss.item(), gnorm.item()  # synchronises, so the timing below is real
            now = time.time()
            tps = (state["tokens"] - tokens_at_log) / max(now - time_at_log, 1e-9)
            tokens_at_log, time_at_log = state["tokens"], now
            rec = dict(step=state["step"], loss=round(loss_v, 4), lr=lr, grad_norm=round(gnorm_v, 3),
                       tokens=state["tokens"], tokens_per_s=round(tps))
            if state["step"] % args.eval_every == 0:
                rec["val_loss"] = round(validation_loss(model, val_tokens, args.seqlen, args.val_windows_quick, args.batch)[0], 4)
            state["history"].append(rec)
            log(json.dumps(rec))
            if not math.isfinite(loss_v):
                raise SystemExit(f"loss is {loss_v} at step {state['step']}: stopping (lower --lr?)")
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.time() - t0)
        state["train_seconds"] += step_times[-1]
        if state["max_steps"] == 0 and len(step_times) == args.calibrate_steps + 5:
            # --max-steps 0: fix the schedule's length from the measured step time (5 warm-up steps left out),
            # so that this call ends near its budget; it is stored, and resumed calls keep it.
            per_step = sorted(step_times[5:])[len(step_times[5:]) // 2]
            state["max_steps"] = state["step"] + int((deadline - time.time()) / (per_step * 1.03))
            log(f"median step {per_step * 1000:.1f} ms -> max_steps {state['max_steps']}")
        if time.time() + (sorted(step_times)[len(step_times) // 2] if step_times else 0) > deadline:
            log(f"time budget reached at step {state['step']}")
            break

    train_elapsed = sum(step_times)
    if device.type == "cuda":
        call["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    call.update(end_step=state["step"], seconds=round(train_elapsed, 1),
                tokens_per_s=round((state["step"] - call["start_step"]) * args.batch * args.seqlen / max(train_elapsed, 1e-9)))
    state["calls"].append(call)
    val_loss, val_count = validation_loss(model, val_tokens, args.seqlen, args.val_windows, args.batch)
    state["final"] = dict(step=state["step"], tokens=state["tokens"], val_loss_fp32=round(val_loss, 4),
                          val_tokens=val_count, finished=state["step"] >= state["max_steps"] > 0)
    save_state(ckpt, dict(model=model.state_dict(), optimizer=opt.state_dict(), state=state, hparams=hparams))
    if args.export:
        shipped = export_model(model, tok, Path(args.export)).to(device)
        state["final"]["val_loss_bf16"] = round(validation_loss(shipped, val_tokens, args.seqlen, args.val_windows, args.batch)[0], 4)
        log(f"exported bf16 weights to {args.export}")
    summary = dict(hparams=hparams, meta=meta, n_params=n_params, **state)
    (Path(args.ckpt) / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(json.dumps(dict(final=state["final"], call=call)))


# ---- 3. model card --------------------------------------------------------------------------------------
def cmd_card(args):
    model_dir = Path(args.model)
    trained = json.loads(Path(args.log).read_text())
    ev = json.loads(Path(args.eval).read_text()) if args.eval else None
    (model_dir / "README.md").write_text(render_card(model_dir, trained, ev, args.command))
    log(f"wrote {model_dir / 'README.md'}")


def render_card(model_dir: Path, t: dict, ev: dict | None, command: str | None) -> str:
    h, m, f = t["hparams"], t["meta"], t["final"]
    name = model_dir.name
    weights = model_dir / "model.safetensors"
    c = h["config"]
    shape = f"d_model {c['d_model']}, {c['n_layer']} layers, d_state {c['d_state']}, expand {c['expand']}"
    if c["arch"] == "mamba2":
        shape += f", headdim {c['headdim']}, ngroups {c['ngroups']}, chunk_size {c['chunk_size']}"
    else:
        shape += f", dt_rank {c['dt_rank']}"
    calls = "; ".join(f"steps {x['start_step']}-{x['end_step']} on one {x['device']}: {x['seconds']} s of training "
                      f"steps, {x['tokens_per_s']:,} tokens/s" + (f", peak {x['peak_gib']} GiB" if "peak_gib" in x else "")
                      for x in t["calls"])
    ppl = math.exp(f.get("val_loss_bf16", f["val_loss_fp32"]))
    lines = [
        f"# {name}",
        "",
        f"A tiny {'Mamba2' if c['arch'] == 'mamba2' else 'Mamba1'} language model trained from scratch as a reference "
        "model for quamba's tests, demos and quantization experiments. It writes English-like text, nothing more: "
        "it is far too small to be useful as a language model.",
        "",
        f"Load it by name: `quamba.load_model(\"{name}\")`, `quamba.load_tokenizer(\"{name}\")`.",
        "",
        "## Model",
        "",
        f"- architecture: {c['arch']}, {shape}, tied embeddings, vocabulary {c['vocab_size']}",
        f"- parameters: {t['n_params']:,}; weights bf16, `model.safetensors` {weights.stat().st_size:,} bytes",
        f"- tokenizer: byte-level BPE, {m['vocab_size']} tokens, `<|endoftext|>` (id 0) ends a text; trained on the "
        "training books only",
        "",
        "## Training data",
        "",
        f"- `shared/data/corpus/{m['corpus']}`, sha256 `{m['corpus_sha256']}`: {m['n_books']} public-domain "
        "Project Gutenberg books, separated by `\\n\\n<|endoftext|>\\n\\n`",
        f"- validation: {len(m['val_book_indices'])} books held out (indices {m['val_book_indices']} in the file, "
        f"picked with seed {m['seed']}), {m['val_tokens']:,} tokens; training: the other books, {m['train_tokens']:,} tokens",
        "",
        "## Training",
        "",
        f"- seed {h['seed']}; {h['batch']} random windows of {h['seqlen']} tokens per step; AdamW (betas 0.9/0.95, "
        f"weight decay {h['weight_decay']} on matrices and embedding), peak learning rate {h['lr']}, {h['warmup']} "
        f"warm-up steps, cosine decay to {h['final_lr_frac']} x peak at step {t['max_steps']}; gradient clip "
        f"{h['grad_clip']}; fp32 weights and activations (TF32 matmuls), bf16 export",
        f"- steps: {f['step']:,}; tokens seen: {f['tokens']:,} ({f['tokens'] / m['train_tokens']:.2f} epochs)",
        f"- runs: {calls}",
        f"- validation loss on the held-out books ({f['val_tokens']:,} tokens, {h['seqlen']}-token windows): "
        f"{f['val_loss_fp32']} (fp32 weights)"
        + (f", {f['val_loss_bf16']} (the shipped bf16 weights), perplexity {ppl:.1f}" if "val_loss_bf16" in f else ""),
        "",
        "Reproduce (from the repository root; `train` stops at its time budget and resumes from `--ckpt` when run "
        f"again; `--max-steps 0` fitted the schedule to the measured step time, here {t['max_steps']} steps, so pass "
        f"`--max-steps {t['max_steps']}` to get the same schedule on other hardware):",
        "",
        "```",
        command or "(see tools/train_reference.py)",
        "```",
        "",
        "## Evaluation",
        "",
    ]
    if ev:
        w, lam = ev["wikitext2"], ev["lambada"]
        lines += [
            f"Computed with `tools/eval_reference.py` (this repository's quick evaluator, not `quamba eval`), "
            f"on {ev.get('device', '?')}, weights {ev.get('dtype', 'as stored')}:",
            "",
            "| task | metric | value |",
            "|---|---|---|",
            f"| WikiText-2 (wiki.test.raw, lines joined by `\\n\\n`, {w['windows']} non-overlapping {w['window']}-token "
            f"windows, {w['tokens']:,} predicted tokens) | token-level perplexity | {w['ppl']:.2f} |",
            f"| LAMBADA (lambada_test.jsonl, {lam['n']} examples; target = \" \" + last word) | accuracy (all target "
            f"tokens greedy) | {lam['acc']:.4f} ({round(lam['acc'] * lam['n'])} of {lam['n']}) |",
            f"| LAMBADA | perplexity of the target | {lam['ppl']:.1f} |",
            "",
            "Far below published Mamba models, as expected: a 5M-parameter model that has read only 19th-century "
            "books knows little Wikipedia and almost none of LAMBADA's modern-fiction names. These numbers are the "
            "baseline that quantized versions of this model are compared with. The ops were the PyTorch references "
            "(`QUAMBA_FORCE_REFERENCE=1`; Mamba1's scan is `selective_scan_chunked`).",
            "",
        ]
    else:
        lines += ["Not evaluated yet.", ""]
    lines += ["## Licence", "", "The training text is public domain; the weights are released with this repository.", ""]
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("prepare", help="train the tokenizer and write the token arrays (CPU)")
    q.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="the gzip corpus (default: %(default)s)")
    q.add_argument("--out", required=True, help="output folder: tokenizer/, train.u16, val.u16, meta.json")
    q.add_argument("--vocab-size", type=int, default=8192)
    q.add_argument("--val-books", type=int, default=4, help="books held out for validation")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(fn=cmd_prepare)

    q = sub.add_parser("train", help="train one model until --time-budget, resuming from --ckpt")
    q.add_argument("--arch", choices=sorted(PRESETS), required=True)
    q.add_argument("--data", required=True, help="the folder written by `prepare`")
    q.add_argument("--ckpt", required=True, help="folder of the resumable training state (state.pt, train_log.json)")
    q.add_argument("--export", help="write the bf16 model here (config.json, model.safetensors, tokenizer)")
    q.add_argument("--device", default="cuda")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--seqlen", type=int, default=1024)
    q.add_argument("--lr", type=float, default=2e-3)
    q.add_argument("--warmup", type=int, default=100)
    q.add_argument("--final-lr-frac", type=float, default=0.1)
    q.add_argument("--weight-decay", type=float, default=0.1)
    q.add_argument("--grad-clip", type=float, default=1.0)
    q.add_argument("--max-steps", type=int, default=0,
                   help="length of the learning-rate schedule; 0: fit it to this call's time budget (measured)")
    q.add_argument("--calibrate-steps", type=int, default=20, help="steps timed to fix --max-steps 0")
    q.add_argument("--time-budget", type=float, default=540, help="seconds of wall time for this call, all included")
    q.add_argument("--reserve", type=float, default=30, help="seconds kept for the final evaluation and saving")
    q.add_argument("--log-every", type=int, default=50)
    q.add_argument("--eval-every", type=int, default=250)
    q.add_argument("--val-windows-quick", type=int, default=32)
    q.add_argument("--val-windows", type=int, default=256)
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("card", help="write README.md (the model card) into an exported model folder")
    q.add_argument("--model", required=True)
    q.add_argument("--log", required=True, help="train_log.json written by `train`")
    q.add_argument("--eval", help="the JSON written by tools/eval_reference.py")
    q.add_argument("--command", help="the commands that reproduce the model, quoted in the card")
    q.set_defaults(fn=cmd_card)

    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
