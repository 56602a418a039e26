"""The ``quamba eval`` and ``quamba report`` subcommands: ``add_commands(subparsers)`` registers them on the
main parser (quamba/cli.py). User mistakes raise QuambaError."""
from __future__ import annotations

import argparse
from pathlib import Path

from .._args import torch_device as _torch_device
from .._args import torch_dtype as _torch_dtype
from ..errors import QuambaError


def _check_new_file(path, overwrite: bool, flag: str):
    if path is None:
        return
    p = Path(path)
    if p.exists() and not overwrite:
        raise QuambaError(f"{flag} {p} already exists; choose another path or pass --overwrite")
    if not p.parent.is_dir():
        raise QuambaError(f"{flag} {p}: directory {p.parent} does not exist")


def cmd_eval(args) -> dict:
    import quamba

    from .report import format_comparison, write_report
    from .runner import evaluate

    _check_new_file(args.output, args.overwrite, "--output")  # before minutes of evaluation, not after
    if args.limit is not None and args.limit < 1:
        raise QuambaError(f"--limit must be a positive number of examples, got {args.limit}")
    device, dtype = _torch_device(args.device), _torch_dtype(args.dtype)
    model = quamba.load_model(args.model, device=device, dtype=dtype)
    tokenizer = quamba.load_tokenizer(args.tokenizer or args.model)
    reference = quamba.load_model(args.reference, device=device, dtype=dtype) if args.reference else None
    result = evaluate(model, tokenizer, args.tasks or [], data_dir=args.data_dir, limit=args.limit,
                      batch_size=args.batch_size, max_length=args.max_length, window=args.window,
                      ppl_files=args.ppl_file or [], backend=args.backend, seed=args.seed, model_name=args.model,
                      reference=reference, reference_name=args.reference, agreement_windows=args.agreement_windows,
                      include_path=args.include_path, progress=not args.quiet)
    print(format_comparison(result))
    print(f"\n{result['model']['name']} on {result['device']['name']}: {result['wall_s']:.1f} s")
    if args.output:
        print(f"results written to {write_report(result, args.output, overwrite=args.overwrite)}")
    return result


def cmd_report(args) -> str:
    from .report import format_comparison, load_report, plot

    results = [load_report(p) for p in args.results]
    baseline = None
    if args.baseline is not None:
        paths = [str(Path(p).resolve()) for p in args.results]
        wanted = str(Path(args.baseline).resolve())
        if wanted not in paths:
            raise QuambaError(f"--baseline {args.baseline} is not one of the result files given")
        baseline = paths.index(wanted)
    labels = [Path(p).stem for p in args.results] if args.file_labels else None
    table = format_comparison(*results, labels=labels, baseline=baseline)
    print(table)
    if args.plot:
        _check_new_file(args.plot, args.overwrite, "--plot")
        print(f"\nplot written to {plot(results, args.plot, labels=labels, baseline=baseline)}")
    return table


def add_commands(subparsers) -> None:
    """Register ``eval`` and ``report`` on an argparse subparsers object; each sets ``func(args)``."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model (full precision or quantized) on zero-shot tasks and perplexity",
        description="Evaluate a model on zero-shot tasks and perplexity. lambada_openai, piqa, arc_easy, winogrande "
                    "and wikitext2 run offline from files under --data-dir with lm-evaluation-harness's protocol; "
                    "other task names go to lm-evaluation-harness (needs quamba[eval] and its data).")
    p.add_argument("model", help="checkpoint directory, bundled model name or hub id")
    p.add_argument("--tasks", help="comma-separated: lambada_openai,piqa,arc_easy,winogrande,wikitext2 "
                                   "or lm-evaluation-harness task names")
    p.add_argument("--ppl-file", action="append", metavar="PATH",
                   help="also report the token perplexity of this text file (repeatable)")
    p.add_argument("--data-dir", help="directory with lambada/, zeroshot/, wikitext2/ (default: $QUAMBA_DATA_DIR "
                                      "or ../shared/data)")
    p.add_argument("--limit", type=int, help="first N examples per task (perplexity: first N windows)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=2048, help="longest context in tokens, left-truncated (default 2048)")
    p.add_argument("--window", type=int, default=2048, help="perplexity window in tokens (default 2048)")
    p.add_argument("--backend", choices=("auto", "local", "harness"), default="auto",
                   help="auto: local files where they exist, lm-evaluation-harness otherwise; local: never the "
                        "harness (no network); harness: every task through lm-evaluation-harness")
    p.add_argument("--include-path", metavar="DIR", help="extra lm-evaluation-harness task YAMLs (run by the harness)")
    p.add_argument("--reference", metavar="MODEL",
                   help="also measure KL divergence and top-1 agreement against this model (e.g. the full-precision source)")
    p.add_argument("--agreement-windows", type=int, default=8, help="WikiText-2 windows for --reference (default 8)")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's own)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--dtype", help="cast full-precision weights: float32, float16 or bfloat16 (default: as stored)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", help="write the results to this new JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    r = subparsers.add_parser(
        "report", help="compare result files of quamba eval as a markdown table (and a plot)",
        description="Print a markdown table comparing quamba eval result files: the full-precision one (or --baseline) "
                    "against each other, with differences. --plot draws accuracy against stored bits per parameter.")
    r.add_argument("results", nargs="+", help="JSON files written by quamba eval --output")
    r.add_argument("--baseline", help="the result file to compare against (default: the first full-precision one)")
    r.add_argument("--plot", metavar="PNG", help="also write a plot of accuracy vs bits (needs matplotlib)")
    r.add_argument("--file-labels", action="store_true", help="label columns by file name instead of model and recipe")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    r.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    """A parser with just these two commands (tests; the real one is quamba/cli.py's)."""
    parser = argparse.ArgumentParser(prog="quamba")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser
