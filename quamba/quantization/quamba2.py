"""The Quamba2 recipe: W4A8 / W4A16 / W8A8 (and per-layer W4A8/W4A16 mixes) for Mamba1 and Mamba2.

Order of work (each step leaves the full-precision function unchanged until ``convert``):
    rotate the residual stream (norms folded)  ->  [Mamba2, A8: calibrate x, sort-and-cluster heads]
    ->  calibrate every static scale  ->  [GPTQ: Hessians on GPTQ's own windows]  ->  convert layer by layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.mamba import MambaLMHeadModel
from ..modules.conv import QCausalConv1d
from ..modules.hadamard import QHadamard
from ..modules.mamba2 import A8Mamba2Mixer, QSSDScan
from ..modules.norm import QGatedRMSNorm, QRMSNorm
from .calibration import run_calibration
from .convert import LinearFactory, float_copy, new_quantized_model, set_embedding, set_head
from .hadamard import hadamard_matrix, hadamard_transform_ref
from .observers import MinMaxObserver, PercentileObserver, hadamard_input_hook, io_hook
from .quamba1 import Quamba1Observers, a8_mamba1_mixer


class Mamba2Observers:
    """Per layer: in_proj input (per tensor) and output (per channel: z | x | B | C | dt), conv output (per channel:
    x | B | C, plus a percentile of x), the Hadamard-rotated out_proj input; and the lm_head input."""

    def __init__(self, model: MambaLMHeadModel, cfg):
        n = model.config.n_layer
        self.d_inner = model.config.d_inner
        self.norm_out = [MinMaxObserver() for _ in range(n)]
        self.in_proj_out = [MinMaxObserver(per_channel=True) for _ in range(n)]
        self.conv_out = [MinMaxObserver(per_channel=True) for _ in range(n)]
        self.x_pct = [PercentileObserver(cfg.percentile_alpha) for _ in range(n)]
        self.y_had = [MinMaxObserver() for _ in range(n)]
        self.final_norm_out = MinMaxObserver()

    def hooks(self, model: MambaLMHeadModel) -> dict:
        hooks = {}
        for i, layer in enumerate(model.backbone.layers):
            m = layer.mixer
            hooks[m.in_proj] = io_hook(self.norm_out[i], self.in_proj_out[i])
            hooks[m.conv1d] = self._conv(self.conv_out[i], self.x_pct[i])
            hooks[m.out_proj] = hadamard_input_hook(self.y_had[i])
        hooks[model.lm_head] = io_hook(self.final_norm_out)
        return hooks

    def _conv(self, obs, pct):
        def hook(module, args, out):
            y = out[0] if isinstance(out, tuple) else out  # [B, C, L]
            obs.update(y.transpose(1, 2))
            pct.update(y[:, : self.d_inner])
        return hook


def collect_hessians(model: MambaLMHeadModel, input_ids: torch.Tensor, targets: dict, batch_size: int) -> dict:
    """{linear: HessianAccumulator} of each target's input (Hadamard-rotated where targets[linear] is True)."""
    from .gptq import HessianAccumulator

    hessians = {lin: HessianAccumulator(lin.in_features, device=lin.weight.device) for lin in targets}

    def hook_for(lin, rotate):
        def hook(module, args, out):
            x = args[0].float()
            hessians[lin].add_batch(hadamard_transform_ref(x) if rotate else x)
        return hook

    run_calibration(model, input_ids, {lin: hook_for(lin, rot) for lin, rot in targets.items()}, batch_size,
                    desc="GPTQ Hessians")
    return hessians


def hessian_targets(model: MambaLMHeadModel, precisions: list[str], cfg) -> dict:
    targets = {}
    for layer, prec in zip(model.backbone.layers, precisions):
        m, a8 = layer.mixer, prec.endswith("A8")
        targets[m.in_proj] = False
        targets[m.out_proj] = a8  # an A8 out_proj sits behind the online Hadamard
        if model.config.arch == "mamba1":
            targets[m.x_proj] = targets[m.dt_proj] = False
    if cfg.quantize_lm_head:
        targets[model.lm_head] = False
    return targets


def _grouped(absmax: torch.Tensor, grouping) -> torch.Tensor:
    """Per-channel abs-max (grouped order) -> per-channel scale shared by each x-scale group."""
    idx = grouping.scale_index.to(absmax.device)
    per_group = torch.zeros(grouping.n_scales, device=absmax.device).scatter_reduce(0, idx, absmax.float(), "amax",
                                                                                   include_self=False)
    return per_group.clamp_min(1e-8)[idx] / 127


def _per_ssm_group(absmax: torch.Tensor, ngroups: int) -> torch.Tensor:
    """[G * N] abs-max -> [G] scales (B and C get one scale per SSM group)."""
    return absmax.view(ngroups, -1).amax(1).clamp_min(1e-8) / 127


