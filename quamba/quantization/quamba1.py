"""The Quamba1 recipe: W8A8 Mamba1 (percentile-clipped SSM input, Hadamard-smoothed out_proj input, static
per-tensor int8 activation scales). ``observe`` installs the calibration observers; ``convert`` builds the quantized
model from the full-precision one and the observed scales."""
from __future__ import annotations

import torch

from ..models.mamba import MambaLMHeadModel
from ..modules.conv import QCausalConv1d
from ..modules.hadamard import QHadamard
from ..modules.mamba1 import A8Mamba1Mixer
from ..modules.norm import QRMSNorm
from ..modules.scan import QSelectiveScan
from .convert import LinearFactory, expand_scales, new_quantized_model, set_embedding, set_head
from .hadamard import hadamard_matrix, hadamard_transform_ref
from .observers import MinMaxObserver, PercentileObserver, hadamard_input_hook, io_hook


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
            hooks[m.in_proj] = io_hook(self.norm_out[i], self.in_proj_out[i])
            hooks[m.x_proj] = io_hook(self.u[i], self.x_proj_out[i])
            hooks[m.dt_proj] = self._dt_hook(self.dt[i])
            hooks[m.out_proj] = hadamard_input_hook(self.y_had[i])
        hooks[model.lm_head] = io_hook(self.final_norm_out)
        if self.hessians is not None:
            self._add_hessian_hooks(model, hooks)
        return hooks

    @staticmethod
    def _dt_hook(obs):
        def hook(module, args, out):
            obs.update(out - module.bias if module.bias is not None else out)  # the bias is added in the scan
        return hook

    def _add_hessian_hooks(self, model, hooks):
        from .gptq import HessianAccumulator

        def chain(first, module, rotate=False):
            acc = self.hessians[module] = HessianAccumulator(module.in_features, device=module.weight.device)

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


def a8_mamba1_mixer(m, obs: Quamba1Observers, i: int, make: LinearFactory, w_bits: int, cfg) -> A8Mamba1Mixer:
    """Layer i's fp Mamba1Mixer -> A8Mamba1Mixer with the observed static scales (W8A8 or W4A8 projections)."""
    D, R, N = obs.d_inner, obs.dt_rank, obs.d_state
    s_h = obs.norm_out[i].scale()
    s_x, s_z = obs.segment_scales(obs.in_proj_out[i], [D, D])
    s_u = obs.u[i].scale()
    s_dtl, s_B, s_C = obs.segment_scales(obs.x_proj_out[i], [R, N, N])
    s_dt, s_y = obs.dt[i].scale(), obs.y_had[i].scale()
    q = A8Mamba1Mixer(D, N, R, i)
    q.in_proj = make.a8(m.in_proj, w_bits, s_h, "int8", expand_scales([s_x, s_z], [D, D]))
    q.conv1d = QCausalConv1d.from_float(m.conv1d, s_x, s_u)
    q.x_proj = make.a8(m.x_proj, w_bits, s_u, "int8", expand_scales([s_dtl, s_B, s_C], [R, N, N]))
    q.dt_proj = make.a8(m.dt_proj, w_bits, s_dtl, "int8", s_dt.reshape(1), drop_bias=True)  # bias: in the scan
    q.scan = QSelectiveScan(D, N, cfg.dtype, cfg.state_int8)
    q.scan.A_log.copy_(m.A_log.detach().float())
    q.scan.D.copy_(m.D.detach().float())
    q.scan.dt_bias.copy_(m.dt_proj.bias.detach().float())
    for name, s in zip(QSelectiveScan.SCALES, (s_u, s_dt, s_B, s_C, s_z)):
        getattr(q.scan, name).fill_(float(s))
    q.had = QHadamard(D)
    q.had.output_scale.fill_(float(s_y))
    w_rot = m.out_proj.weight.detach().float().cpu() @ hadamard_matrix(D).T  # W y = (W H^T)(H y)
    q.out_proj = make.a8(m.out_proj, w_bits, s_y, cfg.dtype, weight=w_rot)
    return q


def convert_quamba1(model: MambaLMHeadModel, obs: Quamba1Observers, cfg) -> MambaLMHeadModel:
    """Build the W8A8 model. ``model`` is left untouched."""
    dtype = getattr(torch, cfg.dtype)
    make = LinearFactory(cfg, obs.hessians, dtype)
    qmodel = new_quantized_model(model, cfg, dtype)
    set_embedding(qmodel, model, cfg, dtype, bits=8)
    for i, (layer, qlayer) in enumerate(zip(model.backbone.layers, qmodel.backbone.layers)):
        qlayer.mixer = a8_mamba1_mixer(layer.mixer, obs, i, make, 8, cfg)
        qlayer.norm = QRMSNorm.from_float(layer.norm, obs.norm_out[i].scale(), dtype)
    s_f = obs.final_norm_out.scale()
    set_head(qmodel, model, cfg, dtype, s_f, lambda s: make.a8(model.lm_head, 8, s, cfg.dtype))
    return qmodel.to(model.device).eval()
