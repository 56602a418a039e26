"""Accuracy regression tests on the bundled trained models (CPU, small protocol).

Protocol: the first 4 non-overlapping 512-token windows of WikiText-2 test (rows joined as in `quamba eval`),
token-level perplexity; calibration on 16 x 256 tokens of data/corpus/gutenberg-calib.txt (never evaluation data).
Measured on CPU (fp32 source, this protocol): mamba1-tiny fp 535.18, quamba1 W8A8 +0.37%; mamba2-tiny fp 503.41,
quamba2 W8A8 +0.12%, W4A8 +3.0%, W4A16 -4.1% (2,044 predicted tokens: W4 deltas carry about +-4% of noise).
A broken activation scale (the first norm's output scale x4) costs +28% to +1360%; broken int4 weight scales
(x2 on every in_proj) likewise. Bounds: W8A8 within 2%, W4 within 8% of full precision.
"""
import pytest
import torch

import quamba
from quamba.eval.metrics import perplexity
from quamba.eval.tasks import wikitext2_text

FP_PPL = {"mamba1-tiny": 535.18, "mamba2-tiny": 503.41}


@pytest.fixture(scope="module")
def setup(request):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data directory {SHARED_DATA} (absent on this machine)")
    torch.set_flush_denormal(True)
    out = {}
    for name in FP_PPL:
        fp = quamba.load_model(name, dtype=torch.float32)
        tok = quamba.load_tokenizer(name)
        ids = torch.tensor(tok(wikitext2_text(SHARED_DATA / "wikitext2" / "wiki.test.raw")[:20_000])["input_ids"])
        out[name] = (fp, tok, ids)
    yield out, SHARED_DATA
    torch.set_flush_denormal(False)


def _ppl(model, ids):
    with torch.no_grad():
        return perplexity(model, ids, window=512, max_windows=4)["perplexity"]


def _quantize(setup, name, recipe, **opts):
    models, data = setup
    fp, tok, ids = models[name]
    q = quamba.quantize(fp, recipe, calib_data=data / "corpus" / "gutenberg-calib.txt", tokenizer=tok,
                        calib_samples=16, calib_seqlen=256, **opts)
    return q, ids


@pytest.mark.parametrize("name", list(FP_PPL))
def test_bundled_model_loads_by_name_and_keeps_its_perplexity(setup, name):
    fp, tok, ids = setup[0][name]
    assert _ppl(fp, ids) == pytest.approx(FP_PPL[name], rel=5e-3)
    out = fp.generate(torch.tensor([tok("The old man")["input_ids"]]), 8, temperature=0)
    assert out.shape[1] > 3 and torch.isfinite(fp(out).logits).all()


@pytest.mark.parametrize("name,recipe,opts,bound", [
    ("mamba1-tiny", "quamba1", {}, 0.02),
    ("mamba2-tiny", "quamba2", dict(w_bits=8, a_bits=8), 0.02),
    ("mamba2-tiny", "quamba2", dict(w_bits=4, a_bits=8), 0.08),
    ("mamba2-tiny", "quamba2", dict(w_bits=4, a_bits=16), 0.08),
], ids=["quamba1-W8A8-mamba1", "quamba2-W8A8-mamba2", "quamba2-W4A8-mamba2", "quamba2-W4A16-mamba2"])
def test_recipe_keeps_perplexity_and_a_broken_scale_is_caught(setup, name, recipe, opts, bound):
    q, ids = _quantize(setup, name, recipe, **opts)
    ppl = _ppl(q, ids)
    assert abs(ppl / FP_PPL[name] - 1) <= bound, ppl
    layer = q.backbone.layers[0]
    with torch.no_grad():  # break one scale the way a wrong observer or a bad checkpoint would
        if hasattr(layer.norm, "output_scale"):
            layer.norm.output_scale.mul_(4)
        else:
            for lyr in q.backbone.layers:
                lyr.mixer.in_proj.scales.mul_(2)
    assert abs(_ppl(q, ids) / FP_PPL[name] - 1) > bound
