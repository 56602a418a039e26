"""benchmarks/gpu_check.sh, the one device call of a GPU session: valid bash, its steps' time limits fit the device
tool's ten minutes, and every file it names exists, and every decode_ab switch and sweep_prefill part."""
import re
import shlex
import subprocess

from tests.ops.triton_harness import requires_triton

from . import ROOT, load_benchmark

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _commands():
    """The time-limited commands, without the environment assignments some start with."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    lines = [re.sub(r"^(\w+=\S*\s+)*", "", line.strip()) for line in text.splitlines()]
    return [line for line in lines if line.startswith("timeout ")]


def test_is_valid_bash_within_the_device_limit():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    limits = [int(shlex.split(c)[1]) for c in _commands()]
    assert limits and sum(limits) <= 570  # 600 s a device call, less start-up and nvidia-smi


def test_named_files_exist():
    paths = {w for c in _commands() for w in shlex.split(c.split("|")[0]) if w.endswith((".py", ".sh"))}
    assert paths and all((ROOT / p).is_file() for p in paths), sorted(p for p in paths if not (ROOT / p).is_file())


@requires_triton
def test_named_switches_and_parts_exist():
    """decode_ab's --switch and sweep_prefill's --parts values it passes: a misspelt one would cost a device call."""
    option = r"benchmarks/(\w+)\.py .*?--(?:switch|parts) (\S+)"
    named = {(m.group(1), v) for c in _commands() for m in re.finditer(option, c) for v in m.group(2).split(",")}
    known = {"decode_ab": set(load_benchmark("decode_ab").SWITCHES),
             "sweep_prefill": set(load_benchmark("sweep_prefill").PARTS)}
    assert named, "gpu_check.sh names no --switch or --parts: update this test with what it runs"
    assert all(v in known.get(script, ()) for script, v in named), sorted(named)
