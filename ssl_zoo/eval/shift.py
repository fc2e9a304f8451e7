"""Distribution shift: the classifiers fitted on the training distribution, scored on test
sets that differ from it while keeping its classes.

    train features -> logistic regression (the linear eval's, refitted with its penalty),
                      kNN bank, zero-shot classifier (models with text)
    each shifted test set -> its features -> the three classifiers, unchanged -> top-1

The shifted sets: for shapes, sketches, unseen textures and colours, unseen scales
(``ssl_zoo.data.shapes_shift``); for every dataset, its test split corrupted by Gaussian
noise, blur, contrast and JPEG at 3 severities (``ssl_zoo.eval.corruptions``). Plotting
shifted against in-distribution top-1 per model gives the effective-robustness picture
of CLIP (Radford et al. 2021, sec. 3.3; Taori et al. 2020): a model above the line the
others lie on is more robust than its in-distribution accuracy predicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shapes_shift import SHAPE_SHIFTS, make_shifted_shapes
from ssl_zoo.data.shards.split import ShardSplit
from ssl_zoo.eval.cache import hash_tensor
from ssl_zoo.eval.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ssl_zoo.eval.knn import knn_accuracy, knn_predictions
from ssl_zoo.eval.linear import fit_logistic_regression, standardize, topk_accuracy

if TYPE_CHECKING:
    from ssl_zoo.eval.evaluator import Evaluator

PROTOCOLS = ("linear_top1", "knn_top1", "zero_shot_top1")
SHAPES_SEED = 10_000  # shifted shapes sets draw with seed + this + their index: apart from train and val


def shifted_test_sets(
    test: ImageSet | ShardSplit, seed: int, batch_size: int = 512, workers: int = 0,
) -> Iterator[tuple[dict, ImageSet]]:
    """(what the set is, its images), one set at a time: for the shapes test split its three
    shifted sets, then for any test split its 12 corrupted copies (same images, same order,
    same labels)."""
    if isinstance(test, ImageSet) and test.name == "shapes":
        for i, shift in enumerate(SHAPE_SHIFTS):
            drawn = make_shifted_shapes(shift, len(test), test.image_size, seed + SHAPES_SEED + i)
            yield {"name": shift, "family": "shapes", "severity": None}, drawn
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            images = _corrupted(test, corruption, severity, seed, batch_size, workers)
            corrupted = ImageSet(images=images, labels=test.labels, classes=test.classes, name=test.name)
            yield {"name": f"{corruption}_s{severity}", "family": "corruption", "corruption": corruption,
                   "severity": severity}, corrupted


# The last in-memory test split's corrupted copies: bench scores every run on the same split,
# and corrupting 5000 shapes images 12 ways took 40 s on 2 shared cores. Kept only while the
# 12 copies stay under CORRUPTED_CACHE_BYTES (shapes: 180 MB; CIFAR-10: 370 MB).
CORRUPTED_CACHE_BYTES = 2**30
_last_corrupted: dict[tuple, Tensor] = {}


def _corrupted(
    test: ImageSet | ShardSplit, corruption: str, severity: int, seed: int, batch_size: int, workers: int,
) -> Tensor:
    """uint8 (M, 3, S, S): the test split corrupted, a batch at a time (image i's noise seeded by seed and i)."""
    in_memory = isinstance(test, ImageSet) and 12 * test.images.numel() <= CORRUPTED_CACHE_BYTES
    key = (hash_tensor(test.images), corruption, severity, seed) if in_memory else None
    if key in _last_corrupted:
        return _last_corrupted[key]
    parts, first = [], 0
    for images, _ in test.batches(batch_size, torch.device("cpu"), workers):
        parts.append(corrupt(images, corruption, severity, first_seed=seed * 1_000_003 + first))
        first += len(images)
    corrupted = torch.cat(parts)
    if key is not None:
        if any(kept[0] != key[0] for kept in _last_corrupted):  # another split's: drop them
            _last_corrupted.clear()
        _last_corrupted[key] = corrupted
    return corrupted


def score_shifts(
    evaluator: Evaluator, train_x: Tensor, train_y: Tensor, test: ImageSet | ShardSplit,
    in_distribution: dict[str, float], weight_decay: float, zero_shot_classifier: Tensor | None,
) -> dict:
    """Linear, kNN and (given a classifier) zero-shot top-1 on each shifted set; the JSON-ready
    result. train_x (N, D) features of the training split, train_y (N,); ``weight_decay``:
    the penalty the linear eval chose; ``in_distribution``: the model's metrics on ``test``."""
    cfg, device, num_classes = evaluator.config, evaluator.device, test.num_classes
    # The linear eval's final classifier, refitted: the same inputs give the same weights.
    x_train = train_x.to(device).float()
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    weight, bias = fit_logistic_regression(standardize(x_train)[0], train_y, num_classes, weight_decay)
    bank = x_train if device.type == "cuda" else train_x

    sets = {}
    for described, images in shifted_test_sets(test, cfg.seed, cfg.batch_size, evaluator.loader_workers):
        x = evaluator.features(images, f"shift:{described['name']}").float()  # (M, D)
        y = images.labels.to(device)
        scores = {"linear_top1": topk_accuracy(((x - mean) / std) @ weight.T + bias, y, 1)}
        predicted = knn_predictions(bank, train_y, x, num_classes, cfg.knn_k, cfg.knn_temperature, device=device)
        scores["knn_top1"] = knn_accuracy(predicted, y, num_classes)
        if zero_shot_classifier is not None:
            with torch.no_grad():
                embeddings = torch.cat([evaluator.model.embed_image_features(part) for part in x.split(cfg.batch_size)])
            scores["zero_shot_top1"] = topk_accuracy(embeddings @ zero_shot_classifier.T, y, 1)
        sets[described["name"]] = {**described, **scores}
    corrupted = [s for s in sets.values() if s["family"] == "corruption"]
    return {
        "in_distribution": {name: in_distribution[name] for name in PROTOCOLS if name in in_distribution},
        "sets": sets,
        "corruption_mean": {name: sum(s[name] for s in corrupted) / len(corrupted) for name in PROTOCOLS if name in corrupted[0]},
        "linear": f"the in-distribution logistic regression (L2 penalty {weight_decay:g}), applied unchanged",
        "knn": "the in-distribution training features as the bank",
    }


def shift_metrics(result: dict) -> dict[str, float]:
    """``shift_<set>_<protocol>`` for every shifted set, and ``shift_corruption_mean_<protocol>``."""
    metrics = {f"shift_{name}_{p}": s[p] for name, s in result["sets"].items() for p in PROTOCOLS if p in s}
    metrics.update({f"shift_corruption_mean_{p}": v for p, v in result["corruption_mean"].items()})
    return metrics
