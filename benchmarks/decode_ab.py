"""One decode-step option timed off and on in one process: TPOT (CUDA graph) of the same built models with the option
flipped, alternated round by round so that drift of the GPU's clocks falls on both alike; a default is chosen from
such a same-run ratio. Random weights of the published shapes; the fp16 rows give the ratio to full precision.

    python benchmarks/decode_ab.py --switch early-params --models mamba2-2.7b,mamba-2.8b --variants fp16,W4A8
    python benchmarks/decode_ab.py --switch gemv-l2,gemv-lookahead --models mamba2-2.7b --variants W4A8

Several comma-separated switches are timed one after the other on the same built models (each model is built once),
each into its own files.

Switches ("on" is the option, "off" the alternative; which one is the default is recorded with the results):
  early-params    decode kernels read their parameters (norm weights, scales, W4 group scales) before the
                  dependent-launch wait (quamba.ops.triton._common.EARLY_PARAMS; default on)
  prefetch-state  the state updates read their state before the wait (the decode steps' prefetch_state; default on)
  gemv-lookahead  two steps of GEMV weights in flight instead of one (GemvConfig.lookahead=2; default off)
  gemv-l2         each GEMV program also asks L2 for its whole K slice of weights before the wait
                  (GemvConfig.l2_prefetch; default off: W4A8 mamba2-2.7b 1.672 against 1.644 ms a token)
  gemv-m16        the CUDA-core GEMV for up to 16 rows instead of the tensor-core kernels above
                  gemv.GEMV_MAX_M (default off; time it with --batch 16)
  fused-decode    QUAMBA_FUSED_DECODE (default on; fused_decode.py times both batch sizes in one table)
  dt-proj-words   Mamba1's fused update reads dt_proj's weights as int32 words (dp4a, loaded before the wait)
                  instead of bytes after it (selective_scan.DT_PROJ_WORDS; default on: W8A8 mamba-2.8b 1.982 against
                  2.495 ms a token)
  state-int8      the quantized scans cache their SSM state as int8 rows with fp32 scales (quantize --state-int8)
                  instead of fp32: a quarter of the state's bytes each step (mamba2-2.7b: 2.6 MB a layer in fp32,
                  read and written); a model option, not a kernel one (default: as quantized, fp32). Slower:
                  W4A8 mamba2-2.7b 1.669 against 1.644 ms, W8A8 mamba-2.8b 2.990 against 2.494

writes benchmarks/results/decode_ab_<switch>_<models>_<gpu>.{json,md,png}.
"""
from __future__ import annotations

import dataclasses
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


# ---- switches: apply(on) sets the option and returns a function that restores what was there -----------------------
def _early_params(on: bool):
    from quamba.ops.triton import _common

    old = _common.EARLY_PARAMS
    _common.EARLY_PARAMS = on
    return lambda: setattr(_common, "EARLY_PARAMS", old)


def _prefetch_state(on: bool):
    from quamba.ops.triton import selective_scan, ssd

    real = (selective_scan._selective_state_update_launch, ssd._ssd_state_update_launch)
    if not on:  # the launchers as the dispatchers find them, with the decode steps' promise withdrawn
        def late(launch):
            return lambda *a, **kw: launch(*a, **{**kw, "prefetch_state": False})

        selective_scan._selective_state_update_launch, ssd._ssd_state_update_launch = map(late, real)

    def restore():
        selective_scan._selective_state_update_launch, ssd._ssd_state_update_launch = real
    return restore


def _gemv_lookahead(on: bool):
    return _gemv_config(lookahead=2) if on else _gemv_config()


def _gemv_config(**changes):
    """Patches gemv.default_config to return its config with ``changes`` (where it prefetches); returns the
    restore function."""
    from quamba.ops.triton import gemv

    real = gemv.default_config

    def changed(*args):
        cfg = real(*args)
        return dataclasses.replace(cfg, **changes) if cfg.prefetch else cfg

    gemv.default_config = changed
    gemv._plan.cache_clear()  # launch plans cache the config

    def restore():
        gemv.default_config = real
        gemv._plan.cache_clear()
    return restore


def _gemv_l2(on: bool):
    return _gemv_config(l2_prefetch=True) if on else _gemv_config()


