"""Datasets larger than memory: WebDataset tar shards, read at random through an index.

The in-memory path (``ImageSet``) decodes a dataset once and indexes it a batch at a time.
That stops working when the decoded images no longer fit in host memory (ImageNet-1k at
224 px is ~190 GB as uint8). This module keeps the images *encoded* on disk, in the
format most web-scale datasets already ship in, and decodes each batch when it is drawn:

- **Shards** are plain (uncompressed) WebDataset tar files, as written by img2dataset or by
  ``ssl_zoo.data.convert``: members ``KEY.jpg|.jpeg|.png|.webp`` (one image a sample) with
  optional ``KEY.cls`` (class index, ASCII), ``KEY.txt`` (captions, one a line) and
  ``KEY.json`` (may hold ``"caption"`` and ``"label"``). Consecutive members sharing a key
  form one sample.
- **An index per shard** (``<shard>.idx.npy``, written by ``build_index``) holds, for each
  sample, the byte offsets of its members' data inside the tar, its label and its number of
  captions. It is memory-mapped, so random access costs one ``pread`` per member and host
  memory does not grow with the number of samples; labels are known without reading the
  tar, while captions stay in the tar until a batch needs them.
- **Reading** (``ShardSet``) maps a global sample number to (shard, row) through
  cumulative counts and opens files lazily, once per process, so the same object works in
  DataLoader worker processes.
- **Decoding** (``decode_images``) turns a batch of encoded images into uint8
  (B, 3, S, S): JPEGs in one TorchCodec call (nvJPEG when ``device`` is a GPU), everything
  else through TorchCodec's other decoders or PIL. A corrupt image is replaced by another
  image of the batch and counted rather than stopping a run hours in.
- ``ShardDataset`` is the training ``Dataset``: ``__getitems__`` returns a whole batch in the
  same form as the in-memory ``InMemoryDataset``, decoded in the worker, or still encoded
  for decoding on the GPU.

Make shards from an image folder or a pairs file with
``python -m ssl_zoo shards --from folder DIR --out OUT --size S``; index existing shards
(e.g. img2dataset's) with ``python -m ssl_zoo shards --index PATH``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchcodec.decoders import decode_image, decode_jpeg

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.sources import _PIL_ERRORS, _to_rgb
from ssl_zoo.errors import DataFormatError, DataNotFoundError

MAKE_SHARDS = "python -m ssl_zoo shards --from folder DIR --out OUT --size S"

# Image member extensions, and the code the index stores for each (0: none).
IMAGE_FORMATS = {"jpg": 1, "jpeg": 1, "png": 2, "webp": 3}

# One index row per sample, after one header row (see _header_row). Offsets are of the
# member's data inside the tar (TarInfo.offset_data); -1 offset / 0 size: no such member.
INDEX_DTYPE = np.dtype(
    [
        ("image_offset", "<i8"),
        ("image_size", "<i8"),
        ("text_offset", "<i8"),
        ("text_size", "<i8"),
        ("json_offset", "<i8"),
        ("json_size", "<i8"),
        ("label", "<i8"),  # class index, -1: none
        ("format", "<i8"),  # IMAGE_FORMATS code of the image member
    ]
)
INDEX_SUFFIX = ".idx.npy"
# Row 0's image_offset: marks an ssl_zoo index and its layout version.
_INDEX_MAGIC = 0x53535A_494458_01  # "SSZ" "IDX" version 1

# Descriptors kept open per process; a dataset of thousands of shards must stay below the
# process's file limit (often 1024).
_MAX_OPEN_FILES = 64

# Exceptions TorchCodec raises on data it cannot decode (it reports libjpeg/libpng errors
# as RuntimeError, an unknown format as ValueError).
_CODEC_ERRORS = (RuntimeError, ValueError)


# ----------------------------------------------------------------------------------------
# Finding shards.


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` -> x, y (bash's
    brace expansion, without nesting; numeric ranges keep the first bound's zero padding)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        step = 1 if int(last) >= int(first) else -1
        parts = [str(n).zfill(len(first)) for n in range(int(first), int(last) + step, step)]
    else:
        parts = body.split(",")
    return [head + part + rest for part in parts for rest in _expand_braces(tail)]


def expand_shard_paths(root: str | Path) -> list[Path]:
    """The shard files ``root`` names: a brace pattern (``/data/train-{000000..000145}.tar``),
    one ``.tar`` file, or a folder of ``*.tar`` files (sorted by name)."""
    root = str(root)
    if "{" in root:
        paths = [Path(p).expanduser() for p in _expand_braces(root)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataNotFoundError(
                f"{len(missing)} of the {len(paths)} shards that '{root}' names are missing: "
                f"{', '.join(map(str, missing[:3]))}{more}. Fix the pattern, or make shards "
                f"with `{MAKE_SHARDS}`."
            )
    else:
        path = Path(root).expanduser()
        if path.is_dir():
            paths = sorted(path.glob("*.tar"))
            if not paths:
                raise DataNotFoundError(
                    f"No shards (*.tar files) in {path.absolute()}. Make them with "
                    f"`{MAKE_SHARDS}`, or point the data root at the folder that holds them."
                )
        elif path.is_file():
            paths = [path]
        else:
            raise DataNotFoundError(
                f"Shards not found: {path.absolute()} is neither a .tar file, a folder of "
                f".tar files nor a brace pattern (train-{{000000..000009}}.tar). Make shards "
                f"with `{MAKE_SHARDS}`."
            )
    for p in paths:
        if p.suffix != ".tar":
            raise DataFormatError(
                f"{p} is not a .tar shard. Compressed shards (.tar.gz) cannot be read at "
                f"random; decompress them (gunzip), or make shards with `{MAKE_SHARDS}`."
            )
    return paths


# ----------------------------------------------------------------------------------------
# The index.


def index_path(shard: Path) -> Path:
    """The sidecar index of a shard: ``<shard>.idx.npy``."""
    return shard.with_name(shard.name + INDEX_SUFFIX)


def _index_command(shard: Path) -> str:
    return f"python -m ssl_zoo shards --index {shard}"


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the key runs to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _parse_label(shard: Path, name: str, data: bytes) -> int:
    try:
        label = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataFormatError(
            f"{shard}: member {name} should hold a class index (an integer), found "
            f"{data[:40]!r}. Fix the shard, or remake it with `{MAKE_SHARDS}`."
        ) from None
    if label < 0:
        raise DataFormatError(f"{shard}: member {name} holds a negative class index {label}.")
    return label


def _captions_from_text(data: bytes, where: str) -> list[str]:
    """A .txt member's captions: one per non-empty line (an empty file is one empty caption)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: caption is not UTF-8 (bad byte at {e.start}).") from None
    return [line.strip() for line in text.splitlines() if line.strip()] or [""]


