"""A dataset's training split as the data module serves it: what it asks every dataset.

``TrainingData`` is the question list: how many images, labels and captions or not, the
kNN monitor's labelled bank, the training ``Dataset`` for a device, and what happens to
a batch on its way there. ``InMemoryTraining`` answers it for any split decoded into an
``ImageSet``, which is what a dataset gets when its spec names only a ``load`` function;
a dataset that stays encoded on disk (shards) brings its own answers.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssl_zoo.data.decode import DecodeCounts
from ssl_zoo.data.imageset import ImageSet

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from ssl_zoo.recipe import DataConfig

Tokenize = Callable[[list[str]], Tensor]  # a text method's: strings -> (n, L) token ids


def already_batched(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The DataLoader's collate function: the datasets here build whole batches themselves."""
    return batch


def loader_workers(trainer: pl.Trainer | None) -> int:
    """Loader worker processes for one training process: every core of its share.

    Under SLURM each task already has its own CPU set (--cpus-per-task), so it is used as
    is; elsewhere (torchrun, Lightning's launcher) the processes of a node share its cores.
    """
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    cores = len(os.sched_getaffinity(0))
    if trainer is None:
        return cores
    if isinstance(getattr(trainer.strategy, "cluster_environment", None), SLURMEnvironment):
        per_task = os.environ.get("SLURM_CPUS_PER_TASK")
        return max(min(cores, int(per_task)) if per_task else cores, 1)
    processes_per_node = trainer.world_size // max(trainer.num_nodes, 1)
    return max(cores // max(processes_per_node, 1), 1)


def _as_is(batches: Iterable) -> Iterable:
    return batches


@dataclass
class TrainingBatches:
    """How the training batches of one run are made, for the data module's DataLoader."""

    # Items: image numbers, or (image, caption) pairs when ``num_captions``; ``__getitems__``
    # returns a whole batch as a dict ("image": uint8 (B, 3, S, S), "label", "tokens"...).
    dataset: Dataset
    num_captions: int = 0  # captions per image the sampler draws one of (0: no text)
    workers: int = 0  # DataLoader worker processes
    on_host: bool = True  # batches leave host memory (pinned when training on a GPU)
    # What the loader's batches go through on their way to the device (decoding them there).
    after_loader: Callable[[Iterable], Iterable] = field(default=_as_is)


class TrainingData(ABC):
    """The training split of a dataset, as the data module uses it."""

    config: DataConfig
    split: Any  # the split itself: an ImageSet, or what the dataset reads its batches from
    # Where the training images were decoded ("device" or "workers"), and what it took, for
    # the run summary; None: decoded before training (in memory).
    decode_on: str | None = None
    decode_counts: DecodeCounts = DecodeCounts()

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def has_labels(self) -> bool:
        """Some training images have class labels."""

    @property
    @abstractmethod
    def has_captions(self) -> bool:
        """Every training image has at least one caption (a text method can train on it)."""

    @abstractmethod
    def labelled_bank(self, size: int, seed: int) -> ImageSet | None:
        """At most ``size`` labelled training images, drawn by ``seed``, decoded: the kNN
        monitor's memory bank (None: there are no labels)."""

    @abstractmethod
    def batches(self, device: torch.device, tokenize: Tokenize | None, trainer: pl.Trainer | None) -> TrainingBatches:
        """The training Dataset for ``device`` (with ``tokenize``: its batches carry "tokens",
        one caption of each image)."""

    def before_transfer(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A batch on the host, before it is moved to the device: keys that stay behind are
        taken out here."""
        return batch

    def finish(self) -> None:
        """The run is over: warn, once, of what went wrong with its data along the way."""


class InMemoryDataset(Dataset):
    """Indexes uint8 images (and labels, tokens) a whole batch at a time.

    Everything is held on one device: the CPU, or the GPU when the dataset fits there.
    Items are image indices, or (image, caption) index pairs when there are tokens.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None, tokens: Tensor | None = None):
        self.device = images.device
        self.images = images  # uint8 (N, 3, H, W)
        self.labels = labels.to(self.device) if labels is not None else None  # int64 (N,)
        self.tokens = tokens.to(self.device) if tokens is not None else None  # int64 (N, C, L): C captions per image

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_device(self, index: Tensor) -> Tensor:
        # The sampler's indices live on the host. Copied from pinned memory, they reach the
        # GPU asynchronously: the host queues the step without waiting for the GPU.
        return index.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else index

    def __getitems__(self, items: list[int] | list[tuple[int, int]]) -> dict[str, Tensor]:
        index = self._to_device(torch.as_tensor(items))  # (B,) images or (B, 2) image, caption
        image = index[:, 0] if index.ndim == 2 else index
        batch = {"image": self.images[image]}  # (B, 3, H, W) uint8
        if self.labels is not None:
            batch["label"] = self.labels[image]
        if self.tokens is not None:
            batch["tokens"] = self.tokens[image, index[:, 1]]  # (B, L)
        return batch


class InMemoryTraining(TrainingData):
    """A training split decoded into memory, indexed a whole batch at a time."""

    def __init__(self, images: ImageSet, config: DataConfig, labelled_split: Callable[[], ImageSet] | None = None):
        """``labelled_split``: where the kNN bank comes from when the training split has no
        labels but the dataset has a labelled one (STL-10 trains on its unlabelled part)."""
        self.split = images
        self.config = config
        self.labelled_split = labelled_split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def has_labels(self) -> bool:
        return self.split.labels is not None

    @property
    def has_captions(self) -> bool:
        return self.split.captions is not None

    def labelled_bank(self, size: int, seed: int) -> ImageSet | None:
        # Images labelled -1 (STL-10's unlabelled part) train the method but never enter it.
        train = self.split
        if train.labels is None and self.labelled_split is not None:
            train = self.labelled_split()
        if train.labels is None:
            return None
        train = train.labelled()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        keep = order[:size]
        return ImageSet(train.images[keep], train.labels[keep], classes=train.classes, name=f"{train.name} bank")

    def batches(self, device: torch.device, tokenize: Tokenize | None, trainer: pl.Trainer | None) -> TrainingBatches:
        images = self.split.images
        if self.config.hold_on_device and device.type == "cuda":
            # NOTE: a dataset is copied to the GPU only when it leaves most of the memory
            # free; otherwise its batches stream from pinned host memory, one line says so.
            free, _ = torch.cuda.mem_get_info(device)
            if images.numel() < 0.25 * free:
                images = images.to(device)
            else:
                print(f"ssl_zoo: {self.config.name} is {images.numel() / 2**30:.1f} GiB as uint8, more than a quarter "
                      f"of the {free / 2**30:.1f} GiB free on {device}: streaming its batches from host memory.", flush=True)
        tokens = None
        if tokenize is not None:
            from ssl_zoo.text import tokenize_captions

            tokens = tokenize_captions(self.split.captions, tokenize)  # (N, C, L)
        dataset = InMemoryDataset(images, self.split.labels, tokens)
        return TrainingBatches(
            dataset, num_captions=tokens.shape[1] if tokens is not None else 0,
            # In-memory data is indexed a batch at a time: workers would only add copies.
            workers=self.config.num_workers or 0, on_host=images.device.type == "cpu",
        )
