"""The evaluation stage: one protocol for every method, checkpoint and baseline.

    checkpoint -> frozen backbone -> features of the train and test splits (cached)
      -> linear eval (L-BFGS on standardised features), kNN (k=200, T=0.1)
      -> CLIP only: zero-shot with prompt ensembles, image<->text retrieval R@K
      -> diagnostics: embedding std, RankMe, alignment, uniformity
      -> results (a JSON-ready dict: recipe, checkpoint hash, data, device, versions)
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.augment import AugmentConfig, ViewAugment
from ssl_zoo.checkpointing import read_checkpoint
from ssl_zoo.data.datamodule import DEFAULT_SPLITS, load_split
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.errors import CheckpointError, SslZooError
from ssl_zoo.eval.cache import FeatureCache, hash_file, hash_module, hash_tensor
from ssl_zoo.eval.diagnostics import alignment, embedding_std, rankme, uniformity
from ssl_zoo.eval.features import image_features
from ssl_zoo.eval.confidence import bootstrap_interval, correct_to_text
from ssl_zoo.eval.knn import knn_accuracy, knn_predictions
from ssl_zoo.eval.linear import linear_eval
from ssl_zoo.eval.retrieval import retrieval_recall
from ssl_zoo.eval.zero_shot import DEFAULT_TEMPLATES, zero_shot_accuracy, zero_shot_classifier, zero_shot_hits
from ssl_zoo.methods import CLIP, METHODS, SSLMethod
from ssl_zoo.recipe import DataConfig, Recipe, recipe_from_dict, recipe_to_dict
from ssl_zoo.text import tokenize

# Splits for evaluation: (labelled training split, test split), where they differ from
# training's (STL-10 trains on its unlabelled part too; its probe uses "train").
EVAL_SPLITS = {**DEFAULT_SPLITS, "stl10": ("train", "test")}
# The split image<->text retrieval is scored on.
RETRIEVAL_SPLIT = {"shapes": "val", "shared_flickr8k": "test", "pairs": "all"}


@dataclass
class EvalConfig:
    data: str | None = None  # dataset for linear, kNN and zero-shot; None: the recipe's own
    root: str | None = None  # its folder; None: the recipe's data.root
    pairs: str | None = None  # image-text dataset for retrieval (CLIP); None: the recipe's own if captioned
    pairs_root: str | None = None
    max_train: int | None = None  # a seeded subset of the training split (None: all of it)
    max_test: int | None = None
    knn_k: int = 200
    knn_temperature: float = 0.1
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    diagnostics_size: int = 2000  # test images used for the diagnostics
    cache_dir: str | None = None  # where features are cached (None: no cache)
    device: str = "auto"
    batch_size: int = 512
    seed: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("ssl_zoo", "torch", "torchvision", "torchcodec", "pillow", "pytorch-lightning", "lightly", "kornia", "open_clip_torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def load_method(path: str | Path) -> SSLMethod:
    """The method a ``fit`` checkpoint holds, rebuilt from its saved recipe."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]
    recipe = recipe_from_dict(saved["recipe"])
    model = METHODS[recipe.method](recipe, num_classes=saved.get("num_classes", 0))
    mismatch = _state_dict_mismatch(model.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise CheckpointError(
            f"'{path}' does not match its own recipe: its weights are not those of a {recipe.method} "
            f"with backbone {recipe.backbone} ({mismatch}). The checkpoint or the recipe saved in it "
            "was changed after training; pass the checkpoint as `fit` wrote it."
        )
    model.load_state_dict(checkpoint["state_dict"])
    model.trained_steps = int(checkpoint.get("global_step", 0))  # where eval results go in TensorBoard
    return model.eval()


def _state_dict_mismatch(expected: dict[str, Any], saved: dict[str, Any]) -> str:
    """How ``saved`` weights differ from a model's: counts and a first key ('' if they fit)."""
    tensors = [k for k in expected.keys() & saved.keys() if isinstance(expected[k], Tensor)]
    problems = {
        "missing": sorted(expected.keys() - saved.keys()),
        "unexpected": sorted(saved.keys() - expected.keys()),
        "of another shape": sorted(k for k in tensors if expected[k].shape != saved[k].shape),
    }
    return "; ".join(f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in problems.items() if keys)


def _data_config(recipe: Recipe, name: str | None, root: str | None) -> DataConfig:
    data = recipe.data
    if name is None or name == data.name:
        return replace(data, root=root or data.root)
    return replace(data, name=name, root=root or data.root, train_split=None, val_split=None)


class Evaluator:
    """Evaluates one model; holds its device, cache and the hash of its weights."""

    def __init__(self, model: SSLMethod, config: EvalConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.model = model.to(self.device).eval()
        self.cache = FeatureCache(Path(config.cache_dir).expanduser() if config.cache_dir else None)
        self.weights_hash = hash_module(model.backbone)
        self.seconds: dict[str, float] = {}

    def _timed(self, name: str, started: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def features(self, images: ImageSet, split: str) -> Tensor:
        """(N, D) backbone features of ``images``, from the cache when it has them."""
        transform = self.model.eval_transform
        parts = {
            "backbone": self.model.recipe.backbone,
            "weights": self.weights_hash,
            "data": images.name,
            "split": split,
            "images": hash_tensor(images.images),
            "transform": [transform.size, transform.mean.tolist(), transform.std.tolist()],
        }
        started = time.perf_counter()

        def compute() -> dict[str, Tensor]:
            features = image_features(self.model.backbone, transform, images.images, self.device, self.config.batch_size)
            return {"features": features}

        features = self.cache.get_or_compute(parts, compute)["features"].to(self.device)
        self._timed("features", started)
        return features

    def classification(self, train: ImageSet, test: ImageSet, with_text: bool) -> tuple[dict[str, float], dict[str, Tensor]]:
        """The metrics, and for each top-1 accuracy whether each test image was right: (M,) bool."""
        cfg = self.config
        train_x, test_x = self.features(train, "train"), self.features(test, "test")
        train_y, test_y = train.labels.to(self.device), test.labels.to(self.device)
        metrics: dict[str, float] = {}
        correct: dict[str, Tensor] = {}

        started = time.perf_counter()
        linear = linear_eval(train_x, train_y, test_x, test_y, train.num_classes, seed=cfg.seed)
        metrics.update(linear_top1=linear.top1, linear_top5=linear.top5, linear_weight_decay=linear.weight_decay)
        correct["linear_top1"] = linear.correct
        self._timed("linear", started)

        started = time.perf_counter()
        predicted = knn_predictions(
            F.normalize(train_x, dim=1), train_y, F.normalize(test_x, dim=1),
            num_classes=train.num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature,
        )
        correct["knn_top1"] = predicted == test_y
        metrics["knn_top1"] = knn_accuracy(predicted, test_y, train.num_classes)
        self._timed("knn", started)

        if with_text:
            started = time.perf_counter()
            classifier = zero_shot_classifier(self.encode_texts, train.classes, cfg.templates)
            embeddings = self.project_images(test_x)
            top1, _ = zero_shot_hits(embeddings, test_y, classifier)
            metrics.update(zero_shot_accuracy(embeddings, test_y, classifier))
            correct["zero_shot_top1"] = top1
            self._timed("zero_shot", started)

        started = time.perf_counter()
        metrics.update(self.diagnostics(test, test_x))
        self._timed("diagnostics", started)
        return metrics, correct

    @torch.no_grad()
    def project_images(self, features: Tensor) -> Tensor:
        """CLIP: backbone features (N, D) -> unit embeddings (N, E) in the joint space."""
        return F.normalize(self.model.image_projection(features), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        """CLIP: strings -> (n, E) unit embeddings, in batches."""
        context = self.model.recipe.data.context_length
        size = self.config.batch_size
        return torch.cat(
            [self.model.encode_text(tokenize(texts[i : i + size], context).to(self.device)) for i in range(0, len(texts), size)]
        )

    def retrieval(self, pairs: ImageSet, split: str) -> dict[str, float]:
        started = time.perf_counter()
        image_embeddings = self.project_images(self.features(pairs, split))
        texts = [caption for captions in pairs.captions for caption in captions]
        owner = torch.tensor([i for i, captions in enumerate(pairs.captions) for _ in captions], device=self.device)
        recall = retrieval_recall(image_embeddings, self.encode_texts(texts), owner)
        self._timed("retrieval", started)
        return recall

    @torch.no_grad()
    def diagnostics(self, test: ImageSet, test_features: Tensor) -> dict[str, float]:
        # A seeded sample, not the first images: a test split may be stored sorted by class.
        sample = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.config.seed))
        sample = sample[: self.config.diagnostics_size]
        features = test_features[sample.to(self.device)]
        images = test.images[sample]
        # Alignment uses one augmentation for every method (SimCLR-style views without
        # blur, at the model's input size), so methods trained on other views compare fairly.
        recipe_augment = self.model.recipe.augment
        augment = ViewAugment(
            AugmentConfig(size=recipe_augment.size, blur_p=(0.0, 0.0), mean=recipe_augment.mean, std=recipe_augment.std),
            num_views=2, seed=self.config.seed,
        )
        first, second = [], []
        for start in range(0, len(images), self.config.batch_size):
            views = augment(images[start : start + self.config.batch_size].to(self.device))  # (2, B, 3, S, S)
            first.append(self.model.backbone(views[0]).float())
            second.append(self.model.backbone(views[1]).float())
        return {
            "embedding_std": embedding_std(features),
            "rankme": rankme(features),
            "alignment": alignment(torch.cat(first), torch.cat(second)),
            "uniformity": uniformity(features),
        }


@dataclass
class LabelledSplits:
    """The labelled data linear eval, kNN and zero-shot score on."""

    train: ImageSet
    test: ImageSet
    info: dict[str, Any]  # name, root, splits, sizes, class names: for the results


def load_labelled_splits(recipe: Recipe, config: EvalConfig) -> LabelledSplits | str:
    """The configured (or the recipe's own) labelled train and test splits, subsampled as
    configured; or, when the recipe's own data has no labels, the reason as a string."""
    data = _data_config(recipe, config.data, config.root)
    train_split, test_split = EVAL_SPLITS[data.name]
    hint = "eval --data NAME --root DIR, bench --eval-data NAME --eval-root DIR"
    if test_split is None:
        if config.data is None:  # the recipe's own data (pairs): retrieval may still run
            return f"{data.name} has no test split; for linear, kNN and zero-shot pass a labelled dataset ({hint})"
        raise SslZooError(f"Dataset '{data.name}' has no test split to evaluate on; pass a labelled dataset ({hint}).")
    # Only labelled images fit the classifiers (STL-10's train+unlabeled has 100k at -1).
    train = load_split(data, train_split, config.seed).labelled().subset(config.max_train, config.seed)
    if train.labels is None:
        if config.data is not None:
            raise SslZooError(
                f"Dataset '{data.name}' has no labels, so linear and kNN evaluation cannot score it. "
                f"Pass a labelled dataset such as shared_cifar10, shapes, cifar10 or folder ({hint})."
            )
        return f"{data.name} has no labels; for linear, kNN and zero-shot pass a labelled dataset ({hint})"
    test = load_split(data, test_split, config.seed).subset(config.max_test, config.seed)
    info = {
        "name": data.name, "root": data.root, "train_split": train_split, "test_split": test_split,
        "num_train": len(train), "num_test": len(test), "classes": train.classes,
    }
    return LabelledSplits(train, test, info)


def evaluate(
    model: SSLMethod, config: EvalConfig, label: str | None = None, with_text: bool | None = None,
    splits: LabelledSplits | None = None,
) -> dict[str, Any]:
    """Every metric of the stage for ``model``; returns a JSON-ready dict.

    ``with_text``: run zero-shot and retrieval (default: when the model is CLIP).
    ``splits``: labelled data already loaded (default: load it as ``config`` says).
    """
    started = time.perf_counter()
    recipe = model.recipe
    with_text = isinstance(model, CLIP) if with_text is None else with_text
    evaluator = Evaluator(model, config)
    result: dict[str, Any] = {
        "label": label or recipe.name,
        "method": recipe.method,
        "backbone": recipe.backbone,
        "recipe": recipe_to_dict(recipe),
        "device": device_name(evaluator.device),
        "versions": versions(),
        "eval_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "metrics": {},
        "intervals": {},
        "skipped": {},
    }

    splits = splits or load_labelled_splits(recipe, config)
    if isinstance(splits, str):
        result["skipped"]["classification"] = splits
    else:
        result["data"] = splits.info
        metrics, correct = evaluator.classification(splits.train, splits.test, with_text)
        result["metrics"].update(metrics)
        # 95 % bootstrap intervals over the test images, and the per-image outcomes they come
        # from ('1' right, '0' wrong, in test-split order), so runs can be compared later.
        result["intervals"] = {name: list(bootstrap_interval(c, seed=config.seed)) for name, c in correct.items()}
        result["per_image_correct"] = {name: correct_to_text(c) for name, c in correct.items()}

    if with_text:
        pairs_name = config.pairs or (recipe.data.name if recipe.data.name in RETRIEVAL_SPLIT else None)
        if pairs_name is None:
            result["skipped"]["retrieval"] = f"{recipe.data.name} has no captions; pass --pairs NAME"
        else:
            pairs_data = _data_config(recipe, pairs_name, config.pairs_root)
            split = RETRIEVAL_SPLIT.get(pairs_name, "test")
            pairs = load_split(pairs_data, split, config.seed).subset(config.max_test, config.seed)
            if pairs.captions is None:
                raise SslZooError(f"Dataset '{pairs_name}' has no captions; retrieval needs image-text pairs.")
            result["pairs"] = {"name": pairs_name, "split": split, "num_images": len(pairs),
                               "num_captions": sum(len(c) for c in pairs.captions)}
            result["metrics"].update(evaluator.retrieval(pairs, split))

    evaluator.seconds["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 3) for k, v in evaluator.seconds.items()}
    result["feature_cache"] = {"hits": evaluator.cache.hits, "misses": evaluator.cache.misses}
    return result


def evaluate_checkpoint(
    path: str | Path, config: EvalConfig, label: str | None = None, splits: LabelledSplits | None = None
) -> dict[str, Any]:
    """Load a ``fit`` checkpoint and evaluate it; the result names the file and its hash."""
    model = load_method(path)
    result = evaluate(model, config, label=label, splits=splits)
    result["checkpoint"] = {"path": str(path), "sha256": hash_file(path), "global_step": model.trained_steps}
    return result


def write_tensorboard(result: dict[str, Any], log_dir: str | Path) -> None:
    """The metrics as TensorBoard scalars under ``eval/<data>/``."""
    from torch.utils.tensorboard import SummaryWriter

    data = result.get("data", {}).get("name") or result.get("pairs", {}).get("name", "data")
    step = result.get("checkpoint", {}).get("global_step", 0)  # the training step the weights are from
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = SummaryWriter(str(log_dir))
    for name, value in result["metrics"].items():
        writer.add_scalar(f"eval/{data}/{name}", value, global_step=step)
    writer.close()
