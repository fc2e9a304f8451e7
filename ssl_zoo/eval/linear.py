"""Linear evaluation on frozen, cached features: the protocol every SSL paper reports.

A multinomial logistic regression on standardised features. The L2 penalty is chosen on a
held-out part of the training split, then the classifier is refitted on the whole training
split and scored once on the test split. Two ways to fit it, one objective:

- ``linear_eval``: full-batch L-BFGS with the features in memory (seconds on a GPU, well
  under a minute on 2 CPU cores for CIFAR-10-sized features);
- ``linear_eval_in_batches``: features that do not fit (ImageNet-1k's, memory-mapped) are
  read a mini-batch at a time, and Adam fits every candidate penalty at once, in one pass
  over the data per epoch. The two agree within 0.5 points (tests/test_eval.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearEvalResult:
    top1: float
    top5: float
    weight_decay: float  # the L2 penalty the held-out split chose
    holdout_top1: dict[float, float]  # weight decay -> held-out top-1
    correct: Tensor  # (M,) bool, each test image's top-1 right or wrong


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, max_iter: int = 200
) -> tuple[Tensor, Tensor]:
    """Weights (C, D) and bias (C,) minimising cross-entropy + weight_decay/2 * ||W||^2.

    features (N, D) float, labels (N,) int64. Full-batch L-BFGS with a strong-Wolfe line
    search: deterministic, and no learning rate or epoch count to tune.
    """
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
        tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be inside no_grad (a callback, an eval loop)
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits. logits (N, C), labels (N,).

    Top-1 ranks by argmax, as the per-image ``correct`` vectors do, so the two agree on ties.
    """
    num_classes = logits.shape[1]
    return multiclass_accuracy(logits, labels, num_classes, top_k=min(k, num_classes), average="micro").item()


@torch.no_grad()
def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Zero mean, unit variance per dimension, with statistics of ``train`` only."""
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def linear_eval(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    num_classes: int, weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
    holdout_fraction: float = 0.1, seed: int = 0, max_iter: int = 200,
) -> LinearEvalResult:
    """Top-1/top-5 of a linear classifier on frozen features (N, D) / (M, D)."""
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed)).to(train_labels.device)
    n_holdout = max(int(len(order) * holdout_fraction), 1)
    holdout, fit = order[:n_holdout], order[n_holdout:]

    # Choose the penalty on the held-out part (statistics from the rest only) ...
    x_fit, x_holdout = standardize(train_features[fit].float(), train_features[holdout].float())
    scores = {}
    for weight_decay in weight_decays:
        w, b = fit_logistic_regression(x_fit, train_labels[fit], num_classes, weight_decay, max_iter)
        scores[weight_decay] = topk_accuracy(x_holdout @ w.T + b, train_labels[holdout], 1)
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties go to the stronger penalty

    # ... then refit on the whole training split and score the test split once.
    x_train, x_test = standardize(train_features.float(), test_features.float())
    w, b = fit_logistic_regression(x_train, train_labels, num_classes, best, max_iter)
    logits = x_test @ w.T + b
    return LinearEvalResult(
        top1=topk_accuracy(logits, test_labels, 1),
        top5=topk_accuracy(logits, test_labels, 5),
        weight_decay=best,
        holdout_top1=scores,
        correct=logits.argmax(dim=1) == test_labels,
    )


# ---- Features that do not fit in memory: mini-batches over the (memory-mapped) features ----


@torch.no_grad()
def _mean_std(features: Tensor, rows: Tensor, device: torch.device, block: int = 16384) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (unbiased) std of ``features[rows]``, a block of rows at a
    time in float64: what ``standardize`` computes in memory."""
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for part in rows.split(block):
        x = features[part.sort().values].to(device).double()  # (b, D)
        total += x.sum(dim=0)
        squares += x.square().sum(dim=0)
    n = len(rows)
    mean = total / n
    var = (squares - n * mean.square()) / max(n - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)


