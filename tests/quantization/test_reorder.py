"""Sort-and-cluster head grouping of Mamba2 layers: the permuted model computes the same function, the
groups are what the docstring claims, and per-group scales quantize x better than one scale."""
import itertools
import json

import pytest
import torch

from quamba.errors import QuambaError
from quamba.models import build_random_model, tiny_config
from quamba.quantization.reorder import (HeadGrouping, _contiguous_split, apply_head_grouping,
                                         compute_head_grouping, group_heads, grouped_absmax)
from quamba.quantization.rotation import rotate_residual
from tests.conftest import rel_err
from tests.quantization.test_rotation import TOL, decode_logits, ids, perturbed_model


def planted_stat(n, seed=0, spread=1.5):
    """A per-channel abs-max with a wide log-normal spread (some channels ~100x others)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * spread).exp()


@torch.no_grad()
def x_absmax(model, tokens):
    """Measured per-channel abs-max of every layer's SSM input x (conv output, x part): list of [d_inner]."""
    d, stats, hooks = model.config.d_inner, [], []
    for layer in model.backbone.layers:
        hooks.append(layer.mixer.conv1d.register_forward_hook(
            lambda mod, args, out: stats.append(out[:, :d].abs().amax(dim=(0, 2)))))
    model(tokens)
    for h in hooks:
        h.remove()
    return stats


