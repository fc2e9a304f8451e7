"""Evaluation at ImageNet scale, on small stand-ins: splits streamed from shards into a
memory-mapped float16 cache, kNN in blocks, linear fitted in mini-batches where the
features do not fit, and the cache rebuilt when its file is damaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_recipe, write_random_shards
from test_distributed import free_port  # another xdist process may hold a fixed port
from ssl_zoo.data.shards import ShardSet, expand_shard_paths
from ssl_zoo.data.shards.split import ShardSplit
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.eval.features import image_features
from ssl_zoo.eval.linear import linear_eval, linear_eval_in_batches
from ssl_zoo.eval.stage import evaluate, evaluate_checkpoint
from ssl_zoo.methods import load_method


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_random_shards(root / "train", 240, shard_size=64, size=40, seed=0)
    write_random_shards(root / "val", 72, shard_size=64, size=40, seed=1)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ConvNet SimCLR checkpoint after one step (what it learnt does not matter here)."""
    from ssl_zoo.training.train import fit

    recipe = tiny_recipe("simclr", tmp_path_factory.mktemp("runs"), **{"data.num_images": 64, "trainer.max_steps": 1,
                                                                         "backbone": "convnet4", "data.image_size": 40})
    return fit(recipe, enable_progress_bar=False).checkpoint


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_method(checkpoint).eval()


def config(tmp_path, shards, **kwargs) -> EvalConfig:
    settings = {"data": "shards", "root": str(shards / "train"), "cache_dir": str(tmp_path / "cache"), "num_workers": 0,
                "batch_size": 32, "diagnostics_size": 32}
    return EvalConfig(**{**settings, **kwargs})


def test_streamed_features_are_the_in_memory_features_in_float16(model, shards, tmp_path):
    """Through the loader (2 workers, batches of 32) into the memory-mapped file: the
    features of the same decoded images, extracted in memory, rounded to float16."""
    split = ShardSplit(ShardSet(expand_shard_paths(shards / "val")), np.arange(72), 40, "val")
    evaluator = Evaluator(model, config(tmp_path, shards, num_workers=2))
    streamed = evaluator.features(split, "test")
    assert streamed.dtype == torch.float16 and streamed.shape == (72, evaluator.feature_dim)
    decoded = split.images_at(torch.arange(72))  # uint8 (72, 3, 40, 40)
    expected = image_features(model.backbone, model.eval_transform, decoded, torch.device("cpu"), 72)
    assert torch.allclose(streamed.float(), expected, rtol=2e-3, atol=2e-3)
    labels = torch.from_numpy(np.arange(72) % 4)
    assert torch.equal(split.labels, labels)


def test_eval_on_shards_scores_every_image_of_both_splits_and_reads_its_cache_back(model, shards, tmp_path, monkeypatch):
    """No cap: every validation image and every training image. The second evaluation reads
    the features from the cache; a truncated cache file, or one of another layout, is
    computed again, not read, and gives the same result. The features are held "too large
    for memory", so linear is fitted in mini-batches from the memory-mapped files."""
    from ssl_zoo.data.shards import dataset as shard_dataset

    monkeypatch.setattr(shard_dataset, "SHARD_EVAL_CAP", 50)  # the old in-memory cap: no longer applies
    from ssl_zoo.eval.data import load_labelled_splits
    from ssl_zoo.recipe import DataConfig

    cfg = config(tmp_path, shards, in_memory_features_mib=0)

    trained_on = DataConfig(name="shards", root=str(shards / "train"), val_root=str(shards / "val"), image_size=40)
    splits = load_labelled_splits(trained_on, cfg)
    assert splits.info["num_train"] == splits.info["full_train"] == 240
    assert splits.info["num_test"] == splits.info["full_test"] == 72 and splits.info["streamed"]
    result = evaluate(model, cfg, splits=splits, with_text=False)
    assert result["feature_cache"] == {"hits": 0, "misses": 2}
    assert result["linear"]["fit"].startswith("Adam on mini-batches") and 0 <= result["metrics"]["linear_top1"] <= 1
    again = evaluate(model, cfg, splits=splits, with_text=False)
    assert again["feature_cache"] == {"hits": 2, "misses": 0}
    assert again["metrics"] == result["metrics"]

    files = sorted((tmp_path / "cache").glob("*.features"))
    assert len(files) == 2
    with open(files[0], "r+b") as file:  # a copy cut short
        file.truncate(files[0].stat().st_size - 10)
    data = bytearray(files[1].read_bytes())
    data[:8] = b"SSLZOOF0"  # another layout
    files[1].write_bytes(bytes(data))
    rebuilt = evaluate(model, cfg, splits=splits, with_text=False)
    assert rebuilt["feature_cache"] == {"hits": 0, "misses": 2}
    assert rebuilt["metrics"] == result["metrics"]


