"""Registers, spills and instruction counts of kernels compiled for sm_90 without a GPU, and for the prefill kernels
the time instruction issue alone takes at their model shape.

Triton compiles ahead of time for a named target, so the SASS of a kernel can be read on any machine with the same
Triton version as the GPU machine (install it beside the project: ``pip install --target DIR triton==3.6.0`` and put
DIR first on PYTHONPATH). The integer arguments get the specializations a launch at these shapes gets (divisible by
16; strides of 1 as constants), so the code is the code the GPU runs. Counts, not timings: they say where a
kernel's fixed work goes, and whether a kernel is bound by issuing instructions rather than by memory.

Issue time = fast-path instructions a thread x threads a program x programs / (132 SMs x 4 schedulers x 32 lanes x
1.98 GHz, the H100's highest clock): each scheduler issues at most one warp instruction a cycle, so this is a lower
bound on the kernel's time. Fast path: the kernel's instructions less the IEEE division's slow-path subroutine and the
calls into it (taken only for operands near the ends of the exponent range). Before their instructions were cut
(2026-12-07, Triton 3.6) the bound was 33 us for the Hadamard kernel measured at 41 us, and 13 us for the int8 conv
measured at 20 us (against 5 us for the fp16 conv): most of their time was instruction issue. After: bounds 13.1 and
11.4 us, measured 24.3 and 18.1 us on the same kind of H100 (benchmarks/results/kernels_*.md).

    python benchmarks/sass_counts.py                 # every kernel below
    python benchmarks/sass_counts.py --kernels gemv-w4a8,hadamard-prefill
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from quamba.ops.triton import conv1d, gemv, hadamard, selective_scan, selective_scan_parallel, ssd  # noqa: E402

# the mamba2-2.7b W4A8 in_proj GEMV as a decode step launches it (default config, conv step in its epilogue)
GEMV_W4A8 = dict(HAS_BIAS=False, REQUANT=True, USE_ASM=True, SPLIT=10, G=128, SCALE_MODE=1, EVEN_K=True,
                 NUM_STAGES=1, UNROLL=1, BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, PREFETCH=True, LOOKAHEAD=1, USE_PDL=True,
                 EARLY=True, CONV=True, CONV_K=4, CONV_BIAS=True, L2_PTS=0)
GEMV_TYPES = {**{n: "*fp32" for n in ("xs_ptr", "cs_ptr", "bias_ptr", "os_ptr", "cv_ws", "cv_is", "cv_os", "cv_bias")},
              "gs_ptr": "*fp16", "y_ptr": "*i8", "part_ptr": "*i32", "cnt_ptr": "*i32"}
# mamba-2.8b's fused Mamba1 state update (R = 160, N = 16), dt_proj read as bytes or as words
SSU = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, QUANT=True, A_LOG=True, STATE_INT8=False,
           DT_PROJ=True, USE_PDL=True, PREFETCH=True, USE_ASM=True)
SSU_TYPES = {**{n: "*fp32" for n in ("state_ptr", "A_ptr", "D_ptr", "bias_ptr", "xs_ptr", "ds_ptr", "bs_ptr", "cs_ptr",
                                     "zs_ptr", "sscale_ptr", "pxs_ptr", "pws_ptr", "pos_ptr")}, "y_ptr": "*fp16"}
CONV_POINTERS = ("cv_state", "cv_w", "cv_ws", "cv_is", "cv_os", "cv_bias")  # the GEMV's conv-step tensors
# mamba-2.8b's prefill (1024 tokens, d_inner 5120): the conv reads in_proj's output channels-last (stride 1 along D)
CONV_LEN, CONV_DIM = 1024, 5120
CONV_INTS = ("dim", "seqlen", "sxb", "sxl", "swd", "syb", "syl", "sfb", "sfd")
QCONV_TYPES = {**{n: "*fp32" for n in ("ws_ptr", "is_ptr", "os_ptr", "bias_ptr")}, "x_ptr": "*i8", "w_ptr": "*i8",
               "init_ptr": "*i8", "y_ptr": "*i8", "final_ptr": "*i8"}
CONV_TYPES = {n: "*fp16" for n in ("x_ptr", "w_ptr", "bias_ptr", "init_ptr", "y_ptr", "final_ptr")}
CONV = dict(K=4, KP=4, HAS_BIAS=True, HAS_INIT=False, WRITE_FINAL=True)
QCONV_BD, QCONV_BL, QCONV_WARPS = conv1d.QCONV_TILE
HAD_M, HAD_P, HAD_COLS = hadamard._plan(CONV_DIM)  # 5120 = 20 * 256, out_proj's input in mamba-2.8b
HAD = dict(M=HAD_M, P=HAD_P, LOG_P=HAD_P.bit_length() - 1, HCOLS=HAD_COLS, ROWS=1, USE_PDL=False, EARLY=True)
HAD_TYPES = {"x_ptr": "*fp16", "os_ptr": "*fp32", "y_ptr": "*i8", "inv_sqrt_n": "fp32"}
# the int8 prefill scans, which loop over time (so no issue time from their static counts): mamba-2.8b's chunked
# selective scan (8 channels x 16 tokens a step, one warp a program) and mamba2-2.7b's SSD chunk scan (64 x 64 output
# tiles, N = 128, integer C B^T)
SCAN_IN = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr")
PSCAN_TYPES = {**{n: "*fp32" for n in ("A_ptr", "D_ptr", "bias_ptr", "init_ptr", "final_ptr", "hseg_ptr",
                                        "dtseg_ptr", "us_ptr", "dts_ptr", "bs_ptr", "cs_ptr", "zs_ptr")},
               **{n: "*i8" for n in SCAN_IN}, "y_ptr": "*fp16"}
PSCAN = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_INIT=False, WRITE_FINAL=True, HAS_SCALES=True,
             A_IS_LOG=True, BLOCK_D=8, BLOCK_N=16, BLOCK_L=16, SCAN_DOUBLING=False, PASS=0)
PSCAN_INTS = ("dim", "seqlen", "seg_len", "sub", "sul", "sdb", "sdl", "sbb", "sbl", "scb", "scl", "szb", "szl",
              "syb", "syl", "sfb", "sfd")
SSD_TYPES = {**{n: "*fp32" for n in ("dt_ptr", "cs_ptr", "st_ptr", "D_ptr", "xs_ptr", "bs_ptr", "ccs_ptr")},
             "x_ptr": "*i8", "B_ptr": "*i8", "C_ptr": "*i8", "y_ptr": "*fp16"}
SSD_SCAN = dict(HAS_D=True, QUANT=True, DOT=ssd.DOT_F16, BLOCK_M=64, BLOCK_P=64, BLOCK_N=128, BLOCK_S=64, INT_DOTS=True)
SSD_INTS = ("seqlen", "headdim", "dstate", "chunk_size", "nheads", "sxb", "sxl", "sxh", "sbb", "sbl", "sbg", "scb",
            "scl", "scg", "sob", "soh", "soc", "ssb", "ssc", "ssh", "ssp", "sdh", "syb", "syl", "syh")
HAD_INTS = ("num_rows", "rows_per_batch", "sxb", "sxr")


@dataclasses.dataclass
class Kernel:
    kernel: object
    types: dict  # pointer (and float) argument types; other pointers int8, other integers int32
    consts: dict  # constexpr values
    div16: tuple = ()  # integer arguments divisible by 16 at that launch
    ones: tuple = ()  # integer arguments equal to 1 (unit strides: a launch makes them constants)
    num_warps: int = 4
    programs: int = 0  # at the model shape (prefill kernels): for the issue time
    note: str = ""
    fp_fusion: bool = True  # False where the launcher passes enable_fp_fusion=False (the int8 epilogues)


KERNELS = {
    "gemv-w4a8": Kernel(gemv._w4a8_gemv_kernel, GEMV_TYPES, GEMV_W4A8, ("N", "K", "w_slice", "sxm", "swn"),
                        note="mamba2-2.7b in_proj decode GEMV, conv step in its epilogue"),
    "state-update-bytes": Kernel(selective_scan._selective_state_update_kernel, SSU_TYPES,
                                 {**SSU, "DT_WORDS": False, "BLOCK_D": 64, "BLOCK_N": 16, "BLOCK_R": 256}, ("dim",),
                                 note="mamba-2.8b fused state update, dt_proj as bytes"),
    "state-update-words": Kernel(selective_scan._selective_state_update_kernel, SSU_TYPES,
                                 {**SSU, "DT_WORDS": True, "BLOCK_D": 16, "BLOCK_N": 16, "BLOCK_R": 64}, ("dim",),
                                 note="mamba-2.8b fused state update, dt_proj as words"),
    "conv-int8-prefill": Kernel(conv1d._qcausal_conv1d_kernel, QCONV_TYPES,
                                {**CONV, "BLOCK_D": QCONV_BD, "BLOCK_L": QCONV_BL}, CONV_INTS,
                                ("sxd", "swk", "sis", "sos", "syd", "sfk"), QCONV_WARPS,
                                (CONV_DIM // QCONV_BD) * (CONV_LEN // QCONV_BL),
                                note=f"int8 conv + SiLU, mamba-2.8b prefill [{CONV_DIM}, {CONV_LEN}]", fp_fusion=False),
    # the same with its per-channel loads broadcast over the tile (BCAST) and a tap-major weight ([K, D] transposed)
    "conv-int8-prefill-bcast": Kernel(conv1d._qcausal_conv1d_kernel, QCONV_TYPES,
                                      {**CONV, "BLOCK_D": QCONV_BD, "BLOCK_L": QCONV_BL, "BCAST": True},
                                      tuple(n for n in CONV_INTS if n != "swd") + ("swk",),
                                      ("sxd", "swd", "sis", "sos", "syd", "sfk"), QCONV_WARPS,
                                      (CONV_DIM // QCONV_BD) * (CONV_LEN // QCONV_BL),
                                      note="int8 conv + SiLU, per-channel loads broadcast, tap-major weight",
                                      fp_fusion=False),
    "conv-fp16-prefill": Kernel(conv1d._causal_conv1d_kernel, CONV_TYPES,
                                {**CONV, "SILU": True, "BLOCK_D": 64, "BLOCK_L": 64}, CONV_INTS,
                                ("sxd", "swk", "syd", "sfk"), 4, (CONV_DIM // 64) * (CONV_LEN // 64),
                                note=f"fp16 conv + SiLU, mamba-2.8b prefill [{CONV_DIM}, {CONV_LEN}]"),
    "hadamard-prefill": Kernel(hadamard._hadamard_quant_kernel, HAD_TYPES, {**HAD, "MI": 4}, HAD_INTS, ("sxc",), 4,
                               CONV_LEN * HAD_M // 4,
                               note=f"Hadamard + int8, {CONV_LEN} rows of {CONV_DIM} (4 of 20 sub-rows a program)"),
    "scan-int8-prefill": Kernel(selective_scan_parallel._selective_scan_parallel_kernel, PSCAN_TYPES, PSCAN, PSCAN_INTS,
                                ("sud", "sdd", "szd", "sbn", "scn", "syd", "sfn", "san"), 1,
                                note=f"chunked int8 selective scan, mamba-2.8b prefill [{CONV_DIM}, {CONV_LEN}]"),
    "ssd-scan-int8-prefill": Kernel(ssd._ssd_chunk_scan_kernel, SSD_TYPES, SSD_SCAN, SSD_INTS,
                                    ("sxp", "sbn", "scn", "sol", "ssn", "sdp", "syp", "sxs", "sbs", "sccs"), 8,
                                    note="SSD chunk scan, int8 inputs, mamba2-2.7b prefill (1024 tokens)"),
    "hadamard-decode": Kernel(hadamard._hadamard_quant_kernel, HAD_TYPES, {**HAD, "MI": 1}, HAD_INTS, ("sxc",), 4,
                              note=f"Hadamard + int8, one row of {CONV_DIM} (a sub-row a program)"),
}
SMS, SCHEDULERS, CLOCK_GHZ = 132, 4, 1.98  # H100 SXM at its highest clock: the issue time is a lower bound


def _tool(name: str) -> str:
    found = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    if not found:
        sys.exit(f"benchmarks/sass_counts.py: triton has no {name} in its nvidia backend; install triton's CUDA build")
    return found[0]


def compile_sm90(k: Kernel):
    """The kernel compiled for sm_90 (pointers 16-byte aligned, as a launch at its shape specializes it)."""
    names = k.kernel.arg_names
    sig, cx = {}, {}
    for i, name in enumerate(names):
        if k.kernel.params[i].is_constexpr:  # the kernel's default where the entry does not set it
            sig[name], cx[(i,)] = "constexpr", k.consts.get(name, k.kernel.params[i].default)
        elif name in k.ones:
            sig[name], cx[(i,)] = "constexpr", 1
        else:
            sig[name] = k.types.get(name, "*i8" if name.endswith("_ptr") or name in CONV_POINTERS else "i32")
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names)
             if sig[name].startswith("*") or name in k.div16}
    src = ASTSource(fn=k.kernel, signature=sig, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=k.num_warps,
                                                                                  enable_fp_fusion=k.fp_fusion))


def counts(compiled, k: Kernel | None = None) -> dict:
    """Registers, stack bytes (spills), SASS instructions, instructions before the first global load, fast-path
    instructions (see the module's docstring); with the kernel's programs at its shape, the issue time in us."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
    lines = sass.splitlines()
    ins = [line for line in lines if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    first_load = next((i for i, line in enumerate(ins) if "LDG" in line), None)
    # the kernel's own code ends where the first internal subroutine (the division's slow path) begins
    end = next((i for i, line in enumerate(lines) if re.match(r"\s*\$__internal", line)), len(lines))
    own = [line for line in lines[:end] if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    fast = len(own) - 4 * sum("CALL" in line for line in own)  # each call: three moves and the call
    out = {"registers": int(m.group(1)), "stack_bytes": int(m.group(2)), "instructions": len(ins),
           "before_first_global_load": first_load, "fast_path_instructions": fast,
           "float_roundings": sum(" FRND" in line for line in own),  # FRND: floor / round in float registers
           # int8 / int16 -> float on the quarter-rate conversion pipe (a 32-bit source takes the full-rate I2FP)
           "slow_conversions": sum(bool(re.search(r" I2F\.(F16\.)?[SU](8|16)\b", line)) for line in own),
           # shared-memory loads and barriers: in kernels without dots, mostly layout conversions between threads
           "shared_loads": sum(bool(re.search(r" LDS(M)?\b", line)) for line in own),
           "barriers": sum(" BAR.SYNC" in line for line in own)}
    if k is not None and k.programs:
        threads = 32 * k.num_warps
        out["programs"] = k.programs
        out["issue_us"] = round(fast * threads * k.programs / (SMS * SCHEDULERS * 32 * CLOCK_GHZ * 1e3), 1)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated, from %(default)s")
    p.add_argument("--json", help="also write the counts to this file")
    args = p.parse_args(argv)
    names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in names if k not in KERNELS]
    if unknown or not names:
        p.error(f"unknown --kernels {','.join(unknown) or repr(args.kernels)}: choose from {', '.join(KERNELS)}")
    out = {"triton": triton.__version__, "target": "sm_90", "kernels": {}}
    for name in names:
        k = KERNELS[name]
        out["kernels"][name] = c = counts(compile_sm90(k), k)
        issue = (f"; issuing them at {CLOCK_GHZ} GHz on {SMS} SMs takes {c['issue_us']} us ({c['programs']} programs)"
                 if "issue_us" in c else "")
        print(f"{name}: {c['registers']} registers, {c['stack_bytes']} stack bytes, {c['instructions']} instructions "
              f"({c['fast_path_instructions']} on the fast path), {c['before_first_global_load']} before the first "
              f"global load{issue} (triton {triton.__version__}, sm_90; {k.note})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
