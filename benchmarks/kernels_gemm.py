"""Benchmark the quantized GEMM kernels (W8A8, W4A8, W4A16) against torch's fp16 matmul (cuBLAS).

Shapes (N, K): the projections of mamba-1.4b, mamba-2.8b (in_proj, out_proj, x_proj, dt_proj), mamba2-2.7b,
mamba2-8b and a GPT-NeoX-vocabulary lm_head, for M = 1, 4, 16 (decode, batched decode) and 1024, 4096 (prefill).
Each call is timed by ``benchmarks/common.py``'s Timer: device time of the call captured in a CUDA graph and
replayed after an L2 flush (median of --reps), and the host time of an eager call beside it (Python, launcher
checks, the launch). Every kernel's output is checked once against its reference (bit-exact for W8A8 / W4A8, a relative
error for W4A16). Rows per shape and M: the launchers' own choice ("auto": the CUDA-core GEMV of
quamba/ops/triton/gemv.py for M <= GEMV_MAX_M, else the tensor-core kernels), and at decode sizes the other
path forced ("mma": the tensor-core kernel with its own decode config; "gemv": the GEMV's default config), so
the crossover is visible. The "dense" rows time the alternative prefill path of the W4 launchers (dequantize the
weights once, then the int8 kernel (W4A8) or cuBLAS (W4A16); ``dense_min_m``), charged the same floor as the op.
The "split-last" rows (W8A8, and W4A8 at decode sizes: tensor-core shapes the picked config splits over K) time the same tile with the
partials summed by each tile's last K slice to finish instead of a second kernel (``GemmConfig.split_last``).
The "tma" rows (W8A8, prefill M, CUDA) time the kernel of gemm_w8a8_tma.py (operand tiles through TMA tensor
descriptors; ``QUAMBA_GEMM_TMA``) with the picked tile, plain and persistent (--tma-sweep: more tiles).

Floors: memory = bytes the call must move (weights + scales + activations + output) / the bandwidth of a large
device copy; compute = 2 M N K / the measured peak of a large cuBLAS fp16 matmul (torch.matmul) or int8 matmul
(torch._int_mm). floor = max of the two; efficiency = floor / time.

--sweep: for every shape, format (w8a8 -> fp16, w4a8 -> fp16, w4a16 fp16) and M in --sweep-ms (1, 16), times
every candidate GEMV config (``gemv.candidate_configs``: a grid of block_n x block_k, then num_warps, pipelining
depth, split-K and integer-vs-fp32 math around the default), checks each output, and writes them all under
"sweep" in the JSON with the best config per case, so the defaults can be tuned from one GPU run (--only-sweep
skips the main table; the first run compiles a few hundred kernel variants, several minutes: split it over
calls with --sweep-shapes, e.g. "in_proj" then "out_proj,x_proj,dt_proj,lm_head"; the compiled kernels stay
in Triton's cache on the machine). Results accumulate: a run without the main table keeps the one in the
existing JSON and merges its sweep cases into the existing sweep; a run without --sweep keeps the existing sweep.

Writes benchmarks/results/kernels_gemm_<gpu>.json and .md. Run: python benchmarks/kernels_gemm.py [--sweep].
--smoke runs tiny shapes through Triton's interpreter on the CPU to check the script itself (timings mean
nothing; well under a minute).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

if "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, environment, gpu_slug, measure_bandwidth, measure_peaks  # noqa: E402

from quamba.ops.quant import quantize_ref, w8a8_gemm_ref  # noqa: E402
from quamba.ops.triton import gemm_w4, gemm_w8a8, gemv  # noqa: E402
from quamba.ops.w4_gemm import w4a8_gemm_ref, w4a16_gemm_ref  # noqa: E402
from quamba.quantization.weight_formats import pack_int4  # noqa: E402

# mamba2-8b: d_model 4096, d_inner 8192, 8 groups of d_state 128, 128 heads -> in_proj 2 * 8192 + 2 * 8 * 128 + 128
SHAPES = {  # name: (N, K)
    "mamba-1.4b in_proj": (8192, 2048),
    "mamba-1.4b out_proj": (2048, 4096),
    "mamba-2.8b in_proj": (10240, 2560),
    "mamba-2.8b out_proj": (2560, 5120),
    "mamba-2.8b x_proj": (192, 5120),
    "mamba-2.8b dt_proj": (5120, 160),
    "mamba2-2.7b in_proj": (10576, 2560),
    "mamba2-2.7b out_proj": (2560, 5120),
    "mamba2-8b in_proj": (18560, 4096),
    "mamba2-8b out_proj": (4096, 8192),
    "lm_head 2.8b": (50280, 2560),
}
SMOKE_SHAPES = {"smoke": (40, 256)}
DECODE_MAX_M = 64
GROUP = 128  # W4 group size (the recipes' default); K = 160 (dt_proj) is no multiple of it: one group per row there
RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_FORMATS = ("w8a8", "w4a8", "w4a16")


def group_for(k: int) -> int:
    return GROUP if k % GROUP == 0 else -1


# ---------------------------------------------------------------------------------------------- operands

def make_weights(n: int, k: int, device: torch.device) -> dict:
    """Random weights of one projection, built directly in their stored formats, and their scales."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    groups = k // (GROUP if k % GROUP == 0 else k)
    weights = {
        "w_fp16": (torch.randn(n, k, generator=gen) * 0.02).half(),
        "w8": torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen),
        "w_scale": torch.rand(n, generator=gen) * 1e-3 + 1e-4,
        "packed": pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=gen)),
        "scales_fp16": (torch.rand(n, groups, generator=gen) * 0.01 + 1e-3).half(),
        "group_scales": torch.randint(1, 17, (n, groups), dtype=torch.int8, generator=gen),
        "channel_scales": torch.rand(n, generator=gen) * 1e-3 + 1e-4,
    }
    return {name: t.to(device) for name, t in weights.items()}


