"""evaluate(): data errors, result completeness, reproducibility; the protocol pieces of the offline tasks."""
import json

import pytest

import quamba
import torch
from quamba.errors import QuambaError
from tests.eval.conftest import NEOX_VOCAB
from quamba.eval import TASKS, evaluate, format_comparison, write_report
from quamba.eval.report import load_report
from quamba.eval.tasks import choice_context, lambada_request, wikitext2_text


def _sha256sums(shared_data):
    sums = {}
    for line in (shared_data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    return sums


def test_lambada_split_is_at_the_last_space():
    assert lambada_request("a b  c") == ("a b ", " c")  # split(" "), not split(): a double space stays
    assert lambada_request("one two") == ("one", " two")


def test_choice_context_is_the_harness_prompt():
    assert choice_context("Question: How?\n") == "Question: How?\nAnswer:"  # PIQA's query ends with a newline
    assert choice_context("Question: Why?") == "Question: Why?\nAnswer:"  # ARC's does not


def test_wikitext2_rows_joined_like_the_hub_split(tmp_path):
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" \n = Title = \n \n Body text .\n")
    # rows as the Hugging Face split holds them: "", " = Title = \n", "", " Body text .\n"
    assert wikitext2_text(raw) == "" + "\n\n" + " = Title = \n" + "\n\n" + "" + "\n\n" + " Body text .\n"


def test_missing_data_file_is_an_error(tmp_path, neox, mamba1_neox):
    (tmp_path / "lambada").mkdir()
    with pytest.raises(QuambaError, match=r"lambada_openai: data file .*lambada_test.jsonl is missing"):
        evaluate(mamba1_neox, neox, "lambada_openai", data_dir=tmp_path)
    with pytest.raises(QuambaError, match="is not a directory"):
        evaluate(mamba1_neox, neox, "piqa", data_dir=tmp_path / "nope")


@pytest.mark.parametrize("task,name", [("hellaswag", "HellaSwag"), ("arc_challenge", "ARC-Challenge")])
def test_tasks_without_local_data_fail_offline(task, name, shared_data, neox, mamba1_neox):
    with pytest.raises(QuambaError, match=f"{name} has no local data here"):
        evaluate(mamba1_neox, neox, task, data_dir=shared_data, backend="local")
    # with the hub switched off (this test suite's setting) "auto" cannot reach the harness's copy either
    with pytest.raises(QuambaError, match=f"{name} has no local data here"):
        evaluate(mamba1_neox, neox, ["lambada_openai", task], data_dir=shared_data)


def test_unknown_task_and_bad_options(shared_data, neox, mamba1_neox):
    with pytest.raises(QuambaError, match="not an offline task"):
        evaluate(mamba1_neox, neox, "lambda_openai", data_dir=shared_data, backend="local")
    with pytest.raises(QuambaError, match="offline task only"):
        evaluate(mamba1_neox, neox, "wikitext2", data_dir=shared_data, backend="harness")
    with pytest.raises(QuambaError, match="no tasks"):
        evaluate(mamba1_neox, neox, "", data_dir=shared_data)
    with pytest.raises(QuambaError, match="--limit"):
        evaluate(mamba1_neox, neox, "piqa", data_dir=shared_data, limit=0)


def test_results_file_is_complete_and_valid(shared_data, neox, mamba1_neox, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("Once upon a time there was a small model that read every book it could find. " * 20)
    result = evaluate(mamba1_neox, neox, list(TASKS), data_dir=shared_data, limit=3, batch_size=4, window=64,
                      ppl_files=[text], model_name="tiny-mamba1")
    path = write_report(result, tmp_path / "results.json")
    data = json.loads(path.read_text())  # strict JSON (no NaN)
    assert data == load_report(path)
    assert data["format"] == "quamba-eval" and data["recipe"] == "full precision"
    assert data["model"]["name"] == "tiny-mamba1" and data["model"]["n_params"] > 0
    assert data["device"]["type"] == "cpu" and data["device"]["name"]
    assert data["settings"]["limit"] == 3 and data["wall_s"] > 0
    sums = _sha256sums(shared_data)
    expected_metrics = {"lambada_openai": {"acc", "perplexity"}, "piqa": {"acc", "acc_norm"},
                        "arc_easy": {"acc", "acc_norm"}, "winogrande": {"acc"}, "wikitext2": {"perplexity"},
                        "ppl:story.txt": {"perplexity"}}
    assert set(data["tasks"]) == set(expected_metrics)
    for task, metrics in expected_metrics.items():
        entry = data["tasks"][task]
        assert set(entry["metrics"]) == metrics | {f"{m}_stderr" for m in metrics}
        assert all(isinstance(v, float) for v in entry["metrics"].values())
        assert entry["n"] == 3 and entry["protocol"] and entry["wall_s"] >= 0
        if task in TASKS:
            assert entry["data"]["sha256"] == sums[TASKS[task].relpath]
    assert data["tasks"]["wikitext2"]["tokens"] == 3 * 63
    with pytest.raises(QuambaError, match="already exists"):
        write_report(result, path)
    write_report(result, path, overwrite=True)


def test_same_model_twice_gives_identical_numbers(shared_data, neox, mamba1_neox):
    kwargs = dict(data_dir=shared_data, limit=4, batch_size=3)
    a = evaluate(mamba1_neox, neox, "lambada_openai,winogrande", **kwargs)
    b = evaluate(mamba1_neox, neox, "lambada_openai,winogrande", **kwargs)
    assert [a["tasks"][t]["metrics"] for t in a["tasks"]] == [b["tasks"][t]["metrics"] for t in b["tasks"]]


def test_agreement_with_a_reference_is_reported(tmp_path, neox, mamba1_neox, mamba2_neox):
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat and looked at the dog. " * 20)
    same = evaluate(mamba1_neox, neox, [], ppl_files=[text], window=32, reference=mamba1_neox)["agreement"]
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1"] == 1.0
    other = evaluate(mamba2_neox, neox, [], ppl_files=[text], window=32, reference=mamba1_neox)
    assert other["agreement"]["kl"] > 0.01
    table = format_comparison(other)
    assert "| agreement | kl |" in table and "| agreement | top1 (%) |" in table


def test_quantized_in_memory_and_reloaded_give_identical_numbers(shared_data, neox, mamba1_neox, tmp_path):
    """The original project's users saw different LAMBADA accuracy right after quantizing and after reloading."""
    q = quamba.quantize(mamba1_neox, "quamba1", calib_data=torch.randint(0, NEOX_VOCAB, (4, 32)),
                        calib_samples=4, calib_seqlen=32)
    q.save_pretrained(tmp_path / "q")
    r = quamba.load_model(tmp_path / "q")
    kw = dict(data_dir=shared_data, limit=6, batch_size=3)
    a = evaluate(q, neox, ["lambada_openai", "piqa"], **kw)
    b = evaluate(r, neox, ["lambada_openai", "piqa"], **kw)
    def metrics(res):
        return {task: {k: v for k, v in m.items() if k != "wall_s"} for task, m in res["tasks"].items()}

    assert metrics(a) == metrics(b) and a["recipe"] == b["recipe"]
