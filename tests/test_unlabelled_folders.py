"""A flat folder of unlabelled images, the usual data of self-supervised pre-training, trains:
as ``data.name: folder`` and as shards made by ``shards --from folder``. Without labels the
kNN monitor and labelled evaluation are skipped, each with one line saying why."""

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.cli import main
from ssl_zoo.data.shards import ShardSet
from ssl_zoo.data.shards.convert import convert
from ssl_zoo.data.shards.paths import expand_shard_paths
from ssl_zoo.data.datamodule import ImageDataModule, load_split
from ssl_zoo.data.sources import load_image_folder
from ssl_zoo.errors import DataFormatError
from ssl_zoo.recipe import DataConfig

SKIP_LINE = "ssl_zoo: kNN monitor skipped: the training images of {name} ({root}) have no labels."


def write_images(folder: Path, count: int, size: int = 24, seed: int = 0, ext: str = "png") -> list[Path]:
    """``count`` small random RGB images named 000.png, 001.png, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"{i:03d}.{ext}" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return paths


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def fit_two_steps(capsys, tmp_path: Path, name: str, root: Path) -> tuple[int, str]:
    """Two SimCLR steps of the quickstart recipe, made small, on ``root``."""
    return run(
        capsys, "fit", "--recipe", "quickstart", "--data.name", name, "--data.root", root,
        "--data.image_size", "16", "--augment.size", "16", "--data.batch_size", "8",
        "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.output_dir", tmp_path / "runs",
    )


def assert_trained(code: int, output: str, tmp_path: Path, name: str, root: Path) -> Path:
    """Checks the run, and returns its checkpoint."""
    assert code == 0, output
    skip = [line for line in output.splitlines() if line.startswith("ssl_zoo: kNN monitor skipped")]
    assert skip == [SKIP_LINE.format(name=name, root=root) + " Linear and kNN evaluation need a labelled dataset: "
                    "python -m ssl_zoo eval --ckpt CKPT --data NAME --root DIR."], output
    assert "Done: " in output and "kNN top-1" not in output
    checkpoints = list((tmp_path / "runs" / "quickstart").glob("version_*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1, output
    saved = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    return checkpoints[0]


# ----------------------------------------------------------------------------------------
# data.name: folder


def test_fit_on_a_flat_folder_through_the_cli(capsys, tmp_path):
    """Images directly in the data root (no train/): trained unlabelled, monitors skipped."""
    root = tmp_path / "photos"
    write_images(root, 20)
    code, output = fit_two_steps(capsys, tmp_path, "folder", root)
    checkpoint = assert_trained(code, output, tmp_path, "folder", root)

    # Evaluation of the run skips classification with its reason (no val/ folder is needed).
    code, output = run(capsys, "eval", "--ckpt", checkpoint, "--out", tmp_path / "eval.json")
    assert code == 0, output
    assert "skipped classification: folder has no labels; for linear, kNN and zero-shot pass a labelled dataset" in output


def test_flat_layouts_load_unlabelled(tmp_path):
    """root/train (with or without val/), or the root itself, whose val/ stays validation."""
    write_images(tmp_path / "a" / "train", 3)
    write_images(tmp_path / "b", 4)
    write_images(tmp_path / "b" / "val", 2, seed=1)
    config = DataConfig(name="folder", root=str(tmp_path / "a"), image_size=16)
    train = load_split(config, "train", 0)
    assert len(train) == 3 and train.labels is None and train.classes is None
    assert train.images.shape == (3, 3, 16, 16) and train.images.dtype == torch.uint8

    config = DataConfig(name="folder", root=str(tmp_path / "b"), image_size=16)
    train, val = load_split(config, "train", 0), load_split(config, "val", 0)
    assert (len(train), len(val)) == (4, 2) and train.labels is None and val.labels is None


def test_class_folders_still_label_and_loose_images_are_named(tmp_path):
    """Sub-folders are classes, nested ones included; images beside them are left out, once warned."""
    write_images(tmp_path / "train" / "cats", 2)
    write_images(tmp_path / "train" / "dogs" / "2024", 1)
    write_images(tmp_path / "train", 1, ext="jpg")  # 000.jpg, beside the class folders
    with pytest.warns(UserWarning, match=r"1 image file\(s\) directly in .*train \(000.jpg\) are in no class folder"):
        images = load_image_folder(tmp_path / "train", 16)
    assert images.classes == ["cats", "dogs"] and images.labels.tolist() == [0, 0, 1]


def test_a_folder_with_nothing_to_read(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    with pytest.raises(DataFormatError, match="no images and no class sub-folders; put images in it") as err:
        load_image_folder(tmp_path / "empty", 16)
    assert str(tmp_path / "empty") in str(err.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match=r"1 image files, none readable \(looked for .* in it\)"):
        load_image_folder(tmp_path / "broken", 16)


# ----------------------------------------------------------------------------------------
# shards --from folder


def test_shards_from_a_flat_folder_are_unlabelled_and_train(capsys, tmp_path):
    source = tmp_path / "photos"
    write_images(source, 20)
    out = tmp_path / "shards"
    code, output = run(capsys, "shards", "--from", "folder", source, "--out", out, "--size", "16",
                       "--shard-size", "8", "--quiet")
    assert code == 0, output
    assert "Wrote 20 samples in 3 shard(s)" in output and "unlabelled: the folder has no class sub-folders" in output
    assert not (out / "classes.txt").exists()
    with tarfile.open(out / "shard-000000.tar") as tar:
        members = tar.getnames()
    assert len(members) == 8 and all(m.endswith(".jpg") for m in members)  # no .cls
    shards = ShardSet(expand_shard_paths(out))
    assert len(shards) == 20 and not shards.has_labels and shards.classes is None

    code, output = fit_two_steps(capsys, tmp_path, "shards", out)
    assert_trained(code, output, tmp_path, "shards", out)


def test_unlabelled_shards_train_on_every_sample(tmp_path):
    """No images are held out for monitors that have nothing to score."""
    write_images(tmp_path / "photos", 12)
    convert("folder", tmp_path / "photos", tmp_path / "shards", size=16, progress=False)
    datamodule = ImageDataModule(DataConfig(name="shards", root=str(tmp_path / "shards"), image_size=16, batch_size=4))
    datamodule.setup("fit")
    assert datamodule.train_data.samples is None and datamodule.val_set is None and datamodule.bank_set is None
    assert datamodule.unmonitored == f"the training images of shards ({tmp_path / 'shards'}) have no labels"
