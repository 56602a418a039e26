"""Tile and option sweeps of the prefill kernels on a GPU, at 1024 tokens, batch 1: the numbers behind their defaults.

  * int8 conv + SiLU (mamba-2.8b, d_inner 5120): every ``conv1d.QCONV_SWEEP`` tile against the fp16 conv, and
    ``QCONV_BCAST_TILES`` with the per-channel loads broadcast (weight [D, K] as stored, and tap-major);
  * Hadamard + int8 (1024 rows of 5120): the launch heuristic against forced (sub-rows, rows, warps);
  * fp16 Mamba1 scan: the first three ``selective_scan_parallel.SWEEP`` tiles in 1 .. 16 time segments;
  * Mamba2's int8 chunk scan (mamba2-2.7b) with and without exact int8 products (``ssd.INT8_DOTS``), and fp16 SSD.
Every variant is checked against the default launch (bytes for the integer kernels, relative error otherwise).
Writes sweep_prefill_<gpu>.json (with the fastest conv tile and the best segment setting) into --out.

    python benchmarks/sweep_prefill.py [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
L, D, N = 1024, 5120, 16


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _try(label: str, fn):
    """fn() or None: a tile that does not compile or fit is reported and skipped, the sweep goes on."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (triton's OutOfResources, compile errors)
        print(label, "FAILED", type(e).__name__, str(e)[:200], flush=True)
        return None


QCONV_BCAST_TILES = [(128, 8, 4), (128, 16, 4), (64, 16, 4), (256, 8, 8), (128, 16, 8)]


def sweep_conv(t, dev, g) -> dict:
    from quamba.ops.triton import conv1d as C

    x_q = torch.randint(-128, 128, (1, L, 2 * D), dtype=torch.int8, generator=g).to(dev)[..., :D].transpose(1, 2)
    w_q = torch.randint(-128, 128, (D, 4), dtype=torch.int8, generator=g).to(dev)
    scales = (torch.tensor(0.01, device=dev), torch.rand(D, device=dev) * 0.01 + 0.005,
              torch.full((D,), 0.02, device=dev), torch.randn(D, device=dev) * 0.1)
    xf = torch.randn(1, L, 2 * D, generator=g).half().to(dev)[..., :D].transpose(1, 2)
    wf, bf = torch.randn(D, 4, generator=g).half().to(dev), torch.randn(D, generator=g).half().to(dev)
    fp_us, _ = t(lambda: C._causal_conv1d_launch(xf, wf, bf, None, "silu"))
    ref = C._qcausal_conv1d_launch(x_q, w_q, *scales)
    # every tile with the default loads, then QCONV_BCAST_TILES with the per-channel loads broadcast over the tile
    # (BCAST: no layout conversion through shared memory), the weight [D, K] as stored or tap-major (the transpose of
    # a [K, D] tensor: one vector load a tap)
    w_taps = w_q.t().contiguous().t()
    variants = [((bd, bl, nw), "", w_q, {}) for bd, bl, nw in C.QCONV_SWEEP] + [
        (tile, f"bcast {wname} ", w, {"bcast": True, "weight": wname})
        for tile, (wname, w) in itertools.product(QCONV_BCAST_TILES, (("[D, K]", w_q), ("taps", w_taps)))]
    rows = []
    for (bd, bl, nw), label, w, extra in variants:
        f = lambda: C._qcausal_conv1d_launch(x_q, w, *scales, block_d=bd, block_l=bl, num_warps=nw,  # noqa: E731
                                             bcast=bool(extra))
        r = _try(f"conv {label}{bd} {bl} {nw}", lambda: {"tile": [bd, bl, nw], **extra,
                                                          "same": bool(torch.equal(f(), ref)), "us": t(f)[0]})
        if r:
            r["vs_fp16"] = fp_us / r["us"]
            rows.append(r)
            print(f"conv {label}{bd} {bl} {nw}: {r['us']:.1f} us, x{r['vs_fp16']:.2f} fp16, same {r['same']}",
                  flush=True)
    good = [r for r in rows if r["same"] and not r.get("bcast")]
    return {"conv_fp16_us": fp_us, "conv": rows,
            "qconv_tile": min(good, key=lambda r: r["us"])["tile"] if good else None}


