"""Registers, spills and instruction counts of decode kernels, compiled for sm_90 without a GPU.

Triton compiles ahead of time for a named target, so the SASS of a kernel can be read on any machine with the same
Triton version as the GPU machine (install it beside the project: ``pip install --target DIR triton==3.6.0`` and put
DIR first on PYTHONPATH). The integer arguments get the divisibility-by-16 specialization a launch at these shapes
gets, so the code is the code the GPU runs. Counts, not timings: they say where a kernel's fixed work goes.

    python benchmarks/sass_counts.py                 # every kernel below
    python benchmarks/sass_counts.py --kernels gemv-w4a8
"""
from __future__ import annotations

import argparse
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
from quamba.ops.triton import gemv, selective_scan  # noqa: E402

# the mamba2-2.7b W4A8 in_proj GEMV as a decode step launches it (default config, conv step in its epilogue)
GEMV_W4A8 = dict(HAS_BIAS=False, REQUANT=True, USE_ASM=True, SPLIT=10, G=128, SCALE_MODE=1, EVEN_K=True,
                 NUM_STAGES=1, UNROLL=1, BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, PREFETCH=True, LOOKAHEAD=1, USE_PDL=True,
                 EARLY=True, CONV=True, CONV_K=4, CONV_BIAS=True, L2_PTS=0, NX_PTS=0)
GEMV_TYPES = {**{n: "*fp32" for n in ("xs_ptr", "cs_ptr", "bias_ptr", "os_ptr", "cv_ws", "cv_is", "cv_os", "cv_bias")},
              "gs_ptr": "*fp16", "y_ptr": "*i8", "part_ptr": "*i32", "cnt_ptr": "*i32", "nx_ptr": "*u8"}
# mamba-2.8b's fused Mamba1 state update (R = 160, N = 16), dt_proj read as bytes or as words
SSU = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, QUANT=True, A_LOG=True, STATE_INT8=False,
           DT_PROJ=True, USE_PDL=True, PREFETCH=True, USE_ASM=True)
SSU_TYPES = {**{n: "*fp32" for n in ("state_ptr", "A_ptr", "D_ptr", "bias_ptr", "xs_ptr", "ds_ptr", "bs_ptr", "cs_ptr",
                                     "zs_ptr", "sscale_ptr", "pxs_ptr", "pws_ptr", "pos_ptr")}, "y_ptr": "*fp16"}
CONV_POINTERS = ("cv_state", "cv_w", "cv_ws", "cv_is", "cv_os", "cv_bias")  # the GEMV's conv-step tensors
KERNELS = {  # name: (kernel, pointer types, constexprs, integer arguments divisible by 16 at that launch)
    "gemv-w4a8": (gemv._w4a8_gemv_kernel, GEMV_TYPES, GEMV_W4A8, ("N", "K", "w_slice", "sxm", "swn")),
    "state-update-bytes": (selective_scan._selective_state_update_kernel, SSU_TYPES,
                           {**SSU, "DT_WORDS": False, "BLOCK_D": 64, "BLOCK_N": 16, "BLOCK_R": 256}, ("dim",)),
    "state-update-words": (selective_scan._selective_state_update_kernel, SSU_TYPES,
                           {**SSU, "DT_WORDS": True, "BLOCK_D": 16, "BLOCK_N": 16, "BLOCK_R": 64}, ("dim",)),
}


def _tool(name: str) -> str:
    found = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    if not found:
        sys.exit(f"benchmarks/sass_counts.py: triton has no {name} in its nvidia backend; install triton's CUDA build")
    return found[0]


def compile_sm90(kernel, types: dict, consts: dict, div16=(), num_warps: int = 4):
    """The kernel compiled for sm_90 (pointers 16-byte aligned, ``div16`` integers divisible by 16, other integers
    plain int32, pointers not in ``types`` int8)."""
    names = kernel.arg_names
    sig, cx = {}, {}
    for i, name in enumerate(names):
        if kernel.params[i].is_constexpr:
            sig[name], cx[(i,)] = "constexpr", consts[name]
        else:
            sig[name] = types.get(name, "*i8" if name.endswith("_ptr") or name in CONV_POINTERS else "i32")
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names)
             if sig[name].startswith("*") or name in div16}
    src = ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


def counts(compiled) -> dict:
    """Registers, stack bytes (spills), SASS instructions, and instructions before the first global load."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
    ins = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    first_load = next((i for i, line in enumerate(ins) if "LDG" in line), None)
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2)), "instructions": len(ins),
            "before_first_global_load": first_load}


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
        kernel, types, consts, div16 = KERNELS[name]
        out["kernels"][name] = c = counts(compile_sm90(kernel, types, consts, div16))
        print(f"{name}: {c['registers']} registers, {c['stack_bytes']} stack bytes, {c['instructions']} instructions, "
              f"{c['before_first_global_load']} before the first global load (triton {triton.__version__}, sm_90)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
