"""Evaluation: offline tasks, perplexity, agreement with a reference model, lm-evaluation-harness
integration and result files.

    from quamba.eval import evaluate, format_comparison, write_report
    fp = evaluate(model, tokenizer, "lambada_openai,wikitext2", limit=500)
    q = evaluate(qmodel, tokenizer, "lambada_openai,wikitext2", limit=500, reference=model)
    print(format_comparison(fp, q))

``quamba.eval.harness`` (needs the ``[eval]`` extra) registers the ``quamba`` model with lm-eval.
"""
from .metrics import agreement, perplexity
from .report import format_comparison, load_report, plot, write_report
from .runner import default_data_dir, evaluate
from .scoring import encode_pair, score_continuations
from .tasks import NO_LOCAL_DATA, TASKS

__all__ = ["evaluate", "format_comparison", "write_report", "load_report", "plot", "agreement", "perplexity",
           "score_continuations", "encode_pair", "default_data_dir", "TASKS", "NO_LOCAL_DATA"]
