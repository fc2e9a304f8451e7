"""Make indexed WebDataset shards from an image folder or an image-text pairs file.

Training from shards (``ssl_zoo.data.shards``) decodes each batch from compact JPEGs
instead of holding the decoded dataset in memory. The converter does the expensive,
once-only part up front: every image is decoded (PIL, so CMYK, grayscale, palette, RGBA and
16-bit images all become correct RGB), its shorter side is resized to ``size`` (bicubic,
antialiased) and the centre ``size`` x ``size`` crop is kept, then it is re-encoded as a
JPEG of quality 95 (img2dataset's default; PIL's default 4:2:0 chroma subsampling): JPEG
keeps the shards small and is the one format nvJPEG decodes on the GPU. A batch then only
needs decoding, never resizing.

Layout of ``out``: ``shard-000000.tar``, ``shard-000001.tar``, ... (``shard_size`` samples
each; members ``KEY.jpg`` plus ``KEY.cls`` and/or ``KEY.txt``, keys being running sample
numbers), each with its index ``shard-XXXXXX.tar.idx.npy``; ``classes.txt`` (folder
sources with class sub-folders: one class name a line, line number = label; a flat folder
of images has no classes, so no ``KEY.cls`` and no ``classes.txt``); ``convert.json``, the state that
makes a conversion resumable.

A conversion is deterministic (files in sorted order) and resumable: each shard is written
under a temporary name and renamed once complete, and ``convert.json`` records the settings
and, per finished shard, how many samples and source files it took. A rerun with the same
settings skips the finished shards and goes on from the next file; the result is
byte-identical to an uninterrupted run. A rerun with other settings is refused.

    python -m ssl_zoo shards --from folder DIR --out OUT --size S [--shard-size N] [--workers N]
    python -m ssl_zoo shards --from pairs FILE.csv --out OUT --size S
    python -m ssl_zoo shards --index PATH [--workers N]   # index existing shards (e.g. img2dataset's)
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ssl_zoo.atomic import atomic_path, atomic_write
from ssl_zoo.data.decode import PIL_ERRORS, load_image_file
from ssl_zoo.data.shards.index import build_index, index_path, load_index
from ssl_zoo.data.shards.paths import expand_shard_paths
from ssl_zoo.data.sources import IMAGE_EXTENSIONS, list_image_folder, read_pairs_file
from ssl_zoo.errors import DataFormatError, DataNotFoundError, RecipeError

JPEG_QUALITY = 95
MANIFEST = "convert.json"
_MANIFEST_VERSION = 1


@dataclass
class Sample:
    """One sample to write: encoded image bytes, and its label and/or captions."""

    image: bytes
    ext: str = "jpg"  # member extension of the image: jpg, png or webp
    label: int | None = None
    captions: list[str] | None = None


@dataclass
class ConvertSummary:
    """What a conversion wrote and what it left out."""

    out: Path
    samples: int  # in all shards, including those of an earlier run
    shards: int
    resumed_shards: int  # finished by an earlier run and kept
    classes: list[str] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    empty_classes: list[str] = field(default_factory=list)  # class folders without images
    unlabelled_folder: bool = False  # a folder source without class sub-folders
    seconds: float = 0.0

    def __str__(self) -> str:
        kept = f" ({self.resumed_shards} kept from an earlier run)" if self.resumed_shards else ""
        lines = [
            f"Wrote {self.samples:,} samples in {self.shards} shard(s){kept} to {self.out} in {self.seconds:.1f} s."
        ]
        if self.classes is not None:
            lines.append(f"  {len(self.classes)} classes, listed in {self.out / 'classes.txt'}")
        if self.unlabelled_folder:
            lines.append("  unlabelled: the folder has no class sub-folders (no .cls members, no classes.txt)")
        if self.empty_classes:
            lines.append(
                f"  {len(self.empty_classes)} empty class folder(s), kept as classes without images: "
                + ", ".join(self.empty_classes)
            )
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s):")
            lines += [f"    {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    """A source image and what goes with it."""

    path: Path
    label: int | None = None
    captions: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------------------
# Writing shards.


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same bytes every run
    tar.addfile(info, io.BytesIO(data))


def write_shard(samples: Sequence[Sample], path: Path, first_key: int) -> Path:
    """Write ``samples`` as one shard (keys ``first_key``, ``first_key + 1``, ...) and its index.

    The tar is written under a temporary name and renamed when complete, so ``path`` is
    either absent or whole.
    """
    with atomic_path(path) as temp, tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, sample in enumerate(samples, start=first_key):
            _add_member(tar, f"{key:09d}.{sample.ext}", sample.image)
            if sample.label is not None:
                _add_member(tar, f"{key:09d}.cls", str(sample.label).encode())
            if sample.captions is not None:
                text = "".join(c.replace("\n", " ").replace("\r", " ") + "\n" for c in sample.captions)
                _add_member(tar, f"{key:09d}.txt", text.encode("utf-8"))
    build_index(path)
    return path


def write_shards(samples: Iterable[Sample], out: Path, shard_size: int) -> list[Path]:
    """Write ``samples`` as ``out/shard-000000.tar``, ... of ``shard_size`` samples, indexed."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pending: list[Sample] = []
    written = 0
    for sample in samples:
        pending.append(sample)
        if len(pending) == shard_size:
            paths.append(write_shard(pending, out / f"shard-{len(paths):06d}.tar", written))
            written, pending = written + len(pending), []
    if pending:
        paths.append(write_shard(pending, out / f"shard-{len(paths):06d}.tar", written))
    return paths


