"""The Quamba1 recipe: W8A8 Mamba1 (percentile-clipped SSM input, Hadamard-smoothed out_proj input, static
per-tensor int8 activation scales). ``observe`` installs the calibration observers; ``convert`` builds the quantized
model from the full-precision one and the observed scales."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from ..models.mamba import MambaLMHeadModel, RMSNorm
from ..modules.conv import QCausalConv1d
from ..modules.embedding import QEmbedding
from ..modules.hadamard import QHadamard
from ..modules.linear import W8A8Linear
from ..modules.mamba1 import W8A8Mamba1Mixer
from ..modules.norm import QRMSNorm
from ..modules.scan import QSelectiveScan
from .hadamard import hadamard_matrix, hadamard_transform_ref
from .observers import MinMaxObserver, PercentileObserver


class Quamba1Observers:
    """Every statistic the recipe needs, per layer, filled by forward hooks on the fp model's projections."""

    def __init__(self, model: MambaLMHeadModel, cfg, hessians: bool = False):
        c = model.config
        self.d_inner, self.dt_rank, self.d_state = c.d_inner, c.dt_rank, c.d_state
        n = c.n_layer
        self.norm_out = [MinMaxObserver() for _ in range(n)]  # in_proj input
        self.in_proj_out = [MinMaxObserver(per_channel=True) for _ in range(n)]  # x | z
        self.u = [PercentileObserver(cfg.percentile_alpha) for _ in range(n)]  # conv output = x_proj input
        self.x_proj_out = [MinMaxObserver(per_channel=True) for _ in range(n)]  # dt_low | B | C
        self.dt = [MinMaxObserver() for _ in range(n)]  # dt_proj output before its bias
        self.y_had = [MinMaxObserver() for _ in range(n)]  # Hadamard of out_proj input
        self.final_norm_out = MinMaxObserver()  # lm_head input
        self.hessians = {} if hessians else None

    def hooks(self, model: MambaLMHeadModel) -> dict:
        hooks = {}
        for i, layer in enumerate(model.backbone.layers):
            m = layer.mixer
            hooks[m.in_proj] = self._pair(self.norm_out[i], self.in_proj_out[i])
            hooks[m.x_proj] = self._pair(self.u[i], self.x_proj_out[i])
            hooks[m.dt_proj] = self._dt_hook(self.dt[i])
            hooks[m.out_proj] = self._had_hook(self.y_had[i])
        hooks[model.lm_head] = self._pair(self.final_norm_out, None)
        if self.hessians is not None:
            self._add_hessian_hooks(model, hooks)
        return hooks

    @staticmethod
    def _pair(obs_in, obs_out):
        def hook(module, args, out):
            obs_in.update(args[0])
            if obs_out is not None:
                obs_out.update(out)
        return hook

    @staticmethod
    def _dt_hook(obs):
        def hook(module, args, out):
            obs.update(out - module.bias if module.bias is not None else out)  # the bias is added in the scan
        return hook

    @staticmethod
    def _had_hook(obs):
        def hook(module, args, out):
            obs.update(hadamard_transform_ref(args[0].float()))
        return hook

    def _add_hessian_hooks(self, model, hooks):
        from .gptq import HessianAccumulator

        def chain(first, module, rotate=False):
            acc = self.hessians[module] = HessianAccumulator(module.in_features)

            def hook(mod, args, out):
                first(mod, args, out)
                x = args[0].float()
                acc.add_batch(hadamard_transform_ref(x) if rotate else x)
            return hook

        for layer in model.backbone.layers:
            m = layer.mixer
            for lin, rot in ((m.in_proj, False), (m.x_proj, False), (m.dt_proj, False), (m.out_proj, True)):
                hooks[lin] = chain(hooks[lin], lin, rot)
        hooks[model.lm_head] = chain(hooks[model.lm_head], model.lm_head)

    # ---- scales -----------------------------------------------------------------------------------
    def segment_scales(self, obs: MinMaxObserver, sizes: list[int]) -> list[torch.Tensor]:
        """Per-channel abs-max reduced to one scale per segment (x | z, dt_low | B | C)."""
        return [part.amax().clamp_min(1e-8) / 127 for part in obs.absmax.split(sizes)]


