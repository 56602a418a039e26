#!/usr/bin/env bash
# The one device call that checks and times what changed since the last GPU run, within the device tool's ten
# minutes on an H100: kernel tests on the GPU first (bit-exactness of code that was only compiled on a CPU), then
# the decode A/Bs of the options written and left off, then every kernel against its fp16 counterpart and floor.
# Each part has its own time limit, so one that hangs does not lose the others' results. Update the lists when an
# option is decided.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh       (the device tool sets $OUT)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"

# 1. the kernels whose compiled code changed without a GPU to run it (int8 rounding, Hadamard signs, L2 hints)
timeout 150 python -m pytest -q -x tests/ops/test_triton_hadamard.py tests/ops/test_triton_norm_hadamard.py \
    tests/ops/test_triton_conv1d.py tests/ops/test_triton_rmsnorm.py tests/ops/test_fused_decode.py 2>&1 \
    | tail -5 | tee "$OUT/gpu_tests.txt"
timeout 50 python -m pytest -q -x tests/ops/test_triton_qscan.py -k dt_proj 2>&1 | tail -3 | tee -a "$OUT/gpu_tests.txt"

# 2. decode options off / on on the same models (README: "Options ... not yet timed")
timeout 170 python benchmarks/decode_ab.py --switch l2-next,gemv-l2,fused-gate,state-int8 --models mamba2-2.7b \
    --variants fp16,W4A8 --rounds 3 --out-dir "$OUT" 2>&1 | grep -v Warning | tail -4
timeout 130 python benchmarks/decode_ab.py --switch dt-proj-words,fused-decode,state-int8 --models mamba-2.8b \
    --variants fp16,W8A8 --rounds 3 --out-dir "$OUT" 2>&1 | grep -v Warning | tail -4

# 3. every non-GEMM kernel against its fp16 counterpart and floor (the Hadamard and int8 conv against their new bounds)
timeout 60 python benchmarks/kernels.py --out "$OUT" 2>&1 | tail -3
