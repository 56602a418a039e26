"""Result files and their comparison.

One JSON file per run (``write_report`` refuses to overwrite unless asked). Its fields:

    format "quamba-eval", format_version 1, quamba_version, created_utc,
    model {name, arch, n_params, size_bytes, dtype}, recipe (the model's quantization_config() or
    "full precision"), device {type, name}, settings {batch_size, max_length, window, limit, seed, backend},
    tasks {task: {backend, n, metrics {name: value, name_stderr: value | null}, data {path, sha256},
    protocol, wall_s}}, agreement {reference, kl, top1, ...} (optional), wall_s

``format_comparison`` prints a markdown table of a baseline and variants with deltas; ``plot`` draws
accuracy against bits per parameter (matplotlib, imported only there).
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import torch

from ..errors import QuambaError

FORMAT = "quamba-eval"
FORMAT_VERSION = 1
FULL_PRECISION = "full precision"
LOWER_IS_BETTER = ("perplexity", "kl")  # every other metric: higher is better


# ---- describing a run -----------------------------------------------------------------------------------
def recipe_of(model):
    """The model's quantization recipe (JSON-able), or "full precision" for a model without one."""
    get = getattr(model, "quantization_config", None)
    recipe = get() if callable(get) else None
    return FULL_PRECISION if recipe is None else recipe


def _unique_tensors(model):
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(t.data_ptr(), t)
    return list(seen.values())


def model_info(model, name: str | None = None) -> dict:
    """{name, arch, n_params (numel of floating-point parameters), size_bytes (parameters + buffers), dtype}."""
    tensors = _unique_tensors(model) if hasattr(model, "parameters") else []
    params = {p.data_ptr(): p for p in model.parameters()}.values() if hasattr(model, "parameters") else []
    config = getattr(model, "config", None)
    return {"name": name or type(model).__name__,
            "arch": getattr(config, "arch", None),
            "n_params": int(sum(p.numel() for p in params if p.is_floating_point())),
            "size_bytes": int(sum(t.numel() * t.element_size() for t in tensors)),
            "dtype": str(getattr(model, "dtype", "")).replace("torch.", "") or None}


def device_info(device) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"type": device.type, "name": name, "torch": torch.__version__}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- files ------------------------------------------------------------------------------------------------
def _clean(value):
    """JSON has no NaN/inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(result: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write one run's results to ``path`` (a new file unless ``overwrite``); returns the path."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise QuambaError(f"{p} already exists; choose another --output or pass --overwrite")
    if p.parent and not p.parent.is_dir():
        raise QuambaError(f"cannot write {p}: directory {p.parent} does not exist")
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)  # never a half-written result file
    return p


def load_report(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise QuambaError(f"{p}: no such result file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuambaError(f"{p} is not a JSON result file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise QuambaError(f"{p} is not a quamba eval result (no \"format\": \"{FORMAT}\"); make it with quamba eval --output")
    return data


# ---- comparing --------------------------------------------------------------------------------------------
def _find(d, key):
    """The first value of ``key`` in a nested dict (recipes nest their options), else None."""
    if isinstance(d, dict):
        if key in d and not isinstance(d[key], dict):
            return d[key]
        for v in d.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def recipe_label(recipe) -> str:
    """'fp' for full precision, else e.g. 'quamba1 W8A8' from the recipe's type and bit widths."""
    if recipe in (FULL_PRECISION, None):
        return "fp"
    if not isinstance(recipe, dict):
        return str(recipe)
    kind = _find(recipe, "type") or _find(recipe, "name") or "quantized"
    w, a = _find(recipe, "w_bits"), _find(recipe, "a_bits")
    return f"{kind} W{w}A{a}" if w is not None and a is not None else str(kind)


def label_of(result: dict) -> str:
    name = Path(str((result.get("model") or {}).get("name") or "?")).name
    return f"{name} ({recipe_label(result.get('recipe'))})"


def _metric_rows(results: list[dict]) -> list[tuple[str, str]]:
    rows = []
    for r in results:
        for task, entry in r.get("tasks", {}).items():
            for metric in entry.get("metrics", {}):
                if not metric.endswith("_stderr") and isinstance(entry["metrics"][metric], (int, float)) \
                        and (task, metric) not in rows:
                    rows.append((task, metric))
        if "agreement" in r:
            for metric in ("kl", "top1"):
                if ("agreement", metric) not in rows:
                    rows.append(("agreement", metric))
    return rows


