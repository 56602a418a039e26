"""The decode GEMVs of one model's projections, a few calls each, for Nsight Compute (the profile behind the
README's account of the W4A8 GEMV: issue rate, stall reasons, waves, registers):

    ncu --clock-control none --target-processes all -k regex:gemv_kernel --launch-count 24 \\
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \\
        --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \\
        python benchmarks/ncu_gemv.py > profile.txt

M = 1, W4A8 and W8A8 -> int8 (the decode step's in_proj output), the shapes of --model (default mamba2-2.7b);
each call runs 6 times (ncu profiles each launch alone, L2 flushed). benchmarks/results/ncu_gemv_<model>_<gpu>.txt
holds the last profile of each kernel from an H100.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels_gemm  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mamba2-2.7b", help="a model of kernels_gemm.SHAPES (default %(default)s)")
    args = p.parse_args(argv)
    shapes = {k: v for k, v in kernels_gemm.SHAPES.items() if k.startswith(args.model + " ")}
    if not shapes:
        p.error(f"--model {args.model}: no shapes; choose from "
                f"{', '.join(sorted({k.split()[0] for k in kernels_gemm.SHAPES if ' ' in k}))}")
    if not torch.cuda.is_available():
        sys.exit("benchmarks/ncu_gemv.py needs a CUDA GPU (it is a driver for Nsight Compute)")
    dev = torch.device("cuda")
    for shape, (n, k) in shapes.items():
        o = kernels_gemm.make_operands(kernels_gemm.make_weights(n, k, dev), 1, dev)
        for fmt in ("w4a8 int8", "w8a8 int8"):
            fn, ref, _ = kernels_gemm.op_calls(fmt, o)
            if not torch.equal(fn(), ref().to(torch.int8)):
                sys.exit(f"{shape} {fmt}: the GEMV disagrees with its reference")
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            print(shape, fmt, "done", flush=True)


if __name__ == "__main__":
    main()
