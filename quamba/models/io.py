"""Finding, loading and saving checkpoints.

One entry point reads every supported layout: the state-spaces layout (``d_model``/``n_layer``/``ssm_cfg``
config, ``pytorch_model.bin``), the transformers layout (``model_type`` mamba/mamba2, ``backbone.embeddings``,
possibly sharded safetensors) and this project's own (state-spaces config plus a ``quamba`` section, and a
``quantization`` section for quantized models). Loading is strict: every tensor must be present with its
shape, nothing is initialised at random, and errors name the file and the tensor.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import QuambaError
from .config import MambaConfig
from .mamba import MambaLMHeadModel

FORMAT_VERSION = 1
ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SHARD_BYTES = 4 * 1024**3


# ---- finding a checkpoint -------------------------------------------------------------------------
def bundled_models() -> list[str]:
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").exists()) if ASSETS.is_dir() else []


def resolve_path(name_or_path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """A local directory, a bundled model name, or a hub id (fetched only when nothing local matches)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise QuambaError(f"{p} is a file; expected a {what} directory (config.json + weights)")
    if (ASSETS / str(name_or_path) / "config.json").exists():
        return ASSETS / str(name_or_path)
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        hint = f" Bundled models: {', '.join(bundled_models())}." if bundled_models() else ""
        raise QuambaError(f"no {what} directory at {name!r}, and it is not a hub id (owner/name).{hint}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.jinja"]))
    except Exception as e:  # network, auth, missing repo: all the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise QuambaError(f"{name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
                          f"({type(e).__name__}: {first[:200]}); check the id and your network, or pass a local path") from None


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.exists():
        raise QuambaError(f"{path} has no config.json: not a model checkpoint directory")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuambaError(f"{f} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise QuambaError(f"{f} must hold a JSON object")
    return raw


def parse_config(raw: dict, where: Path) -> MambaConfig:
    """Recognise the layout by its fields (never by names) and build our config."""
    try:
        if "quamba" in raw:
            ver = raw["quamba"].get("format_version")
            if not isinstance(ver, int) or ver > FORMAT_VERSION:
                raise QuambaError(f"{where}/config.json has quamba format_version {ver!r}; this quamba reads "
                                  f"up to {FORMAT_VERSION}: upgrade quamba")
            return MambaConfig.from_dict(raw["quamba"]["model"])
        if "model_type" in raw:
            if raw["model_type"] not in ("mamba", "mamba2"):
                raise QuambaError(f"{where}/config.json has model_type {raw['model_type']!r}; supported: mamba, mamba2")
            return MambaConfig.from_transformers(raw)
        if "d_model" in raw and "n_layer" in raw:
            return MambaConfig.from_state_spaces(raw)
    except KeyError as e:
        raise QuambaError(f"{where}/config.json lacks the field {e.args[0]!r}") from None
    except TypeError as e:
        raise QuambaError(f"{where}/config.json is malformed: {e}") from None
    raise QuambaError(f"{where}/config.json is neither a state-spaces config (d_model, n_layer) nor a transformers "
                      "Mamba config (model_type mamba/mamba2)")


# ---- reading tensors -------------------------------------------------------------------------------
def _read_file(f: Path) -> dict[str, torch.Tensor]:
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        return torch.load(str(f), map_location="cpu", weights_only=True)
    except Exception as e:
        raise QuambaError(f"cannot read weights file {f}: {type(e).__name__}: {str(e)[:200]}") from None


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint directory, and for each key the file it came from."""
    for name in WEIGHT_FILES:
        f = path / name
        if not f.exists():
            continue
        files = [f]
        if name.endswith(".index.json"):
            try:
                weight_map = json.loads(f.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise QuambaError(f"{f} is not a valid shard index (expected a 'weight_map' object)") from None
            files = [path / s for s in sorted(set(weight_map.values()))]
            for s in files:
                if not s.exists():
                    raise QuambaError(f"shard {s.name} listed in {f} is missing")
        tensors, origin = {}, {}
        for s in files:
            for k, v in _read_file(s).items():
                tensors[k], origin[k] = v, s.name
        return tensors, origin
    raise QuambaError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _rename_transformers_keys(tensors: dict, origin: dict):
    for k in [k for k in tensors if k.startswith("backbone.embeddings.")]:
        new = k.replace("backbone.embeddings.", "backbone.embedding.", 1)
        tensors[new], origin[new] = tensors.pop(k), origin.pop(k)


def check_and_assign(model: torch.nn.Module, tensors: dict, origin: dict, where: Path, exact_dtype: bool = False):
    """Strictly load ``tensors`` into a model built on the meta device; errors name file and key. Full-precision
    weights may come in any float dtype; with ``exact_dtype`` (quantized checkpoints) every dtype must match."""
    expected = model.state_dict()
    tied = getattr(model.config, "tie_embeddings", False) and "lm_head.weight" in expected
    if tied:
        expected.pop("lm_head.weight")
        lm = tensors.pop("lm_head.weight", None)
        emb = tensors.get("backbone.embedding.weight")
        if lm is not None and emb is not None and (lm.shape != emb.shape or not torch.equal(lm, emb.to(lm.dtype))):
            raise QuambaError(f"{where}/{origin['lm_head.weight']}: lm_head.weight differs from the embedding, but the "
                              "config ties them (tie_embeddings / tie_word_embeddings); fix the config")
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise QuambaError(f"{where}: tensor {missing[0]!r} is missing from the checkpoint"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        raise QuambaError(f"{where}/{origin.get(unexpected[0], '?')}: unexpected tensor {unexpected[0]!r} "
                          "(does the config match the weights?)")
    for k, ref in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise QuambaError(f"{where}/{origin.get(k, '?')}: tensor {k!r} has shape {tuple(t.shape)}, the config "
                              f"implies {tuple(ref.shape)}")
        if t.dtype != ref.dtype and (exact_dtype or t.dtype.is_floating_point != ref.dtype.is_floating_point
                                     or not t.dtype.is_floating_point):
            raise QuambaError(f"{where}/{origin.get(k, '?')}: tensor {k!r} has dtype {t.dtype}, expected {ref.dtype}")
    if tied:
        tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
    model.load_state_dict(tensors, strict=True, assign=True)
    if tied:
        model.tie_weights()
    return model


# ---- public API -------------------------------------------------------------------------------------
def load_model(name_or_path, device="cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load a full-precision or quantized Mamba/Mamba2 model.

    ``name_or_path``: a checkpoint directory (state-spaces, transformers or quamba layout), a bundled model
    name, or a hub id. ``dtype`` casts the floating-point weights of a full-precision model (None keeps the
    stored dtype). Returns a module; ``model(input_ids).logits`` is [B, L, vocab].
    """
    path = resolve_path(name_or_path)
    raw = read_config(path)
    if "quantization" in raw:
        from ..quantization.checkpoint import load_quantized

        model = load_quantized(path, raw, device=device)
        model.name_or_path = str(path)
        return model
    config = parse_config(raw, path)
    tensors, origin = read_tensors(path)
    _rename_transformers_keys(tensors, origin)
    with torch.device("meta"):
        model = MambaLMHeadModel(config)
    check_and_assign(model, tensors, origin, path)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device)
    model.name_or_path = str(path)
    return model.eval()


