"""Image decoding and the one resize rule every path uses: shorter side to the size, then the centre crop."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import IO

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


# ----------------------------------------------------------------------------------------
# The one resize rule: the shorter side to the size (bicubic, antialiased), then the centre
# crop. Its geometry is here once; PIL applies it to a file's image (the in-memory loaders,
# the shard converter), torch to decoded batches (shards at training time, torchvision's
# arrays), and they agree within one grey level.


def resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of the size x size centre crop."""
    scale = size / min(height, width)
    h2, w2 = max(size, round(height * scale)), max(size, round(width * scale))
    return h2, w2, (h2 - size) // 2, (w2 - size) // 2


def resize_crop(images: Tensor, size: int) -> Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, size, size) by the resize rule."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    h2, w2, top, left = resize_geometry(h, w, size)
    # uint8 antialiased bicubic has CPU kernels only (they match PIL within one grey level).
    x = images if images.device.type == "cpu" else images.float()
    x = F.interpolate(x, size=(h2, w2), mode="bicubic", antialias=True)
    if x.is_floating_point():
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[:, :, top : top + size, left : left + size]


def resize_crop_pil(img: Image.Image, size: int) -> Image.Image:
    """A PIL image -> size x size by the resize rule."""
    if img.size == (size, size):
        return img
    h2, w2, top, left = resize_geometry(img.height, img.width, size)
    img = img.resize((w2, h2), Image.Resampling.BICUBIC)
    return img.crop((left, top, left + size, top + size))


def load_image_file(file: str | Path | IO[bytes], size: int) -> np.ndarray:
    """An image file (a path or an open binary file) -> RGB uint8 (size, size, 3) by the
    resize rule. Raises one of PIL_ERRORS if it is unreadable."""
    with Image.open(file) as img:
        img = to_rgb(img)  # decodes fully, so a truncated file fails here
    return np.asarray(resize_crop_pil(img, size))


def _resize_crop_by_shape(images: list[Tensor], size: int) -> Tensor:
    """Images of any sizes -> uint8 (B, 3, size, size): one resize call per distinct shape,
    not one per image (a batch of web images has a few shapes, often one)."""
    out: list[Tensor | None] = [None] * len(images)
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_shape[tuple(image.shape[-2:])].append(i)
    for members in by_shape.values():
        resized = resize_crop(torch.stack([images[i] for i in members]), size)  # (n, 3, size, size)
        for i, image in zip(members, resized):
            out[i] = image
    return torch.stack(out)


@dataclass(frozen=True)
class DecodeCounts:
    """What decoding images took, summed over batches (the run summary reports it)."""

    images: int = 0
    # Decoded one at a time on the CPU instead of by the batched decoder: members that are
    # not JPEG (PNG, WebP...), or JPEGs that the batched call (nvJPEG on a GPU) refused.
    one_by_one: int = 0
    replaced: int = 0  # decodable by nothing: replaced by another image of their batch

    def __add__(self, other: DecodeCounts) -> DecodeCounts:
        return DecodeCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def as_tensor(self) -> Tensor:
        """int64 (3,): how the counts travel from a loader worker with its batch."""
        return torch.tensor(astuple(self), dtype=torch.int64)

    @classmethod
    def from_tensor(cls, counts: Tensor) -> DecodeCounts:
        return cls(*counts.tolist())


def _decode_jpeg_batch(encoded: Sequence[bytes | Tensor], device: torch.device) -> list[Tensor | None]:
    """JPEGs in one TorchCodec call (one batched nvJPEG call on a GPU). The call fails as a
    whole on one bad image, so a failed call is retried in halves: the good images stay on
    the batched decoder and only the refused ones come back None, in O(bad x log B) calls."""
    try:
        return list(decode_jpeg(list(encoded), mode="RGB", device=device))
    except CODEC_ERRORS:
        if len(encoded) == 1:
            return [None]
        half = len(encoded) // 2
        return _decode_jpeg_batch(encoded[:half], device) + _decode_jpeg_batch(encoded[half:], device)


def decode_images(
    encoded: Sequence[bytes | Tensor],
    size: int,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> tuple[Tensor, DecodeCounts]:
    """Decode a batch of encoded images to uint8 (B, 3, size, size) on ``device``.

    JPEGs go to TorchCodec in one call (on a CUDA device, one batched nvJPEG call); other
    formats, and the JPEGs that call refuses, are decoded one by one on the CPU and counted
    (``DecodeCounts.one_by_one``). Images not size x size are resized and centre-cropped, one
    call per distinct shape. An image nothing can decode is replaced by the next decodable
    image of the batch, so a corrupt file costs one duplicate instead of a crashed run
    (``DecodeCounts.replaced``). ``names`` (one per image, e.g. ``ShardSet.describe``) go
    into the error raised when no image of the batch decodes.
    """
    device = torch.device(device)
    images: list[Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpegs:
        for i, image in zip(jpegs, _decode_jpeg_batch([encoded[i] for i in jpegs], device)):
            images[i] = image
    one_by_one = [i for i, image in enumerate(images) if image is None]
    for i in one_by_one:
        if (image := decode_one(encoded[i])) is not None:
            images[i] = image.to(device)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        where = f": {', '.join(sorted(set(names))[:5])}" if names else ""
        raise DataFormatError(
            f"None of the {len(encoded)} images of a batch could be decoded{where}. The data "
            f"is corrupt or not an image format (JPEG, PNG, WebP, ...); remake the shards "
            f"with `python -m ssl_zoo shards`."
        )
    replaced = len(encoded) - len(good)
    if replaced:
        # Each bad image takes the next good one (cyclically): deterministic for a batch.
        for i in range(len(images)):
            if images[i] is None:
                images[i] = images[next((j for j in good if j > i), good[0])]
    counts = DecodeCounts(images=len(encoded), one_by_one=len(one_by_one), replaced=replaced)
    return _resize_crop_by_shape(images, size), counts
