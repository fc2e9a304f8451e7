"""The ``shards`` dataset: training batches read from shards, and the monitors' bounded
sets decoded from them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from ssl_zoo.data.decode import DecodeCounts, decode_images
from ssl_zoo.data.decode_ahead import DecodeAhead, pack_encoded
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shards.paths import expand_shard_paths
from ssl_zoo.data.shards.reader import ShardSet
from ssl_zoo.data.spec import DatasetSpec, dataset_spec
from ssl_zoo.data.training import TrainingBatches, TrainingData, loader_workers
from ssl_zoo.errors import DataFormatError, DataNotFoundError, RecipeError
from ssl_zoo.recipe import DataConfig, available_recipes

if TYPE_CHECKING:
    import pytorch_lightning as pl


@dataclass
class ShardsConfig:
    """How a dataset read from shards is decoded (the recipe's `shards:` or `imagenet100:` section)."""

    decode: Literal["auto", "worker", "device"] = "auto"
    """Where JPEGs are decoded; auto: on the GPU (nvJPEG) when training on one, else in the workers."""


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


# Decoding on the device: past this share of a run's images decoded one at a time on the
# CPU (not JPEG, or refused by nvJPEG), the run ends with a warning.
MAX_ONE_BY_ONE = 0.01


def warn_of_decoding(counts: DecodeCounts, decode_on: str | None, config: DataConfig) -> None:
    """One warning each for the whole run, never a crash mid-epoch: images replaced because
    nothing could decode them, and too many decoded one at a time when the device decodes."""
    if counts.replaced:
        warnings.warn(
            f"{counts.replaced} training image(s) in {config.root} could not be decoded; each was replaced "
            "by another image of its batch. Rebuild those shards with `python -m ssl_zoo shards` to drop them.",
            stacklevel=3,
        )
    if decode_on == "device" and counts.one_by_one > MAX_ONE_BY_ONE * counts.images:
        warnings.warn(
            f"{counts.one_by_one} of {counts.images} training images ({100 * counts.one_by_one / counts.images:.1f} %) "
            f"in {config.root} were decoded one at a time on the CPU, not by the batched decoder on the device: "
            "they are not JPEG, or JPEGs nvJPEG refuses (CMYK, say). Remake the shards as JPEG with `python -m "
            f"ssl_zoo shards --from folder ...`, or decode in the loader workers (--{config.name}.decode worker).",
            stacklevel=3,
        )


class ShardTraining(TrainingData):
    """Training on shards: they stay encoded on disk; each batch is read through their index
    and decoded in the DataLoader workers, or on the GPU with nvJPEG (``DecodeAhead``), so
    memory does not grow with the dataset. Only the kNN bank is decoded whole."""

    def __init__(self, shards: ShardSet, config: DataConfig, seed: int) -> None:
        self.split = shards
        self.config = config
        self.samples: np.ndarray | None = None  # the samples trained on (None: all)
        # The held-out part stands in for validation; unlabelled, nothing could score on it.
        if config.val_root is None and shards.has_labels:
            held_out = held_out_samples(config, len(shards), seed)
            self.samples = np.setdiff1d(np.arange(len(shards)), held_out)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def has_labels(self) -> bool:
        return self.split.has_labels

    @property
    def has_captions(self) -> bool:
        return self.split.has_captions

    def labelled_bank(self, size: int, seed: int) -> ImageSet | None:
        """A seeded part of the labelled training samples, decoded (never the held-out ones)."""
        if not self.split.has_labels:
            return None
        samples = self.samples if self.samples is not None else np.arange(len(self.split))
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).numpy()
        keep = np.sort(samples[order[:size]])
        return load_shard_images(self.split, keep, self.config.image_size, "bank")

    def batches(self, device: torch.device, tokenize: Callable | None, trainer: pl.Trainer | None) -> TrainingBatches:
        options: ShardsConfig = self.config.options
        decode = options.decode
        if decode == "auto":
            decode = "device" if device.type == "cuda" else "worker"
        size = self.config.image_size
        dataset = ShardDataset(self.split, size, decode, tokenize, samples=self.samples)
        workers = self.config.num_workers if self.config.num_workers is not None else loader_workers(trainer)
        self.decode_on = "device" if decode == "device" else "workers"
        self.decode_counts = DecodeCounts()  # counted afresh for each run that uses this data
        # Encoded batches are pinned too: nvJPEG copies their one buffer from pinned memory faster.
        batches = TrainingBatches(dataset, num_captions=self.split.num_captions if tokenize is not None else 0, workers=workers)
        if decode == "device":
            batches.after_loader = lambda loader: DecodeAhead(loader, size, device)
        return batches

    def before_transfer(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # What decoding each batch took travels with it, on the host.
        if "decode_counts" in batch:
            self.decode_counts += DecodeCounts.from_tensor(batch.pop("decode_counts"))
        return batch

    def finish(self) -> None:
        warn_of_decoding(self.decode_counts, self.decode_on, self.config)


def _train_on_shards(config: DataConfig, split: str, seed: int) -> ShardTraining:
    return ShardTraining(open_shards(config, "train"), config, seed)


# The training shards (data.root) and data.val_root. NOTE: neither labelled nor captioned
# as far as the evaluation's defaults go: a shard set may hold either; evaluation on
# shards is asked for by name (eval --data shards).
DatasetSpec("shards", load=_shard_split_subset, splits=("train", "val"), labelled=False, config=ShardsConfig,
            train=_train_on_shards, open=open_shards,
            captions_hint="made from pairs (`python -m ssl_zoo shards --from pairs FILE ...`)").register()
