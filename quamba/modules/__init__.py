"""Quantized nn.Modules. Each owns its forward, keeps every tensor (weights, scales) in registered buffers, and
gives ``spec()``: the constructor args recorded in the checkpoint's module map."""
from . import conv, embedding, hadamard, linear, mamba1, mamba2, norm, scan  # noqa: F401  (registers the types)
from .registry import MODULE_TYPES, build_module, module_spec

__all__ = ["MODULE_TYPES", "build_module", "module_spec"]
