"""Few-shot linear probes: logistic regression on k labelled images per class.

For each k, several seeded draws of k training images per class; each draw fits the
logistic regression of ``linear.py`` on their frozen features and is scored on the whole
test split. The result per k is the mean over draws and its 95 % interval (Student's t
over the draws: it measures which images were drawn, the dominant noise at small k).
For a model with text, the k at which the probe matches zero-shot (CLIP, Radford et al.
2021, Fig. 6).

Two choices a full linear probe makes on held-out data are fixed here, because k images
per class leave nothing to hold out (at k = 1) or a held-out choice by noise (k = 2):
- the features are standardised with the statistics of the whole training split's
  features, which need no labels;
- the L2 penalty is ``FEW_SHOT_WEIGHT_DECAY`` for every k. On the default bench's shapes
  features (2026-12-07) any penalty from 1e-4 to 1e-1 moved the mean top-1 by at most 1.3
  points at k <= 4 and 3.4 at k = 16 (the supervised baseline; CLIP's 0.8), within or near
  the interval over draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_zoo.environment import one_torch_thread
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.linear import fit_logistic_regression, topk_accuracy

DEFAULT_DRAWS = 5
FEW_SHOT_WEIGHT_DECAY = 1e-2
LEVEL = 0.95


def sample_shots(labels: Tensor, k: int, num_classes: int, seed: int) -> Tensor:
    """(num_classes * k,) int64 rows of ``labels`` (N,): exactly k of each class, drawn
    without replacement by ``seed``, grouped by class."""
    if k < 1:
        raise SslZooError(f"Few-shot probes need k >= 1 labelled images per class; got k={k}.")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(num_classes):
        of_class = torch.nonzero(labels == c).flatten()
        if len(of_class) < k:
            raise SslZooError(
                f"Few-shot probe with k={k}: class {c} has only {len(of_class)} labelled training image(s). "
                f"Give --few-shot values of at most {len(of_class)}, or evaluate on more training images (--max-train)."
            )
        rows.append(of_class[torch.randperm(len(of_class), generator=generator)[:k]])
    return torch.cat(rows)


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` (the draws' accuracies), within [0, 1]."""
    # NOTE: scipy comes with scikit-learn (a dependency); torch has no t quantile.
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return max(mean - float(half), 0.0), min(mean + float(half), 1.0)


def shots_matching(mean_top1: dict[int, float], target: float) -> dict[str, float | int | None]:
    """The k at which few-shot top-1 reaches ``target`` (zero-shot's): the first k whose mean
    is at or above it, and that k interpolated linearly in log2 k between it and the k
    before (None where no k reaches it; the smallest k where even it does)."""
    ks = sorted(mean_top1)
    first = next((k for k in ks if mean_top1[k] >= target), None)
    if first is None or first == ks[0]:
        return {"first_k": first, "interpolated_k": first}
    below = ks[ks.index(first) - 1]
    low, high = mean_top1[below], mean_top1[first]
    where = (target - low) / (high - low)  # in (0, 1]: low < target <= high
    return {"first_k": first, "interpolated_k": 2 ** (math.log2(below) + where * (math.log2(first) - math.log2(below)))}


@torch.no_grad()
def few_shot_probes(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, shots: tuple[int, ...],
    draws: int = DEFAULT_DRAWS, seed: int = 0, zero_shot_top1: float | None = None,
    weight_decay: float = FEW_SHOT_WEIGHT_DECAY,
) -> dict:
    """Few-shot top-1 for each k in ``shots``: the JSON-ready result (per k: the draws, their
    mean and 95 % interval; and, given ``zero_shot_top1``, the k that matches it).

    train_x (N, D), test_x (M, D) frozen features on one device; train_y (N,), test_y (M,).
    """
    with one_torch_thread():
        return _few_shot_probes(train_x, train_y, test_x, test_y, num_classes, shots, draws, seed, zero_shot_top1, weight_decay)


def _few_shot_probes(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, shots: tuple[int, ...],
    draws: int, seed: int, zero_shot_top1: float | None, weight_decay: float,
) -> dict:
    device = train_y.device  # the evaluator's; the features may lie elsewhere (a memory-mapped file)
    mean, std = train_x.float().mean(dim=0).to(device), train_x.float().std(dim=0).clamp_min(1e-6).to(device)  # no labels
    test = (test_x.to(device).float() - mean) / std  # (M, D)
    test_y = test_y.to(device)
    by_k = {}
    for k in shots:
        accuracies = []
        for draw in range(draws):
            rows = sample_shots(train_y, k, num_classes, seed=seed * 1_000_003 + 1_000 * k + draw)  # (C * k,)
            shots_x = (train_x[rows.to(train_x.device)].to(device).float() - mean) / std  # (C * k, D)
            w, b = fit_logistic_regression(shots_x, train_y[rows.to(device)], num_classes, weight_decay)
            accuracies.append(topk_accuracy(test @ w.T + b, test_y, 1))
        by_k[k] = {"mean": sum(accuracies) / draws, "interval": list(mean_interval(accuracies)), "draws": accuracies}
    result = {
        "shots": list(shots), "draws": draws, "weight_decay": weight_decay, "level": LEVEL,
        "standardised_with": "the whole training split's feature statistics (no labels)",
        "top1": {str(k): v for k, v in by_k.items()},
    }
    if zero_shot_top1 is not None:
        result["zero_shot_top1"] = zero_shot_top1
        result["matches_zero_shot"] = shots_matching({k: v["mean"] for k, v in by_k.items()}, zero_shot_top1)
    return result


def few_shot_metrics(result: dict) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The metrics (``few_shot_top1_k<k>``: the draws' mean; ``few_shot_k_matching_zero_shot``
    where a k matches) and their intervals, from ``few_shot_probes``' result."""
    metrics = {f"few_shot_top1_k{k}": v["mean"] for k, v in result["top1"].items()}
    intervals = {f"few_shot_top1_k{k}": v["interval"] for k, v in result["top1"].items()}
    matched = result.get("matches_zero_shot", {}).get("interpolated_k")
    if matched is not None:
        metrics["few_shot_k_matching_zero_shot"] = matched
    return metrics, intervals
