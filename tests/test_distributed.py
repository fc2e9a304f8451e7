"""Two processes (gloo, CPU) train like one process holding the whole global batch."""

import os
import socket
from types import SimpleNamespace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_zoo.data.datamodule import EpochBatchSampler
from ssl_zoo.losses import clip_loss, nt_xent_loss
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.train import fit, resolve_sync_batchnorm

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


@pytest.mark.slow
def test_byol_under_fit_with_two_processes(make_recipe, tmp_path):
    # fit as a user runs it, with 2 CPU processes (gloo): the sampler, the NaN guard and
    # the atomic checkpoint writer all take part.
    recipe = make_recipe("byol", **{
        "data.num_images": 128, "data.batch_size": 16, "trainer.max_steps": 4, "trainer.devices": WORLD,
        "trainer.strategy": "ddp_spawn", "trainer.checkpoint_every_n_steps": 2,
    })
    summary = fit(recipe, enable_progress_bar=False, callbacks=[SaveTargetChecksum(str(tmp_path))])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert torch.equal(ranks[0]["online"], ranks[1]["online"])  # DDP keeps the online net in sync
    assert torch.equal(ranks[0]["target"], ranks[1]["target"])  # and so the EMA target
    assert not torch.equal(ranks[0]["target"], ranks[0]["online"])  # which did move, but slower
    checkpoint = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    # Each process's augmentation stream is saved, so a resumed run draws distinct views per rank.
    states = checkpoint["augment_states_per_rank"]["cpu"]
    assert states.shape[0] == WORLD and not torch.equal(states[0], states[1])


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


class SaveBatchNormKinds(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module):
        kinds = sorted({type(m).__name__ for m in pl_module.backbone.modules() if "BatchNorm" in type(m).__name__})
        (Path(self.out) / f"rank{trainer.global_rank}.txt").write_text(",".join(kinds))


@pytest.mark.slow
def test_simclr_with_two_cpu_processes_says_why_batch_norm_stays_local(make_recipe, tmp_path, capfd):
    # torch's SyncBatchNorm runs only on GPUs, so two gloo processes keep it local and say so.
    recipe = make_recipe("simclr", **{
        "data.num_images": 64, "data.batch_size": 16, "trainer.max_steps": 1, "trainer.devices": WORLD,
        "trainer.strategy": "ddp_spawn",
    })
    assert recipe.trainer.sync_batchnorm is None  # the method's paper decides
    fit(recipe, enable_progress_bar=False, callbacks=[SaveBatchNormKinds(str(tmp_path))])
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)] == ["BatchNorm2d"] * WORLD
    out = capfd.readouterr().out
    assert "sync batch norm off over 2 processes (simclr's paper asks for it, but torch's SyncBatchNorm runs only on GPUs)" in out


@pytest.mark.parametrize("method, sync", [("simclr", True), ("byol", True), ("clip", False), ("supervised", False)])
def test_sync_batchnorm_defaults_to_each_papers_choice_on_gpus(make_recipe, method, sync):
    recipe = make_recipe(method)
    assert resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=True)[0] is sync
    recipe.trainer.sync_batchnorm = not sync  # a recipe's own choice wins
    assert resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=True)[0] is (not sync)
    recipe.trainer.sync_batchnorm = True  # on the CPU it cannot be on, and the reason says why
    on, reason = resolve_sync_batchnorm(recipe, METHODS[method], on_gpu=False)
    assert not on and "only on GPUs" in reason
