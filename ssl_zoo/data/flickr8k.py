"""Flickr8k for the CLIP recipes: ``data.name: flickr8k`` reads ``root/flickr8k_64.npz``,
which this module builds from the public download.

    # the two zips of the public release (1 GB and 2 MB), as most Flickr8k code uses them:
    wget https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip
    wget https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip
    python -m ssl_zoo.data.flickr8k Flickr8k_Dataset.zip Flickr8k_text.zip --out data/flickr8k

It checks both zips' MD5 sums, then writes the archive format of the repository's test
stand-in (``../shared/data/flickr8k_64.npz``, see its README): the standard train / dev /
test split of the release's ``Flickr_8k.*Images.txt`` files, each image's shorter side
resized to 64 px (bicubic) and centre-cropped (as ``pairs`` and ``folder`` data are), stored
as a JPEG of quality 90, with the five captions of ``Flickr8k.token.txt`` in their order.
The zips are read as they are; nothing is unpacked.

Flickr8k is for research use; cite Hodosh, Young and Hockenmaier, "Framing Image
Description as a Ranking Task", JAIR 2013.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ssl_zoo.atomic import atomic_path
from ssl_zoo.data.decode import load_image_file
from ssl_zoo.data.sources import load_shared_flickr8k
from ssl_zoo.data.spec import DatasetSpec
from ssl_zoo.errors import DataFormatError, DataNotFoundError, SslZooError

if TYPE_CHECKING:
    from ssl_zoo.data.imageset import ImageSet
    from ssl_zoo.recipe import DataConfig

RELEASE = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
# NOTE: the MD5 sums the R torchvision package checks for these two files
# (mlverse/torchvision, R/dataset-flickr.R); not re-measured here, where there is no internet.
PUBLISHED_MD5 = {
    "Flickr8k_Dataset.zip": "f18a1e2920de5bd84dae7cf08ec78978",
    "Flickr8k_text.zip": "bf6c1abcb8e4a833b7f922104de18627",
}
ARCHIVE = "flickr8k_64.npz"  # the file name load_shared_flickr8k reads
SIZE = 64
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
CAPTIONS_FILE = "Flickr8k.token.txt"


def how_to_build(root: Path) -> str:
    """The commands that make ``root/flickr8k_64.npz``, for error messages."""
    return (
        f"Build it from the public Flickr8k download: fetch {RELEASE}/Flickr8k_Dataset.zip and "
        f"{RELEASE}/Flickr8k_text.zip (1 GB and 2 MB), then run `python -m ssl_zoo.data.flickr8k "
        f"Flickr8k_Dataset.zip Flickr8k_text.zip --out {root}` (it checks their MD5 sums)."
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _members(archive: zipfile.ZipFile) -> dict[str, str]:
    """File name -> member name, leaving out the macOS resource forks (__MACOSX/, ._*) that
    the release's zips carry beside every file."""
    names = {}
    for member in archive.namelist():
        path = PurePosixPath(member)
        if member.endswith("/") or "__MACOSX" in path.parts or path.name.startswith("._"):
            continue
        names[path.name] = member
    return names


