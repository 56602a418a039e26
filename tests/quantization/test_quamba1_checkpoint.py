"""Quamba1 W8A8 checkpoints round-trip exactly for every flag combination, and the original project's reload
failures cannot happen."""
import itertools
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import quamba
from quamba.models.mamba import RMSNorm
from tests.quantization.conftest import quantize_tiny

COMBOS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("emb,head,gptq", COMBOS, ids=[f"emb{int(a)}-head{int(b)}-gptq{int(c)}" for a, b, c in COMBOS])
def test_round_trip_is_bitwise_identical(mamba1_fp, tmp_path, emb, head, gptq):
    q = quantize_tiny(mamba1_fp, quantize_embedding=emb, quantize_lm_head=head, gptq=gptq)
    q.save_pretrained(tmp_path / "q")
    r = quamba.load_model(tmp_path / "q")
    ids = torch.randint(0, 257, (2, 21))
    with torch.no_grad():
        a, b = q(ids).logits, r(ids).logits
    assert a.dtype == b.dtype == torch.float16
    assert torch.equal(a, b)
    assert [(n, type(m)) for n, m in q.named_modules()] == [(n, type(m)) for n, m in r.named_modules()]
    # step decoding of the reloaded model agrees with the in-memory one too
    ca, cb = q.allocate_cache(2), r.allocate_cache(2)
    with torch.no_grad():
        for t in range(4):
            assert torch.equal(q(ids[:, t : t + 1], ca).logits, r(ids[:, t : t + 1], cb).logits)


def test_unquantized_lm_head_reloads_as_plain_norm_and_linear(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp, quantize_lm_head=False)
    q.save_pretrained(tmp_path / "q")
    r = quamba.load_model(tmp_path / "q")
    assert type(r.backbone.norm_f) is RMSNorm
    out = r.backbone.norm_f(torch.randn(2, 3, 64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float16  # a tensor, not a (tensor, scale) tuple
    assert type(r.lm_head) is nn.Linear and r.lm_head.bias is None
    assert r.lm_head.weight.dtype == out.dtype == torch.float16
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["modules"]
    assert "backbone.norm_f" not in cfg and "lm_head" not in cfg
    assert cfg["backbone.layers.0.norm"]["type"] == "QRMSNorm"  # each norm recorded on its own


def test_quantized_lm_head_is_recorded_per_module(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp, quantize_lm_head=True)
    q.save_pretrained(tmp_path / "q")
    mods = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["modules"]
    assert mods["backbone.norm_f"]["type"] == "QRMSNorm" and mods["lm_head"]["type"] == "W8A8Linear"
    assert "backbone.embedding" not in mods


def _drop(path, key):
    f = path / "model.safetensors"
    sd = load_file(str(f))
    del sd[key]
    save_file(sd, str(f))


@pytest.mark.parametrize("key", ["backbone.layers.0.mixer.had.output_scale", "backbone.layers.1.norm.output_scale",
                                 "backbone.layers.0.mixer.in_proj.input_scale", "backbone.layers.1.mixer.scan.u_scale"])
def test_missing_scale_names_the_key(mamba1_fp, tmp_path, key):
    q = quantize_tiny(mamba1_fp)
    q.save_pretrained(tmp_path / "q")
    _drop(tmp_path / "q", key)
    with pytest.raises(quamba.QuambaError, match=f"'{key}' is missing"):
        quamba.load_model(tmp_path / "q")


def test_wrong_dtype_is_refused(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp)
    q.save_pretrained(tmp_path / "q")
    f = tmp_path / "q" / "model.safetensors"
    sd = load_file(str(f))
    sd["backbone.layers.0.mixer.in_proj.weight"] = sd["backbone.layers.0.mixer.in_proj.weight"].float()
    save_file(sd, str(f))
    with pytest.raises(quamba.QuambaError, match="in_proj.weight' has dtype torch.float32, expected torch.int8"):
        quamba.load_model(tmp_path / "q")


def _edit_config(path, fn):
    f = path / "config.json"
    raw = json.loads(f.read_text())
    fn(raw)
    f.write_text(json.dumps(raw))


def test_unknown_module_type_and_newer_format_are_refused(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp)
    q.save_pretrained(tmp_path / "q")
    _edit_config(tmp_path / "q", lambda r: r["quantization"]["modules"]["backbone.layers.0.norm"].update(type="Magic"))
    with pytest.raises(quamba.QuambaError, match="unknown module type 'Magic' for 'backbone.layers.0.norm'"):
        quamba.load_model(tmp_path / "q")
    q.save_pretrained(tmp_path / "q", overwrite=True)
    _edit_config(tmp_path / "q", lambda r: r["quantization"].update(format_version=99))
    with pytest.raises(quamba.QuambaError, match="format_version 99"):
        quamba.load_model(tmp_path / "q")


def test_missing_part_of_a_mixer_is_named(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp)
    q.save_pretrained(tmp_path / "q")
    _edit_config(tmp_path / "q", lambda r: r["quantization"]["modules"].pop("backbone.layers.1.mixer.had"))
    with pytest.raises(quamba.QuambaError, match=r"lacks its part backbone.layers.1.mixer.had"):
        quamba.load_model(tmp_path / "q")


def test_recipe_and_calibration_are_recorded(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp, percentile_alpha=0.999, seed=5)
    q.save_pretrained(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert qc["recipe"]["type"] == "quamba1" and qc["recipe"]["data"]["percentile_alpha"] == 0.999
    assert qc["recipe"]["data"]["seed"] == 5 and qc["calibration"]["samples"] == 8
    assert len(qc["calibration"]["sha256"]) == 64
    r = quamba.load_model(tmp_path / "q")
    assert r.quantization_config()["recipe"] == qc["recipe"]


def test_state_int8_round_trips_and_stays_close(mamba1_fp, tmp_path):
    q = quantize_tiny(mamba1_fp, state_int8=True)
    q.save_pretrained(tmp_path / "q")
    r = quamba.load_model(tmp_path / "q")
    ids = torch.randint(0, 257, (1, 12))
    with torch.no_grad():
        full = q(ids).logits.float()
        cache = r.allocate_cache(1)
        steps = torch.cat([r(ids[:, t : t + 1], cache).logits for t in range(12)], 1).float()
    assert torch.nn.functional.cosine_similarity(full.flatten(), steps.flatten(), dim=0) > 0.999
