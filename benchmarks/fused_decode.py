"""The fused decode step against the unfused one, on the same built models: TPOT (CUDA graph) at batch 1 and a larger
batch with QUAMBA_FUSED_DECODE off and on, alternated round by round so that drift of the GPU's clocks falls on
both alike. Random weights of the published shapes; the fp16 rows (which the switch does not touch) give the ratio
to full precision in the same run.

    python benchmarks/fused_decode.py --models mamba-2.8b,mamba2-2.7b --variants fp16,W8A8,W4A8

writes benchmarks/results/fused_decode_<models>_<gpu>.{json,md,png}.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402
from common import gpu_slug  # noqa: E402

from quamba.profiling import device_info  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = e2e.decode_parser(__doc__, OUT_DIR, rounds=2)
    p.add_argument("--batches", default="1,16", help="decode batch sizes (default 1,16)")
    args = e2e.decode_args(p, argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected comma-separated positive integers, e.g. 1,16")
    if min(args.batches) < 1:
        p.error("--batches must be positive")
    return args


def measure(model, batch: int, fused: bool, steps: int, graph: bool) -> float:
    """Median ms of one decode step at ``batch`` with the switch set."""
    os.environ["QUAMBA_FUSED_DECODE"] = "1" if fused else "0"
    return e2e.decode_tpot(model, batch, steps, graph)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    before = os.environ.get("QUAMBA_FUSED_DECODE")

    def one(name, variant, model, build_s):
        row = {"model": name, "variant": variant, "build_s": build_s}
        for batch in args.batches:
            for _ in range(args.rounds):
                for fused in (False, True):
                    key = f"tpot_b{batch}_{'fused' if fused else 'unfused'}_ms"
                    row.setdefault(key, []).append(measure(model, batch, fused, args.steps, device.type == "cuda"))
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    rows = e2e.for_each_variant(args.models, args.variants, device, one)
    if before is None:
        os.environ.pop("QUAMBA_FUSED_DECODE", None)
    else:
        os.environ["QUAMBA_FUSED_DECODE"] = before
    return rows


def summarize(rows: list[dict], batches: list[int]) -> None:
    """Medians over the rounds, the fused / unfused ratio, and each variant's ratio to its model's fp16 row."""
    for r in rows:
        for b in batches:
            for mode in ("unfused", "fused"):
                r[f"b{b}_{mode}_median_ms"] = statistics.median(r[f"tpot_b{b}_{mode}_ms"])
            r[f"b{b}_fused_speedup"] = r[f"b{b}_unfused_median_ms"] / r[f"b{b}_fused_median_ms"]
    fp = {r["model"]: r for r in rows if r["variant"] == "fp16"}
    for r in rows:
        for b in batches:
            base = fp.get(r["model"])
            for mode in ("unfused", "fused"):
                r[f"b{b}_{mode}_vs_fp16"] = (base[f"b{b}_fused_median_ms"] / r[f"b{b}_{mode}_median_ms"]
                                             if base else None)


def markdown(report: dict) -> str:
    batches = report["settings"]["batches"]
    head = "| model | variant | " + " | ".join(
        f"b{b} unfused ms | b{b} fused ms | fused speedup | unfused speedup vs fp16 | fused speedup vs fp16"
        for b in batches) + " |"
    lines = [f"# Fused decode step vs unfused on {report['device']['name']}", "",
             f"{report['note']}", "",
             head, "|---|---|" + "---:|" * (5 * len(batches))]
    for r in report["rows"]:
        cells = []
        for b in batches:
            cells += [f"{r[f'b{b}_unfused_median_ms']:.3f}", f"{r[f'b{b}_fused_median_ms']:.3f}",
                      f"{r[f'b{b}_fused_speedup']:.2f}x", e2e._f(r.get(f"b{b}_unfused_vs_fp16")),
                      e2e._f(r.get(f"b{b}_fused_vs_fp16"))]
        lines.append(f"| {r['model']} | {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    plt = e2e.pyplot()
    if plt is None:
        return None
    rows, batches = report["rows"], report["settings"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    labels = [f"{r['model']}\n{r['variant']}" for r in rows]
    for ax, b in zip(axes[0], batches):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r[f"b{b}_unfused_median_ms"] for r in rows], 0.4, label="unfused")
        ax.bar([x + 0.2 for x in xs], [r[f"b{b}_fused_median_ms"] for r in rows], 0.4, label="fused")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_title(f"TPOT batch {b} (ms, CUDA graph)")
    axes[0][0].legend()
    fig.suptitle(f"quamba fused decode step on {report['device']['name']} (random weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(rows: list[dict], settings: dict, info: dict, out_dir: Path, note: str, **recorded) -> str:
    """JSON, markdown and plot of ``rows``; ``recorded`` overrides the report's fields (versions, time) where the
    rows were measured elsewhere."""
    summarize(rows, settings["batches"])
    report = {"device": info, "settings": settings, "rows": rows, "note": note, "random_weights": True,
              "torch_version": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **recorded}
    gpu = gpu_slug(info["name"])
    models = "-".join(dict.fromkeys(r["model"] for r in rows))
    stem = str(out_dir / f"fused_decode_{models}_{gpu}")
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(stem + ".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    Path(stem + ".md").write_text(markdown(report))
    plot(report, Path(stem + ".png"))
    return stem


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/fused_decode.py needs a CUDA GPU (or --device cpu for a smoke run of the script itself)")
    rows = run(args)
    settings = {"batches": args.batches, "rounds": args.rounds, "steps": args.steps, "cache_graph": args.device == "cuda"}
    note = (f"TPOT = median ms of one decode step ({'CUDA graph, ' if settings['cache_graph'] else ''}"
            f"{args.steps} steps after a 16-token prompt), median over {args.rounds} alternated rounds; speedup vs fp16 = "
            "the same model's fp16 TPOT (fused column; the switch does not touch fp16) / this TPOT (> 1: faster).")
    stem = write(rows, settings, device_info(torch.device(args.device)), args.out_dir, note)
    print(f"written: {stem}.json, {stem}.md")
    return stem


if __name__ == "__main__":
    main()
