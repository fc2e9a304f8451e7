"""Training batches from shards, and the monitors' bounded sets decoded from them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from ssl_zoo.data.decode import decode_images
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shards.paths import expand_shard_paths
from ssl_zoo.data.shards.reader import ShardSet
from ssl_zoo.data.spec import DatasetSpec, dataset_spec
from ssl_zoo.errors import DataFormatError, DataNotFoundError, RecipeError
from ssl_zoo.recipe import DataConfig, available_recipes


def pack_encoded(encoded: list[bytes]) -> tuple[Tensor, Tensor]:
    """B encoded images -> one uint8 buffer (total bytes,) and int64 offsets (B + 1,):
    image i is ``buffer[offsets[i]:offsets[i + 1]]``.

    NOTE: one tensor, not B. A tensor that leaves a loader worker costs the receiving
    process an open file under torch's ``file_descriptor`` sharing strategy; at B = 512 and
    two batches in flight per worker, B tensors a batch passed the common limit of 1,024
    open files and the run hung at step 0.
    """
    offsets = torch.from_numpy(np.cumsum([0, *map(len, encoded)], dtype=np.int64))
    buffer = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8) if offsets[-1] else torch.empty(0, dtype=torch.uint8)
    return buffer, offsets


def unpack_encoded(buffer: Tensor, offsets: Tensor) -> list[Tensor]:
    """The B images of ``pack_encoded``'s buffer, as views (no copy)."""
    bounds = offsets.tolist()
    return [buffer[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


class ShardDataset(Dataset):
    """Training batches from shards, a whole batch per ``__getitems__`` call.

    Items are sample numbers, or (sample, caption) pairs when there are captions (as
    ``EpochBatchSampler`` builds them). A batch is a dict like ``InMemoryDataset``'s:

    - ``"image"``: uint8 (B, 3, S, S), decoded in the DataLoader worker (``decode="worker"``)
      with ``"decode_counts"``: int64 (3,), its ``DecodeCounts``;
    - or, for decoding on the device (``decode="device"``, ``ssl_zoo.data.decode_ahead``),
      the images still encoded: ``"encoded"``: uint8 (total bytes,) and ``"offsets"``: int64
      (B + 1,) (``pack_encoded``);
    - ``"label"``: int64 (B,), when every sample has a label;
    - ``"tokens"``: int64 (B, L), when ``tokenize`` (a text method's: strings -> (n, L)) is given.
    """

    def __init__(
        self,
        shards: ShardSet,
        image_size: int,
        decode: Literal["worker", "device"] = "worker",
        tokenize: Callable[[list[str]], Tensor] | None = None,
        samples: np.ndarray | None = None,
    ):
        if decode not in ("worker", "device"):
            raise ValueError(f"decode must be 'worker' or 'device', not {decode!r}")
        if tokenize is not None and not shards.has_captions:
            raise DataFormatError(
                f"The shards {shards.paths[0].parent} have no captions (.txt or json "
                "'caption' members), and captions were asked for. Use shards made from a "
                "pairs file (--from pairs FILE)."
            )
        self.shards = shards
        self.image_size = image_size
        self.decode = decode
        self.tokenize = tokenize  # called in the loader's workers: it must pickle
        # The sample numbers this dataset serves (None: all); item i is samples[i]. A part
        # held out for the monitors is left out of training this way.
        self.samples = samples

    def __len__(self) -> int:
        return len(self.shards) if self.samples is None else len(self.samples)

    def __getitems__(self, items: list[int] | list[tuple[int, int]]) -> dict[str, Tensor]:
        index = torch.as_tensor(items)  # (B,) samples or (B, 2) sample, caption
        samples = index[:, 0] if index.ndim == 2 else index
        samples = (samples if self.samples is None else torch.from_numpy(self.samples[samples.numpy()])).tolist()
        encoded = [self.shards.read_image_bytes(i) for i in samples]
        if self.decode == "worker":
            shards, rows = self.shards.locate(samples)
            names = [f"{self.shards.paths[s]} (sample {r})" for s, r in zip(shards.tolist(), rows.tolist())]
            images, counts = decode_images(encoded, self.image_size, names=names)
            batch = {"image": images, "decode_counts": counts.as_tensor()}  # uint8 (B, 3, S, S)
        else:
            batch = dict(zip(("encoded", "offsets"), pack_encoded(encoded)))
        if self.shards.has_labels:
            batch["label"] = torch.from_numpy(self.shards.labels_of(samples))
        if self.tokenize is not None:
            columns = index[:, 1].tolist() if index.ndim == 2 else [0] * len(samples)
            captions = [self.shards.read_caption(i, c) for i, c in zip(samples, columns)]
            batch["tokens"] = self.tokenize(captions)  # (B, L)
        return batch


def load_shard_images(shards: ShardSet, samples: np.ndarray, image_size: int, name: str, chunk: int = 256) -> ImageSet:
    """Decode the given samples into an in-memory ``ImageSet`` (labels, captions too): the
    monitors' small, bounded sets (a kNN bank, a validation subset), never a whole dataset."""
    images = []
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk].tolist()
        images.append(decode_images([shards.read_image_bytes(i) for i in part], image_size)[0])
    labels = torch.from_numpy(shards.labels_of(samples)) if shards.has_labels else None
    classes = None
    if labels is not None:  # shards without a classes.txt (img2dataset's) name classes by number
        classes = shards.classes or [str(c) for c in range(shards.max_label + 1)]
    captions = [shards.read_captions(i) for i in samples.tolist()] if shards.has_captions else None
    return ImageSet(torch.cat(images), labels, classes=classes, captions=captions, name=name)


# Shards: a seeded part of the training samples is held out for the monitors when there
# are no validation shards; evaluation sets decoded from shards are capped at this size.
HELD_OUT_DEFAULT = 1_000
SHARD_EVAL_CAP = 10_000


def open_shards(config: DataConfig, split: str = "train") -> ShardSet:
    """The training shards (data.root) or the validation shards (data.val_root)."""
    root = config.root if split == "train" else config.val_root
    if root is None:
        raise RecipeError(f"data.val_root is not set, so these shards have no '{split}' split.")
    try:
        return ShardSet(expand_shard_paths(Path(root).expanduser()))
    except DataNotFoundError as error:
        downloadable = [name for name, path in available_recipes().items()
                        if dataset_spec((yaml.safe_load(path.read_text()) or {}).get("data", {}).get("name", "shapes")).downloadable]
        raise DataNotFoundError(
            f"{error} ImageNet-1k: download ILSVRC2012 from image-net.org, then convert its train/ "
            "(one folder per class) with `python -m ssl_zoo shards --from folder DIR/train --out "
            "data/imagenet/train --size 256`, and val/ likewise."
            + (f" Recipes whose data downloads with --data.download true: {', '.join(downloadable)}." if downloadable else "")
        ) from None


def held_out_samples(config: DataConfig, size: int, seed: int) -> np.ndarray:
    """Training samples kept for the monitors when there are no validation shards (sorted)."""
    count = min(config.val_size or HELD_OUT_DEFAULT, size // 10)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7)).numpy()
    return np.sort(order[:count])


def _shard_split_subset(config: DataConfig, split: str, seed: int) -> ImageSet:
    """A seeded subset of a shard split, decoded into memory: the held-out part of the
    training shards stands in for 'val' when there are no validation shards."""
    if split == "val" and config.val_root is None:
        train = open_shards(config, "train")
        return load_shard_images(train, held_out_samples(config, len(train), seed), config.image_size, "held out")
    shards = open_shards(config, split)
    count = min(len(shards), SHARD_EVAL_CAP)
    keep = np.sort(torch.randperm(len(shards), generator=torch.Generator().manual_seed(seed)).numpy()[:count])
    return load_shard_images(shards, keep, config.image_size, split)


# The training shards (data.root) and data.val_root. NOTE: neither labelled nor captioned
# as far as the evaluation's defaults go: a shard set may hold either; evaluation on
# shards is asked for by name (eval --data shards).
DatasetSpec("shards", load=_shard_split_subset, splits=("train", "val"), labelled=False, open=open_shards).register()
