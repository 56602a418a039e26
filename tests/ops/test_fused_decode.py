"""The fused decode step (the default; QUAMBA_FUSED_DECODE=0 turns it off): the A8 mixers' decode step with the
conv stepped in in_proj's GEMV (``ConvStep``) and, for Mamba1, dt_proj inside the state update (``DtProj``) gives
exactly what the step of separate kernels gives (same y, conv state and SSM state), with fewer launches. One-layer quantized models, Triton kernels (the interpreter on
the CPU), batch 2, a prefill then three steps."""
import pytest
import torch

import quamba
from quamba.models import build_random_model, tiny_config
from quamba.models.mamba import InferenceCache
from tests.ops.triton_harness import DEVICE, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

CASES = {  # name: (arch, recipe, options)
    "mamba1-quamba1": ("mamba1", "quamba1", {}),
    "mamba2-W8A8": ("mamba2", "quamba2", dict(w_bits=8, a_bits=8)),
    "mamba2-W4A8": ("mamba2", "quamba2", dict(w_bits=4, a_bits=8)),
}


@pytest.fixture(scope="module", params=list(CASES))
def mixer(request):
    arch, recipe, options = CASES[request.param]
    model = build_random_model(tiny_config(arch, d_model=64, n_layer=1), seed=3).eval()
    ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as mp:  # calibrate on the plain path (the interpreter would be slow)
        mp.setenv("QUAMBA_FORCE_REFERENCE", "1")
        q = quamba.quantize(model, recipe, calib_data=ids, calib_samples=2, calib_seqlen=16, calib_batch_size=2,
                            **options)
    return q.to(DEVICE).backbone.layers[0].mixer


def _count_separate_kernels(mixer, monkeypatch) -> dict:
    """Counts the conv-update kernel launches and dt_proj's own calls (Mamba1)."""
    from quamba.ops.triton import conv1d

    calls = {"conv": 0, "dt_proj": 0}
    conv_launch = conv1d._qcausal_conv1d_update_launch

    def count_conv(*a):
        calls["conv"] += 1
        return conv_launch(*a)

    monkeypatch.setattr(conv1d, "_qcausal_conv1d_update_launch", count_conv)
    if hasattr(mixer, "dt_proj"):  # removed by the test
        calls["_hook"] = mixer.dt_proj.register_forward_hook(
            lambda *_: calls.__setitem__("dt_proj", calls["dt_proj"] + 1))
    return calls


def _decode(mixer, fused: bool, monkeypatch):
    """Prefill 5 tokens, then 3 steps; returns the step outputs and the final states."""
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "1" if fused else "0")
    gen = torch.Generator().manual_seed(7)
    h_prefill = torch.randint(-128, 128, (2, 5, 64), dtype=torch.int8, generator=gen).to(DEVICE)
    steps = [torch.randint(-128, 128, (2, 1, 64), dtype=torch.int8, generator=gen).to(DEVICE) for _ in range(3)]
    cache = InferenceCache([mixer.allocate_state(2)])
    with torch.inference_mode():
        mixer(h_prefill, cache)
        ys = [mixer(h, cache) for h in steps]
    ssm = cache.ssm_states[0]
    return ys, cache.conv_states[0], ssm if torch.is_tensor(ssm) else ssm.q


def test_fused_decode_step_equals_the_separate_kernels(mixer, monkeypatch):
    calls = _count_separate_kernels(mixer, monkeypatch)
    try:
        separate = _decode(mixer, False, monkeypatch)
        before = dict(calls)
        fused = _decode(mixer, True, monkeypatch)
    finally:
        if "_hook" in calls:
            calls["_hook"].remove()
    mamba1 = hasattr(mixer, "dt_proj")
    assert before["conv"] == 3 and before["dt_proj"] == (3 + 1 if mamba1 else 0)  # steps (+ the prefill's dt_proj)
    assert calls["conv"] == 3 and calls["dt_proj"] == before["dt_proj"] + mamba1  # fused: only the prefill's
    for y, y_sep in zip(fused[0], separate[0]):
        assert torch.equal(y, y_sep)
    assert torch.equal(fused[1], separate[1]) and torch.equal(fused[2], separate[2])


def test_fused_decode_is_on_unless_turned_off(monkeypatch):
    from quamba.ops.triton import fused_decode

    monkeypatch.delenv("QUAMBA_FUSED_DECODE", raising=False)
    assert fused_decode()
    for value, on in (("1", True), ("on", True), ("0", False), ("false", False), ("off", False)):
        monkeypatch.setenv("QUAMBA_FUSED_DECODE", value)
        assert fused_decode() is on
