"""End-to-end latency, memory and size on one GPU: full precision against W8A8, W4A8 and W4A16.

For every model (random weights of the published shape, ``quamba.presets``; same seed for every variant) and variant

    fp16      this project's full-precision path
    hf-fp16   transformers' MambaForCausalLM / Mamba2ForCausalLM holding the same weights (skipped if not importable)
    W8A8      quamba2 W8A8          W4A8    quamba2 W4A8          W4A16   quamba2 W4A16
    quamba1   quamba1 W8A8 (Mamba1 only; not in the default set)

it measures TTFT (prefill of --prompt-len tokens at batch 1 -> first token), TPOT at batch 1 and 16 (one decode
step on a prefilled state; the state has a fixed size, so the batch-16 prefill is short), peak memory and model size,
then writes ``e2e_<gpu>.json``, ``.md`` and ``.png`` into --out-dir (default benchmarks/results/), each labelled with
the GPU, and prints ratios to fp16 and to the memory-bandwidth floor: the bytes one decode step must read (every
weight except the embedding table, which is read only for its B rows unless tied to the lm_head, plus the state read
and written) divided by the bandwidth of a large device-to-device copy.

Quantized variants are calibrated on text the random model samples itself (``calib_data=None``, tiny settings):
weights are random, so only speed, memory and size mean anything here. Each variant is built afresh (and the
full-precision source freed) so that its peak memory is its own.

    python benchmarks/e2e.py                       # the four large models, all default variants (minutes)
    python benchmarks/e2e.py --quick               # 130m models, fewer repeats: a smoke run
    python benchmarks/e2e.py --models mamba2-8b --variants fp16,W4A8 --cache-graph
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import quamba
from quamba.models import tiny_config
from quamba.ops.triton import w4_dense_min_m
from quamba.presets import PRESETS, build_random, preset_config
from quamba.profiling import ProfileSettings, device_info, profile_model, size_breakdown, state_bytes, summarize, timed

MODELS = ["mamba-1.4b", "mamba-2.8b", "mamba2-2.7b", "mamba2-8b"]
QUICK_MODELS = ["mamba-130m", "mamba2-130m"]
VARIANTS = ["fp16", "hf-fp16", "W8A8", "W4A8", "W4A16"]
RECIPES = {"W8A8": ("quamba2", 8, 8), "W4A8": ("quamba2", 4, 8), "W4A16": ("quamba2", 4, 16), "quamba1": ("quamba1", 8, 8)}
RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = {"tiny-mamba1": "mamba1", "tiny-mamba2": "mamba2"}  # few-layer models to check this script on a CPU


def model_config(name: str):
    return tiny_config(SMOKE[name]) if name in SMOKE else preset_config(name)


# ---- building the variants -------------------------------------------------------------------------------------------
def to_transformers(model):
    """transformers' Mamba(2)ForCausalLM holding ``model``'s weights (same tensors, no copy)."""
    import transformers

    c = model.config
    common = dict(vocab_size=c.padded_vocab_size, hidden_size=c.d_model, state_size=c.d_state,
                  num_hidden_layers=c.n_layer, expand=c.expand, conv_kernel=c.d_conv, use_bias=c.bias,
                  use_conv_bias=c.conv_bias, layer_norm_epsilon=c.norm_eps, residual_in_fp32=c.residual_in_fp32,
                  tie_word_embeddings=c.tie_embeddings)
    if c.arch == "mamba1":
        cls, cfg = transformers.MambaForCausalLM, transformers.MambaConfig(time_step_rank=c.dt_rank, **common)
    else:
        if c.norm_before_gate or c.D_has_hdim:
            raise ValueError("transformers' Mamba2 has no norm_before_gate / per-channel D")
        cls = transformers.Mamba2ForCausalLM
        cfg = transformers.Mamba2Config(num_heads=c.nheads, head_dim=c.headdim, n_groups=c.ngroups,
                                        chunk_size=c.chunk_size, time_step_limit=tuple(c.dt_limit), **common)
    with torch.device("meta"):
        hf = cls(cfg)
    sd = {k.replace("backbone.embedding.", "backbone.embeddings.", 1): v for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = hf.load_state_dict(sd, strict=False, assign=True)
    hf.tie_weights()
    missing = [k for k in missing if not (c.tie_embeddings and k == "lm_head.weight")]
    left_on_meta = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if missing or unexpected or left_on_meta:
        raise ValueError(f"weights do not map onto transformers' model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, still on meta {left_on_meta[:3]}")
    return hf.eval()


def build_variant(name, variant: str, args, device, dtype):
    """``variant`` of a random model of ``name`` (an architecture name or a MambaConfig), built afresh. ``args``:
    calib_samples, calib_seqlen, seed, and optionally quantize_embedding / quantize_lm_head."""
    fp = build_random(model_config(name) if isinstance(name, str) else name, device=device, dtype=dtype, seed=args.seed)
    if variant == "fp16":
        return fp
    recipe, w, a = RECIPES[variant]
    options = dict(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
                   dtype=str(dtype).removeprefix("torch."),
                   quantize_embedding=getattr(args, "quantize_embedding", False),
                   quantize_lm_head=getattr(args, "quantize_lm_head", False))
    if recipe == "quamba2":
        options.update(w_bits=w, a_bits=a)
    q = quamba.quantize(fp, recipe, calib_data=None, **options)
    del fp
    return q


# ---- measuring -----------------------------------------------------------------------------------------------------
def copy_bandwidth(device, nbytes: int = 2**30, repeats: int = 20) -> float:
    """Bytes/s of a device-to-device copy of ``nbytes`` (read + write counted)."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    ms = statistics.median(timed(lambda: y.copy_(x), repeats, torch.device(device)))
    return 2 * nbytes / (ms / 1e3)  # x and y are freed on return


