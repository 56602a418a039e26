"""The quamba command: the main job, quantize, and one-line errors for user mistakes."""
import json

import pytest
import torch

from quamba.cli import main
from quamba.models import build_random_model, tiny_config
from quamba.tokenizer import byte_tokenizer

TEXT = "It was a bright cold day in April, and the clocks were striking thirteen. " * 40


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "fp"
    build_random_model(tiny_config("mamba1"), seed=1).save_pretrained(d, tokenizer=byte_tokenizer())
    (tmp_path / "calib.txt").write_text(TEXT)
    return d


def test_inspect_without_arguments_builds_a_random_model(capsys):
    assert main(["inspect", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "random mamba1" in out and "greedy" in out


def test_quantize_saves_and_reloads(model_dir, tmp_path, capsys):
    out_dir = tmp_path / "q"
    args = ["quantize", str(model_dir), "--calib-data", str(tmp_path / "calib.txt"), "--calib-samples", "4",
            "--calib-seqlen", "32", "--output", str(out_dir), "--quantize_lm_head", "--w_bits", "8", "--a_bits", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "W8A8" in out and "MiB (fp16) ->" in out and "logits identical" in out and "top-1 agreement" in out
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["quantization"]["recipe"]["data"]["quantize_lm_head"] is True
    assert cfg["quantization"]["calibration"]["source"].endswith("calib.txt")
    assert (out_dir / "tokenizer.json").exists()
    # an existing output is never reused nor overwritten silently
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["inspect", str(out_dir), "--max-new-tokens", "2"]) == 0


def test_quamba2_with_layer_precision_file(model_dir, tmp_path, capsys):
    (tmp_path / "prec.json").write_text(json.dumps(["W4A8", "W4A16"]))
    args = ["quantize", str(model_dir), "--recipe", "quamba2", "--w-bits", "4", "--a-bits", "8", "--group-size", "32",
            "--layer-precision", str(tmp_path / "prec.json"), "--calib-data", str(tmp_path / "calib.txt"),
            "--calib-samples", "4", "--calib-seqlen", "32", "-o", str(tmp_path / "q2")]
    assert main(args) == 0
    assert "['W4A8', 'W4A16']" in capsys.readouterr().out


@pytest.mark.parametrize("lm_head", [[], ["--quantize-lm-head"]])
def test_size_line_says_why_the_rotation_untied_lm_head(tmp_path, capsys, lm_head):
    """quamba2 folds a final norm that is not all ones into lm_head, so a tied lm_head gets its own weights: on a
    small model that can outweigh what quantizing the projections saves, and the size line says so."""
    model = build_random_model(tiny_config("mamba1"), seed=1)
    with torch.no_grad():
        model.backbone.norm_f.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "fp", tokenizer=byte_tokenizer())
    (tmp_path / "calib.txt").write_text(TEXT)
    args = ["quantize", str(tmp_path / "fp"), "--recipe", "quamba2", "--w-bits", "4", "--a-bits", "16",
            "--group-size", "32", "--calib-data", str(tmp_path / "calib.txt"), "--calib-samples", "2",
            "--calib-seqlen", "32", "-o", str(tmp_path / "q"), "--no-check", *lm_head]
    assert main(args) == 0
    size = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("size"))
    assert "lm_head has its own weights now" in size and "folds the final norm" in size
    assert ("--quantize-lm-head / --quantize-embedding shrink them" in size) == (not lm_head)
    assert json.loads((tmp_path / "q" / "config.json").read_text())["tie_embeddings"] is False


@pytest.mark.parametrize("extra,message", [
    (["--recipe", "quamba1", "--w-bits", "4"], "quamba1 is W8A8 only"),
    (["--calib-data", "missing.txt"], "no such file"),
    (["--recipe", "quamba2", "--w-bits", "8", "--a-bits", "16"], "W4A8, W4A16 and W8A8"),
    (["--group-heads"], "has no option 'group_heads'"),
])
def test_user_mistakes_are_one_line_errors(model_dir, tmp_path, capsys, extra, message):
    args = ["quantize", str(model_dir), "-o", str(tmp_path / "x"), "--calib-data", str(tmp_path / "calib.txt")]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_model_and_output(capsys, tmp_path):
    assert main(["quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "no checkpoint directory" in capsys.readouterr().err
    assert main(["quantize", "x", "--output", str(tmp_path / "o2")]) == 2
    assert "no checkpoint directory at 'x'" in capsys.readouterr().err
