"""Timing and hardware floors shared by the kernel benchmarks.

Device time is measured on a CUDA graph of the call (captured once, replayed after an L2 flush, CUDA events around
each replay): the graph holds exactly the kernels of the call, so the figure is the GPU's time and not Python's,
as in a decode loop that replays a captured step. ``Timer.stream`` times many calls back to back in one graph
(rotating operand copies larger than L2), the per-kernel cost inside a decode step. The host time of an eager
call (Python, launcher checks, the launch itself) is reported beside it. On the CPU (``--smoke`` runs in Triton's interpreter) both are wall time.
"""
from __future__ import annotations

import platform
import re
import statistics
import time
from datetime import datetime, timezone

import torch

FLUSH_BYTES = 512 * 2 ** 20  # > an H100's 50 MB L2: weights read by a decode step would otherwise stay cached


class Timer:
    """``timer(fn) -> (device_us, host_us)``: medians over ``reps`` after ``warmup`` eager calls."""

    def __init__(self, device: torch.device, reps: int = 30, warmup: int = 3, graph: bool = True):
        self.device, self.reps, self.warmup, self.graph = torch.device(device), reps, warmup, graph
        self.cuda = self.device.type == "cuda"
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=self.device) if self.cuda else None

    def host_us(self, fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)

    def __call__(self, fn, reps: int | None = None, graph: bool | None = None) -> tuple[float, float]:
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        host = self.host_us(fn, min(reps, 10))
        if not self.cuda:
            return host, host
        call = fn
        if self.graph if graph is None else graph:
            call = _captured(fn, self.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            call()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events), host


    def stream(self, fns, reps: int | None = None) -> float:
        """Per-call device time of ``fns`` run back to back in one CUDA graph, each on its own operands (together
        larger than L2, so every call reads cold weights): the steady state of a decode step's kernel sequence,
        without the fixed cost of replaying a graph that a one-call measurement carries (~4-5 us on an H100)."""
        reps = reps or self.reps
        if not self.cuda:
            return self(fns[0], reps)[0]
        for fn in fns:
            fn()
        replay = _captured(lambda: [fn() for fn in fns], self.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            replay()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events) / len(fns)


def _captured(fn, device: torch.device):
    """fn captured in a CUDA graph (warmed up on a side stream first, as capture requires); returns replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_bandwidth(timer: Timer) -> float:
    """Bytes per second of a large device-to-device copy (read + write): the memory floor's denominator."""
    n = 2 ** 28 if timer.cuda else 2 ** 22  # 1 GiB of fp32 on the GPU
    src = torch.empty(n, dtype=torch.float32, device=timer.device)
    dst = torch.empty_like(src)
    us, _ = timer(lambda: dst.copy_(src), reps=10, graph=False)
    return 2 * src.numel() * 4 / (us * 1e-6)


def measure_peaks(timer: Timer) -> dict:
    """Measured peak fp16 FLOP/s (torch.matmul) and int8 OP/s (torch._int_mm), 8192^3 (CPU: tiny, meaningless)."""
    s = 8192 if timer.cuda else 256
    a = torch.randn(s, s, device=timer.device).half()
    b = torch.randn(s, s, device=timer.device).half()
    peaks = {"fp16": 2 * s ** 3 / (timer(lambda: a @ b, reps=10, graph=False)[0] * 1e-6)}
    a8 = torch.randint(-128, 128, (s, s), dtype=torch.int8, device=timer.device)
    b8 = torch.randint(-128, 128, (s, s), dtype=torch.int8, device=timer.device).T  # column-major, as cuBLASLt wants
    try:
        peaks["int8"] = 2 * s ** 3 / (timer(lambda: torch._int_mm(a8, b8), reps=10, graph=False)[0] * 1e-6)
        peaks["int8_source"] = "torch._int_mm"
    except (RuntimeError, AttributeError):
        peaks["int8"] = 2 * peaks["fp16"]
        peaks["int8_source"] = "2 x measured fp16 (torch._int_mm unavailable)"
    return peaks


def environment(device: torch.device) -> dict:
    import triton

    device = torch.device(device)
    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'interpreter'})"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sms": torch.cuda.get_device_properties(device).multi_processor_count if cuda else None}


def gpu_slug(gpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
