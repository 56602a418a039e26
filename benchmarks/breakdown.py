"""Where the time of a prefill and of a decode step goes: kernel by kernel on the GPU, module by module on the host.

For every model and variant (random weights of the published shape, built as in benchmarks/e2e.py) it runs

    prefill      one eager forward of --prompt-len tokens at batch 1 (what TTFT measures)
    decode       one eager decode step at batch 1 (--decode-batch N: at batch N, the state set up by short prompts)
    decode-graph the same step captured as a CUDA graph and replayed (what TPOT --cache-graph measures)

and records, under torch.profiler: every GPU kernel (name, launches, device time), the wall time of the call, and
the host time spent inside each module class (forward hooks, nested: a mixer's time includes its projections').
Wall time well above the sum of kernel times means the GPU waits for the host (launch-bound); a graph step close
to its kernel sum means launches are hidden. Writes ``breakdown_<models>_<gpu>.json`` and ``.md``.

    python benchmarks/breakdown.py --models mamba2-2.7b --variants fp16,W4A8
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, gpu_slug  # noqa: E402
from e2e import RECIPES, RESULTS, _names, build_variant  # noqa: E402

from quamba.generation import CUDAGraphStep  # noqa: E402
from quamba.ops.triton import fused_decode  # noqa: E402
from quamba.presets import PRESETS  # noqa: E402
from quamba.profiling import timed  # noqa: E402


class HostClock:
    """Host seconds inside each module class's forward (hooks on every module; nested calls each count)."""

    def __init__(self, model):
        self.total = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.starts = {}
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, module, args):
        self.starts[id(module)] = time.perf_counter()

    def _post(self, module, args, out):
        name = type(module).__name__
        self.total[name] += time.perf_counter() - self.starts.pop(id(module))
        self.calls[name] += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def kernel_table(prof) -> list[dict]:
    """GPU kernels of a profile, aggregated by name: launches and device microseconds, largest first."""
    rows = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            r = rows[e.name[:90]]
            r[0] += 1
            r[1] += e.device_time_total
    table = [{"kernel": k, "launches": n, "us": us} for k, (n, us) in rows.items()]
    return sorted(table, key=lambda r: -r["us"])


def wall_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def traced(fn, clock_model=None, calls: int = 1) -> dict:
    """One profiled run of ``calls`` calls of fn: kernels per call, and host time per module class if asked."""
    clock = HostClock(clock_model) if clock_model is not None else None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = kernel_table(prof)
    for k in kernels:
        k["launches"] /= calls
        k["us"] /= calls
    out = {"kernels": kernels, "kernel_us": sum(k["us"] for k in kernels),
           "launches": sum(k["launches"] for k in kernels)}
    if clock is not None:
        clock.remove()
        out["host_ms_by_module"] = {k: 1e3 * v / calls for k, v in sorted(clock.total.items(), key=lambda kv: -kv[1])}
    return out


@torch.no_grad()
def measure(model, args) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=g).cuda()

    def prefill():
        cache = model.allocate_cache(1)
        return model(ids, cache, num_last_tokens=1).logits[:, -1].argmax(-1)

    for _ in range(2):
        prefill()
    res = {"prefill": {"wall_ms": wall_ms(prefill, args.reps), **traced(prefill, model)}}

    b = args.decode_batch  # the state has a fixed size: a batch of short prompts sets it up as well as a long one
    cache = model.allocate_cache(b)
    tok = model(ids if b == 1 else ids[:, :16].expand(b, -1).contiguous(), cache,
                num_last_tokens=1).logits[:, -1].argmax(-1)

    def step():
        return model(tok[:, None], cache).logits[:, -1].argmax(-1)

    for _ in range(3):
        step()
    res["decode"] = {"wall_ms": wall_ms(step, args.reps), **traced(step, model, calls=args.reps)}

    graph = CUDAGraphStep(model, b)
    graph.load(cache)

    def gstep():
        return graph(tok).argmax(-1)

    for _ in range(3):
        gstep()
    res["decode_graph"] = {"wall_ms": statistics.median(timed(gstep, args.reps, model.device)),
                           **traced(gstep, calls=args.reps)}
    return res


