"""``evaluate``: one call from a loaded model to a complete result dict (what ``quamba eval`` writes)."""
from __future__ import annotations

import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..errors import QuambaError
from .report import FORMAT, FORMAT_VERSION, device_info, model_info, recipe_of
from .scoring import DEFAULT_MAX_LENGTH
from .tasks import NO_LOCAL_DATA, TASKS, run_ppl_file, run_task, task_file

BACKENDS = ("auto", "local", "harness")


def default_data_dir() -> Path | None:
    """$QUAMBA_DATA_DIR, else ``shared/data`` beside the source checkout, else ``../shared/data`` from the
    working directory; None when none of them exists."""
    candidates = [os.environ.get("QUAMBA_DATA_DIR"),
                  Path(__file__).resolve().parents[3] / "shared" / "data",
                  Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def parse_tasks(tasks) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (order kept, duplicates and blanks dropped)."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks or [])
    out = []
    for t in (x.strip() for x in items):
        if t and t not in out:
            out.append(t)
    return out


def _harness_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def plan_tasks(tasks: list[str], data_dir: Path | None, backend: str) -> tuple[list[str], list[str]]:
    """(offline tasks, harness tasks), after checking that every offline task's file is there.

    auto: a task with a local file runs offline; any other goes to lm-evaluation-harness, except that
    HellaSwag and ARC-Challenge fail at once when the Hugging Face Hub is switched off (HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE): their data exists nowhere else."""
    if backend not in BACKENDS:
        raise QuambaError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    local, remote = [], []
    for t in tasks:
        if backend == "harness":
            if t in TASKS and not TASKS[t].harness:
                raise QuambaError(f"{t} is an offline task only (lm-evaluation-harness has no such task); "
                                  "use --backend auto or local for it")
            remote.append(t)
        elif t in TASKS or backend == "local" or (t in NO_LOCAL_DATA and _hub_offline()):
            task_file(t, data_dir)  # a missing file or an unknown / data-less task fails now, before any model time
            local.append(t)
        else:
            remote.append(t)
    if remote and not _harness_available():
        missing = [t for t in remote if t in NO_LOCAL_DATA]
        hint = f" ({', '.join(NO_LOCAL_DATA[t] for t in missing)} has no local data here)" if missing else ""
        raise QuambaError(f"{', '.join(remote)}: not offline tasks{hint}; offline tasks are {', '.join(TASKS)}; "
                          "the others need lm-evaluation-harness: pip install 'quamba[eval]'")
    return local, remote


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is a dependency, but seeding is not worth failing over
        pass


def evaluate(model, tokenizer, tasks, data_dir=None, limit: int | None = None, batch_size: int = 8,
             max_length: int = DEFAULT_MAX_LENGTH, window: int = 2048, ppl_files=(), backend: str = "auto",
             seed: int = 0, model_name: str | None = None, reference=None, reference_name: str | None = None,
             agreement_windows: int = 8, include_path=None, progress: bool = False) -> dict:
    """Evaluate ``model`` (anything whose ``model(input_ids [B, L]).logits`` is [B, L, V], with ``.device``)
    on ``tasks`` and return the result dict that ``write_report`` stores.

    tasks: names ('a,b' or a list): lambada_openai, piqa, arc_easy, winogrande, wikitext2 run from
        files under ``data_dir`` (default ``default_data_dir()``); with backend "auto" other names go to
        lm-evaluation-harness, "local" forbids that, "harness" sends every task there.
    limit: first N examples of each task (wikitext2 / ppl files: first N windows).
    ppl_files: text files whose token perplexity is reported as task "ppl:<file name>".
    include_path: a directory of extra lm-evaluation-harness task YAMLs (its tasks go to the harness).
    reference: a second model (e.g. the full-precision source of a quantized ``model``): adds
        "agreement" (KL(reference || model), top-1 agreement) over the first ``agreement_windows``
        WikiText-2 windows (or of the first ppl file when given).
    """
    t_start = time.perf_counter()
    task_list = parse_tasks(tasks)
    ppl_files = [ppl_files] if isinstance(ppl_files, (str, os.PathLike)) else list(ppl_files or [])
    if not task_list and not ppl_files and reference is None:
        raise QuambaError("no tasks given: pass --tasks (e.g. lambada_openai,wikitext2) or --ppl-file")
    if limit is not None and limit < 1:
        raise QuambaError(f"--limit must be a positive number of examples, got {limit}")
    if batch_size < 1:
        raise QuambaError(f"--batch-size must be at least 1, got {batch_size}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and not data_dir.is_dir():
        raise QuambaError(f"--data-dir {data_dir} is not a directory")
    local, remote = plan_tasks(task_list, data_dir, backend)
    for f in ppl_files:
        if not Path(f).is_file():
            raise QuambaError(f"--ppl-file {f}: no such file")
    if hasattr(model, "eval"):
        model.eval()

    results: dict[str, dict] = {}
    for name in local:
        seed_everything(seed)
        t0 = time.perf_counter()
        results[name] = run_task(name, model, tokenizer, data_dir, limit, batch_size, max_length, window, progress)
        results[name]["wall_s"] = round(time.perf_counter() - t0, 3)
    for f in ppl_files:
        seed_everything(seed)
        t0 = time.perf_counter()
        key = f"ppl:{Path(f).name}"
        results[key] = run_ppl_file(f, model, tokenizer, limit, batch_size, window, progress)
        results[key]["wall_s"] = round(time.perf_counter() - t0, 3)
    if remote:
        from .harness import run_harness_tasks

        seed_everything(seed)
        t0 = time.perf_counter()
        harness_results = run_harness_tasks(model, tokenizer, remote, limit, batch_size, max_length, seed, include_path)
        for entry in harness_results.values():
            entry["wall_s"] = round(time.perf_counter() - t0, 3)  # one harness run for all of them
        results.update(harness_results)

    out = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "quamba_version": _quamba_version(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_info(model, model_name or getattr(model, "name_or_path", None)),
        "recipe": recipe_of(model),
        "device": device_info(model.device),
        "settings": {"batch_size": batch_size, "max_length": max_length, "window": window, "limit": limit,
                     "seed": seed, "backend": backend, "data_dir": None if data_dir is None else str(data_dir),
                     "include_path": None if include_path is None else str(include_path)},
        "tasks": results,
    }
    if reference is not None:
        out["agreement"] = _agreement(model, reference, tokenizer, data_dir, ppl_files, window, batch_size,
                                      agreement_windows, progress)
        out["agreement"]["reference"] = reference_name or model_info(reference)["name"]
    out["wall_s"] = round(time.perf_counter() - t_start, 3)
    return out


def _agreement(model, reference, tokenizer, data_dir, ppl_files, window, batch_size, n_windows, progress) -> dict:
    from .metrics import agreement
    from .scoring import encode
    from .tasks import sha256_file, wikitext2_text

    if ppl_files:
        path = Path(ppl_files[0])
        text = path.read_text(encoding="utf-8")
    else:
        path = task_file("wikitext2", data_dir)
        text = wikitext2_text(path)
    ids = torch.tensor(encode(tokenizer, text), dtype=torch.long)
    res = agreement(model, reference, ids, window, batch_size, n_windows, vocab_size=None, progress=progress)
    res["data"] = {"path": str(path), "sha256": sha256_file(path)}
    res["protocol"] = (f"KL(reference || model) of next-token distributions and top-1 agreement at every position "
                       f"of the first {n_windows} non-overlapping {window}-token windows")
    return res


def _quamba_version() -> str:
    from .. import __version__

    return __version__
