"""Two processes (gloo, CPU) train like one process holding the whole global batch, and
report one run: one folder, one summary, monitors and validation run once."""

import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_zoo.data.datamodule import EpochBatchSampler, ImageDataModule
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.errors import RecipeError
from ssl_zoo.eval.features import image_features
from ssl_zoo.losses import clip_loss, nt_xent_loss
from ssl_zoo.methods import METHODS, load_method
from ssl_zoo.training.monitor import KNNMonitor
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.training.train import fit, resolve_sync_batchnorm

WORLD = 2
B = 8  # per process; the global batch is 2B


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x0": torch.randn(WORLD * B, 16, generator=g), "x1": torch.randn(WORLD * B, 16, generator=g),
        "weight": torch.randn(8, 16, generator=g), "scale": torch.tensor(2.5),
    }


def losses_and_grads(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """SimCLR's and CLIP's losses on ``rows`` of the global batch, and their gradients as
    DDP leaves them (averaged over processes), for a linear "encoder" shared by all."""
    out = {}
    for name in ("simclr", "clip"):
        weight = batch["weight"].clone().requires_grad_()
        scale = batch["scale"].clone().requires_grad_()
        z0, z1 = batch["x0"][rows] @ weight.T, batch["x1"][rows] @ weight.T  # (b, 8) each
        if name == "simclr":
            loss = nt_xent_loss(z0, z1, temperature=0.5)  # what SimCLR.training_step calls
        else:
            loss = clip_loss(torch.nn.functional.normalize(z0, dim=1), torch.nn.functional.normalize(z1, dim=1), scale)
        loss.backward()
        scale_grad = scale.grad if scale.grad is not None else torch.zeros(())  # SimCLR has no learned scale
        grads = torch.cat([weight.grad.flatten(), scale_grad.flatten()])
        if dist.is_initialized():  # what DDP does with the gradients of each process
            dist.all_reduce(grads)
            grads /= dist.get_world_size()
            dist.all_reduce(loss := loss.detach().clone())
            loss /= dist.get_world_size()
        out[f"{name}_loss"], out[f"{name}_grads"] = loss.detach(), grads
    return out


def _ranked(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = losses_and_grads(global_batch(), slice(rank * B, (rank + 1) * B))
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_losses_and_gradients_of_one_with_the_global_batch(tmp_path):
    single = losses_and_grads(global_batch(), slice(None))
    mp.spawn(_ranked, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in single.items():
            # Negatives gathered with gradients: the same loss and the same update.
            assert torch.allclose(ranked[key], value, atol=1e-6), f"rank {rank}: {key}"


def test_local_negatives_alone_would_give_another_loss():
    # The check above can fail: with only its own batch as negatives, a process computes
    # another loss than one process holding the global batch.
    batch = global_batch()
    weight = batch["weight"].clone().requires_grad_()
    z0, z1 = batch["x0"] @ weight.T, batch["x1"] @ weight.T
    local = slice(0, B)
    local_only = nt_xent_loss(z0[local], z1[local], 0.5)  # only local negatives
    full = nt_xent_loss(z0, z1, 0.5)
    assert not torch.allclose(local_only, full)


def test_the_sampler_splits_each_global_batch_between_processes():
    one = EpochBatchSampler(64, 2 * B, seed=3)
    ranks = [EpochBatchSampler(64, B, seed=3, rank=r, world_size=WORLD) for r in range(WORLD)]
    for whole, *parts in zip(one, *ranks):
        assert sum(parts, []) == whole  # rank 0 takes the first half, rank 1 the second
    assert len(one) == len(ranks[0]) == 64 // (2 * B)
    epochs = [list(EpochBatchSampler(64, 8, seed=3, current_epoch=lambda e=e: e)) for e in (0, 1)]
    assert epochs[0] != epochs[1]  # a new order every epoch
    resumed = EpochBatchSampler(64, 8, seed=3, current_epoch=lambda: 1)
    resumed.resume = (1, 3)
    assert list(resumed) == epochs[1][3:]  # a resumed epoch goes on with the next batch


class SaveTargetChecksum(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        target = torch.cat([p.detach().flatten() for p in pl_module.target_backbone.parameters()])
        online = torch.cat([p.detach().flatten() for p in pl_module.backbone.parameters()])
        torch.save({"target": target, "online": online}, Path(self.out) / f"rank{trainer.global_rank}.pt")


class SaveBatchNormKinds(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module):
        kinds = sorted({type(m).__name__ for m in pl_module.backbone.modules() if "BatchNorm" in type(m).__name__})
        (Path(self.out) / f"rank{trainer.global_rank}.txt").write_text(",".join(kinds))


@pytest.mark.slow
def test_byol_under_fit_with_two_processes_says_why_batch_norm_stays_local(make_recipe, tmp_path, capfd):
    # fit as a user runs it, with 2 CPU processes (gloo): the sampler, the NaN guard and
    # the atomic checkpoint writer all take part. One run (spawning 2 processes is the slow
    # part) also checks the batch-norm message: BYOL's paper asks for sync batch norm, but
    # torch's SyncBatchNorm runs only on GPUs, so two gloo processes keep it local and say so.
    # convnet4: the backbone is not the point, and it has batch norm like resnet18.
    recipe = make_recipe("byol", **{
        "backbone": "convnet4", "data.num_images": 128, "data.batch_size": 16, "trainer.max_steps": 4,
        "trainer.devices": WORLD, "trainer.strategy": "ddp_spawn", "trainer.checkpoint_every_n_steps": 2,
    })
    assert recipe.trainer.sync_batchnorm is None  # the method's paper decides
    summary = fit(recipe, enable_progress_bar=False, callbacks=[SaveTargetChecksum(str(tmp_path)), SaveBatchNormKinds(str(tmp_path))])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert torch.equal(ranks[0]["online"], ranks[1]["online"])  # DDP keeps the online net in sync
    assert torch.equal(ranks[0]["target"], ranks[1]["target"])  # and so the EMA target
    assert not torch.equal(ranks[0]["target"], ranks[0]["online"])  # which did move, but slower
    checkpoint = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    # Each process's augmentation stream is saved, so a resumed run draws distinct views per rank.
    states = checkpoint["augment_states_per_rank"]["cpu"]
    assert states.shape[0] == WORLD and not torch.equal(states[0], states[1])
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)] == ["BatchNorm2d"] * WORLD
    out = capfd.readouterr().out
    assert "sync batch norm off over 2 processes (byol's paper asks for it, but torch's SyncBatchNorm runs only on GPUs)" in out


def test_a_resumed_process_gets_its_own_augmentation_stream(make_recipe):
    states = [torch.Generator().manual_seed(seed).get_state() for seed in (1, 2)]
    model = SimCLR(make_recipe("simclr"))

    def load(world: int) -> dict:
        checkpoint = {"augment_states_per_rank": {"cpu": torch.stack(states)}, "state_dict": {"augment._extra_state": {"cpu": states[0]}}}
        model._trainer = SimpleNamespace(global_rank=1, world_size=world)
        model.on_load_checkpoint(checkpoint)
        return checkpoint["state_dict"]["augment._extra_state"]

    assert torch.equal(load(world=2)["cpu"], states[1])  # rank 1's own stream, not rank 0's
    assert load(world=3) == {}  # another number of processes: fresh streams, seeded per rank


@pytest.mark.parametrize("method, sync", [("simclr", True), ("byol", True), ("clip", False), ("supervised", False)])
def test_sync_batchnorm_defaults_to_each_papers_choice_on_gpus(make_recipe, method, sync):
    recipe = make_recipe(method)
    assert resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=True)[0] is sync
    recipe.trainer.sync_batchnorm = not sync  # a recipe's own choice wins
    assert resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=True)[0] is (not sync)
    recipe.trainer.sync_batchnorm = True  # on the CPU it cannot be on, and the reason says why
    on, reason = resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=False)
    assert not on and "only on GPUs" in reason


