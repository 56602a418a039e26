"""Each quantized module against its fake-quantized fp reference (quantize -> dequantize -> float op), to within
one int8 step; integer accumulation exactly."""
import torch
import torch.nn.functional as F

from quamba.models.mamba import CausalConv1d, RMSNorm
from quamba.modules.conv import QCausalConv1d
from quamba.modules.embedding import QEmbedding
from quamba.modules.hadamard import QHadamard
from quamba.modules.linear import W8A8Linear
from quamba.modules.norm import QRMSNorm
from quamba.modules.scan import QSelectiveScan
from quamba.ops import rms_norm_ref, selective_scan_ref
from quamba.ops.quant import int_matmul_ref
from quamba.quantization.hadamard import hadamard_matrix
from tests.conftest import rel_err


def _rand_q(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


def test_int_matmul_is_exact():
    a, b = _rand_q(7, 300), _rand_q(5, 300)
    exact = a.long() @ b.long().T
    assert torch.equal(int_matmul_ref(a, b).long(), exact)


def test_w8a8_linear_int8_and_float_outputs():
    w, bias = torch.randn(33, 40), torch.randn(33)
    x_q, s_x = _rand_q(3, 5, 40), torch.tensor(0.02)
    for per_channel in (False, True):
        fp_out = W8A8Linear.from_float(w, s_x, "float32", per_channel, bias)
        ref = (x_q.double() * s_x.double()) @ (fp_out.weight.double() * fp_out.weight_scale.double()[:, None]).T + bias.double()
        assert rel_err(fp_out(x_q), ref) < 1e-6
        s_out = ref.abs().amax() / 127
        q_out = W8A8Linear.from_float(w, s_x, "int8", per_channel, bias, s_out.float().reshape(1))
        y = q_out(x_q)
        assert y.dtype == torch.int8
        assert (y.double() - torch.round(ref / s_out).clamp(-128, 127)).abs().max() <= 1
        # the weights themselves are within half a step of the float weights
        deq = fp_out.weight.float() * fp_out.weight_scale[:, None]
        assert ((deq - w).abs() <= fp_out.weight_scale[:, None] / 2 + 1e-7).all()


def test_qrmsnorm():
    norm = RMSNorm(24)
    norm.weight.data = torch.rand(24) + 0.5
    x = torch.randn(4, 24) * 3
    ref = rms_norm_ref(x, norm.weight)
    s = ref.abs().amax() / 127
    q = QRMSNorm.from_float(norm, s, torch.float32)(x)
    assert q.dtype == torch.int8 and (q.float() - ref / s).abs().max() <= 1


def test_qconv_prefill_and_step():
    conv = CausalConv1d(10, 4)
    conv.weight.data, conv.bias.data = torch.randn(10, 1, 4), torch.randn(10)
    x_q, s_in = _rand_q(2, 10, 9), torch.full((10,), 0.03)
    w_deq = None
    ref = None
    qc = QCausalConv1d.from_float(conv, s_in, torch.ones(10))
    w_deq = qc.weight.float() * qc.weight_scale
    ref = F.silu(F.conv1d(F.pad(x_q.float() * s_in[:, None], (3, 0)), w_deq.unsqueeze(1), conv.bias, groups=10))
    s_out = ref.abs().amax(dim=(0, 2)) / 127
    qc.output_scale.copy_(s_out)
    y = qc(x_q)
    assert y.dtype == torch.int8 and (y.float() - ref / s_out[:, None]).abs().max() <= 1
    state = qc.empty_state(2)
    steps = torch.stack([qc.step(x_q[..., t], state) for t in range(9)], -1)
    assert torch.equal(steps, y)  # exact: the same integer arithmetic


def test_qhadamard():
    y = torch.randn(3, 40)
    ref = y @ hadamard_matrix(40).T
    m = QHadamard(40)
    m.output_scale.fill_(float(ref.abs().amax() / 127))
    assert (m(y).float() - ref / m.output_scale).abs().max() <= 1


def test_qembedding_rows_within_half_step():
    emb = torch.nn.Embedding(20, 8)
    emb.weight.data[3] = -torch.arange(8.0) * 10  # a strongly negative row must not clip
    q = QEmbedding.from_float(emb, torch.float32)
    out = q(torch.arange(20))
    assert ((out - emb.weight).abs() <= q.scale[:, None] / 2 + 1e-6).all()


def test_qselective_scan_matches_scan_on_dequantized_inputs():
    D, N, L = 12, 5, 9
    scan = QSelectiveScan(D, N, "float32")
    scan.A_log.copy_(torch.rand(D, N)); scan.D.copy_(torch.randn(D)); scan.dt_bias.copy_(torch.randn(D))
    for name, v in zip(QSelectiveScan.SCALES, (0.02, 0.01, 0.05, 0.05, 0.03)):
        getattr(scan, name).fill_(v)
    u, dt, z = _rand_q(2, D, L), _rand_q(2, D, L), _rand_q(2, D, L)
    B, C = _rand_q(2, N, L), _rand_q(2, N, L)
    y = scan(u, dt, B, C, z)
    ref = selective_scan_ref(u * 0.02, dt * 0.01, -torch.exp(scan.A_log), B * 0.05, C * 0.05, scan.D, z * 0.03,
                             scan.dt_bias, True)
    assert rel_err(y, ref) < 1e-6