def assert_grouping_invariants(gr: HeadGrouping, stat: torch.Tensor):
    """The claims of the docstring, checked on the statistic in the new order."""
    hpg, p = gr.heads_per_group, gr.headdim
    new = stat[gr.channel_perm].view(gr.ngroups, hpg, p)
    assert (new.diff(dim=-1) >= 0).all()  # channels sorted within each head
    assert (new[..., -1].diff(dim=-1) >= 0).all()  # heads sorted by their max within each SSM group
    assert torch.equal(gr.head_perm // hpg, torch.arange(gr.nheads) // hpg)  # heads stay in their SSM group
    counts = torch.bincount(gr.scale_index, minlength=gr.n_scales)
    assert counts.numel() == gr.n_scales and (counts > 0).all()  # every scale group is used
    amax = grouped_absmax(stat, gr)  # [G, HG, CG]
    assert (amax.diff(dim=-1) >= 0).all()  # channel groups are monotone
    assert (amax[..., -1].diff(dim=-1) >= 0).all()  # head groups are monotone
    idx = gr.scale_index.view(gr.ngroups, hpg, p)
    assert (idx.diff(dim=-1) >= 0).all() and (idx[..., 0].diff(dim=-1) >= 0).all()  # contiguous groups
    for g in range(gr.ngroups):  # each scale group's channels lie in one SSM group
        assert set(idx[g].unique().tolist()) <= set(range(g * gr.n_scales // gr.ngroups,
                                                        (g + 1) * gr.n_scales // gr.ngroups))


MODELS = [
    pytest.param(dict(ngroups=1, headdim=8, bias=True), id="g1-16heads-bias"),
    pytest.param(dict(ngroups=2, headdim=8, D_has_hdim=True, tie_embeddings=False), id="g2-Dhdim"),
    pytest.param(dict(ngroups=4, headdim=16, bias=True), id="g4-2heads-per-group"),
]


@pytest.mark.parametrize("overrides", MODELS)
def test_grouped_model_computes_the_same_function(overrides):
    model = perturbed_model("mamba2", **overrides)
    tokens = ids()
    stats = x_absmax(model, tokens)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grouped, groupings = group_heads(model, stats)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert any(not torch.equal(gr.head_perm, torch.arange(gr.nheads)) for gr in groupings)  # really permuted
    with torch.no_grad():
        full = rel_err(grouped(tokens).logits, model(tokens).logits)
    step = rel_err(decode_logits(grouped, tokens[:, :14]), decode_logits(model, tokens[:, :14]))
    assert full <= TOL and step <= TOL, (full, step)
    # measured on the grouped model, x is the old x permuted: sorted as claimed
    for gr, old, new in zip(groupings, stats, x_absmax(grouped, tokens)):
        assert torch.allclose(new, old[gr.channel_perm], rtol=1e-5, atol=1e-7)
        assert_grouping_invariants(gr, old)


def test_grouping_composes_with_the_residual_rotation():
    model = perturbed_model("mamba2", ngroups=2, headdim=8, bias=True)
    tokens = ids()
    rotated = rotate_residual(model)
    grouped, _ = group_heads(rotated, x_absmax(rotated, tokens))
    with torch.no_grad():
        assert rel_err(grouped(tokens).logits, model(tokens).logits) <= TOL


@pytest.mark.parametrize("nheads,headdim,ngroups,hg,cg", [(16, 8, 2, 4, 4), (24, 12, 3, 4, 4), (6, 4, 1, 4, 4),
                                                          (8, 3, 4, 4, 4), (4, 64, 1, 1, 1), (10, 5, 1, 3, 2)])
def test_grouping_invariants_and_clamped_counts(nheads, headdim, ngroups, hg, cg):
    stat = planted_stat(nheads * headdim, seed=nheads)
    gr = compute_head_grouping(stat, nheads, headdim, ngroups, hg, cg)
    assert gr.n_head_groups == min(hg, nheads // ngroups) and gr.n_channel_groups == min(cg, headdim)
    assert gr.n_scales == ngroups * gr.n_head_groups * gr.n_channel_groups
    assert_grouping_invariants(gr, stat)


def test_dead_channels_and_ties_are_handled():
    stat = planted_stat(64, seed=5)
    stat[:20] = 0.0  # dead channels
    stat[40:] = 1.0  # ties
    gr = compute_head_grouping(stat, nheads=8, headdim=8, ngroups=2)
    assert_grouping_invariants(gr, stat)
    gr = compute_head_grouping(torch.zeros(64), nheads=8, headdim=8, ngroups=1)
    assert_grouping_invariants(gr, torch.zeros(64))


def test_contiguous_split_is_optimal():
    """The dynamic programme against brute force over all cut positions."""
    g = torch.Generator().manual_seed(0)
    for n, k in [(7, 3), (9, 4), (6, 1), (5, 5), (8, 2)]:
        v = torch.randn(n, generator=g, dtype=torch.float64).sort().values
        sse = lambda a, b: ((v[a:b] - v[a:b].mean()) ** 2).sum().item()  # noqa: E731
        cost = lambda bounds: sum(sse(a, b) for a, b in zip(bounds, bounds[1:]))  # noqa: E731
        best = min(cost([0, *cuts, n]) for cuts in itertools.combinations(range(1, n), k - 1))
        bounds = _contiguous_split(v, k)
        assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == k + 1
        assert all(b > a for a, b in zip(bounds, bounds[1:]))
        assert cost(bounds) == pytest.approx(best, abs=1e-9)


def test_to_dict_round_trip_and_validation():
    gr = compute_head_grouping(planted_stat(128), nheads=16, headdim=8, ngroups=2)
    d = json.loads(json.dumps(gr.to_dict()))
    back = HeadGrouping.from_dict(d)
    for name in ("head_perm", "channel_perm", "head_bounds", "channel_bounds", "scale_index"):
        assert torch.equal(getattr(back, name), getattr(gr, name)), name
    assert (back.n_scales, back.scale_shape) == (gr.n_scales, gr.scale_shape) == (32, (2, 4, 4))
    bad = dict(d, head_perm=[d["head_perm"][-1]] + d["head_perm"][1:-1] + [d["head_perm"][0]])
    with pytest.raises(QuambaError, match="SSM group|consistent"):
        HeadGrouping.from_dict(bad)
    with pytest.raises(QuambaError, match="empty"):
        HeadGrouping.from_dict(dict(d, head_bounds=[[0, 2, 2, 4, 8], [0, 1, 2, 3, 8]]))
    with pytest.raises(QuambaError, match="missing"):
        HeadGrouping.from_dict({k: v for k, v in d.items() if k != "channel_perm"})


def test_group_scales_reduce_int8_error():
    """x with channel magnitudes following a widely spread x_stat: one scale per (SSM group, head group,
    channel group) after sort-and-cluster beats one per-tensor scale, and beats the same number of scales
    over the unsorted channels."""
    nheads, headdim, ngroups = 16, 16, 2
    stat = planted_stat(nheads * headdim, seed=3, spread=1.5)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(512, stat.numel(), generator=g) * 2 - 1) * stat  # |x| per channel up to stat
    gr = compute_head_grouping(x.abs().amax(0), nheads, headdim, ngroups)

    def int8_error(x, index, n):
        scale = torch.zeros(n).scatter_reduce(0, index, x.abs().amax(0), "amax", include_self=False) / 127
        s = scale[index]
        return ((x / s).round().clamp(-128, 127) * s - x).abs().mean().item()

    per_tensor = int8_error(x, torch.zeros(stat.numel(), dtype=torch.long), 1)
    grouped = int8_error(x[:, gr.channel_perm], gr.scale_index, gr.n_scales)
    unsorted = int8_error(x, gr.scale_index, gr.n_scales)  # same group sizes, channels not reordered
    assert grouped < 0.2 * per_tensor, (grouped, per_tensor)
    assert grouped < 0.5 * unsorted, (grouped, unsorted)


def test_user_errors():
    stat = planted_stat(128)
    with pytest.raises(QuambaError, match="expected \\[128\\]"):
        compute_head_grouping(stat[:100], nheads=16, headdim=8, ngroups=2)
    with pytest.raises(QuambaError, match="non-negative"):
        compute_head_grouping(-stat, nheads=16, headdim=8, ngroups=2)
    with pytest.raises(QuambaError, match="ngroups 3"):
        compute_head_grouping(stat, nheads=16, headdim=8, ngroups=3)
    m1 = build_random_model(tiny_config("mamba1"))
    with pytest.raises(QuambaError, match="Mamba2"):
        group_heads(m1, [stat, stat])
    m2 = build_random_model(tiny_config("mamba2", headdim=8))
    with pytest.raises(QuambaError, match="the model has 2"):
        group_heads(m2, [stat])
    wrong = compute_head_grouping(stat, nheads=8, headdim=16, ngroups=1)
    with pytest.raises(QuambaError, match="does not fit layer 0"):
        apply_head_grouping(m2, 0, wrong)
    with pytest.raises(QuambaError, match="out of range"):
        apply_head_grouping(m2, 5, compute_head_grouping(stat, nheads=16, headdim=8, ngroups=1))
