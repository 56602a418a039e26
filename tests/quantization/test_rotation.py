"""Norm folding and residual Hadamard rotation leave a model's logits unchanged (fp32, rel err <= 1e-5)."""
import pytest
import torch

from quamba.errors import QuambaError
from quamba.models import build_random_model, tiny_config
from quamba.quantization.hadamard import hadamard_matrix
from quamba.quantization.rotation import fold_norms, rotate_residual
from tests.conftest import rel_err

TOL = 1e-5


@torch.no_grad()
def perturbed_model(arch, seed=0, **overrides):
    """A random fp32 model whose norm weights and biases are far from their init (1 and 0), so that
    folding and bias rotation are really exercised."""
    model = build_random_model(tiny_config(arch, **overrides), seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    for name, p in model.named_parameters():
        if "norm" in name:  # block norms, norm_f and Mamba2's gated norm
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
        elif name.endswith(("proj.bias", "conv1d.bias")):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith(".D"):
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def ids(batch=2, seqlen=24, seed=1):
    return torch.randint(0, 257, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode_logits(model, tokens, prefill=8):
    """Prefill ``prefill`` tokens through the cache, then one-token steps: logits [B, L, V]."""
    cache = model.allocate_cache(tokens.shape[0])
    out = [model(tokens[:, :prefill], cache).logits]
    for t in range(prefill, tokens.shape[1]):
        out.append(model(tokens[:, t:t + 1], cache).logits)
    return torch.cat(out, dim=1)


def assert_same_function(a, b, tokens):
    with torch.no_grad():
        full = rel_err(b(tokens).logits, a(tokens).logits)
    step = rel_err(decode_logits(b, tokens[:, :14]), decode_logits(a, tokens[:, :14]))
    assert full <= TOL and step <= TOL, (full, step)


CASES = [
    pytest.param("mamba1", dict(), id="mamba1-tied"),
    pytest.param("mamba1", dict(tie_embeddings=False, bias=True), id="mamba1-untied-bias"),
    pytest.param("mamba2", dict(ngroups=2, bias=True), id="mamba2-g2-tied-bias"),
    pytest.param("mamba2", dict(tie_embeddings=False, D_has_hdim=True), id="mamba2-g1-untied-Dhdim"),
    pytest.param("mamba2", dict(d_model=48, ngroups=2, bias=True), id="mamba2-d48-paley"),  # 12 x 4: not symmetric
    pytest.param("mamba1", dict(d_model=40, tie_embeddings=False), id="mamba1-d40"),
]


@pytest.mark.parametrize("arch,overrides", CASES)
def test_fold_norms_preserves_function_and_leaves_input(arch, overrides):
    model = perturbed_model(arch, **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_norms(model)
    assert_same_function(model, folded, ids())
    for name, p in folded.named_parameters():
        if name.endswith("norm.weight") and ".mixer." not in name or name.endswith("norm_f.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
    assert not folded.config.tie_embeddings
    assert folded.lm_head.weight is not folded.backbone.embedding.weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert model.config.tie_embeddings == overrides.get("tie_embeddings", True)
    # the config object is shared by every module of the copy
    assert all(m.config is folded.config for m in folded.modules() if hasattr(m, "config"))


@pytest.mark.parametrize("arch,overrides", CASES)
def test_rotate_residual_preserves_function(arch, overrides):
    model = perturbed_model(arch, **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rotated = rotate_residual(model)
    assert_same_function(model, rotated, ids())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the residual really is rotated: the embedding is E' = E @ Q, not E
    q = hadamard_matrix(model.config.d_model, torch.float64)
    e = model.backbone.embedding.weight.double()
    assert rel_err(rotated.backbone.embedding.weight, e @ q) < 1e-6
    assert rel_err(rotated.backbone.embedding.weight, e) > 0.5


def test_tied_model_with_unit_final_norm_stays_tied():
    model = build_random_model(tiny_config("mamba2", ngroups=2), seed=2).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.norm.weight.uniform_(0.5, 1.5)
    rotated = rotate_residual(model)
    assert rotated.config.tie_embeddings
    assert rotated.lm_head.weight is rotated.backbone.embedding.weight  # rotated once, not twice
    assert_same_function(model, rotated, ids())


def test_rotation_flattens_an_outlier_channel():
    """Why we rotate: a residual channel with a huge embedding column is spread over all channels."""
    model = build_random_model(tiny_config("mamba1"), seed=4).eval()
    with torch.no_grad():
        model.backbone.embedding.weight[:, 3] *= 50
    emb = rotate_residual(model).backbone.embedding.weight
    ratio = lambda w: (w.abs().amax(0).max() / w.abs().amax(0).median()).item()  # noqa: E731
    assert ratio(emb) < ratio(model.backbone.embedding.weight) / 5


def test_fp16_model_keeps_dtype_and_function():
    model = perturbed_model("mamba2", ngroups=2, bias=True).half()
    rotated = rotate_residual(model)
    assert all(p.dtype == torch.float16 for p in rotated.parameters())
    tokens = ids(seqlen=16)
    with torch.no_grad():
        ref = model.float()(tokens).logits  # float() is in place, but only after rotating
        err = rel_err(rotated.float()(tokens).logits, ref)
    assert err < 2e-2  # one fp16 rounding of each transformed weight


def test_unsupported_d_model_is_refused():
    model = build_random_model(tiny_config("mamba1", d_model=36), seed=0)
    with pytest.raises(QuambaError, match="d_model = 36"):
        rotate_residual(model)
    fold_norms(model)  # folding needs no Hadamard size


def test_quantized_or_foreign_models_are_refused():
    model = build_random_model(tiny_config("mamba1"), seed=0)
    model.backbone.layers[1].mixer.in_proj = torch.nn.Identity()
    with pytest.raises(QuambaError, match="layers \\[1\\]"):
        fold_norms(model)
    with pytest.raises(QuambaError, match="MambaLMHeadModel"):
        rotate_residual(torch.nn.Linear(4, 4))
