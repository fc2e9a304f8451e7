"""Datasets larger than memory: WebDataset tar shards, read at random through an index.

The in-memory path (``ImageSet``) decodes a dataset once and indexes it a batch at a time.
That stops working when the decoded images no longer fit in host memory (ImageNet-1k at
224 px is ~190 GB as uint8). This package keeps the images *encoded* on disk, in the
format most web-scale datasets already ship in, and decodes each batch when it is drawn:

- ``paths``: which files a data root names (a folder, one .tar, a brace pattern).
- ``index``: **an index per shard** (``<shard>.idx.npy``, written by ``build_index``) holds,
  for each sample, the byte offsets of its members' data inside the tar, its label and
  its number of captions. Shards are plain (uncompressed) WebDataset tar files, as written
  by img2dataset or by ``convert``: members ``KEY.jpg|.jpeg|.png|.webp`` (one image a
  sample) with optional ``KEY.cls`` (class index, ASCII), ``KEY.txt`` (captions, one a
  line) and ``KEY.json`` (may hold ``"caption"`` and ``"label"``).
- ``reader``: ``ShardSet`` maps a global sample number to (shard, row) and reads members
  with one ``pread`` each. At open it reads only each index's header; indexes are mapped
  and shard files opened on demand, at most 64 of each per process, so 40,000 shards stay
  inside the usual limit of 1,024 open files, and the same object works in DataLoader
  worker processes.
- ``dataset``: ``ShardDataset``, the training ``Dataset`` (a whole batch per
  ``__getitems__``, decoded in the worker or handed over encoded for the GPU);
  ``ShardTraining``, what the data module asks of a training split on shards; and the
  ``shards`` dataset's registration, with its recipe section (``ShardsConfig``: ``decode``).
- ``convert``: the ``shards`` command (``--from folder|pairs``, ``--index``).

Decoding itself (TorchCodec, nvJPEG on a GPU, PIL for the rest) is ``ssl_zoo.data.decode``,
shared with every other path.
"""

from ssl_zoo.data.shards.dataset import (
    ShardDataset, ShardsConfig, ShardTraining, held_out_samples, load_shard_images, open_shards,
)
from ssl_zoo.data.shards.index import INDEX_DTYPE, build_index, index_path, load_index
from ssl_zoo.data.shards.paths import MAKE_SHARDS, expand_shard_paths
from ssl_zoo.data.shards.reader import ShardSet

__all__ = [
    "INDEX_DTYPE", "MAKE_SHARDS", "ShardDataset", "ShardSet", "ShardTraining", "ShardsConfig", "build_index",
    "expand_shard_paths", "held_out_samples", "index_path", "load_index", "load_shard_images", "open_shards",
]
