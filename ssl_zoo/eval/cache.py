"""Frozen features cached on disk, keyed by what they were computed from.

The key hashes the backbone's weights (not the checkpoint's path or time stamp), what the
images are, the split and the evaluation transform, so a retrained checkpoint or a changed
dataset gets a new entry and is never served stale features. Two forms:

- ``get_or_compute``: a ``.pt`` file of float32 tensors, for sets decoded in memory (the
  key hashes the images' bytes);
- ``memory_mapped``: an (N, D) float16 array in a ``.features`` file, written a batch at a
  time and read back through a memory map, for streamed shard splits (the key hashes the
  shards' index files, not the pixels: 1.28 M images are not read twice to key them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ssl_zoo.atomic import atomic_path


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
    # 2: the evaluation transform takes the centre crop of larger images.
    VERSION = 2

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
        # Written beside its final name, then renamed: a reader never sees half a file.
        with atomic_path(path) as tmp:
            torch.save({"parts": parts, "tensors": {k: v.cpu() for k, v in tensors.items()}}, tmp)
        return tensors

    def memory_mapped(
        self, parts: dict[str, Any], rows: int, dim: int, fill: Callable[[np.ndarray, slice], None],
    ) -> Tensor:
        """(rows, dim) float16 features backed by a file: the cached one when a complete file
        for ``parts`` is there, else a new one that ``fill(array, rows)`` writes, given the
        writable (rows, dim) array and the slice of rows it is to fill. Under several
        processes (``torch.distributed``) each fills its own contiguous slice of the one file;
        the cache folder must then be one all of them see. Without a cache folder the file is
        a temporary one (one node's), deleted when the features are. A file that is truncated,
        of another layout or of other parts is not read: it is computed again and replaced.
        """
        rank, world = _rank_and_world()
        expected = json.loads(json.dumps(parts))
        path = self.folder / f"{self.key(parts)}.features" if self.folder is not None else None
        if path is not None:
            features = _read_features(path, expected, rows, dim)
            if all(_gather(features is not None)):  # every process reads the same file, or none does
                self.hits += 1
                return torch.from_numpy(features)
        self.misses += 1
        # Process 0 lays the file out beside its final name; every process fills its slice of
        # it; then process 0 renames it into place (as the block of atomic_path ends): a reader
        # never sees half a file. Without a cache folder it is a temporary file, never renamed.
        tmp = None
        try:
            with atomic_path(path) if rank == 0 and path is not None else contextlib.nullcontext() as staged:
                if rank == 0:
                    tmp = staged or _temporary_file()
                    with open(tmp, "wb") as file:
                        _lay_out(file, parts, rows, dim)
                tmp = Path(_gather(tmp)[0])
                features = _map(tmp, rows, dim, "r+")
                mine = range(rows)[rank * rows // world : (rank + 1) * rows // world]
                fill(features, slice(mine.start, mine.stop))
                features.flush()
                del features
                _gather(None)  # every slice is written
            _gather(None)  # and renamed into place
            features = _map(path, rows, dim, "c") if path is not None else _map(tmp, rows, dim, "c")
            _gather(None)  # every process has mapped it
        finally:
            if rank == 0 and tmp is not None:
                tmp.unlink(missing_ok=True)  # mapped, a temporary file lives on until unmapped
        return torch.from_numpy(features)


def _temporary_file() -> Path:
    """An empty file of this node's temporary folder, for features no cache keeps."""
    handle, name = tempfile.mkstemp(suffix=".features.tmp")
    os.close(handle)
    return Path(name)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(value: Any) -> list[Any]:
    """``value`` from every process, in rank order (a barrier too); [value] alone."""
    rank, world = _rank_and_world()
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values


# A .features file: magic, the header's length (uint64, little-endian), the header (JSON:
# layout, parts, shape), zero padding to a multiple of 64 bytes, then the rows, float16.
_MAGIC = b"SSLZOOF1"
_LAYOUT = 1


def _data_offset(header_length: int) -> int:
    return -(-(len(_MAGIC) + 8 + header_length) // 64) * 64


def _lay_out(file: IO[bytes], parts: dict[str, Any], rows: int, dim: int) -> None:
    """The header, and room for the rows (zeros, until they are filled)."""
    header = json.dumps({"layout": _LAYOUT, "parts": parts, "shape": [rows, dim], "dtype": "float16"}).encode()
    file.write(_MAGIC + struct.pack("<Q", len(header)) + header)
    file.truncate(_data_offset(len(header)) + rows * dim * 2)


def _map(path: Path, rows: int, dim: int, mode: str) -> np.ndarray:
    """The rows of a laid-out file. "c" (copy-on-write) gives torch a writable array whose
    writes never reach the file."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(len(_MAGIC) + 8)[len(_MAGIC) :])
    return np.memmap(path, dtype=np.float16, mode=mode, offset=_data_offset(length), shape=(rows, dim))


def _read_features(path: Path, parts: Any, rows: int, dim: int) -> np.ndarray | None:
    """The features of a complete file for ``parts``; None when there is none, or it is
    truncated, of another layout or of other parts (a hash collision, a copy cut short)."""
    try:
        with open(path, "rb") as file:
            start = file.read(len(_MAGIC) + 8)
            if len(start) < len(_MAGIC) + 8 or start[: len(_MAGIC)] != _MAGIC:
                return None
            (length,) = struct.unpack("<Q", start[len(_MAGIC) :])
            header = json.loads(file.read(min(length, 1 << 24)))
        offset = _data_offset(length)
        if (header.get("layout") != _LAYOUT or header.get("parts") != parts or header.get("shape") != [rows, dim]
                or path.stat().st_size != offset + rows * dim * 2):
            return None
    except (OSError, ValueError):
        return None
    return _map(path, rows, dim, "c")
