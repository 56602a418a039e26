"""Command-line values shared by every `quamba` subcommand: --dtype and --device, with one-line errors."""
from __future__ import annotations

from .errors import QuambaError

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype(name: str | None):
    """'float16' / 'fp16' / ... -> torch.float16; None stays None (keep the stored dtype)."""
    import torch

    if name is None:
        return None
    if name not in DTYPE_NAMES:
        raise QuambaError(f"--dtype {name!r} is not one of {', '.join(sorted(DTYPE_NAMES))}")
    return getattr(torch, DTYPE_NAMES[name])


def torch_device(name: str):
    """'cpu', 'cuda', 'cuda:1' or 'auto' (a GPU when torch sees one) -> torch.device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QuambaError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise QuambaError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1 ...)") from None
