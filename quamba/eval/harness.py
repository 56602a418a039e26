"""lm-evaluation-harness integration (optional extra ``quamba[eval]``).

Importing this module registers the model class ``QuambaLM`` with the harness as ``quamba``. lm-eval
0.4.x finds model classes only through its own registry (no plugin entry points), so its plain
``lm_eval`` command cannot see ``quamba``; this module's ``main`` is that command with the
registration done first:

    python -m quamba.eval.harness --model quamba --model_args pretrained=DIR --tasks lambada_openai

Every ``lm_eval`` option works the same. In Python, ``simple_evaluate(model=QuambaLM(...))`` or
``simple_evaluate(model="quamba", ...)`` after ``import quamba.eval.harness``.

``model_args``: ``pretrained`` (checkpoint directory, bundled name or hub id; or, from Python, a
loaded model), ``tokenizer`` (default: the checkpoint's own), ``dtype`` (float32/float16/bfloat16),
``max_length`` (default 2048), ``max_gen_toks`` (default 256); ``device`` and ``batch_size`` come
from the harness's own options. Scoring is ``quamba.eval.scoring``, the code the offline tasks use.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

import torch

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from ..errors import QuambaError

    raise QuambaError("lm-evaluation-harness is not installed; install it with: pip install 'quamba[eval]'") from e
from tqdm.auto import tqdm

from ..errors import QuambaError
from .scoring import DEFAULT_MAX_LENGTH, cut_at_stop, encode, encode_pair, greedy_continue, score_continuations

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 8
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _batch_size(value) -> int:
    """The harness passes ints, digit strings or 'auto[:N]'; we have no automatic search, so auto -> default."""
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.startswith("auto"):
        log.warning("batch_size %s: quamba has no automatic batch size; using %d", value, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise QuambaError(f"batch_size must be at least 1, got {value}")
    return size


class QuambaLM(TemplateLM):
    """A quamba model (full precision or quantized) as an lm-evaluation-harness language model."""

    def __init__(self, pretrained, tokenizer=None, device: str | None = None, dtype: str | None = None,
                 batch_size=None, max_length: int = DEFAULT_MAX_LENGTH, max_gen_toks: int = 256, **kwargs):
        super().__init__()
        import quamba

        ignored = {k: v for k, v in kwargs.items() if k not in ("max_batch_size",)}
        if ignored:
            log.warning("quamba model ignores model_args %s", ", ".join(sorted(ignored)))
        if isinstance(pretrained, (str, os.PathLike)):
            torch_dtype = None
            if dtype is not None:
                if str(dtype) not in DTYPES:
                    raise QuambaError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
                torch_dtype = DTYPES[str(dtype)]
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model = quamba.load_model(str(pretrained), device=torch.device(device), dtype=torch_dtype)
            tokenizer = tokenizer or str(pretrained)
        else:  # an already loaded model (Python use: the quantize-then-evaluate path)
            self.model = pretrained
            if tokenizer is None:
                raise QuambaError("QuambaLM(pretrained=<model object>) needs tokenizer= (a tokenizer or its path)")
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.tokenizer = quamba.load_tokenizer(str(tokenizer)) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        self.batch_size = _batch_size(batch_size)
        self._max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)

    # ---- what TemplateLM needs ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "quamba").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        # Mamba checkpoints are trained without BOS: never add special tokens
        return encode(self.tokenizer, string)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _encode_pair(self, context: str, continuation: str):
        return encode_pair(self.tokenizer, context, continuation, self.prefix_token_id)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) strings or None, context_ids, continuation_ids)."""
        scored = score_continuations(self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size,
                                     self.max_length, progress=not disable_tqdm)
        for (key, _, _), answer in zip(requests, scored):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, scored in disjoint windows of ``max_length`` tokens (the harness's
        rolling protocol: the first window is conditioned on the end-of-text token)."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owners.append(i)
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owners, scored):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation, one request at a time (Mamba has no attention mask to hide left padding)."""
        out = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm, leave=False):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
            if eos not in until:
                until.append(eos)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.pop("do_sample", False) and float(gen_kwargs.get("temperature", 1.0)) > 0:
                warnings.warn("quamba's harness model decodes greedily; do_sample is ignored", stacklevel=2)
            if max_new >= self.max_length:
                raise QuambaError(f"max_gen_toks {max_new} must be below max_length {self.max_length}")
            ctx_ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.prefix_token_id]
            new = greedy_continue(self.model, ctx_ids, max_new, stop=until, tokenizer=self.tokenizer,
                                  eos_token_id=self.eot_token_id)
            text = cut_at_stop(self.tok_decode(new), until)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


def main(argv=None) -> None:
    """``lm_eval``'s command line with the ``quamba`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is None:
        cli_evaluate()
        return
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]  # lm_eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved




# ---- used by quamba eval for tasks that have no local copy ----------------------------------------------------
def _metrics_from_harness(entry: dict) -> dict:
    """{'acc,none': x, 'acc_stderr,none': s, 'alias': ...} -> {'acc': x, 'acc_stderr': s} (other filters keep a
    '[filter]' suffix; 'N/A' stderrs become None)."""
    out = {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric}[{filt}]"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        elif metric.endswith("_stderr"):
            out[name] = None
    return out


def run_harness_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      max_length: int = DEFAULT_MAX_LENGTH, seed: int = 0, include_path=None) -> dict:
    """Evaluate an in-memory model on harness tasks (data from wherever the harness loads it; task YAMLs
    from lm-eval and from ``include_path``).

    Returns {task: {"backend": "lm-eval <version>", "n", "metrics", "data": {"source", "sha256": None},
    "protocol"}}."""
    import lm_eval
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = QuambaLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    try:
        manager = TaskManager(include_path=None if include_path is None else str(include_path))
        out = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False,
                              bootstrap_iters=1000, task_manager=manager)
    except QuambaError:
        raise
    except Exception as e:  # unknown task, no network, missing dataset: one line for the user
        from .tasks import NO_LOCAL_DATA

        first = (str(e).strip().splitlines() or [""])[0][:300]
        local = [NO_LOCAL_DATA[t] for t in tasks if t in NO_LOCAL_DATA]
        hint = f" ({', '.join(local)}: no local data here, the harness must download it)" if local else ""
        raise QuambaError(f"lm-evaluation-harness could not run {', '.join(tasks)}{hint}: "
                          f"{type(e).__name__}: {first}") from None
    results = {}
    for task, entry in out["results"].items():
        config = out.get("configs", {}).get(task, {})
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        source = "/".join(str(x) for x in (config.get("dataset_path"), config.get("dataset_name")) if x)
        results[task] = {"backend": f"lm-eval {lm_eval.__version__}", "n": n, "metrics": _metrics_from_harness(entry),
                         "data": {"source": source or None, "sha256": None},
                         "protocol": f"lm-evaluation-harness task {task} (version {out.get('versions', {}).get(task)}), "
                                     f"{config.get('num_fewshot', 0) or 0}-shot; max length {max_length} tokens"}
    return results


def _register() -> None:
    try:
        register_model("quamba")(QuambaLM)
    except (ValueError, AssertionError):  # registered by an earlier import of this module: keep that one
        log.debug("lm-eval model 'quamba' was already registered")


if __name__ == "__main__":
    # run as a script: use the class of the importable module, so the registry holds a single QuambaLM
    from quamba.eval.harness import main as _main

    _main()
else:
    _register()
