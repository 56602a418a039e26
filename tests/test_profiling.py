"""Profiling (quamba.profiling), architecture presets (quamba.presets) and ``quamba profile``: statistics, size by
part, state size, random models of the published shapes, and the JSON record on CPU with a tiny config."""
import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import quamba
from quamba.generate_cli import main as cli_main
from quamba.models import build_random_model, tiny_config
from quamba.models.mamba import MambaLMHeadModel
from quamba.presets import PRESETS, build_random, preset_config
from quamba.profiling import ProfileSettings, profile_model, size_breakdown, state_bytes, summarize

# Parameter counts of the published checkpoints (millions, from their shapes): the presets must give exactly these.
PUBLISHED_M = {"mamba-130m": 129.1, "mamba-370m": 371.5, "mamba-790m": 793.2, "mamba-1.4b": 1372.2,
               "mamba-2.8b": 2768.3, "mamba2-130m": 129.0, "mamba2-370m": 368.3, "mamba2-780m": 780.2,
               "mamba2-1.3b": 1343.8, "mamba2-2.7b": 2702.6, "mamba2-8b": 8237.0}


def test_summary_statistics():
    s = summarize([float(x) for x in range(1, 12)])  # 1..11
    assert (s["median"], s["p10"], s["p90"], s["min"], s["max"], s["n"]) == (6.0, 2.0, 10.0, 1.0, 11.0, 11)
    assert summarize([3.0])["p90"] == 3.0


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_published_shapes(name):
    with torch.device("meta"):  # no memory: shapes only
        model = MambaLMHeadModel(preset_config(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == PUBLISHED_M[name]


def test_preset_details():
    assert preset_config("mamba-2.8b").dt_rank == 160 and preset_config("mamba-2.8b").padded_vocab_size == 50280
    m2 = preset_config("mamba2-2.7b")
    assert (m2.nheads, m2.headdim, m2.d_state, m2.ngroups, m2.padded_vocab_size) == (80, 64, 128, 1, 50288)
    big = preset_config("mamba2-8b")
    assert (big.d_model, big.n_layer, big.vocab_size, big.ngroups, big.tie_embeddings) == (4096, 56, 256000, 8, False)
    with pytest.raises(quamba.QuambaError, match="unknown architecture"):
        preset_config("mamba-9b")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_build_is_materialised_in_the_target_dtype(dtype):
    cfg = tiny_config("mamba1", tie_embeddings=True)
    a, b = build_random(cfg, dtype=dtype, seed=3), build_random(cfg, dtype=dtype, seed=3)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in a.parameters())
    assert a.lm_head.weight is a.backbone.embedding.weight and a.random_weights
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.backbone.embedding.weight, build_random(cfg, dtype=dtype, seed=4).backbone.embedding.weight)
    mixer = a.backbone.layers[0].mixer  # mamba-ssm's init: S4D-real A, D = 1, dt in [1e-3, 0.1]
    assert torch.equal(mixer.A_log[0].float(), torch.log(torch.arange(1, cfg.d_state + 1.0)).to(dtype).float())
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias.float())
    assert bool((mixer.D == 1).all()) and 9e-4 < float(dt.min()) and float(dt.max()) < 0.11
    with torch.no_grad():
        assert torch.isfinite(a(torch.randint(0, 257, (1, 5))).logits).all()


