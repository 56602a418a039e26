"""Recipe configs: versioned dataclasses validated on construction, serialised as {type, version, data} and read back
only from the allow-list ``RECIPES``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import QuambaError

FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Quamba1Config:
    """Quamba1: W8A8 for Mamba1 — static per-tensor int8 activations, percentile clipping of the SSM input,
    Hadamard-smoothed out_proj input. Embedding, lm_head and GPTQ are off as in the published results."""

    w_bits: int = 8
    a_bits: int = 8
    percentile_alpha: float = 0.99999
    weight_granularity: str = "per_tensor"  # int8 weight scales: per_tensor (as published) or per_channel
    quantize_embedding: bool = False
    quantize_lm_head: bool = False
    gptq: bool = False
    gptq_damp: float = 0.01
    state_int8: bool = False  # cache the decoding SSM state as int8
    dtype: str = "float16"  # the float parts (scan output, residual-stream inputs, fp lm_head)
    calib_samples: int = 512
    calib_seqlen: int = 512
    calib_batch_size: int = 8
    seed: int = 0

    name = "quamba1"
    version = 1

    def __post_init__(self):
        if (self.w_bits, self.a_bits) != (8, 8):
            raise QuambaError(f"recipe quamba1 is W8A8 only (got W{self.w_bits}A{self.a_bits}); use --recipe quamba2 "
                              "for W4A8 / W4A16")
        _check_common(self)
        if not 0.0 < self.percentile_alpha <= 1.0:
            raise QuambaError(f"percentile alpha must be in (0, 1], got {self.percentile_alpha}")
        if self.weight_granularity not in ("per_tensor", "per_channel"):
            raise QuambaError(f"weight_granularity must be per_tensor or per_channel, got {self.weight_granularity!r}")


def _check_common(cfg):
    if cfg.dtype not in FLOAT_DTYPES:
        raise QuambaError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {cfg.dtype!r}")
    for name in ("calib_samples", "calib_seqlen", "calib_batch_size"):
        if int(getattr(cfg, name)) <= 0:
            raise QuambaError(f"{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.gptq_damp < 1.0:
        raise QuambaError(f"gptq_damp must be in [0, 1), got {cfg.gptq_damp}")


PRECISIONS = ("W4A8", "W4A16", "W8A8")


@dataclass(frozen=True)
class Quamba2Config:
    """Quamba2: W4A8, W4A16 or W8A8 for Mamba1 and Mamba2, and per-layer W4A8/W4A16 mixes (W4AX).

    Residual-stream Hadamard rotation (norm weights folded first), per-group int4 weights (two-level scales for
    W4A8), optional GPTQ on its own calibration windows, optional sort-and-cluster head grouping (Mamba2, A8),
    int8 z/x/B/C/dt with B and C scaled per SSM group, an online Hadamard before an A8 out_proj.
    """

    w_bits: int = 4
    a_bits: int = 8
    group_size: int = 128  # int4 weights: input features per scale (-1: one group per row)
    rotate: bool = True  # Hadamard rotation of the residual stream, fused offline
    group_heads: bool = False  # sort-and-cluster head grouping of x (Mamba2, A8 layers)
    n_head_groups: int = 4
    n_channel_groups: int = 4
    gptq: bool = False
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    gptq_samples: int = 128  # GPTQ's own calibration windows (a separate, recorded data choice)
    gptq_seqlen: int = 1024
    quantize_embedding: bool = False  # rows at w_bits (int8 or int4), abs-max scales
    quantize_lm_head: bool = False  # at w_bits, A8 or A16 as the recipe
    percentile_alpha: float = 0.99999  # x's per-tensor scale when heads are not grouped
    layer_precision: tuple | None = None  # per layer "W4A8" / "W4A16" (W4AX); None: every layer W{w}A{a}
    auto_a8_fraction: float | None = None  # pick layer_precision automatically: this share of layers in A8
    state_int8: bool = False
    dtype: str = "float16"
    calib_samples: int = 512
    calib_seqlen: int = 512
    calib_batch_size: int = 8
    seed: int = 0

    name = "quamba2"
    version = 1

    def __post_init__(self):
        if (self.w_bits, self.a_bits) not in ((4, 8), (4, 16), (8, 8)):
            raise QuambaError(f"recipe quamba2 supports W4A8, W4A16 and W8A8, not W{self.w_bits}A{self.a_bits}")
        _check_common(self)
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 2):
            raise QuambaError(f"group_size must be a positive even number or -1, got {self.group_size}")
        if self.group_heads and self.a_bits != 8 and self.layer_precision is None and self.auto_a8_fraction is None:
            raise QuambaError("--group-heads groups the int8 scales of x: it needs 8-bit activations (--a-bits 8)")
        if self.n_head_groups <= 0 or self.n_channel_groups <= 0:
            raise QuambaError("n_head_groups and n_channel_groups must be positive")
        if self.gptq_samples <= 0 or self.gptq_seqlen <= 0:
            raise QuambaError("gptq_samples and gptq_seqlen must be positive")
        if not 0.0 < self.percentile_alpha <= 1.0:
            raise QuambaError(f"percentile alpha must be in (0, 1], got {self.percentile_alpha}")
        if self.layer_precision is not None:
            object.__setattr__(self, "layer_precision", tuple(self.layer_precision))
            bad = [p for p in self.layer_precision if p not in ("W4A8", "W4A16")]
            if bad or self.w_bits != 4:
                raise QuambaError(f"layer_precision lists W4A8 / W4A16 per layer with --w-bits 4 (got {bad or self.w_bits})")
        if self.auto_a8_fraction is not None:
            if self.layer_precision is not None:
                raise QuambaError("give either layer_precision or auto_a8_fraction, not both")
            if not 0.0 <= self.auto_a8_fraction <= 1.0 or self.w_bits != 4:
                raise QuambaError("auto_a8_fraction is a share in [0, 1] of W4A8 layers, with --w-bits 4")

    def precisions(self, n_layer: int) -> list[str]:
        if self.layer_precision is None:
            return [f"W{self.w_bits}A{self.a_bits}"] * n_layer
        if len(self.layer_precision) != n_layer:
            raise QuambaError(f"layer_precision lists {len(self.layer_precision)} layers; the model has {n_layer}")
        return list(self.layer_precision)


RECIPES = {"quamba1": Quamba1Config, "quamba2": Quamba2Config}


def make_recipe(recipe, **options):
    """A recipe config from a name (+ keyword options) or a config object (options then override fields)."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise QuambaError(f"unknown recipe {recipe!r}; available: {', '.join(RECIPES)}")
        cls = RECIPES[recipe]
        base = {}
    elif type(recipe) in RECIPES.values():
        cls, base = type(recipe), asdict(recipe)
    else:
        raise QuambaError(f"recipe must be a name ({', '.join(RECIPES)}) or a recipe config, got {type(recipe).__name__}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise QuambaError(f"recipe {cls.name} has no option {unknown[0]!r}; options: {', '.join(sorted(valid))}")
    return cls(**{**base, **options})


def recipe_to_dict(cfg) -> dict:
    return {"type": cfg.name, "version": cfg.version, "data": asdict(cfg)}


def recipe_from_dict(d: dict):
    try:
        cls = RECIPES[d["type"]]
    except (KeyError, TypeError):
        raise QuambaError(f"checkpoint names an unknown recipe {d!r}") from None
    if d.get("version", 0) > cls.version:
        raise QuambaError(f"checkpoint recipe {d['type']} version {d['version']} is newer than this quamba's "
                          f"({cls.version}): upgrade quamba")
    data = dict(d["data"])
    if data.get("layer_precision") is not None:
        data["layer_precision"] = tuple(data["layer_precision"])
    return cls(**data)
