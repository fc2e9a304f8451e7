"""`fit` from shards keeps the zoo exact: a run killed or crashed mid-epoch and resumed
(with loader workers decoding; CLIP with its caption draws) ends bit-identical to an
unbroken one, and decoding on the device gives the same training as decoding in the loader."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_random_shards
from ssl_zoo.training.train import fit
from test_reliability import (
    RESUME_KEYS, Crash, CrashAt, assert_same_state, assert_sigkill_then_resume_is_bit_exact, final_state, write_recipe,
)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    """256 labelled, captioned 32 px JPEGs in 4 shards (and 64 in validation shards)."""
    root = tmp_path_factory.mktemp("shards")
    write_random_shards(root / "train", 256, 64)
    write_random_shards(root / "val", 64, 64, seed=1)
    return root


def shard_keys(root: Path, **more) -> dict:
    return {**RESUME_KEYS, "data.name": "shards", "data.root": root / "train", "data.val_root": root / "val",
            "data.val_size": 32, "data.knn_bank_size": 64, **more}


WORKERS = 2  # loader workers build their iterator before Lightning restores its epoch counter


def test_clip_from_captioned_shards_resumes_its_caption_draws_exactly(make_recipe, shard_root, tmp_path):
    keys = shard_keys(shard_root, **{"trainer.max_epochs": 2, "data.num_workers": WORKERS})
    unbroken = fit(make_recipe("clip", **keys), enable_progress_bar=False)
    crashed = make_recipe("clip", **{**keys, "trainer.output_dir": tmp_path / "b"})
    with pytest.raises(Crash):
        fit(crashed, enable_progress_bar=False, callbacks=[CrashAt(step=11)])
    last = tmp_path / "b" / "tiny_clip" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = fit(crashed, enable_progress_bar=False, resume=last)
    assert_same_state(final_state(unbroken.checkpoint), final_state(resumed.checkpoint))


def test_decoding_on_the_device_trains_exactly_as_decoding_in_workers(make_recipe, shard_root, tmp_path):
    # On a GPU the encoded batch is decoded there (nvJPEG); here the same path runs on the CPU.
    states = []
    for decode in ("worker", "device"):
        keys = shard_keys(shard_root, **{"trainer.max_epochs": 1, "shards.decode": decode, "data.num_workers": 0,
                                         "trainer.output_dir": tmp_path / decode})
        states.append(final_state(fit(make_recipe("simclr", **keys), enable_progress_bar=False).checkpoint))
    assert_same_state(*states)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_shards_is_bit_exact(make_recipe, shard_root, tmp_path):
    # As a user runs it, with 2 loader workers decoding: killed mid-epoch, then --resume.
    keys = shard_keys(shard_root, **{"data.num_workers": 2})
    assert_sigkill_then_resume_is_bit_exact(write_recipe(make_recipe, "byol", tmp_path / "byol.yaml", **keys), tmp_path)


def test_two_processes_read_disjoint_slices_that_make_up_the_single_process_batches(shard_root):
    # Each rank reads only its slice of every global batch from the shards.
    from ssl_zoo.data.datamodule import EpochBatchSampler
    from ssl_zoo.data.shards import ShardDataset, ShardSet, expand_shard_paths

    dataset = ShardDataset(ShardSet(expand_shard_paths(shard_root / "train")), 32)
    one = [dataset.__getitems__(items) for items in EpochBatchSampler(len(dataset), 32, seed=5)]
    ranks = [[dataset.__getitems__(items) for items in EpochBatchSampler(len(dataset), 16, seed=5, rank=r, world_size=2)]
             for r in range(2)]
    for b, batch in enumerate(one):
        together = torch.cat([ranks[0][b]["image"], ranks[1][b]["image"]])
        assert torch.equal(together, batch["image"])
        assert torch.equal(torch.cat([ranks[0][b]["label"], ranks[1][b]["label"]]), batch["label"])


def test_decoding_on_the_device_with_workers_and_large_batches_keeps_within_1024_open_files(tmp_path):
    # A batch once left each loader worker as B tensors, each an open file in the training
    # process (torch's file_descriptor sharing): at B = 512 the run hung at step 0 under
    # `ulimit -n 1024`. Now it is one buffer and its offsets.
    write_random_shards(tmp_path / "train", 1100, 550, size=16)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))\n"
        "from ssl_zoo.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        "fit", "--recipe", "quickstart", "--data.name", "shards", "--data.root", str(tmp_path / "train"),
        "--shards.decode", "device", "--data.num_workers", "2", "--data.batch_size", "512", "--data.image_size", "16",
        "--augment.size", "16", "--backbone", "convnet4", "--trainer.max_steps", "2", "--data.val_size", "32",
        "--data.knn_bank_size", "32", "--trainer.output_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
    ]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Done: " in done.stdout and " 2 steps " in done.stdout
    # The summary says where the images were decoded and that none went the slow way.
    assert "decoding (device )        1,024 images; 0 one at a time on the CPU (0.0 %), 0 undecodable" in done.stdout
