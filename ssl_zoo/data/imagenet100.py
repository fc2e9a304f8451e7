"""ImageNet-100 (``data.name: imagenet100``): ImageNet-1k restricted to the 100 classes of
CMC (Tian et al. 2019), the subset solo-learn's and many papers' ImageNet-100 tables use.

It is read from shards, as ``shards`` is (``data.root`` the training split, ``data.val_root``
the validation split), made from ILSVRC2012's class folders with ``--classes imagenet100``.
What the name adds is the check that the shards hold exactly those classes, in the
converter's order: numbers scored on other classes, or on labels numbered otherwise, would
stand beside the published ImageNet-100 ones without being comparable to them.
"""

from __future__ import annotations

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shards.convert import read_class_list
from ssl_zoo.data.shards.dataset import ShardsConfig, ShardTraining, open_shards
from ssl_zoo.data.shards.reader import ShardSet
from ssl_zoo.data.spec import DatasetSpec, dataset_spec
from ssl_zoo.errors import DataFormatError, DataNotFoundError
from ssl_zoo.recipe import DataConfig

MAKE_IMAGENET100 = (
    "`python -m ssl_zoo shards --from folder ILSVRC2012/train --classes imagenet100 --out data/imagenet100/train --size 256` "
    "and `python -m ssl_zoo shards --from folder ILSVRC2012/val --classes imagenet100 --out data/imagenet100/val --size 256`"
)


def imagenet100_classes() -> list[str]:
    """CMC's 100 WordNet ids in the order the converter numbers them (sorted, as it sorts
    the class folders it takes)."""
    return sorted(read_class_list("imagenet100"))


def open_imagenet100(config: DataConfig, split: str = "train") -> ShardSet:
    """The training (data.root) or validation (data.val_root) shards, refused unless their
    classes.txt lists CMC's 100 classes in the converter's order."""
    root = config.root if split == "train" else config.val_root
    try:
        shards = open_shards(config, split)
    except DataNotFoundError:
        raise DataNotFoundError(
            f"ImageNet-100 shards not found at {root}. Download ILSVRC2012 from image-net.org, then "
            f"convert its train/ and val/ class folders with {MAKE_IMAGENET100}, and set data.root and "
            "data.val_root to the two --out folders."
        ) from None
    expected = imagenet100_classes()
    if shards.classes != expected:
        if shards.classes is None:
            found = "no classes.txt"
        elif set(shards.classes) == set(expected):
            found = "CMC's 100 classes, numbered in another order"
        else:
            extra, missing = sorted(set(shards.classes) - set(expected)), sorted(set(expected) - set(shards.classes))
            found = (f"{len(shards.classes)} classes, {len(extra)} of them not ImageNet-100's (e.g. "
                     f"{', '.join(extra[:3]) or '-'}) and {len(missing)} of ImageNet-100's missing "
                     f"(e.g. {', '.join(missing[:3]) or '-'})")
        raise DataFormatError(
            f"The shards at {root} are not ImageNet-100: their classes.txt has {found}. Make them from "
            f"ILSVRC2012 with {MAKE_IMAGENET100}."
        )
    return shards


def load_imagenet100(config: DataConfig, split: str, seed: int) -> ImageSet:
    """A seeded, bounded part of a split decoded into memory (the monitors' sets), as
    ``shards`` decodes it; the shards that part comes from are checked first."""
    # The held-out part of the training shards stands in for 'val' without data.val_root.
    open_imagenet100(config, "train" if split == "train" or config.val_root is None else split)
    return dataset_spec("shards").load(config, split, seed)


def _train_on_imagenet100(config: DataConfig, split: str, seed: int) -> ShardTraining:
    return ShardTraining(open_imagenet100(config, "train"), config, seed)


# Its section is the shards' (`imagenet100: {decode: device}`).
DatasetSpec(
    "imagenet100", load=load_imagenet100, splits=("train", "val"), labelled=True, config=ShardsConfig,
    train=_train_on_imagenet100, open=open_imagenet100,
).register()
