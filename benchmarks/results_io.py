"""One writer for every file in ``benchmarks/results/``: the rows a benchmark measured plus a ``meta`` block.

``meta`` says when, at which commit, on what hardware (CPU name and flags, or GPU name), with which
library versions and by which exact command a file was made, so a figure can always be traced and
compared like with like.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from sdxs_core.files import atomic_write_json
from sdxs_core.paths import RESULTS, ROOT

LIBRARIES = ("torch", "diffusers", "transformers", "gradio", "openvino", "numpy")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8",
             "amx_tile")


def cpu() -> dict:
    """The CPU's model name, core count and the flags that decide which kernels run."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = info.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return {"cpu": name or "?", "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def gpu() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (run.stdout.strip() or "?") + ("+dirty" if dirty else "")


def meta(command: str | None = None) -> dict:
    """The block every results file carries; ``command`` defaults to this process's own command line."""
    if command is None:
        module = sys.modules["__main__"].__spec__
        command = ("python -m " + module.name if module else "python " + sys.argv[0]) + "".join(
            " " + a for a in sys.argv[1:])
    device = {**cpu(), **(gpu() or {})}
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit(), "command": command,
            "device": device, "versions": versions()}


def command_line(module: str, argv: list[str] | None) -> str | None:
    """The command that reproduces ``module``'s ``main(argv)`` when another program calls it in-process
    (a chain, a test); ``None`` for a real command line, which ``meta`` then reads from ``sys.argv``."""
    return None if argv is None else f"python -m {module} {shlex.join(argv)}".rstrip()


def results_path(name: str) -> Path:
    return RESULTS / (name if name.endswith(".json") else f"{name}.json")


def write_results(path: str | os.PathLike, report: dict, command: str | None = None) -> Path:
    """Atomically write ``report`` (rows as the benchmark keeps them) with a fresh ``meta`` block first."""
    report = {"meta": meta(command), **{k: v for k, v in report.items() if k != "meta"}}
    return atomic_write_json(path, report)


def read_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
