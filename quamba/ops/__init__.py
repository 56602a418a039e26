"""Reference ops in plain PyTorch: the spec, the CPU path and the oracle for every GPU kernel."""
from .conv1d import causal_conv1d_ref, causal_conv1d_update_ref
from .rmsnorm import add_rms_norm_ref, gated_rms_norm_ref, rms_norm_ref
from .selective_scan import selective_scan_ref, selective_state_update_ref
from .ssd import ssd_chunked_ref, ssd_scan_sequential_ref, ssd_state_update_ref

__all__ = [
    "causal_conv1d_ref",
    "causal_conv1d_update_ref",
    "rms_norm_ref",
    "add_rms_norm_ref",
    "gated_rms_norm_ref",
    "selective_scan_ref",
    "selective_state_update_ref",
    "ssd_chunked_ref",
    "ssd_scan_sequential_ref",
    "ssd_state_update_ref",
]

# Dispatching ops: the Triton kernels on CUDA (quamba.ops.triton), the references elsewhere.
from .conv1d import causal_conv1d, causal_conv1d_update  # noqa: E402
from .rmsnorm import add_rms_norm, gated_rms_norm, rms_norm  # noqa: E402
from .selective_scan import selective_scan, selective_state_update  # noqa: E402
from .ssd import ssd_chunked, ssd_state_update  # noqa: E402

__all__ += [
    "causal_conv1d",
    "causal_conv1d_update",
    "rms_norm",
    "add_rms_norm",
    "gated_rms_norm",
    "selective_scan",
    "selective_state_update",
    "ssd_chunked",
    "ssd_state_update",
]
