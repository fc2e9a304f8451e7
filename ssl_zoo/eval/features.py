"""Frozen features of images, extracted a batch at a time."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


@torch.no_grad()
def image_features(
    backbone: nn.Module, transform: Callable[[Tensor], Tensor], images: Tensor, device: torch.device,
    batch_size: int = 512,
) -> Tensor:
    """(N, D) float32 backbone features of uint8 images (N, 3, H, W), on ``device``.

    ``transform`` maps a uint8 batch on the device to the backbone's input. The backbone
    runs in eval mode (batch-norm uses its running statistics) and is left as it was.
    """
    was_training = backbone.training
    backbone.eval()
    features = [
        backbone(transform(images[i : i + batch_size].to(device, non_blocking=True))).float()
        for i in range(0, len(images), batch_size)
    ]
    backbone.train(was_training)
    return torch.cat(features)