def a8_mamba2_mixer(m, obs: Mamba2Observers, i: int, make: LinearFactory, w_bits: int, cfg, grouping=None):
    """Layer i's fp Mamba2Mixer -> A8Mamba2Mixer with the observed static scales."""
    c = m.config
    D, G, N, H = c.d_inner, c.ngroups, c.d_state, c.nheads
    gn = G * N
    z_abs, x_abs, B_abs, C_abs, dt_abs = obs.in_proj_out[i].absmax.split([D, D, gn, gn, H])
    cx_abs, cB_abs, cC_abs = obs.conv_out[i].absmax.split([D, gn, gn])
    s_z, s_dt = z_abs.amax().clamp_min(1e-8) / 127, dt_abs.amax().clamp_min(1e-8) / 127
    if grouping is not None:
        x_in, x_out = _grouped(x_abs, grouping), _grouped(cx_abs, grouping)
    else:
        x_in = (x_abs.amax().clamp_min(1e-8) / 127).expand(D)
        x_out = obs.x_pct[i].scale().expand(D)
    B_in, C_in = _per_ssm_group(B_abs, G), _per_ssm_group(C_abs, G)
    B_out, C_out = _per_ssm_group(cB_abs, G), _per_ssm_group(cC_abs, G)
    per_ch = lambda s: s.repeat_interleave(N)  # noqa: E731  [G] -> [G * N]
    q = A8Mamba2Mixer(D, H, c.headdim, G, N, i)
    q.in_proj = make.a8(m.in_proj, w_bits, obs.norm_out[i].scale(), "int8",
                        torch.cat([s_z.expand(D), x_in, per_ch(B_in), per_ch(C_in), s_dt.expand(H)]))
    q.conv1d = QCausalConv1d.from_float(m.conv1d, torch.cat([x_in, per_ch(B_in), per_ch(C_in)]),
                                        torch.cat([x_out, per_ch(B_out), per_ch(C_out)]))
    hi = c.dt_limit[1]
    q.scan = QSSDScan(H, c.headdim, G, N, c.chunk_size, c.D_has_hdim,
                      (c.dt_limit[0], None if hi == float("inf") else hi), cfg.dtype, cfg.state_int8)
    q.scan.A_log.copy_(m.A_log.detach().float())
    q.scan.dt_bias.copy_(m.dt_bias.detach().float())
    q.scan.D.copy_(m.D.detach().float().view(q.scan.D.shape))
    q.scan.x_scale.copy_(x_out)
    q.scan.dt_scale.copy_(s_dt.expand(H))
    q.scan.B_scale.copy_(B_out)
    q.scan.C_scale.copy_(C_out)
    q.norm = QGatedRMSNorm(D, m.norm.group_size, m.norm.eps, m.norm.norm_before_gate, cfg.dtype)
    q.norm.weight.copy_(m.norm.weight.detach())
    q.norm.z_scale.fill_(float(s_z))
    q.had = QHadamard(D)
    q.had.output_scale.fill_(float(obs.y_had[i].scale()))
    q.out_proj = make.a8(m.out_proj, w_bits, obs.y_had[i].scale(), cfg.dtype,
                         weight=m.out_proj.weight.detach().float().cpu() @ hadamard_matrix(D).T)
    return q


def a16_mixer(m, make: LinearFactory, dtype: torch.dtype) -> nn.Module:
    """The fp mixer itself (cast to ``dtype``) with W4A16 projections: float activations throughout."""
    q = float_copy(m, dtype)
    names = ("in_proj", "x_proj", "dt_proj", "out_proj") if hasattr(m, "x_proj") else ("in_proj", "out_proj")
    for name in names:
        setattr(q, name, make.a16(getattr(m, name)))
    return q


def convert_quamba2(model: MambaLMHeadModel, obs, hessians, cfg, precisions: list[str], groupings=None):
    """Build the quantized model from the (rotated, regrouped) fp model and its observed scales."""
    dtype = getattr(torch, cfg.dtype)
    make = LinearFactory(cfg, hessians, dtype)
    qmodel = new_quantized_model(model, cfg, dtype)
    set_embedding(qmodel, model, cfg, dtype, bits=cfg.w_bits)
    mamba1 = model.config.arch == "mamba1"
    for i, (layer, qlayer, prec) in enumerate(zip(model.backbone.layers, qmodel.backbone.layers, precisions)):
        w_bits = int(prec[1])
        if prec.endswith("A8"):
            qlayer.norm = QRMSNorm.from_float(layer.norm, obs.norm_out[i].scale(), dtype)
            qlayer.mixer = (a8_mamba1_mixer(layer.mixer, obs, i, make, w_bits, cfg) if mamba1 else
                            a8_mamba2_mixer(layer.mixer, obs, i, make, w_bits, cfg, groupings and groupings[i]))
        else:
            qlayer.norm = float_copy(layer.norm, dtype)
            qlayer.mixer = a16_mixer(layer.mixer, make, dtype)
    head_a8 = cfg.a_bits == 8 and cfg.layer_precision is None and cfg.auto_a8_fraction is None
    if head_a8:
        set_head(qmodel, model, cfg, dtype, obs.final_norm_out.scale(),
                 lambda s: make.a8(model.lm_head, cfg.w_bits, s, cfg.dtype))
    else:
        set_head(qmodel, model, cfg, dtype, None, lambda s: make.a16(model.lm_head))
    return qmodel.to(model.device).eval()


