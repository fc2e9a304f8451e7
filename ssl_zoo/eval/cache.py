"""Frozen features cached on disk, keyed by what they were computed from.

The key hashes the backbone's weights (not the checkpoint's path or time stamp), the
images' bytes, the split and the evaluation transform, so a retrained checkpoint or a
changed dataset gets a new entry and is never served stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn


def hash_tensor(tensor: Tensor, digest: "hashlib._Hash | None" = None) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    digest = digest or hashlib.sha256()
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def hash_module(module: nn.Module) -> str:
    """sha256 of a module's state (parameters and buffers, by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        hash_tensor(tensor, digest)
    return digest.hexdigest()


def hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureCache:
    """A folder of ``<key>.pt`` files, each a dict of tensors and the key's parts."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    # Raised when the way features are computed changes (same weights, other features).
    VERSION = 1

    @classmethod
    def key(cls, parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps({**parts, "cache_version": cls.VERSION}, sort_keys=True).encode()).hexdigest()[:32]

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        if self.folder is None:
            self.misses += 1
            return compute()
        path = self.folder / f"{self.key(parts)}.pt"
        if path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # damaged (a disk full, a copy cut short): computed again below
                entry = {}
            if entry.get("parts") == json.loads(json.dumps(parts)):  # guards against a hash collision
                self.hits += 1
                return entry["tensors"]
        self.misses += 1
        tensors = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        # Written beside its final name, then renamed: a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp", delete=False) as tmp:
            try:
                torch.save({"parts": parts, "tensors": {k: v.cpu() for k, v in tensors.items()}}, tmp)
            except BaseException:
                Path(tmp.name).unlink(missing_ok=True)
                raise
        os.replace(tmp.name, path)
        return tensors
