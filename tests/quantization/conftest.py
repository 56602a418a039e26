import pytest
import torch

import quamba
from quamba.models import build_random_model, tiny_config


def calib_ids(n=8, seqlen=32, vocab=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seqlen), generator=g)


@pytest.fixture(scope="module")
def mamba1_fp():
    return build_random_model(tiny_config("mamba1"), seed=3).eval()


def quantize_tiny(model, **options):
    options.setdefault("calib_samples", 8)
    options.setdefault("calib_seqlen", 32)
    return quamba.quantize(model, options.pop("recipe", "quamba1"), calib_data=calib_ids(), **options)
