"""The fused gated RMSNorm (int8 gate) + Hadamard + int8 kernel (``qgated_norm_hadamard_quant``) against its reference
and against the two kernels it replaces (``qgated_rms_norm`` then ``hadamard_quant``).

The kernel fuses norm groups that divide the Hadamard's power-of-two part P (GS <= P); larger groups (a group
spanning sub-rows, e.g. mamba2-2.7b's one group of 5120 = 20 * 256) run the two kernels. On a GPU the kernels run
on CUDA; without one in Triton's interpreter (small shapes). What holds:
  * vs the two-kernel path: in the interpreter bit-identical, because each group's squares are summed by the same
    tl.sum; on the GPU the reductions' orders depend on the layouts, so there only the bound is asserted.
  * vs the reference: at most one int8 step on at most MAX_OFF_BY_ONE of the elements (the fp32 sums, the
    H_m products and the SiLU differ from torch's in order or in ulps; measured in the interpreter, fp16, 256
    rows: 3.8e-6 of the elements at 8192 in 8 groups).
  * bf16 in the interpreter: Triton's interpreter truncates fp32 -> bf16 (the GPU rounds to nearest), so there
    bf16 is compared with the two-kernel path only (which truncates the same way), not with the reference.
"""
import pytest
import torch

import quamba
from quamba.errors import QuambaError
from quamba.models import build_random_model, tiny_config
from quamba.models.mamba import InferenceCache
from quamba.modules.hadamard import QHadamard
from quamba.modules.mamba2 import A8Mamba2Mixer
from quamba.modules.norm import QGatedRMSNorm
from quamba.ops.hadamard import hadamard_quant, qgated_norm_hadamard_quant, qgated_norm_hadamard_quant_ref
from quamba.ops.rmsnorm import qgated_rms_norm
from tests.ops.triton_harness import DEVICE, ON_GPU, requires_triton

pytestmark = [requires_triton, pytest.mark.usefixtures("triton_kernels")]

MAX_OFF_BY_ONE = 2e-3
EPS = 1e-5


@pytest.fixture(autouse=True)
def _kernels_not_forced_off(monkeypatch):
    """These tests are about the kernels: a QUAMBA_FORCE_REFERENCE=1 in the environment must not turn them into
    reference-vs-reference comparisons (the tests that check the switch set it themselves)."""
    monkeypatch.delenv("QUAMBA_FORCE_REFERENCE", raising=False)


@pytest.fixture
def launches(monkeypatch):
    """Counts the fused launcher's calls and its kernel launches (a None return is a fall-back, not a launch)."""
    import quamba.ops.triton.norm_hadamard as kernels

    counts = {"calls": 0, "fused": 0}
    launch = kernels._qgated_norm_hadamard_launch

    def counted(*a):
        out = launch(*a)
        counts["calls"] += 1
        counts["fused"] += out is not None
        return out

    monkeypatch.setattr(kernels, "_qgated_norm_hadamard_launch", counted)
    return counts


def _inputs(lead, d, y_dtype=torch.float16, w_dtype=None):
    """y [*lead, d] (times 2: some outputs clip), z_q [*lead, d] int8 as a strided slice of a wider in_proj output,
    z_scale [], weight [d] around 1."""
    y = (torch.randn(*lead, d, device=DEVICE) * 2).to(y_dtype)
    z_q = torch.randint(-128, 128, (*lead, d + 24), dtype=torch.int8, device=DEVICE)[..., 8:8 + d]
    w = (torch.rand(d, device=DEVICE) + 0.5).to(w_dtype or y_dtype)
    return y, z_q, torch.tensor(0.03, device=DEVICE), w


def _scale_for(y, z_q, z_scale, w, group_size, norm_before_gate):
    """A static out_scale under which a few outputs clip."""
    from quamba.ops.rmsnorm import qgated_rms_norm_ref
    from quamba.quantization.hadamard import hadamard_transform_ref

    normed = qgated_rms_norm_ref(y, z_q, z_scale, w, EPS, group_size, norm_before_gate)
    return (hadamard_transform_ref(normed.float()).abs().amax() / 127 * 0.8).reshape(())


def _assert_close(q, q_ref):
    """Equal except one int8 step on at most MAX_OFF_BY_ONE of the elements."""
    assert q.dtype == torch.int8 and q.shape == q_ref.shape
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1, f"int8 outputs differ by {diff.max().item()} steps"
    assert (diff > 0).float().mean() <= MAX_OFF_BY_ONE


