"""The same weights in the state-spaces, transformers and quamba layouts load to the same model."""
import json

import pytest
import torch
from safetensors.torch import save_file

import quamba
from quamba.models import build_random_model, tiny_config


def write_state_spaces(model, path, fmt="bin"):
    """A checkpoint as state-spaces publishes them: their config.json and pytorch_model.bin."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_state_spaces()))
    sd = {k: v.clone() for k, v in model.state_dict().items()}  # both embedding and lm_head, like theirs
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    else:
        save_file(sd, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("tie", [True, False])
def test_state_spaces_layout_round_trip(arch, fmt, tie, tmp_path):
    model = build_random_model(tiny_config(arch, tie_embeddings=tie, vocab_size=250))
    write_state_spaces(model, tmp_path / "ss", fmt)
    loaded = quamba.load_model(tmp_path / "ss")
    ids = torch.randint(0, 250, (2, 19))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded(ids).logits.shape[-1] == 256  # vocab padded to a multiple of 8


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_save_pretrained_round_trip(arch, tmp_path):
    model = build_random_model(tiny_config(arch, ngroups=2, headdim=16))
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = quamba.load_model(tmp_path / "m")
    ids = torch.randint(0, 257, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_save_refuses_existing_dir_and_overwrites_on_request(tmp_path):
    model = build_random_model(tiny_config("mamba1"))
    (tmp_path / "out").mkdir()
    with pytest.raises(quamba.QuambaError, match="already exists"):
        model.save_pretrained(tmp_path / "out")
    model.save_pretrained(tmp_path / "out", overwrite=True)
    assert quamba.load_model(tmp_path / "out") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary leftovers


def test_dtype_and_device_arguments(tmp_path):
    model = build_random_model(tiny_config("mamba2"))
    model.save_pretrained(tmp_path / "m")
    half = quamba.load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


def test_tokenizer_from_shared_data(shared_data):
    tok = quamba.load_tokenizer(shared_data / "tokenizer" / "gpt-neox-20b")
    assert tok("Hello world")["input_ids"] == [12092, 1533]
