"""One training run from a recipe: data, method, Lightning trainer, run folder, summary."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from ssl_zoo.training.checkpointing import AtomicCheckpointIO, FiniteLossGuard, LastCheckpoint, read_checkpoint
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.data.decode import DecodeCounts
from ssl_zoo.errors import CheckpointError
from ssl_zoo.training.loggers import check_logger_packages, extra_loggers
from ssl_zoo.methods import SSLMethod, build_method, method_class
from ssl_zoo.training.monitor import KNNMonitor, SparseProgressBar, ThroughputMeter, ViewGridLogger
from ssl_zoo.recipe import Recipe, TrainerConfig, recipe_from_dict, save_recipe
from ssl_zoo.weights import load_backbone_weights


# Lightning's notices that say nothing about this run (tips, a deprecation inside
# Lightning itself, and that our module's batch hook wins over the data module's, which
# is the design).
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
# Under several processes: the kNN monitor runs on rank 0 alone and logs with rank_zero_only,
# so there is nothing to sync, whatever Lightning advises.
warnings.filterwarnings("ignore", message=r".*self\.log\('knn/top1'.*sync_dist=True.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)


@dataclass
class RunSummary:
    run_dir: Path
    checkpoint: Path
    wall_seconds: float  # of this call: setup, training, monitors, checkpoints
    epochs: int
    steps: int
    device: str
    images_per_second: float  # training images (pairs of views for SimCLR/BYOL) per second
    final_loss: float | None
    knn_top1: float | None
    knn_top1_random_init: float | None  # before the first step: random init, or the recipe's init_weights
    probe_top1: float | None
    peak_memory_gib: float | None  # peak GPU memory allocated by the run (None on the CPU)
    # Over the whole run, a resumed one's earlier parts included: training steps (data,
    # views, step, logging, checkpoints), and the kNN monitor (random init and periodic).
    train_seconds: float = 0.0  # (0: results written before they were recorded)
    monitor_seconds: float = 0.0
    init_weights: str | None = None  # the file the backbone started from (None: random init)
    global_rank: int = 0  # the process that returned it: under several, rank 0's reports the run
    # Shards: where the training images were decoded ("device" or "workers") and what it took
    # on this process (how many went one at a time on the CPU, how many were undecodable).
    decode_on: str | None = None
    decoding: DecodeCounts | None = None


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
    loggers = _loggers(recipe, resume)
    run_dir = Path(loggers[0].log_dir)
    monitors = _Monitors.for_run(datamodule, run_dir, recipe.trainer)
    on_gpu = _uses_gpu(recipe.trainer.accelerator)
    sync_batchnorm, sync_batchnorm_reason = resolve_sync_batchnorm(recipe, method_class(recipe), on_gpu=on_gpu)
    trainer = _trainer(
        recipe.trainer, loggers, [*monitors.callbacks(recipe.trainer, enable_progress_bar), *callbacks],
        sync_batchnorm=sync_batchnorm, on_gpu=on_gpu, enable_progress_bar=enable_progress_bar,
    )
    if resume is not None:  # before any data is loaded; the number of processes is known now
        check_resumable(resume, recipe, trainer.world_size)
    model = _model(recipe, trainer, datamodule, resume)

    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
    if trainer.world_size > 1 and trainer.is_global_zero:
        state = "on" if sync_batchnorm else "off"
        print(f"ssl_zoo: sync batch norm {state} over {trainer.world_size} processes ({sync_batchnorm_reason}).", flush=True)
    # weights_only: a checkpoint is data; resuming never runs code from the file.
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    return _summary(recipe, trainer, datamodule, monitors, started)


def _loggers(recipe: Recipe, resume: Path | None) -> list[Logger]:
    """TensorBoard first (its folder is the run folder), then the recipe's ``trainer.loggers``."""
    version = _run_version(resume, recipe) if resume is not None else None
    # Every process names the run folder, but only global rank 0 creates and fills it: the
    # others may pick another free version_N while it does (Lightning starts them later, or
    # a launcher starts them all at once). The checkpoint callback takes rank 0's folder
    # when the processes connect (ModelCheckpoint.setup broadcasts it), and so does the
    # summary; TensorBoard and the other loggers write on rank 0 only.
    logger = TensorBoardLogger(save_dir=recipe.trainer.output_dir, name=recipe.name, version=version, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    # Lightning sends self.log, the learning rate and the hyper-parameters (the recipe) to each.
    return [logger, *extra_loggers(recipe.trainer.loggers, recipe.name, run_dir)]


@dataclass
class _Monitors:
    """The run's own callbacks that the summary reads back."""

    checkpoint: LastCheckpoint
    throughput: ThroughputMeter
    knn: KNNMonitor

    @classmethod
    def for_run(cls, datamodule: ImageDataModule, run_dir: Path, cfg: TrainerConfig) -> _Monitors:
        return cls(
            checkpoint=LastCheckpoint(run_dir / "checkpoints", every_n_steps=cfg.checkpoint_every_n_steps),
            throughput=ThroughputMeter(),
            knn=KNNMonitor(datamodule),  # measures only where the data has labelled monitor sets
        )

    def callbacks(self, cfg: TrainerConfig, enable_progress_bar: bool) -> list[pl.Callback]:
        """All the run's own callbacks, in the order they run."""
        run_callbacks = [
            FiniteLossGuard(check_every=cfg.log_every_n_steps), self.checkpoint, self.throughput, ViewGridLogger(),
            LearningRateMonitor(logging_interval="step"), self.knn,
        ]
        if enable_progress_bar:
            run_callbacks.append(SparseProgressBar(metrics_every=cfg.log_every_n_steps))
        return run_callbacks


def _trainer(
    cfg: TrainerConfig, loggers: list[Logger], callbacks: list[pl.Callback],
    sync_batchnorm: bool, on_gpu: bool, enable_progress_bar: bool,
) -> pl.Trainer:
    return pl.Trainer(
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
        # cudnn picks the fastest convolution kernels for each input shape on first sight:
        # every training batch has one shape (incomplete batches are dropped, crops have one
        # size), so it pays after the first step. None leaves torch's setting alone (CPU).
        benchmark=True if on_gpu else None,
        log_every_n_steps=cfg.log_every_n_steps,
        check_val_every_n_epoch=None if cfg.val_every_n_steps else cfg.check_val_every_n_epoch,
        val_check_interval=cfg.val_every_n_steps,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )


def _model(recipe: Recipe, trainer: pl.Trainer, datamodule: ImageDataModule, resume: Path | None) -> SSLMethod:
    """The recipe's method, its data set up for fitting, its backbone from ``init_weights``."""
    # Only rank 0 decodes the monitors' sets (it alone runs the kNN monitor; the others get
    # the validation set from it in trainer.fit). The online probe needs their number of
    # classes on every process: rank 0 hands it to the processes Lightning starts for it.
    num_classes = _handed_over_classes(trainer)
    datamodule.setup("fit", monitor_sets=trainer.is_global_zero or num_classes is None)
    if num_classes is None:
        num_classes = datamodule.num_classes
    if trainer.world_size > 1 and trainer.local_rank == 0:
        os.environ[_CLASSES_HANDOVER] = str(num_classes)
    model = build_method(recipe, num_classes=num_classes)
    if recipe.init_weights is not None and resume is None:  # a resumed run has its own weights
        # A momentum method's targets start as copies of the loaded backbone when training starts.
        loaded = load_backbone_weights(model.backbone, recipe.init_weights, f"backbone {recipe.backbone}")
        if trainer.is_global_zero:
            print(f"ssl_zoo: the backbone starts from {recipe.init_weights} ({loaded['tensors']} tensors"
                  + (f"; {loaded['head_tensors_left_out']} of a classifier head left out)." if loaded["head_tensors_left_out"] else ")."),
                  flush=True)
    return model


def _summary(
    recipe: Recipe, trainer: pl.Trainer, datamodule: ImageDataModule, monitors: _Monitors, started: float,
) -> RunSummary:
    checkpoint, knn = monitors.checkpoint, monitors.knn
    run_dir = Path(checkpoint.dirpath).parent  # rank 0's folder, on every process

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
        images_per_second=monitors.throughput.images_per_second,
        train_seconds=monitors.throughput.train_seconds,
        monitor_seconds=knn.seconds,
        final_loss=_mean_over_processes(trainer, metric("train/loss")),
        knn_top1=knn.last_top1,
        knn_top1_random_init=knn.random_init_top1,
        init_weights=recipe.init_weights,
        probe_top1=metric("probe/val_top1"),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if trainer.strategy.root_device.type == "cuda" else None,
        global_rank=trainer.global_rank,
        decode_on=datamodule.decode_on,
        decoding=datamodule.decode_counts if datamodule.decode_on else None,
    )


