"""Latency, size and memory of a model (full precision or quantized), for ``quamba profile`` and benchmarks/e2e.py.

    TTFT  time to first token: allocate the cache, prefill ``prompt_len`` tokens, choose the first token
    TPOT  time per output token: one decode step (model step + argmax) on a prefilled cache
    TTLT  time to last token: ``generate`` of ``gen_len`` tokens after a ``prompt_len`` prompt (greedy, no eos)

Each is measured ``repeats`` times after ``warmup`` untimed runs and summarised as median, p10, p90 (and mean, min,
max) in milliseconds. On CUDA every sample is timed with CUDA events (device time, no host sync between decode
steps); elsewhere with ``time.perf_counter`` (CPU ops are synchronous). Prompts are random token ids (seeded).
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .errors import QuambaError
from .generation import CUDAGraphStep, generate
from .models.mamba import CausalConv1d, GatedRMSNorm, RMSNorm
from .modules.conv import QCausalConv1d
from .modules.linear import W4A8Linear, W4A16Linear, W8A8Linear
from .modules.mamba2 import QSSDScan
from .modules.norm import QGatedRMSNorm, QRMSNorm
from .modules.scan import QSelectiveScan

METRICS = ("ttft", "tpot", "ttlt", "size", "memory")
PARTS = ("embedding", "linear", "conv", "scan", "norm", "lm_head", "other")
_LINEAR = (nn.Linear, W8A8Linear, W4A8Linear, W4A16Linear)
_CONV = (CausalConv1d, QCausalConv1d)
_NORM = (RMSNorm, GatedRMSNorm, QRMSNorm, QGatedRMSNorm)
_SCAN = (QSelectiveScan, QSSDScan)
_SCAN_PARAMS = ("A_log", "D", "dt_bias")  # the fp mixers' own scan parameters


@dataclass
class ProfileSettings:
    prompt_len: int = 1024
    gen_len: int = 128
    batch_size: int = 1
    repeats: int = 100
    warmup: int = 3
    cache_graph: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("prompt_len", "gen_len", "batch_size", "repeats"):
            if int(getattr(self, name)) < 1:
                raise QuambaError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise QuambaError(f"warmup must be >= 0, got {self.warmup}")


# ---- statistics and timing ------------------------------------------------------------------------------------------
def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict:
    """{median, p10, p90, mean, min, max, n} of a list of milliseconds."""
    s = sorted(samples_ms)
    return {"median": statistics.median(s), "p10": _percentile(s, 0.1), "p90": _percentile(s, 0.9),
            "mean": statistics.fmean(s), "min": s[0], "max": s[-1], "n": len(s)}


def timed(fn, n: int, device: torch.device) -> list[float]:
    """Run ``fn`` n times; the milliseconds of each run (CUDA events on a GPU, perf_counter elsewhere)."""
    if device.type == "cuda":
        pairs = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in pairs]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _prompt(model, settings: ProfileSettings) -> torch.Tensor:
    g = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, model.config.vocab_size, (settings.batch_size, settings.prompt_len), generator=g)
    return ids.to(model.device)


# ---- latency ------------------------------------------------------------------------------------------------------
def _first_token(model, settings: ProfileSettings):
    """What TTFT times, as a call: cache allocation + prefill of the prompt [B, prompt_len] + argmax."""
    ids = _prompt(model, settings)

    def first_token():
        cache = model.allocate_cache(settings.batch_size)
        return model(ids, cache, num_last_tokens=1).logits[:, -1].argmax(-1)

    return first_token


@torch.no_grad()
def time_ttft(model, settings: ProfileSettings) -> list[float]:
    """Milliseconds from a prompt [B, prompt_len] to the first token: cache allocation + prefill + argmax."""
    first_token = _first_token(model, settings)
    for _ in range(settings.warmup):
        first_token()
    return timed(first_token, settings.repeats, model.device)


@torch.no_grad()
def time_ttft_graph(model, settings: ProfileSettings) -> tuple[list[float], bool]:
    """TTFT's device time without the host: the same first token (cache allocation + prefill + argmax) for this
    fixed prompt captured once as a CUDA graph, each sample one replay. Eager prefill launches hundreds of kernels
    and the host's launch work can exceed the GPU's; a serving stack that captures prefill graphs per prompt length
    pays this instead. Returns (milliseconds, whether the replay's token equals the eager call's)."""
    first_token = _first_token(model, settings)
    eager = first_token()
    device = model.device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # compile kernels, settle the allocator, outside the capture
        for _ in range(max(2, settings.warmup)):
            first_token()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        token = first_token()
    graph.replay()
    same = bool(torch.equal(token, eager))
    return timed(graph.replay, settings.repeats, device), same


@torch.no_grad()
def time_tpot(model, settings: ProfileSettings, graph: CUDAGraphStep | None = None) -> list[float]:
    """Milliseconds per decode step (model step + argmax) after a prompt_len prefill, one sample per step."""
    ids = _prompt(model, settings)
    cache = model.allocate_cache(settings.batch_size)
    tok = model(ids, cache, num_last_tokens=1).logits[:, -1].argmax(-1)
    if graph is not None:
        graph.load(cache)
        step = graph
    else:
        def step(t):
            return model(t[:, None], cache).logits[:, -1]
    state = {"tok": tok}

    def one_step():
        state["tok"] = step(state["tok"]).argmax(-1)

    for _ in range(settings.warmup):
        one_step()
    return timed(one_step, settings.repeats, model.device)


@torch.no_grad()
def time_ttlt(model, settings: ProfileSettings, graph: CUDAGraphStep | None = None) -> list[float]:
    """Milliseconds for a whole greedy generation of gen_len tokens after a prompt_len prompt (no eos)."""
    ids = _prompt(model, settings)

    def run():
        return generate(model, ids, settings.gen_len, temperature=0.0, cache_graph=graph or False)

    for _ in range(min(settings.warmup, 1)):  # one whole generation already warms every kernel
        run()
    return timed(run, settings.repeats, model.device)


# ---- size and memory -------------------------------------------------------------------------------------------------
def _part_of(path: str, module: nn.Module, tensor_name: str) -> str:
    if path == "lm_head" or path.startswith("lm_head."):
        return "lm_head"
    if path.startswith("backbone.embedding"):
        return "embedding"
    if isinstance(module, _SCAN) or tensor_name in _SCAN_PARAMS:
        return "scan"
    for part, types in (("linear", _LINEAR), ("conv", _CONV), ("norm", _NORM)):
        if isinstance(module, types):
            return part
    return "other"


def size_breakdown(model) -> dict:
    """Bytes and elements of every parameter and buffer, by part: embedding, linear (in/x/dt/out projections),
    conv, scan (A_log, D, dt_bias and a quantized scan's scales), norm, lm_head (0 when tied to the embedding),
    other (e.g. Hadamard scales). Shared tensors count once."""
    parts = {p: {"bytes": 0, "elements": 0} for p in PARTS}
    seen = set()
    for path, module in model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, t in tensors:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            part = parts[_part_of(path, module, name)]
            part["bytes"] += t.numel() * t.element_size()
            part["elements"] += t.numel()
    total = sum(p["bytes"] for p in parts.values())
    tied = getattr(model.lm_head, "weight", None) is getattr(model.backbone.embedding, "weight", object())
    return {"parts": parts, "total_bytes": total, "lm_head_tied": bool(tied)}


def state_bytes(model, batch_size: int) -> dict:
    """Bytes of the decoding state (conv + SSM, every layer) for ``batch_size`` rows: constant in sequence length."""
    cache = model.allocate_cache(batch_size)

    def nbytes(s):
        ts = [s.q, s.scale] if hasattr(s, "q") else [s]
        return sum(t.numel() * t.element_size() for t in ts)

    conv, ssm = sum(map(nbytes, cache.conv_states)), sum(map(nbytes, cache.ssm_states))
    return {"batch_size": batch_size, "conv_bytes": conv, "ssm_bytes": ssm, "total_bytes": conv + ssm}


@torch.no_grad()
def peak_memory(model, settings: ProfileSettings, graph: CUDAGraphStep | None = None) -> dict:
    """CUDA: bytes allocated by the model at rest, and the peak during one generation of gen_len tokens after a
    prompt_len prompt at batch_size rows. Elsewhere: the process's peak resident set (since start, not per run)."""
    device = model.device
    if device.type != "cuda":
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)
        return {"device": str(device), "process_peak_rss_bytes": rss,
                "note": "CPU: peak resident set of the whole process, not of this model alone"}
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    at_rest = torch.cuda.memory_allocated(device)
    generate(model, _prompt(model, settings), settings.gen_len, temperature=0.0, cache_graph=graph or False)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"device": str(device), "allocated_at_rest_bytes": at_rest, "peak_bytes": peak,
            "peak_above_rest_bytes": peak - at_rest}


