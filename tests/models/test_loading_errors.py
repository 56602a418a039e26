"""Every checkpoint that does not fit fails with a one-line error naming the file and the tensor."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import quamba
from quamba.models import build_random_model, tiny_config


@pytest.fixture
def ckpt(tmp_path):
    model = build_random_model(tiny_config("mamba1", tie_embeddings=False))
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_tensors(ckpt, fn):
    f = ckpt / "model.safetensors"
    sd = load_file(str(f))
    fn(sd)
    save_file(sd, str(f))


def test_missing_tensor_is_named(ckpt):
    _edit_tensors(ckpt, lambda sd: sd.pop("backbone.layers.1.mixer.A_log"))
    with pytest.raises(quamba.QuambaError, match=r"'backbone.layers.1.mixer.A_log' is missing"):
        quamba.load_model(ckpt)


def test_unexpected_tensor_is_named_with_file(ckpt):
    _edit_tensors(ckpt, lambda sd: sd.__setitem__("backbone.layers.0.mixer.extra", torch.zeros(3)))
    with pytest.raises(quamba.QuambaError, match=r"model.safetensors: unexpected tensor 'backbone.layers.0.mixer.extra'"):
        quamba.load_model(ckpt)


def test_wrong_shape_is_named(ckpt):
    _edit_tensors(ckpt, lambda sd: sd.__setitem__("backbone.norm_f.weight", torch.ones(63)))
    with pytest.raises(quamba.QuambaError, match=r"'backbone.norm_f.weight' has shape \(63,\)"):
        quamba.load_model(ckpt)


def test_untied_checkpoint_without_lm_head_fails(ckpt):
    _edit_tensors(ckpt, lambda sd: sd.pop("lm_head.weight"))
    with pytest.raises(quamba.QuambaError, match="'lm_head.weight' is missing"):
        quamba.load_model(ckpt)


def test_unknown_model_type(ckpt):
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(quamba.QuambaError, match="model_type 'llama'"):
        quamba.load_model(ckpt)


def test_unrecognised_config(ckpt):
    (ckpt / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(quamba.QuambaError, match="neither a state-spaces config"):
        quamba.load_model(ckpt)


def test_invalid_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(quamba.QuambaError, match="config.json is not valid JSON"):
        quamba.load_model(ckpt)


def test_missing_config_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    with pytest.raises(quamba.QuambaError, match="lacks the field 'num_hidden_layers'"):
        quamba.load_model(tmp_path)


def test_unreadable_weights_file_is_named(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(quamba.QuambaError, match="cannot read weights file .*model.safetensors"):
        quamba.load_model(ckpt)


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(quamba.QuambaError, match="has no weights"):
        quamba.load_model(ckpt)


def test_missing_shard(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(quamba.QuambaError, match="shard model-00002-of-00002.safetensors .* is missing"):
        quamba.load_model(ckpt)


def test_bin_loads_weights_only(tmp_path):
    """A pickled .bin holding arbitrary objects is refused rather than executed."""
    model = build_random_model(tiny_config("mamba1"))
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_state_spaces()))
    torch.save({"backbone.embedding.weight": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(quamba.QuambaError, match="cannot read weights file .*pytorch_model.bin"):
        quamba.load_model(tmp_path)


def test_nonexistent_path_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(quamba.QuambaError, match="no checkpoint directory"):
        quamba.load_model(tmp_path / "does-not-exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(quamba.QuambaError, match="could not be fetched from the Hugging Face Hub"):
        quamba.load_model("state-spaces/definitely-not-here-xyz")


def test_unsupported_state_spaces_options(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw.pop("quamba")
    raw["attn_layer_idx"] = [1]
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(quamba.QuambaError, match="attention layers"):
        quamba.load_model(ckpt)


def test_tokenizer_missing_is_explained(ckpt):
    with pytest.raises(quamba.QuambaError, match="no tokenizer files"):
        quamba.load_tokenizer(ckpt)