def _gemv_m16(on: bool):
    from quamba.ops.triton import gemv

    old = dict(gemv.GEMV_MAX_M)
    if on:
        gemv.GEMV_MAX_M.update({fmt: 16 for fmt in old})

    def restore():
        gemv.GEMV_MAX_M.clear()
        gemv.GEMV_MAX_M.update(old)
    return restore


def _dt_proj_words(on: bool):
    from quamba.ops.triton import selective_scan

    old = selective_scan.DT_PROJ_WORDS
    selective_scan.DT_PROJ_WORDS = on
    return lambda: setattr(selective_scan, "DT_PROJ_WORDS", old)


def _env_switch(name: str, on: bool):
    """Sets environment switch ``name`` to 1 / 0; returns the function that restores what was there."""
    old = os.environ.get(name)
    os.environ[name] = "1" if on else "0"

    def restore():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
    return restore


def _fused_decode(on: bool):
    return _env_switch("QUAMBA_FUSED_DECODE", on)


def _state_int8(on: bool):
    """The quantized scans' caches hold the SSM state as int8 rows with fp32 scales (``--state-int8`` of quantize)
    when on, fp32 when off, whatever the model was built with; full-precision mixers are unaffected."""
    from quamba.modules.mamba2 import QSSDScan
    from quamba.modules.scan import QSelectiveScan

    real = {cls: cls.empty_state for cls in (QSelectiveScan, QSSDScan)}

    def forced(empty_state):
        def switched(self, batch_size: int, device=None):
            old, self.state_int8 = self.state_int8, on
            try:
                return empty_state(self, batch_size, device)
            finally:
                self.state_int8 = old
        return switched

    for cls, empty_state in real.items():
        cls.empty_state = forced(empty_state)

    def restore():
        for cls, empty_state in real.items():
            cls.empty_state = empty_state
    return restore


# name -> (what "on" means, whether on is the default, apply)
SWITCHES = {
    "early-params": ("parameters read before the dependent-launch wait", True, _early_params),
    "prefetch-state": ("state updates read their state before the wait", True, _prefetch_state),
    "gemv-lookahead": ("two steps of GEMV weights in flight", False, _gemv_lookahead),
    "gemv-l2": ("GEMV programs ask L2 for their whole K slice before the wait", False, _gemv_l2),
    "gemv-m16": ("CUDA-core GEMV up to 16 rows", False, _gemv_m16),
    "fused-decode": ("conv and Mamba1 dt_proj fused into the decode kernels", True, _fused_decode),
    "dt-proj-words": ("Mamba1's fused dt_proj read as words (dp4a) before the wait", True, _dt_proj_words),
    "state-int8": ("the quantized scans cache their state as int8 (else fp32)", False, _state_int8),
}


def parse_args(argv=None):
    p = e2e.decode_parser(__doc__, OUT_DIR, rounds=3)
    p.add_argument("--switch", required=True, metavar="SWITCH[,SWITCH...]",
                   help="the option(s) to time off and on, one after the other on the same models: " + "; ".join(
                       f"{name}: on = {text} (default {'on' if default else 'off'})"
                       for name, (text, default, _) in SWITCHES.items()))
    p.add_argument("--batch", type=int, default=1, help="decode batch size (default 1)")
    args = e2e.decode_args(p, argv)
    if args.batch < 1:
        p.error("--batch must be positive")
    args.switches = [w.strip() for w in args.switch.split(",") if w.strip()]
    unknown = [w for w in args.switches if w not in SWITCHES]
    if unknown or not args.switches:
        p.error(f"unknown --switch {','.join(unknown) or repr(args.switch)}: choose from {', '.join(SWITCHES)}")
    return args


def measure(model, switch: str, on: bool, batch: int, steps: int, graph: bool) -> float:
    restore = SWITCHES[switch][2](on)
    try:
        return e2e.decode_tpot(model, batch, steps, graph)
    finally:
        restore()


