"""Frozen features of images, extracted a batch at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ExtractionSettings:
    """How ``image_features`` moves and computes its batches on a device."""

    pin_memory: bool  # copy host batches from page-locked memory, so the copy does not block the host
    autocast: torch.dtype | None  # the backbone's compute dtype under autocast; None: float32


def extraction_settings(device: torch.device) -> ExtractionSettings:
    """bf16 autocast and pinned copies on a CUDA GPU with bf16; float32 and plain copies elsewhere.

    NOTE: bf16 as training runs on a GPU (the recipes' bf16-mixed); the features are still
    returned as float32. On the CPU nothing changes, so CPU features stay what they were to
    the last bit (tests/test_eval.py).
    """
    if device.type == "cuda":
        return ExtractionSettings(pin_memory=True, autocast=torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    return ExtractionSettings(pin_memory=False, autocast=None)


@torch.no_grad()
def image_features(
    backbone: nn.Module, transform: Callable[[Tensor], Tensor], images: Tensor, device: torch.device,
    batch_size: int = 512,
) -> Tensor:
    """(N, D) float32 backbone features of uint8 images (N, 3, H, W), on ``device``.

    ``transform`` maps a uint8 batch on the device to the backbone's input; it runs in
    float32, the backbone under ``extraction_settings(device)``. The backbone runs in eval
    mode (batch-norm uses its running statistics) and is left as it was.
    """
    device = torch.device(device)
    settings = extraction_settings(device)

    def batches() -> Iterable[Tensor]:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]  # (b, 3, H, W) uint8
            if settings.pin_memory and batch.device.type == "cpu":
                # One batch at a time, not the whole set: pinned memory is scarce, and the host
                # pins the next batch while the device still computes this one.
                batch = batch.pin_memory()
            yield batch.to(device, non_blocking=True)

    return torch.cat(list(_features_of(backbone, transform, batches(), device)))


def _features_of(backbone: nn.Module, transform: Callable[[Tensor], Tensor], batches: Iterable[Tensor], device: torch.device):
    """Yields (b, D) float32 features of each uint8 batch on ``device``: the backbone in eval
    mode under ``extraction_settings``, its mode restored at the end."""
    settings = extraction_settings(device)
    was_training = backbone.training
    backbone.eval()
    try:
        for batch in batches:
            x = transform(batch)
            with torch.autocast(device.type, dtype=settings.autocast) if settings.autocast else contextlib.nullcontext():
                yield backbone(x).float()  # (b, D)
    finally:
        backbone.train(was_training)


@torch.no_grad()
def write_image_features(
    backbone: nn.Module, transform: Callable[[Tensor], Tensor], batches: Iterable[Tensor], device: torch.device,
    out: np.ndarray,
) -> None:
    """Writes the features of consecutive uint8 batches (on ``device``) into consecutive
    rows of ``out`` (N, D), float16, as ``image_features`` computes them: a split streamed
    from disk into a memory-mapped file, never held whole."""
    row = 0
    for features in _features_of(backbone, transform, batches, torch.device(device)):
        out[row : row + len(features)] = features.half().cpu().numpy()
        row += len(features)
    if row != len(out):
        raise RuntimeError(f"Feature extraction wrote {row} rows of {len(out)}: the loader ended early.")
