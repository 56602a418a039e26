"""Full precision vs every recipe on the bundled models: the numbers of the model cards and the closing notes.

    python tools/measure_reference.py --data-dir ../shared/data --device cuda --out results/

For each bundled model: evaluate the full-precision model (fp32), quantize it with each recipe (calibration:
data/corpus/gutenberg-calib.txt, never evaluation data), evaluate the quantized model in memory with KL / top-1
agreement against the source, and write one JSON report per variant plus a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import quamba
from quamba.eval import evaluate, format_comparison
from quamba.eval.report import write_report

TASKS = ["lambada_openai", "piqa", "arc_easy", "winogrande", "wikitext2"]
RECIPES = {
    "mamba1-tiny": [("W8A8 quamba1", "quamba1", {}),
                    ("W8A8 quamba2", "quamba2", dict(w_bits=8, a_bits=8)),
                    ("W4A8 quamba2", "quamba2", dict(w_bits=4, a_bits=8)),
                    ("W4A16 quamba2", "quamba2", dict(w_bits=4, a_bits=16))],
    "mamba2-tiny": [("W8A8 quamba2", "quamba2", dict(w_bits=8, a_bits=8)),
                    ("W4A8 quamba2", "quamba2", dict(w_bits=4, a_bits=8)),
                    ("W4A8 quamba2 +gptq +group-heads", "quamba2", dict(w_bits=4, a_bits=8, gptq=True, group_heads=True)),
                    ("W4A16 quamba2", "quamba2", dict(w_bits=4, a_bits=16))],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data", help="the shared data directory")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="results", help="directory for JSON reports and the markdown table")
    ap.add_argument("--models", default="mamba1-tiny,mamba2-tiny")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calib-samples", type=int, help="override the recipes' calibration windows (default 512)")
    ap.add_argument("--gptq-samples", type=int, help="override GPTQ's calibration windows (default 128)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = Path(args.data_dir) / "corpus" / "gutenberg-calib.txt"
    tasks = args.tasks.split(",")
    table = []
    for name in args.models.split(","):
        tok = quamba.load_tokenizer(name)
        fp = quamba.load_model(name, device=args.device, dtype=torch.float32)
        kw = dict(data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size)
        t0 = time.perf_counter()
        base = evaluate(fp, tok, tasks, model_name=f"{name} fp32", **kw)
        write_report(base, out / f"{name}-fp32.json", overwrite=True)
        print(f"{name} fp32 evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
        results, labels = [base], ["fp32"]
        for label, recipe, opts in RECIPES[name]:
            t0 = time.perf_counter()
            extra = {k: v for k, v in (("calib_samples", args.calib_samples), ("gptq_samples", args.gptq_samples))
                     if v is not None and (k != "gptq_samples" or opts.get("gptq"))}
            q = quamba.quantize(fp, recipe, calib_data=calib, tokenizer=tok, **opts, **extra)
            tq = time.perf_counter() - t0
            res = evaluate(q, tok, tasks, model_name=f"{name} {label}", reference=fp, **kw)
            res["quantize_seconds"] = tq
            slug = label.replace(" ", "-").replace("+", "")
            write_report(res, out / f"{name}-{slug}.json", overwrite=True)
            print(f"{name} {label}: quantized in {tq:.0f} s, evaluated in {time.perf_counter() - t0 - tq:.0f} s", flush=True)
            results.append(res)
            labels.append(label)
            del q
        text = format_comparison(*results, labels=labels)
        print(text, flush=True)
        table.append(f"## {name}\n\n{text}\n")
    (out / "reference_models.md").write_text("\n".join(table))
    (out / "command.json").write_text(json.dumps(vars(args), indent=2))


if __name__ == "__main__":
    with torch.no_grad():
        main()
