"""A momentum method ssl_zoo has never seen, defined in this file, declares its (online,
target) pairs and nothing more: the base (ssl_zoo.methods.momentum) starts the targets from
the online networks (from init_weights too), moves them on the cosine schedule, logs the
momentum and resumes them. BYOL, built on the same base, trains to the numbers it did
before the base existed.

The method is MoCo v3 (Chen, Xie & He 2021) without its ViT details: a query from the online
backbone, projector and predictor, a key from the momentum backbone and projector, and an
InfoNCE loss whose negatives are the other images' keys in the batch.
"""

from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
from lightly.utils.scheduler import cosine_schedule
from pytorch_lightning.loggers import Logger
from safetensors.torch import save_file

from conftest import Crash, CrashAt
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.momentum import MomentumMethod, frozen_copy
from ssl_zoo.registry import METHODS
from ssl_zoo.training.train import fit
from test_reliability import assert_same_state, final_state, saved_step


@dataclass
class MoCoV3Config:  # the recipe's `mocov3:` section
    hidden_dim: int = 4096
    output_dim: int = 256
    temperature: float = 0.2
    base_momentum: float = 0.99


class MoCoV3(MomentumMethod, name="mocov3", config=MoCoV3Config):
    def __init__(self, recipe, num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        cfg = self.config
        self.projection_head = MoCoProjectionHead(self.feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.prediction_head = BYOLPredictionHead(cfg.output_dim, cfg.hidden_dim, cfg.output_dim)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projection_head = frozen_copy(self.projection_head)

    def ema_pairs(self):
        return [(self.backbone, self.target_backbone), (self.projection_head, self.target_projection_head)]

    def contrast(self, query, key):
        """(B, P) queries against (B, P) keys: row i's positive is key i."""
        logits = F.normalize(query, dim=1) @ F.normalize(key, dim=1).T / self.config.temperature  # (B, B)
        return F.cross_entropy(logits, torch.arange(len(query), device=query.device)) * 2 * self.config.temperature

    def training_step(self, batch, batch_idx):
        views = batch["views"]  # (2, B, 3, S, S)
        features = [self.backbone(view) for view in views]  # 2 x (B, D)
        q0, q1 = (self.prediction_head(self.projection_head(f)) for f in features)  # (B, P) each
        with torch.no_grad():
            k0, k1 = (self.target_projection_head(self.target_backbone(view)) for view in views)
        loss = self.contrast(q0, k1) + self.contrast(q1, k0)
        self.log("train/loss", loss)
        return loss + self.probe_step(features[0], batch)


class Metrics(Logger):
    """A logger that keeps what it is given: {name: {step: value}}."""

    def __init__(self):
        super().__init__()
        self.metrics = {}

    name, version = "memory", 0

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.metrics.setdefault(key, {})[step] = float(value)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


SMALL = {"backbone": "convnet4", "mocov3.base_momentum": 0.9}


def trainer(steps, callbacks=(), logger=False):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      log_every_n_steps=1, callbacks=list(callbacks))


def test_the_method_registers_with_a_target_it_did_not_declare_having():
    assert METHODS["mocov3"] is MoCoV3 and MoCoV3.has_ema_target  # derived from its ema_pairs
    assert not METHODS["simclr"].has_ema_target and METHODS["byol"].has_ema_target


def test_a_momentum_method_without_pairs_or_base_momentum_is_refused():
    @dataclass
    class NoMomentum:
        hidden_dim: int = 8

    with pytest.raises(TypeError, match=r"NoPairs: a momentum method declares its \(online, target\) pairs"):
        class NoPairs(MomentumMethod, name="no_pairs", config=MoCoV3Config):
            pass
    with pytest.raises(TypeError, match=r"NoBase: its recipe section \(NoMomentum\) needs a base_momentum"):
        class NoBase(MoCoV3, name="no_base", config=NoMomentum):
            pass
    assert "no_pairs" not in METHODS.names() and "no_base" not in METHODS.names()  # refused before registering


def test_its_targets_follow_the_cosine_schedule_and_the_momentum_is_logged(make_recipe):
    recipe = make_recipe("mocov3", **SMALL)  # 128 images in batches of 32: a 4-step run
    datamodule = ImageDataModule(recipe.data)
    model = MoCoV3(recipe, num_classes=datamodule.num_classes)
    steps = []

    class Check(pl.Callback):  # callbacks' batch hooks run before the method's: before its update
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            online = [p.detach().clone() for p in pl_module.projection_head.parameters()]
            target = [p.detach().clone() for p in pl_module.target_projection_head.parameters()]
            steps.append({"online": online, "target": target})

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            # the method's update came before the forward pass: the optimiser has not moved the online network yet
            steps[-1]["updated"] = [p.detach().clone() for p in pl_module.target_projection_head.parameters()]
            steps[-1]["target_grads"] = [p.grad for p in pl_module.target_projection_head.parameters()]

    metrics = Metrics()
    trainer(4, [Check()], logger=metrics).fit(model, datamodule=datamodule)
    assert len(steps) == 4
    for step, seen in enumerate(steps):
        m = cosine_schedule(step, 4, 0.9, 1.0)
        assert all(g is None for g in seen["target_grads"])
        for before, online, after in zip(seen["target"], seen["online"], seen["updated"]):
            torch.testing.assert_close(after, m * before + (1 - m) * online, rtol=0, atol=1e-6)
    # It started as the online network's copy, and moved as the online network trained.
    assert_same_state(steps[0]["target"], steps[0]["online"], "target at the start")
    assert not torch.equal(steps[-1]["updated"][0], steps[0]["target"][0])
    # Logged at every step (log_every_n_steps 1), after the step, on the same schedule.
    assert metrics.metrics["train/momentum"] == pytest.approx({step: cosine_schedule(step, 4, 0.9, 1.0) for step in (1, 2, 3, 4)})


def test_its_targets_start_from_init_weights(make_recipe, tmp_path):
    recipe = make_recipe("mocov3", **SMALL)
    torch.manual_seed(1)
    weights = MoCoV3(recipe).backbone.state_dict()  # another random draw than fit's seed gives
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "backbone.safetensors")
    started = {}

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                started["online"] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}
                started["target"] = {k: v.clone() for k, v in pl_module.target_backbone.state_dict().items()}

    recipe = make_recipe("mocov3", **SMALL, init_weights=tmp_path / "backbone.safetensors", **{"trainer.max_steps": 1})
    fit(recipe, enable_progress_bar=False, callbacks=[Check()])
    assert_same_state(started["online"], weights)
    assert_same_state(started["target"], weights, "target")


