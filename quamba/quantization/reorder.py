"""Quamba2 "sort-and-cluster" head grouping of Mamba2 layers: a function-preserving permutation of the
SSM input x's channels so that x can be quantized with one scale per (SSM group, head group, channel group).

Terms (Mamba2, d_inner = nheads * headdim): an *SSM group* is the set of heads sharing one B/C group
(head h is in SSM group h // (nheads // ngroups)); a *head group* is a cluster of heads of one SSM group;
a *channel group* is a contiguous range of channel positions (0..headdim-1) of the heads of one head group.

From a per-channel statistic of x (e.g. calibrated abs-max of the conv output's x part), per SSM group:
1. sort the channels of each head by their statistic (ascending; each head gets its own order);
2. sort the heads by their largest statistic and cut them into ``n_head_groups`` contiguous clusters;
3. in each head group, take the per-position profile max_h stat[h, j] (non-decreasing in j after step 1)
   and cut the positions into ``n_channel_groups`` contiguous clusters.
The cuts of steps 2 and 3 are the optimal 1-D clustering of a sorted sequence into k contiguous, non-empty
segments minimising the within-segment sum of squared deviations of log(statistic) (exact dynamic
programme, the 1-D k-means / Jenks natural breaks); the log makes the split follow the dynamic range, which
is what a shared int8 scale cares about. Statistics below 1e-6 x the layer's largest are floored there
before the log so that dead channels do not take a cluster of their own. With fewer heads (positions) than
groups, each head (position) is its own group: the effective counts are the ones recorded.

Heads move only within their SSM group (B and C are shared per group) and channels only within their head,
so the group-wise gated RMSNorm (group size d_inner / ngroups) sees the same channel sets and the fp
function is unchanged. ``apply_head_grouping`` permutes in_proj rows of z, x and dt (B and C stay), the
conv1d channels of x, A_log, D, dt_bias, the gated norm weight and out_proj columns.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..errors import QuambaError
from ..models.mamba import Mamba2Mixer, MambaLMHeadModel

__all__ = ["HeadGrouping", "compute_head_grouping", "apply_head_grouping", "permute_mamba2_mixer", "group_heads",
           "grouped_absmax"]

_LOG_FLOOR = 1e-6  # statistics are floored at this fraction of the layer's largest before the log


@dataclass
class HeadGrouping:
    """The permutation and x-scale grouping of one Mamba2 layer (all index tensors int64, CPU).

    head_perm [nheads]: new head i is old head head_perm[i] (stays in its SSM group).
    channel_perm [d_inner]: new x channel c is old channel channel_perm[c]; channel c = i * headdim + j of
        new head i comes from old head head_perm[i].
    head_bounds [ngroups, n_head_groups + 1]: head group k of SSM group g is new heads
        g * heads_per_group + [head_bounds[g, k], head_bounds[g, k + 1]).
    channel_bounds [ngroups, n_head_groups, n_channel_groups + 1]: channel group m of that head group is
        positions [channel_bounds[g, k, m], channel_bounds[g, k, m + 1]) of each of its heads.
    scale_index [d_inner]: for each channel in the new order, its x scale (g * n_head_groups + k) *
        n_channel_groups + m, in 0..n_scales-1; scales reshape to [ngroups, n_head_groups, n_channel_groups].
    n_head_groups / n_channel_groups are the effective counts (the requested ones clamped to the number of
    heads per SSM group / headdim).
    """

    nheads: int
    headdim: int
    ngroups: int
    n_head_groups: int
    n_channel_groups: int
    head_perm: torch.Tensor
    channel_perm: torch.Tensor
    head_bounds: torch.Tensor
    channel_bounds: torch.Tensor
    scale_index: torch.Tensor

    def __post_init__(self):
        for name in ("head_perm", "channel_perm", "head_bounds", "channel_bounds", "scale_index"):
            setattr(self, name, torch.as_tensor(getattr(self, name)).to("cpu", torch.int64))
        self._validate()

    @property
    def d_inner(self) -> int:
        return self.nheads * self.headdim

    @property
    def heads_per_group(self) -> int:
        return self.nheads // self.ngroups

    @property
    def n_scales(self) -> int:
        return self.ngroups * self.n_head_groups * self.n_channel_groups

    @property
    def scale_shape(self) -> tuple[int, int, int]:
        """(ngroups, n_head_groups, n_channel_groups): how the n_scales x scales reshape."""
        return (self.ngroups, self.n_head_groups, self.n_channel_groups)

    def to_dict(self) -> dict:
        """JSON-serialisable (ints and lists of ints); ``from_dict`` restores and re-validates it."""
        return {
            "nheads": self.nheads, "headdim": self.headdim, "ngroups": self.ngroups,
            "n_head_groups": self.n_head_groups, "n_channel_groups": self.n_channel_groups,
            "head_perm": self.head_perm.tolist(), "channel_perm": self.channel_perm.tolist(),
            "head_bounds": self.head_bounds.tolist(), "channel_bounds": self.channel_bounds.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HeadGrouping":
        keys = ("nheads", "headdim", "ngroups", "n_head_groups", "n_channel_groups", "head_perm", "channel_perm",
                "head_bounds", "channel_bounds")
        missing = [k for k in keys if k not in d]
        if missing:
            raise QuambaError(f"head grouping record is missing {missing}: the checkpoint is damaged or too old")
        ints = {k: int(d[k]) for k in keys[:5]}
        t = {k: torch.tensor(d[k], dtype=torch.int64) for k in keys[5:]}
        t["scale_index"] = _scale_index(ints["nheads"], ints["headdim"], ints["ngroups"], t["head_bounds"],
                                        t["channel_bounds"]) if _bounds_shapes_ok(ints, t) else torch.empty(0)
        return cls(**ints, **t)

    def _validate(self):
        """Everything downstream relies on: permutations, SSM-group membership, non-empty groups."""
        def fail(msg):
            raise QuambaError(f"invalid head grouping: {msg}")

        if min(self.nheads, self.headdim, self.ngroups, self.n_head_groups, self.n_channel_groups) < 1:
            fail("all counts must be positive")
        if self.nheads % self.ngroups:
            fail(f"ngroups {self.ngroups} does not divide nheads {self.nheads}")
        hpg, p = self.heads_per_group, self.headdim
        if self.n_head_groups > hpg or self.n_channel_groups > p:
            fail("more groups than heads per SSM group or channels per head")
        if not _bounds_shapes_ok({"ngroups": self.ngroups, "n_head_groups": self.n_head_groups,
                                  "n_channel_groups": self.n_channel_groups},
                                 {"head_bounds": self.head_bounds, "channel_bounds": self.channel_bounds}):
            fail("head_bounds / channel_bounds have the wrong shape")
        if not _is_perm(self.head_perm, self.nheads) or not _is_perm(self.channel_perm, self.d_inner):
            fail("head_perm / channel_perm are not permutations of the right length")
        if not torch.equal(self.head_perm // hpg, torch.arange(self.nheads) // hpg):
            fail("head_perm moves a head out of its SSM group")
        old_head_of_channel = (self.channel_perm // p).view(self.nheads, p)
        if not torch.equal(old_head_of_channel, self.head_perm[:, None].expand(-1, p)):
            fail("channel_perm is not consistent with head_perm")
        for bounds, end in ((self.head_bounds, hpg), (self.channel_bounds, p)):
            if (bounds[..., 0] != 0).any() or (bounds[..., -1] != end).any() or (bounds.diff(dim=-1) < 1).any():
                fail("group bounds must start at 0, end at the size and leave no group empty")
        expected = _scale_index(self.nheads, p, self.ngroups, self.head_bounds, self.channel_bounds)
        if self.scale_index.shape != expected.shape or not torch.equal(self.scale_index.long(), expected):
            fail("scale_index does not match the group bounds")


def _is_perm(t: torch.Tensor, n: int) -> bool:
    return t.dim() == 1 and t.numel() == n and torch.equal(t.sort().values, torch.arange(n))


def _bounds_shapes_ok(ints: dict, t: dict) -> bool:
    g, hg, cg = ints["ngroups"], ints["n_head_groups"], ints["n_channel_groups"]
    return tuple(t["head_bounds"].shape) == (g, hg + 1) and tuple(t["channel_bounds"].shape) == (g, hg, cg + 1)


def _scale_index(nheads: int, headdim: int, ngroups: int, head_bounds: torch.Tensor,
                 channel_bounds: torch.Tensor) -> torch.Tensor:
    """[d_inner] int64: the x-scale of each channel in the new order, from the group bounds."""
    hpg = nheads // ngroups
    n_hg, n_cg = channel_bounds.shape[1], channel_bounds.shape[2] - 1
    index = torch.empty(nheads, headdim, dtype=torch.int64)
    pos = torch.arange(headdim)
    for g in range(ngroups):
        for k in range(n_hg):
            # channel group m of position j: the number of inner bounds <= j
            m = torch.bucketize(pos, channel_bounds[g, k, 1:-1], right=True)
            lo, hi = g * hpg + int(head_bounds[g, k]), g * hpg + int(head_bounds[g, k + 1])
            index[lo:hi] = (g * n_hg + k) * n_cg + m
    return index.reshape(-1)


def _contiguous_split(values: torch.Tensor, k: int) -> list[int]:
    """Optimal split of a sorted 1-D sequence into k non-empty contiguous segments (min total within-segment
    sum of squared deviations), by dynamic programming over segment ends. values: [n] float64, k <= n.
    Returns the k + 1 bounds [0, ..., n]."""
    n = values.numel()
    s1 = torch.cat([values.new_zeros(1), values.cumsum(0)])
    s2 = torch.cat([values.new_zeros(1), (values * values).cumsum(0)])
    idx = torch.arange(n + 1)
    length = (idx[None, :] - idx[:, None]).double()  # [start, end]
    sse = (s2[None, :] - s2[:, None]) - (s1[None, :] - s1[:, None]) ** 2 / length.clamp_min(1)
    sse = sse.clamp_min(0).masked_fill(length < 1, math.inf)  # only non-empty segments
    cost = sse[0]  # cost[e]: best one-segment cover of [0, e)
    choices = []
    for _ in range(1, k):
        total = cost[:, None] + sse  # [last start s, end e]: best cover of [0, s) then segment [s, e)
        cost, arg = total.min(dim=0)
        choices.append(arg)
    bounds = [n]
    for arg in reversed(choices):
        bounds.append(int(arg[bounds[-1]]))
    bounds.append(0)
    return bounds[::-1]


def compute_head_grouping(x_stat: torch.Tensor, nheads: int, headdim: int, ngroups: int,
                          n_head_groups: int = 4, n_channel_groups: int = 4) -> HeadGrouping:
    """Sort-and-cluster grouping of one Mamba2 layer from a per-channel statistic of its SSM input x.

    x_stat: [d_inner] = [nheads * headdim], non-negative and finite (e.g. the calibrated abs-max of x per
    channel, original channel order). Heads are clustered per SSM group into ``n_head_groups`` and each head
    group's channel positions into ``n_channel_groups`` (both clamped to what exists), as described in the
    module docstring. Deterministic (stable sorts). Returns a ``HeadGrouping``.
    """
    d_inner = nheads * headdim
    if x_stat.dim() != 1 or x_stat.numel() != d_inner:
        raise QuambaError(f"x statistic has shape {tuple(x_stat.shape)}; expected [{d_inner}] = nheads {nheads} "
                          f"x headdim {headdim}")
    if ngroups < 1 or nheads % ngroups:
        raise QuambaError(f"ngroups {ngroups} must divide nheads {nheads}")
    if n_head_groups < 1 or n_channel_groups < 1:
        raise QuambaError(f"n_head_groups ({n_head_groups}) and n_channel_groups ({n_channel_groups}) must be >= 1")
    stat = x_stat.detach().to("cpu", torch.float64)
    if not torch.isfinite(stat).all() or (stat < 0).any():
        raise QuambaError("x statistic must be finite and non-negative (an abs-max per channel): recalibrate")
    hpg = nheads // ngroups
    n_hg, n_cg = min(n_head_groups, hpg), min(n_channel_groups, headdim)
    peak = float(stat.max())
    logs = stat.clamp_min(_LOG_FLOOR * peak if peak > 0 else 1.0).log().view(ngroups, hpg, headdim)

    head_perm = torch.empty(nheads, dtype=torch.int64)
    channel_perm = torch.empty(nheads, headdim, dtype=torch.int64)
    head_bounds = torch.empty(ngroups, n_hg + 1, dtype=torch.int64)
    channel_bounds = torch.empty(ngroups, n_hg, n_cg + 1, dtype=torch.int64)
    for g in range(ngroups):
        sorted_logs, inner = logs[g].sort(dim=1, stable=True)  # step 1: channels within each head
        heads = sorted_logs[:, -1].sort(stable=True).indices  # step 2: heads by their largest channel
        hb = _contiguous_split(sorted_logs[heads, -1], n_hg)
        head_bounds[g] = torch.tensor(hb)
        for k in range(n_hg):  # step 3: positions by the head group's profile (non-decreasing)
            profile = sorted_logs[heads[hb[k]:hb[k + 1]]].max(dim=0).values
            channel_bounds[g, k] = torch.tensor(_contiguous_split(profile, n_cg))
        old_heads = g * hpg + heads
        head_perm[g * hpg:(g + 1) * hpg] = old_heads
        channel_perm[g * hpg:(g + 1) * hpg] = old_heads[:, None] * headdim + inner[heads]
    return HeadGrouping(nheads, headdim, ngroups, n_hg, n_cg, head_perm, channel_perm.reshape(-1), head_bounds,
                        channel_bounds, _scale_index(nheads, headdim, ngroups, head_bounds, channel_bounds))


def grouped_absmax(x_stat: torch.Tensor, grouping: HeadGrouping, new_order: bool = False) -> torch.Tensor:
    """The largest statistic per x-scale group: [ngroups, n_head_groups, n_channel_groups] float32.

    x_stat: [d_inner] per-channel abs-max, in the original channel order (or the grouped order when
    ``new_order``). Divide by 127 for the int8 scales.
    """
    if x_stat.numel() != grouping.d_inner:
        raise QuambaError(f"x statistic has {x_stat.numel()} channels; the grouping has {grouping.d_inner}")
    stat = x_stat.detach().float().cpu().reshape(-1)
    if not new_order:
        stat = stat[grouping.channel_perm]
    out = torch.zeros(grouping.n_scales).scatter_reduce(0, grouping.scale_index, stat, "amax", include_self=False)
    return out.view(grouping.scale_shape)


@torch.no_grad()
def _permute_rows(param: torch.Tensor | None, index: torch.Tensor, dim: int = 0):
    if param is not None:
        param.copy_(param.index_select(dim, index.to(param.device)))  # index_select copies: no aliasing


@torch.no_grad()
def permute_mamba2_mixer(mixer: Mamba2Mixer, grouping: HeadGrouping) -> Mamba2Mixer:
    """Permute one full-precision Mamba2 mixer's x channels and heads IN PLACE (returns it).

    in_proj rows [z | x | B | C | dt]: z and x by channel_perm, dt by head_perm, B and C kept; conv1d
    weight/bias: the x channels only; A_log, dt_bias and D by head (D by channel when D_has_hdim); the gated
    norm weight by channel; out_proj columns by channel. Any cached state from before is invalid.
    """
    if type(mixer) is not Mamba2Mixer:
        raise QuambaError(f"head grouping applies to a full-precision Mamba2Mixer, got {type(mixer).__name__}: "
                          "apply it before quantizing, to Mamba2 models only")
    c = mixer.config
    if (c.nheads, c.headdim, c.ngroups) != (grouping.nheads, grouping.headdim, grouping.ngroups):
        raise QuambaError(f"head grouping for nheads {grouping.nheads}, headdim {grouping.headdim}, ngroups "
                          f"{grouping.ngroups} does not fit layer {mixer.layer_idx} ({c.nheads}, {c.headdim}, "
                          f"{c.ngroups})")
    d, gn = c.d_inner, c.ngroups * c.d_state
    ch, hd = grouping.channel_perm, grouping.head_perm
    bc = torch.arange(2 * d, 2 * d + 2 * gn)
    rows = torch.cat([ch, d + ch, bc, 2 * d + 2 * gn + hd])
    _permute_rows(mixer.in_proj.weight, rows)
    _permute_rows(mixer.in_proj.bias, rows)
    conv = torch.cat([ch, torch.arange(d, c.conv_dim)])
    _permute_rows(mixer.conv1d.weight, conv)
    _permute_rows(mixer.conv1d.bias, conv)
    _permute_rows(mixer.A_log, hd)
    _permute_rows(mixer.dt_bias, hd)
    _permute_rows(mixer.D, ch if c.D_has_hdim else hd)
    _permute_rows(mixer.norm.weight, ch)
    _permute_rows(mixer.out_proj.weight, ch, dim=1)
    return mixer


def apply_head_grouping(model: MambaLMHeadModel, layer_idx: int, grouping: HeadGrouping) -> MambaLMHeadModel:
    """Permute layer ``layer_idx`` of ``model`` IN PLACE (the caller has copied it); returns the model."""
    if not 0 <= layer_idx < len(model.backbone.layers):
        raise QuambaError(f"layer index {layer_idx} out of range: the model has {len(model.backbone.layers)} layers")
    permute_mamba2_mixer(model.backbone.layers[layer_idx].mixer, grouping)
    return model


def group_heads(model: MambaLMHeadModel, x_stats: list[torch.Tensor], n_head_groups: int = 4,
                n_channel_groups: int = 4) -> tuple[MambaLMHeadModel, list[HeadGrouping]]:
    """Deep-copy a full-precision Mamba2 model and apply sort-and-cluster grouping to every layer.

    x_stats: one [d_inner] per-channel statistic of x (the SSM input) per layer, original order.
    Returns (the permuted copy, one HeadGrouping per layer). The input model is not modified.
    """
    c = model.config
    if c.arch != "mamba2":
        raise QuambaError(f"head grouping is for Mamba2 models; this model is {c.arch}")
    if len(x_stats) != c.n_layer:
        raise QuambaError(f"got x statistics for {len(x_stats)} layers; the model has {c.n_layer}")
    groupings = [compute_head_grouping(s, c.nheads, c.headdim, c.ngroups, n_head_groups, n_channel_groups)
                 for s in x_stats]
    model = copy.deepcopy(model)
    for i, grouping in enumerate(groupings):
        apply_head_grouping(model, i, grouping)
    return model, groupings
