"""Health of a representation, read off its features (no labels needed).

- ``embedding_std``: per-dimension std of L2-normalised features, times sqrt(D); about 1
  for features spread over the sphere, 0 for complete collapse (BYOL's failure mode).
- ``rankme`` (Garrido et al. 2023, after Roy & Vetterli 2007): exp of the entropy of the
  normalised singular values of the raw feature matrix; how many dimensions the features
  really use (dimensional collapse). As defined there, so it can be held against
  published RankMe values: the features are not centred.
- ``alignment`` and ``uniformity`` (Wang & Isola 2020): how close two views of one image
  land (lower is better) and how evenly features cover the sphere (lower is better).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightly.utils.debug import std_of_l2_normalized
from torch import Tensor


@torch.no_grad()
def embedding_std(features: Tensor) -> float:
    """features (N, D) -> mean per-dimension std of the normalised features * sqrt(D)."""
    return float(std_of_l2_normalized(features.float())) * math.sqrt(features.shape[1])


@torch.no_grad()
def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """features (N, D) -> RankMe = exp(-sum_k p_k log p_k), p_k = s_k / ||s||_1 + eps, where
    s are the singular values of the features as they are (not centred), eps as in the paper."""
    singular = torch.linalg.svdvals(features.float())  # (min(N, D),)
    p = singular / singular.sum().clamp_min(1e-12) + eps
    return torch.exp(-(p * p.log()).sum()).item()


@torch.no_grad()
def alignment(features_a: Tensor, features_b: Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x')||^alpha over positive pairs; features (N, D), row i of a and b
    are two views of one image. Features are L2-normalised here."""
    a, b = F.normalize(features_a.float(), dim=1), F.normalize(features_b.float(), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(features: Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over all distinct pairs; features (N, D)."""
    x = F.normalize(features.float(), dim=1)
    return torch.pdist(x).pow(2).mul(-t).exp().mean().log().item()