def sweep_hadamard(t, dev, g) -> dict:
    from quamba.ops.triton import hadamard as H

    y, scale = torch.randn(L, D, generator=g).half().to(dev), torch.tensor(0.05, device=dev)
    ref = H._hadamard_quant_launch(y, scale)
    rows = []
    for mi, per, nw in [(None, None, None), (1, 1, 4), (2, 1, 4), (4, 1, 4), (4, 1, 8), (8, 1, 8), (2, 2, 8),
                        (4, 2, 8), (1, 4, 8), (1, 2, 4), (8, 1, 16)]:
        f = lambda: H._hadamard_quant_launch(y, scale, sub_rows=mi, rows_per_program=per, num_warps=nw)  # noqa: E731
        r = _try(f"hadamard {mi} {per} {nw}", lambda: {"mi_rows_warps": [mi, per, nw],
                                                        "same": bool(torch.equal(f(), ref)), "us": t(f)[0]})
        if r:
            rows.append(r)
            print(f"hadamard {mi} {per} {nw}: {r['us']:.1f} us, same {r['same']}", flush=True)
    return {"hadamard": rows}


def sweep_scan(t, dev, g) -> dict:
    from quamba.ops.triton import selective_scan_parallel as S

    u, dt, z = (torch.randn(1, L, D, generator=g).half().to(dev).transpose(1, 2) for _ in range(3))
    A = -torch.rand(D, N, generator=g).to(dev) - 0.5
    Bm, Cm = (torch.randn(1, L, N, generator=g).half().to(dev).transpose(1, 2) for _ in range(2))
    Dv, db = torch.randn(D, generator=g).to(dev), torch.randn(D, generator=g).to(dev)
    args = (u, dt, A, Bm, Cm, Dv, z, db, True)
    ref = S.selective_scan_parallel_launch(*args, segments=1)
    rows = []
    for bd, bl, nw in S.SWEEP[:3]:
        for seg in (1, 2, 4, 8, 16):
            f = lambda: S.selective_scan_parallel_launch(*args, block_d=bd, block_l=bl, num_warps=nw,  # noqa: E731
                                                         segments=seg)
            r = _try(f"scan {bd} {bl} {nw} x{seg}", lambda: {"tile": [bd, bl, nw], "segments": seg,
                                                             "rel_vs_one_pass": _rel(f(), ref), "us": t(f)[0]})
            if r:
                rows.append(r)
                print(f"scan {bd} {bl} {nw}, {seg} segments: {r['us']:.1f} us, rel {r['rel_vs_one_pass']:.1e}",
                      flush=True)
    default = [r for r in rows if r["tile"] == list(S.SWEEP[0])]
    best = min(default, key=lambda r: r["us"]) if default else None
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    per_sm = None if best is None else (0 if best["segments"] == 1 else best["segments"] * (D // S.SWEEP[0][0]) / sms)
    return {"scan": rows, "segment_programs_per_sm": per_sm}


def sweep_ssd(t, dev) -> dict:
    import kernels
    from quamba.ops.triton import ssd as SSD

    case = kernels.ssd_case(kernels.SHAPES[1], 1, L, dev, False)  # mamba2-2.7b
    out, ys, before = {"ssd": []}, {}, SSD.INT8_DOTS
    try:
        for flag in (False, True):
            SSD.INT8_DOTS = flag
            y = case.quant()
            ys[flag] = y[0] if isinstance(y, tuple) else y
            out["ssd"].append({"int8_dots": flag, "us": t(case.quant)[0]})
            print(f"int8 ssd, INT8_DOTS={flag}: {out['ssd'][-1]['us']:.1f} us", flush=True)
    finally:
        SSD.INT8_DOTS = before
    out["ssd_fp16_us"] = t(case.fp16)[0]
    out["ssd_int8_dots_rel"] = _rel(ys[True], ys[False])
    print(f"fp16 ssd: {out['ssd_fp16_us']:.1f} us; with vs without int8 products: rel {out['ssd_int8_dots_rel']:.1e}")
    return out


PARTS = {"conv": sweep_conv, "hadamard": sweep_hadamard, "scan": sweep_scan,
         "ssd": lambda t, dev, g: sweep_ssd(t, dev)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for sweep_prefill_<gpu>.json")
    p.add_argument("--reps", type=int, default=30, help="CUDA-graph replays per timing (median; default 30)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from %(default)s")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or any(x not in PARTS for x in parts):
        p.error(f"--parts {args.parts!r}: choose from {','.join(PARTS)}")
    if not torch.cuda.is_available():
        sys.exit("sweep_prefill.py times Triton kernels: it needs a CUDA GPU (none is visible to torch)")
    from common import Timer, environment, gpu_slug

    dev = torch.device("cuda")
    t, g = Timer(dev, reps=args.reps), torch.Generator(device="cpu").manual_seed(0)
    out = {"environment": environment(dev), "device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        for name in parts:
            out.update(PARTS[name](t, dev, g))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if parts == list(PARTS) else "_" + "-".join(parts)
    path = args.out / f"sweep_prefill{suffix}_{gpu_slug(out['device'])}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"fastest int8 conv tile {out.get('qconv_tile')}; segments: {out.get('segment_programs_per_sm')}; "
          f"written: {path}")
    return out


if __name__ == "__main__":
    main()
