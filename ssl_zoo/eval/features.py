"""Frozen features of a dataset, extracted a batch at a time."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    transform: Callable[[Tensor], Tensor],
    batches: Iterable[dict[str, Tensor]],
    device: torch.device,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Features and labels of every batch, with the backbone in eval mode.

    batches yield {"image": uint8 (B, 3, H, W), "label": int64 (B,)}; ``transform`` maps
    the uint8 images to the backbone's input. Returns (N, D) features (L2-normalised
    when ``normalize``) and (N,) labels, both on ``device``.
    """
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in batches:
        images = transform(batch["image"].to(device, non_blocking=True))
        f = backbone(images).float()
        features.append(F.normalize(f, dim=1) if normalize else f)
        labels.append(batch["label"].to(device, non_blocking=True))
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def image_features(
    network: Callable[[Tensor], Tensor], images: Tensor, device: torch.device, batch_size: int = 512
) -> Tensor:
    """(N, D) float32 outputs of ``network`` for uint8 images (N, 3, H, W), on ``device``.

    ``network`` takes a uint8 batch on the device (it applies its own transform).
    """
    return torch.cat(
        [network(images[i : i + batch_size].to(device, non_blocking=True)).float() for i in range(0, len(images), batch_size)]
    )