def _check(y, z_q, z_scale, w, group_size, norm_before_gate, power_of_two_part):
    """The fused output against the two-kernel path (exact in the interpreter when each group lies inside one
    sub-row) and against the reference (bf16: not in the interpreter, see the module docstring)."""
    s = _scale_for(y, z_q, z_scale, w, group_size, norm_before_gate)
    q = qgated_norm_hadamard_quant(y, z_q, z_scale, w, EPS, group_size, norm_before_gate, s)
    two = hadamard_quant(qgated_rms_norm(y, z_q, z_scale, w, EPS, group_size, norm_before_gate), s)
    if not ON_GPU:
        assert torch.equal(q, two)
    else:
        _assert_close(q, two)
    if ON_GPU or torch.bfloat16 not in (y.dtype, w.dtype):
        _assert_close(q, qgated_norm_hadamard_quant_ref(y, z_q, z_scale, w, EPS, group_size, norm_before_gate, s))
    return q


# (D, group_size or None for one group, P): every fused layout at small orders
CASES = [
    (64, None, 64),  # 2^k, one group
    (64, 16, 64),  # 2^k, 4 groups inside the row
    (48, 4, 4),  # m = 12, one group per sub-row
    (96, 4, 8),  # m = 12, two groups inside each sub-row
    (80, 2, 4),  # m = 20, two groups inside each sub-row
    (56, 2, 2),  # m = 28, one group per sub-row
]


@pytest.mark.parametrize("norm_before_gate", [False, True], ids=["gate-then-norm", "norm-then-gate"])
@pytest.mark.parametrize("d,group_size,p", CASES, ids=[f"D{d}-g{g}" for d, g, _ in CASES])
def test_fused_layouts(poisoned_int8, launches, d, group_size, p, norm_before_gate):
    """Batch 2 x 5 tokens (prefill rows, several to a program, the last program partly masked)."""
    y, z_q, z_scale, w = _inputs((2, 5), d)
    _check(y, z_q, z_scale, w, group_size, norm_before_gate, p)
    assert launches == {"calls": 1, "fused": 1}


@pytest.mark.parametrize("y_dtype,w_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                             (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)],
                         ids=["fp32", "fp32-fp16w", "fp16", "bf16"])
@pytest.mark.parametrize("d,group_size,p", [(64, 16, 64), (96, 8, 8)], ids=["D64-g16", "D96-g8"])
def test_dtypes(poisoned_int8, launches, d, group_size, p, y_dtype, w_dtype):
    """The norm's value is rounded to y's dtype and then to weight's before the Hadamard reads it."""
    y, z_q, z_scale, w = _inputs((3, 4), d, y_dtype, w_dtype)
    _check(y, z_q, z_scale, w, group_size, False, p)
    assert launches["fused"] == 1


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_decode_rows(poisoned_int8, launches, rows):
    """The step's [B, D] rows: one, or several to a program with the tail masked."""
    y, z_q, z_scale, w = _inputs((rows,), 48)
    _check(y, z_q, z_scale, w, 4, False, 4)
    assert launches["fused"] == 1


def test_mamba2_8b_size(poisoned_int8, launches):
    """mamba2-8b: D = 8192 in 8 groups of 1024, decode rows."""
    y, z_q, z_scale, w = _inputs((2,), 8192)
    _check(y, z_q, z_scale, w, 1024, False, 8192)
    assert launches["fused"] == 1


def test_strided_views(poisoned_int8, launches):
    """y a channel slice of a wider buffer and z_q transposed ([B, D, L] memory seen as [B, L, D])."""
    y = (torch.randn(2, 3, 80, device=DEVICE) * 2)[..., 10:58]  # D = 48, rows 80 apart
    z_q = torch.randint(-128, 128, (2, 48, 3), dtype=torch.int8, device=DEVICE).transpose(1, 2)
    w = torch.rand(48, device=DEVICE) + 0.5
    _check(y, z_q, torch.tensor(0.05, device=DEVICE), w, 4, True, 4)
    assert launches["fused"] == 1


# (D, group_size): groups that span sub-rows (one group of 5120 = 20 * 256 is mamba2-2.7b's; 96 = 12 * 8 in groups
# of 24 or one group), or that neither divide nor are a multiple of P = 8 (12 in 96)
UNFUSED = [(20 * 256, None), (96, None), (96, 24), (96, 12)]


@pytest.mark.parametrize("d,group_size", UNFUSED, ids=[f"D{d}-g{g}" for d, g in UNFUSED])
def test_unfused_shapes_fall_back_to_the_two_kernels(poisoned_int8, launches, monkeypatch, d, group_size):
    """The launcher declines and the two kernels run, giving exactly their output."""
    import quamba.ops.triton.hadamard as had_k
    import quamba.ops.triton.rmsnorm as norm_k

    two_kernels = []
    for module, name in ((norm_k, "_gated_rms_norm_launch"), (had_k, "_hadamard_quant_launch")):
        launch = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _l=launch, _n=name: two_kernels.append(_n) or _l(*a))
    y, z_q, z_scale, w = _inputs((2, 3) if d < 1024 else (2,), d)
    s = _scale_for(y, z_q, z_scale, w, group_size, False)
    q = qgated_norm_hadamard_quant(y, z_q, z_scale, w, EPS, group_size, False, s)
    assert launches == {"calls": 1, "fused": 0}
    assert two_kernels == ["_gated_rms_norm_launch", "_hadamard_quant_launch"]
    two_kernels.clear()
    assert torch.equal(q, hadamard_quant(qgated_rms_norm(y, z_q, z_scale, w, EPS, group_size, False), s))
    _assert_close(q, qgated_norm_hadamard_quant_ref(y, z_q, z_scale, w, EPS, group_size, False, s))


