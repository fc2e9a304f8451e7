"""Real datasets, decoded once into an in-memory uint8 ``ImageSet``.

- ``load_shared_cifar10`` / ``load_shared_flickr8k``: the offline numpy archives in the
  repository's ``../shared/data`` folder (JPEGs sharing one header, see its README).
- ``load_torchvision``: ``torchvision.datasets`` registered with ``register_torchvision``
  (CIFAR-10, CIFAR-100 and STL-10 here; a new one is a few lines in its own file, as svhn.py).
- ``load_image_folder``: a torchvision-ImageFolder tree, ``root/<class>/<image>``, or a
  flat folder of unlabelled images, ``root/<image>``.
- ``load_image_text_pairs``: a CSV or JSONL file of ``path,caption`` rows.

Images are stored square: a source image of another size has its shorter side resized to
``image_size`` (bicubic) and is centre-cropped; grayscale, RGBA, palette and 16-bit images
become RGB.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ssl_zoo.data.decode import PIL_ERRORS, load_image_file, resize_crop
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.spec import DatasetSpec
from ssl_zoo.errors import DataFormatError, DataNotFoundError
from ssl_zoo.registry import DATASETS

if TYPE_CHECKING:
    from ssl_zoo.recipe import DataConfig

# File name suffixes that load_image_folder reads (torchvision's IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")



# ----------------------------------------------------------------------------------------
# The shared numpy archives.

_SHARED_SPLITS = {"cifar10": ("train", "test"), "flickr8k": ("train", "dev", "test")}


def _open_shared(
    root: str | Path, file_name: str, dataset: str, split: str
) -> np.lib.npyio.NpzFile:
    """The archive ``root/file_name``, after checking the split name and that the file exists."""
    if split not in _SHARED_SPLITS[dataset]:
        raise DataFormatError(
            f"Unknown split '{split}' for {dataset}; valid splits: "
            f"{', '.join(_SHARED_SPLITS[dataset])}."
        )
    path = Path(root) / file_name
    if not path.is_file():
        raise DataNotFoundError(
            f"{dataset} archive not found: {path.absolute()}. It ships in the repository's "
            f"'../shared/data' folder (next to the ssl_zoo checkout); point the data root at "
            f"that folder (--data.root /path/to/shared/data)."
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFormatError(
            f"{path} is not a readable numpy archive ({e}); copy it again from the "
            f"repository's '../shared/data' folder."
        ) from None


def _decode_shared_jpegs(archive: np.lib.npyio.NpzFile, split: str) -> torch.Tensor:
    """Decode every JPEG of a split, in order, to uint8 (N, 3, H, W).

    A plain loop: decoding CIFAR-10 train (50,000 images) takes ~4 s on one core, and
    thread or process pools over chunks measured slower (per-image work is too small).
    """
    header = archive["jpeg_header"].tobytes()
    body = archive[f"{split}_body"].tobytes()
    offsets = archive[f"{split}_offsets"].tolist()
    images = [
        np.asarray(Image.open(io.BytesIO(header + body[start:end])).convert("RGB"))
        for start, end in zip(offsets[:-1], offsets[1:])
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _read_shared(
    root: str | Path, file_name: str, dataset: str, split: str, keys: list[str]
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Open an archive, check the split's arrays are there, decode its images."""
    with _open_shared(root, file_name, dataset, split) as archive:
        wanted = ["jpeg_header", f"{split}_body", f"{split}_offsets", *keys]
        missing = [k for k in wanted if k not in archive.files]
        if missing:
            raise DataFormatError(
                f"{Path(root) / file_name} lacks the arrays {missing} (found {archive.files}); "
                f"copy it again from the repository's '../shared/data' folder."
            )
        return _decode_shared_jpegs(archive, split), {k: archive[k] for k in keys}


def load_shared_cifar10(root: str | Path, split: str) -> ImageSet:
    """CIFAR-10 from ``root/cifar10.npz``: split "train" (50,000) or "test" (10,000), 32 px."""
    images, arrays = _read_shared(
        root, "cifar10.npz", "cifar10", split, [f"{split}_labels", "classes"]
    )
    return ImageSet(
        images=images,
        labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
        classes=[str(c) for c in arrays["classes"]],
        name="cifar10",
    )


def load_shared_flickr8k(root: str | Path, split: str) -> ImageSet:
    """Flickr8k from ``root/flickr8k_64.npz``: "train", "dev" or "test", 64 px, 5 captions."""
    images, arrays = _read_shared(
        root, "flickr8k_64.npz", "flickr8k", split, [f"{split}_captions"]
    )
    captions = [[str(c) for c in row] for row in arrays[f"{split}_captions"].tolist()]
    return ImageSet(images=images, captions=captions, name="flickr8k")


