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


RECIPES = {"quamba1": Quamba1Config}


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
    return cls(**d["data"])
