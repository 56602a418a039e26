"""What each part of a decode step costs on the GPU: the step's TPOT (CUDA graph) with one part at a time replaced by
its cached output, so that part launches no kernel; the difference from the whole step is that part's marginal
cost in the step's chain of kernels, launch and drain included. A profile cannot show this under dependent launch
(sm_90), where each kernel starts before its predecessor ends and the summed kernel durations exceed the step.

Parts (per layer): norm (the block's residual add + RMSNorm [+ int8]), in_proj (with the conv step fused into it,
the default), x_proj (Mamba1), scan (the state update of an A8 mixer), gate (A8: Mamba2's gated norm + Hadamard +
int8, Mamba1's Hadamard + int8), out_proj; and two groups: gemv (every projection) and small (norm, scan, gate).
What is left when every part is cached is the step's fixed cost (embedding, final norm, lm_head, argmax, the graph).
The floor of the projections is their weight bytes / the measured copy bandwidth.

The outputs are cached per module from one real decode step, so the timed steps compute nonsense; only the times
mean something. Random weights of the published shapes.

    python benchmarks/decode_ablation.py --models mamba2-2.7b,mamba-2.8b --variants fp16,W8A8,W4A8

writes benchmarks/results/decode_ablation_<models>_<gpu>.{json,md,png}.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402
from common import gpu_slug  # noqa: E402

from quamba.profiling import device_info, size_breakdown  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("norm", "in_proj", "x_proj", "scan", "gate", "out_proj")
GROUPS = {"gemv": ("in_proj", "x_proj", "out_proj"), "small": ("norm", "scan", "gate"), "all": PARTS}


def part_targets(model, part: str) -> list[tuple[object, str]]:
    """(object, method name) of every call that makes up ``part`` in ``model``'s layers; empty where the model has
    no such part (x_proj in Mamba2, the scan and gate of a full-precision mixer, whose step calls its ops directly)."""
    found = []
    for layer in model.backbone.layers:
        mixer = layer.mixer
        if part == "norm":
            found.append((layer.norm, "add_forward" if hasattr(layer.norm, "add_forward") else "forward"))
        elif part in ("in_proj", "x_proj", "out_proj") and hasattr(mixer, part):
            found.append((getattr(mixer, part), "forward"))
        elif part == "scan" and hasattr(mixer, "scan"):
            found.append((mixer.scan, "step"))
        elif part == "gate" and hasattr(mixer, "_norm_had"):
            found.append((mixer, "_norm_had"))
        elif part == "gate" and hasattr(mixer, "had"):
            found.append((mixer.had, "forward"))
    return found


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype) for a in args if torch.is_tensor(a))


class Cached:
    """Replaces ``obj.name`` by a call that runs the real one once per argument signature and then returns that
    output again, launching nothing. ``restore()`` puts the method back."""

    def __init__(self, obj, name: str):
        self.obj, self.name, self.real, self.outputs = obj, name, getattr(obj, name), {}
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        key = _signature(args)
        if key not in self.outputs:
            self.outputs[key] = self.real(*args, **kwargs)
        return self.outputs[key]

    def restore(self):
        delattr(self.obj, self.name)  # the instance attribute goes; the class's method shows again


def _prime(model, batch: int) -> None:
    """One eager prefill and decode step, so every cached part holds its decode-step output before any capture."""
    ids = torch.randint(0, model.config.vocab_size, (batch, 16), device=model.device)
    cache = model.allocate_cache(batch)
    tok = model(ids, cache, num_last_tokens=1).logits[:, -1].argmax(-1)
    model(tok[:, None], cache)


def ablations(model) -> dict[str, tuple[str, ...]]:
    """The settings measured on ``model``: none, each part it has, each group with two or more parts it has."""
    have = [p for p in PARTS if part_targets(model, p)]
    out = {"none": ()}
    out.update({p: (p,) for p in have})
    for g, parts in GROUPS.items():
        sub = tuple(p for p in parts if p in have)
        if len(sub) > 1 and sub not in out.values():
            out[g] = sub
    return out


def measure_model(model, batch: int, rounds: int, steps: int, graph: bool) -> dict[str, float]:
    """Median TPOT (ms) over ``rounds`` of every ablation, alternated so clock drift falls on all alike."""
    settings = ablations(model)
    samples = {k: [] for k in settings}
    for _ in range(rounds):
        for name, parts in settings.items():
            patches = [Cached(obj, meth) for p in parts for obj, meth in part_targets(model, p)]
            try:
                _prime(model, batch)
                samples[name].append(e2e.decode_tpot(model, batch, steps, graph))
            finally:
                for c in patches:
                    c.restore()
    return {k: statistics.median(v) for k, v in samples.items()}


def projection_bytes(model) -> int:
    """Weight bytes of the layers' projections (size_breakdown's "linear" part; the lm_head is its own part)."""
    return size_breakdown(model)["parts"]["linear"]["bytes"]


def rows_for(name: str, variant: str, tpots: dict[str, float], n_layer: int, proj_bytes: int, bandwidth: float | None):
    base = tpots["none"]
    rows = []
    for k, ms in tpots.items():
        saved = base - ms
        rows.append({"model": name, "variant": variant, "cached": k, "tpot_ms": ms, "saved_ms": saved,
                     "saved_us_per_layer": 1e3 * saved / n_layer, "share": saved / base})
    floor = proj_bytes / bandwidth * 1e3 if bandwidth else None
    summary = {"model": name, "variant": variant, "tpot_ms": base, "fixed_ms": tpots.get("all"),
               "projection_bytes": proj_bytes, "projection_floor_ms": floor,
               "projections_ms": base - tpots["gemv"] if "gemv" in tpots else None}
    if floor and summary["projections_ms"]:
        summary["projections_vs_floor"] = summary["projections_ms"] / floor
    return rows, summary


def markdown(report: dict) -> str:
    lines = [f"# Decode step, part by part, on {report['device']['name']}", "", report["note"], "",
             "| model | variant | cached (no kernel) | TPOT ms | saved ms | saved us / layer | share of the step |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['variant']} | {r['cached']} | {r['tpot_ms']:.3f} | {r['saved_ms']:.3f} | "
                     f"{r['saved_us_per_layer']:.2f} | {100 * r['share']:.0f}% |")
    lines += ["", "| model | variant | TPOT ms | fixed ms (all cached) | projections ms | their floor ms | ratio |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in report["summaries"]:
        lines.append(f"| {s['model']} | {s['variant']} | {s['tpot_ms']:.3f} | {e2e._f(s['fixed_ms'], '{:.3f}')} | "
                     f"{e2e._f(s['projections_ms'], '{:.3f}')} | {e2e._f(s['projection_floor_ms'], '{:.3f}')} | "
                     f"{e2e._f(s.get('projections_vs_floor'))} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    plt = e2e.pyplot()
    if plt is None:
        return None
    keys = list(dict.fromkeys((r["model"], r["variant"]) for r in report["rows"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    parts = [p for p in PARTS if any(r["cached"] == p for r in report["rows"])]
    for i, p in enumerate(parts):
        vals = [next((r["saved_ms"] for r in report["rows"] if (r["model"], r["variant"]) == k and r["cached"] == p), 0)
                for k in keys]
        ax.bar([j + (i - len(parts) / 2) * 0.12 for j in range(len(keys))], vals, 0.12, label=p)
    ax.set_xticks(range(len(keys)), [f"{m}\n{v}" for m, v in keys], fontsize=8)
    ax.set_ylabel("ms per token saved when cached")
    ax.legend(fontsize=7)
    fig.suptitle(f"quamba decode step, part by part, on {report['device']['name']} (random weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = e2e.decode_parser(__doc__, OUT_DIR, rounds=3)
    p.set_defaults(models="mamba2-2.7b,mamba-2.8b")
    p.add_argument("--batch", type=int, default=1, help="decode batch size (default 1)")
    args = e2e.decode_args(p, argv)
    if args.batch < 1:
        p.error("--batch must be positive")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/decode_ablation.py needs a CUDA GPU (or --device cpu for a smoke run of the script itself)")
    device = torch.device(args.device)
    graph = device.type == "cuda"
    bandwidth = e2e.copy_bandwidth(device) if graph else None

    def one(name, variant, model, build_s):
        tpots = measure_model(model, args.batch, args.rounds, args.steps, graph)
        r, s = rows_for(name, variant, tpots, model.config.n_layer, projection_bytes(model), bandwidth)
        print(json.dumps(s), file=sys.stderr, flush=True)
        return r, s

    results = e2e.for_each_variant(args.models, args.variants, device, one)
    rows, summaries = [row for r, _ in results for row in r], [s for _, s in results]
    note = (f"TPOT = median ms of one decode step ({'CUDA graph, ' if graph else ''}batch {args.batch}, {args.steps} "
            f"steps after a 16-token prompt), median over {args.rounds} alternated rounds. 'cached' = the part that "
            "launched no kernel (its output from a real step returned again); saved = the whole step's TPOT minus "
            "this one.")
    if bandwidth:
        note += f" Projections' floor: their weight bytes / copy bandwidth ({bandwidth / 1e9:.0f} GB/s)."
    report = {"device": device_info(device), "settings": vars(args) | {"out_dir": str(args.out_dir)}, "rows": rows,
              "summaries": summaries, "note": note, "random_weights": True, "torch_version": torch.__version__,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    models = "-".join(args.models)
    stem = str(args.out_dir / f"decode_ablation_{models}_{gpu_slug(report['device']['name'])}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    Path(stem + ".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    Path(stem + ".md").write_text(markdown(report))
    plot(report, Path(stem + ".png"))
    print(markdown(report))
    print(f"written: {stem}.json, {stem}.md")
    return stem


if __name__ == "__main__":
    main()
