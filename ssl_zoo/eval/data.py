"""The data the evaluation stage scores on: a labelled train/test pair for linear, kNN and
zero-shot, and a captioned split for retrieval. Which splits those are is the dataset's
to say (``ssl_zoo.data.spec.DatasetSpec``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ssl_zoo.data.datamodule import load_split
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shards import held_out_samples
from ssl_zoo.data.shards.split import ShardSplit
from ssl_zoo.data.spec import DatasetSpec, dataset_spec
from ssl_zoo.errors import SslZooError
from ssl_zoo.registry import DATASETS
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.recipe import DataConfig, Recipe, parse_recipe

HINT = "eval --data NAME --root DIR, bench --eval-data NAME --eval-root DIR"


def data_config(data: DataConfig, name: str | None, root: str | None, val_root: str | None = None) -> DataConfig:
    """A model's training data section, pointed at dataset ``name`` in ``root`` (and, for
    shards, validation shards in ``val_root``) when given."""
    if name is None or name == data.name:
        return replace(data, root=root or data.root, val_root=val_root or data.val_root)
    return replace(data, name=name, root=root or data.root, val_root=val_root, train_split=None, val_split=None, options=None)


@dataclass
class LabelledSplits:
    """The labelled data linear eval, kNN and zero-shot score on."""

    train: ImageSet | ShardSplit  # decoded in memory, or streamed from shards a batch at a time
    test: ImageSet | ShardSplit
    info: dict[str, Any]  # name, root, splits, sizes, class names: for the results


def model_data(recipe: Recipe | None, config: EvalConfig, input_size: int) -> DataConfig:
    """The data a model was trained on, which evaluation defaults to. Weights made elsewhere
    have none: the data section of ``config.data_recipe`` stands in (what bench scored them
    on), or else the dataset the configuration names, decoded at the model's input size."""
    if recipe is not None:
        return recipe.data
    if config.data_recipe is not None:
        return parse_recipe(["--recipe", config.data_recipe]).data
    name, root = (config.data, config.root) if config.data else (config.pairs, config.pairs_root)
    if name is None:
        raise SslZooError(f"Weights made elsewhere have no training data of ssl_zoo's to evaluate on: name a dataset ({HINT}).")
    return DataConfig(name=name, root=root or "data", image_size=input_size)


def load_labelled_splits(trained_on: DataConfig, config: EvalConfig) -> LabelledSplits | str:
    """The configured (or the model's own) labelled train and test splits, subsampled as
    configured; or, when the model's own data has no labels, the reason as a string.

    ``trained_on``: the model's training data (``model_data``)."""
    data = data_config(trained_on, config.data, config.root, config.val_root)
    train_split, test_split = dataset_spec(data.name).labelled_splits
    if test_split is None:
        if config.data is None:  # the recipe's own data (pairs): retrieval may still run
            return f"{data.name} has no test split; for linear, kNN and zero-shot pass a labelled dataset ({HINT})"
        raise SslZooError(f"Dataset '{data.name}' has no test split to evaluate on; pass a labelled dataset ({HINT}).")
    spec = dataset_spec(data.name)
    if spec.streamed:  # every image of both splits, never decoded whole
        full_train, full_test = streamed_splits(spec, data, train_split, test_split, config.seed)
    else:  # the test split is decoded once the training split is known to have labels
        full_train, full_test = load_split(data, train_split, config.seed), None
    # Only labelled images fit the classifiers (STL-10's train+unlabeled has 100k at -1).
    full_train = full_train.labelled()
    train = full_train.subset(config.max_train, config.seed)
    if train.labels is None:
        if config.data is not None:
            raise SslZooError(
                f"Dataset '{data.name}' has no labels, so linear and kNN evaluation cannot score it. "
                f"Pass a labelled dataset: {', '.join(n for n, spec in DATASETS.items() if spec.labelled)} ({HINT})."
            )
        return f"{data.name} has no labels; for linear, kNN and zero-shot pass a labelled dataset ({HINT})"
    if full_test is None:  # (a flat folder of unlabelled images may have no test split at all)
        full_test = load_split(data, test_split, config.seed)
    test = full_test.subset(config.max_test, config.seed)
    info = {
        "name": data.name, "root": data.root, "train_split": train_split, "test_split": test_split,
        "num_train": len(train), "num_test": len(test), "full_train": len(full_train), "full_test": len(full_test),
        "streamed": spec.streamed, "classes": train.classes,
    }
    return LabelledSplits(train, test, info)


def streamed_splits(spec: DatasetSpec, data: DataConfig, train_split: str, test_split: str, seed: int) -> tuple[ShardSplit, ShardSplit]:
    """A streamed dataset's two splits, whole. Training shards without validation shards
    (no data.val_root) give their held-out part as the test split, the rest as training,
    the same parts ``fit`` held out for its monitors."""
    train = spec.open(data, train_split)
    if test_split == "val" and data.val_root is None:
        held_out = held_out_samples(data, len(train), seed)
        rest = np.setdiff1d(np.arange(len(train)), held_out)
        return ShardSplit(train, rest, data.image_size, train_split), ShardSplit(train, held_out, data.image_size, "held out")
    test = spec.open(data, test_split)
    return (ShardSplit(train, np.arange(len(train)), data.image_size, train_split),
            ShardSplit(test, np.arange(len(test)), data.image_size, test_split))


def retrieval_split(name: str) -> str:
    """The split image-text retrieval scores on ("test" for a dataset that names none)."""
    return dataset_spec(name).retrieval_split or "test"


def load_retrieval_pairs(trained_on: DataConfig, config: EvalConfig) -> tuple[ImageSet, dict[str, Any]] | str:
    """The captioned images retrieval scores on, and what they are (for the results);
    or, when neither the configuration nor the model's data has captions, why not."""
    name = config.pairs or (trained_on.name if dataset_spec(trained_on.name).retrieval_split else None)
    if name is None:
        return f"{trained_on.name} has no captions; pass --pairs NAME"
    split = retrieval_split(name)
    pairs = load_split(data_config(trained_on, name, config.pairs_root), split, config.seed).subset(config.max_test, config.seed)
    if pairs.captions is None:
        raise SslZooError(f"Dataset '{name}' has no captions; retrieval needs image-text pairs.")
    info = {"name": name, "split": split, "num_images": len(pairs), "num_captions": sum(len(c) for c in pairs.captions)}
    return pairs, info
