"""The index of a shard: a memory-mapped table of where each sample's members lie."""

from __future__ import annotations

import json
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_zoo.atomic import atomic_path
from ssl_zoo.data.shards.paths import MAKE_SHARDS
from ssl_zoo.errors import DataFormatError, DataNotFoundError

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
# Row 0's image_offset: marks an ssl_zoo index (the high bytes) and its layout version (the
# low byte). Version 2 added the label summary to the header row (see _header_row).
_MAGIC_BASE = 0x53535A_494458_00  # "SSZ" "IDX"
_INDEX_VERSION = 2
_INDEX_MAGIC = _MAGIC_BASE | _INDEX_VERSION


@dataclass(frozen=True)
class IndexHeader:
    """What an index's header row says about its shard: enough to open a set of shards
    without mapping any index (a ``ShardSet`` reads only these at open)."""

    shard_bytes: int  # the shard's size when indexed
    samples: int
    num_captions: int  # the most captions any sample has (0: none)
    labelled: int  # samples with a class index
    max_label: int  # the largest class index (-1: none)
    data_offset: int  # where the table (row 0) starts in the index file


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


def _header_row(shard_bytes: int, rows: list[tuple[int, ...]], num_captions: int) -> tuple[int, ...]:
    """Row 0 of an index: (magic, the shard's size in bytes, samples, captions per sample,
    labelled samples, largest label, 0, 0), in the fields image_offset ... label."""
    labels = [row[6] for row in rows]
    labelled = sum(label >= 0 for label in labels)
    return (_INDEX_MAGIC, shard_bytes, len(rows), num_captions, labelled, max(labels), 0, 0)


def _parse_header(
    shard: Path, dtype: np.dtype, shape: tuple[int, ...], first: np.void | None, data_offset: int
) -> IndexHeader:
    """The header of an index whose array has ``dtype`` and ``shape``, row 0 ``first`` and
    its table at ``data_offset``; refuses what is not a current ssl_zoo index. (Runs on every
    map of an index: the messages are built only when one is needed.)"""
    values = first.tolist() if first is not None and dtype == INDEX_DTYPE and len(shape) == 1 and shape[0] >= 2 else None
    if values is None or values[0] != _INDEX_MAGIC:
        path, magic = index_path(shard), values[0] if values else 0
        if magic & ~0xFF == _MAGIC_BASE:
            raise DataFormatError(
                f"{path} is an index of layout version {magic & 0xFF}, written by an older ssl_zoo; "
                f"this one reads version {_INDEX_VERSION}. Rebuild it with `{_index_command(shard)}` "
                f"(or give the shards' folder to --index to rebuild them all)."
            )
        raise DataFormatError(
            f"{path} is not an ssl_zoo shard index of this version. Build it with `{_index_command(shard)}`."
        )
    _, shard_bytes, samples, num_captions, labelled, max_label, _, _ = values
    if samples != shape[0] - 1:
        raise DataFormatError(f"{index_path(shard)} is damaged: its header counts {samples} samples, its table "
                              f"{shape[0] - 1}. Build it with `{_index_command(shard)}`.")
    return IndexHeader(shard_bytes, samples, num_captions, labelled, max_label, data_offset)


def build_index(shard: Path) -> Path:
    """Scan ``shard`` and write its index beside it (atomically); returns the index path."""
    shard = Path(shard)
    if not shard.is_file():
        raise DataNotFoundError(f"Shard not found: {shard.absolute()}.")
    size = shard.stat().st_size
    rows, num_captions = _scan_shard(shard)
    table = np.array([_header_row(size, rows, num_captions), *rows], dtype=INDEX_DTYPE)
    target = index_path(shard)
    with atomic_path(target) as temp, open(temp, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, table)
    return target


def _member_size_before(fd: int, data_offset: int) -> int | None:
    """Size field of the tar header block right before a member's data (None if unreadable)."""
    block = os.pread(fd, tarfile.BLOCKSIZE, data_offset - tarfile.BLOCKSIZE)
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape").size
    except tarfile.HeaderError:
        return None


# How np.save begins the header of an index (numpy has written it so since 1.0); the
# number of rows and ",), }" follow. Parsed by hand: numpy's parser (ast.literal_eval)
# costs about a millisecond an index, 40 s at open for 40,000 shards.
_NPY_HEADER_START = f"{{'descr': {np.lib.format.dtype_to_descr(INDEX_DTYPE)!r}, 'fortran_order': False, 'shape': ("


