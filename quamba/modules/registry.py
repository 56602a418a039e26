"""The allow-list of module types a quantized checkpoint may name, and how each is rebuilt.

A checkpoint's ``quantization.modules`` maps a module path to ``{"type": NAME, "args": {...}}``. Loading builds
``MODULE_TYPES[NAME](**args)`` (on the meta device) at that path, never guessing a type from a global setting.
Quantized modules are registered with ``@register`` and give their args with ``spec()``; full-precision types that
can sit under a quantized parent are registered below with explicit builders.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import QuambaError

MODULE_TYPES: dict[str, type] = {}


def register(cls):
    MODULE_TYPES[cls.__name__] = cls
    return cls


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise QuambaError(f"unknown dtype {name!r} in a quantized checkpoint")
    return dt


def module_spec(module: nn.Module) -> dict:
    """{"type", "args"} for any module that can appear in a module map."""
    name = type(module).__name__
    if name not in MODULE_TYPES:
        raise QuambaError(f"module type {name} cannot be saved in a quantized checkpoint (not in the registry)")
    return {"type": name, "args": module.spec()}


def build_module(type_name: str, args: dict, path: str) -> nn.Module:
    cls = MODULE_TYPES.get(type_name)
    if cls is None:
        raise QuambaError(f"quantized checkpoint names unknown module type {type_name!r} for {path!r}; "
                          f"known types: {', '.join(sorted(MODULE_TYPES))} (a newer quamba may be needed)")
    try:
        return cls(**args)
    except TypeError as e:
        raise QuambaError(f"quantized checkpoint has bad args for {path!r} ({type_name}): {e}") from None


# ---- full-precision modules that may live inside a quantized parent -------------------------------------
@register
class Linear(nn.Linear):
    """nn.Linear with a spec (the fp lm_head or a projection left in float)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: str = "float16"):
        super().__init__(in_features, out_features, bias=bias, dtype=parse_dtype(dtype))

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "dtype": dtype_name(self.weight.dtype)}
