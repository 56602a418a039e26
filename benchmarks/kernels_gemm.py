"""Benchmark the quantized GEMM kernels (W8A8, W4A8, W4A16) against torch's fp16 matmul (cuBLAS).

Shapes: the projections of mamba-2.8b (in_proj 2560 -> 10240) and mamba2-2.7b (in_proj 2560 -> 10576 =
2 * 5120 + 2 * 128 + 80; out_proj 5120 -> 2560, the same in both), for M = 1, 16 (decode) and 1024, 4096
(prefill). Each call is timed with CUDA events after an L2 flush (the weights of a projection fit in an
H100's 50 MB L2, which would flatter decode), median of --reps after warm-up; the host time of the
launching call (Python and the launcher's checks; a decode loop would hide it with CUDA graphs) is reported
beside it. Every kernel's output is checked once against its reference (bit-exact for W8A8 / W4A8, a
relative error for W4A16). The "dense" rows time the alternative prefill path of the W4 launchers
(dequantize the weights once, then the dense kernel; ``dense_min_m``), charged the same floor as the op.

Floors: memory = bytes the call must move (weights + scales + activations + output) / the bandwidth of a
large device copy; compute = 2 M N K / the measured peak of a large cuBLAS fp16 matmul (torch.matmul) or
int8 matmul (torch._int_mm). floor = max of the two; efficiency = floor / time.

Writes benchmarks/results/kernels_gemm_<gpu>.json and .md. Run: python benchmarks/kernels_gemm.py
(expected to take about a minute on an H100 the first time, most of it Triton compiling ~40 kernel variants;
not yet run on a GPU). --smoke runs tiny shapes through Triton's
interpreter on the CPU to check the script itself (its timings mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

from quamba.ops.quant import w8a8_gemm_ref  # noqa: E402
from quamba.ops.triton import gemm_w4, gemm_w8a8  # noqa: E402
from quamba.ops.w4_gemm import w4a8_gemm_ref, w4a16_gemm_ref  # noqa: E402
from quamba.quantization.weight_formats import pack_int4  # noqa: E402

SHAPES = {  # name: (N, K)
    "mamba-2.8b in_proj": (10240, 2560),
    "mamba2-2.7b in_proj": (10576, 2560),
    "out_proj": (2560, 5120),
}
SMOKE_SHAPES = {"smoke": (40, 128)}
DECODE_MAX_M = 64
GROUP = 128  # W4 group size (the recipes' default)
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------- timing

class Timer:
    """Median device time of fn() and median host time of the call that launches it, in microseconds.

    CUDA: events around each call, after an L2 flush. The flush (512 MB of writes, ~0.2 ms on an H100) also
    gives the host time to enqueue the call before the GPU reaches it, so the events time the kernels, not
    Python. CPU (--smoke): perf_counter for both.
    """

    def __init__(self, device: torch.device, reps: int, warmup: int = 3):
        self.device, self.reps, self.warmup = device, reps, warmup
        cuda = device.type == "cuda"
        self.flush = torch.empty(128 * 2 ** 20, dtype=torch.int32, device=device) if cuda else None

    def __call__(self, fn, reps: int | None = None) -> tuple[float, float]:
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        cuda = self.device.type == "cuda"
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)] \
            if cuda else []
        host = []
        for i in range(reps):
            if cuda:
                self.flush.zero_()
                events[i][0].record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e6)
            if cuda:
                events[i][1].record()
        if not cuda:
            return statistics.median(host), statistics.median(host)
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events), statistics.median(host)


def measure_bandwidth(timer: Timer) -> float:
    """Bytes per second of a large device-to-device copy (read + write), the memory floor's denominator."""
    n = 2 ** 28 if timer.device.type == "cuda" else 2 ** 22  # 1 GiB of fp32 on the GPU
    src = torch.empty(n, dtype=torch.float32, device=timer.device)
    dst = torch.empty_like(src)
    us, _ = timer(lambda: dst.copy_(src), reps=10)
    return 2 * src.numel() * 4 / (us * 1e-6)


def measure_peaks(timer: Timer) -> dict:
    """Measured peak fp16 FLOP/s (torch.matmul) and int8 OP/s (torch._int_mm), 8192^3 (CPU: tiny, meaningless)."""
    s = 8192 if timer.device.type == "cuda" else 256
    a = torch.randn(s, s, device=timer.device).half()
    b = torch.randn(s, s, device=timer.device).half()
    peaks = {"fp16": 2 * s ** 3 / (timer(lambda: a @ b, reps=10)[0] * 1e-6)}
    a8 = torch.randint(-128, 128, (s, s), dtype=torch.int8, device=timer.device)
    b8 = torch.randint(-128, 128, (s, s), dtype=torch.int8, device=timer.device).T  # column-major, as cuBLASLt wants
    try:
        peaks["int8"] = 2 * s ** 3 / (timer(lambda: torch._int_mm(a8, b8), reps=10)[0] * 1e-6)
        peaks["int8_source"] = "torch._int_mm"
    except (RuntimeError, AttributeError):
        peaks["int8"] = 2 * peaks["fp16"]
        peaks["int8_source"] = "2 x measured fp16 (torch._int_mm unavailable)"
    return peaks


