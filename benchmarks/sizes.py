"""Exact sizes of the published architectures, full precision and quantized, on a CPU with little memory.

A model's size is linear in its layer count (every layer has the same tensors) and in its vocabulary (the embedding
and lm_head rows), so each variant is built twice at one layer and once at two, at small vocabularies (random weights,
``quamba.quantize`` as in benchmarks/e2e.py), and its size, part by part, is carried to the full shape along those two
lines. The result is the byte count of the full model, not an estimate: ``tests/test_profiling.py`` checks it against
a direct build. Variants: fp16, W8A8 / W4A8 / W4A16 (quamba2), each quantized one also with the embedding and lm_head
quantized at its weight width (``--quantize-embedding --quantize-lm-head``, the published Quamba2 configuration).

    python benchmarks/sizes.py                                  # e2e.py's four models (a few minutes)
    python benchmarks/sizes.py --models mamba2-8b --variants W4A8

writes sizes_<models>.json and .md into --out-dir (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402

import quamba  # noqa: E402
from quamba.presets import preset_config  # noqa: E402
from quamba.profiling import PARTS, size_breakdown  # noqa: E402

VARIANTS = ["fp16", "W8A8", "W4A8", "W4A16"]
SMALL_VOCAB = 1024  # a multiple of every preset's pad_vocab_size_multiple, so padding adds nothing


def built_size(config, variant: str, emb_head: bool) -> dict:
    """size_breakdown of ``variant`` of a random model of ``config`` (fp16; quantized on the CPU)."""
    build = argparse.Namespace(calib_samples=1, calib_seqlen=16, seed=0, quantize_embedding=emb_head,
                               quantize_lm_head=emb_head)
    return size_breakdown(e2e.build_variant(config, variant, build, torch.device("cpu"), torch.float16))


def extrapolated_size(config, variant: str, emb_head: bool = False) -> dict:
    """Bytes of ``variant`` of ``config``, by part, from builds at 1 / 2 layers and SMALL_VOCAB / 2 * SMALL_VOCAB
    rows: size = s(1, V) + (L - 1) * (s(2, V) - s(1, V)) + (Vpad / V - 1) * (s(1, 2V) - s(1, V))."""
    small = dataclasses.replace(config, n_layer=1, vocab_size=SMALL_VOCAB)
    base = built_size(small, variant, emb_head)
    per_layer = built_size(dataclasses.replace(small, n_layer=2), variant, emb_head)
    per_vocab = built_size(dataclasses.replace(small, vocab_size=2 * SMALL_VOCAB), variant, emb_head)
    layers, rows = config.n_layer - 1, config.padded_vocab_size / SMALL_VOCAB - 1
    parts = {}
    for p in PARTS:
        b0 = base["parts"][p]["bytes"]
        value = b0 + layers * (per_layer["parts"][p]["bytes"] - b0) + rows * (per_vocab["parts"][p]["bytes"] - b0)
        if value != round(value):
            raise ArithmeticError(f"{p} of {variant} is not a whole number of bytes ({value}): not linear in vocab")
        parts[p] = int(round(value))
    return {"parts": parts, "total_bytes": sum(parts.values()), "lm_head_tied": base["lm_head_tied"]}


def run(args) -> list[dict]:
    rows = []
    for name in args.models:
        config = preset_config(name)
        fp16 = None
        for variant in args.variants:
            for emb_head in ((False,) if variant == "fp16" else (False, True)):
                t0 = time.perf_counter()
                size = extrapolated_size(config, variant, emb_head)
                fp16 = size["total_bytes"] if variant == "fp16" else fp16
                row = {"model": name, "variant": variant, "embedding_lm_head_quantized": emb_head,
                       "total_bytes": size["total_bytes"], "parts_bytes": size["parts"],
                       "lm_head_tied": size["lm_head_tied"],
                       "vs_fp16": size["total_bytes"] / fp16 if fp16 else None,
                       "seconds": round(time.perf_counter() - t0, 1)}
                print(f"{name:12s} {variant:6s} {'+ emb/head' if emb_head else '':10s} "
                      f"{size['total_bytes'] / 2**20:9.0f} MiB  {e2e._f(row['vs_fp16'], '{:.3f}')}x fp16",
                      file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = ["# Model sizes: full precision and quantized", "",
             "Exact byte counts of the published shapes (every parameter and buffer, scales included; shared tensors "
             "once), carried from builds at 1-2 layers and two small vocabularies (benchmarks/sizes.py). "
             "x fp16 = size / the fp16 model's. + emb/head: embedding and lm_head quantized at the weight width "
             "(Quamba2's published configuration); without it they stay fp16.", "",
             "| model | variant | embedding + lm_head | size MiB | x fp16 | " + " | ".join(PARTS) + " (MiB) |",
             "|---|---|---|---:|---:|" + "---:|" * len(PARTS)]
    for r in report["rows"]:
        head = "fp16" if not r["embedding_lm_head_quantized"] else "quantized"
        if r["variant"] == "fp16":
            head = "fp16" + (" (tied)" if r["lm_head_tied"] else "")
        parts = " | ".join(f"{r['parts_bytes'][p] / 2**20:.0f}" for p in PARTS)
        lines.append(f"| {r['model']} | {r['variant']} | {head} | {r['total_bytes'] / 2**20:.0f} | "
                     f"{e2e._f(r['vs_fp16'], '{:.3f}')} | {parts} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(e2e.MODELS),
                   help=f"comma-separated architecture names (default {','.join(e2e.MODELS)})")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--out-dir", type=Path, default=e2e.RESULTS, help=f"where results go (default {e2e.RESULTS})")
    args = p.parse_args(argv)
    args.models = e2e._names(args.models, list(e2e.PRESETS), "models")
    args.variants = e2e._names(args.variants, VARIANTS, "variants")
    if "fp16" not in args.variants:
        args.variants = ["fp16", *args.variants]  # the ratios need it
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    rows = run(args)
    report = {"rows": rows, "quamba_version": quamba.__version__, "torch_version": torch.__version__,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": "extrapolated from 1-2 layer builds"}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("sizes" if args.models == e2e.MODELS else "sizes_" + "-".join(args.models))
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(report))
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return stem


if __name__ == "__main__":
    main()