def test_size_breakdown_by_part():
    cfg = tiny_config("mamba1")
    model = build_random_model(cfg)
    size = size_breakdown(model)
    parts, d, di, v = size["parts"], cfg.d_model, cfg.d_inner, cfg.padded_vocab_size
    assert size["lm_head_tied"] and parts["lm_head"]["bytes"] == 0
    assert parts["embedding"]["elements"] == v * d
    linear = 2 * di * d + di * (cfg.dt_rank + 2 * cfg.d_state) + (cfg.dt_rank * di + di) + di * d
    assert parts["linear"]["elements"] == cfg.n_layer * linear
    assert parts["conv"]["elements"] == cfg.n_layer * di * (cfg.d_conv + 1)
    assert parts["scan"]["elements"] == cfg.n_layer * (di * cfg.d_state + di)  # A_log, D
    assert parts["norm"]["elements"] == (cfg.n_layer + 1) * d
    assert size["total_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    st = state_bytes(model, batch_size=3)
    assert st["total_bytes"] == cfg.n_layer * 3 * di * (cfg.d_conv + cfg.d_state) * 4


def test_quantized_size_is_smaller_and_counted_by_part():
    fp = build_random_model(tiny_config("mamba2", d_model=128), seed=1)
    q = quamba.quantize(fp, "quamba2", calib_data=None, calib_samples=2, calib_seqlen=8, w_bits=4, a_bits=8,
                        group_size=32, dtype="float32")
    a, b = size_breakdown(fp)["parts"], size_breakdown(q)["parts"]
    assert b["linear"]["bytes"] < a["linear"]["bytes"] / 4  # int4 weights + scales vs fp32
    assert b["scan"]["bytes"] > 0 and b["conv"]["bytes"] < a["conv"]["bytes"]
    assert sum(p["bytes"] for p in b.values()) == size_breakdown(q)["total_bytes"]


def test_profile_model_on_cpu():
    model = build_random_model(tiny_config("mamba1"), seed=0).eval()
    settings = ProfileSettings(prompt_len=8, gen_len=3, batch_size=2, repeats=3, warmup=1)
    rec = profile_model(model, ["ttft", "tpot", "ttlt", "size", "memory"], settings)
    for key in ("ttft_ms", "tpot_ms", "ttlt_ms"):
        s = rec[key]
        assert s["n"] == 3 and 0 < s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"]
    assert rec["decode_tokens_per_s"] == pytest.approx(2e3 / rec["tpot_ms"]["median"])
    assert rec["size"]["state"]["batch_size"] == 2 and rec["memory"]["process_peak_rss_bytes"] > 0
    with pytest.raises(quamba.QuambaError, match="repeats"):
        ProfileSettings(repeats=0)


def test_profile_command_writes_json(tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny_config("mamba2").to_dict()))
    out = tmp_path / "p.json"
    args = ["profile", "--config", str(cfg), "--prompt-len", "8", "--gen-len", "2", "--repeats", "2", "--warmup", "0",
            "--ttft", "--tpot", "--size", "--json", str(out), "--quantize", "quamba2", "--w-bits", "4", "--a-bits", "8",
            "--group-size", "32", "--calib-samples", "2", "--calib-seqlen", "8", "--quantize-embedding",
            "--quantize-lm-head"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "TTFT" in printed and "TPOT" in printed and "TTLT" not in printed and "(random weights)" in printed
    rec = json.loads(out.read_text())
    assert rec["model"]["random_weights"] is True and rec["model"]["config"]["arch"] == "mamba2"
    assert rec["model"]["quantization"]["recipe"]["data"]["w_bits"] == 4
    recipe = rec["model"]["quantization"]["recipe"]["data"]
    assert recipe["quantize_embedding"] and recipe["quantize_lm_head"]
    assert rec["size"]["parts"]["lm_head"]["bytes"] > 0  # its own int4 tensors, no longer the tied fp embedding
    assert rec["model"]["quantization"]["calibration"]["source"] == "self-sampled"
    assert {"ttft_ms", "tpot_ms", "size"} <= set(rec) and "ttlt_ms" not in rec
    assert rec["settings"]["prompt_len"] == 8 and rec["device"]["type"] == "cpu"
    assert cli_main(args) == 2  # the JSON exists: never overwritten silently
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--cache-graph"], "needs a CUDA device"),
    (["--w-bits", "4"], "need --quantize"),
    (["--quantize-lm-head"], "need --quantize"),
    (["--repeats", "0"], "repeats must be >= 1"),
])
def test_profile_user_mistakes(tmp_path, capsys, extra, message):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny_config("mamba1").to_dict()))
    assert cli_main(["profile", "--config", str(cfg), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_e2e_benchmark_maps_weights_onto_transformers():
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[1] / "benchmarks" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    for cfg in (tiny_config("mamba1", tie_embeddings=False), tiny_config("mamba2", ngroups=2)):
        ours = build_random(cfg, seed=1)
        hf = e2e.to_transformers(ours)
        ids = torch.randint(0, 257, (2, 11))
        with torch.no_grad():
            a, b = ours(ids).logits, hf(ids).logits
        assert ((a - b).norm() / a.norm()).item() < 1e-4


def test_e2e_benchmark_smoke_run_with_switches(tmp_path, monkeypatch):
    """The script end to end on the CPU (tiny models): --unfused-decode sets QUAMBA_FUSED_DECODE=0 and
    --w4-dense-min-m QUAMBA_W4_DENSE_MIN_M for the run, and the results are named and labelled as such."""
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "1")  # restored after the test: main() sets them
    monkeypatch.setenv("QUAMBA_W4_DENSE_MIN_M", "0")
    monkeypatch.setenv("QUAMBA_GEMM_TMA", "0")
    spec = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[1] / "benchmarks" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    report = e2e.main(["--models", "tiny-mamba1", "--variants", "fp16,W8A8", "--device", "cpu", "--prompt-len", "8",
                       "--repeats", "1", "--tpot-repeats", "2", "--warmup", "1", "--big-batch", "2", "--gen-len", "2",
                       "--calib-samples", "2", "--calib-seqlen", "16", "--unfused-decode", "--w4-dense-min-m", "64",
                       "--gemm-tma", "--out-dir", str(tmp_path)])
    assert os.environ["QUAMBA_FUSED_DECODE"] == "0" and report["settings"]["unfused_decode"] is True
    assert os.environ["QUAMBA_W4_DENSE_MIN_M"] == "64" and report["settings"]["w4_dense_min_m"] == 64
    assert os.environ["QUAMBA_GEMM_TMA"] == "1" and report["settings"]["gemm_tma"] is True
    assert [r["variant"] for r in report["rows"]] == ["fp16", "W8A8"]
    assert all(r["tpot_b1_ms"]["median"] > 0 for r in report["rows"])
    md = next(tmp_path.glob("e2e_tiny-mamba1_unfused-decode_w4-dense-64_tma_*.md")).read_text()
    assert "A8 decode steps unfused (QUAMBA_FUSED_DECODE=0)" in md and "(QUAMBA_W4_DENSE_MIN_M=64)" in md
    assert "(QUAMBA_GEMM_TMA=1)" in md


def test_e2e_table_shows_the_graph_ttft(tmp_path):
    """With --cache-graph (a GPU) the rows carry the prefill replayed from a CUDA graph: its column and its ratio to
    fp16 come out in the markdown (here on hand-made rows: the CPU cannot capture graphs)."""
    spec = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[1] / "benchmarks" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)

    def row(variant, ttft, graph, tpot):
        ms = lambda v: {"median": v}  # noqa: E731
        return {"model": "m", "variant": variant, "ttft_ms": ms(ttft), "ttft_graph_ms": ms(graph),
                "tpot_b1_ms": ms(tpot), "tpot_bN_ms": ms(tpot), "size_bytes": 2**20, "bytes_per_step_b1": 1e6,
                "bytes_per_step_bN": 1e6, "memory_b1": {}, "memory_bN": {}}

    rows = [row("fp16", 40.0, 20.0, 3.0), row("W8A8", 50.0, 16.0, 2.0)]
    e2e.add_ratios(rows, 1e12)
    assert rows[1]["ttft_graph_vs_fp16"] == 16.0 / 20.0 and rows[1]["ttft_vs_fp16"] == 50.0 / 40.0  # time ratios
    report = {"device": {"name": "GPU"}, "dtype": "float16", "bandwidth_bytes_per_s": 1e12, "rows": rows,
              "settings": {"prompt_len": 1024, "cache_graph": True, "repeats": 5, "tpot_repeats": 30, "big_batch": 16}}
    md = e2e.markdown(report)
    assert "| TTFT graph ms | x fp16 |" in md and "| 16.00 | 0.80 |" in md
    assert "replayed from a CUDA graph" in md