def make_operands(weights: dict, m: int, device: torch.device) -> dict:
    """The weights plus activations of M rows and output scales that keep most int8 outputs unclamped."""
    k = weights["w8"].shape[1]
    gen = torch.Generator(device="cpu").manual_seed(m)
    ops = dict(weights, x_fp16=torch.randn(m, k, generator=gen).half().to(device),
               x_q=torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen).to(device),
               x_scale=torch.tensor(0.02, device=device))
    n = weights["w8"].shape[0]
    y = w8a8_gemm_ref(ops["x_q"][:1], ops["x_scale"], ops["w8"], ops["w_scale"], out_dtype=torch.float32)
    ops["out_scale"] = (y.abs().amax() / 100).expand(n).contiguous()
    y4 = w4a8_gemm_ref(ops["x_q"][:1], ops["x_scale"], ops["packed"], ops["group_scales"], ops["channel_scales"],
                       group_for(k), out_dtype=torch.float32)
    ops["out_scale_w4"] = (y4.abs().amax() / 100).expand(n).contiguous()
    return ops


def op_calls(fmt: str, o: dict, config=None, **kw):
    """(kernel call, reference call, exact?) of one format ("w8a8", "w8a8 int8", "w4a8", "w4a8 int8", "w4a16")."""
    g = group_for(o["w8"].shape[1])
    if fmt.startswith("w8a8"):
        os_ = o["out_scale"] if fmt.endswith("int8") else None
        args = (o["x_q"], o["x_scale"], o["w8"], o["w_scale"], None, os_)
        return (lambda: gemm_w8a8._w8a8_gemm_launch(*args, config=config)), (lambda: w8a8_gemm_ref(*args)), True
    if fmt.startswith("w4a8"):
        os_ = o["out_scale_w4"] if fmt.endswith("int8") else None
        args = (o["x_q"], o["x_scale"], o["packed"], o["group_scales"], o["channel_scales"], g)

        def ref():
            y = w4a8_gemm_ref(*args, None, torch.float32 if os_ is not None else torch.float16)
            return quantize_ref(y, os_) if os_ is not None else y

        return (lambda: gemm_w4._w4a8_gemm_launch(*args, None, torch.float16, os_, config=config, **kw)), ref, True
    args = (o["x_fp16"], o["packed"], o["scales_fp16"], g)
    return (lambda: gemm_w4._w4a16_gemm_launch(*args, config=config, **kw)), (lambda: w4a16_gemm_ref(*args)), False


