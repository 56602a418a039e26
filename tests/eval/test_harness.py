"""The offline tasks against lm-evaluation-harness itself: the harness runs its own task definitions
(lambada_openai, piqa, arc_easy, winogrande YAMLs, included unchanged) on the same local files, with the
model registered as ``quamba``; the numbers must agree with ``quamba.eval.evaluate``."""
import json
import os
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # a guard only: CI installs the [dev] extra, which has lm-eval

import quamba  # noqa: E402
import quamba.eval.harness as harness  # noqa: E402  (registers "quamba")
from quamba.eval import evaluate  # noqa: E402
from quamba.eval.scoring import encode  # noqa: E402
from quamba.eval.tasks import choice_items, lambada_request  # noqa: E402
from quamba.models import build_random_model, tiny_config  # noqa: E402
from quamba.tokenizer import byte_tokenizer  # noqa: E402
from tests.eval.conftest import NGramLM  # noqa: E402

LIMIT = 12
TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(autouse=True)
def _hub_off(monkeypatch):
    """datasets and huggingface_hub read the offline switches at import; set their flags too."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _task_yaml(tmp_path: Path, name: str, harness_yaml: Path, data_file: Path) -> Path:
    """A task that is the harness's own YAML with only the data source replaced by a local JSON file."""
    d = tmp_path / "tasks"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(
        f"include: {harness_yaml}\n"
        f"task: {name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    split_under_test: {data_file}\n"
        f"  cache_dir: {tmp_path / 'hf-cache'}\n"
        "training_split: null\n"
        "validation_split: null\n"
        "test_split: split_under_test\n")
    return d


def _run_harness(model, model_args, task_dir, task, limit=LIMIT):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=[task], limit=limit,
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                          bootstrap_iters=10, log_samples=True)
    prompts = {int(s["doc_id"]): [tuple(a) for a in s["arguments"]] for s in out["samples"][task]}
    return out["results"][task], [prompts[i] for i in range(len(prompts))]


def _assert_same(ours: dict, theirs: dict, metrics):
    for m in metrics:
        assert ours[m] == pytest.approx(theirs[f"{m},none"], rel=1e-6, abs=1e-6), m
        if m.startswith("acc"):
            assert ours[f"{m}_stderr"] == pytest.approx(theirs[f"{m}_stderr,none"], rel=1e-6, abs=1e-9), m


def test_lambada_matches_harness_command(shared_data, neox, tmp_path, monkeypatch):
    """`python -m quamba.eval.harness --model quamba --model_args pretrained=DIR`: lm_eval's own command line."""
    import functools

    import lm_eval.tasks

    # indexing the harness's thousands of built-in task YAMLs takes ~10 s on CI: index only ours
    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__",
                        functools.partialmethod(lm_eval.tasks.TaskManager.__init__, include_defaults=False))
    model = build_random_model(tiny_config("mamba2", vocab_size=50277, n_layer=1), seed=3)
    ckpt = tmp_path / "ckpt"
    quamba.save_model(model, ckpt, tokenizer=neox)
    lambada = shared_data / "lambada" / "lambada_test.jsonl"
    task_dir = _task_yaml(tmp_path, "lambada_local", TASKS_DIR / "lambada" / "lambada_openai.yaml", lambada)

    harness.main(["--model", "quamba", "--model_args", f"pretrained={ckpt}", "--device", "cpu", "--batch_size", "4",
                  "--tasks", "lambada_local", "--include_path", str(task_dir), "--limit", str(LIMIT),
                  "--output_path", str(tmp_path / "out")])
    [written] = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(written.read_text())["results"]["lambada_local"]
    ours = evaluate(quamba.load_model(ckpt), neox, "lambada_openai", data_dir=shared_data, limit=LIMIT,
                    batch_size=4)["tasks"]["lambada_openai"]
    assert ours["n"] == LIMIT
    _assert_same(ours["metrics"], theirs, ["perplexity", "acc"])


def test_lambada_matches_harness_confident_model(shared_data, neox, tmp_path):
    """A model that has memorised half the passages, so accuracy is far from zero and the greedy check counts."""
    lambada = shared_data / "lambada" / "lambada_test.jsonl"
    texts = [json.loads(line)["text"] for line in lambada.open()][:LIMIT]
    model = NGramLM([encode(neox, t) for t in texts[::2]], vocab=50280)
    task_dir = _task_yaml(tmp_path, "lambada_local", TASKS_DIR / "lambada" / "lambada_openai.yaml", lambada)

    theirs, prompts = _run_harness(harness.QuambaLM(pretrained=model, tokenizer=neox, batch_size=3), None, task_dir,
                                   "lambada_local")
    assert prompts == [[lambada_request(t)] for t in texts]  # the same (context, target) strings
    ours = evaluate(model, neox, "lambada_openai", data_dir=shared_data, limit=LIMIT, batch_size=3)
    metrics = ours["tasks"]["lambada_openai"]["metrics"]
    assert metrics["acc"] >= 0.4  # the memorised passages are predicted
    _assert_same(metrics, theirs, ["perplexity", "acc"])