def bytes_per_step(size: dict, state: dict) -> int:
    """Bytes a decode step must move: every weight but the embedding table (unless tied: then it is the lm_head's
    weight and is read whole), and the state read and written once."""
    emb = size["parts"]["embedding"]["bytes"]
    weights = size["total_bytes"] - (0 if size["lm_head_tied"] else emb)
    return weights + 2 * state["total_bytes"]


def measure_quamba(model, args) -> dict:
    s1 = ProfileSettings(prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=1, repeats=args.repeats,
                         warmup=args.warmup, cache_graph=args.cache_graph, seed=args.seed)
    r1 = profile_model(model, ["ttft", "size", "memory"], s1)
    s1.repeats = args.tpot_repeats
    t1 = profile_model(model, ["tpot"], s1)
    s16 = ProfileSettings(prompt_len=16, gen_len=args.gen_len, batch_size=args.big_batch, repeats=args.tpot_repeats,
                          warmup=args.warmup, cache_graph=args.cache_graph, seed=args.seed)
    r16 = profile_model(model, ["tpot", "memory"], s16)
    size = r1["size"]
    graph = {k: r1[k] for k in ("ttft_graph_ms", "ttft_graph_token_matches_eager", "ttft_graph_error")
             if k in r1}
    return {"ttft_ms": r1["ttft_ms"], **graph, "tpot_b1_ms": t1["tpot_ms"], "tpot_bN_ms": r16["tpot_ms"],
            "memory_b1": r1["memory"], "memory_bN": r16["memory"], "size_bytes": size["total_bytes"], "size": size,
            "state_b1_bytes": size["state"]["total_bytes"],
            "bytes_per_step_b1": bytes_per_step(size, size["state"]),
            "bytes_per_step_bN": bytes_per_step(size, state_bytes(model, args.big_batch))}