def _json_fields(data: bytes, where: str) -> dict:
    try:
        fields = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{where}: not valid JSON ({e}).") from None
    return fields if isinstance(fields, dict) else {}


def _captions_from_json(fields: dict) -> list[str]:
    caption = fields.get("caption")
    if isinstance(caption, str):
        return [caption.strip()]
    if isinstance(caption, list):
        return [str(c).strip() for c in caption]
    return []


def _scan_shard(shard: Path) -> tuple[list[tuple[int, ...]], int]:
    """The index rows of a shard's samples, and the most captions any sample has."""
    rows: list[tuple[int, ...]] = []
    keys: list[str] = []  # of the indexed samples, for messages
    caption_counts: list[int] = []
    missing_image: list[str] = []
    sample: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    key = None

    def finish() -> None:
        image = next((ext for ext in sample if ext in IMAGE_FORMATS), None)
        if image is None:
            missing_image.append(key)
            return
        info = sample[image][0]
        text = sample.get("txt")
        meta = sample.get("json")
        fields = _json_fields(meta[1], f"{shard}: {meta[0].name}") if meta else {}
        if "cls" in sample:
            label = _parse_label(shard, sample["cls"][0].name, sample["cls"][1])
        else:
            label = fields.get("label", -1)
            label = label if isinstance(label, int) and label >= 0 else -1
        if text is not None:
            count = len(_captions_from_text(text[1], f"{shard}: {text[0].name}"))
        else:
            count = len(_captions_from_json(fields))
        caption_counts.append(count)
        keys.append(key)
        rows.append(
            (
                info.offset_data, info.size,
                text[0].offset_data if text else -1, text[0].size if text else 0,
                meta[0].offset_data if meta else -1, meta[0].size if meta else 0,
                label, IMAGE_FORMATS[image],
            )
        )

    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name_key, ext = _split_name(info.name)
                if name_key != key:
                    if sample:
                        finish()
                    sample, key = {}, name_key
                # Labels, captions and json are read now (they are small); images are not.
                data = tar.extractfile(info).read() if ext in ("cls", "txt", "json") else None
                sample.setdefault(ext, (info, data))
            if sample:
                finish()
    except tarfile.ReadError as e:
        raise DataFormatError(
            f"{shard} is not a readable (uncompressed) tar file ({e}). Make shards with "
            f"`{MAKE_SHARDS}`."
        ) from None
    if not rows:
        raise DataFormatError(
            f"{shard} holds no image member (.jpg, .jpeg, .png or .webp) in "
            f"{len(missing_image)} sample(s); a shard needs one image per sample key. "
            f"Make shards with `{MAKE_SHARDS}`."
        )
    if missing_image:
        warnings.warn(
            f"{shard}: {len(missing_image)} sample(s) without an image member were left out "
            f"of the index (first: {missing_image[0]}).",
            stacklevel=3,
        )
    most = max(caption_counts)
    if most and 0 in caption_counts:
        raise DataFormatError(
            f"{shard}: sample {keys[caption_counts.index(0)]} has no caption (.txt or json "
            f"'caption') while others have captions; give every sample a caption."
        )
    return rows, most


