"""The one in-memory form every dataset is decoded into."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ssl_zoo.errors import DataFormatError


@dataclass
class ImageSet:
    """Images decoded once and held as uint8, with optional labels, captions and masks.

    Every loader in ``ssl_zoo.data`` returns one of these; the data module indexes it a
    whole batch at a time and hands uint8 batches to the device, where views are made.
    """

    images: torch.Tensor  # uint8 (N, 3, H, W), all images of one size
    labels: torch.Tensor | None = None  # int64 (N,), class index; -1: unlabelled (training only)
    classes: list[str] | None = None  # class names, index = label
    captions: list[list[str]] | None = None  # N lists of >= 1 caption each
    masks: torch.Tensor | None = None  # bool (N, H, W), foreground of the main object
    name: str = "unnamed"

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataFormatError(
                f"Dataset '{self.name}': images must be a uint8 tensor of shape "
                f"(N, 3, H, W); got {images.dtype} {tuple(images.shape)}."
            )
        n = images.shape[0]
        if n == 0:
            raise DataFormatError(f"Dataset '{self.name}' holds no images.")
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise DataFormatError(
                f"Dataset '{self.name}': {n} images but labels of shape {tuple(self.labels.shape)}."
            )
        if self.captions is not None and len(self.captions) != n:
            raise DataFormatError(
                f"Dataset '{self.name}': {n} images but {len(self.captions)} caption lists."
            )
        if self.masks is not None and tuple(self.masks.shape) != (n, *images.shape[2:]):
            raise DataFormatError(
                f"Dataset '{self.name}': masks of shape {tuple(self.masks.shape)} do not "
                f"match images {tuple(images.shape)}."
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        """Side of the (square) stored images, in pixels."""
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def batches(
        self, batch_size: int, device: torch.device, workers: int = 0, rows: torch.Tensor | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(uint8 (b, 3, H, W) images, int64 (b,) labels or None) on ``device``, for positions
        ``rows`` in that order (None: all, in order), as a streamed split gives them
        (``workers`` is for its loader; in memory there is nothing to decode)."""
        rows = torch.arange(len(self)) if rows is None else rows.cpu()
        for part in rows.split(batch_size):
            labels = self.labels[part].to(device) if self.labels is not None else None
            yield self.images[part].to(device, non_blocking=True), labels

    def images_at(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, H, W): the images at positions ``rows`` (n,), as a streamed split gives them."""
        return self.images[rows]

    def labelled(self) -> "ImageSet":
        """The images that have a label (all of them unless some are -1, as STL-10's
        train+unlabeled split has): what a kNN bank or a classifier may be fitted on."""
        if self.labels is None or bool((self.labels >= 0).all()):
            return self
        return self._take(torch.nonzero(self.labels >= 0).flatten())

    def subset(self, count: int | None, seed: int = 0) -> "ImageSet":
        """``count`` images drawn without replacement by ``seed``, kept in their order
        (the whole set when ``count`` is None or not smaller)."""
        if count is None or count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return self._take(keep)

    def _take(self, keep: torch.Tensor) -> "ImageSet":
        return ImageSet(
            images=self.images[keep],
            labels=self.labels[keep] if self.labels is not None else None,
            classes=self.classes,
            captions=[self.captions[i] for i in keep.tolist()] if self.captions is not None else None,
            masks=self.masks[keep] if self.masks is not None else None,
            name=self.name,
        )
