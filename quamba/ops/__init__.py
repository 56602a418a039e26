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

# Quantized ends (int8 in and/or out): references and dispatchers.
from .conv1d import (qcausal_conv1d, qcausal_conv1d_ref, qcausal_conv1d_update,  # noqa: E402
                     qcausal_conv1d_update_ref)
from .embedding import qembedding, qembedding_ref  # noqa: E402
from .hadamard import (hadamard_quant, hadamard_quant_ref, qgated_norm_hadamard_quant,  # noqa: E402
                       qgated_norm_hadamard_quant_ref)
from .rmsnorm import (add_rms_norm_quant, add_rms_norm_quant_ref, qgated_rms_norm, qgated_rms_norm_ref,  # noqa: E402
                      rms_norm_quant, rms_norm_quant_ref)
from .selective_scan import (qselective_scan, qselective_scan_ref, qselective_state_update,  # noqa: E402
                             qselective_state_update_ref)
from .ssd import qssd_chunked, qssd_chunked_ref, qssd_state_update, qssd_state_update_ref  # noqa: E402

__all__ += [
    "qcausal_conv1d",
    "qcausal_conv1d_ref",
    "qcausal_conv1d_update",
    "qcausal_conv1d_update_ref",
    "rms_norm_quant",
    "rms_norm_quant_ref",
    "add_rms_norm_quant",
    "add_rms_norm_quant_ref",
    "qgated_rms_norm",
    "qgated_rms_norm_ref",
    "hadamard_quant",
    "hadamard_quant_ref",
    "qgated_norm_hadamard_quant",
    "qgated_norm_hadamard_quant_ref",
    "qembedding",
    "qembedding_ref",
    "qselective_scan",
    "qselective_scan_ref",
    "qselective_state_update",
    "qselective_state_update_ref",
    "qssd_chunked",
    "qssd_chunked_ref",
    "qssd_state_update",
    "qssd_state_update_ref",
]
