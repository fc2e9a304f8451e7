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
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger

from ssl_zoo.checkpointing import AtomicCheckpointIO, FiniteLossGuard, LastCheckpoint, read_checkpoint
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.errors import CheckpointError
from ssl_zoo.loggers import check_logger_packages, extra_loggers
from ssl_zoo.methods import SSLMethod, build_method
from ssl_zoo.monitor import KNNMonitor, SparseProgressBar, ThroughputMeter, ViewGridLogger
from ssl_zoo.recipe import Recipe, recipe_from_dict, save_recipe
from ssl_zoo.weights import load_backbone_weights


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
    knn_top1_random_init: float | None  # before the first step: random init, or the recipe's init_weights
    probe_top1: float | None
    peak_memory_gib: float | None  # peak GPU memory allocated by the run (None on the CPU)
    init_weights: str | None = None  # the file the backbone started from (None: random init)


def fit(
    recipe: Recipe,
    enable_progress_bar: bool = True,
    datamodule: ImageDataModule | None = None,
    callbacks: Sequence[pl.Callback] = (),
    resume: Path | None = None,
) -> RunSummary:
    """Train ``recipe`` and write its run folder: checkpoints, TensorBoard logs (and the
    recipe's ``trainer.loggers``), recipe.

    ``datamodule``: the recipe's data, already loaded (the benchmark reuses it).
    ``callbacks``: more callbacks, after the run's own (the throughput benchmark's timer).
    ``resume``: a checkpoint of this recipe to continue from, exactly where it stopped
    (weights, optimiser, schedules, EMA target, data order and augmentation streams); the
    run goes on in the checkpoint's run folder.
    """
    started = time.perf_counter()
    check_logger_packages(recipe.trainer.loggers)  # before any data is loaded
    pl.seed_everything(recipe.trainer.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    datamodule = datamodule or ImageDataModule.for_recipe(recipe)
    datamodule.setup("fit")
    model = build_method(recipe, num_classes=datamodule.num_classes)
    if recipe.init_weights is not None and resume is None:  # a resumed run has its own weights
        loaded = load_backbone_weights(model.backbone, recipe.init_weights, f"backbone {recipe.backbone}")
        if model.has_ema_target:  # its target starts as a copy of the online network: of the loaded one too
            for online, target in model.ema_pairs():
                target.load_state_dict(online.state_dict())
        print(f"ssl_zoo: the backbone starts from {recipe.init_weights} ({loaded['tensors']} tensors"
              + (f"; {loaded['head_tensors_left_out']} of a classifier head left out)." if loaded["head_tensors_left_out"] else ")."),
              flush=True)

    version = None
    if resume is not None:
        check_resumable(resume, recipe)
        version = _run_version(resume, recipe)
    logger = TensorBoardLogger(save_dir=recipe.trainer.output_dir, name=recipe.name, version=version, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / "recipe.yaml")
    # Lightning sends self.log, the learning rate and the hyper-parameters (the recipe) to each.
    loggers = [logger, *extra_loggers(recipe.trainer.loggers, recipe.name, run_dir)]

    cfg = recipe.trainer
    checkpoint = LastCheckpoint(run_dir / "checkpoints", every_n_steps=cfg.checkpoint_every_n_steps)
    throughput = ThroughputMeter()
    run_callbacks = [
        FiniteLossGuard(check_every=cfg.log_every_n_steps), checkpoint, throughput, ViewGridLogger(),
        LearningRateMonitor(logging_interval="step"),
    ]
    knn = KNNMonitor(datamodule) if datamodule.num_classes else None
    if knn is not None:
        run_callbacks.append(knn)
    if enable_progress_bar:
        run_callbacks.append(SparseProgressBar(metrics_every=cfg.log_every_n_steps))

    sync_batchnorm, sync_batchnorm_reason = resolve_sync_batchnorm(recipe, type(model), on_gpu=_uses_gpu(cfg.accelerator))
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        sync_batchnorm=sync_batchnorm,
        # The data module's sampler splits each global batch between processes itself.
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        precision=cfg.precision,
        log_every_n_steps=cfg.log_every_n_steps,
        check_val_every_n_epoch=None if cfg.val_every_n_steps else cfg.check_val_every_n_epoch,
        val_check_interval=cfg.val_every_n_steps,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=[*run_callbacks, *callbacks],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )
    if trainer.world_size > 1 and trainer.is_global_zero:
        state = "on" if sync_batchnorm else "off"
        print(f"ssl_zoo: sync batch norm {state} over {trainer.world_size} processes ({sync_batchnorm_reason}).", flush=True)
    # weights_only: a checkpoint is data; resuming never runs code from the file.
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)

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
        init_weights=recipe.init_weights,
        probe_top1=metric("probe/val_top1"),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if trainer.strategy.root_device.type == "cuda" else None,
    )


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_sync_batchnorm(recipe: Recipe, method: type[SSLMethod], on_gpu: bool) -> tuple[bool, str]:
    """Whether batch norm runs over the global batch, and why. It only matters with several
    processes (Lightning converts the layers only under a multi-process strategy)."""
    wanted = method.global_batchnorm if recipe.trainer.sync_batchnorm is None else recipe.trainer.sync_batchnorm
    source = "the recipe's trainer.sync_batchnorm" if recipe.trainer.sync_batchnorm is not None else f"{recipe.method}'s paper"
    if wanted and not on_gpu:
        return False, f"{source} asks for it, but torch's SyncBatchNorm runs only on GPUs"
    return wanted, f"{source}; --trainer.sync_batchnorm overrides it"


def check_resumable(path: Path, recipe: Recipe) -> None:
    """Refuse a checkpoint that is not a run of ``recipe``'s method, backbone and heads."""
    saved = read_checkpoint(path)["hyper_parameters"]["recipe"]
    old = recipe_from_dict(saved)
    if old.method != recipe.method:
        mismatches = [f"method: checkpoint {old.method!r}, recipe {recipe.method!r}"]
    else:  # the same method: the backbone and the heads' sizes must agree too
        pairs = [("backbone", old.backbone, recipe.backbone), (old.method, old.method_config, recipe.method_config)]
        mismatches = [f"{key}: checkpoint {a!r}, recipe {b!r}" for key, a, b in pairs if a != b]
    if mismatches:
        raise CheckpointError(
            f"Cannot resume from '{path}' with recipe '{recipe.name}': the checkpoint is a different model "
            f"({'; '.join(mismatches)}). Resume it with its own recipe (fit --resume RUN_FOLDER), or start a new run."
        )


def _run_version(checkpoint: Path, recipe: Recipe) -> int | str | None:
    """The run folder's version when ``checkpoint`` lies in one of this recipe's run folders."""
    run_dir = checkpoint.resolve().parent.parent
    runs = (Path(recipe.trainer.output_dir) / recipe.name).resolve()
    if run_dir.parent == runs and run_dir.name.startswith("version_"):
        suffix = run_dir.name.removeprefix("version_")
        return int(suffix) if suffix.isdigit() else suffix
    return None  # a checkpoint from elsewhere: the resumed run gets a new folder
