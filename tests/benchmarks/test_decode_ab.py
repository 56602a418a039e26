"""benchmarks/decode_ab.py: every switch sets what it names and restores it, the steps see the switched option, the
CPU smoke run alternates off / on and writes its tables, and a CPU-only machine gets a clear refusal."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ops.triton_harness import requires_triton  # first: the kernel modules load under the interpreter on a CPU

from quamba.modules.scan import Int8State, QSelectiveScan

from . import ROOT, load_benchmark

pytestmark = requires_triton  # the switches patch the kernel modules


def _kernel_modules():
    from quamba.ops.triton import _common, gemv, selective_scan, ssd

    return _common, gemv, selective_scan, ssd


def _scan():
    """A quantized Mamba1 scan built without an int8 state."""
    return QSelectiveScan(4, 2)


def test_switches_set_their_option_and_restore_it(monkeypatch):
    _common, gemv, selective_scan, ssd = _kernel_modules()
    bench = load_benchmark("decode_ab")
    monkeypatch.delenv("QUAMBA_FUSED_DECODE", raising=False)
    max_m, ssd_launch = dict(gemv.GEMV_MAX_M), ssd._ssd_state_update_launch
    seen = {
        "early-params": lambda: _common.EARLY_PARAMS,
        "gemv-m16": lambda: gemv.GEMV_MAX_M == {fmt: 16 for fmt in max_m},
        "gemv-lookahead": lambda: gemv.config_for("w4a8", 1, 256, 512, 128, torch.device("cuda", 0)).lookahead == 2,
        "gemv-l2": lambda: gemv.config_for("w4a8", 1, 256, 512, 128, torch.device("cuda", 0)).l2_prefetch,
        "fused-decode": lambda: os.environ["QUAMBA_FUSED_DECODE"] == "1",
        "prefetch-state": lambda: ssd._ssd_state_update_launch is ssd_launch,
        "dt-proj-words": lambda: selective_scan.DT_PROJ_WORDS,
        "state-int8": lambda: isinstance(_scan().empty_state(1), Int8State),
    }
    monkeypatch.setattr(gemv, "_sm_count", lambda index: 132)  # config_for on a "GPU" without one
    gemv._plan.cache_clear()
    assert set(seen) == set(bench.SWITCHES)
    for name, check in seen.items():
        for on in (False, True):
            restore = bench.SWITCHES[name][2](on)
            assert check() is on, (name, on)
            restore()
        assert _common.EARLY_PARAMS is True and gemv.GEMV_MAX_M == max_m, name
        assert ssd._ssd_state_update_launch is ssd_launch and "QUAMBA_FUSED_DECODE" not in os.environ, name
        assert selective_scan.DT_PROJ_WORDS is True, name
        assert type(_scan().empty_state(1)) is torch.Tensor, name
    cfg = gemv.config_for("w4a8", 1, 256, 512, 128, torch.device("cuda", 0))
    assert cfg.lookahead == 1 and not cfg.l2_prefetch
    gemv._plan.cache_clear()


def test_prefetch_state_off_reaches_the_launchers(monkeypatch):
    """Off: the decode steps' prefetch_state=True arrives as False at both state-update launchers."""
    _, _, selective_scan, ssd = _kernel_modules()
    bench = load_benchmark("decode_ab")
    got = []
    for mod, name in ((selective_scan, "_selective_state_update_launch"), (ssd, "_ssd_state_update_launch")):
        monkeypatch.setattr(mod, name, lambda *a, **kw: got.append(kw["prefetch_state"]))
    restore = bench.SWITCHES["prefetch-state"][2](False)
    selective_scan._selective_state_update_launch(prefetch_state=True)
    ssd._ssd_state_update_launch(prefetch_state=True)
    restore()
    selective_scan._selective_state_update_launch(prefetch_state=True)
    assert got == [False, False, True]


def test_smoke_run_alternates_and_writes_tables(tmp_path):
    bench = load_benchmark("decode_ab")
    stem, stem2, stem3 = bench.main(["--switch", "early-params,prefetch-state,state-int8", "--models", "tiny-mamba2",
                                     "--variants", "fp16,W4A8", "--device", "cpu", "--rounds", "2", "--steps", "2",
                                     "--out-dir", str(tmp_path)])
    assert len(json.loads(Path(stem3 + ".json").read_text())["rows"][1]["on_ms"]) == 2  # decoded on an int8 state
    assert Path(stem).name.startswith("decode_ab_early-params_tiny-mamba2_")  # then the device name
    assert Path(stem2).name.startswith("decode_ab_prefetch-state_tiny-mamba2_")  # the same models, a second switch
    second = json.loads(Path(stem2 + ".json").read_text())
    assert second["settings"]["switch"] == "prefetch-state" and len(second["rows"][1]["on_ms"]) == 2
    report = json.loads(Path(stem + ".json").read_text())
    assert report["settings"]["switch"] == "early-params" and report["settings"]["default"] == "on"
    fp, q = report["rows"]
    assert len(q["off_ms"]) == len(q["on_ms"]) == 2
    assert q["on_speedup"] == pytest.approx(q["off_median_ms"] / q["on_median_ms"])
    assert fp["on_vs_fp16"] == pytest.approx(1.0)  # fp16's own default setting
    assert q["on_vs_fp16"] == pytest.approx(fp["on_median_ms"] / q["on_median_ms"])
    assert "| tiny-mamba2 | W4A8 |" in Path(stem + ".md").read_text()
    assert _kernel_modules()[0].EARLY_PARAMS is True


def test_bad_switch_is_refused():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_ab.py"), "--switch", "faster"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "unknown --switch faster: choose from early-params" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_needs_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_ab.py"), "--switch", "early-params"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
