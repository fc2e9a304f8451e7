"""Random access to the samples of many indexed shards."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_zoo.data.shards.index import _captions_from_json, _captions_from_text, _index_command, _json_fields, index_path, load_index
from ssl_zoo.data.shards.paths import MAKE_SHARDS
from ssl_zoo.errors import DataFormatError, DataNotFoundError

# Descriptors kept open per process; a dataset of thousands of shards must stay below the
# process's file limit (often 1024).
_MAX_OPEN_FILES = 64


class ShardSet:
    """Samples of several indexed shards, numbered 0..N-1 in shard order, read at random.

    Holds one memory-mapped index per shard and an array of cumulative counts; no Python
    object per sample. Files are opened on first use in each process (the state pickles
    without descriptors or mappings, and a forked DataLoader worker opens its own).
    """

    def __init__(self, shards: Sequence[str | Path]):
        self.paths = [Path(p) for p in shards]
        if not self.paths:
            raise DataNotFoundError(f"No shards given. Make shards with `{MAKE_SHARDS}`.")
        loaded = [load_index(p) for p in self.paths]
        counts = [count for _, count in loaded]
        if max(counts) and 0 in counts:
            raise DataFormatError(
                f"Shard {self.paths[counts.index(0)]} has no captions while other shards of "
                "the same set do; use shards that all have captions, or none."
            )
        # A shard's samples may have fewer captions than the most any sample has; they are
        # cycled to this count, as tokenize_captions does in memory.
        self.num_captions = max(counts)  # 0: no captions
        self._attach([rows for rows, _ in loaded])
        self.has_labels = all(bool((rows["label"] >= 0).all()) for rows in self._rows)
        classes = self.paths[0].parent / "classes.txt"
        self.classes = classes.read_text(encoding="utf-8").splitlines() if classes.is_file() else None

    def _attach(self, rows: list[np.memmap]) -> None:
        """Hold the per-shard index rows; no file is open yet in this process."""
        self._rows = rows  # one np.memmap of INDEX_DTYPE per shard
        self._starts = np.cumsum([0] + [len(r) for r in rows])  # (S + 1,) first sample of each shard
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, in this process
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_rows", "_starts", "_files", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        # A copy in another process (e.g. a spawned DataLoader worker): the original checked
        # these indexes; map them again.
        self.__dict__.update(state)
        self._attach([np.load(index_path(p), mmap_mode="r")[1:] for p in self.paths])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def has_captions(self) -> bool:
        return self.num_captions > 0

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) class index of every sample, -1 where a sample has none (from the indexes)."""
        return np.concatenate([np.asarray(rows["label"]) for rows in self._rows])

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
        return shard, row, self._rows[shard][row]

    def describe(self, index: int) -> str:
        """Where sample ``index`` lives, for messages: '<shard> (sample r, image at byte o)'."""
        shard, row, entry = self._entry(index)
        return f"{self.paths[shard]} (sample {row}, image at byte {entry['image_offset']})"

    def labels_of(self, samples: Sequence[int]) -> np.ndarray:
        """int64 (B,) class index of each sample (-1: none), from the indexes."""
        shards, rows = self.locate(samples)
        return np.array(
            [self._rows[s][r]["label"] for s, r in zip(shards.tolist(), rows.tolist())], dtype=np.int64
        )

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            if len(self._files) >= _MAX_OPEN_FILES:
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
        """Close this process's open shard files (they reopen on the next read)."""
        while self._files:
            os.close(self._files.popitem()[1])

