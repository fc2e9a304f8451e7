"""Where a result was measured: the source and versions of what ran it, the machine, and
the memory it took. Saved with every evaluation, report and benchmark, so that a number
can be traced to its setting."""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

# The distributions whose versions change results or speed.
PACKAGES = ("ssl_zoo", "torch", "torchvision", "torchcodec", "pillow", "pytorch-lightning", "lightly", "kornia",
            "open_clip_torch", "timm", "torchmetrics")

PACKAGE_DIR = Path(__file__).resolve().parent


def versions() -> dict[str, str | bool | None]:
    """Python's version, CUDA's (or "none"), each package's ("not installed" if absent), and
    the git commit of the ssl_zoo source that ran (``source_revision``)."""
    found: dict[str, str | bool | None] = {"python": platform.python_version(), "cuda": torch.version.cuda or "none"}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    revision = source_revision()
    found["ssl_zoo_commit"], found["ssl_zoo_dirty"] = revision["commit"], revision["dirty"]
    return found


def _git(*args: str) -> str | None:
    """git's output in the package's folder, or None when git is absent or fails."""
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_revision() -> dict[str, str | bool | None]:
    """The git commit of the ssl_zoo source and whether its tracked files differ from it
    ("dirty"); both None when the source is not a git checkout (installed from a wheel,
    say). Never raises."""
    # A wheel installed in a virtual environment inside some other repository sits in that
    # repository's work tree: only a checkout that tracks this very file is ssl_zoo's own.
    if _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no")  # run folders, reports: not source changes
    return {"commit": commit, "dirty": None if commit is None or changes is None else bool(changes)}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def peak_host_memory_gib() -> dict[str, float | None]:
    """Peak resident memory (RSS) of this process and of its largest finished child process
    (DataLoader workers, say), in GiB; None where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return {"process": None, "largest_child": None}
    # NOTE: ru_maxrss is in KiB on Linux but in bytes on macOS. For children it is the
    # largest single child's peak, not their sum.
    unit = 1 if sys.platform == "darwin" else 1024
    peak = {who: resource.getrusage(flag).ru_maxrss * unit / 2**30
            for who, flag in (("process", resource.RUSAGE_SELF), ("largest_child", resource.RUSAGE_CHILDREN))}
    return {who: round(value, 3) for who, value in peak.items()}


def pick_device(name: str) -> torch.device:
    """"auto": the GPU when there is one, else the CPU; or any name torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's model, or the CPU's model, threads and architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads, {platform.machine()})"


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch ops single-threaded inside, the thread count restored after.

    For work made of many tiny ops (shapes' rendering, few-shot L-BFGS fits): with two
    threads every op waits at a thread barrier, and where the cores are shared (a training
    run, test workers) a descheduled thread stalls each one. Shapes' rendering took 3-23 s
    that way against ~1.2 s on one thread (4000 images at 64 px), the few-shot probes
    14-21 s against 1 s for 8 fits; on 2 free cores two threads saved only ~30 %.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