# NOTE: with strategy ddp, Lightning starts a node's processes 1..N-1 inside trainer.fit
# by running the same command again (python -m ssl_zoo fit ...) with a copy of os.environ.
# Their local rank 0 sets this first, so they take its count of classes instead of
# decoding the monitors' sets for it. Processes started by another launcher (torchrun,
# SLURM) or on another node find none and count the classes themselves.
_CLASSES_HANDOVER = "SSL_ZOO_NUM_CLASSES"


def _handed_over_classes(trainer: pl.Trainer) -> int | None:
    """The number of classes this node's rank 0 handed to a process it started, if any."""
    handed = os.environ.get(_CLASSES_HANDOVER) if trainer.local_rank > 0 else None
    return int(handed) if handed is not None else None


def _mean_over_processes(trainer: pl.Trainer, value: float | None) -> float | None:
    """A value each process logged for its own part of the global batch (the training loss),
    averaged over the processes: what one process holding the whole batch would report."""
    if value is None or trainer.world_size == 1:
        return value
    return float(trainer.strategy.reduce(torch.tensor(value, device=trainer.strategy.root_device), reduce_op="mean"))


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


def check_resumable(path: Path, recipe: Recipe, world_size: int) -> None:
    """Refuse a checkpoint that is not a run of ``recipe``'s method, backbone and heads, or
    that trained with another global batch (per-process batch x ``world_size`` processes)."""
    checkpoint = read_checkpoint(path)
    old = recipe_from_dict(checkpoint["hyper_parameters"]["recipe"])
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
    # NOTE: the data order would follow another global batch (the data module counts
    # images), but the optimiser's and the schedules' state would not: the learning rate was
    # scaled to the old batch, the warm-up and cosine schedules and BYOL's momentum count its
    # steps. A checkpoint written before the global batch was recorded is not checked.
    saved = checkpoint.get(ImageDataModule.__qualname__, {}).get("global_batch")  # Lightning's key for its state
    now = recipe.data.batch_size * world_size
    if saved is not None and saved != now:
        raise CheckpointError(
            f"Cannot resume from '{path}' with a global batch of {now} images (data.batch_size {recipe.data.batch_size} "
            f"x {world_size} processes): it trained with {saved}, and its optimiser, learning-rate schedule and step "
            "counts hold to that batch. Resume with trainer.devices x trainer.num_nodes x data.batch_size giving "
            f"{saved} again, or start a new run from its weights (--init_weights {path})."
        )


def _run_version(checkpoint: Path, recipe: Recipe) -> int | str | None:
    """The run folder's version when ``checkpoint`` lies in one of this recipe's run folders."""
    run_dir = checkpoint.resolve().parent.parent
    runs = (Path(recipe.trainer.output_dir) / recipe.name).resolve()
    if run_dir.parent == runs and run_dir.name.startswith("version_"):
        suffix = run_dir.name.removeprefix("version_")
        return int(suffix) if suffix.isdigit() else suffix
    return None  # a checkpoint from elsewhere: the resumed run gets a new folder