def op_bytes(fmt: str, m: int, n: int, k: int) -> tuple[int, str]:
    """(bytes the op must move, compute kind) for the floors."""
    groups = k // group_for(k) if group_for(k) > 0 else 1
    out = m * n * (1 if fmt.endswith("int8") else 2)
    if fmt.startswith("w8a8"):
        return n * k + 4 * n + m * k + out + (4 * n if fmt.endswith("int8") else 0), "int8"
    if fmt.startswith("w4a8"):
        return n * k // 2 + n * groups + 4 * n + m * k + out + (4 * n if fmt.endswith("int8") else 0), "int8"
    if fmt == "w4a16":
        return n * k // 2 + 2 * n * groups + 2 * m * k + out, "fp16"
    return 2 * n * k + 2 * m * k + out, "fp16"  # fp16 weights (cuBLAS)


def mma_config(fmt: str, m: int, n: int, k: int, device: torch.device):
    """The tensor-core kernel's own config for this call (what M > GEMV_MAX_M gets), to force it at small M."""
    g = None if fmt.startswith("w8a8") else group_for(k)
    cfg, _ = gemm_w8a8.pick_config(m, n, k, device, float_dot=fmt == "w4a16", group_size=g, packed=g is not None)
    if fmt == "w4a16":  # its tensor-core kernel has no split-K
        cfg = dataclasses.replace(cfg, split_k=1)
    return cfg


def describe(fmt: str, m: int, n: int, k: int, device: torch.device, config=None, dense: bool = False) -> str:
    """The configuration a launcher call runs with (the launchers' rule, or ``config``)."""
    base = fmt.split()[0]
    g = None if base == "w8a8" else group_for(k)
    if not dense and (isinstance(config, gemv.GemvConfig) or (config is None and m <= gemv.GEMV_MAX_M[base])):
        return gemv.config_for(base, m, n, k, g, device, config).describe()
    if dense and fmt == "w4a16":
        return "dequant + cuBLAS"
    if dense:  # the int8 kernel on the dequantized weights: no groups
        g = None
        config = config or gemm_w8a8.pick_config(m, n, k, device)[0]
    config = config or mma_config(fmt, m, n, k, device)
    if fmt == "w4a16":
        config = dataclasses.replace(config, split_k=1)
    cfg, *_, per_tile = gemm_w8a8.mma_plan(config, m, n, k, device, fmt == "w4a16", g)
    return (f"mma {cfg.block_m}x{cfg.block_n}x{cfg.block_k} split{cfg.split_k} w{cfg.num_warps} s{cfg.num_stages}"
            + ("" if per_tile else " gathered-scales") + (" tma" if cfg.tma else "")
            + (" persistent" if cfg.persistent else "") + (" split-last" if cfg.split_last else ""))


def check(out: torch.Tensor, ref: torch.Tensor, exact: bool) -> dict:
    if exact:
        return {"exact": bool(torch.equal(out, ref))}
    err = ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
    return {"rel_err": err}


# ---------------------------------------------------------------------------------------------- main table

FORMATS = {"w8a8": "w8a8 -> fp16", "w8a8 int8": "w8a8 -> int8", "w4a8": "w4a8 -> fp16", "w4a8 int8": "w4a8 -> int8",
           "w4a16": "w4a16 fp16"}


