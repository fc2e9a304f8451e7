"""A labelled split of shards for evaluation, streamed: never decoded whole.

Evaluating on ImageNet-1k means 1.28 M training images; decoded at 256 px they would take
250 GB. ``ShardSplit`` names which samples of a ``ShardSet`` a split takes and hands them
out a batch at a time, through the same ``ShardDataset`` and loader workers that training
uses (and nvJPEG on a GPU), so the evaluation's host memory does not grow with the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_zoo.data.decode import decode_images
from ssl_zoo.data.decode_ahead import DecodeAhead
from ssl_zoo.data.shards.dataset import ShardDataset
from ssl_zoo.data.shards.index import index_path
from ssl_zoo.data.shards.reader import ShardSet
from ssl_zoo.data.training import already_batched
from ssl_zoo.eval.cache import hash_file


@dataclass
class ShardSplit:
    """Samples ``samples`` of ``shards``, decoded at ``image_size`` a batch at a time.

    Has what the evaluation reads of an in-memory ``ImageSet`` (``labels``, ``classes``,
    ``name``, ``len``), and ``batches`` / ``images_at`` in place of ``images``.
    """

    shards: ShardSet
    samples: np.ndarray  # int64 (N,), sorted sample numbers of ``shards``
    image_size: int  # side of the decoded images (data.image_size)
    name: str
    labels: Tensor | None = field(init=False)  # int64 (N,), -1: none; None: the shards have no labels
    classes: list[str] | None = field(init=False)  # class names, index = label

    def __post_init__(self) -> None:
        self.samples = np.asarray(self.samples, dtype=np.int64)
        shards = self.shards
        self.labels = torch.from_numpy(shards.labels_of(self.samples)) if shards.has_labels else None
        # Shards without a classes.txt (img2dataset's) name their classes by number.
        self.classes = None if self.labels is None else shards.classes or [str(c) for c in range(shards.max_label + 1)]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def _keep(self, keep: np.ndarray) -> ShardSplit:
        return ShardSplit(self.shards, self.samples[keep], self.image_size, self.name)

    def labelled(self) -> ShardSplit:
        """The samples that have a label (as ``ImageSet.labelled``)."""
        if self.labels is None or bool((self.labels >= 0).all()):
            return self
        return self._keep(np.flatnonzero(self.labels.numpy() >= 0))

    def subset(self, count: int | None, seed: int = 0) -> ShardSplit:
        """``count`` samples drawn by ``seed``, kept in order: the same draw as ``ImageSet.subset``."""
        if count is None or count >= len(self):
            return self
        return self._keep(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values.numpy())

    def fingerprint(self) -> dict:
        """What the split's images are, for the feature cache: every index file's name, size
        and hash (an index is rebuilt whenever its shard changes), and which samples. Reads
        the indexes (tens of MB for ImageNet), never the images."""
        indexes = [[index_path(p).name, index_path(p).stat().st_size, hash_file(index_path(p))] for p in self.shards.paths]
        return {"indexes": indexes, "samples": hashlib.sha256(self.samples.tobytes()).hexdigest(), "image_size": self.image_size}

    def images_at(self, rows: Tensor) -> Tensor:
        """uint8 (n, 3, S, S): the images at positions ``rows`` (n,) of the split, decoded now."""
        samples = self.samples[rows.cpu().numpy()]
        return decode_images([self.shards.read_image_bytes(int(i)) for i in samples], self.image_size)[0]

    def batches(
        self, batch_size: int, device: torch.device, workers: int, rows: Tensor | None = None, decode: str = "auto",
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(uint8 (b, 3, S, S) images, int64 (b,) labels or None), both on ``device``, for
        positions ``rows`` of the split in that order (None: all, in order).

        Decoded in ``workers`` loader processes, or on a GPU with nvJPEG (``decode`` "auto":
        on a CUDA device), one batch ahead of its use.
        """
        device = torch.device(device)
        on_device = decode == "device" or (decode == "auto" and device.type == "cuda")
        rows = torch.arange(len(self)) if rows is None else rows.cpu()
        dataset = ShardDataset(self.shards, self.image_size, "device" if on_device else "worker", samples=self.samples)
        loader = DataLoader(
            dataset, batch_sampler=[part.tolist() for part in rows.split(batch_size)], collate_fn=already_batched,
            num_workers=workers, pin_memory=device.type == "cuda",
        )
        for batch in DecodeAhead(loader, self.image_size, device) if on_device else loader:
            labels = batch.get("label")
            yield batch["image"].to(device, non_blocking=True), labels.to(device) if labels is not None else None