# ----------------------------------------------------------------------------------------
# Listing sources.


CLASS_LISTS = {"imagenet100": Path(__file__).parent.parent / "imagenet100.txt"}  # lists that ship with ssl_zoo


def read_class_list(name_or_path: str) -> list[str]:
    """A class list: a name from ``CLASS_LISTS`` or a text file, one class folder name a
    line (``#`` starts a comment)."""
    path = CLASS_LISTS.get(name_or_path, Path(name_or_path).expanduser())
    if not path.is_file():
        raise DataNotFoundError(
            f"Class list not found: {name_or_path}. Give {' or '.join(CLASS_LISTS)}, or a text file "
            "with one class folder name a line."
        )
    names = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [name for name in names if name]


def _folder_jobs(source: Path, only: list[str] | None = None) -> tuple[list[_Job], list[str] | None, list[str]]:
    """Images of ``source/<class>/**``, or of a flat ``source`` without sub-folders (unlabelled,
    ``list_image_folder``): (jobs in sorted order, classes or None, empty classes).
    ``only``: the class folders to take (all when None); each must exist."""
    listing = list_image_folder(source, classes=only)
    jobs = [
        _Job(path, label=label if listing.labelled else None)
        for label, files in enumerate(listing.files)
        for path in files
    ]
    if not jobs:  # (a flat folder without images is already an error of list_image_folder)
        raise DataFormatError(
            f"{source} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)} in its "
            f"class folders {listing.classes}); add images."
        )
    empty = [name for name, files in zip(listing.classes or [], listing.files) if not files]
    return jobs, listing.classes, empty


def _pairs_jobs(source: Path) -> list[_Job]:
    """Rows of a CSV/JSONL pairs file, one job per image (its captions in file order). A
    missing image is skipped at conversion time, with its reason, like a corrupt one."""
    captions = read_pairs_file(source, require_images=False)
    return [_Job(path, captions=tuple(c)) for path, c in captions.items()]


# ----------------------------------------------------------------------------------------
# Converting.


def _prepare(job: tuple[Path, int]) -> tuple[bytes | None, str]:
    """(JPEG bytes of the resized, centre-cropped image, "") or (None, why it was skipped)."""
    path, size = job
    try:
        pixels = load_image_file(path, size)  # RGB uint8 (size, size, 3)
    except FileNotFoundError:
        return None, "file not found"
    except PIL_ERRORS as e:
        return None, f"unreadable image ({e})"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), ""


def _prepared(jobs: Sequence[_Job], size: int, workers: int) -> Iterator[tuple[bytes | None, str]]:
    """``_prepare`` of each job, in order, in ``workers`` processes."""
    tasks = ((job.path, size) for job in jobs)
    if workers == 1:
        yield from map(_prepare, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_prepare, tasks, chunksize=16)


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=1))