def test_fused_decode_benchmark_smoke_run(tmp_path, monkeypatch):
    """benchmarks/fused_decode.py end to end on the CPU (tiny model): both switch settings timed on one built model,
    the ratios filled in, JSON and markdown written under the model and device names."""
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "1")  # restored after the test: the script sets and clears it
    spec = importlib.util.spec_from_file_location(
        "fused_decode", Path(__file__).resolve().parents[1] / "benchmarks" / "fused_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stem = bench.main(["--models", "tiny-mamba1", "--variants", "fp16,W8A8", "--device", "cpu", "--batches", "1,2",
                       "--rounds", "1", "--steps", "2", "--out-dir", str(tmp_path)])
    report = json.loads(Path(stem + ".json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["fp16", "W8A8"]
    for r in report["rows"]:
        for b in (1, 2):
            assert len(r[f"tpot_b{b}_unfused_ms"]) == len(r[f"tpot_b{b}_fused_ms"]) == 1
            assert r[f"b{b}_fused_speedup"] == r[f"b{b}_unfused_median_ms"] / r[f"b{b}_fused_median_ms"]
    fp16 = report["rows"][0]
    assert fp16["b1_fused_vs_fp16"] == 1.0
    md = Path(stem + ".md").read_text()
    assert "| tiny-mamba1 | W8A8 |" in md and "b2 fused ms" in md


def test_sizes_benchmark_extrapolation_is_exact(tmp_path):
    """benchmarks/sizes.py carries sizes from 1-2 layer, small-vocabulary builds to the full shape: the result equals a
    direct build's size_breakdown, part by part (Mamba1 tied, Mamba2 untied with a padded vocabulary; fp16 and
    quantized with and without the embedding and lm_head), and the script writes its tables."""
    spec = importlib.util.spec_from_file_location("sizes", Path(__file__).resolve().parents[1] / "benchmarks" / "sizes.py")
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    cases = [("mamba-130m", dict(n_layer=3, vocab_size=2500), "W4A8", True),
             ("mamba2-130m", dict(n_layer=3, vocab_size=2500, tie_embeddings=False), "W8A8", False),
             ("mamba2-130m", dict(n_layer=2, vocab_size=3000, tie_embeddings=False), "fp16", False)]
    for name, shape, variant, emb_head in cases:
        config = dataclasses.replace(preset_config(name), **shape)
        direct = sizes.built_size(config, variant, emb_head)
        carried = sizes.extrapolated_size(config, variant, emb_head)
        assert carried["parts"] == {p: v["bytes"] for p, v in direct["parts"].items()}, (name, variant, emb_head)
        assert carried["total_bytes"] == direct["total_bytes"] and carried["lm_head_tied"] == direct["lm_head_tied"]
    stem = sizes.main(["--models", "mamba-130m", "--variants", "W4A8", "--out-dir", str(tmp_path)])
    rows = json.loads(Path(f"{stem}.json").read_text())["rows"]
    assert [(r["variant"], r["embedding_lm_head_quantized"]) for r in rows] == [
        ("fp16", False), ("W4A8", False), ("W4A8", True)]
    assert rows[0]["vs_fp16"] == 1 and rows[2]["vs_fp16"] < rows[1]["vs_fp16"] < 1
    assert "| mamba-130m | W4A8 | quantized |" in Path(f"{stem}.md").read_text()
