"""The architecture of a Mamba1 or Mamba2 language model, and its two public spellings.

``MambaConfig`` is ours; ``from_state_spaces`` / ``to_state_spaces`` read and write the layout of the
state-spaces checkpoints (``d_model``, ``n_layer``, ``ssm_cfg``), ``from_transformers`` the layout of
transformers' ``MambaConfig`` / ``Mamba2Config`` (``model_type`` mamba / mamba2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import QuambaError

ARCHS = ("mamba1", "mamba2")


def _json_float(v) -> float:
    """JSON has no infinity: accept numbers, 'inf'/'Infinity' strings and transformers' {"__float__": ...}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


@dataclass
class MambaConfig:
    arch: str  # "mamba1" or "mamba2"
    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # mamba1; None means ceil(d_model / 16)
    headdim: int = 64  # mamba2
    ngroups: int = 1  # mamba2
    chunk_size: int = 256  # mamba2
    norm_before_gate: bool = False  # mamba2
    D_has_hdim: bool = False  # mamba2: D per channel instead of per head
    dt_limit: tuple[float, float] = (0.0, math.inf)  # mamba2
    conv_bias: bool = True
    bias: bool = False  # bias of in_proj and out_proj
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise QuambaError(f"unknown architecture {self.arch!r}: expected one of {', '.join(ARCHS)}")
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            if int(getattr(self, name)) <= 0:
                raise QuambaError(f"config field {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        self.dt_limit = (_json_float(self.dt_limit[0]), _json_float(self.dt_limit[1]))
        if self.arch == "mamba2":
            if self.d_inner % self.headdim:
                raise QuambaError(f"d_model * expand = {self.d_inner} is not a multiple of headdim {self.headdim}")
            if self.nheads % self.ngroups or self.d_inner % self.ngroups:
                raise QuambaError(f"ngroups {self.ngroups} must divide the number of heads {self.nheads}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: x for Mamba1, x|B|C for Mamba2."""
        return self.d_inner if self.arch == "mamba1" else self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dt_limit"] = list(self.dt_limit)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise QuambaError(f"unknown model config fields {unknown}")
        return cls(**d)

    # ---- state-spaces layout -------------------------------------------------------------------
    @classmethod
    def from_state_spaces(cls, raw: dict) -> "MambaConfig":
        ssm = dict(raw.get("ssm_cfg") or {})
        layer = ssm.pop("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba2"):
            raise QuambaError(f"ssm_cfg.layer is {layer!r}: only 'Mamba1' and 'Mamba2' are supported")
        if raw.get("d_intermediate", 0):
            raise QuambaError("d_intermediate > 0 (an MLP after each mixer) is not supported")
        if raw.get("attn_layer_idx"):
            raise QuambaError("hybrid models with attention layers (attn_layer_idx) are not supported")
        if not raw.get("rms_norm", True):
            raise QuambaError("rms_norm = false (LayerNorm blocks) is not supported: only RMSNorm models")
        if layer == "Mamba2" and not ssm.get("rmsnorm", True):
            raise QuambaError("ssm_cfg.rmsnorm = false (Mamba2 without its gated norm) is not supported")
        kw = dict(
            arch="mamba2" if layer == "Mamba2" else "mamba1",
            d_model=raw["d_model"],
            n_layer=raw["n_layer"],
            vocab_size=raw["vocab_size"],
            residual_in_fp32=raw.get("residual_in_fp32", True),
            tie_embeddings=raw.get("tie_embeddings", True),
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
            norm_eps=raw.get("norm_epsilon", 1e-5),
            d_state=ssm.get("d_state", 128 if layer == "Mamba2" else 16),
            d_conv=ssm.get("d_conv", 4),
            expand=ssm.get("expand", 2),
            conv_bias=ssm.get("conv_bias", True),
            bias=ssm.get("bias", False),
        )
        if layer == "Mamba1":
            rank = ssm.get("dt_rank", "auto")
            kw["dt_rank"] = None if rank == "auto" else rank
        else:
            kw.update(
                headdim=ssm.get("headdim", 64),
                ngroups=ssm.get("ngroups", 1),
                chunk_size=ssm.get("chunk_size", 256),
                norm_before_gate=ssm.get("norm_before_gate", False),
                D_has_hdim=ssm.get("D_has_hdim", False),
                dt_limit=tuple(ssm.get("dt_limit", (0.0, math.inf))),
            )
            if ssm.get("d_ssm") not in (None, kw["expand"] * kw["d_model"]):
                raise QuambaError("ssm_cfg.d_ssm different from d_model * expand is not supported")
        return cls(**kw)

    def to_state_spaces(self) -> dict:
        ssm = {"layer": "Mamba2" if self.arch == "mamba2" else "Mamba1", "d_state": self.d_state,
               "d_conv": self.d_conv, "expand": self.expand, "conv_bias": self.conv_bias, "bias": self.bias}
        if self.arch == "mamba1":
            ssm["dt_rank"] = self.dt_rank
        else:
            ssm.update(headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk_size,
                       norm_before_gate=self.norm_before_gate, D_has_hdim=self.D_has_hdim)
            if self.dt_limit != (0.0, math.inf):  # the default is left out: JSON has no infinity
                ssm["dt_limit"] = list(self.dt_limit)
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer, "vocab_size": self.vocab_size,
            "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
            "residual_in_fp32": self.residual_in_fp32, "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple, "tie_embeddings": self.tie_embeddings,
            "norm_epsilon": self.norm_eps,
        }

    # ---- transformers layout -------------------------------------------------------------------
    @classmethod
    def from_transformers(cls, raw: dict) -> "MambaConfig":
        mt = raw.get("model_type")
        if raw.get("hidden_act", "silu") != "silu":
            raise QuambaError(f"hidden_act {raw['hidden_act']!r} is not supported: Mamba uses silu")
        common = dict(
            d_model=raw["hidden_size"],
            n_layer=raw["num_hidden_layers"],
            vocab_size=raw["vocab_size"],
            d_state=raw.get("state_size", 16 if mt == "mamba" else 128),
            d_conv=raw.get("conv_kernel", 4),
            expand=raw.get("expand", 2),
            conv_bias=raw.get("use_conv_bias", True),
            bias=raw.get("use_bias", False),
            norm_eps=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            pad_vocab_size_multiple=1,  # transformers stores the padded size as vocab_size
        )
        if mt == "mamba":
            rank = raw.get("time_step_rank", "auto")
            return cls(arch="mamba1", dt_rank=None if rank == "auto" else rank,
                       tie_embeddings=raw.get("tie_word_embeddings", True), **common)
        limit = raw.get("time_step_limit", (0.0, math.inf))
        cfg = cls(arch="mamba2", headdim=raw.get("head_dim", 64), ngroups=raw.get("n_groups", 8),
                  chunk_size=raw.get("chunk_size", 256), dt_limit=tuple(limit),
                  tie_embeddings=raw.get("tie_word_embeddings", False), **common)
        if "num_heads" in raw and raw["num_heads"] != cfg.nheads:
            raise QuambaError(f"num_heads {raw['num_heads']} != hidden_size * expand / head_dim = {cfg.nheads}")
        return cfg
