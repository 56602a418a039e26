"""What every Triton kernel test module shares: where the kernels run (CUDA, or Triton's interpreter on the CPU)
and the skip when triton is missing. Importing this at collection time also loads the kernel modules under the
interpreter before other tests' torch code can import triton uninterpreted."""
import importlib.util

import pytest
import torch

import quamba.ops.triton as qt

HAVE_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
requires_triton = pytest.mark.skipif(not HAVE_TRITON,
                                     reason="the Triton kernels need the triton package (pip install 'quamba[dev]')")

if HAVE_TRITON and not ON_GPU:
    with qt.interpreted_kernels():
        pass