@torch.no_grad()
def measure_transformers(hf, ours_size: dict, ours_state_b1: dict, ours_state_bN: dict, args, device) -> dict:
    """transformers' own generate(): TTFT = one new token; TPOT = (time for 1 + n tokens - time for 1) / n."""
    g = torch.Generator().manual_seed(args.seed)
    vocab = hf.config.vocab_size

    def gen(batch, prompt_len, n):
        ids = torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)
        return lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0)

    def tpot(batch, prompt_len):
        n = args.hf_decode_tokens
        one, many = gen(batch, prompt_len, 1), gen(batch, prompt_len, 1 + n)
        for _ in range(args.warmup):
            one(), many()
        a, b = timed(one, args.hf_repeats, device), timed(many, args.hf_repeats, device)
        return summarize([(y - x) / n for x, y in zip(a, b)])

    first = gen(1, args.prompt_len, 1)
    for _ in range(args.warmup):
        first()
    out = {"ttft_ms": summarize(timed(first, args.repeats, device))}
    mem = {}
    for key, batch, prompt_len in (("b1", 1, args.prompt_len), ("bN", args.big_batch, 16)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out[f"tpot_{key}_ms"] = tpot(batch, prompt_len)
        if device.type == "cuda":
            mem[key] = {"peak_bytes": torch.cuda.max_memory_allocated(device)}
    out.update(memory_b1=mem.get("b1", {}), memory_bN=mem.get("bN", {}), size_bytes=ours_size["total_bytes"],
               bytes_per_step_b1=bytes_per_step(ours_size, ours_state_b1),
               bytes_per_step_bN=bytes_per_step(ours_size, ours_state_bN))
    return out


def run_one(name: str, variant: str, args, device, dtype) -> dict:
    row = {"model": name, "variant": variant}
    if variant == "quamba1" and model_config(name).arch != "mamba1":
        return {**row, "skipped": "quamba1 is for Mamba1 models"}
    t0 = time.perf_counter()
    model = None
    try:
        if variant == "hf-fp16":
            fp = build_random(model_config(name), device=device, dtype=dtype, seed=args.seed)
            size, s1, sN = size_breakdown(fp), state_bytes(fp, 1), state_bytes(fp, args.big_batch)
            model = to_transformers(fp)  # shares fp's tensors
            del fp
            row["build_s"] = time.perf_counter() - t0
            row.update(measure_transformers(model, size, s1, sN, args, device))
        else:
            model = build_variant(name, variant, args, device, dtype)
            row["build_s"] = time.perf_counter() - t0
            row.update(measure_quamba(model, args))
            row["quantization"] = getattr(model, "quantization", None)
    except ImportError as e:
        row["skipped"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # one failing variant must not lose the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# ---- reporting -----------------------------------------------------------------------------------------------------
def _ratio(a, b):
    return a / b if a is not None and b else None


def add_ratios(rows: list[dict], bandwidth: float):
    """Each row: ratios of TTFT / TPOT to the same model's fp16 row, and TPOT to the bandwidth floor."""
    fp = {r["model"]: r for r in rows if r["variant"] == "fp16" and "ttft_ms" in r}
    for r in rows:
        if "ttft_ms" not in r:
            continue
        base = fp.get(r["model"])
        for key in ("ttft_ms", "ttft_graph_ms", "tpot_b1_ms", "tpot_bN_ms"):
            if key in r:
                r[f"{key[:-3]}_vs_fp16"] = _ratio(r[key]["median"], base and key in base and base[key]["median"])
        for b in ("b1", "bN"):
            floor_ms = r[f"bytes_per_step_{b}"] / bandwidth * 1e3
            r[f"floor_tpot_{b}_ms"] = floor_ms
            r[f"tpot_{b}_vs_floor"] = r[f"tpot_{b}_ms"]["median"] / floor_ms


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _peak_gib(mem: dict):
    return mem.get("peak_bytes", 0) / 2**30 if mem and "peak_bytes" in mem else None


def markdown(report: dict) -> str:
    s, n = report["settings"], report["settings"]["big_batch"]
    lines = [f"# End-to-end: full precision vs W8A8 / W4A8 / W4A16 on {report['device']['name']}", "",
             f"Random weights of the published shapes; {report['dtype']}; TTFT at {s['prompt_len']} prompt tokens "
             f"(batch 1); TPOT = one decode step{' (CUDA graph)' if s['cache_graph'] else ''}; medians of "
             f"{s['repeats']} (TTFT) / {s['tpot_repeats']} (TPOT) runs; copy bandwidth "
             f"{report['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s. x fp16 = ratio to this project's fp16; "
             "x floor = TPOT / (bytes a step must read / bandwidth)."
             + (" A8 decode steps unfused (QUAMBA_FUSED_DECODE=0)." if s.get("unfused_decode") else "")
             + (" Quantized variants quantize the embedding too." if s.get("quantize_embedding") else "")
             + (" Quantized variants quantize the lm_head too." if s.get("quantize_lm_head") else "")
             + (f" W4 GEMMs of {s['w4_dense_from_rows']} or more rows dequantize, then run dense "
                + (f"(QUAMBA_W4_DENSE_MIN_M={s['w4_dense_from_rows']})." if s.get("w4_dense_min_m") else "(the default).")
                if s.get("w4_dense_from_rows") else "")
             + (" Prefill GEMMs through TMA descriptors (QUAMBA_GEMM_TMA=1)." if s.get("gemm_tma") else "")
             + (" TTFT graph = the same prefill replayed from a CUDA graph (no host launch work)."
                if s["cache_graph"] else ""), "",
             f"| model | variant | size MiB | TTFT ms | x fp16 | TTFT graph ms | x fp16 | TPOT b1 ms | x fp16 | x floor "
             f"| TPOT b{n} ms | x fp16 | x floor | peak b1 GiB | peak b{n} GiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "ttft_ms" not in r:
            why = r.get("skipped") or r.get("error", "?")
            lines.append(f"| {r['model']} | {r['variant']} | {why} |" + " |" * 12)
            continue
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['size_bytes'] / 2**20:.0f} | {r['ttft_ms']['median']:.2f} "
            f"| {_f(r.get('ttft_vs_fp16'))} | {_f(r.get('ttft_graph_ms', {}).get('median'))} "
            f"| {_f(r.get('ttft_graph_vs_fp16'))} | {r['tpot_b1_ms']['median']:.3f} | {_f(r.get('tpot_b1_vs_fp16'))} "
            f"| {_f(r.get('tpot_b1_vs_floor'))} | {r['tpot_bN_ms']['median']:.3f} | {_f(r.get('tpot_bN_vs_fp16'))} "
            f"| {_f(r.get('tpot_bN_vs_floor'))} | {_f(_peak_gib(r.get('memory_b1')))} "
            f"| {_f(_peak_gib(r.get('memory_bN')))} |")
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (said on stderr) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    rows = [r for r in report["rows"] if "ttft_ms" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    panels = [("ttft_ms", f"TTFT, {report['settings']['prompt_len']} tokens (ms)"), ("tpot_b1_ms", "TPOT batch 1 (ms)"),
              ("tpot_bN_ms", f"TPOT batch {report['settings']['big_batch']} (ms)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / max(len(variants), 1)
    for ax, (key, title) in zip(axes, panels):
        for j, v in enumerate(variants):
            ys = [next((r[key]["median"] for r in rows if r["model"] == m and r["variant"] == v), 0) for m in models]
            ax.bar([i + j * width for i in range(len(models))], ys, width, label=v)
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(models))], models, rotation=20)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"quamba end-to-end on {report['device']['name']} (random weights, {report['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_summary(report: dict):
    print(f"\n{report['device']['name']}: copy bandwidth {report['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s")
    for r in report["rows"]:
        if "ttft_ms" not in r:
            print(f"{r['model']:>12} {r['variant']:>8}  {r.get('skipped') or r.get('error')}")
            continue
        graph = (f" graph {r['ttft_graph_ms']['median']:7.2f} ms (x{_f(r.get('ttft_graph_vs_fp16'))})"
                 if "ttft_graph_ms" in r else "")
        print(f"{r['model']:>12} {r['variant']:>8}  TTFT {r['ttft_ms']['median']:9.2f} ms (x{_f(r.get('ttft_vs_fp16'))} fp16)"
              f"{graph}"
              f"  TPOT b1 {r['tpot_b1_ms']['median']:8.3f} ms (x{_f(r.get('tpot_b1_vs_fp16'))} fp16, "
              f"x{_f(r.get('tpot_b1_vs_floor'))} floor)  TPOT b{report['settings']['big_batch']} "
              f"{r['tpot_bN_ms']['median']:8.3f} ms (x{_f(r.get('tpot_bN_vs_fp16'))} fp16, "
              f"x{_f(r.get('tpot_bN_vs_floor'))} floor)  size {r['size_bytes'] / 2**20:8.0f} MiB")


# ---- main ---------------------------------------------------------------------------------------------------------
def _names(text: str, known, what: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in known]
    if bad:
        sys.exit(f"unknown {what} {bad}; known: {', '.join(known)}")
    return names


def decode_tpot(model, batch: int, steps: int, graph: bool) -> float:
    """The decode benchmarks' TPOT: median ms of one decode step (``steps`` timed after a 16-token prompt and 3
    warm-up steps; with ``graph`` replayed from a CUDA graph)."""
    s = ProfileSettings(prompt_len=16, gen_len=8, batch_size=batch, repeats=steps, warmup=3, cache_graph=graph, seed=0)
    return profile_model(model, ["tpot"], s)["tpot_ms"]["median"]


def for_each_variant(models, variants, device, measure) -> list:
    """``measure(name, variant, model, build_s)`` for every model x variant of the decode benchmarks, each built
    afresh (random weights; 4 self-sampled calibration windows of 64 tokens) and freed before the next is built;
    returns what ``measure`` returned, in order."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    build_args = parse_args(["--calib-samples", "4", "--calib-seqlen", "64"])
    out = []
    for name in models:
        for variant in variants:
            t0 = time.perf_counter()
            model = build_variant(name, variant, build_args, device, dtype)
            out.append(measure(name, variant, model, round(time.perf_counter() - t0, 1)))
            model = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def decode_parser(doc: str, out_dir: Path, rounds: int) -> argparse.ArgumentParser:
    """The options of the decode-step benchmarks (fused_decode.py, decode_ablation.py); ``decode_args`` checks them."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mamba-2.8b,mamba2-2.7b",
                   help="comma-separated architecture names (default %(default)s)")
    p.add_argument("--variants", default="fp16,W8A8,W4A8",
                   help="comma-separated, from fp16,W8A8,W4A8,W4A16,quamba1 (default %(default)s)")
    p.add_argument("--rounds", type=int, default=rounds, help=f"alternated rounds (default {rounds})")
    p.add_argument("--steps", type=int, default=30, help="decode steps timed per measurement (default 30)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only for a smoke run of this script")
    p.add_argument("--out-dir", type=Path, default=out_dir, help=f"where results go (default {out_dir})")
    return p


