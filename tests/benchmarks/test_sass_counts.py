"""benchmarks/sass_counts.py: compiles a decode kernel for sm_90 on this machine (no GPU) and reads its registers and
instructions from the cubin; refuses an unknown kernel in one line. Run as a subprocess: the test session loads the
kernels under Triton's interpreter, which cannot compile them."""
import json
import os
import subprocess
import sys

import pytest

from tests.ops.triton_harness import requires_triton

from . import ROOT

pytestmark = requires_triton


def _run(*args, **extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "QUAMBA_FAST_EPILOGUE")} | extra_env
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sass_counts.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)


def _counts(tmp_path, kernels: str, **extra_env):
    """(counts by kernel, stdout) of ``--kernels kernels``; skips where triton has no CUDA tools."""
    out = tmp_path / f"counts_{kernels}_{'_'.join(extra_env.values())}.json"
    r = _run("--kernels", kernels, "--json", str(out), **extra_env)
    if r.returncode and "nvidia backend" in r.stderr:
        pytest.skip("this triton has no CUDA backend tools (cuobjdump / nvdisasm)")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())["kernels"], r.stdout


def test_counts_of_the_w4a8_gemv(tmp_path):
    counts, stdout = _counts(tmp_path, "gemv-w4a8")
    c = counts["gemv-w4a8"]
    assert 16 <= c["registers"] <= 255 and c["stack_bytes"] >= 0
    assert 0 < c["before_first_global_load"] < c["instructions"]
    assert "gemv-w4a8:" in stdout and "sm_90" in stdout


def test_prefill_kernels_get_an_issue_time(tmp_path):
    """The prefill kernels report the time issuing their instructions takes at their model shape; the Hadamard
    kernel's column signs are compile-time constants (the Paley construction evaluated in the kernel, an integer
    modulo per entry, compiled to 1050-1680 fast-path instructions a program with Triton 3.6-3.9; 700-750 now)."""
    counts, stdout = _counts(tmp_path, "hadamard-prefill,conv-int8-prefill")
    for name, c in counts.items():
        assert 0 < c["fast_path_instructions"] <= c["instructions"], name
        assert c["programs"] > 0 and 1.0 < c["issue_us"] < 100.0, name
        assert f"{name}:" in stdout and "us (" in stdout
    assert counts["hadamard-prefill"]["fast_path_instructions"] < 900
    # int8 quantization rounds with cvt.rni (F2I), not round_half_even's floors (FRND), in compiled kernels
    assert counts["hadamard-prefill"]["float_roundings"] == counts["conv-int8-prefill"]["float_roundings"] == 0


def test_broadcast_channel_loads_take_no_shared_memory_round_trip(tmp_path):
    """The int8 conv loads its per-channel weights and scales as [BLOCK_D] vectors, one element a thread, and Triton
    moves them to the tile's layout through shared memory behind barriers (Triton 3.6: 39 shared loads and 15 barriers
    a program); loaded as broadcasts in the tile's layout (BCAST) with a tap-major weight, at most the final state's
    one conversion is left. Whether that is faster is for a GPU to say (gpu_check.sh times it)."""
    counts, _ = _counts(tmp_path, "conv-int8-prefill,conv-int8-prefill-bcast")
    default, bcast = counts["conv-int8-prefill"], counts["conv-int8-prefill-bcast"]
    assert default["shared_loads"] >= 8 and default["barriers"] >= 8  # Triton 3.9: 15 and 15
    assert bcast["shared_loads"] <= 2 and bcast["barriers"] <= 2
    assert bcast["registers"] <= default["registers"] and bcast["stack_bytes"] == 0


def test_int8_scans_convert_their_loads_without_the_conversion_pipe(tmp_path):
    """int8 -> fp32 / fp16 with `.to()` compiles to I2F.S8 / I2F.F16.S16, issued on sm_90's quarter-rate conversion
    pipe for every loaded element of every step: 40 of them in the chunked selective scan's loop and 64 in the SSD
    chunk scan (Triton 3.6) before _common.int8_to_float / int8_to_half replaced them (H100, 2026-12-07: int8 scan
    102.4 -> 99.5 us, int8 SSD 140.7 -> 135.2 us)."""
    counts, _ = _counts(tmp_path, "scan-int8-prefill,ssd-scan-int8-prefill")
    for name, c in counts.items():
        assert c["instructions"] > 500 and "issue_us" not in c, name  # loops over time: no issue bound
        assert c["slow_conversions"] == 0, name


def test_fast_epilogue_cuts_the_hadamard_programs_instructions(tmp_path):
    """QUAMBA_FAST_EPILOGUE=1 (read when the kernels are imported): one reciprocal for the tile's scale and the
    quotient from it in straight-line code, and rounding with saturation in one conversion (Triton 3.6: 604 fast-path
    instructions a Hadamard program against 670)."""
    counts = {flag: _counts(tmp_path, "hadamard-prefill", QUAMBA_FAST_EPILOGUE=flag)[0]["hadamard-prefill"]
              for flag in ("0", "1")}
    assert counts["1"]["fast_path_instructions"] < counts["0"]["fast_path_instructions"] - 30
    assert counts["1"]["float_roundings"] == counts["0"]["float_roundings"] == 0


def test_unknown_kernel_is_refused():
    r = _run("--kernels", "gemv-w2a2")
    assert r.returncode == 2 and "unknown --kernels gemv-w2a2: choose from gemv-w4a8" in r.stderr
    assert "Traceback" not in r.stderr