def variants(m: int, n: int, k: int, o: dict, device: torch.device, formats=tuple(FORMATS),
             tma_sweep: bool = False) -> list:
    """(kernel name, format, config, launcher kwargs) rows of one shape and M."""
    rows = [("torch fp16 (cuBLAS)", "fp16", None, {})]
    for fmt in formats:
        name, base = FORMATS[fmt], fmt.split()[0]
        rows.append((name, fmt, None, {}))
        if m <= DECODE_MAX_M:  # the other path at decode sizes
            if m <= gemv.GEMV_MAX_M[base]:
                rows.append((name + ", mma", fmt, mma_config(fmt, m, n, k, device), {}))
            else:
                rows.append((name + ", gemv", fmt,
                             gemv.config_for(base, m, n, k, None if base == "w8a8" else group_for(k), device), {}))
        if base != "w8a8" and m > gemv.GEMV_MAX_M[base]:  # the other tensor-core path: dequantize once, then dense
            rows.append((name + ", dense", fmt, None, {"dense_min_m": 1}))
        # split-K with the reduction in each tile's last K slice: the tensor-core path of W8A8, and of W4A8 below the
        # sizes it dequantizes at
        if m > gemv.GEMV_MAX_M[base] and (base == "w8a8" or (base == "w4a8" and m <= DECODE_MAX_M)):
            picked = gemm_w8a8.mma_plan(mma_config(fmt, m, n, k, device), m, n, k, device)[0]
            if picked.split_k > 1:
                rows.append((name + ", split-last", fmt, dataclasses.replace(picked, split_last=True), {}))
        if base == "w8a8" and m > DECODE_MAX_M and device.type == "cuda":
            rows += [(name + ", tma", fmt, cfg, {}) for cfg in tma_configs(m, n, k, device, tma_sweep)]
    return rows


# TMA kernel tiles timed by --tma-sweep besides the picked one: (block_m, block_n, block_k, num_warps, num_stages)
TMA_SWEEP = [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (128, 128, 128, 8, 4), (128, 128, 128, 4, 4),
             (128, 128, 256, 8, 3), (64, 256, 128, 4, 4), (128, 256, 64, 8, 5)]


def tma_configs(m: int, n: int, k: int, device: torch.device, sweep: bool) -> list:
    """The TMA kernel with the picked prefill tile (one K slice), plain and persistent, and with ``sweep`` the
    TMA_SWEEP tiles, each plain and persistent."""
    picked = dataclasses.replace(gemm_w8a8.pick_config(m, n, k, device)[0], split_k=1, tma=True)
    tiles = [picked] + [gemm_w8a8.GemmConfig(bm, bn, bk, num_warps=w, num_stages=st, tma=True)
                        for bm, bn, bk, w, st in (TMA_SWEEP if sweep else [])]
    return [dataclasses.replace(c, persistent=p) for c in tiles for p in (False, True)]


STREAM_BYTES = 256 * 2 ** 20  # operand copies per stream timing: about this many weight bytes (> 5x an H100's L2)
WEIGHT_KEYS = ("w_fp16", "w8", "w_scale", "packed", "scales_fp16", "group_scales", "channel_scales")