def test_force_reference_switch(launches, monkeypatch):
    y, z_q, z_scale, w = _inputs((3,), 48)
    s = _scale_for(y, z_q, z_scale, w, None, False)
    monkeypatch.setenv("QUAMBA_FORCE_REFERENCE", "1")
    q = qgated_norm_hadamard_quant(y, z_q, z_scale, w, EPS, None, False, s)
    assert launches["calls"] == 0
    assert torch.equal(q, qgated_norm_hadamard_quant_ref(y, z_q, z_scale, w, EPS, None, False, s))


def test_user_errors():
    y, z_q, z_scale, w = _inputs((2,), 64)
    s = torch.tensor(0.1, device=DEVICE)
    with pytest.raises(QuambaError, match="int8"):
        qgated_norm_hadamard_quant(y, z_q.float(), z_scale, w, EPS, None, False, s)
    with pytest.raises(QuambaError, match="group_size"):
        qgated_norm_hadamard_quant(y, z_q, z_scale, w, EPS, 24, False, s)
    with pytest.raises(QuambaError, match="per-tensor scale"):
        qgated_norm_hadamard_quant(y, z_q, z_scale, w, EPS, None, False, torch.ones(64, device=DEVICE))
    with pytest.raises(QuambaError, match="weight"):
        qgated_norm_hadamard_quant(y, z_q, z_scale, w[:32], EPS, None, False, s)
    with pytest.raises(QuambaError, match="Hadamard"):  # no fused plan: the two-kernel path names the order
        y36, z36, _, w36 = _inputs((2,), 36)
        qgated_norm_hadamard_quant(y36, z36, z_scale, w36, EPS, None, False, s)


# ---------------------------------------------------------------------------------------------- in the mixer

@pytest.fixture(scope="module")
def quantized_mamba2():
    """A one-layer W8A8 Mamba2 of d_inner 96 = 12 * 8 in 12 norm groups of 8: one per sub-row."""
    model = build_random_model(tiny_config("mamba2", d_model=48, n_layer=1, ngroups=12, headdim=8), seed=5).eval()
    ids = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as mp:  # calibrate on the plain path (the interpreter would be slow)
        mp.setenv("QUAMBA_FORCE_REFERENCE", "1")
        return quamba.quantize(model, "quamba2", calib_data=ids, calib_samples=2, calib_seqlen=12,
                               calib_batch_size=2).to(DEVICE)


def _run_mixer(mixer, h_prefill, h_step):
    """Prefill then one decode step from a fresh cache; returns both outputs and out_proj's int8 inputs."""
    inputs = []
    hook = mixer.out_proj.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    try:
        cache = InferenceCache([mixer.allocate_state(h_prefill.shape[0])])
        return mixer(h_prefill, cache), mixer(h_step, cache), inputs
    finally:
        hook.remove()


def test_mixer_forward_and_step_are_unchanged(quantized_mamba2, launches, monkeypatch):
    """The fused path gives what the mixer's former two calls, self.had(self.norm(y, z_q)), give."""
    mixer = quantized_mamba2.backbone.layers[0].mixer
    assert isinstance(mixer, A8Mamba2Mixer) and isinstance(mixer.norm, QGatedRMSNorm)
    assert isinstance(mixer.had, QHadamard) and mixer.norm.group_size == 8 and mixer.d_inner == 96
    h_prefill = torch.randint(-128, 128, (2, 5, 48), dtype=torch.int8, device=DEVICE)
    h_step = torch.randint(-128, 128, (2, 1, 48), dtype=torch.int8, device=DEVICE)
    with torch.inference_mode():
        fused = _run_mixer(mixer, h_prefill, h_step)
        assert launches == {"calls": 2, "fused": 2}  # prefill and step
        monkeypatch.setattr(A8Mamba2Mixer, "_norm_had", lambda self, y, z_q: self.had(self.norm(y, z_q)))
        before = _run_mixer(mixer, h_prefill, h_step)
    assert launches["calls"] == 2
    for q, q_before in zip(fused[2], before[2]):
        _assert_close(q, q_before)
    if all(torch.equal(q, q_before) for q, q_before in zip(fused[2], before[2])):
        assert torch.equal(fused[0], before[0]) and torch.equal(fused[1], before[1])
