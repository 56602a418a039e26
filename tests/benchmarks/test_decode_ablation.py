"""benchmarks/decode_ablation.py: a cached part launches nothing after its first real call, every part a mixer has
is found, the CPU smoke run writes its tables, and a CPU-only machine gets a clear refusal."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import ROOT, load_benchmark


def _model(bench, variant):
    args = bench.e2e.parse_args(["--calib-samples", "2", "--calib-seqlen", "16"])
    return bench.e2e.build_variant("tiny-mamba2", variant, args, torch.device("cpu"), torch.float32)


def test_parts_found_per_mixer():
    bench = load_benchmark("decode_ablation")
    q, fp = _model(bench, "W4A8"), _model(bench, "fp16")
    n = q.config.n_layer
    for part in ("norm", "in_proj", "scan", "gate", "out_proj"):
        assert len(bench.part_targets(q, part)) == n, part
    assert bench.part_targets(q, "x_proj") == []  # Mamba2 has none
    assert bench.part_targets(fp, "scan") == bench.part_targets(fp, "gate") == []  # fp steps call ops directly
    assert list(bench.ablations(q)) == ["none", "norm", "in_proj", "scan", "gate", "out_proj", "gemv", "small", "all"]
    assert bench.ablations(fp) == {"none": (), "norm": ("norm",), "in_proj": ("in_proj",),
                                   "out_proj": ("out_proj",), "gemv": ("in_proj", "out_proj"),
                                   "all": ("norm", "in_proj", "out_proj")}


def test_cached_part_runs_once_then_replays_and_restores():
    bench = load_benchmark("decode_ablation")
    model = _model(bench, "W4A8")
    scans = [obj for obj, _ in bench.part_targets(model, "scan")]
    real_step = type(scans[0]).step
    calls = []
    patches = [bench.Cached(s, "step") for s in scans]
    for c in patches:  # count what reaches the real method
        inner = c.real
        c.real = lambda *a, _inner=inner, **k: calls.append(1) or _inner(*a, **k)
    bench._prime(model, 2)
    bench._prime(model, 2)
    bench._prime(model, 1)  # a new batch size is a new signature: one more real call per layer
    assert len(calls) == 2 * model.config.n_layer
    assert all(len(c.outputs) == 2 for c in patches)  # batch 2 and batch 1
    for c in patches:
        c.restore()
    assert "step" not in vars(scans[0]) and type(scans[0]).step is real_step


def test_smoke_run_writes_json_and_markdown(tmp_path):
    bench = load_benchmark("decode_ablation")
    stem = bench.main(["--models", "tiny-mamba1", "--variants", "W8A8", "--device", "cpu", "--rounds", "1",
                       "--steps", "2", "--out-dir", str(tmp_path)])
    report = json.loads(Path(stem + ".json").read_text())
    cached = [r["cached"] for r in report["rows"]]
    assert cached == ["none", "norm", "in_proj", "x_proj", "scan", "gate", "out_proj", "gemv", "small", "all"]
    none = report["rows"][0]
    assert none["saved_ms"] == 0 and none["tpot_ms"] == report["summaries"][0]["tpot_ms"]
    for r in report["rows"]:
        assert r["saved_ms"] == pytest.approx(none["tpot_ms"] - r["tpot_ms"])
    assert report["summaries"][0]["projection_bytes"] > 0
    gemv = next(r for r in report["rows"] if r["cached"] == "gemv")
    assert report["summaries"][0]["projections_ms"] == pytest.approx(gemv["saved_ms"])
    md = Path(stem + ".md").read_text()
    assert "| tiny-mamba1 | W8A8 | x_proj |" in md and "fixed ms (all cached)" in md


def test_rows_give_marginal_costs_and_the_floor_ratio():
    bench = load_benchmark("decode_ablation")
    tpots = {"none": 2.0, "norm": 1.9, "gemv": 1.0, "all": 0.2}
    rows, s = bench.rows_for("m", "W4A8", tpots, 10, proj_bytes=1_000_000_000, bandwidth=2e12)
    norm = next(r for r in rows if r["cached"] == "norm")
    assert norm["saved_ms"] == pytest.approx(0.1) and norm["saved_us_per_layer"] == pytest.approx(10.0)
    assert norm["share"] == pytest.approx(0.05)
    # 1 GB at 2 TB/s = 0.5 ms; the projections took 2.0 - 1.0 = 1.0 ms
    assert s["projection_floor_ms"] == pytest.approx(0.5) and s["projections_vs_floor"] == pytest.approx(2.0)
    assert s["fixed_ms"] == 0.2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_needs_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_ablation.py")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stderr
    assert "Traceback" not in r.stderr