def operand_copies(o: dict, n: int, k: int, device: torch.device) -> list:
    """o and clones of its weights, about STREAM_BYTES of fp16 weights in all (2..64 sets; one on the CPU)."""
    if device.type != "cuda":
        return [o]
    count = max(2, min(64, -(-STREAM_BYTES // (2 * n * k))))
    return [o] + [dict(o, **{key: o[key].clone() for key in WEIGHT_KEYS}) for _ in range(count - 1)]


def call_for(fmt: str, o: dict, config, kw):
    if fmt == "fp16":
        return lambda: o["x_fp16"] @ o["w_fp16"].T
    return op_calls(fmt, o, config, **kw)[0]


def time_rows(args, timer: Timer, bandwidth: float, peaks: dict, device: torch.device) -> list:
    shapes = selected(SMOKE_SHAPES if args.smoke else SHAPES, args.shapes)
    ms = [1, 3, 65] if args.smoke else args.ms
    rows = []
    for shape, (n, k) in shapes.items():
        weights = make_weights(n, k, device)
        for m in ms:
            o = make_operands(weights, m, device)
            copies = operand_copies(o, n, k, device) if m <= DECODE_MAX_M else None
            for name, fmt, config, kw in variants(m, n, k, o, device, args.formats, args.tma_sweep):
                fn = call_for(fmt, o, config, kw)
                if fmt == "fp16":
                    status, cfg_text = {}, "cuBLAS"
                else:
                    _, ref_fn, exact = op_calls(fmt, o, config, **kw)
                    status = check(fn(), ref_fn(), exact)
                    cfg_text = describe(fmt, m, n, k, device, config, dense="dense_min_m" in kw)
                us, host_us = timer(fn)
                stream = {}
                if copies is not None:  # decode: also back to back on cold weights (Timer.stream)
                    stream["stream_us"] = timer.stream([call_for(fmt, c, config, kw) for c in copies])
                nbytes, kind = op_bytes(fmt, m, n, k)
                flops = 2 * m * n * k
                mem_floor = nbytes / bandwidth * 1e6
                compute_floor = flops / peaks[kind] * 1e6
                rows.append({
                    "shape": shape, "N": n, "K": k, "M": m, "kernel": name, "config": cfg_text,
                    "time_us": us, "host_launch_us": host_us, "bytes": nbytes, "GB_per_s": nbytes / us / 1e3,
                    "TFLOP_per_s": flops / us / 1e6, "memory_floor_us": mem_floor, "compute_floor_us": compute_floor,
                    "efficiency": max(mem_floor, compute_floor) / us, **stream, **status,
                })
                in_stream = f"  stream {stream['stream_us']:7.1f} us" if stream else ""
                print(f"{shape:22s} M={m:5d} {name:24s} {us:9.1f} us{in_stream}  floor "
                      f"{max(mem_floor, compute_floor):8.1f} us  host {host_us:6.1f} us  {cfg_text}  {status}",
                      flush=True)
            del o, copies
        del weights
    for row in rows:  # speed-up over cuBLAS fp16 at the same shape
        base = next(r["time_us"] for r in rows if r["shape"] == row["shape"] and r["M"] == row["M"]
                    and r["kernel"].startswith("torch"))
        row["speedup_vs_fp16"] = base / row["time_us"]
        if "stream_us" in row:
            base = next(r["stream_us"] for r in rows if r["shape"] == row["shape"] and r["M"] == row["M"]
                        and r["kernel"].startswith("torch"))
            row["stream_speedup_vs_fp16"] = base / row["stream_us"]
            row["stream_vs_floor"] = row["stream_us"] / max(row["memory_floor_us"], row["compute_floor_us"])
    return rows


def selected(shapes: dict, patterns: list[str] | None) -> dict:
    """The shapes whose names contain one of ``patterns`` (all of them without)."""
    return {s: v for s, v in shapes.items() if not patterns or any(p in s for p in patterns)}


# ---------------------------------------------------------------------------------------------- sweep

def sweep(args, timer: Timer, bandwidth: float, device: torch.device) -> dict:
    """Every candidate GEMV config per (shape, format, M), timed and checked; the best per case."""
    shapes = selected(SMOKE_SHAPES if args.smoke else SHAPES, args.sweep_shapes)
    index = (device.index or 0) if device.type == "cuda" else -1
    rows, best = [], []
    seen = set()
    for shape, (n, k) in shapes.items():
        if (n, k) in seen:  # the mamba / mamba2 out_proj are the same shape
            continue
        seen.add((n, k))
        weights = make_weights(n, k, device)
        for m in args.sweep_ms:
            o = make_operands(weights, m, device)
            for fmt in args.sweep_formats:
                g = None if fmt == "w8a8" else group_for(k)
                cands = gemv.candidate_configs(fmt, m, n, k, g, index)
                if args.smoke:
                    cands = cands[:3]
                nbytes, _ = op_bytes(fmt, m, n, k)
                floor = nbytes / bandwidth * 1e6
                case = []
                _, ref_fn, exact = op_calls(fmt, o)
                ref = ref_fn()
                for cfg in cands:
                    fn, _, _ = op_calls(fmt, o, cfg)
                    try:
                        status = check(fn(), ref, exact)
                        us, host_us = timer(fn)
                    except Exception as err:  # a config that does not compile or run: recorded, not fatal
                        case.append({"config": dataclasses.asdict(cfg), "error": f"{type(err).__name__}: {err}"[:300]})
                        continue
                    case.append({"config": dataclasses.asdict(cfg), "describe": cfg.describe(), "time_us": us,
                                 "host_launch_us": host_us, "GB_per_s": nbytes / us / 1e3,
                                 "efficiency": floor / us, **status})
                timed = [c for c in case if "time_us" in c and c.get("exact", True)
                         and c.get("rel_err", 0.0) < 1e-2]
                for c in case:
                    rows.append({"shape": shape, "N": n, "K": k, "M": m, "format": fmt, **c})
                if timed:
                    top = min(timed, key=lambda c: c["time_us"])
                    default = timed[0] if case and case[0] is timed[0] else None
                    best.append({"shape": shape, "N": n, "K": k, "M": m, "format": fmt, "floor_us": floor,
                                 "best": top["describe"], "best_config": top["config"], "best_us": top["time_us"],
                                 "default": cands[0].describe(), "default_us": default["time_us"] if default else None})
                    print(f"sweep {shape:22s} M={m:3d} {fmt:6s} best {top['time_us']:8.1f} us ({top['describe']})"
                          f"  default {best[-1]['default_us'] or float('nan'):8.1f} us  floor {floor:6.1f} us",
                          flush=True)
            del o
        del weights
    return {"rows": rows, "best": best}


def run(args) -> dict:
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --smoke to check the script on the CPU)")
    torch.manual_seed(0)
    timer = Timer(device, args.reps)
    bandwidth = measure_bandwidth(timer)
    peaks = measure_peaks(timer)
    result = {"environment": environment(device), "bandwidth_GB_per_s": bandwidth / 1e9,
              "peak_TFLOP_per_s": {"fp16": peaks["fp16"] / 1e12, "int8": peaks["int8"] / 1e12},
              "int8_peak_source": peaks["int8_source"], "reps": args.reps, "group_size": GROUP,
              "gemv_max_m": dict(gemv.GEMV_MAX_M), "rows": []}
    with torch.inference_mode():
        if not args.only_sweep:
            result["rows"] = time_rows(args, timer, bandwidth, peaks, device)
        if args.sweep or args.only_sweep:
            result["sweep"] = sweep(args, timer, bandwidth, device)
    return result


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# GEMM kernels on {env['gpu']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, {env['date']}; device time: median of "
        f"{result['reps']} CUDA-graph replays after an L2 flush; host: an eager call. Measured: copy bandwidth "
        f"{result['bandwidth_GB_per_s']:.0f} GB/s, fp16 {result['peak_TFLOP_per_s']['fp16']:.0f} TFLOP/s, int8 "
        f"{result['peak_TFLOP_per_s']['int8']:.0f} TOP/s ({result['int8_peak_source']}). W4 group size "
        f"{result['group_size']} (-1 where K is no multiple of it). GEMV for M <= {result['gemv_max_m']}.",
        "",
        "Decode rows (M <= 64) also give **stream**: the per-call time of calls run back to back in one graph on "
        "rotating weight copies (~256 MB, cold in L2), as inside a decode step, without the ~4-5 us fixed cost of "
        "replaying a one-call graph; its ratio to cuBLAS timed the same way, and to the floor.",
        "",
        "| shape | M | kernel | config | time (us) | stream (us) | floor (us) | efficiency | GB/s | vs fp16 | "
        "stream vs fp16 | stream / floor | host launch (us) | check |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        chk = ("exact" if r["exact"] else "MISMATCH") if "exact" in r else (
            f"rel err {r['rel_err']:.1e}" if "rel_err" in r else "")
        floor = max(r["memory_floor_us"], r["compute_floor_us"])
        bound = "mem" if r["memory_floor_us"] >= r["compute_floor_us"] else "compute"
        st = (f"{r['stream_us']:.1f} |", f"{r['stream_speedup_vs_fp16']:.2f}x | {r['stream_vs_floor']:.2f}x |") \
            if "stream_us" in r else ("|", "| |")
        lines.append(f"| {r['shape']} | {r['M']} | {r['kernel']} | {r['config']} | {r['time_us']:.1f} | {st[0]} "
                     f"{floor:.1f} ({bound}) | {r['efficiency']:.0%} | {r['GB_per_s']:.0f} | "
                     f"{r['speedup_vs_fp16']:.2f}x | {st[1]} {r['host_launch_us']:.0f} | {chk} |")
    if "sweep" in result:
        lines += ["", "## GEMV config sweep: best vs default", "",
                  "| shape | M | format | best (us) | best config | default (us) | default config | floor (us) |",
                  "| --- | ---: | --- | ---: | --- | ---: | --- | ---: |"]
        for b in result["sweep"]["best"]:
            default = f"{b['default_us']:.1f}" if b["default_us"] is not None else "failed"
            lines.append(f"| {b['shape']} | {b['M']} | {b['format']} | {b['best_us']:.1f} | {b['best']} | {default} | "
                         f"{b['default']} | {b['floor_us']:.1f} |")
    return "\n".join(lines) + "\n"


def merged(result: dict, path: Path) -> dict:
    """``result`` plus what an earlier run left in ``path``: its main table when this run has none, its sweep
    cases that this run did not redo (so a sweep can be split over several calls)."""
    if not path.exists():
        return result
    old = json.loads(path.read_text())
    if not result["rows"]:
        result["rows"] = old.get("rows", [])
    if "sweep" in old:
        new = result.setdefault("sweep", {"rows": [], "best": []})
        redone = {(b["shape"], b["M"], b["format"]) for b in new["best"]} | {
            (r["shape"], r["M"], r["format"]) for r in new["rows"]}
        for part in ("rows", "best"):
            new[part] = [r for r in old["sweep"][part] if (r["shape"], r["M"], r["format"]) not in redone] + new[part]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--reps", type=int, default=None,
                        help="timed replays per kernel and shape (median); default 30 (--smoke: 3)")
    parser.add_argument("--ms", type=ints, default=[1, 4, 16, 1024, 4096], help="comma-separated M values")
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=None,
                        help="comma-separated substrings of the shape names for the main table (default: all)")
    parser.add_argument("--formats", type=lambda s: s.split(","), default=list(FORMATS),
                        help=f"comma-separated formats of the main table (default {','.join(FORMATS)})")
    parser.add_argument("--tag", default="", help="a word added to the file names (kernels_gemm_<tag>_<gpu>), so "
                        "that a partial run (--shapes / --formats / --ms) does not replace the full table")
    parser.add_argument("--tma-sweep", action="store_true",
                        help="at prefill M, also time the W8A8 TMA kernel with every TMA_SWEEP tile (plain and persistent)")
    parser.add_argument("--sweep", action="store_true", help="also time every candidate GEMV config")
    parser.add_argument("--only-sweep", action="store_true", help="the sweep without the main table")
    parser.add_argument("--sweep-ms", type=ints, default=[1, 16], help="M values of the sweep")
    parser.add_argument("--sweep-shapes", type=lambda s: s.split(","), default=None,
                        help="comma-separated substrings of the shape names to sweep (default: all)")
    parser.add_argument("--sweep-formats", type=lambda s: s.split(","), default=list(SWEEP_FORMATS),
                        help=f"comma-separated formats to sweep (default {','.join(SWEEP_FORMATS)})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in Triton's interpreter on the CPU")
    args = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.smoke else 30)
    unknown = [f for f in args.formats if f not in FORMATS]
    if unknown:
        parser.error(f"--formats: unknown {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    for flag, patterns in (("--shapes", args.shapes), ("--sweep-shapes", args.sweep_shapes)):
        if not selected(SMOKE_SHAPES if args.smoke else SHAPES, patterns):
            parser.error(f"{flag}: no shape name contains any of {patterns}; the names are {', '.join(SHAPES)}")
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tag):
        parser.error(f"--tag {args.tag!r}: use letters, digits, '.', '_' and '-' only")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"kernels_gemm_{args.tag + '_' if args.tag else ''}{gpu_slug(result['environment']['gpu'])}"
    result = merged(result, stem.with_suffix(".json"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
