#!/usr/bin/env bash
# The one device call that checks and times what changed since the last GPU run, within the device tool's ten
# minutes on an H100: kernel tests on the GPU first (bit-exactness of code that was only compiled on a CPU), then
# the decode A/Bs of options not yet decided, the end-to-end rows that changed, then every kernel against its fp16
# counterpart and floor. Each part has its own time limit, so one that hangs does not lose the others' results.
# The device tool brings back at most 8 files of $OUT: only the JSONs are kept, the A/B tables printed too. Update the
# lists when an option is decided.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh       (the device tool sets $OUT)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
START="$OUT/.gpu_check_start"; touch "$START"  # what this run writes is newer
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv

# 1. not yet run on a GPU: QUAMBA_FAST_EPILOGUE=1 (the int8 epilogues' quotient through a shared scale's reciprocal,
#    rounding and clamping in one cvt.rni.sat.s8; _common.FAST_EPILOGUE) must give the references' bits; the int8 ->
#    float helpers' own test
QUAMBA_FAST_EPILOGUE=1 timeout 130 python -m pytest -q -x tests/ops/test_triton_common.py \
    tests/ops/test_triton_hadamard.py tests/ops/test_triton_norm_hadamard.py tests/ops/test_triton_rmsnorm.py \
    tests/ops/test_triton_gemm.py tests/ops/test_triton_conv1d.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"

# 2. its speed: the kernels and the W8A8 prefill, off then on (the int8 GEMM's epilogue is in every projection)
timeout 40 python benchmarks/kernels.py --out "$OUT/epilogue_off" 2>&1 | tail -1
QUAMBA_FAST_EPILOGUE=1 timeout 40 python benchmarks/kernels.py --out "$OUT" 2>&1 | tail -1
QUAMBA_FAST_EPILOGUE=0 timeout 100 python benchmarks/e2e.py --models mamba-2.8b --variants fp16,W8A8 --cache-graph \
    --repeats 10 --tpot-repeats 30 --out-dir "$OUT/e2e_epilogue_off" 2>&1 | grep -v Warning | tail -3
QUAMBA_FAST_EPILOGUE=1 timeout 100 python benchmarks/e2e.py --models mamba-2.8b --variants fp16,W8A8 --cache-graph \
    --repeats 10 --tpot-repeats 30 --out-dir "$OUT/e2e_epilogue_on" 2>&1 | grep -v Warning | tail -3

# 3. the int8 conv's per-channel loads broadcast over its tile (conv1d BCAST: no conversion through shared memory),
#    weight as stored [D, K] or tap-major, against the default tiles (the fastest, (128, 8, 4): 17.6 us, fp16 15.8)
timeout 70 python benchmarks/sweep_prefill.py --parts conv --out "$OUT" 2>&1 | grep -v Warning | tail -26

# 4. the Hadamard kernel's tile sweep, last run before its signs became constants (MI 4 chosen at 41.0 us)
timeout 40 python benchmarks/sweep_prefill.py --parts hadamard --out "$OUT/hadamard" 2>&1 | grep -v Warning | tail -14
# 5. split-K GEMMs without the reduction kernel (GemmConfig.split_last): mamba-2.8b's in_proj and x_proj, int8 output,
#    W8A8 and W4A8, at batch-16 decode and 1024-token prefill (x_proj splits K 4 ways: its reduction took 9 us a layer)
timeout 50 python benchmarks/kernels_gemm.py --shapes "mamba-2.8b in_proj,mamba-2.8b x_proj" --ms 16,1024 \
    --formats "w8a8 int8,w4a8 int8" --tag split-last --out "$OUT" 2>&1 | grep -E "split|wrote" | tail -16
# the device tool returns 8 files: keep the JSONs (tables and plots are redrawn from them; the A/B tables were printed)
find "$OUT" -newer "$START" \( -name "*.png" -o -name "*.md" \) -delete; rm -f "$START"
