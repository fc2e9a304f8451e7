"""What ssl_zoo must know of a dataset, registered by the file that loads it.

    DatasetSpec(name="cifar10", load=..., splits=("train", "test")).register()

Recipes name it (``data.name``); training takes its default splits, the evaluation stage
its labelled ones, retrieval its captioned split; no other file lists dataset names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssl_zoo.registry import DATASETS

if TYPE_CHECKING:
    from ssl_zoo.data.imageset import ImageSet
    from ssl_zoo.data.shards import ShardSet
    from ssl_zoo.recipe import DataConfig


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    # (data config, split, seed) -> that split decoded into memory as uint8
    load: Callable[[DataConfig, str, int], ImageSet]
    # (training, validation) splits when the recipe leaves them unset; validation None: none
    splits: tuple[str, str | None]
    # (labelled training, test) splits the evaluation stage scores on; None: ``splits``
    # (STL-10 trains on its unlabelled part too, and evaluates on its labelled one).
    eval_splits: tuple[str, str | None] | None = None
    labelled: bool = True  # has class labels: linear, kNN and zero-shot can score on it
    retrieval_split: str | None = None  # has captions: the split image-text retrieval scores on
    # A dataset that stays encoded on disk (shards): (data config, split) -> that split
    # opened for reading a batch at a time. Training and evaluation stream it through this;
    # only the monitors' bounded sets are decoded with ``load``. None: decoded whole.
    open: Callable[[DataConfig, str], ShardSet] | None = None
    downloadable: bool = False  # fetched by its loader with data.download true (torchvision's)

    def register(self) -> DatasetSpec:
        return DATASETS.register(self.name, self)

    @property
    def origin(self) -> str:
        """Where it was defined (two datasets under one name are an error naming both)."""
        return f"{self.load.__module__}.{self.name}"

    @property
    def streamed(self) -> bool:
        return self.open is not None

    @property
    def labelled_splits(self) -> tuple[str, str | None]:
        return self.eval_splits or self.splits


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (an unknown name is a RecipeError listing the valid ones)."""
    return DATASETS[name]
