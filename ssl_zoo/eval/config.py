"""The evaluation stage's settings (``eval`` and ``bench`` flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EvalConfig:
    data: str | None = None  # dataset for linear, kNN and zero-shot; None: the recipe's own
    # Weights made elsewhere: a recipe whose data section the evaluation data follows
    # (image size, shapes' count...), as bench's reproduce lines give it; None: data's defaults.
    data_recipe: str | None = None
    root: str | None = None  # its folder; None: the recipe's data.root
    val_root: str | None = None  # shards: the validation shards (None: the recipe's data.val_root, or a held-out part)
    pairs: str | None = None  # image-text dataset for retrieval (text methods); None: the recipe's own if captioned
    pairs_root: str | None = None
    max_train: int | None = None  # a seeded subset of the training split (None: all of it)
    max_test: int | None = None
    knn_k: int = 200
    knn_temperature: float = 0.1
    # Zero-shot prompt templates; None: the dataset's (CLIP's 80 for ImageNet classes, a
    # short ensemble of its CIFAR prompts otherwise: ``ssl_zoo.eval.class_names``).
    templates: tuple[str, ...] | None = None
    classnames: str | None = None  # zero-shot class names: a text file, one a line, in label order
    # Linear top-1 from "features" (logistic regression on frozen features, fast) or "probe"
    # (SGD on augmented crops through the frozen backbone: the papers' protocol).
    protocol: Literal["features", "probe"] = "features"
    probe_epochs: int | None = None  # the probe's epochs; None: its source's (fewer: not compared with papers)
    # Few-shot linear probes: k labelled training images per class for each k here (empty: none),
    # several seeded draws each (``ssl_zoo.eval.few_shot``).
    few_shot: tuple[int, ...] = ()
    few_shot_draws: int = 5
    # Distribution shift: the classifiers scored on shifted and corrupted test sets (``ssl_zoo.eval.shift``).
    shifts: bool = False
    diagnostics_size: int = 2000  # test images used for the diagnostics
    cache_dir: str | None = None  # where features are cached (None: no cache)
    device: str = "auto"
    num_workers: int | None = None  # loader processes decoding streamed (shard) splits; None: every core
    # Streamed features larger than this (float32, with two copies) are fitted in mini-batches
    # from their memory-mapped file rather than by L-BFGS in memory. None: 40 % of the GPU's
    # free memory, or a quarter of the host's available memory.
    in_memory_features_mib: int | None = None
    batch_size: int = 512
    seed: int = 0
