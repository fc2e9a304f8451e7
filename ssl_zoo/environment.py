"""Where a result was measured: the device and the versions of what ran it. Saved with
every evaluation, report and benchmark, so that a number can be traced to its setting."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

# The distributions whose versions change results or speed.
PACKAGES = ("ssl_zoo", "torch", "torchvision", "torchcodec", "pillow", "pytorch-lightning", "lightly", "kornia",
            "open_clip_torch", "timm", "torchmetrics")


def versions() -> dict[str, str]:
    """Python's version, CUDA's (or "none"), and each package's ("not installed" if absent)."""
    found = {"python": platform.python_version(), "cuda": torch.version.cuda or "none"}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def pick_device(name: str) -> torch.device:
    """"auto": the GPU when there is one, else the CPU; or any name torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's model, or the CPU's threads and architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
