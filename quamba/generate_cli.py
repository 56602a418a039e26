"""The ``quamba generate``, ``quamba chat`` and ``quamba profile`` subcommands: ``add_commands(subparsers)`` registers
them on the main parser (quamba/cli.py). User mistakes raise QuambaError (printed as one line by the CLI)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._args import torch_device as _device
from ._args import torch_dtype as _dtype
from .errors import QuambaError

# ---- shared helpers -------------------------------------------------------------------------------------------------


def _load(args):
    import quamba

    model = quamba.load_model(args.model, device=_device(args.device), dtype=_dtype(args.dtype))
    tok = quamba.load_tokenizer(args.tokenizer or args.model)
    return model, tok


def _sampling(args) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
            "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def _add_model_args(p):
    p.add_argument("model", help="checkpoint directory, bundled model name or hub id")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's own)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--dtype", help="cast full-precision weights: float32, float16 or bfloat16 (default: as stored)")


def _add_sampling_args(p, max_new_tokens: int):
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"most tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy; otherwise sampling (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample within the smallest set of tokens with this probability mass")
    p.add_argument("--min-p", type=float, help="drop tokens less likely than min-p x the most likely one")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the text (default 1.0: off)")
    p.add_argument("--seed", type=int, help="seed of the sampler: the same seed gives the same tokens")
    p.add_argument("--cache-graph", action="store_true",
                   help="replay the decode step as a CUDA graph (CUDA only)")


# ---- generate -------------------------------------------------------------------------------------------------------
def cmd_generate(args):
    from .generation import CUDAGraphStep, TextStreamer, generate

    model, tok = _load(args)
    prompts = args.prompt or ["The capital of France is"]
    ids = [tok(p)["input_ids"] for p in prompts]
    if any(len(i) == 0 for i in ids):
        raise QuambaError("--prompt encodes to no tokens; give a non-empty prompt")
    graph = CUDAGraphStep(model, len(ids)) if args.cache_graph else False  # captured before any output
    single = len(ids) == 1
    streamer = None
    if single:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
        streamer = TextStreamer(tok, sys.stdout)
    t0 = time.perf_counter()
    out = generate(model, ids, args.max_new_tokens, eos_token_id=tok.eos_token_id, streamer=streamer,
                   cache_graph=graph, vocab_size=len(tok), **_sampling(args))
    seconds = time.perf_counter() - t0
    n_new = sum(len(o) - len(i) for o, i in zip(out, ids))
    if single:
        sys.stdout.write("\n")
    else:
        for k, (o, i) in enumerate(zip(out, ids)):
            print(f"[{k}] {prompts[k]}{tok.decode(o[len(i):].tolist(), skip_special_tokens=True)}")
    print(f"{n_new} tokens in {seconds:.2f} s ({n_new / max(seconds, 1e-9):.1f} tokens/s, prefill included)",
          file=sys.stderr)
    return out


# ---- chat -----------------------------------------------------------------------------------------------------------
def cmd_chat(args, stdin=None, stdout=None):
    """Read user lines until EOF or /exit (/reset forgets the conversation); stream each reply."""
    from .generation import PLAIN_STOP, ChatSession, TextStreamer

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tok = _load(args)
    session = ChatSession(model, tok, system=args.system, max_new_tokens=args.max_new_tokens,
                          cache_graph=args.cache_graph, **_sampling(args))
    template = "the tokenizer's chat template" if session.templated else "a plain 'User: / Assistant:' template"
    print(f"chat with {args.model} using {template}; /exit or end of input quits, /reset forgets", file=sys.stderr)
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        message = line.rstrip("\n")
        if message.strip() == "/exit":
            break
        if message.strip() == "/reset":
            session.reset()
            continue
        if not message.strip():
            continue
        stdout.write("bot>")
        streamer = TextStreamer(tok, stdout, stop=() if session.templated else [PLAIN_STOP])
        session.send(message, streamer)
        stdout.write("\n")
        stdout.flush()
    return session


# ---- profile --------------------------------------------------------------------------------------------------------
def _read_config(path: str):
    from .models.config import MambaConfig
    from .models.io import parse_config

    p = Path(path)
    if not p.is_file():
        raise QuambaError(f"--config {path}: no such file")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise QuambaError(f"--config {path} is not valid JSON ({e})") from None
    if isinstance(raw, dict) and "arch" in raw:  # our own MambaConfig fields
        return MambaConfig.from_dict(raw)
    if not isinstance(raw, dict):
        raise QuambaError(f"--config {path} must hold a JSON object")
    return parse_config(raw, p.parent)


def _profile_model(args, device, dtype):
    """(model, description dict): a preset or --config builds random weights; anything else is loaded."""
    from .presets import PRESETS, build_random

    if args.config is not None:
        if args.model is not None:
            raise QuambaError("give either MODEL or --config, not both")
        config, name = _read_config(args.config), args.config
    elif args.model is None:
        raise QuambaError(f"give a model: a checkpoint, or an architecture name ({', '.join(PRESETS)}), or --config")
    elif args.model in PRESETS and not Path(args.model).exists():
        config, name = None, args.model
    else:
        import quamba

        model = quamba.load_model(args.model, device=device, dtype=dtype)  # dtype: full-precision models only
        return model, {"name": args.model, "random_weights": False}
    model = build_random(config if config is not None else name, device=device, dtype=dtype, seed=args.seed)
    return model, {"name": name, "random_weights": True}


def _quantize(model, args, dtype):
    import quamba

    options = {"calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen, "seed": args.seed,
               "dtype": str(dtype).removeprefix("torch.")}
    if args.w_bits is not None:
        options["w_bits"] = args.w_bits
    if args.a_bits is not None:
        options["a_bits"] = args.a_bits
    if args.group_size is not None:
        options["group_size"] = args.group_size
    options.update(quantize_embedding=args.quantize_embedding, quantize_lm_head=args.quantize_lm_head)
    return quamba.quantize(model, args.quantize, calib_data=None, **options)


def _fmt_ms(s: dict) -> str:
    return f"{s['median']:.3f} ms median (p10 {s['p10']:.3f}, p90 {s['p90']:.3f}, n {s['n']})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_profile(rec: dict) -> list[str]:
    m, st = rec["model"], rec["settings"]
    q = m.get("quantization")
    lines = [f"model        {m['name']}{' (random weights)' if m['random_weights'] else ''}: {m['arch']}, "
             f"{m['n_layer']} layers, d_model {m['d_model']}"
             + (f", {q['recipe']['type']} W{q['recipe']['data']['w_bits']}A{q['recipe']['data']['a_bits']}" if q else ""),
             f"device       {rec['device']['name']} ({rec['device']['type']}), {rec['dtype']}"]
    if "ttft_ms" in rec:
        lines.append(f"TTFT         {_fmt_ms(rec['ttft_ms'])}  [prompt {st['prompt_len']} x batch {st['batch_size']}]")
    if "ttft_graph_ms" in rec:
        lines.append(f"TTFT (graph) {_fmt_ms(rec['ttft_graph_ms'])}  [the prefill replayed from a CUDA graph]")
    if "tpot_ms" in rec:
        lines.append(f"TPOT         {_fmt_ms(rec['tpot_ms'])}  [{rec['decode_tokens_per_s']:.1f} tokens/s at batch "
                     f"{st['batch_size']}{', CUDA graph' if st['cache_graph'] else ''}]")
    if "ttlt_ms" in rec:
        lines.append(f"TTLT         {_fmt_ms(rec['ttlt_ms'])}  [{st['gen_len']} tokens after {st['prompt_len']}]")
    if "size" in rec:
        sz = rec["size"]
        parts = ", ".join(f"{k} {_mib(v['bytes'])}" for k, v in sz["parts"].items() if v["bytes"])
        lines.append(f"size         {_mib(sz['total_bytes'])}: {parts}" + (" (lm_head tied)" if sz["lm_head_tied"] else ""))
        s = sz["state"]
        lines.append(f"state        {_mib(s['total_bytes'])} at batch {s['batch_size']} (conv {_mib(s['conv_bytes'])}, "
                     f"ssm {_mib(s['ssm_bytes'])}), constant in sequence length")
    if "memory" in rec:
        mem = rec["memory"]
        if "peak_bytes" in mem:
            lines.append(f"memory       peak {_mib(mem['peak_bytes'])} ({_mib(mem['allocated_at_rest_bytes'])} at rest)")
        else:
            lines.append(f"memory       process peak RSS {_mib(mem['process_peak_rss_bytes'])} (CPU: whole process)")
    return lines


def cmd_profile(args) -> dict:
    import torch

    import quamba

    from .profiling import METRICS, ProfileSettings, profile_model

    if args.json and Path(args.json).exists() and not args.overwrite:
        raise QuambaError(f"--json {args.json} already exists; choose another path or pass --overwrite")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise QuambaError(f"--json {args.json}: directory {Path(args.json).resolve().parent} does not exist")
    if args.quantize is None and (args.w_bits or args.a_bits or args.group_size or args.quantize_embedding
                                  or args.quantize_lm_head):
        raise QuambaError("--w-bits / --a-bits / --group-size / --quantize-embedding / --quantize-lm-head need "
                          "--quantize RECIPE")
    settings = ProfileSettings(prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size,
                               repeats=args.repeats, warmup=args.warmup, cache_graph=args.cache_graph, seed=args.seed)
    metrics = [m for m in METRICS if getattr(args, m)] or list(METRICS)
    device = _device(args.device)
    dtype = _dtype(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    if settings.cache_graph and device.type != "cuda":
        raise QuambaError("--cache-graph (CUDA-graph decoding) needs a CUDA device; drop it or use --device cuda")
    model, described = _profile_model(args, device, dtype)
    if args.quantize:
        fp, model = model, None
        model = _quantize(fp, args, dtype)
        del fp
        if device.type == "cuda":
            torch.cuda.empty_cache()
    c = model.config
    described.update(arch=c.arch, n_layer=c.n_layer, d_model=c.d_model, config=c.to_dict(),
                     quantization=getattr(model, "quantization", None))
    result = profile_model(model, metrics, settings, progress=lambda msg: print(msg, file=sys.stderr))
    rec = {"model": described, **result, "quamba_version": quamba.__version__, "torch_version": torch.__version__,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for line in format_profile(rec):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return rec


# ---- registration ---------------------------------------------------------------------------------------------------
def add_commands(subparsers) -> None:
    """Register ``generate``, ``chat`` and ``profile`` on an argparse subparsers object; each sets ``func(args)``."""
    g = subparsers.add_parser("generate", help="continue a prompt, streaming the text",
                              description="Generate text after a prompt with the inference cache (one prefill, then "
                                          "one recurrent step per token), streaming it to stdout. Several --prompt "
                                          "flags generate a batch (each row stops at eos on its own).")
    _add_model_args(g)
    g.add_argument("--prompt", action="append", help="text to continue (repeat for a batch; default: a short demo)")
    _add_sampling_args(g, max_new_tokens=64)
    g.set_defaults(func=cmd_generate)

    c = subparsers.add_parser("chat", help="chat interactively, keeping the recurrent state between turns",
                              description="Read a line per user turn from stdin until end of input or /exit; each "
                                          "turn feeds only its own tokens to the model (the state carries the "
                                          "history). Uses the tokenizer's chat template if it has one, else a "
                                          "plain 'User: ... / Assistant:' format.")
    _add_model_args(c)
    c.add_argument("--system", help="a system message opening the conversation")
    _add_sampling_args(c, max_new_tokens=256)
    c.set_defaults(func=cmd_chat)

    from .presets import PRESETS

    p = subparsers.add_parser("profile", help="time to first token, per token, to last token; size and memory",
                              description="Profile a model: TTFT (prefill -> first token), TPOT (one decode step), "
                                          "TTLT (a whole generation), size by part and decoding-state size, peak "
                                          "memory on CUDA. MODEL may be a checkpoint or an architecture name "
                                          f"({', '.join(PRESETS)}) built with random weights (no download). "
                                          "With no metric flags, all are measured.")
    p.add_argument("model", nargs="?", help="checkpoint directory / bundled name / hub id, or an architecture name")
    p.add_argument("--config", metavar="JSON", help="build random weights for this config file instead of MODEL "
                   "(quamba, state-spaces or transformers layout)")
    for metric, text in (("ttft", "time to first token"), ("tpot", "time per output token"),
                         ("ttlt", "time to last token"), ("size", "size by part and decoding-state size"),
                         ("memory", "peak memory (CUDA)")):
        p.add_argument(f"--{metric}", action="store_true", help=f"measure {text}")
    p.add_argument("--prompt-len", type=int, default=1024, help="prompt tokens (default 1024)")
    p.add_argument("--gen-len", type=int, default=128, help="generated tokens for TTLT and memory (default 128)")
    p.add_argument("--batch-size", type=int, default=1, help="rows (default 1)")
    p.add_argument("--repeats", type=int, default=100, help="timed runs per metric (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--cache-graph", action="store_true",
                   help="decode with a CUDA graph (CUDA only); with --ttft, also time the prefill replayed from a "
                        "CUDA graph (TTFT without the host's launch work)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    p.add_argument("--dtype", help="float dtype (default float16 on CUDA, float32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, prompts and calibration (default 0)")
    p.add_argument("--quantize", choices=["quamba1", "quamba2"],
                   help="quantize first (self-sampled calibration, no data needed): quamba1 W8A8 (Mamba1) or quamba2")
    p.add_argument("--w-bits", type=int, choices=[4, 8], help="weight bits with --quantize")
    p.add_argument("--a-bits", type=int, choices=[8, 16], help="activation bits with --quantize")
    p.add_argument("--group-size", type=int, help="quamba2 int4 group size (default 128)")
    p.add_argument("--quantize-embedding", action="store_true",
                   help="with --quantize: also quantize the embedding rows at the weight width")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="with --quantize: also quantize the lm_head at the weight width (with --quantize-embedding: "
                        "Quamba2's published configuration)")
    p.add_argument("--calib-samples", type=int, default=8, help="calibration windows with --quantize (default 8)")
    p.add_argument("--calib-seqlen", type=int, default=64, help="tokens per calibration window (default 64)")
    p.add_argument("--json", metavar="FILE", help="also write the results to this new JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    """A parser with just these three commands (tests; the real one is quamba/cli.py's)."""
    parser = argparse.ArgumentParser(prog="quamba")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv=None) -> int:
    """Run one of these commands as ``quamba`` would: a QuambaError is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QuambaError as e:
        print(f"quamba: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