def decode_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.models = _names(args.models, [*PRESETS, *SMOKE], "models")
    args.variants = _names(args.variants, ["fp16", *RECIPES], "variants")
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be positive")
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help=f"comma-separated architecture names (default {','.join(MODELS)})")
    p.add_argument("--variants", help=f"comma-separated, from {','.join(RECIPES) + ',fp16,hf-fp16'} "
                                      f"(default {','.join(VARIANTS)})")
    p.add_argument("--quick", action="store_true", help=f"{','.join(QUICK_MODELS)}, prompt 256, few repeats: a smoke run")
    p.add_argument("--prompt-len", type=int, help="TTFT prompt tokens (default 1024; --quick 256)")
    p.add_argument("--gen-len", type=int, default=32, help="tokens generated for the peak-memory run (default 32)")
    p.add_argument("--big-batch", type=int, default=16, help="the larger TPOT batch (default 16)")
    p.add_argument("--repeats", type=int, help="TTFT runs (default 20; --quick 5)")
    p.add_argument("--tpot-repeats", type=int, help="decode steps timed (default 100; --quick 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hf-repeats", type=int, default=5, help="transformers generate() runs per TPOT estimate")
    p.add_argument("--hf-decode-tokens", type=int, default=32, help="tokens in transformers' TPOT estimate")
    p.add_argument("--cache-graph", action="store_true", help="decode quamba variants with a CUDA graph")
    p.add_argument("--unfused-decode", action="store_true",
                   help="QUAMBA_FUSED_DECODE=0: A8 decode steps with the conv and Mamba1's dt_proj as their own kernels "
                        "instead of fused into in_proj's GEMV and the state update (results go to "
                        "e2e_..._unfused-decode_<gpu>.*)")
    p.add_argument("--w4-dense-min-m", type=int, default=None, metavar="M",
                   help="QUAMBA_W4_DENSE_MIN_M=M: W4A8 / W4A16 GEMMs of M or more rows (prefill) dequantize the "
                        "packed weights once and run the dense tensor-core kernel (results go to "
                        "e2e_..._w4-dense-<M>_<gpu>.*)")
    p.add_argument("--gemm-tma", action="store_true",
                   help="QUAMBA_GEMM_TMA=1: W8A8 (and dense W4A8) prefill GEMMs fetch their tiles through TMA "
                        "descriptors (sm_90+; results go to e2e_..._tma_<gpu>.*)")
    p.add_argument("--quantize-embedding", action="store_true",
                   help="quantized variants also quantize the embedding rows at their weight width (files get _emb)")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="quantized variants also quantize the lm_head at their weight width, as Quamba2's published "
                        "configuration does with both (files get _head)")
    p.add_argument("--calib-samples", type=int, default=4, help="self-sampled calibration windows (default 4)")
    p.add_argument("--calib-seqlen", type=int, default=64, help="tokens per calibration window (default 64)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only for a smoke run of this script")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where results go (default {RESULTS})")
    args = p.parse_args(argv)
    args.models = _names(args.models, [*PRESETS, *SMOKE], "models") if args.models else (QUICK_MODELS if args.quick else MODELS)
    args.variants = _names(args.variants, ["fp16", "hf-fp16", *RECIPES], "variants") if args.variants else VARIANTS
    if args.w4_dense_min_m is not None and args.w4_dense_min_m < 1:
        p.error(f"--w4-dense-min-m {args.w4_dense_min_m}: expected a positive row count")
    args.prompt_len = args.prompt_len or (256 if args.quick else 1024)
    args.repeats = args.repeats or (5 if args.quick else 20)
    args.tpot_repeats = args.tpot_repeats or (20 if args.quick else 100)
    return args


