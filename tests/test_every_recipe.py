"""Every bundled recipe trains two steps through `fit` and is scored by `eval`.

Each recipe runs as it is, shrunk only in size (batch, image size, steps, monitor sets),
never in method, on a small stand-in for its dataset: fake CIFAR-10 and STL-10 files in
torchvision's layout, a generated ImageFolder tree, a generated pairs CSV, or a Flickr8k
archive built from zips laid out as the public release's. New recipes are picked up by
listing the folder; a dataset without a stand-in fails here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_random_shards
from test_imagenet100 import write_imagenet100_shards
from test_public_data import write_flickr8k_zips
from ssl_zoo.cli import main
from ssl_zoo.data.flickr8k import build_flickr8k_archive
from ssl_zoo.recipe import available_recipes, parse_recipe
from ssl_zoo.training.train import fit

SHRINK = {
    "data.image_size": 32, "augment.size": 32, "data.batch_size": 8, "data.knn_bank_size": 32,
    "data.val_size": 16, "trainer.max_steps": 2, "trainer.val_every_n_steps": 2,
    "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.precision": "32-true",
}


def fake_stl10(root: Path, monkeypatch) -> dict:
    """torchvision's STL-10 binary layout, with 100 unlabelled images (label -1) beside 40
    labelled ones, as in the real train+unlabeled split (there 100k beside 5k)."""
    import torchvision

    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 40), ("unlabeled", 100)):
        rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")  # labels 1..10 on disk
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)  # no real checksums
    return {"data.root": root}


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def image_folder(root: Path, monkeypatch) -> dict:
    for split, seed in (("train", 0), ("val", 1)):
        for c in range(3):
            write_images(root / split / f"class{c}", 12, seed * 10 + c)
    return {"data.root": root}


def pairs_csv(root: Path, monkeypatch) -> dict:
    rows = ["path,caption"] + [f"{p.name},a photo of thing {i}" for i, p in enumerate(write_images(root, 24, 0))]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return {"data.root": root / "pairs.csv"}


def fake_cifar10(root: Path, monkeypatch) -> dict:
    """torchvision's CIFAR-10 python batches, 20 random images each (the real ones hold
    10,000); the recipes' `download: true` finds them in place and downloads nothing."""
    import pickle

    import torchvision.datasets.cifar as cifar

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8),
                         "labels": (np.arange(20) % 10).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # no real checksums
    return {"data.root": root}


def flickr8k_archive(root: Path, monkeypatch) -> dict:
    """The archive `python -m ssl_zoo.data.flickr8k` builds, from fake release zips."""
    images, text = write_flickr8k_zips(root / "download", {"train": 24, "dev": 2, "test": 16})
    build_flickr8k_archive(images, text, root, md5=None)
    return {"data.root": root}


def shards(root: Path, monkeypatch) -> dict:
    """Indexed shards with a label and two captions a sample, in three shards, and
    validation shards beside them: what ImageNet or CC3M look like after `ssl_zoo shards`."""
    write_random_shards(root / "train", 48, 16, size=40)
    write_random_shards(root / "val", 24, 16, size=40, seed=1)
    return {"data.root": root / "train", "data.val_root": root / "val", "data.num_workers": 0}


STAND_INS = {
    "shards": shards,
    "imagenet100": lambda root, monkeypatch: write_imagenet100_shards(root),  # shards with CMC's classes.txt
    "shapes": lambda root, monkeypatch: {"data.num_images": 64},
    "stl10": fake_stl10,
    "folder": image_folder,
    "pairs": pairs_csv,
    "cifar10": fake_cifar10,
    "flickr8k": flickr8k_archive,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available_recipes()))
def test_recipe_trains_two_steps_and_evaluates(name, tmp_path, monkeypatch):
    bundled = parse_recipe(["--recipe", name])
    dataset = bundled.data.name
    assert dataset in STAND_INS, f"recipe {name}: add a stand-in for dataset '{dataset}' to this test"
    overrides = {**SHRINK, **STAND_INS[dataset](tmp_path / "data", monkeypatch), "trainer.output_dir": tmp_path / "runs"}
    for key in ("hidden_dim", "output_dim"):  # heads of at most 512 (DINO's 65,536 prototypes were most of its time)
        if getattr(bundled.method_config, key, 0) > 512:
            overrides[f"{bundled.method}.{key}"] = 512
    if bundled.augment.views:  # view groups of their own sizes (DINO's local crops): half the shrunk size
        groups = [{"count": g.count, "crop_scale": list(g.crop_scale), "blur_p": g.blur_p, "solarize_p": g.solarize_p}
                  | ({"size": SHRINK["augment.size"] // 2} if g.size is not None else {}) for g in bundled.augment.views]
        overrides["augment.views"] = json.dumps(groups)
    argv = ["--recipe", name] + [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    recipe = parse_recipe(argv)
    torch.manual_seed(0)

    summary = fit(recipe, enable_progress_bar=False)

    assert summary.steps == 2 and summary.checkpoint.is_file()
    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(summary.checkpoint), "--max-train", "32", "--max-test", "16",
                 "--no-cache", "--out", str(out)]) == 0
    assert out.is_file()
