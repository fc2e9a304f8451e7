"""What ssl_zoo must know of a dataset, registered by the file that loads it.

    DatasetSpec(name="cifar10", load=..., splits=("train", "test")).register()

Recipes name it (``data.name``); training takes its default splits, the evaluation stage
its labelled ones, retrieval its captioned split; no other file lists dataset names.
A dataset with options of its own gives their dataclass (``config``): the recipe then
has a section named after the dataset (``shapes: {num_images: 20000}``), and its loaders
find the section's values in ``data.options``. The training split is served decoded in
memory (``InMemoryTraining``) unless the spec says otherwise (``train``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssl_zoo.data.training import InMemoryTraining, TrainingData
from ssl_zoo.recipe import RECIPE_KEYS
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
    # How to give it captions, when it may have them: the error a text method meets on a
    # dataset without captions lists the datasets with captions and these.
    captions_hint: str = ""
    # The dataclass of its own recipe section (YAML key: the dataset's name); None: it has none.
    config: type | None = None
    # (data config, split, seed) -> the training split as the data module serves it;
    # None: decoded whole with ``load`` and indexed in memory.
    train: Callable[[DataConfig, str, int], TrainingData] | None = None
    # A dataset that stays encoded on disk (shards): (data config, split) -> that split
    # opened for reading a batch at a time. The evaluation stage streams it through this;
    # only the monitors' bounded sets are decoded with ``load``. None: decoded whole.
    open: Callable[[DataConfig, str], ShardSet] | None = None
    downloadable: bool = False  # fetched by its loader with data.download true (torchvision's)

    def register(self) -> DatasetSpec:
        if self.config is not None and self.name in RECIPE_KEYS:
            raise ValueError(f"Dataset '{self.name}' has a recipe section, and '{self.name}' is already a recipe key; "
                             "rename the dataset.")
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

    def default_options(self) -> Any:
        """Its section's values when the recipe leaves them out (None: it has no section)."""
        return self.config() if self.config is not None else None

    def training(self, config: DataConfig, split: str, seed: int) -> TrainingData:
        """The training split ``split``, ready for the data module."""
        if self.train is not None:
            return self.train(config, split, seed)
        labelled_split = None
        if self.eval_splits is not None:  # trained unlabelled, banked from its labelled split
            labelled_split = lambda: self.load(config, self.labelled_splits[0], seed)  # noqa: E731
        return InMemoryTraining(self.load(config, split, seed), config, labelled_split)


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (an unknown name is a RecipeError listing the valid ones)."""
    return DATASETS[name]
