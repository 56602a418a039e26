"""``quamba.quantize``: one call from a full-precision model to a quantized one."""
from __future__ import annotations

import time

import torch

from ..errors import QuambaError
from .calibration import load_calibration, run_calibration, sample_from_model
from .recipes import make_recipe, recipe_to_dict


def quantize(model, recipe="quamba1", calib_data=None, tokenizer=None, **options):
    """Quantize ``model`` (a full-precision ``MambaLMHeadModel``) with a recipe; returns a new model.

    recipe: "quamba1" or a recipe config object; options are the recipe's fields (w_bits, a_bits,
    quantize_embedding, quantize_lm_head, gptq, percentile_alpha, calib_samples, calib_seqlen, seed, dtype, ...).
    calib_data: a text/jsonl file, a hub dataset name, a list of strings, a LongTensor [N, L] of token ids, or
    None: text sampled from the model itself (seeded, recorded as "self-sampled"; needs no data files).
    tokenizer: needed for text calibration data (default: the model's own, when it was loaded from a directory).
    The result is called like the source model and has ``save_pretrained``; its ``quantization`` dict records the
    recipe, every option and the calibration provenance.
    """
    cfg = make_recipe(recipe, **options)
    if getattr(model, "quantization", None):
        raise QuambaError("the model is already quantized; quantize its full-precision source instead")
    t0 = time.perf_counter()
    if tokenizer is None and not isinstance(calib_data, torch.Tensor) and getattr(model, "name_or_path", None):
        from ..models.io import load_tokenizer

        try:
            tokenizer = load_tokenizer(model.name_or_path)
        except QuambaError:
            if calib_data is not None:  # text needs a tokenizer; self-sampling only uses it for the start token
                raise

    def windows(samples, seqlen, seed):
        if calib_data is None:
            return sample_from_model(model, samples, seqlen, seed, start_token=_start_token(model, tokenizer))
        return load_calibration(calib_data, tokenizer, samples, seqlen, seed)

    calib = windows(cfg.calib_samples, cfg.calib_seqlen, cfg.seed)
    if cfg.name == "quamba1":
        from .quamba1 import Quamba1Observers, convert_quamba1

        if model.config.arch != "mamba1":
            raise QuambaError(f"recipe quamba1 is for Mamba1 models; this is {model.config.arch}: use --recipe quamba2")
        obs = Quamba1Observers(model, cfg, hessians=cfg.gptq)
        run_calibration(model, calib.input_ids, obs.hooks(model), cfg.calib_batch_size)
        qmodel = convert_quamba1(model, obs, cfg)
        extra = {}
    else:
        from .quamba2 import quantize_quamba2

        gptq_calib = None
        if cfg.gptq:
            gptq_calib = windows(cfg.gptq_samples, cfg.gptq_seqlen, cfg.seed + 1)
        qmodel, extra = quantize_quamba2(model, cfg, calib.input_ids, gptq_calib and gptq_calib.input_ids)
        if gptq_calib is not None:
            extra["gptq_calibration"] = gptq_calib.provenance
    from .checkpoint import QUANT_FORMAT_VERSION

    qmodel.quantization = {"format_version": QUANT_FORMAT_VERSION, "recipe": recipe_to_dict(cfg), "calibration": calib.provenance, "dtype": cfg.dtype,
                           "source": str(getattr(model, "name_or_path", "in-memory model")), **extra}
    qmodel.name_or_path = getattr(model, "name_or_path", None)
    qmodel.quantize_seconds = time.perf_counter() - t0
    return qmodel


def _start_token(model, tokenizer) -> int:
    """Self-sampled text starts at the end-of-text token, as a document boundary would."""
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0
