"""A dataset ssl_zoo has never seen, defined entirely in this file, trains and is monitored
through the same commands as the built-in ones: nothing under ssl_zoo/ names it.

The dataset is a folder of numpy arrays, ``<root>/<split>/images.npy`` (uint8) and
``labels.npy``, with an option of its own (how the arrays are laid out) in its own recipe
section, ``npy_folder:``, as a method's options are in the method's.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml

from ssl_zoo.cli import main
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.spec import DatasetSpec
from ssl_zoo.errors import DataNotFoundError
from ssl_zoo.methods import load_method
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.registry import DATASETS


@dataclass
class NpyFolderConfig:  # the recipe's `npy_folder:` section
    layout: Literal["nhwc", "nchw"] = "nhwc"
    """How images.npy is laid out: (N, H, W, 3), as PIL and most tools save, or (N, 3, H, W)."""


def load_npy_split(config, split: str, seed: int) -> ImageSet:
    folder = Path(config.root) / split
    if not (folder / "images.npy").is_file():
        raise DataNotFoundError(f"No images.npy in {folder}; write the split's arrays there.")
    images = torch.from_numpy(np.load(folder / "images.npy"))
    if config.options.layout == "nhwc":
        images = images.permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.load(folder / "labels.npy").astype(np.int64))
    return ImageSet(images.contiguous(), labels, classes=[str(c) for c in range(int(labels.max()) + 1)], name=f"npy {split}")


SPEC = DatasetSpec("npy_folder", load=load_npy_split, splits=("train", "val"), config=NpyFolderConfig).register()


def write_npy_folder(root, count: int, size: int = 16, layout: str = "nchw") -> None:
    """Two classes a kNN can tell apart: bright top half or bright bottom half, with noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", count // 2)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, (n, 3, size, size), dtype=np.uint8)
        for i, label in enumerate(labels):
            rows = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            images[i, :, rows] += 180
        (root / split).mkdir(parents=True)
        np.save(root / split / "images.npy", images if layout == "nchw" else images.transpose(0, 2, 3, 1))
        np.save(root / split / "labels.npy", labels)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    write_npy_folder(folder / "data", count=64)
    recipe = {
        "method": "simclr", "name": "simclr_npy", "description": "SimCLR on a dataset defined in a test file",
        "backbone": "convnet4",
        "data": {"name": "npy_folder", "root": str(folder / "data"), "image_size": 16, "batch_size": 16, "knn_bank_size": 64},
        "npy_folder": {"layout": "nchw"},
        "augment": {"size": 16, "blur_p": [0.0, 0.0]},
        "optim": {"lr": 0.1, "warmup_epochs": 0},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "log_every_n_steps": 1, "output_dir": str(folder / "runs")},
        "simclr": {"hidden_dim": 64, "output_dim": 32},
    }
    path = folder / "simclr_npy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_dataset_registers_itself_by_being_defined():
    assert DATASETS["npy_folder"] is SPEC and SPEC.default_options() == NpyFolderConfig()


def test_it_trains_with_its_own_section_and_the_knn_monitor_scores_it(recipe_file):
    from ssl_zoo.training.train import fit

    recipe = parse_recipe(["--recipe", str(recipe_file)])
    assert recipe.data.options == NpyFolderConfig(layout="nchw")  # its section reached the loader
    summary = fit(recipe, enable_progress_bar=False)
    assert summary.steps == 4 and 0 <= summary.knn_top1 <= 1 and summary.knn_top1_random_init is not None
    saved = yaml.safe_load((summary.run_dir / "recipe.yaml").read_text())
    assert saved["npy_folder"] == {"layout": "nchw"} and "options" not in saved["data"]
    model = load_method(summary.checkpoint)  # the checkpoint's recipe, its section included, reloads
    assert model.recipe.data.options == NpyFolderConfig(layout="nchw")


def test_its_section_is_validated_like_any_other(recipe_file, capsys):
    assert main(["fit", "--recipe", str(recipe_file), "--npy_folder.layuot", "nhwc"]) == 2
    error = capsys.readouterr().err
    assert "layuot" in error and "Did you mean 'layout'?" in error
    assert main(["fit", "--recipe", str(recipe_file), "--npy_folder.layout", "hwc"]) == 2
    assert "hwc" in capsys.readouterr().err
    assert main(["fit", "--recipe", "quickstart", "--npy_folder.layout", "nchw"]) == 2
    assert "trains on dataset 'shapes' but sets the 'npy_folder:' section" in capsys.readouterr().err
