"""One training run from a recipe: data, method, Lightning trainer, run folder, summary."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.methods import METHODS
from ssl_zoo.monitor import KNNMonitor, SparseProgressBar, ThroughputMeter, ViewGridLogger
from ssl_zoo.recipe import Recipe, save_recipe


# Lightning's notices that say nothing about this run (tips, a deprecation inside
# Lightning itself, and that our module's batch hook wins over the data module's, which
# is the design).
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)


@dataclass
class RunSummary:
    run_dir: Path
    checkpoint: Path
    wall_seconds: float
    epochs: int
    steps: int
    device: str
    images_per_second: float  # training images (pairs of views for SimCLR/BYOL) per second
    final_loss: float | None
    knn_top1: float | None
    knn_top1_random_init: float | None
    probe_top1: float | None
    peak_memory_gib: float | None  # peak GPU memory allocated by the run (None on the CPU)


def fit(
    recipe: Recipe,
    enable_progress_bar: bool = True,
    datamodule: ImageDataModule | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> RunSummary:
    """Train ``recipe`` and write its run folder: checkpoints, TensorBoard logs, recipe.

    ``datamodule``: the recipe's data, already loaded (the benchmark reuses it).
    ``callbacks``: more callbacks, after the run's own (the throughput benchmark's timer).
    """
    started = time.perf_counter()
    pl.seed_everything(recipe.trainer.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    datamodule = datamodule or ImageDataModule(recipe.data, with_text=recipe.method == "clip", seed=recipe.trainer.seed)
    datamodule.setup("fit")
    model = METHODS[recipe.method](recipe, num_classes=datamodule.num_classes)

    logger = TensorBoardLogger(save_dir=recipe.trainer.output_dir, name=recipe.name, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / "recipe.yaml")

    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    throughput = ThroughputMeter()
    run_callbacks = [checkpoint, throughput, ViewGridLogger(), LearningRateMonitor(logging_interval="step")]
    knn = KNNMonitor(datamodule) if datamodule.num_classes else None
    if knn is not None:
        run_callbacks.append(knn)
    cfg = recipe.trainer
    if enable_progress_bar:
        run_callbacks.append(SparseProgressBar(metrics_every=cfg.log_every_n_steps))

    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        log_every_n_steps=cfg.log_every_n_steps,
        check_val_every_n_epoch=None if cfg.val_every_n_steps else cfg.check_val_every_n_epoch,
        val_check_interval=cfg.val_every_n_steps,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[*run_callbacks, *callbacks],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)

    def metric(name: str) -> float | None:
        value = trainer.callback_metrics.get(name)
        return float(value) if value is not None else None

    return RunSummary(
        run_dir=run_dir,
        checkpoint=Path(checkpoint.last_model_path or run_dir / "checkpoints" / "last.ckpt"),
        wall_seconds=time.perf_counter() - started,
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        device=str(trainer.strategy.root_device),
        images_per_second=throughput.images_per_second,
        final_loss=metric("train/loss"),
        knn_top1=knn.last_top1 if knn else None,
        knn_top1_random_init=knn.random_init_top1 if knn else None,
        probe_top1=metric("probe/val_top1"),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if trainer.strategy.root_device.type == "cuda" else None,
    )
