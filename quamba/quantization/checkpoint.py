"""The quantized checkpoint: a per-module type map written at save time, and a loader that rebuilds each module
from that map (never from a global setting), then loads every tensor strictly.

config.json["quantization"] = {
    "format_version": 1,
    "recipe": {"type", "version", "data"},          # every option
    "calibration": {...},                           # source, sha256, samples, seqlen, seed
    "dtype": "float16",                             # the float parts of the model
    "modules": {path: {"type": NAME, "args": {...}}}  # every module whose type differs from full precision,
}                                                   # and every module below such a module
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import QuambaError
from ..models.io import check_and_assign, parse_config, read_tensors
from ..models.mamba import MambaLMHeadModel
from ..modules import build_module, module_spec

QUANT_FORMAT_VERSION = 1


def module_map(model: MambaLMHeadModel) -> dict:
    """{path: spec} for each module whose type differs from the full-precision model's at that path, plus every
    module below one of those."""
    with torch.device("meta"):
        fp_types = {p: type(m) for p, m in MambaLMHeadModel(replace(model.config, tie_embeddings=False)).named_modules()}
    out, roots = {}, []
    for path, m in model.named_modules():
        below = any(path.startswith(r + ".") for r in roots)
        if below or fp_types.get(path) is not type(m):
            out[path] = module_spec(m)
            if not below:
                roots.append(path)
    return out


def _set_module(root: nn.Module, path: str, module: nn.Module):
    parent_path, _, name = path.rpartition(".")
    try:
        parent = root.get_submodule(parent_path) if parent_path else root
    except AttributeError:
        raise QuambaError(f"quantized checkpoint places {path!r} under a module that does not exist") from None
    setattr(parent, name, module)


def load_quantized(path: Path, raw: dict, device="cpu") -> MambaLMHeadModel:
    q = raw["quantization"]
    if not isinstance(q, dict):
        raise QuambaError(f"{path}/config.json: 'quantization' must be an object")
    ver = q.get("format_version")
    if not isinstance(ver, int) or ver > QUANT_FORMAT_VERSION:
        raise QuambaError(f"{path}/config.json has quantization format_version {ver!r}; this quamba reads up to "
                          f"{QUANT_FORMAT_VERSION}: upgrade quamba")
    for key in ("recipe", "dtype", "modules"):
        if key not in q:
            raise QuambaError(f"{path}/config.json: quantization section lacks {key!r}")
    from .recipes import recipe_from_dict

    recipe_from_dict(q["recipe"])  # validates type and version
    config = parse_config(raw, path)
    dtype = getattr(torch, str(q["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise QuambaError(f"{path}/config.json: unknown quantization dtype {q['dtype']!r}")
    with torch.device("meta"):
        model = MambaLMHeadModel(config, dtype=dtype)
        for mpath in sorted(q["modules"], key=lambda p: p.count(".")):
            spec = q["modules"][mpath]
            if not isinstance(spec, dict) or "type" not in spec:
                raise QuambaError(f"{path}/config.json: module entry {mpath!r} needs a 'type'")
            _set_module(model, mpath, build_module(spec["type"], spec.get("args", {}), mpath))
    for mpath, m in model.named_modules():
        missing = [c for c in getattr(m, "CHILDREN", ()) if not isinstance(getattr(m, c, None), nn.Module)]
        if missing:
            raise QuambaError(f"{path}/config.json: module {mpath!r} ({type(m).__name__}) lacks its part "
                              f"{mpath}.{missing[0]} in the module map")
    tensors, origin = read_tensors(path)
    check_and_assign(model, tensors, origin, path, exact_dtype=True)
    model.quantization = {k: v for k, v in q.items() if k != "modules"}
    return model.to(device).eval()