def _header_row(shard_bytes: int, samples: int, num_captions: int) -> tuple[int, ...]:
    """Row 0 of an index: (magic, the shard's size in bytes, samples, captions per sample, 0...)."""
    return (_INDEX_MAGIC, shard_bytes, samples, num_captions, 0, 0, 0, 0)


def build_index(shard: Path) -> Path:
    """Scan ``shard`` and write its index beside it (atomically); returns the index path."""
    shard = Path(shard)
    if not shard.is_file():
        raise DataNotFoundError(f"Shard not found: {shard.absolute()}.")
    size = shard.stat().st_size
    rows, num_captions = _scan_shard(shard)
    table = np.array([_header_row(size, len(rows), num_captions), *rows], dtype=INDEX_DTYPE)
    target = index_path(shard)
    temp = target.with_name(target.name + f".tmp{os.getpid()}")
    with open(temp, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, table)
    os.replace(temp, target)
    return target


def _member_size_before(fd: int, data_offset: int) -> int | None:
    """Size field of the tar header block right before a member's data (None if unreadable)."""
    block = os.pread(fd, tarfile.BLOCKSIZE, data_offset - tarfile.BLOCKSIZE)
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape").size
    except tarfile.HeaderError:
        return None


def load_index(shard: Path) -> tuple[np.memmap, int]:
    """A shard's index rows (memory-mapped) and captions per sample; checks it is current.

    An index is stale when the shard's size changed, or when the tar headers before its
    first and last image no longer describe members of the indexed size. (The modification
    time is not compared: copying shards changes it without changing them.)
    """
    path = index_path(shard)
    rebuild = f"Build it with `{_index_command(shard)}`."
    if not path.is_file():
        raise DataFormatError(f"Shard {shard} has no index ({path.name} is missing). {rebuild}")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path} is not a readable index ({e}). {rebuild}") from None
    if table.dtype != INDEX_DTYPE or table.ndim != 1 or len(table) < 2 or table[0]["image_offset"] != _INDEX_MAGIC:
        raise DataFormatError(f"{path} is not an ssl_zoo shard index of this version. {rebuild}")
    header, rows = table[0], table[1:]
    stale = f"The index {path.name} is stale: {shard}"
    size = shard.stat().st_size
    if size != header["image_size"]:
        raise DataFormatError(
            f"{stale} is {size} bytes, but the index was built for {header['image_size']}. "
            f"Rebuild it with `{_index_command(shard)}`."
        )
    fd = os.open(shard, os.O_RDONLY)
    try:
        for row in (rows[0], rows[-1]):
            if _member_size_before(fd, int(row["image_offset"])) != row["image_size"]:
                raise DataFormatError(
                    f"{stale} no longer holds an image of {row['image_size']} bytes at byte "
                    f"{row['image_offset']}. Rebuild it with `{_index_command(shard)}`."
                )
    finally:
        os.close(fd)
    return rows, int(header["text_size"])