# ----------------------------------------------------------------------------------------
# torchvision datasets.

@dataclass(frozen=True)
class TorchvisionSource:
    """How one ``torchvision.datasets`` class is opened and read into an ``ImageSet``."""

    dataset_class: str  # its name in torchvision.datasets ("CIFAR10")
    splits: tuple[str, ...]
    # (torchvision's class, root, split, download) -> its dataset object; default: the
    # train=True/False constructor of CIFAR's kind.
    open: Callable[[type, str, str, bool], Any] | None = None
    # its dataset object -> (uint8 (N, 3, H, W) images, int64 (N,) labels, class names);
    # default: CIFAR's (N, H, W, 3) ``data``, ``targets`` and ``classes``.
    arrays: Callable[[Any], tuple[torch.Tensor, torch.Tensor, list[str]]] | None = None
    # (root, split) -> where to download its files by hand; default: from CIFAR's ``url``
    # and ``base_folder``.
    by_hand: Callable[[Path, str], str] | None = None


TORCHVISION: dict[str, TorchvisionSource] = {}  # name -> source, filled by register_torchvision


def _cifar_arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> NCHW
    return images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def load_torchvision(
    name: str, root: str | Path, split: str, download: bool, image_size: int | None = None
) -> ImageSet:
    """A dataset of ``register_torchvision`` via torchvision, optionally resized to ``image_size``."""
    from torchvision import datasets  # imported here: only this loader needs it

    if name not in TORCHVISION:
        DATASETS.names()  # every dataset module imported: those in files of their own register there
    if name not in TORCHVISION:
        raise DataFormatError(f"Unknown torchvision dataset '{name}'; valid names: {', '.join(TORCHVISION)}.")
    source = TORCHVISION[name]
    if split not in source.splits:
        raise DataFormatError(f"Unknown split '{split}' for {name}; valid splits: {', '.join(source.splits)}.")
    cls = getattr(datasets, source.dataset_class)
    try:
        if source.open is not None:
            ds = source.open(cls, str(root), split, download)
        else:
            ds = cls(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # "Dataset not found or corrupted", URLError, ...
        where = Path(root).absolute()
        by_hand = (source.by_hand(where, split) if source.by_hand is not None
                   else f"download {cls.url} yourself and unpack it there (it makes {where / cls.base_folder})")
        if download:
            raise DataNotFoundError(
                f"{name} not found under {where} and the download failed (torchvision: {e}; no "
                f"internet?). Run once where there is internet (`download: true` saves it there), "
                f"or {by_hand}."
            ) from None
        raise DataNotFoundError(
            f"{name} not found under {where} (torchvision: {e}). To get it, run once with internet "
            f"and `download: true` (--data.download true), or {by_hand}."
        ) from None

    images, labels, classes = (source.arrays or _cifar_arrays)(ds)
    if bool((labels == -1).all()):  # an unlabelled split (STL-10's)
        labels = None
    if image_size is not None:
        images = resize_crop(images, image_size)
    return ImageSet(
        images=images.contiguous(),
        labels=labels,
        classes=classes if labels is not None else None,
        name=name,
    )


def register_torchvision(
    name: str, source: TorchvisionSource, splits: tuple[str, str | None] = ("train", "test"),
    eval_splits: tuple[str, str | None] | None = None,
) -> DatasetSpec:
    """Register a torchvision dataset under ``name`` (``data.root``: its download folder;
    ``data.download``: fetch it when missing); ``splits`` and ``eval_splits`` as ``DatasetSpec``'s."""
    TORCHVISION[name] = source

    def load(config: DataConfig, split: str, seed: int) -> ImageSet:
        return load_torchvision(name, _root(config), split, download=config.download, image_size=config.image_size)

    # Where the dataset was defined, for DatasetSpec.origin: the file of its own functions.
    load.__module__ = next((f.__module__ for f in (source.open, source.arrays, source.by_hand) if f is not None), __name__)
    return DatasetSpec(name, load=load, splits=splits, eval_splits=eval_splits, downloadable=True).register()


# ----------------------------------------------------------------------------------------
# Image files: ImageFolder trees and image-text pair files.



def _stack(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@dataclass
class FolderListing:
    """The image files of an image folder, as the loader and the shard converter read it."""

    root: Path
    classes: list[str] | None  # class sub-folders, sorted (label = position); None: unlabelled
    files: list[list[Path]]  # the sorted image files of each class; unlabelled: one list

    @property
    def labelled(self) -> bool:
        return self.classes is not None


def _image_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_image_folder(
    root: Path, classes: list[str] | None = None, not_classes: tuple[str, ...] = ()
) -> FolderListing:
    """Where the images of ``root`` are, and their classes.

    Sub-folders are classes, as in torchvision's ImageFolder: ``root/<class>/**/<image>``
    (nested folders belong to their class). A folder without sub-folders is unlabelled: its
    own image files. Image files beside class folders are left out, with one warning.
    ``classes``: take only these class folders (each must exist). ``not_classes``: sub-folders
    that are not classes (the validation folder, when the data root holds the training images).
    """
    if not root.is_dir():
        raise DataNotFoundError(
            f"Image folder not found: {root.absolute()}. Give a folder of images (trained unlabelled) "
            f"or of one sub-folder of images per class (<class>/<image>.jpg), or fix the path."
        )
    found = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in not_classes
    )
    own_images = _image_files(root.iterdir())
    if classes is not None:
        missing = sorted(set(classes) - set(found))
        if missing:
            raise DataFormatError(
                f"{root} lacks {len(missing)} of the {len(classes)} listed class folders, e.g. "
                f"{', '.join(missing[:5])}. Give the folder that holds them (ImageNet's train/ or val/)."
            )
        found = sorted(classes)
    if not found:
        if not own_images:
            raise DataFormatError(
                f"{root} holds no images and no class sub-folders; put images in it (they train unlabelled) "
                f"or each class's images in its own folder, e.g. {root / 'cats' / 'img1.jpg'}."
            )
        return FolderListing(root, None, [own_images])
    if own_images:
        names = ", ".join(p.name for p in own_images[:3]) + (", ..." if len(own_images) > 3 else "")
        warnings.warn(
            f"{len(own_images)} image file(s) directly in {root} ({names}) are in no class folder and are "
            f"left out: its sub-folders ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) are its "
            "classes. Move the images into class folders, or the sub-folders out to train on all of them unlabelled.",
            stacklevel=3,
        )
    return FolderListing(root, found, [_image_files((root / name).rglob("*")) for name in found])


def load_image_folder(root: str | Path, image_size: int, not_classes: tuple[str, ...] = ()) -> ImageSet:
    """The images of ``root``: labelled by class folder (``root/<class>/...``, classes sorted by
    name), or unlabelled when ``root`` has no sub-folders and holds the images itself
    (``list_image_folder``). Files PIL cannot read are skipped with one warning listing them.
    """
    listing = list_image_folder(Path(root), not_classes=not_classes)
    root = listing.root
    images, labels, skipped = [], [], []
    for label, files in enumerate(listing.files):
        for path in files:
            try:
                images.append(load_image_file(path, image_size))
            except PIL_ERRORS as e:
                skipped.append(f"{path} ({e})")
                continue
            labels.append(label)
    if not images:
        what = f"{len(skipped)} image files, none readable" if skipped else "no image files"
        where = f"in its class folders {listing.classes}" if listing.labelled else "in it"
        raise DataFormatError(
            f"{root} holds {what} (looked for {', '.join(IMAGE_EXTENSIONS)} {where}); add readable images."
        )
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"Skipped {len(skipped)} unreadable image file(s) under {root}: "
            f"{'; '.join(skipped[:5])}{more}. Re-save or delete them to silence this.",
            stacklevel=2,
        )
    return ImageSet(
        images=_stack(images),
        labels=torch.tensor(labels, dtype=torch.int64) if listing.labelled else None,
        classes=listing.classes,
        name=root.name,
    )


