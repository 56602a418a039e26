"""Tests of the scripts under benchmarks/ (their logic on the CPU; the timings themselves need a GPU)."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, leaving no trace: the scripts put benchmarks/ on sys.path to import their
    siblings, whose names (common, e2e, kernels) other packages import too (transformers probes for a `kernels`
    package), so sys.path and those modules are restored afterwards."""
    import transformers  # noqa: F401  (its optional-package probes run now, before benchmarks/ is on the path)

    path, modules = list(sys.path), set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path[:] = path
        for mod_name in set(sys.modules) - modules:
            if str(getattr(sys.modules[mod_name], "__file__", "") or "").startswith(str(ROOT / "benchmarks")):
                del sys.modules[mod_name]