def load_tokenizer(name_or_path):
    """The tokenizer stored with a model (or at a tokenizer directory / hub id), via transformers."""
    from transformers import AutoTokenizer

    path = resolve_path(name_or_path, what="tokenizer")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise QuambaError(f"{path} has no tokenizer files; state-spaces checkpoints use the GPT-NeoX-20B tokenizer: "
                          "pass its directory or hub id (EleutherAI/gpt-neox-20b) with --tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise QuambaError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {str(e)[:200]}") from None


def checkpoint_config(model) -> dict:
    """config.json for a model: the state-spaces fields (so other tools read it) plus our own section."""
    raw = model.config.to_state_spaces()
    raw["quamba"] = {"format_version": FORMAT_VERSION, "model": model.config.to_dict()}
    if getattr(model, "quantization", None):
        from ..quantization.checkpoint import QUANT_FORMAT_VERSION, module_map

        raw["quantization"] = {"format_version": QUANT_FORMAT_VERSION, **model.quantization, "modules": module_map(model)}
    return raw


def _tensors_to_save(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" in sd and "backbone.embedding.weight" in sd \
            and sd["lm_head.weight"].data_ptr() == sd["backbone.embedding.weight"].data_ptr():
        sd.pop("lm_head.weight")
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _write_safetensors(tensors: dict, out: Path, metadata: dict):
    from safetensors.torch import save_file

    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=2))


def save_model(model, path, tokenizer=None, overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors (sharded above 4 GiB) and tokenizer files to ``path``.

    The directory appears whole or not at all: files go to a temporary sibling that is renamed into place.
    An existing ``path`` is an error unless ``overwrite``.
    """
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise QuambaError(f"{path} already exists; choose another output directory or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(checkpoint_config(model), indent=2) + "\n")
        _write_safetensors(_tensors_to_save(model), tmp, {"format": "pt", "producer": "quamba"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        else:
            src = Path(getattr(model, "name_or_path", "") or "/nonexistent")
            for f in TOKENIZER_FILES:
                if (src / f).is_file():
                    shutil.copy2(src / f, tmp / f)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