def _pair_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """Rows of a CSV or JSONL pairs file as (where, fields), ``where`` naming the row."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}, line {number}: not valid JSON ({e}).") from None
            if not isinstance(row, dict):
                raise DataFormatError(
                    f"{path}, line {number}: expected an object with keys 'path' and "
                    f"'caption', got {type(row).__name__}."
                )
            rows.append((f"line {number}", row))
        return rows
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            raise DataFormatError(f"{path} is empty; expected a header line 'path,caption'.")
        missing = [k for k in ("path", "caption") if k not in reader.fieldnames]
        if missing:
            raise DataFormatError(
                f"{path}: missing column(s) {missing} in the header; found columns "
                f"{reader.fieldnames}. The first line must name the columns: path,caption."
            )
        # Row 1 is the first data row; the line number counts the header too.
        return [(f"row {i} (line {reader.line_num})", row) for i, row in enumerate(reader, start=1)]
    raise DataFormatError(
        f"{path}: unknown pairs file type '{path.suffix}'; use .csv (columns path,caption) "
        f"or .jsonl (one {{\"path\": ..., \"caption\": ...}} object per line)."
    )


def read_pairs_file(path: str | Path, require_images: bool = True) -> dict[Path, list[str]]:
    """The rows of a CSV (``path,caption`` header) or JSONL pairs file, validated: each
    image's path (relative to the file's folder, or absolute) -> its captions, in order of
    first appearance. ``require_images``: an image file that does not exist is an error
    naming its row (the shard converter skips it instead, and lists it)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"Image-text pairs file not found: {path.absolute()}. Check the path."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path} is not valid UTF-8 text (bad byte at offset {e.start}); save it as UTF-8."
        ) from None

    captions: dict[Path, list[str]] = {}  # image -> captions, in order of first appearance
    for where, row in _pair_rows(path, text):
        missing = [k for k in ("path", "caption") if k not in row]
        if missing:  # (CSV headers are checked up front; this catches JSONL objects)
            raise DataFormatError(
                f"{path}, {where}: missing key(s) {missing}; found keys {list(row)}. Each "
                f"row needs 'path' and 'caption'."
            )
        caption, image = row["caption"], row["path"]
        if not isinstance(caption, str) or not caption.strip():
            raise DataFormatError(f"{path}, {where}: empty caption; give every row a caption.")
        if not isinstance(image, str) or not image.strip():
            raise DataFormatError(f"{path}, {where}: empty image path; give every row a path.")
        image_path = path.parent / image.strip()  # an absolute path replaces the parent
        if require_images and not image_path.is_file():
            raise DataFormatError(
                f"{path}, {where}: image file not found: {image_path}. Relative paths start "
                f"from the folder of {path.name}."
            )
        captions.setdefault(image_path.resolve() if require_images else image_path, []).append(caption.strip())
    if not captions:
        raise DataFormatError(f"{path} has no rows; add lines of path,caption.")
    return captions