def _expand(scales: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    return torch.cat([s.reshape(1).expand(n) for s, n in zip(scales, sizes)])


def _weights(linear: nn.Linear, cfg, hessians, weight: torch.Tensor | None = None):
    """(q, scale) for a projection: GPTQ when asked (with this layer's Hessian), else None for round-to-nearest."""
    if not cfg.gptq:
        return None
    from .gptq import gptq_quantize

    w = (linear.weight if weight is None else weight).detach().float()
    return gptq_quantize(w, hessians[linear].hessian, "int8", damp=cfg.gptq_damp,
                         per_channel=cfg.weight_granularity == "per_channel")


def convert_quamba1(model: MambaLMHeadModel, obs: Quamba1Observers, cfg) -> MambaLMHeadModel:
    """Build the W8A8 model. ``model`` is left untouched."""
    c = model.config
    dtype = getattr(torch, cfg.dtype)
    per_channel = cfg.weight_granularity == "per_channel"
    D, R, N = c.d_inner, c.dt_rank, c.d_state
    tied = c.tie_embeddings and not (cfg.quantize_embedding or cfg.quantize_lm_head)
    with torch.device("meta"):
        qmodel = MambaLMHeadModel(replace(c, tie_embeddings=tied), dtype=dtype)
    bb, src = qmodel.backbone, model.backbone
    H = hadamard_matrix(D)

    if cfg.quantize_embedding:
        bb.embedding = QEmbedding.from_float(src.embedding, dtype)
    else:
        bb.embedding = nn.Embedding.from_pretrained(src.embedding.weight.detach().to(dtype).clone(), freeze=False)

    for i, (layer, qlayer) in enumerate(zip(src.layers, bb.layers)):
        m = layer.mixer
        s_h = obs.norm_out[i].scale()
        s_x, s_z = obs.segment_scales(obs.in_proj_out[i], [D, D])
        s_u = obs.u[i].scale()
        s_dtl, s_B, s_C = obs.segment_scales(obs.x_proj_out[i], [R, N, N])
        s_dt, s_y = obs.dt[i].scale(), obs.y_had[i].scale()
        q = W8A8Mamba1Mixer(D, N, R, i)
        q.in_proj = W8A8Linear.from_float(m.in_proj.weight, s_h, "int8", per_channel, m.in_proj.bias,
                                          _expand([s_x, s_z], [D, D]), _weights(m.in_proj, cfg, obs.hessians))
        q.conv1d = QCausalConv1d.from_float(m.conv1d, s_x, s_u)
        q.x_proj = W8A8Linear.from_float(m.x_proj.weight, s_u, "int8", per_channel, None,
                                         _expand([s_dtl, s_B, s_C], [R, N, N]), _weights(m.x_proj, cfg, obs.hessians))
        q.dt_proj = W8A8Linear.from_float(m.dt_proj.weight, s_dtl, "int8", per_channel, None, s_dt.reshape(1),
                                          _weights(m.dt_proj, cfg, obs.hessians))
        q.scan = QSelectiveScan(D, N, cfg.dtype, cfg.state_int8)
        q.scan.A_log.copy_(m.A_log.detach().float())
        q.scan.D.copy_(m.D.detach().float())
        q.scan.dt_bias.copy_(m.dt_proj.bias.detach().float())
        for name, s in zip(QSelectiveScan.SCALES, (s_u, s_dt, s_B, s_C, s_z)):
            getattr(q.scan, name).fill_(float(s))
        q.had = QHadamard(D)
        q.had.output_scale.fill_(float(s_y))
        w_rot = m.out_proj.weight.detach().float() @ H.T  # W y = (W H^T)(H y)
        q.out_proj = W8A8Linear.from_float(w_rot, s_y, cfg.dtype, per_channel, m.out_proj.bias, None,
                                           _weights(m.out_proj, cfg, obs.hessians, w_rot))
        qlayer.mixer = q
        qlayer.norm = QRMSNorm.from_float(layer.norm, s_h, dtype)

    if cfg.quantize_lm_head:
        s_f = obs.final_norm_out.scale()
        bb.norm_f = QRMSNorm.from_float(src.norm_f, s_f, dtype)
        qmodel.lm_head = W8A8Linear.from_float(model.lm_head.weight, s_f, cfg.dtype, per_channel, None, None,
                                               _weights(model.lm_head, cfg, obs.hessians))
    else:
        bb.norm_f = RMSNorm(c.d_model, src.norm_f.eps, dtype=dtype)
        bb.norm_f.weight.data.copy_(src.norm_f.weight.detach())
        qmodel.lm_head = nn.Linear(c.d_model, c.padded_vocab_size, bias=False, dtype=dtype)
        if tied:
            qmodel.tie_weights()
        else:
            qmodel.lm_head.weight.data.copy_(model.lm_head.weight.detach())
    return qmodel.to(model.device).eval()
