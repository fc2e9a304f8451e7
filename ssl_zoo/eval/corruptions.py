"""Common corruptions of test images, after CIFAR-10-C and ImageNet-C (Hendrycks and
Dietterich, ICLR 2019): Gaussian noise, Gaussian blur, contrast and JPEG, at 3 severities.

The benchmark defines five severities per corruption; ours 1, 2, 3 are its 1, 3 and 5, with
its constants: CIFAR-10-C's for images up to 64 px, ImageNet-C's above (its constants are
for 224 px images, where the same blur or noise is milder per pixel of detail).
Every corruption is deterministic: the noise is seeded, image by image.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from PIL import Image
from torch import Tensor

from ssl_zoo.errors import SslZooError

CORRUPTIONS = ("gaussian_noise", "blur", "contrast", "jpeg")
SEVERITIES = (1, 2, 3)

# Severities 1, 3, 5 of the benchmark's code (make_cifar_c.py, make_imagenet_c.py).
_SMALL = {  # CIFAR-10-C
    "gaussian_noise": (0.04, 0.08, 0.10),  # noise std, pixels in [0, 1]
    "blur": (0.4, 0.7, 1.0),  # Gaussian sigma, pixels
    "contrast": (0.75, 0.4, 0.15),  # kept fraction of each image's deviation from its mean
    "jpeg": (80, 58, 40),  # JPEG quality
}
_LARGE = {  # ImageNet-C
    "gaussian_noise": (0.08, 0.18, 0.38),
    "blur": (1.0, 3.0, 6.0),
    "contrast": (0.4, 0.2, 0.05),
    "jpeg": (25, 15, 7),
}
SMALL_IMAGES = 64  # sides up to this get CIFAR-10-C's constants


def corruption_level(name: str, severity: int, image_size: int) -> float:
    """The constant of corruption ``name`` at ``severity`` (1-3) for images of ``image_size`` px."""
    if name not in CORRUPTIONS:
        raise SslZooError(f"Unknown corruption '{name}'; the corruptions are {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise SslZooError(f"Corruption severity {severity}: give one of {', '.join(map(str, SEVERITIES))}.")
    return (_SMALL if image_size <= SMALL_IMAGES else _LARGE)[name][severity - 1]


@torch.no_grad()
def corrupt(images: Tensor, name: str, severity: int, first_seed: int = 0) -> Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, H, W), corrupted; on the images' device (JPEG round
    trips through the CPU). Image i's noise is drawn with seed ``first_seed + i``, so a set
    corrupted a batch at a time is the same whatever the batches."""
    level = corruption_level(name, severity, images.shape[-1])
    x = images.float() / 255  # (N, 3, H, W) in [0, 1]
    if name == "gaussian_noise":
        noise = torch.stack([
            torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(first_seed + i)) for i in range(len(x))
        ]).to(x.device)  # (N, 3, H, W)
        x = x + level * noise
    elif name == "blur":
        radius = math.ceil(3 * level)
        # NOTE: the benchmark blurs with skimage's Gaussian, whose default border is 'nearest';
        # kornia's 'replicate' is the same border.
        x = gaussian_blur2d(x, (2 * radius + 1, 2 * radius + 1), (level, level), border_type="replicate")
    elif name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # each image's mean over channels and pixels
        x = (x - mean) * level + mean
    else:  # jpeg
        return torch.stack([_jpeg(image, int(level)) for image in images.cpu()]).to(images.device)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def _jpeg(image: Tensor, quality: int) -> Tensor:
    """uint8 (3, H, W) saved as a JPEG of ``quality`` and read back, by PIL as the benchmark does."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1)