def _value(result: dict, task: str, metric: str):
    if task == "agreement":
        a = result.get("agreement") or {}
        return a.get(metric), a.get(f"{metric}_stderr")
    m = (result.get("tasks", {}).get(task) or {}).get("metrics", {})
    return m.get(metric), m.get(f"{metric}_stderr")


def _is_accuracy(metric: str) -> bool:
    return metric.startswith("acc") or metric == "top1"


def _num(x: float, scale: float, signed: bool = False) -> str:
    """Accuracies in percent with 2 decimals; other numbers with 2 decimals, or 3 significant digits when small."""
    x *= scale
    if scale == 1.0 and x != 0 and abs(x) < 0.01:
        return f"{x:+.3g}" if signed else f"{x:.3g}"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _fmt(value, stderr=None, metric: str = "") -> str:
    if value is None:
        return "—"
    scale = 100.0 if _is_accuracy(metric) else 1.0
    return _num(value, scale) + ("" if stderr is None else f" ± {_num(stderr, scale)}")


def _fmt_delta(delta, metric: str) -> str:
    return "—" if delta is None else _num(delta, 100.0 if _is_accuracy(metric) else 1.0, signed=True)


def pick_baseline(results: list[dict]) -> int:
    """Index of the first full-precision result, else 0."""
    for i, r in enumerate(results):
        if r.get("recipe") in (FULL_PRECISION, None):
            return i
    return 0


def format_comparison(*results: dict, labels: list[str] | None = None, baseline: int | None = None) -> str:
    """A markdown table: one row per (task, metric), the baseline's value (± stderr), then each other
    result's value and its difference from the baseline. Accuracies are in percent."""
    if not results:
        raise QuambaError("nothing to compare: give at least one result")
    results = list(results)
    base = pick_baseline(results) if baseline is None else baseline
    labels = list(labels) if labels else [label_of(r) for r in results]
    order = [base] + [i for i in range(len(results)) if i != base]
    header = ["task", "metric", labels[base]]
    for i in order[1:]:
        header += [labels[i], "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metric in _metric_rows([results[i] for i in order]):
        b, b_se = _value(results[base], task, metric)
        cells = [task, metric + (" (%)" if _is_accuracy(metric) else ""), _fmt(b, b_se, metric)]
        for i in order[1:]:
            v, se = _value(results[i], task, metric)
            cells += [_fmt(v, se, metric), _fmt_delta(None if v is None or b is None else v - b, metric)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bits_per_param(result: dict, baseline: dict) -> float | None:
    """Stored bits per parameter of the baseline model: 8 * size_bytes / baseline n_params (an fp16 model
    is 16; a quantized one counts its scales and any unquantized tensors too)."""
    size = (result.get("model") or {}).get("size_bytes")
    n = (baseline.get("model") or {}).get("n_params")
    return 8.0 * size / n if size and n else None


def plot(results: list[dict], path: str | os.PathLike, labels: list[str] | None = None, baseline: int | None = None) -> Path:
    """PNG of every accuracy metric against bits per parameter, one line per (task, metric)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QuambaError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    base = pick_baseline(results) if baseline is None else baseline
    labels = list(labels) if labels else [label_of(r) for r in results]
    bits = [bits_per_param(r, results[base]) for r in results]
    if any(b is None for b in bits):
        raise QuambaError("a result has no model size or parameter count; cannot place it on the bits axis")
    series = [(t, m) for t, m in _metric_rows(results) if _is_accuracy(m)]
    if not series:
        raise QuambaError("no accuracy metric in these results to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task, metric in series:
        pts = sorted((b, _value(r, task, metric)[0], lab) for b, r, lab in zip(bits, results, labels)
                     if _value(r, task, metric)[0] is not None)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{task} {metric}")
    for b, lab in zip(bits, labels):
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
        ax.annotate(lab, (b, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom", ha="right", color="0.4")
    ax.set_xlabel("stored bits per parameter")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