def test_the_validation_set_is_split_between_processes_and_covers_it_once(make_recipe):
    # Each process validates its contiguous part; Lightning's synced epoch mean then scores
    # every image once, as one process does.
    dm = ImageDataModule(make_recipe("simclr").data)
    dm.val_set = ImageSet(torch.randint(0, 256, (11, 3, 4, 4), dtype=torch.uint8), torch.arange(11), classes=list("abcdefghijk"))

    def labels(world: int, rank: int) -> list[int]:
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        (loader,) = dm.val_dataloader()
        return [label for batch in loader for label in batch["label"].tolist()]

    assert labels(1, 0) == list(range(11))
    parts = [labels(WORLD, r) for r in range(WORLD)]
    assert parts == [list(range(6)), list(range(6, 11))]
    dm.trainer = SimpleNamespace(world_size=12, global_rank=0)
    with pytest.raises(RecipeError, match="data.val_size 11 is smaller than the 12 processes"):
        dm.val_dataloader()


def test_processes_other_than_rank_zero_decode_no_monitor_set(make_recipe):
    dm = ImageDataModule.for_recipe(make_recipe("simclr", **{"data.num_images": 64}))
    dm.setup("fit", monitor_sets=False)
    assert dm.train_set is not None and dm.val_set is None and dm.bank_set is None


