"""benchmarks/ncu_gemv.py (a driver for Nsight Compute): a model without shapes and a machine without CUDA get one-line
refusals."""
import subprocess
import sys

import pytest
import torch

from . import ROOT


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ncu_gemv.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_unknown_model_is_refused():
    r = _run("--model", "mamba-9b")
    assert r.returncode == 2 and "--model mamba-9b: no shapes" in r.stderr and "mamba2-2.7b" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_needs_a_gpu():
    r = _run()
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
