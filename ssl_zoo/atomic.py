"""Files that are either whole or absent: written beside their final name, flushed to disk,
then renamed over it.

A kill, a full disk or an exception at any moment leaves the old file (or none) and no
temporary file behind, except after a kill (SIGKILL, power loss), which can leave one
``.<name>.<pid>.tmp`` beside it: never a torn file under the final name. ``atomic_write``
takes the whole content; ``atomic_path`` gives a temporary path to writers that stream into
a file of their own (tar shards, ``torch.save``, safetensors, numpy, matplotlib).
``flush_folder`` makes a rename durable for those that rename a folder they filled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, content: bytes | str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``content`` (text is encoded with ``encoding``), atomically and durably."""
    data = content.encode(encoding) if isinstance(content, str) else content
    with atomic_path(path) as temp:
        temp.write_bytes(data)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file into; when the block ends
    without an exception, that file is flushed to disk and renamed over ``path``. On any
    exception it is removed and ``path`` is left as it was.

    The temporary name keeps no suffix of ``path`` (writers that add ``.npy`` or ``.npz``
    to a name must be given an open file), so no pattern that lists the finished files
    (``*.tar``, ``*.ckpt``) matches it. It holds the process id: processes writing the same
    file at once each write their own. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename stays on one file system (a rename across file systems is
    # a copy, which a kill can tear).
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        _flush_to_disk(temp)
        os.replace(temp, path)  # atomic on POSIX and Windows
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk keeps the old file and leaves no debris
        raise
    flush_folder(path.parent)


def _flush_to_disk(file: Path) -> None:
    # Without it, a power loss after the rename can leave the new name on an empty file:
    # the rename may reach the disk before the data does.
    handle = os.open(file, os.O_RDWR)  # writable: Windows flushes only a handle that may write
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def flush_folder(folder: Path) -> None:
    """Make renames into ``folder`` durable (POSIX: its entry list is written out). For
    writers that rename a whole folder into place (``export``); ``atomic_path`` calls it."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: no handle on a folder to flush
        return
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
