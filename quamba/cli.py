"""The ``quamba`` command. Each subcommand is a function ``_cmd_<name>(args)``; user mistakes raise
QuambaError, printed as one line (exit 2) with no traceback."""
from __future__ import annotations

import argparse
import sys
import time

from .errors import QuambaError

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise QuambaError(f"--dtype {name!r} is not one of {', '.join(sorted(DTYPES))}")
    return getattr(torch, DTYPES[name])


def _device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QuambaError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    return torch.device(name)


def _param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _load_model_and_tokenizer(args):
    """MODEL or, when absent, a small random Mamba1 with a byte tokenizer (no files, no network)."""
    import quamba
    from quamba.models import build_random_model, tiny_config
    from quamba.tokenizer import byte_tokenizer

    device, dtype = _device(args.device), _torch_dtype(args.dtype)
    if args.model is None:
        model = build_random_model(tiny_config("mamba1", d_model=128, n_layer=4), seed=0).to(device)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval(), byte_tokenizer(), "random mamba1 (d_model 128, 4 layers, seed 0)"
    model = quamba.load_model(args.model, device=device, dtype=dtype)
    tok = quamba.load_tokenizer(args.tokenizer or args.model)
    return model, tok, args.model


def _cmd_inspect(args):
    import torch

    from .generation import greedy_generate

    t0 = time.perf_counter()
    model, tok, label = _load_model_and_tokenizer(args)
    c = model.config
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"model        {label}")
    print(f"architecture {c.arch}: d_model {c.d_model}, {c.n_layer} layers, d_state {c.d_state}, vocab {c.vocab_size} "
          f"(padded {c.padded_vocab_size})" + (f", {c.nheads} heads x {c.headdim}, {c.ngroups} groups" if c.arch == "mamba2" else ""))
    print(f"parameters   {n_params / 1e6:.2f} M, {_param_bytes(model) / 2**20:.1f} MiB, dtype {model.dtype}, device {model.device}")
    ids = torch.tensor([tok(args.prompt)["input_ids"]], device=model.device)
    if ids.numel() == 0:
        raise QuambaError("--prompt encodes to no tokens; give a non-empty prompt")
    out = greedy_generate(model, ids, args.max_new_tokens, eos_token_id=tok.eos_token_id)
    print(f"prompt       {args.prompt!r}")
    print(f"greedy       {tok.decode(out[0, ids.shape[1]:].tolist())!r}")
    print(f"time         {time.perf_counter() - t0:.2f} s")


def _add_model_args(p, model_required=False):
    if model_required:
        p.add_argument("model", help="checkpoint directory, bundled model name or hub id")
    else:
        p.add_argument("model", nargs="?", help="checkpoint directory, bundled model name or hub id "
                       "(default: a small random Mamba1, no files needed)")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's own)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--dtype", help="cast full-precision weights: float32, float16 or bfloat16 (default: as stored)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quamba", description="Post-training quantization for Mamba and Mamba2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("inspect", help="load a model, print a summary and a greedy continuation",
                       description="Load a model (or build a small random one), print its shape, size and a greedy "
                                   "continuation of a prompt.")
    _add_model_args(p)
    p.add_argument("--prompt", default="The capital of France is", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate greedily (default 20)")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.func(args)
    except QuambaError as e:
        print(f"quamba: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quamba: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