def write_report(rows: list[dict], args, info: dict, bandwidth: float, stem: str) -> dict:
    add_ratios(rows, bandwidth)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["w4_dense_from_rows"] = w4_dense_min_m()
    report = {"device": info, "dtype": args.dtype, "bandwidth_bytes_per_s": bandwidth, "random_weights": True,
              "settings": settings, "rows": rows, "quamba_version": quamba.__version__,
              "torch_version": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(stem + ".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    Path(stem + ".md").write_text(markdown(report))
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/e2e.py needs a CUDA GPU (or --device cpu for a smoke run of the script itself)")
    if args.cache_graph and device.type != "cuda":
        sys.exit("--cache-graph needs a CUDA GPU")
    dtype = getattr(torch, args.dtype)
    info = device_info(device)
    bandwidth = copy_bandwidth(device, nbytes=2**30 if device.type == "cuda" else 2**26)
    print(f"{info['name']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s", file=sys.stderr)
    rows = []
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", info["name"]).strip("-").lower()
    models = "" if args.models == MODELS else "-".join(args.models) + "_"  # one file per model set: runs can be split
    if args.unfused_decode:
        os.environ["QUAMBA_FUSED_DECODE"] = "0"
        models += "unfused-decode_"
    models += "emb_" * args.quantize_embedding + "head_" * args.quantize_lm_head
    if args.w4_dense_min_m:
        os.environ["QUAMBA_W4_DENSE_MIN_M"] = str(args.w4_dense_min_m)
        models += f"w4-dense-{args.w4_dense_min_m}_"
    if args.gemm_tma:
        os.environ["QUAMBA_GEMM_TMA"] = "1"
        models += "tma_"
    stem = str(args.out_dir / f"e2e_{models}{gpu}")  # a str: model names hold dots, which Path.with_suffix would cut
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        for variant in args.variants:
            print(f"{name} {variant} ...", file=sys.stderr)
            rows.append(run_one(name, variant, args, device, dtype))
            report = write_report(rows, args, info, bandwidth, stem)  # after every variant: a cut-off run keeps its rows
    png = plot(report, Path(stem + ".png"))
    print_summary(report)
    print(f"\nwritten: {stem}.json, {stem}.md" + (f", {png}" if png else ""))
    return report


if __name__ == "__main__":
    main()
