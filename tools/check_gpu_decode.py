"""Greedy decoding of quantized bundled models: GPU (Triton kernels) vs CPU (reference ops), token by token.

    PYTHONPATH=. python tools/check_gpu_decode.py

Quantizes on the CPU (self-sampled calibration, small), saves, reloads on each device, greedily decodes the same
prompts and reports where (if anywhere) the token streams first differ. Float kernels sum in a different order from
the references, so an exact tie can in principle break differently; integer GEMM paths are bit-exact.
"""
import tempfile
import time

import torch

import quamba

PROMPTS = ["The old man looked at the sea and", "It was the best of times,", "She opened the door"]
CASES = [("mamba1-tiny", "quamba1", {}), ("mamba2-tiny", "quamba2", dict(w_bits=4, a_bits=8)),
         ("mamba2-tiny", "quamba2", dict(w_bits=4, a_bits=16))]


def main():
    torch.set_flush_denormal(True)  # fp16 / fp32 CPU scans are several times slower on denormals
    with torch.inference_mode():
        for name, recipe, opts in CASES:
            tok = quamba.load_tokenizer(name)
            fp = quamba.load_model(name, dtype=torch.float32)
            q = quamba.quantize(fp, recipe, calib_samples=16, calib_seqlen=64, **opts)
            with tempfile.TemporaryDirectory() as d:
                q.save_pretrained(f"{d}/q")
                streams = {}
                for dev in ("cpu", "cuda"):
                    t0 = time.perf_counter()
                    m = quamba.load_model(f"{d}/q", device=dev)
                    streams[dev] = [m.generate(torch.tensor([tok(p)["input_ids"]], device=dev), 48, temperature=0)[0].tolist()
                                    for p in PROMPTS]
                    print(f"{name} {recipe} {opts} on {dev}: {time.perf_counter() - t0:.1f} s", flush=True)
            for p, a, b in zip(PROMPTS, streams["cpu"], streams["cuda"]):
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                print(f"{name} {recipe} {opts}: {p!r}: " + ("identical 48 tokens" if first is None else
                      f"first difference at token {first}"), flush=True)


if __name__ == "__main__":
    main()
