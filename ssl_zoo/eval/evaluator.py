"""The evaluator: one model's frozen features, scored by every protocol of the stage.

It asks the model only for what every model has: ``backbone`` (images -> features),
``eval_transform`` (uint8 -> its input), and, when ``uses_text``, the text interface
(``tokenize``, ``encode_text``, ``embed_image_features``). A method from ``fit`` has these,
and so do weights made elsewhere (``ssl_zoo.eval.imported``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from ssl_zoo.augment import AugmentConfig, EvalTransform, ViewAugment
from ssl_zoo.data.training import loader_workers
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shards.split import ShardSplit
from ssl_zoo.environment import pick_device
from ssl_zoo.eval.cache import FeatureCache, hash_module, hash_tensor
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.diagnostics import alignment, embedding_std, rankme, uniformity
from ssl_zoo.eval.features import image_features, write_image_features
from ssl_zoo.eval.few_shot import few_shot_metrics, few_shot_probes
from ssl_zoo.eval.knn import knn_accuracy, knn_predictions
from ssl_zoo.eval.linear import LinearEvalResult, linear_eval, linear_eval_in_batches
from ssl_zoo.eval.probe import DEFAULT_PROBE, ProbeResult, linear_probe
from ssl_zoo.eval.retrieval import retrieval_recall
from ssl_zoo.eval.shift import score_shifts, shift_metrics
from ssl_zoo.eval.class_names import ZeroShotClasses, zero_shot_classes
from ssl_zoo.eval.zero_shot import DEFAULT_TEMPLATES, zero_shot_accuracy, zero_shot_classifier, zero_shot_hits


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
        self.linear_protocol: dict | None = None  # how linear top-1 was measured, for the results
        self.zero_shot_classes: ZeroShotClasses | None = None  # the names and templates zero-shot prompted with
        self.few_shot: dict | None = None  # few-shot probes' result, when configured
        self.few_shot_intervals: dict[str, list[float]] = {}  # their 95 % intervals over draws
        self.shift: dict | None = None  # distribution shift's result, when configured

    def _timed(self, name: str, started: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def features(self, images: ImageSet | ShardSplit, split: str) -> Tensor:
        """(N, D) backbone features of ``images``, from the cache when it has them.

        In memory: float32 on the device. Streamed from shards: float16 in a memory-mapped
        file (the cache's, or a temporary one), extracted a batch at a time through the
        loader workers (nvJPEG on a GPU), so host memory does not grow with the split.
        """
        transform = self.model.eval_transform
        parts = {
            "weights": self.weights_hash,  # of every tensor, by name: the architecture too
            "data": images.name,
            "split": split,
            "transform": [transform.size, transform.resize_size, transform.mean.tolist(), transform.std.tolist()],
        }
        started = time.perf_counter()
        backbone, device, batch_size = self.model.backbone, self.device, self.config.batch_size
        if isinstance(images, ShardSplit):
            parts["images"] = images.fingerprint()

            def fill(out, mine: slice) -> None:  # this process's rows (all of them, in one process)
                rows = torch.arange(mine.start, mine.stop)
                batches = (x for x, _ in images.batches(batch_size, device, self.loader_workers, rows=rows))
                write_image_features(backbone, transform, batches, device, out[mine])

            features = self.cache.memory_mapped(parts, len(images), self.feature_dim, fill)
        else:
            parts["images"] = hash_tensor(images.images)

            def compute() -> dict[str, Tensor]:
                return {"features": image_features(backbone, transform, images.images, device, batch_size)}

            features = self.cache.get_or_compute(parts, compute)["features"].to(device)
        self._timed("features", started)
        return features

    @property
    def loader_workers(self) -> int:
        return self.config.num_workers if self.config.num_workers is not None else loader_workers(None)

    @property
    def feature_dim(self) -> int:
        """D, the backbone's feature size: one blank image through it."""
        size = self.model.eval_transform.size
        blank = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.device)
        return image_features(self.model.backbone, self.model.eval_transform, blank, self.device).shape[1]

    def fits_in_memory(self, features: Tensor) -> bool:
        """Whether full-batch L-BFGS can hold these features (and two standardised copies)
        in float32 on the device: within ``config.in_memory_features_mib`` when set, else
        within 40 % of the GPU's free memory, or a quarter of the host's available memory."""
        needed = 3 * features.numel() * 4
        if self.config.in_memory_features_mib is not None:
            return needed <= self.config.in_memory_features_mib * 2**20
        if self.device.type == "cuda":
            return needed <= 0.4 * torch.cuda.mem_get_info(self.device)[0]
        return needed <= 0.25 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def linear(self, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int) -> LinearEvalResult:
        """Logistic regression on the features: L-BFGS in memory where they fit, else mini-batches
        over them where they lie (the same held-out choice of penalty either way)."""
        in_memory = self.fits_in_memory(train_x) and self.fits_in_memory(test_x)
        self.linear_protocol = {
            "protocol": "features", "epochs": None, "full_epochs": None,
            "source": "ssl_zoo: logistic regression on frozen features, L2 penalty chosen on a held-out 10 %",
            "fit": "L-BFGS, in memory" if in_memory else "Adam on mini-batches, features memory-mapped",
        }
        if in_memory:
            train_x, test_x = train_x.to(self.device).float(), test_x.to(self.device).float()
            return linear_eval(train_x, train_y, test_x, test_y, num_classes, seed=self.config.seed)
        return linear_eval_in_batches(train_x, train_y, test_x, test_y, num_classes, self.device, seed=self.config.seed)

    def probe(self, train: ImageSet | ShardSplit, test: ImageSet | ShardSplit) -> ProbeResult:
        """The papers' linear protocol: SGD on augmented crops (random-resized crop and flip)
        through the frozen backbone, with the settings of the method's paper (its
        ``linear_probe``; lightly's ImageNet settings for weights made elsewhere)."""
        settings = getattr(self.model, "linear_probe", DEFAULT_PROBE)
        batch_size = min(settings.batch_size, len(train))
        workers, seed = self.loader_workers, self.config.seed

        def train_batches(epoch: int):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            return train.batches(batch_size, self.device, workers, rows=order[: len(order) // batch_size * batch_size])

        def test_batches():
            return test.batches(self.config.batch_size, self.device, workers)

        result = linear_probe(
            self.model.backbone, self.feature_dim, self.model.eval_transform, train_batches, test_batches,
            train.num_classes, settings, self.device, batch_size, epochs=self.config.probe_epochs, seed=seed,
        )
        self.linear_protocol = {
            "protocol": "probe", "source": settings.source, "epochs": result.epochs, "full_epochs": settings.epochs,
            "batch_size": result.batch_size, "lr": result.lr,
        }
        return result

    def classification(
        self, train: ImageSet | ShardSplit, test: ImageSet | ShardSplit, with_text: bool,
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """The metrics, and for each top-1 accuracy whether each test image was right: (M,) bool."""
        cfg = self.config
        train_x, test_x = self.features(train, "train"), self.features(test, "test")
        train_y, test_y = train.labels.to(self.device), test.labels.to(self.device)
        metrics: dict[str, float] = {}
        correct: dict[str, Tensor] = {}

        started = time.perf_counter()
        if cfg.protocol == "probe":
            probe = self.probe(train, test)
            metrics.update(linear_top1=probe.top1, linear_top5=probe.top5)
            correct["linear_top1"] = probe.correct
            self._timed("probe", started)
        else:
            linear = self.linear(train_x, train_y, test_x, test_y, train.num_classes)
            metrics.update(linear_top1=linear.top1, linear_top5=linear.top5, linear_weight_decay=linear.weight_decay)
            correct["linear_top1"] = linear.correct
            self._timed("linear", started)

        started = time.perf_counter()
        # The bank on the device in float16 when it fits there; else read from its file a chunk at a time.
        bank = train_x.to(self.device) if self.device.type == "cuda" and self.fits_in_memory(train_x) else train_x
        predicted = knn_predictions(
            bank, train_y, test_x, num_classes=train.num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature,
            device=self.device,
        )
        correct["knn_top1"] = predicted == test_y
        metrics["knn_top1"] = knn_accuracy(predicted, test_y, train.num_classes)
        self._timed("knn", started)

        classifier = None
        if with_text:
            started = time.perf_counter()
            classes = zero_shot_classes(train.classes, cfg.templates or DEFAULT_TEMPLATES, cfg.classnames)
            self.zero_shot_classes = classes
            # Templates the user gave win over the dataset's.
            classifier = zero_shot_classifier(self.encode_texts, classes.names, cfg.templates or classes.templates)
            with torch.no_grad():
                embeddings = torch.cat([
                    self.model.embed_image_features(part.to(self.device).float()) for part in test_x.split(cfg.batch_size)
                ])
            top1, _ = zero_shot_hits(embeddings, test_y, classifier)
            metrics.update(zero_shot_accuracy(embeddings, test_y, classifier))
            correct["zero_shot_top1"] = top1
            self._timed("zero_shot", started)

        if cfg.few_shot:
            started = time.perf_counter()
            self.few_shot = few_shot_probes(train_x, train_y, test_x, test_y, train.num_classes, tuple(cfg.few_shot),
                                            cfg.few_shot_draws, cfg.seed, metrics.get("zero_shot_top1"))
            few_shot, self.few_shot_intervals = few_shot_metrics(self.few_shot)
            metrics.update(few_shot)
            self._timed("few_shot", started)
        if cfg.shifts:
            started = time.perf_counter()
            weight_decay = metrics.get("linear_weight_decay")
            if weight_decay is None:  # the probe protocol chose none: the features protocol chooses it
                protocol = self.linear_protocol
                weight_decay = self.linear(train_x, train_y, test_x, test_y, train.num_classes).weight_decay
                self.linear_protocol = protocol  # linear top-1 is still the probe's
            self.shift = score_shifts(self, train_x, train_y, test, metrics, weight_decay, classifier)
            metrics.update(shift_metrics(self.shift))
            self._timed("shift", started)

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
    def diagnostics(self, test: ImageSet | ShardSplit, test_features: Tensor) -> dict[str, float]:
        # A seeded sample, not the first images: a test split may be stored sorted by class.
        sample = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.config.seed))
        sample = sample[: self.config.diagnostics_size]
        features = test_features[sample.to(test_features.device)].to(self.device).float()
        images = test.images_at(sample)
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
