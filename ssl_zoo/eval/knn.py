"""Weighted kNN classification of features (Wu et al. 2018), as SSL papers report it.

The bank may be far larger than memory allows to compare at once (ImageNet-1k: 1.28 M
features): queries go in blocks, and each block meets the bank a chunk at a time, keeping
its k most similar so far. The vote is lightly's ``knn_predict``'s, so on a bank that fits
the predictions are the same, to the last one (tests/test_knn.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy


@torch.no_grad()
def knn_predictions(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1,
    query_block: int = 1024, bank_block: int = 8192, device: torch.device | None = None,
) -> Tensor:
    """(M,) int64 classes of a cosine-weighted kNN vote (k neighbours, weights exp(sim / T)).

    train_features (N, D), test_features (M, D): any float dtype and device (a float16
    memory-mapped file too); rows are L2-normalised here, in float32, a block at a time.
    train_labels (N,). Computed on ``device`` (default: the test features'); at most
    query_block x bank_block similarities exist at once.
    """
    device = torch.device(device) if device is not None else test_features.device
    k = min(k, train_features.shape[0])
    labels = train_labels.to(device)
    predictions = []
    for start in range(0, test_features.shape[0], query_block):
        queries = F.normalize(test_features[start : start + query_block].to(device).float(), dim=1)  # (b, D)
        best = torch.empty(queries.shape[0], 0, device=device)  # (b, <=k) similarities, descending
        best_labels = torch.empty(queries.shape[0], 0, dtype=labels.dtype, device=device)
        for first in range(0, train_features.shape[0], bank_block):
            chunk = F.normalize(train_features[first : first + bank_block].to(device).float(), dim=1)  # (n, D)
            # The chunk's own k best, then the k best of those and the best so far: only
            # (b, n) similarities and (b, 2k) candidates exist at once.
            top, where = torch.mm(queries, chunk.T).topk(min(k, chunk.shape[0]), dim=1)  # (b, k')
            candidates = torch.cat([best, top], dim=1)  # (b, <=2k)
            best, keep = candidates.topk(min(k, candidates.shape[1]), dim=1)
            best_labels = torch.cat([best_labels, labels[first + where]], dim=1).gather(1, keep)
        predictions.append(_vote(best, best_labels, num_classes, temperature))
    return torch.cat(predictions)


def _vote(similarity: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """(b,) the class with the largest sum of exp(sim / T) over the k neighbours.

    NOTE: lightly's ``knn_predict``, line for line (one-hot rows times weights, summed,
    then argsort), so that ties and rounding fall the same way as in every earlier result.
    """
    b, k = similarity.shape
    weight = (similarity / temperature).exp()  # (b, k)
    one_hot = torch.zeros(b * k, num_classes, device=labels.device).scatter(dim=-1, index=labels.reshape(-1, 1), value=1.0)
    scores = torch.sum(one_hot.view(b, -1, num_classes) * weight.unsqueeze(dim=-1), dim=1)  # (b, C)
    return scores.argsort(dim=-1, descending=True)[:, 0]


@torch.no_grad()
def knn_top1(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1,
) -> float:
    """Top-1 accuracy of ``knn_predictions`` against test_labels (M,)."""
    predicted = knn_predictions(train_features, train_labels, test_features, num_classes, k, temperature)
    return knn_accuracy(predicted, test_labels.to(predicted.device), num_classes)


def knn_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> float:
    """Share of predicted classes (M,) equal to labels (M,): the mean of ``predicted == labels``."""
    return multiclass_accuracy(predicted, labels, num_classes, average="micro").item()