def _listing_digest(jobs: Sequence[_Job], source: Path) -> str:
    """A hash of the file list with labels and captions: a rerun must see the same source."""
    digest = hashlib.sha256()
    for job in jobs:
        digest.update(repr((os.path.relpath(job.path, source.parent), job.label, job.captions)).encode())
    return digest.hexdigest()


def _finished_shards(out: Path, settings: dict) -> list[dict]:
    """Shards an earlier run of the same conversion finished (and that are still there)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise RecipeError(
                f"{out} is not empty and holds no {MANIFEST}, so it is not a conversion to "
                "resume; give an empty or new folder as --out."
            )
        return []
    try:
        state = json.loads(manifest.read_text())
        earlier, shards = state["settings"], state["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataFormatError(
            f"{manifest} is damaged ({e}); delete {out} and convert again."
        ) from None
    if earlier != settings:
        changed = ", ".join(
            f"{k}: {earlier.get(k)!r} before, {settings[k]!r} now" for k in settings if earlier.get(k) != settings[k]
        )
        raise RecipeError(
            f"{out} holds a conversion with other settings ({changed}). Rerun with the earlier "
            "settings to resume it, or give another --out (or delete that folder)."
        )
    for position, shard in enumerate(shards):  # a shard deleted since: redo it and the rest
        path = out / shard["name"]
        if not path.is_file() or not index_path(path).is_file():
            return shards[:position]
    return shards


def _check_arguments(source_kind: str, out: Path, size: int, shard_size: int, workers: int) -> None:
    if source_kind not in ("folder", "pairs"):
        raise RecipeError(
            f"Unknown source kind '{source_kind}'; use 'folder' (an image folder) or 'pairs' (a CSV/JSONL file)."
        )
    if size < 8:
        raise RecipeError(f"--size {size} is too small; give the image side in pixels, at least 8 (e.g. 64 or 224).")
    if shard_size < 1 or workers < 1:
        raise RecipeError(f"--shard-size ({shard_size}) and --workers ({workers}) must be at least 1.")
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--out {out} is a file; give a folder for the shards (it is created if missing).")


class _ShardWriter:
    """Fills shards of ``shard_size`` samples in ``out``, recording each finished one in the
    manifest, so that an interrupted conversion resumes after the last shard it finished."""

    def __init__(self, out: Path, settings: dict, finished: list[dict], shard_size: int) -> None:
        self.out, self.settings, self.shard_size = out, settings, shard_size
        self.shards = list(finished)
        self.written = sum(s["samples"] for s in self.shards)  # samples in the finished shards
        self.pending: list[Sample] = []
        self.skipped: list[list[str]] = []  # [path, why] of the files skipped since the last shard

    @property
    def first_file(self) -> int:
        """The first source file no finished shard covers."""
        return self.shards[-1]["files_end"] if self.shards else 0

    def add(self, job: _Job, data: bytes | None, reason: str, position: int) -> None:
        """The prepared file ``position`` of the listing: a sample, or a skipped file."""
        if data is None:
            self.skipped.append([str(job.path), reason])
        else:
            captions = list(job.captions) if job.captions is not None else None
            self.pending.append(Sample(data, label=job.label, captions=captions))
        if len(self.pending) == self.shard_size:
            self._finish_shard(position + 1)

    def close(self, files: int) -> None:
        """After the last of the listing's ``files``: the last, partial shard."""
        if self.pending:
            self._finish_shard(files)
        elif self.skipped and self.shards:  # unreadable files after the last full shard: recorded with it
            self.shards[-1]["skipped"] += self.skipped
            self.shards[-1]["files_end"] = files
            self.write_manifest()

    def _finish_shard(self, files_end: int) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        write_shard(self.pending, self.out / name, self.written)
        self.shards.append({"name": name, "samples": len(self.pending), "files_end": files_end, "skipped": self.skipped})
        self.write_manifest()
        self.written, self.pending, self.skipped = self.written + len(self.pending), [], []

    def write_manifest(self) -> None:
        _write_json(self.out / MANIFEST, {"settings": self.settings, "shards": self.shards})