def test_the_probe_protocol_streams_shuffled_batches_from_shards(model, shards, tmp_path):
    """--protocol probe on shards: epochs of shuffled batches through the loader, the test
    split in order; the result names the protocol, its source and the epochs trained."""
    from ssl_zoo.eval.data import load_labelled_splits
    from ssl_zoo.recipe import DataConfig

    trained_on = DataConfig(name="shards", root=str(shards / "train"), val_root=str(shards / "val"), image_size=40)
    cfg = config(tmp_path, shards, protocol="probe", probe_epochs=2)
    result = evaluate(model, cfg, splits=load_labelled_splits(trained_on, cfg), with_text=False)
    assert result["linear"]["protocol"] == "probe" and result["linear"]["epochs"] == 2
    assert result["linear"]["full_epochs"] == 90 and "SimCLR" in result["linear"]["source"]
    assert len(result["per_image_correct"]["linear_top1"]) == 72 and "probe" in result["seconds"]


def test_linear_in_mini_batches_agrees_with_lbfgs_within_half_a_point():
    """The two fits of one objective, on features with a learnable signal (10 classes,
    8,000 training and 2,000 test images), the mini-batch one from float16 features."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 128, generator=g)

    def features(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.35 * centres[y] + torch.randn(n, 128, generator=g) + 0.5 * torch.randn(n, 1, generator=g) * centres[y]
        return x.relu(), y

    (train_x, train_y), (test_x, test_y) = features(8000), features(2000)
    lbfgs = linear_eval(train_x, train_y, test_x, test_y, 10)
    batches = linear_eval_in_batches(train_x.half(), train_y, test_x.half(), test_y, 10, torch.device("cpu"), batch_size=1024)
    assert 0.5 < lbfgs.top1 < 0.8  # neither trivial nor hopeless
    assert abs(batches.top1 - lbfgs.top1) <= 0.005
    assert batches.correct.shape == (2000,) and batches.correct.float().mean().item() == pytest.approx(batches.top1)


def test_eval_under_torchrun_extracts_a_slice_per_process_into_one_cache_file(checkpoint, shards, tmp_path):
    """Two processes (gloo, CPU) fill their halves of each split's feature file; the file
    is the one a single process then reads back (2 hits), and the metrics are the same."""
    import json
    import os
    import subprocess
    import sys

    eval_args = ["eval", "--ckpt", str(checkpoint), "--data", "shards", "--root", str(shards / "train"), "--val-root",
                 str(shards / "val"), "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "ssl_zoo",
         *eval_args, "--out", str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    first = json.loads((tmp_path / "two.json").read_text())
    # One process, the same settings: it reads the two processes' files back, to the same metrics.
    second = evaluate_checkpoint(checkpoint, EvalConfig(
        data="shards", root=str(shards / "train"), val_root=str(shards / "val"), device="cpu", num_workers=0,
        cache_dir=str(tmp_path / "cache")))
    assert second["feature_cache"] == {"hits": 2, "misses": 0}
    assert first["metrics"] == second["metrics"] and first["data"]["num_train"] == 240
    assert not list((tmp_path / "cache").glob("*.tmp"))