def observers_for(model: MambaLMHeadModel, cfg):
    return Quamba1Observers(model, cfg) if model.config.arch == "mamba1" else Mamba2Observers(model, cfg)


@torch.no_grad()
def _mean_kl(model, ref_logprobs: list[torch.Tensor], input_ids: torch.Tensor, batch_size: int) -> float:
    total, n = 0.0, 0
    for k, i in enumerate(range(0, input_ids.shape[0], batch_size)):
        logp = torch.log_softmax(model(input_ids[i : i + batch_size]).logits.float(), -1)
        total += torch.sum(ref_logprobs[k].exp() * (ref_logprobs[k] - logp)).item()
        n += logp.shape[0] * logp.shape[1]
    return total / n


@torch.no_grad()
def choose_layer_precision(fp, all_a8, all_a16, input_ids, fraction: float, batch_size: int) -> tuple[list[str], list[float]]:
    """Automatic W4AX: the share ``fraction`` of layers whose switch from W4A16 to W4A8 costs the least KL
    divergence from the full-precision model on ``input_ids``. Returns (precisions, per-layer KL increase)."""
    import copy

    ref = [torch.log_softmax(fp(input_ids[i : i + batch_size]).logits.float(), -1)
           for i in range(0, input_ids.shape[0], batch_size)]
    base = _mean_kl(all_a16, ref, input_ids, batch_size)
    probe, cost = copy.copy(all_a16), []
    for i, (l8, l16) in enumerate(zip(all_a8.backbone.layers, all_a16.backbone.layers)):
        probe.backbone.layers[i] = l8
        cost.append(_mean_kl(probe, ref, input_ids, batch_size) - base)
        probe.backbone.layers[i] = l16
    n_a8 = round(fraction * len(cost))
    chosen = set(sorted(range(len(cost)), key=lambda i: cost[i])[:n_a8])
    return ["W4A8" if i in chosen else "W4A16" for i in range(len(cost))], cost


def quantize_quamba2(model: MambaLMHeadModel, cfg, calib_ids: torch.Tensor, gptq_ids: torch.Tensor | None):
    """Run the whole recipe. Returns (quantized model, extra provenance to record)."""
    from .reorder import group_heads
    from .rotation import rotate_residual

    c = model.config
    fp = rotate_residual(model) if cfg.rotate else model
    extra = {"rotated": bool(cfg.rotate)}
    groupings = None
    if cfg.group_heads and c.arch == "mamba2":
        first = Mamba2Observers(fp, cfg)
        run_calibration(fp, calib_ids, first.hooks(fp), cfg.calib_batch_size, desc="calibrating (head grouping)")
        fp, groupings = group_heads(fp, [o.absmax[: c.d_inner] for o in first.conv_out], cfg.n_head_groups,
                                    cfg.n_channel_groups)
        extra["head_groups"] = [[g.n_head_groups, g.n_channel_groups] for g in groupings]
    obs = observers_for(fp, cfg)
    run_calibration(fp, calib_ids, obs.hooks(fp), cfg.calib_batch_size)

    def build(precisions):
        hess = collect_hessians(fp, gptq_ids, hessian_targets(fp, precisions, cfg), cfg.calib_batch_size) \
            if cfg.gptq else None
        return convert_quamba2(fp, obs, hess, cfg, precisions, groupings)

    if cfg.auto_a8_fraction is None:
        precisions = cfg.precisions(c.n_layer)
        return build(precisions), {**extra, "layer_precision": precisions}
    all_a8, all_a16 = build(["W4A8"] * c.n_layer), build(["W4A16"] * c.n_layer)
    probe_ids = calib_ids[: min(8, calib_ids.shape[0])].to(fp.device)
    precisions, cost = choose_layer_precision(fp, all_a8, all_a16, probe_ids, cfg.auto_a8_fraction,
                                              cfg.calib_batch_size)
    qmodel = all_a16
    for i, p in enumerate(precisions):
        if p == "W4A8":
            qmodel.backbone.layers[i] = all_a8.backbone.layers[i]
    return qmodel, {**extra, "layer_precision": precisions, "layer_sensitivity_kl": cost}