# ----------------------------------------------------------------------------------------
# Random access.


class ShardSet:
    """Samples of several indexed shards, numbered 0..N-1 in shard order, read at random.

    Holds one memory-mapped index per shard and an array of cumulative counts; no Python
    object per sample. Files are opened on first use in each process (the state pickles
    without descriptors or mappings, and a forked DataLoader worker opens its own).
    """

    def __init__(self, shards: Sequence[str | Path]):
        self.paths = [Path(p) for p in shards]
        if not self.paths:
            raise DataNotFoundError(f"No shards given. Make shards with `{MAKE_SHARDS}`.")
        loaded = [load_index(p) for p in self.paths]
        counts = [count for _, count in loaded]
        if max(counts) and 0 in counts:
            raise DataFormatError(
                f"Shard {self.paths[counts.index(0)]} has no captions while other shards of "
                "the same set do; use shards that all have captions, or none."
            )
        # A shard's samples may have fewer captions than the most any sample has; they are
        # cycled to this count, as tokenize_captions does in memory.
        self.num_captions = max(counts)  # 0: no captions
        self._attach([rows for rows, _ in loaded])
        self.has_labels = all(bool((rows["label"] >= 0).all()) for rows in self._rows)
        classes = self.paths[0].parent / "classes.txt"
        self.classes = classes.read_text(encoding="utf-8").splitlines() if classes.is_file() else None

    def _attach(self, rows: list[np.memmap]) -> None:
        """Hold the per-shard index rows; no file is open yet in this process."""
        self._rows = rows  # one np.memmap of INDEX_DTYPE per shard
        self._starts = np.cumsum([0] + [len(r) for r in rows])  # (S + 1,) first sample of each shard
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, in this process
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_rows", "_starts", "_files", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        # A copy in another process (e.g. a spawned DataLoader worker): the original checked
        # these indexes; map them again.
        self.__dict__.update(state)
        self._attach([np.load(index_path(p), mmap_mode="r")[1:] for p in self.paths])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def has_captions(self) -> bool:
        return self.num_captions > 0

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) class index of every sample, -1 where a sample has none (from the indexes)."""
        return np.concatenate([np.asarray(rows["label"]) for rows in self._rows])

    def locate(self, samples: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of each global sample number, as two int64 arrays."""
        samples = np.asarray(samples, dtype=np.int64)
        if samples.size and (samples.min() < 0 or samples.max() >= len(self)):
            raise IndexError(f"sample numbers must lie in [0, {len(self)}); got {samples.min()}..{samples.max()}")
        shards = np.searchsorted(self._starts, samples, side="right") - 1
        return shards, samples - self._starts[shards]

    def _entry(self, index: int) -> tuple[int, int, np.void]:
        """(shard, row, index row) of one sample."""
        shards, rows = self.locate([index])
        shard, row = int(shards[0]), int(rows[0])
        return shard, row, self._rows[shard][row]

    def describe(self, index: int) -> str:
        """Where sample ``index`` lives, for messages: '<shard> (sample r, image at byte o)'."""
        shard, row, entry = self._entry(index)
        return f"{self.paths[shard]} (sample {row}, image at byte {entry['image_offset']})"

    def labels_of(self, samples: Sequence[int]) -> np.ndarray:
        """int64 (B,) class index of each sample (-1: none), from the indexes."""
        shards, rows = self.locate(samples)
        return np.array(
            [self._rows[s][r]["label"] for s, r in zip(shards.tolist(), rows.tolist())], dtype=np.int64
        )

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            if len(self._files) >= _MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        else:
            self._files.move_to_end(shard)
        return fd

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise DataFormatError(
                f"{self.paths[shard]} ended before byte {offset + size}: the shard was "
                f"truncated after indexing. Copy it again, or rebuild its index with "
                f"`{_index_command(self.paths[shard])}`."
            )
        return data

    def read_image_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index``, as stored in the shard."""
        shard, _, entry = self._entry(index)
        return self._read(shard, int(entry["image_offset"]), int(entry["image_size"]))

    def read_captions(self, index: int) -> list[str]:
        """Every caption of sample ``index`` (read from the shard now; [] without captions)."""
        shard, row, entry = self._entry(index)
        where = f"{self.paths[shard]} (sample {row})"
        if entry["text_offset"] >= 0:
            text = self._read(shard, int(entry["text_offset"]), int(entry["text_size"]))
            return _captions_from_text(text, where)
        if entry["json_offset"] >= 0:
            fields = _json_fields(self._read(shard, int(entry["json_offset"]), int(entry["json_size"])), where)
            return _captions_from_json(fields)
        return []

    def read_caption(self, index: int, caption: int = 0) -> str:
        """Caption number ``caption`` of sample ``index``; a sample with fewer than
        ``num_captions`` captions cycles through its own (as ``tokenize_captions`` does)."""
        captions = self.read_captions(index)
        if not captions:
            raise DataFormatError(f"{self.describe(index)} has no caption (.txt or json 'caption').")
        return captions[caption % len(captions)]

    def close(self) -> None:
        """Close this process's open shard files (they reopen on the next read)."""
        while self._files:
            os.close(self._files.popitem()[1])