def convert(
    source_kind: str,
    source: str | Path,
    out: str | Path,
    size: int,
    shard_size: int = 10_000,
    workers: int = 1,
    progress: bool = True,
    classes: list[str] | None = None,
) -> ConvertSummary:
    """Convert an image folder (``"folder"``: DIR/<class>/**/image, or DIR/image without
    labels) or a pairs file (``"pairs"``: CSV ``path,caption`` or JSONL) to indexed shards in
    ``out``.

    Resumes an interrupted conversion of the same source and settings into ``out``.
    Unreadable files are skipped and listed in the summary with the reason. ``classes``:
    only these class folders of an image folder (e.g. ``read_class_list("imagenet100")``).
    """
    started = time.perf_counter()
    source, out = Path(source).expanduser(), Path(out).expanduser()
    _check_arguments(source_kind, out, size, shard_size, workers)
    if source_kind == "folder":
        jobs, classes, empty = _folder_jobs(source, classes)
    else:
        jobs, classes, empty = _pairs_jobs(source), None, []
    settings = {
        "version": _MANIFEST_VERSION, "source_kind": source_kind, "source": str(source.resolve()),
        "size": size, "shard_size": shard_size, "files": len(jobs), "listing": _listing_digest(jobs, source),
    }
    writer = _ShardWriter(out, settings, _finished_shards(out, settings), shard_size)
    resumed, first_file = len(writer.shards), writer.first_file
    out.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (out / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    writer.write_manifest()

    with tqdm(total=len(jobs), initial=first_file, unit="img", disable=not progress, file=sys.stderr) as bar:
        for position, (data, reason) in enumerate(_prepared(jobs[first_file:], size, workers), start=first_file):
            writer.add(jobs[position], data, reason, position)
            bar.update()
    writer.close(len(jobs))
    return _summary(writer, source, len(jobs), classes, empty, source_kind, resumed, started)


def _summary(writer: _ShardWriter, source: Path, files: int, classes: list[str] | None, empty: list[str],
             source_kind: str, resumed: int, started: float) -> ConvertSummary:
    shards = writer.shards
    if not shards:  # every file was skipped
        reasons = "; ".join(f"{path}: {reason}" for path, reason in writer.skipped[:5])
        raise DataFormatError(
            f"None of the {files} images of {source} could be read ({reasons}); no shard was written."
        )
    return ConvertSummary(
        out=writer.out,
        samples=sum(s["samples"] for s in shards),
        shards=len(shards),
        resumed_shards=resumed,
        classes=classes,
        skipped=[(path, reason) for s in shards for path, reason in s["skipped"]],
        empty_classes=empty,
        unlabelled_folder=source_kind == "folder" and classes is None,
        seconds=time.perf_counter() - started,
    )


def _index_if_needed(shard: Path) -> Path | None:
    """Index ``shard`` unless its index is current; the index written, or None."""
    try:
        load_index(shard)
    except DataFormatError:
        return build_index(shard)
    return None


def _indexed(shards: Sequence[Path], workers: int) -> Iterator[Path | None]:
    """``_index_if_needed`` of each shard, in order, in ``workers`` processes."""
    if workers == 1:
        yield from map(_index_if_needed, shards)
        return
    # A small shard takes about a millisecond: chunks keep the pool's messages from costing
    # more than the work.
    chunk = max(1, min(64, len(shards) // (workers * 8)))
    with multiprocessing.Pool(min(workers, len(shards))) as pool:
        yield from pool.imap(_index_if_needed, shards, chunksize=chunk)


def index_shards(root: str | Path, workers: int = 1, progress: bool = False) -> list[Path]:
    """Index the shards ``root`` names (a .tar, a folder of them or a brace pattern) that
    have no index or a stale one, in ``workers`` processes; returns the indexes written
    (in shard order). An index is the same bytes whichever process writes it."""
    if workers < 1:
        raise RecipeError(f"--workers ({workers}) must be at least 1.")
    shards = expand_shard_paths(root)
    bar = tqdm(_indexed(shards, workers), total=len(shards), unit="shard", disable=not progress, file=sys.stderr)
    return [path for path in bar if path is not None]
