"""Calibration data: every supported source, recorded provenance, clear errors."""
import gzip
import json

import pytest
import torch

from quamba.errors import QuambaError
from quamba.quantization.calibration import load_calibration
from quamba.quantization.observers import MinMaxObserver, PercentileObserver
from quamba.tokenizer import byte_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


@pytest.mark.parametrize("kind", ["txt", "gz", "jsonl"])
def test_files_are_read_and_hashed(tmp_path, kind):
    if kind == "txt":
        f = tmp_path / "c.txt"
        f.write_text(TEXT)
    elif kind == "gz":
        f = tmp_path / "c.txt.gz"
        with gzip.open(f, "wt") as g:
            g.write(TEXT)
    else:
        f = tmp_path / "c.jsonl"
        f.write_text("\n".join(json.dumps({"text": TEXT[i : i + 300]}) for i in range(0, len(TEXT), 300)))
    c = load_calibration(f, byte_tokenizer(), samples=5, seqlen=40, seed=3)
    assert c.input_ids.shape == (5, 40)
    assert c.provenance["source"] == str(f) and len(c.provenance["sha256"]) == 64
    assert c.provenance["seed"] == 3 and c.provenance["samples"] == 5
    again = load_calibration(f, byte_tokenizer(), samples=5, seqlen=40, seed=3)
    assert torch.equal(c.input_ids, again.input_ids)  # seeded
    other = load_calibration(f, byte_tokenizer(), samples=5, seqlen=40, seed=4)
    assert not torch.equal(c.input_ids, other.input_ids)


def test_texts_and_token_tensors():
    c = load_calibration([TEXT, TEXT], byte_tokenizer(), samples=2, seqlen=16)
    assert c.provenance["source"] == "texts"
    ids = torch.randint(0, 10, (6, 8))
    t = load_calibration(ids, None, samples=4, seqlen=8)
    assert torch.equal(t.input_ids, ids[:4])


def test_errors(tmp_path):
    tok = byte_tokenizer()
    with pytest.raises(QuambaError, match="no such file"):
        load_calibration(tmp_path / "none.txt", tok, 2, 8)
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(QuambaError, match="has only 4 tokens"):
        load_calibration(tmp_path / "short.txt", tok, 2, 8)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(QuambaError, match="line 1 is not a JSON object with a 'text' field"):
        load_calibration(tmp_path / "bad.jsonl", tok, 2, 8)
    with pytest.raises(QuambaError, match="positive"):
        load_calibration([TEXT], tok, 0, 8)


def test_observers():
    mm = MinMaxObserver(per_channel=True)
    mm.update(torch.tensor([[1.0, -3.0], [-2.0, 0.5]]))
    mm.update(torch.tensor([[0.0, 4.0]]))
    assert torch.equal(mm.absmax, torch.tensor([2.0, 4.0]))
    p = PercentileObserver(alpha=0.5)
    p.update(torch.arange(1.0, 101.0))  # 0.5-quantile of |x| = 50
    p.update(torch.arange(1.0, 101.0) * 3)  # 150
    assert p.scale().item() == pytest.approx(100.0 / 127)


def test_self_sampled_calibration_is_seeded_and_recorded(tmp_path):
    import quamba
    from quamba.models import build_random_model, tiny_config

    model = build_random_model(tiny_config("mamba1"), seed=2)
    a = quamba.quantize(model, calib_samples=3, calib_seqlen=12, seed=4)
    b = quamba.quantize(model, calib_samples=3, calib_seqlen=12, seed=4)
    prov = a.quantization["calibration"]
    assert prov["source"] == "self-sampled" and prov["seed"] == 4 and prov["samples"] == 3
    assert prov["sha256"] == b.quantization["calibration"]["sha256"]
    ids = torch.randint(0, 257, (1, 10))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)  # same seed, same model: same quantized model
    a.save_pretrained(tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["calibration"]
    assert saved["source"] == "self-sampled"