def run(args) -> dict[str, list[dict]]:
    """{switch: its rows}, every switch timed on each model as it is built."""
    device = torch.device(args.device)

    def one(name, variant, model, build_s):
        rows = {}
        for switch in args.switches:
            row = rows[switch] = {"model": name, "variant": variant, "build_s": build_s, "off_ms": [], "on_ms": []}
            for _ in range(args.rounds):
                for on in (False, True):
                    row["on_ms" if on else "off_ms"].append(
                        measure(model, switch, on, args.batch, args.steps, device.type == "cuda"))
            print(json.dumps({"switch": switch, **row}), file=sys.stderr, flush=True)
        return rows

    per_model = e2e.for_each_variant(args.models, args.variants, device, one)
    return {switch: [rows[switch] for rows in per_model] for switch in args.switches}


def summarize(rows: list[dict], default_on: bool) -> None:
    """Medians over the rounds, off / on (> 1: on is faster), and each setting's ratio to its model's fp16 row at
    the default setting."""
    for r in rows:
        r["off_median_ms"], r["on_median_ms"] = statistics.median(r["off_ms"]), statistics.median(r["on_ms"])
        r["on_speedup"] = r["off_median_ms"] / r["on_median_ms"]
    fp = {r["model"]: r["on_median_ms" if default_on else "off_median_ms"] for r in rows if r["variant"] == "fp16"}
    for r in rows:
        for mode in ("off", "on"):
            r[f"{mode}_vs_fp16"] = fp[r["model"]] / r[f"{mode}_median_ms"] if r["model"] in fp else None


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Decode A/B `{s['switch']}` on {report['device']['name']}", "", report["note"], "",
             "| model | variant | off ms | on ms | on speedup | off vs fp16 | on vs fp16 |", "|---|---|" + "---:|" * 5]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['variant']} | {r['off_median_ms']:.3f} | {r['on_median_ms']:.3f} | "
                     f"{r['on_speedup']:.3f}x | {e2e._f(r['off_vs_fp16'])} | {e2e._f(r['on_vs_fp16'])} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    plt = e2e.pyplot()
    if plt is None:
        return None
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["off_median_ms"] for r in rows], 0.4, label="off")
    ax.bar([x + 0.2 for x in xs], [r["on_median_ms"] for r in rows], 0.4, label=f"on: {report['settings']['on']}")
    ax.set_xticks(list(xs), [f"{r['model']}\n{r['variant']}" for r in rows], fontsize=8)
    ax.set_ylabel(f"TPOT batch {report['settings']['batch']} (ms)")
    ax.legend(fontsize=8)
    ax.set_title(f"quamba decode A/B {report['settings']['switch']} on {report['device']['name']} (random weights)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> list[str]:
    """Runs the A/B; returns the stem of each switch's files."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/decode_ab.py needs a CUDA GPU (or --device cpu for a smoke run of the script itself)")
    results = run(args)
    return [write(args, switch, rows) for switch, rows in results.items()]


def write(args, switch: str, rows: list[dict]) -> str:
    """One switch's JSON, markdown and plot; returns their common stem."""
    on_text, default_on, _ = SWITCHES[switch]
    summarize(rows, default_on)
    graph = args.device == "cuda"
    settings = {"switch": switch, "on": on_text, "default": "on" if default_on else "off", "batch": args.batch,
                "rounds": args.rounds, "steps": args.steps, "cache_graph": graph}
    note = (f"TPOT = median ms of one decode step ({'CUDA graph, ' if graph else ''}batch {args.batch}, {args.steps} "
            f"steps after a 16-token prompt), median over {args.rounds} rounds alternating off and on. on = {on_text} "
            f"(the default is {settings['default']}); on speedup = off / on (> 1: on is faster); vs fp16 = the same "
            "model's fp16 TPOT at the default setting / this one.")
    info = device_info(torch.device(args.device))
    report = {"device": info, "settings": settings, "rows": rows, "note": note, "random_weights": True,
              "torch_version": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    models = "-".join(args.models)
    stem = str(args.out_dir / f"decode_ab_{switch}_{models}_{gpu_slug(info['name'])}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    Path(stem + ".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    Path(stem + ".md").write_text(markdown(report))
    plot(report, Path(stem + ".png"))
    print(f"written: {stem}.json, {stem}.md")
    return stem


if __name__ == "__main__":
    main()