def _fit_in_batches(
    features: Tensor, labels: Tensor, rows: Tensor, mean: Tensor, std: Tensor, num_classes: int,
    weight_decays: tuple[float, ...], device: torch.device, epochs: int, batch_size: int, seed: int,
) -> tuple[Tensor, Tensor]:
    """Weights (P, C, D) and biases (P, C), one classifier per penalty, each minimising
    cross-entropy + weight_decay/2 * ||W||^2 over ``features[rows]`` (standardised).

    NOTE: Adam adapts each parameter on its own gradient, and classifier p's gradient comes
    from its own loss only, so fitting the P penalties together is P separate fits that
    share the reading of the data. A cosine learning rate to zero lets them settle.
    """
    decays = torch.tensor(weight_decays, device=device)  # (P,)
    weight = torch.zeros(len(weight_decays), num_classes, features.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(len(weight_decays), num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    steps = epochs * -(-len(rows) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for batch in rows[torch.randperm(len(rows), generator=generator)].split(batch_size):
                batch = batch.sort().values  # reads the memory-mapped rows in file order
                x = (features[batch].to(device).float() - mean) / std  # (b, D)
                y = labels[batch.to(labels.device)].to(device)  # (b,)
                logits = torch.einsum("bd,pcd->pbc", x, weight) + bias[:, None]  # (P, b, C)
                loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(weight_decays)), reduction="sum") / len(y)
                loss = loss + 0.5 * (decays * weight.square().sum(dim=(1, 2))).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return weight.detach(), bias.detach()


@torch.no_grad()
def _hits(
    features: Tensor, labels: Tensor, rows: Tensor, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor,
    device: torch.device, block: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Whether each of ``rows`` is right at top-1 and top-5, for each classifier: two (P, R) bool."""
    top1, top5 = [], []
    for part in rows.split(block):
        x = (features[part].to(device).float() - mean) / std
        y = labels[part.to(labels.device)].to(device)
        logits = torch.einsum("bd,pcd->pbc", x, weight) + bias[:, None]  # (P, b, C)
        top1.append(logits.argmax(dim=2) == y)
        top5.append((logits.topk(min(5, logits.shape[2]), dim=2).indices == y[:, None]).any(dim=2))
    return torch.cat(top1, dim=1), torch.cat(top5, dim=1)


def linear_eval_in_batches(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    num_classes: int, device: torch.device, weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
    holdout_fraction: float = 0.1, seed: int = 0, epochs: int = 20, batch_size: int = 4096,
) -> LinearEvalResult:
    """``linear_eval``'s protocol (same held-out part, same penalties, same objective) on
    features of any size and device, memory-mapped files included: read in mini-batches.

    train_features (N, D), test_features (M, D); labels (N,) and (M,).
    """
    device = torch.device(device)
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    n_holdout = max(int(len(order) * holdout_fraction), 1)
    holdout, fit = order[:n_holdout], order[n_holdout:]

    # Choose the penalty on the held-out part (statistics from the rest only) ...
    mean, std = _mean_std(train_features, fit, device)
    weight, bias = _fit_in_batches(train_features, train_labels, fit, mean, std, num_classes, weight_decays,
                                   device, epochs, batch_size, seed)
    holdout_top1 = _hits(train_features, train_labels, holdout.sort().values, mean, std, weight, bias, device)[0]
    scores = {wd: holdout_top1[p].float().mean().item() for p, wd in enumerate(weight_decays)}
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties go to the stronger penalty

    # ... then refit on the whole training split and score the test split once.
    everything = torch.arange(len(train_labels))
    mean, std = _mean_std(train_features, everything, device)
    weight, bias = _fit_in_batches(train_features, train_labels, everything, mean, std, num_classes, (best,),
                                   device, epochs, batch_size, seed)
    top1, top5 = _hits(test_features, test_labels, torch.arange(len(test_labels)), mean, std, weight, bias, device)
    return LinearEvalResult(
        top1=top1.float().mean().item(), top5=top5.float().mean().item(), weight_decay=best,
        holdout_top1=scores, correct=top1[0],
    )
