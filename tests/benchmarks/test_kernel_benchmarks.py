"""The kernel benchmarks run end to end on the CPU (--smoke: tiny shapes through Triton's interpreter): every row is
timed and checked against the reference path, and the results files are written. Their timings mean nothing here."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="the benchmarks run the Triton kernels (pip install 'quamba[dev]')")
ROOT = Path(__file__).resolve().parents[2]


def test_kernels_benchmark_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QUAMBA_FORCE_REFERENCE"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, env=env, capture_output=True, cwd=ROOT)
    result = json.loads(next(tmp_path.glob("kernels_*.json")).read_text())
    rows = result["rows"]
    ops = {r["op"] for r in rows}
    assert {"add + rmsnorm", "conv1d", "conv1d update", "selective scan", "selective state update",
            "ssd chunked scan", "ssd state update", "gated rmsnorm", "hadamard + quantize",
            "gated norm + hadamard + quantize", "embedding"} <= ops
    assert {r["variant"] for r in rows} >= {"fp16", "int8", "int4", "int8 two kernels"}
    for r in rows:  # every kernel agreed with its reference path
        if "int8_max_diff" in r:
            assert r["int8_max_diff"] <= 1 and r["int8_off_share"] <= 2e-3, r
        else:
            assert r["rel_err"] < 5e-3, r
        assert r["time_us"] > 0 and r["bytes"] >= 0
    assert next(tmp_path.glob("kernels_*.md")).read_text().startswith("# Kernels on ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_prefill_sweep_without_a_gpu_is_a_one_line_error():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_prefill.py")], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "sweep_prefill.py times Triton kernels: it needs a CUDA GPU (none is visible to torch)"


def test_sweep_prefill_refuses_unknown_parts():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_prefill.py"), "--parts", "hadamard,gemm"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "--parts 'hadamard,gemm': choose from conv,hadamard,scan,ssd" in run.stderr
    assert "Traceback" not in run.stderr
