"""ImageNet-100 (data.name imagenet100): shards of CMC's 100 classes open, others are refused
with the commands that make the right ones, and missing shards say the same."""

import re
from pathlib import Path

import pytest

from conftest import write_random_shards
from ssl_zoo.data.imagenet100 import imagenet100_classes
from ssl_zoo.data.shards import ShardSet
from ssl_zoo.data.spec import dataset_spec
from ssl_zoo.errors import DataFormatError, DataNotFoundError
from ssl_zoo.recipe import DataConfig

COMMANDS = [
    "python -m ssl_zoo shards --from folder ILSVRC2012/train --classes imagenet100 --out data/imagenet100/train --size 256",
    "python -m ssl_zoo shards --from folder ILSVRC2012/val --classes imagenet100 --out data/imagenet100/val --size 256",
]


def write_imagenet100_shards(root: Path, classes: list[str] | None = None) -> dict:
    """Small train/ and val/ shards beside a classes.txt (CMC's 100 classes unless told), as
    `ssl_zoo shards --classes imagenet100` leaves them; the recipe overrides that point at them.
    NOTE: the samples' labels are 0..3 of the 100 classes (write_random_shards' labels)."""
    classes = imagenet100_classes() if classes is None else classes
    for split, count, seed in (("train", 24, 0), ("val", 16, 1)):
        write_random_shards(root / split, count, 8, size=40, seed=seed)
        (root / split / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    return {"data.root": root / "train", "data.val_root": root / "val", "data.num_workers": 0}


def config_of(overrides: dict) -> DataConfig:
    return DataConfig(name="imagenet100", root=str(overrides["data.root"]), val_root=str(overrides["data.val_root"]),
                      image_size=32)


def test_the_class_list_is_cmcs_hundred_in_the_converters_order():
    classes = imagenet100_classes()
    assert len(classes) == len(set(classes)) == 100 and classes == sorted(classes)
    assert all(re.fullmatch(r"n\d{8}", name) for name in classes)  # WordNet ids, as ImageNet's folders


def test_shards_of_the_hundred_classes_open_and_load(tmp_path):
    spec = dataset_spec("imagenet100")
    assert spec.streamed and spec.labelled and spec.splits == ("train", "val")
    config = config_of(write_imagenet100_shards(tmp_path))
    train, val = spec.open(config, "train"), spec.open(config, "val")
    assert isinstance(train, ShardSet) and (len(train), len(val)) == (24, 16)
    assert train.has_labels and train.classes == imagenet100_classes()
    monitors = spec.load(config, "val", 0)  # the monitors' decoded set
    assert monitors.images.shape == (16, 3, 32, 32) and monitors.classes == imagenet100_classes()
    assert monitors.labels.tolist() == [i % 4 for i in range(16)]


@pytest.mark.parametrize("classes, found", [
    (["cat", "dog", "fish", "owl"], "4 classes, 4 of them not ImageNet-100's (e.g. cat, dog, fish) and 100 of ImageNet-100's missing"),
    (list(reversed(imagenet100_classes())), "CMC's 100 classes, numbered in another order"),
    (None, "no classes.txt"),
])
def test_shards_of_other_classes_are_refused_with_the_commands(tmp_path, classes, found):
    overrides = write_imagenet100_shards(tmp_path, classes or [])
    if classes is None:
        (tmp_path / "train" / "classes.txt").unlink()
    with pytest.raises(DataFormatError) as error:
        dataset_spec("imagenet100").open(config_of(overrides), "train")
    message = str(error.value)
    assert f"The shards at {tmp_path / 'train'} are not ImageNet-100" in message and found in message
    assert all(command in message for command in COMMANDS)


def test_the_validation_shards_are_checked_too(tmp_path):
    """Right training shards beside validation shards of other classes: the monitors' set is refused."""
    overrides = write_imagenet100_shards(tmp_path)
    (tmp_path / "val" / "classes.txt").write_text("cat\ndog\n", encoding="utf-8")
    spec, config = dataset_spec("imagenet100"), config_of(overrides)
    assert len(spec.open(config, "train")) == 24
    with pytest.raises(DataFormatError, match=re.escape(f"The shards at {tmp_path / 'val'} are not ImageNet-100")):
        spec.load(config, "val", 0)


def test_missing_shards_say_how_to_make_them(tmp_path):
    config = DataConfig(name="imagenet100", root=str(tmp_path / "nowhere"), val_root=str(tmp_path / "nowhere_val"))
    with pytest.raises(DataNotFoundError) as error:
        dataset_spec("imagenet100").open(config, "train")
    message = str(error.value)
    assert f"ImageNet-100 shards not found at {tmp_path / 'nowhere'}" in message
    assert all(command in message for command in COMMANDS)