def _table_layout(start: bytes) -> tuple[int, int] | None:
    """(rows, data offset) of an index from its first bytes, when np.save wrote its header
    the usual way; None otherwise."""
    if start[:8] == b"\x93NUMPY\x01\x00":
        length, text_at = int.from_bytes(start[8:10], "little"), 10
    elif start[:8] == b"\x93NUMPY\x02\x00":
        length, text_at = int.from_bytes(start[8:12], "little"), 12
    else:
        return None
    text = start[text_at : text_at + length].decode("latin1")
    if len(text) != length or not text.startswith(_NPY_HEADER_START):
        return None
    rows, _, rest = text[len(_NPY_HEADER_START) :].partition(",)")
    if not rows.isdigit() or rest.rstrip() != ", }":
        return None
    return int(rows), text_at + length


def read_header(shard: Path) -> IndexHeader:
    """The header of ``shard``'s index: a read of its first few hundred bytes, no lasting
    map or descriptor. Checks that the index exists and is a current ssl_zoo index, not that
    it still matches the shard (``map_rows`` does, when the index is first used)."""
    path = index_path(shard)
    rebuild = f"Build it with `{_index_command(shard)}`."
    try:
        with open(path, "rb") as f:
            start = f.read(1024)
            layout = _table_layout(start)
            if layout is not None:
                first = start[layout[1] : layout[1] + INDEX_DTYPE.itemsize]
            else:  # another writer's header, or no index at all: numpy's parser says which
                f.seek(0)
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy version {version}")
                read_array_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran_order, dtype = read_array_header(f)
                layout = (shape[0] if len(shape) == 1 and not fortran_order and dtype == INDEX_DTYPE else 0), f.tell()
                first = f.read(INDEX_DTYPE.itemsize)
    except FileNotFoundError:
        raise DataFormatError(f"Shard {shard} has no index ({path.name} is missing). {rebuild}") from None
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path} is not a readable index ({e}). {rebuild}") from None
    row = np.frombuffer(first, INDEX_DTYPE)[0] if len(first) == INDEX_DTYPE.itemsize else None
    return _parse_header(shard, INDEX_DTYPE, (layout[0],), row, layout[1])


def map_rows(shard: Path, header: IndexHeader, check: bool = True) -> np.memmap:
    """The rows of ``shard``'s index, memory-mapped where ``read_header`` found them (the map
    also holds a descriptor: CPython's mmap keeps its own). Refuses an index that changed
    since its header was read and, with ``check``, one that is stale.

    An index is stale when the shard's size changed, or when the tar headers before its
    first and last image no longer describe members of the indexed size. (The modification
    time is not compared: copying shards changes it without changing them.)
    """
    path = index_path(shard)
    try:
        # A str, not a Path: np.memmap resolves a Path (realpath), which costs more than the map.
        table = np.memmap(str(path), dtype=INDEX_DTYPE, mode="r", offset=header.data_offset, shape=(header.samples + 1,))
        now = _parse_header(shard, table.dtype, table.shape, table[0], header.data_offset)
    except FileNotFoundError:
        raise DataFormatError(f"Shard {shard} has no index ({path.name} is missing). Build it with "
                              f"`{_index_command(shard)}`.") from None
    except (OSError, ValueError, DataFormatError):
        now = None
    if now != header:
        raise DataFormatError(
            f"{path} changed after it was read: it was rebuilt or rewritten while these shards were "
            f"open. Open the shards again (restart the run)."
        )
    rows = table[1:]
    if check:
        _check_current(shard, header, rows)
    return rows


def _check_current(shard: Path, header: IndexHeader, rows: np.memmap) -> None:
    """Refuse an index that no longer describes its shard (see ``map_rows``)."""
    stale = f"The index {index_path(shard).name} is stale: {shard}"
    size = shard.stat().st_size
    if size != header.shard_bytes:
        raise DataFormatError(
            f"{stale} is {size} bytes, but the index was built for {header.shard_bytes}. "
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


def load_index(shard: Path) -> tuple[np.memmap, int]:
    """A shard's index rows (memory-mapped) and captions per sample; checks it is current."""
    header = read_header(shard)
    return map_rows(shard, header), header.num_captions
