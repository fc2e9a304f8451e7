"""Random access to the samples of many indexed shards."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import astuple, fields
from pathlib import Path

import numpy as np

from ssl_zoo.data.shards.index import (
    IndexHeader, _captions_from_json, _captions_from_text, _index_command, _json_fields, map_rows, read_header,
)
from ssl_zoo.data.shards.paths import MAKE_SHARDS
from ssl_zoo.errors import DataFormatError, DataNotFoundError

# Per process, at most this many shard indexes are memory-mapped and this many shard files
# are open (the least recently used go first): a set of 40,000 shards must stay far below
# the process's limits on descriptors (often 1024) and maps (65530 on Linux). NOTE: each
# mapped index also holds a descriptor (CPython's mmap keeps a duplicate of the file's), so
# a ShardSet holds at most the sum of the two open.
_MAX_MAPPED_INDEXES = 64
_MAX_OPEN_FILES = 64


class _MappedIndexes(Sequence):
    """The index rows of every shard of a set, mapped in this process when first asked for,
    at most ``_MAX_MAPPED_INDEXES`` at a time. A shard's first map in a process checks that
    its index is current; mapping it again after it was dropped does not check again."""

    def __init__(self, paths: list[Path], headers: np.ndarray):
        self._paths = paths
        self._headers = headers  # (S,) the IndexHeader of each shard, as read at open
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()  # shard -> rows, oldest use first
        self._checked = np.zeros(len(paths), dtype=bool)  # (S,) checked in this process

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, shard: int) -> np.memmap:
        shard = int(shard)
        rows = self._maps.get(shard)
        if rows is not None:
            self._maps.move_to_end(shard)
            return rows
        if not 0 <= shard < len(self._paths):
            raise IndexError(f"shard {shard} of {len(self._paths)}")
        header = IndexHeader(*self._headers[shard].tolist())
        rows = map_rows(self._paths[shard], header, check=not self._checked[shard])
        self._checked[shard] = True
        while len(self._maps) >= _MAX_MAPPED_INDEXES:
            self._maps.popitem(last=False)  # unmapped once no row of it is referenced
        self._maps[shard] = rows
        return rows

    @property
    def mapped(self) -> int:
        """How many indexes are mapped now."""
        return len(self._maps)

    def clear(self) -> None:
        """Drop every map (shards stay checked)."""
        self._maps.clear()


class ShardSet:
    """Samples of several indexed shards, numbered 0..N-1 in shard order, read at random.

    Opening reads each index's header only (its counts and label summary: a small read, no
    lasting map), and checks the first shard's index fully, so that shards rewritten since
    indexing are refused at once. Every other index is mapped, and checked, on first use in
    each process; at most ``_MAX_MAPPED_INDEXES`` indexes are mapped and ``_MAX_OPEN_FILES``
    shards open at a time. No Python object per sample. The state pickles without
    descriptors or maps, and a forked DataLoader worker closes the ones it inherits.
    """

    def __init__(self, shards: Sequence[str | Path]):
        self.paths = [Path(p) for p in shards]
        if not self.paths:
            raise DataNotFoundError(f"No shards given. Make shards with `{MAKE_SHARDS}`.")
        headers = [read_header(p) for p in self.paths]
        counts = [header.num_captions for header in headers]
        if max(counts) and 0 in counts:
            raise DataFormatError(
                f"Shard {self.paths[counts.index(0)]} has no captions while other shards of "
                "the same set do; use shards that all have captions, or none."
            )
        # A shard's samples may have fewer captions than the most any sample has; they are
        # cycled to this count, as tokenize_captions does in memory.
        self.num_captions = max(counts)  # 0: no captions
        # (S,) every IndexHeader as one compact array, to map and check each index against later
        self._headers = np.array([astuple(h) for h in headers], dtype=[(f.name, "<i8") for f in fields(IndexHeader)])
        self._starts = np.concatenate([[0], np.cumsum(self._headers["samples"])])  # (S + 1,) first sample of each shard
        self.has_labels = all(header.labelled == header.samples for header in headers)
        self.max_label = max(header.max_label for header in headers)  # -1: no labels; classes: max_label + 1
        classes = self.paths[0].parent / "classes.txt"
        self.classes = classes.read_text(encoding="utf-8").splitlines() if classes.is_file() else None
        self._start_process()
        self._index(0)  # checked now: shards rewritten wholesale since indexing are refused at open

    def _start_process(self) -> None:
        """Per-process state, empty: no index mapped, no shard open."""
        self._rows = _MappedIndexes(self.paths, self._headers)
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, oldest use first
        self._pid = os.getpid()

    def _in_this_process(self) -> None:
        if self._pid != os.getpid():  # forked: the maps and descriptors are copies of the parent's
            self.close()
            self._start_process()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_rows", "_files", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        # A copy in another process (e.g. a spawned DataLoader worker): it maps indexes, and
        # checks them, as it reads.
        self.__dict__.update(state)
        self._start_process()

    def __del__(self) -> None:
        # The garbage collector unmaps indexes but leaves descriptors open.
        if "_files" in self.__dict__:
            self.close()

    def _index(self, shard: int) -> np.memmap:
        """The index rows of one shard (mapped now if they are not)."""
        self._in_this_process()
        return self._rows[shard]

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def has_captions(self) -> bool:
        return self.num_captions > 0

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) class index of every sample, -1 where a sample has none. Reads every
        index in turn (a few at a time mapped); ``has_labels`` and ``max_label`` need none."""
        labels = np.empty(len(self), dtype=np.int64)
        for shard in range(len(self.paths)):
            labels[self._starts[shard] : self._starts[shard + 1]] = self._index(shard)["label"]
        return labels

    def locate(self, samples: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of each global sample number, as two int64 arrays."""
        samples = np.asarray(samples, dtype=np.int64)
        if samples.size and (samples.min() < 0 or samples.max() >= len(self)):
            raise IndexError(f"sample numbers must lie in [0, {len(self)}); got {samples.min()}..{samples.max()}")
        shards = np.searchsorted(self._starts, samples, side="right") - 1
        return shards, samples - self._starts[shards]

    def _entry(self, index: int) -> tuple[int, int, np.void]:
        """(shard, row, index row) of one sample."""
        shards, rows = self.locate([index])
        shard, row = int(shards[0]), int(rows[0])
        return shard, row, self._index(shard)[row]

    def describe(self, index: int) -> str:
        """Where sample ``index`` lives, for messages: '<shard> (sample r, image at byte o)'."""
        shard, row, entry = self._entry(index)
        return f"{self.paths[shard]} (sample {row}, image at byte {entry['image_offset']})"

    def labels_of(self, samples: Sequence[int]) -> np.ndarray:
        """int64 (B,) class index of each sample (-1: none), from the indexes."""
        shards, rows = self.locate(samples)
        labels = np.empty(len(shards), dtype=np.int64)
        for shard in np.unique(shards):  # one lookup of each shard's index
            here = shards == shard
            labels[here] = self._index(shard)["label"][rows[here]]
        return labels

    def _fd(self, shard: int) -> int:
        self._in_this_process()
        fd = self._files.get(shard)
        if fd is None:
            while len(self._files) >= _MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        else:
            self._files.move_to_end(shard)
        return fd

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise DataFormatError(
                f"{self.paths[shard]} ended before byte {offset + size}: the shard was "
                f"truncated after indexing. Copy it again, or rebuild its index with "
                f"`{_index_command(self.paths[shard])}`."
            )
        return data

    def read_image_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index``, as stored in the shard."""
        shard, _, entry = self._entry(index)
        return self._read(shard, int(entry["image_offset"]), int(entry["image_size"]))

    def read_captions(self, index: int) -> list[str]:
        """Every caption of sample ``index`` (read from the shard now; [] without captions)."""
        shard, row, entry = self._entry(index)
        where = f"{self.paths[shard]} (sample {row})"
        if entry["text_offset"] >= 0:
            text = self._read(shard, int(entry["text_offset"]), int(entry["text_size"]))
            return _captions_from_text(text, where)
        if entry["json_offset"] >= 0:
            fields = _json_fields(self._read(shard, int(entry["json_offset"]), int(entry["json_size"])), where)
            return _captions_from_json(fields)
        return []

    def read_caption(self, index: int, caption: int = 0) -> str:
        """Caption number ``caption`` of sample ``index``; a sample with fewer than
        ``num_captions`` captions cycles through its own (as ``tokenize_captions`` does)."""
        captions = self.read_captions(index)
        if not captions:
            raise DataFormatError(f"{self.describe(index)} has no caption (.txt or json 'caption').")
        return captions[caption % len(captions)]

    def close(self) -> None:
        """Close this process's open shard files and unmap its indexes (they come back on
        the next read)."""
        self._rows.clear()
        while self._files:
            os.close(self._files.popitem()[1])

