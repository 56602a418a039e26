"""benchmarks/breakdown.py: its report renders every phase and kernel, and a CPU-only machine gets a clear refusal."""
import subprocess
import sys

import pytest
import torch

from . import ROOT, load_benchmark


def _phase(wall, kernels):
    return {"wall_ms": wall, "kernel_us": sum(us for _, _, us in kernels), "launches": sum(n for _, n, _ in kernels),
            "kernels": [{"kernel": k, "launches": n, "us": us} for k, n, us in kernels],
            "host_ms_by_module": {"A8Mamba2Mixer": 40.0, "W4A8Linear": 12.5}}


def test_markdown_lists_each_phase_and_its_kernels():
    bd = load_benchmark("breakdown")
    row = {"model": "mamba2-2.7b", "variant": "W4A8",
           "prefill": _phase(60.0, [("_w4a8_gemm_kernel", 128, 20000.0), ("_rms_norm_kernel", 65, 900.0)]),
           "decode": _phase(49.0, [("_w4a8_gemv_kernel", 128, 2200.0)]),
           "decode_graph": _phase(2.9, [("_w4a8_gemv_kernel", 128, 2200.0), ("_ssd_state_update_kernel", 64, 300.0)])}
    report = {"device": {"gpu": "Test GPU", "torch": "2.x", "triton": "3.x"}, "settings": {"prompt_len": 1024},
              "rows": [row, {"model": "mamba2-2.7b", "variant": "W8A8", "error": "RuntimeError: boom"}]}
    md = bd.markdown(report, top=5)
    assert md.startswith("# Time breakdown on Test GPU")
    assert "| prefill | 60.000 | 20.900 | 193 | A8Mamba2Mixer 40.00, W4A8Linear 12.50 |" in md
    assert "| `_w4a8_gemm_kernel` | 128 | 20000.0 | 95.7% |" in md
    assert "| `_ssd_state_update_kernel` | 64 | 300.0 | 12.0% |" in md
    assert "## mamba2-2.7b W8A8: RuntimeError: boom" in md


def test_host_clock_times_each_module_class():
    bd = load_benchmark("breakdown")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    clock = bd.HostClock(model)
    model(torch.randn(3, 4))
    model(torch.randn(3, 4))
    clock.remove()
    model(torch.randn(3, 4))  # hooks removed: no more counting
    assert clock.calls == {"Linear": 4, "ReLU": 2, "Sequential": 2}
    assert clock.total["Sequential"] >= clock.total["Linear"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_needs_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "breakdown.py")], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode != 0 and "needs a CUDA device" in r.stderr
    assert "Traceback" not in r.stderr