# ----------------------------------------------------------------------------------------
# Decoding.


def _is_jpeg(data: bytes | Tensor) -> bool:
    head = bytes(data[:3].tolist()) if isinstance(data, Tensor) else data[:3]
    return head == b"\xff\xd8\xff"


def _decode_one(data: bytes | Tensor) -> Tensor | None:
    """One image of any format to uint8 (3, H, W) on the CPU, or None if it is unreadable.

    TorchCodec first; PIL for what it cannot read (e.g. BMP, TIFF, 16-bit grayscale TIFFs),
    with ``_to_rgb``'s handling of 16-bit and palette images.
    """
    try:
        image = decode_image(data, mode="RGB")
        return image[0] if image.ndim == 4 else image  # an animated image: its first frame
    except _CODEC_ERRORS:
        pass
    raw = bytes(data.numpy()) if isinstance(data, Tensor) else data
    try:
        with Image.open(io.BytesIO(raw)) as img:
            rgb = np.asarray(_to_rgb(img))  # (H, W, 3)
    except _PIL_ERRORS:
        return None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def _resize_crop(image: Tensor, size: int) -> Tensor:
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
    jpegs = [i for i, data in enumerate(encoded) if _is_jpeg(data)]
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode="RGB", device=device)
        except _CODEC_ERRORS:
            decoded = [None] * len(jpegs)  # retried one by one below, to find the bad one(s)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, image in enumerate(images):
        if image is None and (image := _decode_one(encoded[i])) is not None:
            images[i] = image.to(device)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        where = f": {', '.join(sorted(set(names))[:5])}" if names else ""
        raise DataFormatError(
            f"None of the {len(encoded)} images of a batch could be decoded{where}. The data "
            f"is corrupt or not an image format (JPEG, PNG, WebP, ...); remake the shards "
            f"with `{MAKE_SHARDS}`."
        )
    skipped = len(encoded) - len(good)
    if skipped:
        # Each bad image takes the next good one (cyclically): deterministic for a batch.
        for i in range(len(images)):
            if images[i] is None:
                images[i] = images[next((j for j in good if j > i), good[0])]
    return torch.stack([_resize_crop(image, size) for image in images]), skipped


# ----------------------------------------------------------------------------------------
# The training dataset.


