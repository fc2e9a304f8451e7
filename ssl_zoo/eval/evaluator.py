"""The evaluator: one model's frozen features, scored by every protocol of the stage.

It asks the model only for what every model has: ``backbone`` (images -> features),
``eval_transform`` (uint8 -> its input), and, when ``uses_text``, the text interface
(``tokenize``, ``encode_text``, ``embed_image_features``). A method from ``fit`` has these,
and so do weights made elsewhere (``ssl_zoo.eval.imported``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.augment import AugmentConfig, EvalTransform, ViewAugment
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.environment import pick_device
from ssl_zoo.eval.cache import FeatureCache, hash_module, hash_tensor
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.diagnostics import alignment, embedding_std, rankme, uniformity
from ssl_zoo.eval.features import image_features
from ssl_zoo.eval.knn import knn_accuracy, knn_predictions
from ssl_zoo.eval.linear import linear_eval
from ssl_zoo.eval.retrieval import retrieval_recall
from ssl_zoo.eval.zero_shot import zero_shot_accuracy, zero_shot_classifier, zero_shot_hits


class EvaluatedModel(Protocol):
    backbone: nn.Module  # (B, 3, S, S) normalised images -> (B, D) features
    eval_transform: EvalTransform
    uses_text: bool

    def tokenize(self, texts: list[str]) -> Tensor: ...  # -> (n, L) token ids
    def encode_text(self, tokens: Tensor) -> Tensor: ...  # (n, L) -> (n, E) unit vectors
    def embed_image_features(self, features: Tensor) -> Tensor: ...  # (n, D) -> (n, E) unit vectors


class Evaluator:
    """Evaluates one model; holds its device, cache and the hash of its weights."""

    def __init__(self, model: EvaluatedModel, config: EvalConfig) -> None:
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
            "weights": self.weights_hash,  # of every tensor, by name: the architecture too
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
            with torch.no_grad():
                embeddings = self.model.embed_image_features(test_x)
            top1, _ = zero_shot_hits(embeddings, test_y, classifier)
            metrics.update(zero_shot_accuracy(embeddings, test_y, classifier))
            correct["zero_shot_top1"] = top1
            self._timed("zero_shot", started)

        started = time.perf_counter()
        metrics.update(self.diagnostics(test, test_x))
        self._timed("diagnostics", started)
        return metrics, correct

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        """Strings -> (n, E) unit embeddings in the joint space, in batches."""
        size = self.config.batch_size
        return torch.cat(
            [self.model.encode_text(self.model.tokenize(texts[i : i + size]).to(self.device)) for i in range(0, len(texts), size)]
        )

    def retrieval(self, pairs: ImageSet, split: str) -> dict[str, float]:
        started = time.perf_counter()
        with torch.no_grad():
            image_embeddings = self.model.embed_image_features(self.features(pairs, split))
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
        # Alignment uses one augmentation for every model (SimCLR-style views without blur,
        # at the model's input size and normalisation), so models trained on other views
        # compare fairly.
        transform = self.model.eval_transform
        augment = ViewAugment(
            AugmentConfig(size=transform.size, blur_p=(0.0, 0.0), mean=tuple(transform.mean.tolist()),
                          std=tuple(transform.std.tolist())),
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