def markdown(report: dict, top: int) -> str:
    lines = [f"# Time breakdown on {report['device']['gpu']}", "",
             f"{report['device']['torch']}, triton {report['device']['triton']}; random weights; prefill "
             f"{report['settings']['prompt_len']} tokens, batch 1; decode batch "
             f"{report['settings'].get('decode_batch', 1)}. wall = median host wall time of one call (eager; "
             "graph: CUDA events around a replay); kernels = sum of GPU kernel durations (torch.profiler)."
             + ("" if report["settings"].get("fused_decode", True) else " A8 decode steps unfused (QUAMBA_FUSED_DECODE=0)."),
             ""]
    for r in report["rows"]:
        if "error" in r:
            lines += [f"## {r['model']} {r['variant']}: {r['error']}", ""]
            continue
        lines += [f"## {r['model']} {r['variant']}", "",
                  "| phase | wall ms | kernels ms | launches | host ms by module (nested) |", "|---|---:|---:|---:|---|"]
        for ph in ("prefill", "decode", "decode_graph"):
            p = r[ph]
            host = ", ".join(f"{k} {v:.2f}" for k, v in list(p.get("host_ms_by_module", {}).items())[:6])
            lines.append(f"| {ph} | {p['wall_ms']:.3f} | {p['kernel_us'] / 1e3:.3f} | {p['launches']:.0f} | {host} |")
        for ph in ("prefill", "decode_graph"):
            lines += ["", f"{ph}: top kernels", "", "| kernel | launches | us | share |", "|---|---:|---:|---:|"]
            tot = r[ph]["kernel_us"]
            for k in r[ph]["kernels"][:top]:
                lines.append(f"| `{k['kernel'][:70]}` | {k['launches']:.0f} | {k['us']:.1f} | {k['us'] / tot:.1%} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mamba2-2.7b", help="comma-separated architecture names (default mamba2-2.7b)")
    p.add_argument("--variants", default="fp16,W4A8", help=f"comma-separated, from fp16,{','.join(RECIPES)}")
    p.add_argument("--prompt-len", type=int, default=1024, help="prefill tokens (default 1024)")
    p.add_argument("--decode-batch", type=int, default=1,
                   help="batch of the decode phases (default 1; files get a _b<N> suffix otherwise)")
    p.add_argument("--reps", type=int, default=10, help="timed calls per phase (default 10)")
    p.add_argument("--top", type=int, default=15, help="kernels listed per phase in the markdown (default 15)")
    p.add_argument("--calib-samples", type=int, default=4)
    p.add_argument("--calib-seqlen", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.decode_batch < 1:
        p.error(f"--decode-batch {args.decode_batch}: expected a positive batch size")
    if not torch.cuda.is_available():
        sys.exit("breakdown.py profiles GPU kernels: it needs a CUDA device")
    models = _names(args.models, list(PRESETS), "model")
    variants = _names(args.variants, ["fp16", *RECIPES], "variant")
    dev = torch.device("cuda")
    rows = []
    for name in models:
        for v in variants:
            row = {"model": name, "variant": v}
            try:
                model = build_variant(name, v, args, dev, torch.float16)
                row.update(measure(model, args))
            except Exception as e:  # one failing variant must not lose the others' numbers
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            model = None
            torch.cuda.empty_cache()
            rows.append(row)
            if "error" not in row:
                print(f"{name} {v}: " + ", ".join(f"{ph} wall {row[ph]['wall_ms']:.3f} ms kernels "
                                                  f"{row[ph]['kernel_us'] / 1e3:.3f} ms"
                                                  for ph in ("prefill", "decode", "decode_graph")), flush=True)
            else:
                print(f"{name} {v}: {row['error']}", flush=True)
    report = {"device": environment(dev), "settings": vars(args) | {"out_dir": str(args.out_dir),
                                                                    "fused_decode": fused_decode()}, "rows": rows}
    batch = f"_b{args.decode_batch}" if args.decode_batch != 1 else ""
    stem = f"breakdown_{'-'.join(models)}{batch}_{gpu_slug(report['device']['gpu'])}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out_dir / f"{stem}.md").write_text(markdown(report, args.top))
    print(f"wrote {args.out_dir / stem}.json/.md")


if __name__ == "__main__":
    main()