def _as_tensor(data: bytes) -> Tensor:
    """Encoded bytes as a 1-D uint8 tensor (what TorchCodec and pinned transfers take)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


class ShardDataset(Dataset):
    """Training batches from shards, a whole batch per ``__getitems__`` call.

    Items are sample numbers, or (sample, caption) pairs when there are captions (as
    ``EpochBatchSampler`` builds them). A batch is a dict like ``InMemoryDataset``'s:

    - ``"image"``: uint8 (B, 3, S, S), decoded in the DataLoader worker (``decode="worker"``),
      or ``"encoded"``: B 1-D uint8 tensors and ``"index"``: int64 (B,) sample numbers,
      for ``decode_images(..., device="cuda")`` after the transfer (``decode="device"``);
    - ``"label"``: int64 (B,), when every sample has a label;
    - ``"tokens"``: int64 (B, L), when ``tokenize`` (a text method's: strings -> (n, L)) is given;
    - ``"skipped"``: int64 scalar, the images of this batch replaced because they could not
      be decoded (0 with ``decode="device"``, where decode_images counts them).
    """

    def __init__(
        self,
        shards: ShardSet,
        image_size: int,
        decode: Literal["worker", "device"] = "worker",
        tokenize: Callable[[list[str]], Tensor] | None = None,
        samples: np.ndarray | None = None,
    ):
        if decode not in ("worker", "device"):
            raise ValueError(f"decode must be 'worker' or 'device', not {decode!r}")
        if tokenize is not None and not shards.has_captions:
            raise DataFormatError(
                f"The shards {shards.paths[0].parent} have no captions (.txt or json "
                "'caption' members), and captions were asked for. Use shards made from a "
                "pairs file (--from pairs FILE)."
            )
        self.shards = shards
        self.image_size = image_size
        self.decode = decode
        self.tokenize = tokenize  # called in the loader's workers: it must pickle
        # The sample numbers this dataset serves (None: all); item i is samples[i]. A part
        # held out for the monitors is left out of training this way.
        self.samples = samples

    def __len__(self) -> int:
        return len(self.shards) if self.samples is None else len(self.samples)

    def __getitems__(self, items: list[int] | list[tuple[int, int]]) -> dict[str, Tensor | list[Tensor]]:
        index = torch.as_tensor(items)  # (B,) samples or (B, 2) sample, caption
        samples = index[:, 0] if index.ndim == 2 else index
        samples = (samples if self.samples is None else torch.from_numpy(self.samples[samples.numpy()])).tolist()
        encoded = [self.shards.read_image_bytes(i) for i in samples]
        if self.decode == "worker":
            shards, rows = self.shards.locate(samples)
            names = [f"{self.shards.paths[s]} (sample {r})" for s, r in zip(shards.tolist(), rows.tolist())]
            images, skipped = decode_images(encoded, self.image_size, names=names)
            batch: dict[str, Tensor | list[Tensor]] = {"image": images}  # uint8 (B, 3, S, S)
        else:
            batch = {"encoded": [_as_tensor(data) for data in encoded], "index": torch.tensor(samples)}
            skipped = 0
        if self.shards.has_labels:
            batch["label"] = torch.from_numpy(self.shards.labels_of(samples))
        if self.tokenize is not None:
            columns = index[:, 1].tolist() if index.ndim == 2 else [0] * len(samples)
            captions = [self.shards.read_caption(i, c) for i, c in zip(samples, columns)]
            batch["tokens"] = self.tokenize(captions)  # (B, L)
        batch["skipped"] = torch.tensor(skipped, dtype=torch.int64)
        return batch


def load_shard_images(shards: ShardSet, samples: np.ndarray, image_size: int, name: str, chunk: int = 256) -> ImageSet:
    """Decode the given samples into an in-memory ``ImageSet`` (labels, captions too): the
    monitors' small, bounded sets (a kNN bank, a validation subset), never a whole dataset."""
    images = []
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk].tolist()
        images.append(decode_images([shards.read_image_bytes(i) for i in part], image_size)[0])
    labels = torch.from_numpy(shards.labels_of(samples)) if shards.has_labels else None
    classes = None
    if labels is not None:  # shards without a classes.txt (img2dataset's) name classes by number
        classes = shards.classes or [str(c) for c in range(int(shards.labels.max()) + 1)]
    captions = [shards.read_captions(i) for i in samples.tolist()] if shards.has_captions else None
    return ImageSet(torch.cat(images), labels, classes=classes, captions=captions, name=name)
