"""`quamba eval` and `quamba report` through their argparse registration (add_commands)."""
import json
import sys

import pytest

import quamba
from quamba.errors import QuambaError
from quamba.eval.cli import build_parser
from quamba.eval.report import format_comparison, plot
from quamba.models import build_random_model, tiny_config


def run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    tok_dir = SHARED_DATA / "tokenizer" / "gpt-neox-20b"
    if not tok_dir.is_dir():
        pytest.skip(f"needs the GPT-NeoX tokenizer at {tok_dir}")
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model = build_random_model(tiny_config("mamba2", vocab_size=50277, n_layer=1), seed=0)
    quamba.save_model(model, path, tokenizer=quamba.load_tokenizer(tok_dir))
    return path


def test_eval_writes_one_new_file(ckpt, shared_data, tmp_path, capsys):
    out = tmp_path / "fp.json"
    argv = [str(ckpt), "--tasks", "lambada_openai,piqa", "--limit", "3", "--batch-size", "2",
            "--data-dir", str(shared_data), "--output", str(out), "--quiet"]
    run(["eval", *argv])
    printed = capsys.readouterr().out
    assert "| lambada_openai | acc (%) |" in printed and "| piqa | acc_norm (%) |" in printed
    data = json.loads(out.read_text())
    assert data["model"]["name"] == str(ckpt) and set(data["tasks"]) == {"lambada_openai", "piqa"}
    with pytest.raises(QuambaError, match="already exists"):  # refused before any evaluation
        run(["eval", *argv])
    run(["eval", *argv, "--overwrite"])
    assert json.loads(out.read_text())["tasks"]["piqa"]["metrics"] == data["tasks"]["piqa"]["metrics"]


def test_eval_user_errors(ckpt, tmp_path):
    with pytest.raises(QuambaError, match="HellaSwag has no local data"):
        run(["eval", str(ckpt), "--tasks", "hellaswag", "--backend", "local", "--data-dir", str(tmp_path)])
    with pytest.raises(QuambaError, match="data file .* is missing"):
        run(["eval", str(ckpt), "--tasks", "wikitext2", "--data-dir", str(tmp_path)])
    with pytest.raises(QuambaError, match="--ppl-file .*: no such file"):
        run(["eval", str(ckpt), "--ppl-file", str(tmp_path / "none.txt")])
    with pytest.raises(QuambaError, match="directory .* does not exist"):
        run(["eval", str(ckpt), "--tasks", "piqa", "--output", str(tmp_path / "no" / "r.json")])


def _result(name, recipe, acc, size):
    return {"format": "quamba-eval", "model": {"name": name, "n_params": 100, "size_bytes": size}, "recipe": recipe,
            "tasks": {"piqa": {"metrics": {"acc": acc, "acc_stderr": 0.01, "acc_norm": acc, "acc_norm_stderr": 0.01}},
                      "wikitext2": {"metrics": {"perplexity": 20.0 / acc, "perplexity_stderr": 0.5}}}}


def test_report_table_has_baseline_and_deltas(tmp_path, capsys):
    fp = _result("m", "full precision", 0.60, 200)
    q = _result("m", {"recipe": {"type": "quamba1", "data": {"w_bits": 8, "a_bits": 8}}}, 0.55, 100)
    paths = []
    for name, r in [("q.json", q), ("fp.json", fp)]:  # baseline given second: still found as full precision
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    table = run(["report", *paths])
    assert capsys.readouterr().out.strip() == table
    lines = table.splitlines()
    assert lines[0] == "| task | metric | m (fp) | m (quamba1 W8A8) | Δ |"
    assert "| piqa | acc (%) | 60.00 ± 1.00 | 55.00 ± 1.00 | -5.00 |" in lines
    assert any(line.startswith("| wikitext2 | perplexity | 33.33") and line.endswith("| +3.03 |") for line in lines)
    with pytest.raises(QuambaError, match="not one of the result files"):
        run(["report", *paths, "--baseline", str(tmp_path / "other.json")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(QuambaError, match="not a quamba eval result"):
        run(["report", str(tmp_path / "bad.json")])


def test_format_comparison_of_in_memory_results():
    """What `quamba quantize --eval-tasks` prints: the two result dicts side by side."""
    text = format_comparison(_result("src", "full precision", 0.5, 200), _result("src", {"type": "x"}, 0.25, 100),
                             labels=["fp16", "W8A8"])
    assert text.splitlines()[0] == "| task | metric | fp16 | W8A8 | Δ |"
    assert "| piqa | acc (%) | 50.00 ± 1.00 | 25.00 ± 1.00 | -25.00 |" in text


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if it were not installed
    with pytest.raises(QuambaError, match="needs matplotlib"):
        plot([_result("m", "full precision", 0.6, 200)], tmp_path / "p.png")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    results = [_result("m", "full precision", 0.6, 200), _result("m", {"type": "q"}, 0.55, 100)]
    path = plot(results, tmp_path / "acc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
