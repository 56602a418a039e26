#!/usr/bin/env bash
# The one device call that checks and times what changed since the last GPU run, within the device tool's ten
# minutes on an H100: kernel tests on the GPU first (bit-exactness of code that was only compiled on a CPU), then
# the decode A/Bs of options not yet decided, the end-to-end rows that changed, then every kernel against its fp16
# counterpart and floor. Each part has its own time limit, so one that hangs does not lose the others' results.
# The device tool brings back at most 8 files of $OUT: the plots are left out, the A/B tables printed too. Update the lists when an
# option is decided.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh       (the device tool sets $OUT)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv

# 1. kernels and helpers not yet run on a GPU (the int8 -> float helpers' own test), and the kernels that use them
#    (int8 scans, SSD, norms, conv: passed on an H100 2026-12-07 23:1x)
timeout 120 python -m pytest -q -x tests/ops/test_triton_common.py tests/ops/test_triton_selective_scan_parallel.py \
    tests/ops/test_triton_conv1d.py tests/ops/test_triton_rmsnorm.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
timeout 40 python -m pytest -q -x tests/ops/test_triton_qscan.py -k dt_proj 2>&1 | tail -3 | tee -a "$OUT/gpu_tests.txt"

# 2. decode options off / on on the same models: the fused step against separate kernels for W4A8 mamba-2.8b now
#    that its dt_proj is read as words (measured for W8A8 only: fused 1.982, unfused 2.158 ms)
timeout 150 python benchmarks/decode_ab.py --switch fused-decode --models mamba-2.8b --variants fp16,W4A8 \
    --rounds 3 --out-dir "$OUT" 2>&1 | grep -v Warning | tail -4
cat "$OUT"/decode_ab_*.md 2>/dev/null

# 3. the README table's W4A16 row with today's defaults (last measured 2026-12-07 21:55 UTC)
timeout 180 python benchmarks/e2e.py --models mamba2-2.7b --variants fp16,W4A16 --cache-graph --repeats 10 \
    --tpot-repeats 50 --out-dir "$OUT" 2>&1 | grep -v Warning | tail -4

# 4. every non-GEMM kernel against its fp16 counterpart and floor
timeout 40 python benchmarks/kernels.py --out "$OUT" 2>&1 | tail -3

# 5. the Hadamard kernel's tile sweep, last run before its signs became constants (MI 4 chosen at 41.0 us)
timeout 40 python benchmarks/sweep_prefill.py --parts hadamard --out "$OUT" 2>&1 | grep -v Warning | tail -14
rm -f "$OUT"/*.png  # the device tool returns 8 files: the JSONs and tables; plots are redrawn from the JSONs