def _read_captions(text: str) -> dict[str, list[str]]:
    """``Flickr8k.token.txt``'s ``<file>#<k>\\t<caption>`` lines -> each file's captions by k."""
    numbered: dict[str, dict[int, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        file, hash_, k = key.rpartition("#")
        if not tab or not hash_ or not k.isdigit():
            raise DataFormatError(
                f"{CAPTIONS_FILE}, line {number}: expected '<image>.jpg#<n><TAB><caption>', got {line[:80]!r}."
            )
        numbered.setdefault(file, {})[int(k)] = caption.strip()
    return {file: [by_k[k] for k in sorted(by_k)] for file, by_k in numbered.items()}


def _jpeg_parts(jpeg: bytes) -> tuple[bytes, bytes]:
    """(header, body): the header runs to the end of the start-of-scan segment. Same-size
    JPEGs written with the same settings share it, so the archive stores it once."""
    sos = jpeg.index(b"\xff\xda")
    end = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    return jpeg[:end], jpeg[end:]


def build_flickr8k_archive(
    images_zip: str | Path, text_zip: str | Path, out: str | Path, md5: dict[str, str] | None = PUBLISHED_MD5
) -> Path:
    """Write ``out/flickr8k_64.npz`` from the release's two zips and return its path.

    ``md5``: expected sums by zip file name (None: not checked, for a copy from elsewhere).
    Listed images missing from the zip are left out, with a warning naming them; an image
    without exactly five captions is an error.
    """
    zips = {"images": Path(images_zip), "text": Path(text_zip)}
    for path in zips.values():
        if not path.is_file():
            raise DataNotFoundError(f"{path.absolute()} not found. {how_to_build(Path(out))}")
        if md5 is not None and path.name in md5 and (got := _md5(path)) != md5[path.name]:
            raise DataFormatError(
                f"{path}: MD5 {got}, expected {md5[path.name]} (the published {path.name}). "
                f"Download it again from {RELEASE}/{path.name}, or pass --skip-md5 for a copy "
                f"from another source."
            )
    if md5 is not None and (unknown := [p.name for p in zips.values() if p.name not in md5]):
        raise DataFormatError(
            f"No published MD5 for {unknown}: pass the release's files as they are named "
            f"({', '.join(md5)}), or --skip-md5 for a copy from another source."
        )

    with zipfile.ZipFile(zips["text"]) as text:
        files = _members(text)
        missing = [name for name in [CAPTIONS_FILE, *SPLIT_FILES.values()] if name not in files]
        if missing:
            raise DataFormatError(f"{zips['text']} lacks {missing}; is it Flickr8k_text.zip?")
        captions = _read_captions(text.read(files[CAPTIONS_FILE]).decode("utf-8"))
        splits = {
            split: [line.strip() for line in text.read(files[name]).decode("utf-8").splitlines() if line.strip()]
            for split, name in SPLIT_FILES.items()
        }

    arrays: dict[str, np.ndarray] = {}
    header = None
    absent = []
    with zipfile.ZipFile(zips["images"]) as images:
        members = _members(images)
        for split, names in splits.items():
            kept = [name for name in names if name in members]
            absent += [name for name in names if name not in members]
            bodies, offsets = [], [0]
            for name in kept:
                if len(captions.get(name, [])) != 5:
                    raise DataFormatError(
                        f"{CAPTIONS_FILE}: {name} has {len(captions.get(name, []))} captions, expected 5."
                    )
                pixels = load_image_file(io.BytesIO(images.read(members[name])), SIZE)  # (64, 64, 3) uint8
                encoded = io.BytesIO()
                Image.fromarray(pixels).save(encoded, "JPEG", quality=90)
                head, body = _jpeg_parts(encoded.getvalue())
                if header is not None and head != header:  # NOTE: PIL writes one header for one size and quality
                    raise DataFormatError(f"{name}: its 64 px JPEG header differs from the others'; cannot share one.")
                header = head
                bodies.append(body)
                offsets.append(offsets[-1] + len(body))
            arrays[f"{split}_body"] = np.frombuffer(b"".join(bodies), dtype=np.uint8)
            arrays[f"{split}_offsets"] = np.asarray(offsets, dtype=np.int64)
            arrays[f"{split}_captions"] = np.asarray([captions[name] for name in kept], dtype=str)
            arrays[f"{split}_files"] = np.asarray(kept, dtype=str)
    if header is None:
        raise DataFormatError(f"{zips['images']} holds none of the listed images; is it Flickr8k_Dataset.zip?")
    if absent:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        warnings.warn(
            f"{len(absent)} listed image(s) are not in {zips['images']}, left out: {', '.join(absent[:5])}{more}.",
            stacklevel=2,
        )
    arrays["jpeg_header"] = np.frombuffer(header, dtype=np.uint8)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ARCHIVE) as partial, open(partial, "wb") as file:  # a killed build leaves no archive to trust
        np.savez_compressed(file, **arrays)
    return out / ARCHIVE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssl_zoo.data.flickr8k",
        description=f"Build {ARCHIVE} (data.name: flickr8k) from the public Flickr8k zips ({RELEASE}/).",
    )
    parser.add_argument("images_zip", help="Flickr8k_Dataset.zip")
    parser.add_argument("text_zip", help="Flickr8k_text.zip")
    parser.add_argument("--out", required=True, help=f"the folder to write {ARCHIVE} into (the recipe's data.root)")
    parser.add_argument("--skip-md5", action="store_true", help="do not check the zips' MD5 sums (a copy from elsewhere)")
    args = parser.parse_args(argv)
    try:
        path = build_flickr8k_archive(args.images_zip, args.text_zip, args.out, md5=None if args.skip_md5 else PUBLISHED_MD5)
        # Read back as training reads it: the counts are what the recipes will see.
        counts = ", ".join(f"{len(load_shared_flickr8k(path.parent, split))} {split}" for split in SPLIT_FILES)
    except SslZooError as error:
        print(f"ssl_zoo: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {path} ({counts} images). Train on it with --data.name flickr8k --data.root {path.parent}.")
    return 0


def _load_split(config: DataConfig, split: str, seed: int) -> ImageSet:
    archive = Path(config.root).expanduser() / ARCHIVE
    if not archive.is_file():  # (the loader's own message points at the repository's stand-in)
        raise DataNotFoundError(f"Flickr8k archive not found: {archive.absolute()}. {how_to_build(archive.parent)}")
    return load_shared_flickr8k(archive.parent, split)


# The user-facing name of the archive this module builds; the repository's copy of it is
# ``shared_flickr8k`` (sources.py), a test stand-in. Captions, no labels: it trains CLIP
# and scores retrieval on the test split.
DatasetSpec("flickr8k", load=_load_split, splits=("train", "test"), labelled=False, retrieval_split="test").register()

if __name__ == "__main__":
    sys.exit(main())
