"""Image decoding and the one resize rule every path uses: shorter side to the size, then the centre crop."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchcodec.decoders import decode_image, decode_jpeg

from ssl_zoo.errors import DataFormatError

# Errors PIL raises on a file it cannot decode: OSError covers UnidentifiedImageError and
# "image file is truncated"; some plugins raise SyntaxError or ValueError on broken data.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# Exceptions TorchCodec raises on data it cannot decode (it reports libjpeg/libpng errors
# as RuntimeError, an unknown format as ValueError).
CODEC_ERRORS = (RuntimeError, ValueError)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16/32-bit grayscale: PIL's convert("RGB") clips at 255 (a white image), so scale
        # 16-bit ranges down to 8 bits first.
        a = np.asarray(img, dtype=np.float64)
        if a.max() > 255:
            a = a / 257.0
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def is_jpeg(data: bytes | Tensor) -> bool:
    head = bytes(data[:3].tolist()) if isinstance(data, Tensor) else data[:3]
    return head == b"\xff\xd8\xff"


def decode_one(data: bytes | Tensor) -> Tensor | None:
    """One image of any format to uint8 (3, H, W) on the CPU, or None if it is unreadable.

    TorchCodec first; PIL for what it cannot read (e.g. BMP, TIFF, 16-bit grayscale TIFFs),
    with ``to_rgb``'s handling of 16-bit and palette images.
    """
    try:
        image = decode_image(data, mode="RGB")
        return image[0] if image.ndim == 4 else image  # an animated image: its first frame
    except CODEC_ERRORS:
        pass
    raw = bytes(data.numpy()) if isinstance(data, Tensor) else data
    try:
        with Image.open(io.BytesIO(raw)) as img:
            rgb = np.asarray(to_rgb(img))  # (H, W, 3)
    except PIL_ERRORS:
        return None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def resize_crop(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) -> (3, size, size): shorter side to ``size`` (bicubic, antialiased),
    then the centre crop, as the in-memory loaders and the shard converter do."""
    _, h, w = image.shape
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    h2, w2 = max(size, round(h * scale)), max(size, round(w * scale))
    # uint8 antialiased bicubic has CPU kernels only (they match PIL within one grey level).
    x = image[None] if image.device.type == "cpu" else image[None].float()
    x = F.interpolate(x, size=(h2, w2), mode="bicubic", antialias=True)
    if x.is_floating_point():
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (h2 - size) // 2, (w2 - size) // 2
    return x[0, :, top : top + size, left : left + size]


def decode_images(
    encoded: Sequence[bytes | Tensor],
    size: int,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> tuple[Tensor, int]:
    """Decode a batch of encoded images to uint8 (B, 3, size, size) on ``device``.

    JPEGs go to TorchCodec in one call (on a CUDA device that is one batched nvJPEG call);
    other formats, and JPEGs that call cannot take (it fails as a whole on one bad image),
    are decoded one by one on the CPU. Images not size x size are resized and centre-cropped.
    An image nothing can decode is replaced by the next decodable image of the batch, so a
    corrupt file costs one duplicate instead of a crashed run; the second value returned is
    how many were replaced. ``names`` (one per image, e.g. ``ShardSet.describe``) go into
    the error raised when no image of the batch decodes.
    """
    device = torch.device(device)
    images: list[Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode="RGB", device=device)
        except CODEC_ERRORS:
            decoded = [None] * len(jpegs)  # retried one by one below, to find the bad one(s)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, image in enumerate(images):
        if image is None and (image := decode_one(encoded[i])) is not None:
            images[i] = image.to(device)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        where = f": {', '.join(sorted(set(names))[:5])}" if names else ""
        raise DataFormatError(
            f"None of the {len(encoded)} images of a batch could be decoded{where}. The data "
            f"is corrupt or not an image format (JPEG, PNG, WebP, ...); remake the shards "
            f"with `python -m ssl_zoo shards`."
        )
    skipped = len(encoded) - len(good)
    if skipped:
        # Each bad image takes the next good one (cyclically): deterministic for a batch.
        for i in range(len(images)):
            if images[i] is None:
                images[i] = images[next((j for j in good if j > i), good[0])]
    return torch.stack([resize_crop(image, size) for image in images]), skipped

