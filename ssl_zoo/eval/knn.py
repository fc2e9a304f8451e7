"""Weighted kNN classification of features (Wu et al. 2018), as SSL papers report it."""

from __future__ import annotations

import torch
from lightly.utils.benchmarking import knn_predict
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy


@torch.no_grad()
def knn_predictions(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
) -> Tensor:
    """(M,) int64 classes of a cosine-weighted kNN vote (k neighbours, weights exp(sim / T)).

    train_features (N, D), test_features (M, D): L2-normalised. train_labels (N,).
    """
    k = min(k, train_features.shape[0])
    bank = train_features.T.contiguous()  # (D, N), the layout knn_predict expects
    return torch.cat([
        knn_predict(test_features[start : start + chunk_size], bank, train_labels, num_classes, knn_k=k, knn_t=temperature)[:, 0]
        for start in range(0, test_features.shape[0], chunk_size)
    ])


@torch.no_grad()
def knn_top1(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of ``knn_predictions`` against test_labels (M,)."""
    predicted = knn_predictions(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return knn_accuracy(predicted, test_labels, num_classes)


def knn_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> float:
    """Share of predicted classes (M,) equal to labels (M,): the mean of ``predicted == labels``."""
    return multiclass_accuracy(predicted, labels, num_classes, average="micro").item()