# ---------------------------------------------------------------------------------------------- operands

def make_weights(n: int, k: int, device: torch.device) -> dict:
    """Random weights of one projection, built directly in their stored formats, and their scales."""
    g = torch.Generator(device="cpu").manual_seed(0)
    weights = {
        "w_fp16": (torch.randn(n, k, generator=g) * 0.02).half(),
        "w8": torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g),
        "w_scale": torch.rand(n, generator=g) * 1e-3 + 1e-4,
        "packed": pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)),
        "scales_fp16": (torch.rand(n, k // GROUP, generator=g) * 0.01 + 1e-3).half(),
        "group_scales": torch.randint(1, 17, (n, k // GROUP), dtype=torch.int8, generator=g),
        "channel_scales": torch.rand(n, generator=g) * 1e-3 + 1e-4,
    }
    return {name: t.to(device) for name, t in weights.items()}


def make_operands(weights: dict, m: int, device: torch.device) -> dict:
    """The weights plus activations of M rows and an output scale that keeps most int8 outputs unclamped."""
    k = weights["w8"].shape[1]
    g = torch.Generator(device="cpu").manual_seed(m)
    ops = dict(weights, x_fp16=torch.randn(m, k, generator=g).half().to(device),
               x_q=torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g).to(device),
               x_scale=torch.tensor(0.02, device=device))
    y = w8a8_gemm_ref(ops["x_q"][:1], ops["x_scale"], ops["w8"], ops["w_scale"], out_dtype=torch.float32)
    ops["out_scale"] = (y.abs().amax() / 100).expand(weights["w8"].shape[0]).contiguous()
    return ops


def variants(n: int, k: int, m: int, ops: dict, prefill: bool) -> dict:
    """name -> (kernel call, reference call or None, exact?, bytes the op must move, compute kind).

    The dense variants move more (they write and read back a dense weight) but are charged the op's floor,
    so that their efficiency compares with the in-register kernels'."""
    nk = n * k
    x16, xq = m * k * 2, m * k
    w4_bytes = nk // 2 + n * (k // GROUP) * 2  # packed + fp16 scales (W4A8: int8 group + fp32 channel, ~ same)
    o = ops
    table = {
        "torch fp16 (cuBLAS)": (lambda: o["x_fp16"] @ o["w_fp16"].T, None, False, 2 * nk + x16 + 2 * m * n, "fp16"),
        "w8a8 -> fp16": (
            lambda: gemm_w8a8._w8a8_gemm_launch(o["x_q"], o["x_scale"], o["w8"], o["w_scale"]),
            lambda: w8a8_gemm_ref(o["x_q"], o["x_scale"], o["w8"], o["w_scale"]),
            True, nk + 4 * n + xq + 2 * m * n, "int8"),
        "w8a8 -> int8": (
            lambda: gemm_w8a8._w8a8_gemm_launch(o["x_q"], o["x_scale"], o["w8"], o["w_scale"], None, o["out_scale"]),
            lambda: w8a8_gemm_ref(o["x_q"], o["x_scale"], o["w8"], o["w_scale"], None, o["out_scale"]),
            True, nk + 8 * n + xq + m * n, "int8"),
        "w4a8 -> fp16": (
            lambda: gemm_w4._w4a8_gemm_launch(o["x_q"], o["x_scale"], o["packed"], o["group_scales"],
                                              o["channel_scales"], GROUP),
            lambda: w4a8_gemm_ref(o["x_q"], o["x_scale"], o["packed"], o["group_scales"], o["channel_scales"], GROUP),
            True, w4_bytes + 4 * n + xq + 2 * m * n, "int8"),
        "w4a16 fp16": (
            lambda: gemm_w4._w4a16_gemm_launch(o["x_fp16"], o["packed"], o["scales_fp16"], GROUP),
            lambda: w4a16_gemm_ref(o["x_fp16"], o["packed"], o["scales_fp16"], GROUP),
            False, w4_bytes + x16 + 2 * m * n, "fp16"),
    }
    if prefill:  # the alternative prefill path: dequantize once to a dense weight, then the dense kernel
        table["w4a8 -> fp16, dense"] = (
            lambda: gemm_w4._w4a8_gemm_launch(o["x_q"], o["x_scale"], o["packed"], o["group_scales"],
                                              o["channel_scales"], GROUP, dense_min_m=1),
            *table["w4a8 -> fp16"][1:])
        table["w4a16 fp16, dense"] = (
            lambda: gemm_w4._w4a16_gemm_launch(o["x_fp16"], o["packed"], o["scales_fp16"], GROUP, dense_min_m=1),
            *table["w4a16 fp16"][1:])
    return table


def config_of(name: str, m: int, n: int, k: int, device: torch.device) -> str:
    """The tile configuration the launcher picks for this call (same rule as the launchers)."""
    if name.startswith("torch"):
        return "cuBLAS"
    dense = name.endswith("dense")
    float_dot = name.startswith("w4a16")
    g = None if (dense or name.startswith("w8a8")) else GROUP
    cfg, per_tile = gemm_w8a8.pick_config(m, n, k, device, float_dot=float_dot, group_size=g, packed=g is not None)
    cfg, _ = gemm_w8a8.split_plan(cfg, k)
    return (f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} split{cfg.split_k} w{cfg.num_warps} s{cfg.num_stages}"
            + ("" if per_tile else " gathered-scales"))


def check(out: torch.Tensor, ref: torch.Tensor, exact: bool) -> dict:
    if exact:
        return {"exact": bool(torch.equal(out, ref))}
    err = ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
    return {"rel_err": err}


# ---------------------------------------------------------------------------------------------- main

def run(args) -> dict:
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --smoke to check the script on the CPU)")
    torch.manual_seed(0)
    timer = Timer(device, args.reps)
    bandwidth = measure_bandwidth(timer)
    peaks = measure_peaks(timer)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    ms = [1, 3, 65] if args.smoke else args.ms
    rows = []
    with torch.inference_mode():
        for shape, (n, k) in shapes.items():
            weights = make_weights(n, k, device)
            for m in ms:
                ops = make_operands(weights, m, device)
                for name, (fn, ref_fn, exact, nbytes, kind) in variants(n, k, m, ops, m > DECODE_MAX_M).items():
                    out = fn()
                    status = check(out, ref_fn(), exact) if ref_fn is not None else {}
                    us, host_us = timer(fn)
                    flops = 2 * m * n * k
                    mem_floor = nbytes / bandwidth * 1e6
                    compute_floor = flops / peaks[kind] * 1e6
                    rows.append({
                        "shape": shape, "N": n, "K": k, "M": m, "kernel": name, "config": config_of(name, m, n, k, device),
                        "time_us": us, "host_launch_us": host_us, "bytes": nbytes, "GB_per_s": nbytes / us / 1e3, "TFLOP_per_s": flops / us / 1e6,
                        "memory_floor_us": mem_floor, "compute_floor_us": compute_floor,
                        "efficiency": max(mem_floor, compute_floor) / us, **status,
                    })
                    print(f"{shape:22s} M={m:5d} {name:22s} {us:9.1f} us  floor {max(mem_floor, compute_floor):8.1f} us"
                          f"  {status}", flush=True)
                del ops
            del weights
    for row in rows:  # speed-up over cuBLAS fp16 at the same shape
        base = next(r["time_us"] for r in rows if r["shape"] == row["shape"] and r["M"] == row["M"]
                    and r["kernel"].startswith("torch"))
        row["speedup_vs_fp16"] = base / row["time_us"]
    return {"environment": environment(device), "bandwidth_GB_per_s": bandwidth / 1e9,
            "peak_TFLOP_per_s": {"fp16": peaks["fp16"] / 1e12, "int8": peaks["int8"] / 1e12},
            "int8_peak_source": peaks["int8_source"], "reps": args.reps, "group_size": GROUP, "rows": rows}


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'interpreter'})"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sms": torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# GEMM kernels on {env['gpu']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, {env['date']}; median of {result['reps']} "
        f"calls after an L2 flush. Measured: copy bandwidth {result['bandwidth_GB_per_s']:.0f} GB/s, "
        f"fp16 {result['peak_TFLOP_per_s']['fp16']:.0f} TFLOP/s, int8 {result['peak_TFLOP_per_s']['int8']:.0f} TOP/s "
        f"({result['int8_peak_source']}). W4 group size {result['group_size']}.",
        "",
        "| shape | M | kernel | config | time (us) | floor (us) | efficiency | GB/s | vs fp16 | host launch (us) | check |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        chk = ("exact" if r["exact"] else "MISMATCH") if "exact" in r else (
            f"rel err {r['rel_err']:.1e}" if "rel_err" in r else "")
        floor = max(r["memory_floor_us"], r["compute_floor_us"])
        bound = "mem" if r["memory_floor_us"] >= r["compute_floor_us"] else "compute"
        lines.append(f"| {r['shape']} | {r['M']} | {r['kernel']} | {r['config']} | {r['time_us']:.1f} | "
                     f"{floor:.1f} ({bound}) | {r['efficiency']:.0%} | {r['GB_per_s']:.0f} | "
                     f"{r['speedup_vs_fp16']:.2f}x | {r['host_launch_us']:.0f} | {chk} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed calls per kernel and shape (median)")
    parser.add_argument("--ms", type=lambda s: [int(v) for v in s.split(",")], default=[1, 16, 1024, 4096],
                        help="comma-separated M values")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in Triton's interpreter on the CPU")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", result["environment"]["gpu"].lower()).strip("-")
    stem = args.out / f"kernels_gemm_{slug}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