def cli_fit(out: Path, devices: int, batch_size: int, *extra: str) -> subprocess.CompletedProcess:
    """quickstart, shrunk to seconds: 2 steps, validation (probe, kNN) after the second."""
    command = [
        sys.executable, "-m", "ssl_zoo", "fit", "--recipe", "quickstart", "--trainer.accelerator", "cpu",
        "--trainer.devices", str(devices), "--data.batch_size", str(batch_size), "--trainer.max_steps", "2",
        "--data.num_images", "256", "--data.knn_bank_size", "256", "--data.val_size", "128",
        "--trainer.val_every_n_steps", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.output_dir", str(out), *extra,
    ]
    # One thread a process on both sides: the same float sums in the kNN's features.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def scalar(run_dir: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    (event,) = events.Scalars(tag)
    return event.value


def rescored(checkpoint: Path) -> dict[str, float]:
    """kNN and probe top-1 of a checkpoint's weights, in this one process, on the whole sets."""
    model = load_method(checkpoint)
    dm = ImageDataModule.for_recipe(model.recipe)
    dm.setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            knn = KNNMonitor(dm).measure(model)
            features = image_features(model.backbone, model.eval_transform, dm.val_set.images, torch.device("cpu"))
            probe = (model.online_probe(features).argmax(dim=1) == dm.val_set.labels).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return {"knn/top1": knn, "probe/val_top1": probe}


@pytest.mark.slow
def test_fit_from_the_cli_with_two_processes_reports_one_run_and_refuses_another_global_batch(tmp_path):
    # strategy auto = ddp: Lightning starts the second process by running `python -m ssl_zoo` again.
    two = cli_fit(tmp_path / "two", devices=WORLD, batch_size=B * 4)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = list((tmp_path / "two" / "quickstart").iterdir())
    assert [r.name for r in runs] == ["version_0"] and (runs[0] / "recipe.yaml").is_file()
    assert two.stdout.count("Training: recipe") == 1 and two.stdout.count("Done:") == 1
    one = cli_fit(tmp_path / "one", devices=1, batch_size=B * 4 * WORLD)  # the same global batch
    assert one.returncode == 0, one.stderr[-3000:]

    # Before training, the weights are the seed's on both: the same kNN, to the last vote.
    def random_init(out: str) -> str:
        return re.search(r"random-init backbone: +([\d.]+ %)", out).group(1)

    assert random_init(two.stdout) == random_init(one.stdout)
    # After 2 steps the weights differ (torch's SyncBatchNorm runs only on GPUs: each gloo
    # process normalises by its half of the batch). But kNN and probe, measured on rank 0 /
    # split between ranks and synced, are exactly what one process scores on the whole sets
    # with the 2-process run's final weights.
    checkpoint = runs[0] / "checkpoints" / "last.ckpt"
    for tag, value in rescored(checkpoint).items():
        assert scalar(runs[0], tag) == pytest.approx(value, abs=1e-6), tag

    # Resuming on 1 process with the per-process batch of 2 is another global batch: refused.
    refused = cli_fit(tmp_path / "two", 1, B * 4, "--resume", str(runs[0]), "--trainer.max_steps", "3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"global batch of {B * 4} images" in refused.stderr and f"trained with {B * 4 * WORLD}" in refused.stderr
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2  # nothing trained, nothing written
    # With the whole global batch on the one process, it goes on.
    resumed = cli_fit(tmp_path / "two", 1, B * 4 * WORLD, "--resume", str(runs[0]), "--trainer.max_steps", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