def test_evaluate_sends_other_tasks_to_the_harness(shared_data, neox, mamba2_neox, tmp_path, monkeypatch):
    """`quamba eval --tasks lambada_openai,<harness task> --include-path DIR`: one result file, two backends."""
    import functools

    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__",  # index only our YAML (the full index is slow)
                        functools.partialmethod(lm_eval.tasks.TaskManager.__init__, include_defaults=False))
    lambada = shared_data / "lambada" / "lambada_test.jsonl"
    task_dir = _task_yaml(tmp_path, "lambada_local", TASKS_DIR / "lambada" / "lambada_openai.yaml", lambada)
    res = evaluate(mamba2_neox, neox, "lambada_openai,lambada_local", data_dir=shared_data, limit=6, batch_size=2,
                   include_path=task_dir)["tasks"]
    assert res["lambada_openai"]["backend"] == "offline"
    assert res["lambada_local"]["backend"].startswith("lm-eval") and res["lambada_local"]["n"] == 6
    for m in ("acc", "perplexity"):
        assert res["lambada_local"]["metrics"][m] == pytest.approx(res["lambada_openai"]["metrics"][m], rel=1e-6)
    assert res["lambada_local"]["metrics"]["acc_stderr"] == pytest.approx(res["lambada_openai"]["metrics"]["acc_stderr"])


# ---- multiple choice: the local llm-foundry files rewritten into each harness task's own fields ---------------
def _piqa_native(doc):
    q = doc["query"]
    assert q.startswith("Question: ") and q.endswith("\n")
    return {"goal": q[len("Question: "):-1], "sol1": doc["choices"][0], "sol2": doc["choices"][1], "label": doc["gold"]}


def _arc_native(doc):
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"question": doc["query"][len("Question: "):], "choices": {"text": doc["choices"], "label": labels},
            "answerKey": labels[doc["gold"]]}


def _winogrande_native(doc):
    a, b = doc["context_options"]
    common = os.path.commonprefix([a, b])  # the sentence up to the blank (plus any shared letters of the options)
    return {"sentence": common + "_ " + doc["continuation"], "option1": a[len(common):], "option2": b[len(common):],
            "answer": str(doc["gold"] + 1)}


MC_CASES = [("piqa", "piqa/piqa.yaml", _piqa_native, ["acc", "acc_norm"]),
            ("arc_easy", "arc/arc_easy.yaml", _arc_native, ["acc", "acc_norm"]),
            ("winogrande", "winogrande/default.yaml", _winogrande_native, ["acc"])]


@pytest.mark.parametrize("task,harness_yaml,to_native,metrics", MC_CASES, ids=[c[0] for c in MC_CASES])
def test_multiple_choice_matches_harness(task, harness_yaml, to_native, metrics, shared_data, neox, mamba2_neox,
                                         tmp_path):
    src = shared_data / "zeroshot" / f"{task}.jsonl"
    docs = [json.loads(line) for line in src.open()][:LIMIT]
    native = tmp_path / f"{task}_native.jsonl"
    native.write_text("".join(json.dumps(to_native(d)) + "\n" for d in docs))
    task_dir = _task_yaml(tmp_path, f"{task}_local", TASKS_DIR / harness_yaml, native)

    theirs, prompts = _run_harness(harness.QuambaLM(pretrained=mamba2_neox, tokenizer=neox, batch_size=4), None,
                                   task_dir, f"{task}_local")
    # the same (context, continuation) strings for every option, from the harness's own templates
    assert prompts == [item.requests for item in choice_items(docs, src, partial=task == "winogrande")]
    ours = evaluate(mamba2_neox, neox, task, data_dir=shared_data, limit=LIMIT, batch_size=4)["tasks"][task]
    assert ours["n"] == LIMIT
    assert set(ours["metrics"]) == {k for m in metrics for k in (m, f"{m}_stderr")}
    _assert_same(ours["metrics"], theirs, metrics)


# ---- the other request types of the model class -------------------------------------------------------------
class _Req:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_rolling_windows():
    """max_length 16, a 40-token text: windows predict tokens 0-15 (after end-of-text), 16-31, 32-39, each
    from the 16 tokens before its predictions; checked against that construction by hand."""
    tok = byte_tokenizer()
    model = build_random_model(tiny_config("mamba1"), seed=1).eval()
    lm = harness.QuambaLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=16)
    text = "The quick brown fox jumps over the dog."  # 39 bytes
    ids = encode(tok, text + "!")
    assert len(ids) == 40
    stream = [tok.eos_token_id] + ids

    def logprob(inp, targets):
        with torch.no_grad():
            lp = model(torch.tensor([inp])).logits[0].float().log_softmax(-1)
        return sum(float(lp[len(inp) - len(targets) + i, t]) for i, t in enumerate(targets))

    expected = logprob(stream[0:16], ids[0:16]) + logprob(stream[16:32], ids[16:32]) + logprob(stream[24:40], ids[32:40])
    (got,) = lm.loglikelihood_rolling([_Req(text + "!")], disable_tqdm=True)
    assert got == pytest.approx(expected, rel=1e-5)


def test_generate_until_is_greedy_and_stops():
    from quamba.generation import greedy_generate

    tok = byte_tokenizer()
    model = build_random_model(tiny_config("mamba1"), seed=2).eval()
    lm = harness.QuambaLM(pretrained=model, tokenizer=tok, max_length=64)
    prompt = "Hello"
    ids = torch.tensor([encode(tok, prompt)])
    full = tok.decode(greedy_generate(model, ids, 12)[0, ids.shape[1]:].tolist())
    [free] = lm.generate_until([_Req(prompt, {"until": [], "max_gen_toks": 12})], disable_tqdm=True)
    assert free == full
    stop = full[5:7]  # a stop string that occurs inside the greedy text
    [cut] = lm.generate_until([_Req(prompt, {"until": [stop], "max_gen_toks": 12})], disable_tqdm=True)
    assert cut == full[:full.index(stop)]


def test_quamba_is_registered_once():
    from lm_eval.api.registry import get_model

    assert get_model("quamba") is harness.QuambaLM
    harness._register()  # a second registration (module imported again) is harmless
    assert get_model("quamba") is harness.QuambaLM
