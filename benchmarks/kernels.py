"""Benchmark every kernel: the full-precision (fp16) ops against their quantized (int8) counterparts, and each
against its floor, at the shapes of mamba-2.8b and mamba2-2.7b for prefill (batch 1, 1024 tokens) and decode (batch 1
and 16, one token).

Ops (each timed through the module or op the models call, so the figures include the launcher):
    norm       residual add + RMSNorm (fp16 out)        vs  QRMSNorm.add_forward (int8 out)
    conv       causal conv1d + SiLU, prefill / update   vs  QCausalConv1d forward / step (int8 in and out)
    scan       Mamba1 selective scan / state update     vs  QSelectiveScan forward / step (int8 inputs)
    ssd        Mamba2 chunked SSD / state update        vs  QSSDScan forward / step (int8 inputs)
    gated norm Mamba2 gated RMSNorm (fp16 z)            vs  QGatedRMSNorm (int8 z)
    hadamard   (no fp16 counterpart: the fp16 model has none) QHadamard: Hadamard transform + int8 quantization
    norm+had   Mamba2 gated RMSNorm (fp16 z)            vs  the A8 mixer's gated norm (int8 z) + Hadamard + int8 as it
               runs it (one kernel where the norm groups divide the 2^k part of d_inner, else the two below), and
               the two kernels (QGatedRMSNorm then QHadamard) as "int8 two kernels"
    embedding  nn.Embedding (fp16)                      vs  QEmbedding (int8 rows, int4 rows)
    gemm       cuBLAS fp16 vs W8A8 / W4A8 / W4A16 (decode GEMV and tensor-core kernels): --gemm runs
               benchmarks/kernels_gemm.py in the same process, which writes kernels_gemm_<gpu>.{json,md}

Timing (benchmarks/common.py): device time of a CUDA graph of the call, replayed after an L2 flush, median of --reps;
the host time of an eager call beside it. Floor: bytes the op must move (inputs read once, outputs and state written
once) / the bandwidth of a large device copy; for the chunked SSD also its matmul FLOPs / the measured fp16 peak;
efficiency = floor / time. Every kernel's output is checked once against the plain-PyTorch reference path
(QUAMBA_FORCE_REFERENCE=1): int8 outputs by the share of elements off by one step and the largest difference,
float outputs by the norm-wise relative error.

    python benchmarks/kernels.py            # on a GPU: writes benchmarks/results/kernels_<gpu>.{json,md}
    python benchmarks/kernels.py --gemm     # and the GEMM rows (kernels_gemm.py) in the same run
    python benchmarks/kernels.py --smoke    # tiny shapes through Triton's interpreter on the CPU (checks the script)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from common import Timer, environment, gpu_slug, measure_bandwidth, measure_peaks  # noqa: E402
from quamba.models.mamba import CausalConv1d, GatedRMSNorm, RMSNorm  # noqa: E402
from quamba.modules.conv import QCausalConv1d  # noqa: E402
from quamba.modules.embedding import QEmbedding  # noqa: E402
from quamba.modules.hadamard import QHadamard  # noqa: E402
from quamba.modules.mamba2 import QSSDScan  # noqa: E402
from quamba.modules.norm import QGatedRMSNorm, QRMSNorm  # noqa: E402
from quamba.modules.scan import QSelectiveScan  # noqa: E402
from quamba.ops import selective_scan, selective_state_update, ssd_chunked, ssd_state_update  # noqa: E402
from quamba.ops.hadamard import qgated_norm_hadamard_quant  # noqa: E402
from quamba.ops.triton.selective_scan import _selective_scan_launch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    arch: str
    d_model: int
    d_inner: int
    d_state: int
    nheads: int = 0
    headdim: int = 0
    ngroups: int = 1
    chunk: int = 256
    vocab: int = 50288
    d_conv: int = 4

    @property
    def conv_dim(self) -> int:
        return self.d_inner + (2 * self.ngroups * self.d_state if self.arch == "mamba2" else 0)


SHAPES = [Shape("mamba-2.8b", "mamba1", 2560, 5120, 16),
          Shape("mamba2-2.7b", "mamba2", 2560, 5120, 128, nheads=80, headdim=64)]
SMOKE_SHAPES = [Shape("smoke-mamba1", "mamba1", 48, 96, 8, vocab=300),
                Shape("smoke-mamba2", "mamba2", 48, 96, 16, nheads=6, headdim=16, chunk=16, vocab=300)]


@dataclass
class Case:
    """One op at one shape: ``fp16`` and ``quant`` are calls (None where there is none) and their byte counts;
    ``more`` holds further quantized variants as (name, call, bytes)."""
    op: str
    fp16: object
    quant: object
    fp16_bytes: int
    quant_bytes: int
    flops: int = 0
    quant_name: str = "int8"
    more: tuple = ()

    def variants(self):
        return (("fp16", self.fp16, self.fp16_bytes), (self.quant_name, self.quant, self.quant_bytes), *self.more)


@contextlib.contextmanager
def reference_path():
    old = os.environ.get("QUAMBA_FORCE_REFERENCE")
    os.environ["QUAMBA_FORCE_REFERENCE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QUAMBA_FORCE_REFERENCE")
        else:
            os.environ["QUAMBA_FORCE_REFERENCE"] = old


def first(out):
    return out[0] if isinstance(out, tuple) else out


def check(fn) -> dict:
    """The kernel's output against the reference path's, on the same inputs (state-updating calls are given
    fresh copies by their builders, so calling twice is safe)."""
    reset = getattr(fn, "reset", lambda: None)
    reset()
    out = first(fn())
    reset()
    with reference_path():
        ref = first(fn())
    if out.dtype == torch.int8:
        diff = (out.int() - ref.int()).abs()
        return {"int8_max_diff": int(diff.max()), "int8_off_share": float((diff > 0).float().mean())}
    err = ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
    return {"rel_err": err}


# ---- operands -------------------------------------------------------------------------------------------------------
def rand_q(*shape, device):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def channels_last(b, d, l, dtype, device, q=False):
    """[B, D, L] as the models pass it: the transpose of a [B, L, D] tensor."""
    t = rand_q(b, l, d, device=device) if q else torch.randn(b, l, d, device=device).to(dtype)
    return t.transpose(1, 2)


class with_state:
    """A decode call on states it updates in place. Timed as it is (the work of a step does not depend on the
    state's values); ``reset()`` restores the states so that the kernel and the reference see the same inputs."""

    def __init__(self, step, *states):
        self.step, self.states, self.saved = step, states, [s.clone() for s in states]

    def reset(self):
        for s, v in zip(self.states, self.saved):
            s.copy_(v)

    def __call__(self):
        return self.step()


# ---- the ops --------------------------------------------------------------------------------------------------------
def norm_case(s: Shape, b: int, l: int, dev) -> Case:
    rows = b * l
    norm = RMSNorm(s.d_model, device=dev, dtype=torch.float16)
    qnorm = QRMSNorm.from_float(norm, 0.05, torch.float16).to(dev)
    hidden = torch.randn(b, l, s.d_model, device=dev).half()
    residual = torch.randn(b, l, s.d_model, device=dev)
    quant = (lambda: qnorm.add_forward(hidden, residual, True)) if hasattr(qnorm, "add_forward") else None
    return Case("add + rmsnorm", lambda: norm.add_forward(hidden, residual, True), quant,
                rows * s.d_model * (2 + 4 + 4 + 2), rows * s.d_model * (2 + 4 + 4 + 1))


def conv_case(s: Shape, b: int, l: int, dev, decode: bool) -> Case:
    d, k = s.conv_dim, s.d_conv
    conv = CausalConv1d(d, k, device=dev, dtype=torch.float32)
    nn.init.normal_(conv.weight, std=0.3)
    nn.init.normal_(conv.bias, std=0.1)
    qconv = QCausalConv1d.from_float(conv, torch.tensor(0.02), torch.tensor(0.02)).to(dev)
    conv = conv.half()
    if decode:
        x, xq = torch.randn(b, d, device=dev).half(), rand_q(b, d, device=dev)
        st, stq = torch.randn(b, d, k, device=dev).half(), rand_q(b, d, k, device=dev)
        return Case("conv1d update", with_state(lambda: conv.step(x, st), st), with_state(lambda: qconv.step(xq, stq), stq),
                    b * d * (2 + 2 + 2 * 2 * k), b * d * (1 + 1 + 2 * k))
    x, xq = channels_last(b, d, l, torch.float16, dev), channels_last(b, d, l, None, dev, q=True)
    return Case("conv1d", lambda: conv(x), lambda: qconv(xq), 2 * b * l * d * 2, 2 * b * l * d)


def scan_case(s: Shape, b: int, l: int, dev, decode: bool) -> Case:
    d, n = s.d_inner, s.d_state
    q = QSelectiveScan(d, n, "float16").to(dev)
    q.A_log.copy_(torch.log(torch.arange(1, n + 1, device=dev).float()).expand(d, n))
    q.D.normal_()
    q.dt_bias.uniform_(-4, -2)
    for name, v in zip(q.SCALES, (0.02, 0.01, 0.02, 0.02, 0.03)):
        getattr(q, name).fill_(v)
    A = -torch.exp(q.A_log)
    if decode:
        x, dt, z = (torch.randn(b, d, device=dev).half() for _ in range(3))
        B, C = (torch.randn(b, n, device=dev).half() for _ in range(2))
        xq, dtq, zq = (rand_q(b, d, device=dev) for _ in range(3))
        Bq, Cq = (rand_q(b, n, device=dev) for _ in range(2))
        h, hq = torch.randn(b, d, n, device=dev), torch.randn(b, d, n, device=dev)
        fp = with_state(lambda: selective_state_update(h, x, dt, A, B, C, q.D, z, q.dt_bias, True), h)
        qf = with_state(lambda: q.step(xq, dtq, Bq, Cq, zq, hq), hq)
        return Case("selective state update", fp, qf, b * (d * (3 * 2 + 2) + 2 * n * 2 + 2 * d * n * 4),
                    b * (d * (3 + 2) + 2 * n + 2 * d * n * 4))
    u, dt, z = (channels_last(b, d, l, torch.float16, dev) for _ in range(3))
    B, C = (channels_last(b, n, l, torch.float16, dev) for _ in range(2))
    uq, dtq, zq = (channels_last(b, d, l, None, dev, q=True) for _ in range(3))
    Bq, Cq = (channels_last(b, n, l, None, dev, q=True) for _ in range(2))
    fp = lambda: selective_scan(u, dt, A, B, C, q.D, z, q.dt_bias, True)  # noqa: E731
    fp_bytes = b * l * (4 * d * 2 + 2 * n * 2)
    seq = lambda: _selective_scan_launch(u, dt, A, B, C, q.D, z, q.dt_bias, True)  # noqa: E731
    return Case("selective scan", fp, lambda: q(uq, dtq, Bq, Cq, zq), fp_bytes, b * l * (d * (3 + 2) + 2 * n),
                more=(("fp16 token-by-token", seq, fp_bytes),))


def scan_sweep(timer: Timer, dev, l: int, s: Shape) -> list[dict]:
    """The chunked selective scan's tile candidates at a Mamba1 prefill shape (fp16 and int8 inputs)."""
    from quamba.ops.triton.selective_scan_parallel import SWEEP, selective_scan_parallel_launch as launch

    d, n = s.d_inner, s.d_state
    A = -torch.rand(d, n, device=dev) - 0.5
    D, bias = torch.randn(d, device=dev), torch.rand(d, device=dev) - 4
    fp = [channels_last(1, d, l, torch.float16, dev) for _ in range(3)] + \
        [channels_last(1, n, l, torch.float16, dev) for _ in range(2)]
    q = [channels_last(1, d, l, None, dev, q=True) for _ in range(3)] + \
        [channels_last(1, n, l, None, dev, q=True) for _ in range(2)]
    scales = tuple(torch.tensor(v, device=dev) for v in (0.02, 0.01, 0.02, 0.02, 0.03))
    rows = []
    for bd, bl, nw in SWEEP:
        for kind, (u, dt, z, B, C), extra in (("fp16", fp, {}), ("int8", q, {"scales": scales})):
            us, _ = timer(lambda: launch(u, dt, A, B, C, D, z, bias, True, block_d=bd, block_l=bl, num_warps=nw,
                                         **extra))
            rows.append({"block_d": bd, "block_l": bl, "num_warps": nw, "inputs": kind, "time_us": us})
            print(f"scan sweep {kind} block_d={bd} block_l={bl} warps={nw}: {us:.1f} us", flush=True)
    return rows


def ssd_case(s: Shape, b: int, l: int, dev, decode: bool) -> Case:
    h, p, g, n = s.nheads, s.headdim, s.ngroups, s.d_state
    q = QSSDScan(h, p, g, n, s.chunk, dtype="float16").to(dev)
    q.A_log.copy_(torch.log(torch.linspace(1, 16, h, device=dev)))
    q.dt_bias.uniform_(-4, -2)
    q.D.normal_()
    q.x_scale.fill_(0.02), q.dt_scale.fill_(0.01), q.B_scale.fill_(0.02), q.C_scale.fill_(0.02)
    A = -torch.exp(q.A_log)
    if decode:
        x, xq = torch.randn(b, h, p, device=dev).half(), rand_q(b, h, p, device=dev)
        dt, dtq = torch.randn(b, h, device=dev).half(), rand_q(b, h, device=dev)
        B, C = (torch.randn(b, g, n, device=dev).half() for _ in range(2))
        Bq, Cq = (rand_q(b, g, n, device=dev) for _ in range(2))
        st, stq = torch.randn(b, h, p, n, device=dev), torch.randn(b, h, p, n, device=dev)
        fp = with_state(lambda: ssd_state_update(st, x, dt, A, B, C, q.D, q.dt_bias, True, q.dt_limit), st)
        qf = with_state(lambda: q.step(xq, dtq, Bq, Cq, stq), stq)
        state_bytes = 2 * b * h * p * n * 4
        return Case("ssd state update", fp, qf, state_bytes + b * (2 * h * p * 2 + 2 * g * n * 2),
                    state_bytes + b * (h * p * (1 + 2) + 2 * g * n))
    x, xq = torch.randn(b, l, h, p, device=dev).half(), rand_q(b, l, h, p, device=dev)
    dt, dtq = torch.randn(b, l, h, device=dev).half(), rand_q(b, l, h, device=dev)
    B, C = (torch.randn(b, l, g, n, device=dev).half() for _ in range(2))
    Bq, Cq = (rand_q(b, l, g, n, device=dev) for _ in range(2))
    fp = lambda: ssd_chunked(x, dt, A, B, C, s.chunk, q.D, q.dt_bias, True, q.dt_limit)  # noqa: E731
    # matmuls: C B^T within chunks, (CB * decay) @ x, chunk states x^T B, and C @ carried state
    cl = min(s.chunk, l)
    flops = 2 * b * l * (g * cl * n + h * cl * p + 2 * h * p * n)
    return Case("ssd chunked scan", fp, lambda: q(xq, dtq, Bq, Cq), b * l * (2 * h * p * 2 + 2 * g * n * 2 + h * 2),
                b * l * (h * p * (1 + 2) + 2 * g * n + h), flops)


def gated_norm_case(s: Shape, b: int, l: int, dev) -> Case:
    d, gs = s.d_inner, s.d_inner // s.ngroups
    norm = GatedRMSNorm(d, gs, device=dev, dtype=torch.float16)
    qnorm = QGatedRMSNorm(d, gs, dtype="float16").to(dev)
    qnorm.z_scale.fill_(0.03)
    y, z, zq = torch.randn(b, l, d, device=dev).half(), torch.randn(b, l, d, device=dev).half(), rand_q(b, l, d, device=dev)
    return Case("gated rmsnorm", lambda: norm(y, z), lambda: qnorm(y, zq), b * l * d * 3 * 2, b * l * d * (2 + 1 + 2))


def hadamard_case(s: Shape, b: int, l: int, dev) -> Case:
    had = QHadamard(s.d_inner).to(dev)
    had.output_scale.fill_(0.05)
    y = torch.randn(b, l, s.d_inner, device=dev).half()
    return Case("hadamard + quantize", None, lambda: had(y), 0, b * l * s.d_inner * (2 + 1))


def norm_hadamard_case(s: Shape, b: int, l: int, dev) -> Case:
    """The A8 Mamba2 mixer's output path: gated norm (int8 z) -> Hadamard -> int8 as the mixer runs it
    (``A8Mamba2Mixer._norm_had``: fused where the groups allow); the fp16 model's counterpart is its gated norm."""
    d, gs = s.d_inner, s.d_inner // s.ngroups
    norm = GatedRMSNorm(d, gs, device=dev, dtype=torch.float16)
    qnorm = QGatedRMSNorm(d, gs, dtype="float16").to(dev)
    qnorm.z_scale.fill_(0.03)
    had = QHadamard(d).to(dev)
    had.output_scale.fill_(0.05)
    y, z = torch.randn(b, l, d, device=dev).half(), torch.randn(b, l, d, device=dev).half()
    zq = rand_q(b, l, d, device=dev)
    fused = lambda: qgated_norm_hadamard_quant(y, zq, qnorm.z_scale, qnorm.weight, qnorm.eps,  # noqa: E731
                                               qnorm.group_size, qnorm.norm_before_gate, had.output_scale)
    rows = b * l * d
    return Case("gated norm + hadamard + quantize", lambda: norm(y, z), fused, rows * 3 * 2, rows * (2 + 1 + 1),
                more=(("int8 two kernels", lambda: had(qnorm(y, zq)), rows * (2 + 1 + 2 + 2 + 1)),))


def embedding_case(s: Shape, b: int, l: int, dev) -> Case:
    emb = nn.Embedding(s.vocab, s.d_model, device=dev, dtype=torch.float16)
    ids = torch.randint(0, s.vocab, (b, l), device=dev)
    q8, q4 = (QEmbedding.from_float(emb, torch.float16, bits).to(dev) for bits in (8, 4))
    rows = b * l * s.d_model
    return Case("embedding", lambda: emb(ids), lambda: q8(ids), rows * 4, rows * 3 + b * l * 2,
                more=(("int4", lambda: q4(ids), rows * 5 // 2 + b * l * 2),))


def cases_for(s: Shape, b: int, l: int, dev) -> list[Case]:
    decode = l == 1
    out = [norm_case(s, b, l, dev), conv_case(s, b, l, dev, decode)]
    if s.arch == "mamba1":
        out.append(scan_case(s, b, l, dev, decode))
    else:
        out += [ssd_case(s, b, l, dev, decode), gated_norm_case(s, b, l, dev)]
    out.append(hadamard_case(s, b, l, dev))
    if s.arch == "mamba2":
        out.append(norm_hadamard_case(s, b, l, dev))
    return out + [embedding_case(s, b, l, dev)]


# ---- running --------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    dev = torch.device("cpu" if args.smoke else "cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --smoke to check the script on the CPU)")
    torch.manual_seed(0)
    timer = Timer(dev, 1 if args.smoke else args.reps, warmup=0 if args.smoke else 3)  # smoke: one call each
    bandwidth, peaks = measure_bandwidth(timer), measure_peaks(timer)
    phases = [("prefill", 1, 8), ("decode", 1, 1), ("decode", 4, 1)] if args.smoke else \
        [("prefill", 1, args.prompt_len), ("decode", 1, 1), ("decode", 16, 1)]
    rows = []
    with torch.inference_mode():
        for s in (SMOKE_SHAPES if args.smoke else SHAPES):
            for phase, b, l in phases:
                for case in cases_for(s, b, l, dev):
                    base = None
                    for variant, fn, nbytes in case.variants():
                        if fn is None:
                            continue
                        status = check(fn)
                        us, host = timer(fn)
                        mem = nbytes / bandwidth * 1e6
                        comp = case.flops / peaks["fp16"] * 1e6
                        base = us if variant == "fp16" else base
                        row = {"model": s.name, "op": case.op, "phase": phase, "batch": b, "tokens": l,
                               "variant": variant, "time_us": us, "host_us": host, "bytes": nbytes,
                               "memory_floor_us": mem, "compute_floor_us": comp,
                               "efficiency": max(mem, comp) / us, "GB_per_s": nbytes / us / 1e3,
                               "vs_fp16": (base / us) if base is not None else None, **status}
                        rows.append(row)
                        print(f"{s.name:12s} {phase:7s} b={b:<3d} {case.op:24s} {variant:5s} {us:9.1f} us "
                              f"floor {max(mem, comp):8.1f} us  {status}", flush=True)
    result = {"environment": environment(dev), "bandwidth_GB_per_s": bandwidth / 1e9,
              "peak_TFLOP_per_s": {"fp16": peaks["fp16"] / 1e12, "int8": peaks["int8"] / 1e12},
              "reps": timer.reps, "prompt_len": args.prompt_len, "rows": rows}
    if args.sweep:
        with torch.inference_mode():
            result["scan_sweep"] = scan_sweep(timer, dev, 24 if args.smoke else args.prompt_len,
                                              (SMOKE_SHAPES if args.smoke else SHAPES)[0])
    return result


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Kernels on {env['gpu']}", "",
             f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, {env['date']}. Device time of a CUDA "
             f"graph of each call after an L2 flush, median of {result['reps']}; host = one eager call. Copy bandwidth "
             f"{result['bandwidth_GB_per_s']:.0f} GB/s, fp16 peak {result['peak_TFLOP_per_s']['fp16']:.0f} TFLOP/s. "
             "vs fp16: the fp16 op's time / this one's (same shape, same run). Check: against the PyTorch reference "
             "path (int8: largest difference in steps and share of elements that differ; float: relative error).",
             "", "| model | phase | batch | op | variant | time (us) | floor (us) | efficiency | vs fp16 | host (us) | check |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in result["rows"]:
        chk = (f"max {r['int8_max_diff']} step, {r['int8_off_share']:.1e} off" if "int8_max_diff" in r
               else f"rel {r['rel_err']:.1e}")
        vs = f"{r['vs_fp16']:.2f}x" if r["vs_fp16"] is not None else "-"
        floor = max(r["memory_floor_us"], r["compute_floor_us"])
        lines.append(f"| {r['model']} | {r['phase']} | {r['batch']} | {r['op']} | {r['variant']} | {r['time_us']:.1f} | "
                     f"{floor:.1f} | {r['efficiency']:.0%} | {vs} | {r['host_us']:.0f} | {chk} |")
    return "\n".join(lines) + "\n\nGEMMs (cuBLAS fp16 vs W8A8 / W4A8 / W4A16): kernels_gemm_<gpu>.md beside this file.\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="timed replays per kernel and shape (median)")
    parser.add_argument("--prompt-len", type=int, default=1024, help="tokens of the prefill rows")
    parser.add_argument("--gemm", action="store_true", help="also run benchmarks/kernels_gemm.py's rows")
    parser.add_argument("--sweep", action="store_true", help="also time the chunked selective scan's tile candidates")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in Triton's interpreter on the CPU")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"kernels_{gpu_slug(result['environment']['gpu'])}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")
    if args.gemm:
        import kernels_gemm

        kernels_gemm.main(["--out", str(args.out)] + (["--smoke"] if args.smoke else ["--ms", "1,16,1024,4096"]))


if __name__ == "__main__":
    main()