def test_it_resumes_bit_exact(make_recipe, tmp_path):
    # 128 images in batches of 32: 4 steps an epoch, 2 epochs; the crash before step 7 leaves
    # the checkpoint of step 6, mid-epoch, whose targets the resumed run must go on from.
    keys = {**SMALL, "trainer.max_epochs": 2, "trainer.checkpoint_every_n_steps": 3}
    unbroken = fit(make_recipe("mocov3", **keys), enable_progress_bar=False)
    crashed = make_recipe("mocov3", **keys, **{"trainer.output_dir": tmp_path / "b"})
    with pytest.raises(Crash):
        fit(crashed, enable_progress_bar=False, callbacks=[CrashAt(step=7)])
    last = tmp_path / "b" / "tiny_mocov3" / "version_0" / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 6
    resumed = fit(crashed, enable_progress_bar=False, resume=last)
    assert_same_state(final_state(unbroken.checkpoint), final_state(resumed.checkpoint))


def test_byol_trains_to_the_numbers_it_did_before_the_momentum_base(make_recipe):
    # NOTE: captured from ssl_zoo at ae8ad61, whose BYOL updated its targets and logged its
    # momentum itself, by this same run: the base must change none of BYOL's arithmetic.
    recipe = make_recipe("byol", **{"backbone": "convnet4", "byol.base_momentum": 0.9})
    pl.seed_everything(0, verbose=False)
    datamodule = ImageDataModule.for_recipe(recipe)
    model = BYOL(recipe, num_classes=datamodule.num_classes)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer(4, [Record()]).fit(model, datamodule=datamodule)

    def total(module):
        return sum(float(p.detach().double().sum()) for p in module.parameters())

    gap = torch.cat([(t - o).detach().flatten() for t, o in zip(model.target_backbone.parameters(), model.backbone.parameters())])
    assert losses == pytest.approx([4.255099, 4.010756, 3.726331, 3.487634], abs=1e-4)
    assert [total(model.target_backbone), total(model.target_projection_head), total(model.backbone)] == pytest.approx(
        [242.564154, 131.442366, 242.350472], abs=1e-3)
    assert float(gap.double().norm()) == pytest.approx(0.150891, abs=1e-4)