# ---- all together --------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": p.name, "memory_bytes": p.total_memory, "torch_cuda": torch.version.cuda}
    return {"type": device.type, "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def profile_model(model, metrics=METRICS, settings: ProfileSettings | None = None, progress=None) -> dict:
    """Measure ``metrics`` (a subset of ttft, tpot, ttlt, size, memory) of ``model``; a JSON-able dict.
    ``progress(str)`` is told which metric is running."""
    settings = settings or ProfileSettings()
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise QuambaError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    say = progress or (lambda _msg: None)
    graph = None
    if settings.cache_graph and {"tpot", "ttlt", "memory"} & set(metrics):
        say("capturing the decode step as a CUDA graph")
        graph = CUDAGraphStep(model, settings.batch_size)
    result = {"settings": asdict(settings), "device": device_info(model.device), "dtype": str(model.dtype)}
    if "size" in metrics:
        result["size"] = size_breakdown(model)
        result["size"]["state"] = state_bytes(model, settings.batch_size)
    if "ttft" in metrics:
        say(f"TTFT: prefill {settings.prompt_len} tokens x{settings.batch_size}, {settings.repeats} repeats")
        result["ttft_ms"] = summarize(time_ttft(model, settings))
        if settings.cache_graph:
            say("TTFT of the prefill replayed from a CUDA graph")
            try:
                samples, same = time_ttft_graph(model, settings)
            except RuntimeError as e:  # a prefill op that cannot be captured: say so, keep the other metrics
                result["ttft_graph_error"] = str(e).splitlines()[0][:300]
            else:
                result["ttft_graph_ms"] = summarize(samples)
                result["ttft_graph_token_matches_eager"] = same
    if "tpot" in metrics:
        say(f"TPOT: {settings.repeats} decode steps at batch {settings.batch_size}")
        result["tpot_ms"] = summarize(time_tpot(model, settings, graph))
        result["decode_tokens_per_s"] = settings.batch_size * 1e3 / result["tpot_ms"]["median"]
    if "ttlt" in metrics:
        say(f"TTLT: {settings.gen_len} tokens after {settings.prompt_len}, {settings.repeats} repeats")
        result["ttlt_ms"] = summarize(time_ttlt(model, settings, graph))
    if "memory" in metrics:
        result["memory"] = peak_memory(model, settings, graph)
    return result