def load_image_text_pairs(path: str | Path, image_size: int) -> ImageSet:
    """Images with captions from a CSV (``path,caption`` header) or JSONL file.

    Image paths are relative to the file's folder (absolute ones work too). Rows sharing a
    path become one image with several captions, in order of first appearance.
    """
    path = Path(path)
    captions = read_pairs_file(path)
    images = []
    for image_path in captions:
        try:
            images.append(load_image_file(image_path, image_size))
        except PIL_ERRORS as e:
            raise DataFormatError(
                f"{path}: cannot read image {image_path} ({e}); re-save or remove it."
            ) from None
    return ImageSet(images=_stack(images), captions=list(captions.values()), name=path.stem)


# ----------------------------------------------------------------------------------------
# The datasets these loaders make, as recipes name them (data.name).


def _root(config: DataConfig) -> Path:
    return Path(config.root).expanduser()


DatasetSpec("shared_cifar10", load=lambda config, split, seed: load_shared_cifar10(_root(config), split),
            splits=("train", "test")).register()
# Flickr8k's captions have no class labels: it trains CLIP and scores retrieval.
DatasetSpec("shared_flickr8k", load=lambda config, split, seed: load_shared_flickr8k(_root(config), split),
            splits=("train", "test"), labelled=False, retrieval_split="test").register()


register_torchvision("cifar10", TorchvisionSource("CIFAR10", ("train", "test")))
register_torchvision("cifar100", TorchvisionSource("CIFAR100", ("train", "test")))


def _open_stl10(cls: type, root: str, split: str, download: bool) -> Any:
    return cls(root, split=split, download=download)


def _stl10_arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    # uint8 (N, 3, 96, 96) already; label -1: unlabelled (the unlabeled split has no class names read)
    return torch.from_numpy(ds.data), torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)), list(getattr(ds, "classes", []))


# NOTE: STL-10 trains on its 100k unlabelled images too; its labelled 5k train the evaluation.
register_torchvision(
    "stl10", TorchvisionSource("STL10", ("train", "test", "unlabeled", "train+unlabeled"), open=_open_stl10, arrays=_stl10_arrays),
    splits=("train+unlabeled", "test"), eval_splits=("train", "test"),
)


def _load_folder_split(config: DataConfig, split: str, seed: int) -> ImageSet:
    """``root/<split>``; without a ``root/train`` folder, the root itself holds the training
    images (a flat folder of unlabelled images, most often), and its ``val`` is still validation."""
    root = _root(config)
    if split == "train" and root.is_dir() and not (root / split).is_dir():
        return load_image_folder(root, config.image_size, not_classes=(config.val_split or "val",))
    return load_image_folder(root / split, config.image_size)


# NOTE: "labelled" here means it may be: a folder without class sub-folders loads with no
# labels, which the data module and the evaluation find in the loaded set.
DatasetSpec("folder", load=_load_folder_split, splits=("train", "val")).register()
# One CSV/JSONL file of path,caption: no test split and no labels; retrieval scores on
# all of it (in-sample, and reports say so).
DatasetSpec("pairs", load=lambda config, split, seed: load_image_text_pairs(_root(config), config.image_size),
            splits=("all", None), labelled=False, retrieval_split="all", captions_hint="(a CSV/JSONL of path,caption)").register()
