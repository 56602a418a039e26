"""Quamba2 recipes: every combination round-trips exactly, and the original project's Quamba2 failures cannot
happen (A8 Mamba2 without head grouping reloads; the lm_head follows --w-bits)."""
import itertools
import json

import pytest
import torch

import quamba
from quamba.models import build_random_model, tiny_config
from quamba.modules.linear import W4A8Linear, W4A16Linear, W8A8Linear
from tests.quantization.conftest import calib_ids

MODELS = {}


def _model(arch):
    if arch not in MODELS:
        over = dict(ngroups=2, headdim=16) if arch == "mamba2" else {}
        MODELS[arch] = build_random_model(tiny_config(arch, **over), seed=5).eval()
    return MODELS[arch]


def q2(model, **options):
    base = dict(calib_samples=4, calib_seqlen=24, gptq_samples=4, gptq_seqlen=24, group_size=32, calib_batch_size=4)
    return quamba.quantize(model, "quamba2", calib_data=calib_ids(4, 24), **{**base, **options})


def _cases():
    for arch, prec in itertools.product(["mamba1", "mamba2"], ["W8A8", "W4A8", "W4A16"]):
        groups = [False, True] if arch == "mamba2" and prec.endswith("A8") else [False]
        for gh, emb, head, gptq in itertools.product(groups, [False, True], [False, True], [False, True]):
            yield arch, prec, gh, emb, head, gptq


CASES = list(_cases())


@pytest.mark.parametrize("arch,prec,gh,emb,head,gptq", CASES,
                         ids=[f"{a}-{p}-gh{int(g)}-emb{int(e)}-head{int(h)}-gptq{int(q)}" for a, p, g, e, h, q in CASES])
def test_round_trip(arch, prec, gh, emb, head, gptq, tmp_path):
    w, a = int(prec[1]), int(prec[3:])
    q = q2(_model(arch), w_bits=w, a_bits=a, group_heads=gh, quantize_embedding=emb, quantize_lm_head=head, gptq=gptq)
    q.save_pretrained(tmp_path / "q")
    r = quamba.load_model(tmp_path / "q")
    ids = calib_ids(2, 19, seed=7)
    with torch.no_grad():
        assert torch.equal(q(ids).logits, r(ids).logits)
    assert [(n, type(m)) for n, m in q.named_modules()] == [(n, type(m)) for n, m in r.named_modules()]


def test_w4a16_decoding_state_is_float():
    """The fp mixer of a W4A16 layer must size its conv state from the conv, not from the packed uint8 in_proj."""
    for arch in ("mamba1", "mamba2"):
        cache = q2(_model(arch), w_bits=4, a_bits=16).allocate_cache(1)
        assert cache.conv_states[0].dtype == torch.float16 and cache.ssm_states[0].dtype == torch.float32


def test_lm_head_follows_w_bits():
    m = _model("mamba2")
    assert type(q2(m, w_bits=8, a_bits=8, quantize_lm_head=True).lm_head) is W8A8Linear
    assert type(q2(m, w_bits=4, a_bits=8, quantize_lm_head=True).lm_head) is W4A8Linear
    assert type(q2(m, w_bits=4, a_bits=16, quantize_lm_head=True).lm_head) is W4A16Linear


def test_a8_mamba2_without_grouping_reloads_with_per_tensor_x_scales(tmp_path):
    q = q2(_model("mamba2"), w_bits=4, a_bits=8, group_heads=False)
    x_scale = q.backbone.layers[0].mixer.scan.x_scale
    assert torch.all(x_scale == x_scale[0])  # one scale for all of x
    q.save_pretrained(tmp_path / "q")
    assert torch.equal(quamba.load_model(tmp_path / "q").backbone.layers[0].mixer.scan.x_scale, x_scale)
    g = q2(_model("mamba2"), w_bits=4, a_bits=8, group_heads=True, n_head_groups=2, n_channel_groups=2)
    assert g.backbone.layers[0].mixer.scan.x_scale.unique().numel() > 1  # grouped: several x scales


def test_layer_precision_is_recorded_per_layer(tmp_path):
    q = q2(_model("mamba2"), w_bits=4, a_bits=8, layer_precision=["W4A16", "W4A8"])
    q.save_pretrained(tmp_path / "q")
    raw = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert raw["layer_precision"] == ["W4A16", "W4A8"]
    mods = raw["modules"]
    assert mods["backbone.layers.0.mixer.in_proj"]["type"] == "W4A16Linear"
    assert "backbone.layers.0.mixer" not in mods  # the float mixer with W4A16 projections
    assert mods["backbone.layers.1.mixer"]["type"] == "A8Mamba2Mixer"
    r = quamba.load_model(tmp_path / "q")
    ids = calib_ids(1, 9, seed=3)
    with torch.no_grad():
        assert torch.equal(q(ids).logits, r(ids).logits)


def test_automatic_mixed_precision_picks_the_requested_share():
    q = q2(_model("mamba1"), w_bits=4, a_bits=8, auto_a8_fraction=0.5)
    prec = q.quantization["layer_precision"]
    assert sorted(prec) == ["W4A16", "W4A8"]
    costs = q.quantization["layer_sensitivity_kl"]
    assert prec[min(range(2), key=lambda i: costs[i])] == "W4A8"  # the less sensitive layer got A8


@pytest.mark.parametrize("bad,match", [
    (dict(w_bits=8, a_bits=16), "W4A8, W4A16 and W8A8"),
    (dict(w_bits=4, a_bits=16, group_heads=True), "needs 8-bit activations"),
    (dict(layer_precision=["W4A8", "W8A8"]), "layer_precision"),
    (dict(layer_precision=["W4A8"]), "lists 1 layers; the model has 2"),
])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(quamba.QuambaError, match=match):
        q2(_model("mamba2"), **bad)
