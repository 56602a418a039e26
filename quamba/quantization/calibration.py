"""Calibration data (where it comes from, recorded with its hash) and the calibration pass itself."""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import QuambaError

MAX_TEXT_CHARS = 64 * 2**20  # enough for any calibration set; keeps a huge file from exhausting memory


@dataclass
class CalibrationData:
    input_ids: torch.Tensor  # [N, L] int64
    provenance: dict = field(default_factory=dict)  # source, sha256, samples, seqlen, seed, tokens


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    stem_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    with opener(path, "rt", encoding="utf-8") as f:
        if stem_suffix in (".jsonl", ".json"):
            texts = []
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(row["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise QuambaError(f"{path}: line {i + 1} is not a JSON object with a 'text' field") from None
            return texts
        return [f.read(MAX_TEXT_CHARS)]


def _dataset_texts(name: str) -> list[str]:
    """'NAME[:CONFIG[:SPLIT]]' through the datasets library (online only)."""
    try:
        import datasets
    except ImportError:
        raise QuambaError(f"--calib-data {name!r} is not a file, and the 'datasets' package (needed to read a hub "
                          "dataset) is not installed; pass a text or jsonl file") from None
    parts = name.split(":")
    try:
        ds = datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 and parts[1] else None,
                                   split=parts[2] if len(parts) > 2 else "train")
    except Exception as e:
        raise QuambaError(f"--calib-data {name!r} is not a file and could not be loaded as a hub dataset "
                          f"({type(e).__name__}: {str(e)[:150]}); pass a local text or jsonl file") from None
    if "text" not in ds.column_names:
        raise QuambaError(f"dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    return list(ds["text"])


def load_calibration(calib_data, tokenizer, samples: int, seqlen: int, seed: int = 0) -> CalibrationData:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets of the tokenized calibration text.

    calib_data: a path (.txt, .jsonl with a 'text' field, optionally .gz), a hub dataset name, a list of strings,
    or a LongTensor [N, L] of token ids (used as is).
    """
    if samples <= 0 or seqlen <= 0:
        raise QuambaError(f"calibration needs positive --calib-samples and --calib-seqlen (got {samples}, {seqlen})")
    if isinstance(calib_data, torch.Tensor):
        if calib_data.dim() != 2:
            raise QuambaError(f"calibration token ids must be [N, L], got shape {tuple(calib_data.shape)}")
        ids = calib_data.long()[:samples]
        digest = hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()
        return CalibrationData(ids, {"source": "token tensor", "sha256": digest, "samples": ids.shape[0],
                                     "seqlen": ids.shape[1], "seed": None})
    if isinstance(calib_data, (list, tuple)):
        texts, source = [str(t) for t in calib_data], "texts"
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    else:
        path = Path(calib_data).expanduser()
        if path.is_file():
            texts, source, digest = _read_texts(path), str(path), _sha256_file(path)
        elif path.exists():
            raise QuambaError(f"--calib-data {path} is a directory; pass a text or jsonl file")
        elif str(calib_data).startswith((".", "/", "~")) or Path(str(calib_data)).suffix in (".txt", ".jsonl", ".gz", ".json"):
            raise QuambaError(f"--calib-data {calib_data}: no such file")
        else:
            texts, source = _dataset_texts(str(calib_data)), f"datasets:{calib_data}"
            digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    if tokenizer is None:
        raise QuambaError("calibration text needs a tokenizer (pass tokenizer=... or --tokenizer)")
    sep = tokenizer.eos_token or "\n\n"
    stream = tokenizer(sep.join(t for t in texts if t), return_attention_mask=False)["input_ids"]
    tokens = torch.tensor(stream, dtype=torch.long)
    if tokens.numel() < seqlen:
        raise QuambaError(f"calibration data {source} has only {tokens.numel()} tokens; --calib-seqlen {seqlen} needs "
                          "at least that many: give more text or a shorter --calib-seqlen")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen + 1, (samples,), generator=g)
    ids = torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
    return CalibrationData(ids, {"source": source, "sha256": digest, "samples": samples, "seqlen": seqlen,
                                 "seed": seed, "tokens_available": int(tokens.numel())})


SELF_SAMPLED = "self-sampled"


@torch.no_grad()
def sample_from_model(model, samples: int, seqlen: int, seed: int = 0, start_token: int = 0,
                      temperature: float = 1.0, batch_size: int = 128) -> CalibrationData:
    """Calibration text written by the full-precision model itself: ``samples`` sequences of ``seqlen`` tokens,
    each started from ``start_token`` (end of text) and sampled at ``temperature`` with a seeded generator. Needs no
    data files; recorded as self-sampled."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    device = model.device
    rows = []
    for i in tqdm(range(0, samples, batch_size), desc="sampling calibration text", unit="batch", leave=False):
        n = min(batch_size, samples - i)
        cache = model.allocate_cache(n)
        tok = torch.full((n, 1), start_token, dtype=torch.long, device=device)
        out = []
        for _ in range(seqlen):
            logits = model(tok, cache).logits[:, -1].float().cpu()
            tok = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g).to(device)
            out.append(tok.cpu())
        rows.append(torch.cat(out, dim=1))
    ids = torch.cat(rows)
    return CalibrationData(ids, {"source": SELF_SAMPLED, "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
                                 "samples": samples, "seqlen": seqlen, "seed": seed, "start_token": start_token,
                                 "temperature": temperature})


@torch.no_grad()
def run_calibration(model, input_ids: torch.Tensor, hooks: dict, batch_size: int = 8, desc: str = "calibrating"):
    """Run the full-precision model over ``input_ids`` [N, L] with forward hooks {module: fn(module, args, out)}
    installed for the duration of the pass."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks.items()]
    try:
        device = next(model.parameters()).device
        for i in tqdm(range(0, input_ids.shape[0], batch_size), desc=desc, unit="batch", leave=False):
            model(input_ids[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
